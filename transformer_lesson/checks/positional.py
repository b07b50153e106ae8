"""Checks for lesson 06: the sinusoidal positional encoding.

The student writes ``sinusoidal_encoding(max_len, d_model)`` returning a (max_len, d_model) table
with ``PE[pos, 2i] = sin(pos / 10000^(2i/d_model))`` and ``PE[pos, 2i+1] = cos(same angle)``.
:func:`check_sinusoidal_encoding` compares it with the package's on several sizes and recognises
the mistakes in :data:`SINUSOIDAL_MISTAKES` (named only when the answer matches one on two
different sizes). For a wrong table it also says where (position, feature, pair) and, when the
student's pair is a proper (sin, cos) rotation, compares its frequency with the expected
``omega_i = 10000^(-2i/d_model)``.

Then ``rotation_matrix(k, d_model)``, the block-diagonal R_k with ``PE[p + k] = R_k @ PE[p]`` for every
position p (:data:`ROTATION_MISTAKES`), and ``add_learned_positions(x, weight, offset)``, what
:class:`~transformer_lesson.positional.LearnedPositionalEmbedding` does with its table
(:data:`LEARNED_MISTAKES`), including a clear ValueError past the table's last position.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..positional import LearnedPositionalEmbedding, sinusoidal_encoding
from .attention import likely_cause_first
from .core import CheckFailed, Mistake, check_against, explain_crashes


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
        _explained(student), sinusoidal_encoding, _inputs,
        name="sinusoidal_encoding", trials=trials,
        mistakes=list(SINUSOIDAL_MISTAKES.values()), dims=("position", "feature"), quiet=quiet,
        confirm_mistakes=True, mistake_atol=0.3, hint=_where_and_frequency,
    )


# ---------------------------------------------------------------------------------------------
# The relative-position property: PE[p + k] = R_k PE[p].
# ---------------------------------------------------------------------------------------------

def _rotation(k, d_model, *, sign=1.0, use_k=True, exponent_scale=2.0):
    """R_k (d_model, d_model), block-diagonal; block i rotates the pair (sin, cos) by k * omega_i."""
    i = torch.arange(d_model // 2, dtype=torch.float64)
    omega = 10000.0 ** (-exponent_scale * i / d_model)
    angle = (k if use_k else 1) * omega
    cos, sin = torch.cos(angle), sign * torch.sin(angle)
    rotation = torch.zeros(d_model, d_model, dtype=torch.float64)
    even, odd = torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)
    rotation[even, even], rotation[even, odd] = cos, sin  # sin((p+k)w) = sin(pw)cos(kw) + cos(pw)sin(kw)
    rotation[odd, even], rotation[odd, odd] = -sin, cos  # cos((p+k)w) = cos(pw)cos(kw) - sin(pw)sin(kw)
    return rotation.float()


def _rotation_reference(k, d_model):
    return _rotation(k, d_model)


def _rotation_mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice, lambda k, d_model: _rotation(k, d_model, **bug))


ROTATION_MISTAKES: dict[str, Mistake] = {
    "rotates backwards": _rotation_mistake(
        "Your matrix rotates by -k: it is R_{-k}, the transpose of R_k, and maps PE[p] to PE[p - k]. "
        "The textbook rotation [[cos, -sin], [sin, cos]] acts on (x, y) = (cos, sin); here each pair "
        "is (sin, cos), so the signs of the sines trade places. Work one pair out on paper with "
        "sin(a + b) = sin a cos b + cos a sin b.",
        sign=-1.0,
    ),
    "angle without k": _rotation_mistake(
        "Every block turns by omega_i, the step of one position: the offset k is missing. Moving k "
        "positions adds k * omega_i to each angle.",
        use_k=False,
    ),
    "exponent without the 2": _rotation_mistake(
        "The frequencies are 10000^(-i/d_model): i counts (sin, cos) pairs, so pair i turns at "
        "omega_i = 10000^(-2i/d_model), the frequency of the table itself.",
        exponent_scale=1.0,
    ),
}


def _rotation_inputs(generator: torch.Generator) -> dict:
    k = int(torch.randint(-12, 13, (1,), generator=generator))
    k = k if k not in (0, 1) else k + 2  # an offset that tells the mistakes apart
    return {"k": k, "d_model": 2 * int(torch.randint(2, 9, (1,), generator=generator))}


def _rotation_property(actual, expected, inputs) -> str | None:
    """Say whether the student's matrix maps PE[p] to PE[p + k], and if not, to which position."""
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return None
    k, d_model = inputs["k"], inputs["d_model"]
    table = sinusoidal_encoding(40, d_model, dtype=torch.float64)
    p = 20
    moved = actual.detach().double() @ table[p]
    for j in range(40):
        if torch.allclose(moved, table[j], atol=1e-4):
            if j == p + k:
                return None
            return (f"Hint: your matrix maps PE[{p}] to PE[{j}], the position {j - p:+d} away, not "
                    f"{k:+d}. (Rows are output features: R @ PE[p] must equal PE[p + k].)")
    return (f"Hint: your matrix applied to PE[{p}] gives no row of the sinusoidal table at all: each "
            f"block must be a rotation, cos on the diagonal and +-sin off it, for one pair (2i, 2i+1).")


