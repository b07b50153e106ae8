"""Lesson 01: the hand-written RNN cell, unrolling, gradient norms, and the exercise checks."""

import pytest
import torch
from torch import nn

from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.rnn import (
    BPTT_MISTAKES,
    CELL_MISTAKES,
    FORWARD_MISTAKES,
    STEP_BACKWARD_MISTAKES,
    check_rnn_cell,
    check_rnn_forward,
    check_rnn_step_backward,
    check_state_gradients,
)
from transformer_lesson.rnn import (
    ScratchRNN,
    gradient_norm_by_distance,
    rnn_cell,
    rnn_forward,
    rnn_step_backward,
    state_gradients,
)


def test_rnn_cell_matches_torch_rnn_cell():
    torch.manual_seed(0)
    cell = nn.RNNCell(5, 7)
    x, h = torch.randn(3, 5), torch.randn(3, 7)
    expected = cell(x, h)
    actual = rnn_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(actual, expected)


def test_rnn_forward_matches_torch_rnn():
    torch.manual_seed(0)
    rnn = nn.RNN(4, 6, batch_first=True)
    inputs, h0 = torch.randn(2, 9, 4), torch.randn(2, 6)
    expected_outputs, expected_h = rnn(inputs, h0[None])
    outputs, h_last = rnn_forward(inputs, h0, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(h_last, expected_h[0])


def test_scratch_rnn_refuses_time_first_hidden_state():
    model = ScratchRNN(3, 4)
    with pytest.raises(ValueError, match="layers, batch, hidden"):
        model(torch.randn(2, 5, 3), torch.zeros(1, 2, 4))


def test_gradient_norm_by_distance_is_exact_for_a_linear_recurrence():
    # h_t = 0.5 h_{t-1} + x_t, so d h_T / d x_t = 0.5 ** (T - t): the norms halve per step back.
    def run(inputs):
        h, outputs = torch.zeros(inputs.shape[0], 1), []
        for t in range(inputs.shape[1]):
            h = 0.5 * h + inputs[:, t]
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    norms = gradient_norm_by_distance(run, torch.randn(3, 6, 1))
    probe = torch.randn(1, generator=torch.Generator().manual_seed(0)).abs()
    torch.testing.assert_close(norms, probe * 0.5 ** torch.arange(6.0))


def test_plain_rnn_gradients_vanish_faster_than_lstm():
    torch.manual_seed(0)
    inputs = torch.randn(8, 60, 16)
    rnn_norms = gradient_norm_by_distance(nn.RNN(16, 32, batch_first=True), inputs)
    lstm_norms = gradient_norm_by_distance(nn.LSTM(16, 32, batch_first=True), inputs)
    assert rnn_norms[40] < 1e-3 * rnn_norms[0]
    assert lstm_norms[40] / lstm_norms[0] > 10 * rnn_norms[40] / rnn_norms[0]


def _own_cell(x, h, W_ih, W_hh, b_ih, b_hh):  # a student's right answer: not the package's function
    return torch.tanh(torch.nn.functional.linear(x, W_ih, b_ih) + torch.nn.functional.linear(h, W_hh, b_hh))


def _own_forward(inputs, h0, W_ih, W_hh, b_ih, b_hh):
    states = [h0]
    for t in range(inputs.shape[1]):
        states.append(_own_cell(inputs[:, t], states[-1], W_ih, W_hh, b_ih, b_hh))
    return torch.stack(states[1:], dim=1), states[-1]


def _own_step_backward(grad_h, h, W_hh):
    return torch.einsum("bi,ij->bj", grad_h * (1 - h.pow(2)), W_hh)


def _own_state_gradients(outputs, W_hh, grad_last):
    grads = [grad_last]
    for t in reversed(range(1, outputs.shape[1])):
        grads.insert(0, _own_step_backward(grads[0], outputs[:, t], W_hh))
    return torch.stack(grads, dim=1)


def test_checks_accept_a_right_answer(capsys):
    check_rnn_cell(_own_cell)
    check_rnn_forward(_own_forward)
    assert "✓ rnn_cell" in capsys.readouterr().out


def test_checks_refuse_the_package_answer():
    for check, answer in [(check_rnn_cell, rnn_cell), (check_rnn_forward, rnn_forward),
                          (check_rnn_step_backward, rnn_step_backward), (check_state_gradients, state_gradients)]:
        with pytest.raises(CheckFailed, match="runs the package's own answer"):
            check(answer)


@pytest.mark.parametrize("mistake", CELL_MISTAKES, ids=lambda m: m.advice[:30])
def test_cell_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_rnn_cell(mistake.implementation)
    assert mistake.advice in str(failure.value)


@pytest.mark.parametrize("mistake", FORWARD_MISTAKES, ids=lambda m: m.advice[:30])
def test_forward_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_rnn_forward(mistake.implementation)
    assert mistake.advice in str(failure.value)


def _hh_untransposed(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.tanh(nn.functional.linear(x, W_ih, b_ih) + h @ W_hh + b_hh)


def _both_untransposed(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.tanh(x @ W_ih + h @ W_hh + b_ih + b_hh)


def _no_tanh(x, h, W_ih, W_hh, b_ih, b_hh):
    return nn.functional.linear(x, W_ih, b_ih) + nn.functional.linear(h, W_hh, b_hh)


@pytest.mark.parametrize("wrong, cause", [
    (_hh_untransposed, "W_hh is not transposed"),
    (_both_untransposed, "the weights are not transposed"),
    (_no_tanh, "the tanh is missing"),
])
def test_cell_check_names_answers_written_the_wrong_way(wrong, cause):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_rnn_cell(wrong)
    message = str(failure.value)
    assert cause in message
    assert message.count("Likely cause") == 1


def _state_before_the_step(inputs, h0, W_ih, W_hh, b_ih, b_hh):
    h, outputs = h0, []
    for t in range(inputs.shape[1]):
        outputs.append(h)  # stored before the update
        h = rnn_cell(inputs[:, t], h, W_ih, W_hh, b_ih, b_hh)
    return torch.stack(outputs, dim=1), h


def _always_from_h0(inputs, h0, W_ih, W_hh, b_ih, b_hh):
    outputs = []
    for t in range(inputs.shape[1]):
        h = rnn_cell(inputs[:, t], h0, W_ih, W_hh, b_ih, b_hh)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@pytest.mark.parametrize("wrong, cause", [
    (_state_before_the_step, "not before"),
    (_always_from_h0, "every step starts from h0"),
])
def test_forward_check_names_answers_written_the_wrong_way(wrong, cause):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_rnn_forward(wrong)
    assert cause in str(failure.value)


def test_forward_check_says_which_dimensions_are_swapped():
    def time_first(inputs, h0, W_ih, W_hh, b_ih, b_hh):
        outputs, h_last = rnn_forward(inputs, h0, W_ih, W_hh, b_ih, b_hh)
        return outputs.transpose(0, 1), h_last

    with pytest.raises(CheckFailed, match="batch and time look swapped"):
        check_rnn_forward(time_first)


def test_forward_check_explains_the_layers_first_hidden_layout():
    def layers_first(inputs, h0, W_ih, W_hh, b_ih, b_hh):
        outputs, h_last = rnn_forward(inputs, h0, W_ih, W_hh, b_ih, b_hh)
        return outputs, h_last[None]

    with pytest.raises(CheckFailed, match="layers, batch, hidden"):
        check_rnn_forward(layers_first)


def test_cell_check_explains_a_crash_and_an_unwritten_answer():
    def crashes(x, h, W_ih, W_hh, b_ih, b_hh):
        return torch.tanh(x @ W_hh.T + h @ W_ih.T)  # wrong pairing: fails when D != H

    def unwritten(x, h, W_ih, W_hh, b_ih, b_hh):
        raise NotImplementedError()

    with pytest.raises(CheckFailed):
        check_rnn_cell(crashes)
    with pytest.raises(CheckFailed, match="not written yet"):
        check_rnn_cell(unwritten)


def test_cell_check_leaves_the_global_random_state_alone():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    check_rnn_cell(_own_cell)
    assert torch.equal(torch.get_rng_state(), before)


def test_open_gates_keep_gradients_that_default_gates_lose():
    from transformer_lesson.rnn import open_gates

    torch.manual_seed(0)
    inputs = torch.randn(8, 60, 16)
    for kind in (nn.GRU, nn.LSTM):
        default = gradient_norm_by_distance(kind(16, 32, batch_first=True), inputs)
        opened = gradient_norm_by_distance(open_gates(kind(16, 32, batch_first=True)), inputs)
        assert default[59] / default[0] < 1e-6, kind  # at initialisation the gates do not help
        assert opened[59] / opened[0] > 0.05, kind  # held open, they carry the gradient 59 steps
    with pytest.raises(TypeError, match="nn.GRU or nn.LSTM"):
        open_gates(nn.RNN(3, 4))


def test_plot_curves_draws_a_spread_band():
    from matplotlib.collections import PolyCollection

    from transformer_lesson.plotting import plot_curves

    ax = plot_curves([1, 2, 4], {"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 2.0]}, "t", "x", "y",
                     spread={"a": ([0.5, 1.5, 2.5], [1.5, 2.5, 3.5])})
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1


def _states_with_autograd(B=3, T=7, D=4, H=5, seed=0, scale=0.6):
    """The states of a tanh RNN and their gradients from autograd, for a loss that reads the last state."""
    g = torch.Generator().manual_seed(seed)
    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = randn(B, T, D).requires_grad_(True)
    W_ih, W_hh, b_ih, b_hh = randn(H, D), randn(H, H), randn(H), randn(H)
    h, states = torch.zeros(B, H, dtype=torch.float64), []
    for t in range(T):
        h = rnn_cell(inputs[:, t], h, W_ih, W_hh * scale, b_ih, b_hh)
        h.retain_grad()
        states.append(h)
    grad_last = randn(B, H)
    (states[-1] * grad_last).sum().backward()
    outputs = torch.stack([s.detach() for s in states], dim=1)
    return outputs, W_hh * scale, grad_last, torch.stack([s.grad for s in states], dim=1)


def test_state_gradients_and_one_step_back_match_autograd():
    outputs, W_hh, grad_last, expected = _states_with_autograd()
    torch.testing.assert_close(state_gradients(outputs, W_hh, grad_last), expected)
    torch.testing.assert_close(rnn_step_backward(expected[:, -1], outputs[:, -1], W_hh), expected[:, -2])
    assert state_gradients(outputs[:, :1], W_hh, grad_last).shape == (3, 1, 5)  # one step: grad_last alone


def test_bptt_checks_accept_a_right_answer(capsys):
    check_rnn_step_backward(_own_step_backward)
    check_state_gradients(_own_state_gradients)
    assert "✓ state_gradients" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", STEP_BACKWARD_MISTAKES, ids=lambda m: m.advice[:30])
def test_step_backward_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_rnn_step_backward(mistake.implementation)
    assert mistake.advice in str(failure.value)


@pytest.mark.parametrize("mistake", BPTT_MISTAKES, ids=lambda m: m.advice[:30])
def test_bptt_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_state_gradients(mistake.implementation)
    assert mistake.advice in str(failure.value)


def _backward_with_autograd_tanh_slope(grad_h, h, W_hh):
    # tanh's derivative taken at h as if h were the pre-activation (a student calling autograd on tanh(h))
    a = h.detach().clone().requires_grad_(True)
    torch.tanh(a).backward(grad_h)
    return a.grad @ W_hh


def _bptt_walking_back_without_reversing(outputs, W_hh, grad_last):
    grad, grads = grad_last, [grad_last]
    for t in reversed(range(1, outputs.shape[1])):
        grad = (grad * (1 - outputs[:, t] ** 2)) @ W_hh
        grads.append(grad)
    return torch.stack(grads, dim=1)


def _bptt_with_the_previous_slope(outputs, W_hh, grad_last):
    grads = [None] * outputs.shape[1]
    grads[-1] = grad_last
    for t in range(outputs.shape[1] - 2, -1, -1):
        grads[t] = (grads[t + 1] * (1 - outputs[:, t] ** 2)) @ W_hh
    return torch.stack(grads, dim=1)


@pytest.mark.parametrize(
    "check, wrong, cause",
    [
        (check_rnn_step_backward, lambda g, h, W: torch.mm(g, W), "derivative is missing"),
        (check_rnn_step_backward, lambda g, h, W: (g * (1 - h.pow(2))) @ W.t(), "W_hh is transposed"),
        (check_rnn_step_backward, lambda g, h, W: (g - g * h) @ W, "use 1 - h\\*\\*2, not 1 - h"),
        (check_rnn_step_backward, _backward_with_autograd_tanh_slope, "Applying tanh to h again"),
        (check_state_gradients, _bptt_walking_back_without_reversing, "wrong order"),
        (check_state_gradients, _bptt_with_the_previous_slope, "wrong state's slope"),
    ],
)
def test_bptt_checks_name_answers_written_the_wrong_way(check, wrong, cause):
    with pytest.raises(CheckFailed, match=cause):
        check(wrong)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda g, h, W: None, "is None: did you forget the `return`"),
        (lambda g, h, W: rnn_step_backward(g, h, W).numpy(), "should be a torch.Tensor but is a ndarray"),
        (lambda g, h, W: rnn_step_backward(g, h, W).long(), "dtype torch.int64"),
        (lambda g, h, W: rnn_step_backward(g, h, W).T, "look swapped"),
        (lambda g, h, W: rnn_step_backward(g, h, W).to("meta"), "is on the device meta, but the inputs are on cpu"),
    ],
)
def test_step_backward_check_explains_a_wrong_kind_of_answer(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_rnn_step_backward(wrong)


def test_bptt_check_explains_a_crash_and_an_unwritten_answer():
    def unwritten(outputs, W_hh, grad_last):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not written yet"):
        check_state_gradients(unwritten)
    with pytest.raises(CheckFailed, match=r"(?s)state_gradients raised IndexError.*Start from grad_last"):
        check_state_gradients(lambda outputs, W_hh, grad_last: outputs[:, outputs.shape[1]])
