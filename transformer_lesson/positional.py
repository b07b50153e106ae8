"""Positional encoding: telling attention where each token is.

Self-attention treats its input as a *set*: shuffle the positions and the outputs are shuffled
the same way, nothing else changes (it is permutation-equivariant). Word order matters, so a
vector that depends on the position is added to each token's embedding.

* :func:`sinusoidal_encoding` (Vaswani et al., 2017): pairs of features are a sine and a cosine of
  the position at geometrically spaced frequencies,
  ``PE[pos, 2i] = sin(pos * w_i)``, ``PE[pos, 2i+1] = cos(pos * w_i)``, ``w_i = base^(-2i/d_model)``.
  Moving by k positions rotates every (sin, cos) pair by the angle ``k * w_i``, so the dot product
  of two encodings depends only on their distance (for an even ``d_model``; an odd one ends with a
  lone sine). Nothing is learned, and any position can be
  computed.
* :class:`LearnedPositionalEmbedding`: one trained vector per position, as in BERT and GPT. As good
  in practice, but it knows nothing about positions beyond ``max_len``.

Both modules are built the same way, ``Module(d_model, max_len, dropout=0.0)``, take embeddings
(B, T, d_model) and return them with positions added. ``offset`` says at which position the
sequence starts (for decoding one token at a time with a cache).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_encoding(
    max_len: int,
    d_model: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(max_len, d_model) table: row p is the encoding of position p.

    Even features are sines and odd features cosines of ``pos * base^(-2i/d_model)``; an odd
    d_model drops the last cosine. Computed in float64 on the CPU, then rounded once to ``dtype``
    and moved to ``device``, so every dtype gets the correctly rounded table.
    """
    if max_len < 1 or d_model < 1:
        raise ValueError(f"max_len and d_model must be positive, got {max_len} and {d_model}.")
    position = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    pair = torch.arange(0, d_model, 2, dtype=torch.float64)  # 2i = 0, 2, 4, ...
    frequency = torch.exp(-math.log(base) * pair / d_model)  # base^(-2i/d), (ceil(d/2),)
    angle = position * frequency  # (max_len, ceil(d/2))
    encoding = torch.zeros(max_len, d_model, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(angle)
    encoding[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return encoding.to(dtype).to(device) if device is not None else encoding.to(dtype)


def _check_length(x: torch.Tensor, offset: int, max_len: int, d_model: int, name: str) -> None:
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(
            f"{name} expects embeddings of shape (batch, time, d_model={d_model}), got "
            f"{tuple(x.shape)}."
        )
    if offset < 0 or offset + x.shape[1] > max_len:
        raise ValueError(
            f"{name} has positions 0 .. {max_len - 1} (max_len={max_len}), but this input needs "
            f"positions {offset} .. {offset + x.shape[1] - 1}: cut the sequence or build the "
            f"module with a larger max_len."
        )


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to embeddings, then dropout: (B, T, d) -> (B, T, d).

    The table is made for the dtype and device of each input (computed in float64, rounded once),
    and kept for the next call: a float64 model gets the exact table, not a float32 one widened.
    It is not a parameter or a buffer, so it is neither trained nor saved.
    """

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.dropout = nn.Dropout(dropout)
        self._tables: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def table(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """The (max_len, d_model) table in ``dtype`` on ``device`` (cached)."""
        key = (dtype, torch.device(device))
        if key not in self._tables:
            self._tables[key] = sinusoidal_encoding(
                self.max_len, self.d_model, dtype=dtype, device=device
            )
        return self._tables[key]

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_length(x, offset, self.max_len, self.d_model, type(self).__name__)
        positions = self.table(x.dtype, x.device)[offset : offset + x.shape[1]]  # (T, d)
        return self.dropout(x + positions)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


class LearnedPositionalEmbedding(nn.Module):
    """Adds one trained vector per position, then dropout: (B, T, d) -> (B, T, d).

    Same argument order as :class:`SinusoidalPositionalEncoding`: ``(d_model, max_len)``.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.embedding = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_length(x, offset, self.max_len, self.d_model, type(self).__name__)
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        return self.dropout(x + self.embedding(positions))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"