def check_rotation_matrix(student: Callable, trials: int = 6, quiet: bool = False) -> None:
    """Check ``student(k, d_model)`` -> (d_model, d_model) R_k with PE[p + k] = R_k @ PE[p]."""
    try:
        check_against(
            explain_crashes(student, "rotation_matrix"),
            _rotation_reference, _rotation_inputs, name="rotation_matrix", trials=trials,
            mistakes=list(ROTATION_MISTAKES.values()), dims=("row", "column"), atol=1e-4, quiet=quiet,
            confirm_mistakes=True, hint=_rotation_property,
        )
    except CheckFailed as failure:
        raise CheckFailed(likely_cause_first(str(failure))) from None


# ---------------------------------------------------------------------------------------------
# Learned positions: one trained row per position, added to the embeddings.
# ---------------------------------------------------------------------------------------------

def _learned_reference(x, weight, offset):
    """The package's LearnedPositionalEmbedding with ``weight`` as its table."""
    with torch.random.fork_rng(devices=[]):  # its random init must not move the student's RNG
        module = LearnedPositionalEmbedding(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        module.embedding.weight.copy_(weight)
        return module(x, offset)


def _learned_buggy(x, weight, offset, *, start=None, add=True):
    time = x.shape[1]
    first = offset if start is None else start(offset, weight.shape[0], time)
    rows = weight[first : first + time]
    return x + rows if add else rows.expand_as(x).clone()


def _learned_mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice, lambda x, weight, offset: _learned_buggy(x, weight, offset, **bug))


LEARNED_MISTAKES: dict[str, Mistake] = {
    "offset ignored": _learned_mistake(
        "The offset is ignored: the rows start at position 0. With an offset the sequence starts at "
        "position `offset` (one new token after `offset` earlier ones), so take rows "
        "offset .. offset + T - 1.",
        start=lambda offset, max_len, time: 0,
    ),
    "last rows": _learned_mistake(
        "The last T rows of the table were used (`weight[-T:]`): row p is the vector of position p, "
        "so take rows offset .. offset + T - 1.",
        start=lambda offset, max_len, time: max_len - time,
    ),
    "one position late": _learned_mistake(
        "Every token got the vector of the next position: positions count from 0, so the first "
        "token (at `offset`) takes row `offset`.",
        start=lambda offset, max_len, time: offset + 1,
    ),
    "embeddings not added": _learned_mistake(
        "The result holds the position vectors only: they must be *added* to the token embeddings, "
        "`x + rows`.",
        add=False,
    ),
}


def _learned_inputs(generator: torch.Generator) -> dict:
    batch, time, d_model = (torch.randint(2, 6, (3,), generator=generator)).tolist()
    max_len = time + 2 + int(torch.randint(1, 5, (1,), generator=generator))
    offset = int(torch.randint(1, max_len - time, (1,), generator=generator))
    return {"x": torch.randn(batch, time, d_model, generator=generator),
            "weight": torch.randn(max_len, d_model, generator=generator), "offset": offset}


def check_learned_positions(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(x, weight, offset)`` -> x + weight[offset : offset + T], and its ValueError past the end."""
    check_against(
        explain_crashes(student, "add_learned_positions"), _learned_reference, _learned_inputs,
        name="add_learned_positions", trials=trials,
        mistakes=list(LEARNED_MISTAKES.values()), dims=("batch", "time", "d_model"), quiet=True,
        confirm_mistakes=True,
    )
    x, weight = torch.randn(2, 5, 4), torch.randn(8, 4)
    try:
        student(x, weight, 4)  # positions 4 .. 8, but the table ends at 7
    except ValueError:
        pass
    except Exception as error:
        raise CheckFailed(
            f"add_learned_positions(x of 5 tokens, a table of 8 positions, offset=4) raised "
            f"{type(error).__name__}: {error}\nPositions 4 .. 8 run past the table (0 .. 7): raise a "
            f"ValueError that says so, before indexing."
        ) from None
    else:
        raise CheckFailed(
            "add_learned_positions(x of 5 tokens, a table of 8 positions, offset=4) returned a result, "
            "but positions 4 .. 8 run past the table (0 .. 7): raise a ValueError that says so."
        )
    if not quiet:
        print("✓ add_learned_positions: matches the package's LearnedPositionalEmbedding on "
              f"{trials} random inputs, and refuses positions past the table.")
