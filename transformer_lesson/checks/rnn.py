"""Checks for lesson 01: a recurrent cell by hand, unrolling it, and backpropagating through it by hand."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..rnn import rnn_forward, rnn_step_backward, state_gradients
from .core import CheckFailed, Mistake, check_against, explain_crashes_and_unwritten


def _torch_rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    """The reference: PyTorch's own ``nn.RNNCell`` (tanh) carrying the given weights."""
    with torch.random.fork_rng(devices=[]):  # its random init must not move the student's RNG
        cell = nn.RNNCell(W_ih.shape[1], W_ih.shape[0], nonlinearity="tanh")
    with torch.no_grad():
        cell.weight_ih.copy_(W_ih)
        cell.weight_hh.copy_(W_hh)
        cell.bias_ih.copy_(b_ih)
        cell.bias_hh.copy_(b_hh)
        return cell(x, h)


def _cell_inputs(square_first: int) -> Callable[[torch.Generator], dict]:
    """Random cell inputs; the first ``square_first`` trials have input size == hidden size, so that
    mistakes which only change values there (swapped or untransposed weights) can be recognised."""
    trial = {"n": 0}

    def make(g: torch.Generator) -> dict:
        trial["n"] += 1
        B = int(torch.randint(2, 6, (1,), generator=g))
        H = int(torch.randint(3, 8, (1,), generator=g))
        D = H if trial["n"] <= square_first else H + int(torch.randint(1, 4, (1,), generator=g))
        return {
            "x": torch.randn(B, D, generator=g),
            "h": torch.randn(B, H, generator=g).tanh(),
            "W_ih": torch.randn(H, D, generator=g) * 0.7,
            "W_hh": torch.randn(H, H, generator=g) * 0.7,
            "b_ih": torch.randn(H, generator=g) * 0.3,
            "b_hh": torch.randn(H, generator=g) * 0.3,
        }

    return make


CELL_MISTAKES = (
    Mistake("the tanh is missing: the new state is tanh(x W_ih^T + b_ih + h W_hh^T + b_hh).",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: x @ W_ih.T + b_ih + h @ W_hh.T + b_hh),
    Mistake("W_ih and W_hh are swapped: W_ih (hidden, input) multiplies the input x, W_hh "
            "(hidden, hidden) the previous state h.",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_hh.T + b_ih + h @ W_ih.T + b_hh)),
    Mistake("the weights are not transposed: nn.RNNCell stores W_ih as (hidden, input), so the "
            "product is x @ W_ih.T (or F.linear(x, W_ih, b_ih)).",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih + b_ih + h @ W_hh + b_hh)),
    Mistake("W_hh is not transposed: use h @ W_hh.T. (W_hh is square, so h @ W_hh runs but "
            "computes something else.)",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih.T + b_ih + h @ W_hh + b_hh)),
    Mistake("W_ih is not transposed: use x @ W_ih.T. (x @ W_ih only runs when the input size equals "
            "the hidden size.)",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih + b_ih + h @ W_hh.T + b_hh)),
    Mistake("a bias is missing: nn.RNNCell adds both b_ih and b_hh.",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T)),
    Mistake("a bias is missing: nn.RNNCell adds both b_ih and b_hh.",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih.T + h @ W_hh.T + b_hh)),
    Mistake("the previous state h is ignored, so nothing is carried from step to step.",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih.T + b_ih + b_hh)),
    Mistake("that is a sigmoid; the Elman RNN cell (nn.RNNCell's default) uses tanh.",
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.sigmoid(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)),
)


def check_rnn_cell(rnn_cell: Callable, trials: int = 6) -> None:
    """Check ``rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh) -> h_next`` against ``torch.nn.RNNCell``."""
    hint = ("Shapes: x (B, D), h (B, H), W_ih (H, D), W_hh (H, H). W_ih goes with x and W_hh with h, "
            "each transposed: x @ W_ih.T is (B, H).")
    check_against(
        explain_crashes_and_unwritten(rnn_cell, "rnn_cell", hint),
        _torch_rnn_cell,
        _cell_inputs(square_first=3),
        name="rnn_cell",
        trials=trials,
        mistakes=CELL_MISTAKES,
        dims=("batch", "hidden"),
    )


