"""Recurrent networks by hand: one cell, unrolled over time, and why gradients vanish.

A recurrent cell reads one input vector and the previous *hidden state* and returns the next
hidden state; running it left to right over a sequence ("unrolling") gives a summary of the
prefix at every position. Step ``t`` needs the result of step ``t - 1``, so the steps of one
sequence can never run in parallel: this is the constraint the Transformer removes.

Layouts follow the course convention, batch first: inputs ``(B, T, D)``, hidden states
``(B, H)``. (``torch.nn.RNN`` and ``torch.nn.GRU`` keep their returned hidden state as
``(layers, B, H)`` even with ``batch_first=True``; the course's models transpose it.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def rnn_cell(
    x: torch.Tensor,
    h: torch.Tensor,
    W_ih: torch.Tensor,
    W_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> torch.Tensor:
    """One step of an Elman RNN, with the semantics of :class:`torch.nn.RNNCell`.

    ``x`` (B, D) is the input at this step, ``h`` (B, H) the previous hidden state, ``W_ih``
    (H, D), ``W_hh`` (H, H), ``b_ih`` and ``b_hh`` (H,). Returns the next hidden state (B, H):
    ``tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)``. The tanh keeps the state bounded in (-1, 1).
    """
    return torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)


def rnn_forward(
    inputs: torch.Tensor,
    h0: torch.Tensor,
    W_ih: torch.Tensor,
    W_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unroll :func:`rnn_cell` over a sequence.

    ``inputs`` (B, T, D), ``h0`` (B, H). Returns ``outputs`` (B, T, H), the hidden state after
    every step, and ``h_last`` (B, H), the state after the last step. The Python loop is the
    point: each iteration waits for the previous one.
    """
    h = h0
    outputs = []
    for t in range(inputs.shape[1]):
        h = rnn_cell(inputs[:, t], h, W_ih, W_hh, b_ih, b_hh)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


def rnn_step_backward(grad_h: torch.Tensor, h: torch.Tensor, W_hh: torch.Tensor) -> torch.Tensor:
    """Backpropagate one step of :func:`rnn_cell` by hand: from ``∂L/∂h_t`` to ``∂L/∂h_{t-1}``.

    ``grad_h`` (B, H) is the gradient of a loss with respect to the state ``h`` = ``h_t`` (B, H)
    that the cell returned, ``W_hh`` (H, H). As ``h_t = tanh(a_t)`` with
    ``a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``, the chain rule gives
    ``∂L/∂a_t = ∂L/∂h_t ⊙ (1 - h_t²)`` (tanh' written with tanh's own output) and
    ``∂L/∂h_{t-1} = ∂L/∂a_t W_hh``. Returns ``∂L/∂h_{t-1}`` (B, H), through this step only.
    """
    return (grad_h * (1 - h * h)) @ W_hh


def state_gradients(outputs: torch.Tensor, W_hh: torch.Tensor, grad_last: torch.Tensor) -> torch.Tensor:
    """Backpropagation through time by hand, for a loss that reads only the last state.

    ``outputs`` (B, T, H) are the states of :func:`rnn_forward` (``outputs[:, t]`` = ``h_t``),
    ``W_hh`` (H, H), ``grad_last`` (B, H) the gradient of the loss with respect to the last state.
    Returns ``grads`` (B, T, H) with ``grads[:, t]`` = ``∂L/∂h_t``: ``grads[:, -1]`` is
    ``grad_last``, and each earlier one comes from the next by :func:`rnn_step_backward`. One
    multiplication by ``diag(1 - h_t²) W_hh`` per step back is why these gradients shrink (or
    grow) geometrically with the distance from the end.
    """
    grad = grad_last
    grads = [grad]
    for t in range(outputs.shape[1] - 1, 0, -1):
        grad = rnn_step_backward(grad, outputs[:, t], W_hh)
        grads.append(grad)
    return torch.stack(grads[::-1], dim=1)


class ScratchRNN(nn.Module):
    """A one-layer tanh RNN built on :func:`rnn_forward`, with ``nn.RNNCell``'s parameter names.

    ``forward(inputs (B, T, D), h0 (B, H) | None) -> (outputs (B, T, H), h_last (B, H))``.
    Initialised like PyTorch's RNNs (uniform in ``±1/sqrt(H)``), so it can be compared with them.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        bound = hidden_size**-0.5
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, inputs: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.dim() != 3:
            raise ValueError(f"inputs should be (batch, time, features), got shape {tuple(inputs.shape)}.")
        if h0 is None:
            h0 = inputs.new_zeros(inputs.shape[0], self.hidden_size)
        if h0.shape != (inputs.shape[0], self.hidden_size):
            raise ValueError(
                f"h0 should be (batch={inputs.shape[0]}, hidden={self.hidden_size}), got "
                f"{tuple(h0.shape)}. (nn.RNN's (layers, batch, hidden) layout? use h0[0] or h0.squeeze(0).)"
            )
        return rnn_forward(inputs, h0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


def sequence_outputs(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Per-step outputs (B, T, H) of a batch-first ``nn.RNN``/``nn.GRU``/``nn.LSTM`` or :class:`ScratchRNN`."""
    outputs = module(inputs)[0]
    return outputs


def gradient_norm_by_distance(
    run: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    inputs: torch.Tensor,
) -> torch.Tensor:
    """How strongly the last output depends on each earlier input: ``‖∂ loss / ∂ x_t‖``.

    ``run`` maps inputs (B, T, D) to per-step outputs (B, T, H) (a batch-first recurrent module
    is accepted directly). The "loss" is a fixed random projection of the *last* output, so its
    gradient with respect to ``x_t`` measures how much information flows back ``T - 1 - t``
    steps. Returns norms (T,) indexed by distance: entry ``k`` is for the input ``k`` steps
    before the end, averaged over the batch. Backpropagation through time multiplies one
    Jacobian per step, so for a plain tanh RNN these norms shrink roughly geometrically.
    """
    if isinstance(run, nn.Module):
        module = run
        run = lambda x: sequence_outputs(module, x)  # noqa: E731
    inputs = inputs.detach().clone().requires_grad_(True)
    outputs = run(inputs)
    probe = torch.randn(outputs.shape[-1], generator=torch.Generator().manual_seed(0)).to(outputs)
    loss = (outputs[:, -1] @ probe).sum()
    (grad,) = torch.autograd.grad(loss, inputs)
    norms = grad.norm(dim=-1).mean(dim=0)  # (T,)
    return norms.flip(0).detach()


def open_gates(module: nn.GRU | nn.LSTM, bias: float = 4.0) -> nn.GRU | nn.LSTM:
    """Shift the gate that keeps the old state towards "keep", in every layer; returns ``module``.

    For a GRU that is the update gate z (the second of the r, z, n blocks of its biases): with
    ``bias=4``, z is about sigmoid(4) = 0.98 for typical inputs, so h_t keeps 98 % of h_{t-1}.
    For an LSTM it is the forget gate f (the second of its i, f, g, o blocks), a common
    initialisation trick (Jozefowicz et al., 2015, use +1). Training can learn such biases; this
    shows what the gates make possible, not what a freshly initialised network does.
    """
    if not isinstance(module, nn.GRU | nn.LSTM):
        raise TypeError(f"open_gates takes an nn.GRU or nn.LSTM, not a {type(module).__name__}.")
    H = module.hidden_size
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith("bias_hh"):
                parameter[H:2 * H] += bias  # block 1: the GRU's update gate, the LSTM's forget gate
    return module
