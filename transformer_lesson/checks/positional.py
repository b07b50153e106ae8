"""Checks for lesson 06: the sinusoidal positional encoding.

The student writes ``sinusoidal_encoding(max_len, d_model)`` returning a (max_len, d_model) table
with ``PE[pos, 2i] = sin(pos / 10000^(2i/d_model))`` and ``PE[pos, 2i+1] = cos(same angle)``.
:func:`check_sinusoidal_encoding` compares it with the package's on several sizes and recognises
the mistakes in :data:`SINUSOIDAL_MISTAKES` (named only when the answer matches one on two
different sizes). For a wrong table it also says where (position, feature, pair) and, when the
student's pair is a proper (sin, cos) rotation, compares its frequency with the expected
``omega_i = 10000^(-2i/d_model)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..positional import sinusoidal_encoding
from .core import Mistake, check_against, explain_crashes


def _buggy(max_len, d_model, *, swap=False, halves=False, exponent_scale=2.0, start=0,
           multiply=False, base=10000.0, denominator_offset=0, degrees=False,
           integer_exponent=False):
    """A sinusoidal table with one thing done wrong, chosen by the keyword arguments."""
    position = torch.arange(start, start + max_len, dtype=torch.float64)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float64)
    exponent = exponent_scale * i / (d_model + denominator_offset)
    if integer_exponent:
        exponent = (exponent_scale * i) // d_model
    power = base**exponent
    angle = position * power if multiply else position / power  # (max_len, d/2)
    if degrees:
        angle = angle * 180 / math.pi
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
    "exponent 4i": _mistake(
        "Exponent 4i/d_model: `torch.arange(0, d_model, 2)` already counts 2i (0, 2, 4, ...), so "
        "do not multiply it by 2 again: frequency = 10000 ** (-torch.arange(0, d_model, 2) / "
        "d_model).",
        exponent_scale=4.0,
    ),
    "base 1000": _mistake(
        "Base 1000 instead of 10000: the frequencies are 10000^(-2i/d_model), from 1 down to "
        "about 1/10000 radian per position.",
        base=1000.0,
    ),
    "divided by d_model - 1": _mistake(
        "Exponent 2i/(d_model - 1) instead of 2i/d_model: divide by d_model itself.",
        denominator_offset=-1,
    ),
    "angles in degrees": _mistake(
        "Angles in degrees: torch.sin and torch.cos take radians, and the angle is simply "
        "pos * omega_i, with no conversion by 180/pi.",
        degrees=True,
    ),
    "integer division in the exponent": _mistake(
        "Integer division in the exponent: `2i // d_model` is 0 for every pair, so all pairs got "
        "frequency 1. Use true division, `/`.",
        integer_exponent=True,
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


def _where_and_frequency(actual, expected, inputs) -> str | None:
    """Say where the table is wrong, and compare the pair's frequency with omega_i if it can."""
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return None
    table = actual.detach().double()
    diff = (table - expected.double()).abs().nan_to_num(nan=math.inf)
    position, feature = (int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    d_model = inputs["d_model"]
    pair = feature // 2
    kind = "sin" if feature % 2 == 0 else "cos"
    omega = 10000.0 ** (-2 * pair / d_model)
    text = (f"Largest difference at position {position}, feature {feature} (pair {pair}, its "
            f"{kind}): you have {table[position, feature].item():.6g}, expected "
            f"{expected[position, feature].item():.6g} = {kind}({position} * omega_{pair}).")
    if 2 * pair + 1 >= d_model or table.shape[0] < 2:
        return text
    # Is the pair a (sin, cos) rotation? Tested on the first positions only: a float32 table is far
    # from exact at the large angles of a wrong, too high frequency.
    sin, cos = table[:3, 2 * pair], table[:3, 2 * pair + 1]
    step = math.atan2(sin[1].item(), cos[1].item())  # the turn from one position to the next
    positions = torch.arange(sin.shape[0], dtype=torch.float64)
    is_rotation = (torch.allclose(sin, torch.sin(positions * step), atol=1e-3)
                   and torch.allclose(cos, torch.cos(positions * step), atol=1e-3))
    if is_rotation and abs(step - omega) > 1e-4 * max(omega, 1e-3):
        text += (f"\nYour frequency for pair {pair} is {step:.6g} rad per position, expected "
                 f"omega_{pair} = 10000^(-2*{pair}/{d_model}) = {omega:.6g} (measured as the "
                 f"turn from position 0 to 1, so only up to a multiple of 2*pi).")
        if abs(step / omega - 180 / math.pi) < 0.01 * 180 / math.pi:
            text += " Yours is 180/pi times larger: are your angles in degrees? Use radians."
    return text


def _inputs(generator: torch.Generator) -> dict:
    max_len = int(torch.randint(3, 60, (1,), generator=generator))
    d_model = 2 * int(torch.randint(2, 17, (1,), generator=generator))
    return {"max_len": max_len, "d_model": d_model}


def _broadcast_hint(error: Exception) -> str:
    if "size" in str(error) or "shape" in str(error):
        return ("\nHint: multiply the positions as a column, shape (max_len, 1), by the d_model/2 frequencies "
                "as a row: they broadcast to the angles, shape (max_len, d_model/2), as in "
                "`torch.arange(max_len)[:, None] * frequencies`. The sines go to `pe[:, 0::2]` and the "
                "cosines to `pe[:, 1::2]` of a (max_len, d_model) table.")
    return ""


def _explained(student: Callable) -> Callable:
    """``student`` with its crashes explained, naming the sizes it crashed on."""
    def guarded(max_len, d_model):
        return explain_crashes(student, f"sinusoidal_encoding({max_len}, {d_model})",
                               hint_for=_broadcast_hint)(max_len, d_model)
    return guarded


def check_sinusoidal_encoding(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(max_len, d_model)`` -> (max_len, d_model) against the package's table.

    A known mistake is recognised within 0.3, not 1e-5: computed in float32, the angles of a frequency
    that grows instead of falling reach some 10^5 radians, where the sines are only accurate to about
    0.2, depending on how the student computes them. On the second input that confirms a mistake, the
    mistake differs from the right table by more than 0.6.
    """
    check_against(
        _explained(student), sinusoidal_encoding, _inputs, name="sinusoidal_encoding", trials=trials,
        mistakes=list(SINUSOIDAL_MISTAKES.values()), dims=("position", "feature"), quiet=quiet,
        confirm_mistakes=True, mistake_atol=0.3, hint=_where_and_frequency,
    )