def _sequence_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(2, 5, (1,), generator=g))
    T = int(torch.randint(B + 1, 9, (1,), generator=g))  # T != B, so a swapped layout shows
    D = int(torch.randint(2, 6, (1,), generator=g))
    H = int(torch.randint(D + 1, 9, (1,), generator=g))
    return {
        "inputs": torch.randn(B, T, D, generator=g),
        "h0": torch.randn(B, H, generator=g).tanh(),
        "W_ih": torch.randn(H, D, generator=g) * 0.7,
        "W_hh": torch.randn(H, H, generator=g) * 0.7,
        "b_ih": torch.randn(H, generator=g) * 0.3,
        "b_hh": torch.randn(H, generator=g) * 0.3,
    }


def _no_recurrence(inputs, h0, W_ih, W_hh, b_ih, b_hh):
    steps = [torch.tanh(inputs[:, t] @ W_ih.T + b_ih + h0 @ W_hh.T + b_hh) for t in range(inputs.shape[1])]
    return torch.stack(steps, dim=1), steps[-1]


def _first_state_returned(inputs, h0, W_ih, W_hh, b_ih, b_hh):
    outputs, _ = rnn_forward(inputs, h0, W_ih, W_hh, b_ih, b_hh)
    return outputs, outputs[:, 0]


def _outputs_include_h0(inputs, h0, W_ih, W_hh, b_ih, b_hh):
    outputs, h_last = rnn_forward(inputs, h0, W_ih, W_hh, b_ih, b_hh)
    return torch.cat([h0[:, None], outputs[:, :-1]], dim=1), h_last


FORWARD_MISTAKES = (
    Mistake("every step starts from h0: pass the state returned by the previous step to the next.",
            _no_recurrence),
    Mistake("h_last is the state after the *first* step; return the state after the last one.",
            _first_state_returned),
    Mistake("outputs[:, t] should be the state *after* reading inputs[:, t], not before "
            "(leave h0 out of outputs).", _outputs_include_h0),
)


def check_rnn_forward(rnn_forward_fn: Callable, trials: int = 5) -> None:
    """Check ``rnn_forward(inputs (B,T,D), h0 (B,H), weights...) -> (outputs (B,T,H), h_last (B,H))``."""
    hint = "inputs[:, t] is the (B, D) input at step t; the state h is (B, H) throughout."
    guarded = explain_crashes_and_unwritten(rnn_forward_fn, "rnn_forward", hint)
    probe = _sequence_inputs(torch.Generator().manual_seed(1))
    result = guarded(*probe.values())
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise CheckFailed("rnn_forward should return two things: (outputs, h_last).")
    B, H = probe["h0"].shape
    h_last = result[1]
    if isinstance(h_last, torch.Tensor) and tuple(h_last.shape) == (1, B, H):
        raise CheckFailed(f"h_last has shape {(1, B, H)}: that is nn.RNN's (layers, batch, hidden) layout. "
                          f"The course keeps states batch first, (batch, hidden): drop the layers "
                          f"dimension with h_last[0].")
    check_against(
        guarded,
        rnn_forward,
        _sequence_inputs,
        name="rnn_forward",
        trials=trials,
        mistakes=FORWARD_MISTAKES,
        dims={"rnn_forward(...)[0]": ("batch", "time", "hidden"), "rnn_forward(...)[1]": ("batch", "hidden")},
    )


def _step_backward_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(2, 6, (1,), generator=g))
    H = int(torch.randint(B + 1, 9, (1,), generator=g))  # H != B, so a transposed layout shows
    return {
        "grad_h": torch.randn(B, H, generator=g),
        "h": torch.randn(B, H, generator=g).tanh(),  # a state, as tanh returns it
        "W_hh": torch.randn(H, H, generator=g) * 0.7,
    }


STEP_BACKWARD_MISTAKES = (
    Mistake("the tanh's derivative is missing: first multiply grad_h by tanh'(a_t) = 1 - h_t**2, "
            "element by element, then by W_hh.", lambda grad_h, h, W_hh: grad_h @ W_hh),
    Mistake("W_hh is transposed: the forward pass computes h_{t-1} @ W_hh.T, so the gradient goes back "
            "through `@ W_hh` (no .T).", lambda grad_h, h, W_hh: (grad_h * (1 - h**2)) @ W_hh.T),
    Mistake("tanh'(a) is 1 - tanh(a)**2, and tanh(a) is the state h itself: use 1 - h**2, not 1 - h.",
            lambda grad_h, h, W_hh: (grad_h * (1 - h)) @ W_hh),
    Mistake("h is already tanh's output: tanh'(a) = 1 - h**2. Applying tanh to h again (1 - tanh(h)**2) "
            "takes the derivative at the wrong point.",
            lambda grad_h, h, W_hh: (grad_h * (1 - torch.tanh(h) ** 2)) @ W_hh),
    Mistake("the derivative is applied after the matrix product; it belongs to the step's own state h_t, "
            "before W_hh: (grad_h * (1 - h**2)) @ W_hh.", lambda grad_h, h, W_hh: (grad_h @ W_hh) * (1 - h**2)),
    Mistake("that is the sigmoid's derivative, h (1 - h); tanh's is 1 - h**2.",
            lambda grad_h, h, W_hh: (grad_h * h * (1 - h)) @ W_hh),
)


