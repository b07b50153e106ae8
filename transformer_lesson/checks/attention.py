"""Checks for lesson 04: scaled dot-product attention with masks.

The student writes ``attention(queries, keys, values, mask=None) -> (output, weights)``.
:func:`check_attention` compares it with the package's teaching path on random inputs (3-D and
4-D, with and without masks of several broadcast shapes) and recognises the usual mistakes
listed in :data:`ATTENTION_MISTAKES`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from ..attention import scaled_dot_product_attention
from .core import CheckFailed, Mistake, check_against


def _reference(queries, keys, values, mask=None):
    return scaled_dot_product_attention(queries, keys, values, mask)


def _buggy(queries, keys, values, mask=None, *, scale=True, scale_by=None, softmax_dim=-1,
           mask_after=False, invert=False, fill=float("-inf"), transpose_keys=True):
    """Attention with one thing done wrong, chosen by the keyword arguments."""
    d_k = queries.shape[-1]
    keys_t = keys.transpose(-2, -1) if transpose_keys else keys
    scores = queries @ keys_t
    if scale:
        scores = scores / (scale_by if scale_by is not None else math.sqrt(d_k))
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and not mask_after:
        scores = scores.masked_fill(~mask, fill)
    weights = torch.softmax(scores, dim=softmax_dim)
    if mask is not None and mask_after:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ values, weights


def _mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice=advice, implementation=functools.partial(_buggy, **bug))


def _scaled_by_d_k(queries, keys, values, mask=None):
    return _buggy(queries, keys, values, mask, scale_by=queries.shape[-1])


ATTENTION_MISTAKES: dict[str, Mistake] = {
    "missing scale": _mistake(
        "Missing scale: the scores were not divided by sqrt(d_k). Use "
        "`queries @ keys.transpose(-2, -1) / math.sqrt(d_k)`.",
        scale=False,
    ),
    "scaled by d_k": Mistake(
        advice="Scaled by d_k: the scores were divided by d_k instead of its square root, "
        "sqrt(d_k).",
        implementation=_scaled_by_d_k,
    ),
    "softmax over queries": _mistake(
        "Softmax over the wrong axis: the weights must sum to 1 over the keys (the last "
        "dimension), one distribution per query. Use `torch.softmax(scores, dim=-1)`.",
        softmax_dim=-2,
    ),
    "mask after softmax": _mistake(
        "Mask applied after the softmax: zeroing weights afterwards leaves rows that no longer "
        "sum to 1. Fill the masked *scores* with -inf before the softmax.",
        mask_after=True,
    ),
    "inverted mask": _mistake(
        "Inverted mask: in this course True means 'may attend', so fill the scores where the "
        "mask is False: `scores.masked_fill(~mask, float('-inf'))`.",
        invert=True,
    ),
    "masked with zero": _mistake(
        "Masked scores set to 0 instead of -inf: exp(0) = 1, so masked keys still get weight. "
        "Use float('-inf').",
        fill=0.0,
    ),
    "keys not transposed": _mistake(
        "Keys not transposed: the scores are `queries @ keys.transpose(-2, -1)`, a dot product "
        "of every query with every key. Without the transpose the product only runs when "
        "T_k == d_k, and then it computes something else.",
        transpose_keys=False,
    ),
}


def _random_mask(shape, generator) -> torch.Tensor:
    """A random boolean mask in which every query row keeps at least one key."""
    mask = torch.rand(shape, generator=generator) < 0.6
    first = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    return mask | torch.nn.functional.one_hot(first, shape[-1]).bool()


def attention_inputs(generator: torch.Generator, trial: list[int]) -> dict:
    """Random inputs; trial 0 is square (T_k == d_k) and masked so that every mistake shows."""
    t = trial[0]
    trial[0] += 1
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=generator))
    lead = (r(1, 3),) if t % 2 == 0 else (r(1, 3), r(1, 3))  # (B,) or (B, heads)
    t_q, t_k, d_k, d_v = r(2, 7), r(2, 7), r(2, 8), r(2, 8)
    if t == 0:
        t_q, t_k, d_k = 5, 4, 4
    kind = ("full", "padding", "causal", "none", "full")[t % 5]
    if kind == "causal":
        t_q = t_k
    queries = torch.randn(*lead, t_q, d_k, generator=generator) * 2
    keys = torch.randn(*lead, t_k, d_k, generator=generator) * 2
    values = torch.randn(*lead, t_k, d_v, generator=generator)
    if kind == "full":
        mask = _random_mask((*lead, t_q, t_k), generator)
    elif kind == "padding":
        lengths = torch.randint(1, t_k + 1, (lead[0],), generator=generator)
        real = torch.arange(t_k)[None, :] < lengths[:, None]  # (B, T_k)
        mask = real.view(lead[0], *([1] * len(lead)), t_k)  # (B, [1,] 1, T_k)
    elif kind == "causal":
        mask = torch.ones(t_q, t_k, dtype=torch.bool).tril()
    else:
        mask = None
    return {"queries": queries, "keys": keys, "values": values, "mask": mask}


def _explain_crashes(student: Callable, name: str) -> Callable:
    """Turn a crash inside the student's function into a CheckFailed with a hint."""

    def wrapped(*inputs):
        try:
            return student(*inputs)
        except NotImplementedError:  # an exercise not done yet: let it say so
            raise
        except (RuntimeError, ValueError, IndexError) as error:
            shapes = ", ".join(str(tuple(v.shape)) for v in inputs if isinstance(v, torch.Tensor))
            hint = ""
            if "mat" in str(error) or "shape" in str(error) or "size" in str(error):
                hint = (
                    "\nHint: a shape error in a product usually means the keys were not "
                    "transposed, or transposed on the wrong dimensions: use "
                    "`keys.transpose(-2, -1)`, which works for any number of leading dimensions."
                )
            message = f"{name} crashed on inputs of shapes {shapes}:\n  {error}{hint}"
            raise CheckFailed(message) from None

    return wrapped


def check_attention(student: Callable, trials: int = 6, quiet: bool = False) -> None:
    """Check ``student(queries, keys, values, mask=None) -> (output, weights)``."""
    counter = [0]
    check_against(
        _explain_crashes(student, "attention"),
        _reference,
        lambda g: attention_inputs(g, counter),
        name="attention",
        trials=trials,
        mistakes=list(ATTENTION_MISTAKES.values()),
        quiet=quiet,
    )
