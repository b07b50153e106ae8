"""Lesson 01: the hand-written RNN cell, unrolling, gradient norms, and the exercise checks."""

import pytest
import torch
from torch import nn

from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.rnn import CELL_MISTAKES, FORWARD_MISTAKES, check_rnn_cell, check_rnn_forward
from transformer_lesson.rnn import ScratchRNN, gradient_norm_by_distance, rnn_cell, rnn_forward


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


def test_checks_accept_the_reference(capsys):
    check_rnn_cell(rnn_cell)
    check_rnn_forward(rnn_forward)
    assert "✓ rnn_cell" in capsys.readouterr().out


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
    check_rnn_cell(rnn_cell)
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