def check_rnn_step_backward(student_fn: Callable, trials: int = 6) -> None:
    """Check ``rnn_step_backward(grad_h (B,H), h (B,H), W_hh (H,H)) -> grad_h_prev (B,H)``."""
    hint = ("Shapes: grad_h and h are (B, H), W_hh (H, H). Multiply grad_h by 1 - h**2 element by element, "
            "then by W_hh.")
    check_against(
        explain_crashes_and_unwritten(student_fn, "rnn_step_backward", hint),
        rnn_step_backward,
        _step_backward_inputs,
        name="rnn_step_backward",
        trials=trials,
        mistakes=STEP_BACKWARD_MISTAKES,
        dims=("batch", "hidden"),
    )


def _bptt_inputs(g: torch.Generator) -> dict:
    sizes = _sequence_inputs(g)  # the states of a real tanh RNN, so that 1 - h**2 is what BPTT meets
    outputs, _ = rnn_forward(*sizes.values())
    return {"outputs": outputs, "W_hh": sizes["W_hh"], "grad_last": torch.randn(sizes["h0"].shape, generator=g)}


def _flipped(outputs, W_hh, grad_last):
    return state_gradients(outputs, W_hh, grad_last).flip(1)


def _slope_of_previous_state(outputs, W_hh, grad_last):
    grads = [grad_last]
    for t in range(outputs.shape[1] - 1, 0, -1):
        grads.append(rnn_step_backward(grads[-1], outputs[:, t - 1], W_hh))
    return torch.stack(grads[::-1], dim=1)


def _every_step_from_the_end(outputs, W_hh, grad_last):
    grads = [rnn_step_backward(grad_last, outputs[:, t + 1], W_hh) for t in range(outputs.shape[1] - 1)]
    return torch.stack([*grads, grad_last], dim=1)


def _one_step_too_many(outputs, W_hh, grad_last):
    grads, grad = [], grad_last
    for t in range(outputs.shape[1] - 1, -1, -1):
        grad = rnn_step_backward(grad, outputs[:, t], W_hh)
        grads.append(grad)
    return torch.stack(grads[::-1], dim=1)


def _transposed_steps(outputs, W_hh, grad_last):
    return state_gradients(outputs, W_hh.T, grad_last)


def _no_derivative(outputs, W_hh, grad_last):
    return state_gradients(torch.zeros_like(outputs), W_hh, grad_last)


BPTT_MISTAKES = (
    Mistake("the gradients are in the wrong order: grads[:, t] is the gradient for outputs[:, t], so the "
            "last entry is grad_last. (Collected walking backwards? Reverse the list before stacking.)", _flipped),
    Mistake("each step back uses the wrong state's slope: going from h_t to h_{t-1} multiplies by "
            "1 - h_t**2 of the *later* state h_t = outputs[:, t], the one the cell returned.",
            _slope_of_previous_state),
    Mistake("every gradient starts again from grad_last: each step back must start from the gradient of "
            "the step after it, so that the factors multiply up.", _every_step_from_the_end),
    Mistake("grads[:, -1] must be grad_last itself (the loss reads the last state directly); the first "
            "step back gives grads[:, -2].", _one_step_too_many),
    Mistake("W_hh is transposed: one step back is (grad * (1 - h**2)) @ W_hh, without .T.", _transposed_steps),
    Mistake("the tanh's derivative is missing: each step back multiplies by 1 - h_t**2 before W_hh.",
            _no_derivative),
)


def check_state_gradients(student_fn: Callable, trials: int = 5) -> None:
    """Check ``state_gradients(outputs (B,T,H), W_hh (H,H), grad_last (B,H)) -> grads (B,T,H)``."""
    hint = ("outputs[:, t] is h_t (B, H). Start from grad_last at t = T - 1 and walk back to t = 0, one "
            "rnn_step_backward per step.")
    check_against(
        explain_crashes_and_unwritten(student_fn, "state_gradients", hint),
        state_gradients,
        _bptt_inputs,
        name="state_gradients",
        trials=trials,
        mistakes=BPTT_MISTAKES,
        dims=("batch", "time", "hidden"),
    )
