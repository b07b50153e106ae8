"""Checks for lesson 06: the sinusoidal positional encoding.

The student writes ``sinusoidal_encoding(max_len, d_model)`` returning a (max_len, d_model) table
with ``PE[pos, 2i] = sin(pos / 10000^(2i/d_model))`` and ``PE[pos, 2i+1] = cos(same angle)``.
:func:`check_sinusoidal_encoding` compares it with the package's on several sizes and recognises
the mistakes in :data:`SINUSOIDAL_MISTAKES`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..positional import sinusoidal_encoding
from .core import Mistake, check_against


def _buggy(max_len, d_model, *, swap=False, halves=False, exponent_scale=2.0, start=0,
           multiply=False):
    """A sinusoidal table with one thing done wrong, chosen by the keyword arguments."""
    position = torch.arange(start, start + max_len, dtype=torch.float64)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float64)
    power = 10000.0 ** (exponent_scale * i / d_model)
    angle = position * power if multiply else position / power  # (max_len, d/2)
    sin, cos = torch.sin(angle), torch.cos(angle)
    first, second = (cos, sin) if swap else (sin, cos)
    if halves:
        return torch.cat([first, second], dim=1).float()
    return torch.stack([first, second], dim=2).flatten(1).float()  # interleave


def _mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice, lambda max_len, d_model: _buggy(max_len, d_model, **bug))


SINUSOIDAL_MISTAKES: dict[str, Mistake] = {
    "sin and cos swapped": _mistake(
        "Sin and cos swapped: even features (0, 2, 4, ...) are sines, odd features cosines.",
        swap=True,
    ),
    "halves instead of interleaved": _mistake(
        "Sines and cosines side by side in two halves: a valid variant, but this course "
        "interleaves them, feature 2i = sin and 2i+1 = cos of the same angle. Assign with "
        "`pe[:, 0::2] = ...` and `pe[:, 1::2] = ...`.",
        halves=True,
    ),
    "exponent without the 2": _mistake(
        "Exponent i/d_model instead of 2i/d_model: i counts (sin, cos) pairs, so the exponent "
        "of pair i is 2i/d_model (it must reach almost 1 at the last pair).",
        exponent_scale=1.0,
    ),
    "positions from 1": _mistake(
        "Positions counted from 1: the first row is position 0, whose encoding is "
        "(0, 1, 0, 1, ...). Use `torch.arange(max_len)`.",
        start=1,
    ),
    "multiplied by the power": _mistake(
        "Multiplied by 10000^(2i/d_model) instead of dividing: the frequencies must *decrease* "
        "along the features, from 1 radian per position down to about 1/10000.",
        multiply=True,
    ),
}


def _inputs(generator: torch.Generator) -> dict:
    max_len = int(torch.randint(3, 60, (1,), generator=generator))
    d_model = 2 * int(torch.randint(2, 17, (1,), generator=generator))
    return {"max_len": max_len, "d_model": d_model}


def check_sinusoidal_encoding(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(max_len, d_model)`` -> (max_len, d_model) against the package's table."""
    check_against(
        student, sinusoidal_encoding, _inputs, name="sinusoidal_encoding", trials=trials,
        mistakes=list(SINUSOIDAL_MISTAKES.values()), dims=("position", "feature"), quiet=quiet,
    )
