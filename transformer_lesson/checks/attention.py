"""Checks for lesson 04: scaled dot-product attention with masks.

The student writes ``attention(queries, keys, values, mask=None) -> (output, weights)``.
:func:`check_attention` compares the output with PyTorch's own
``torch.nn.functional.scaled_dot_product_attention`` and the weights with the package's teaching
path, on random inputs (3-D and 4-D, with and without masks of several broadcast shapes). When
an answer is wrong it names the usual mistakes listed in :data:`ATTENTION_MISTAKES`, but only if
the answer matches the mistake on two different inputs, and it checks two properties that every
right answer has (the weights sum to 1 over the keys; they are 0 at masked keys) to say which
family of mistake it is when none is named.

The random sizes T_q, T_k, d_k and d_v are all different and none is the square of another, so
that two different mistakes cannot give the same numbers by coincidence (dividing by sqrt(T_k)
looks exactly like dividing by d_k when T_k = d_k^2, and like the right answer when T_k = d_k).
When an answer matches a known mistake, the message says so first ("Likely cause: ..."), before
the property hints.

The masks of the lesson have checks of their own: :func:`check_padding_mask` (lengths -> (B, 1, 1,
T)), :func:`check_causal_mask` ((T_q, T_k), the queries being the last positions) and
:func:`check_decoder_mask` (padding and causal combined), with their mistakes in
:data:`PADDING_MASK_MISTAKES`, :data:`CAUSAL_MASK_MISTAKES` and :data:`DECODER_MASK_MISTAKES`.
"""

from __future__ import annotations

import functools
import math
import os
import traceback
from collections.abc import Callable

import torch
from torch.nn.functional import scaled_dot_product_attention as torch_sdpa

from ..attention import causal_mask, padding_mask, scaled_dot_product_attention
from .core import CheckFailed, Mistake, check_against, explain_crashes, padded_mask


def _reference(queries, keys, values, mask=None):
    """Output from PyTorch's fused attention, weights from the package (PyTorch's has none)."""
    _, weights = scaled_dot_product_attention(queries, keys, values, mask)
    return torch_sdpa(queries, keys, values, attn_mask=mask), weights


def _buggy(queries, keys, values, mask=None, *, scale="sqrt_d_k", softmax_dim=-1,
           mask_mode="fill", fill=float("-inf"), scale_after=False):
    """Attention with one thing done wrong, chosen by the keyword arguments."""
    d_k, t_k = queries.shape[-1], keys.shape[-2]
    scores = queries @ keys.transpose(-2, -1)
    factor = {"sqrt_d_k": 1 / math.sqrt(d_k), "none": 1.0, "d_k": 1 / d_k,
              "sqrt_t_k": 1 / math.sqrt(t_k), "times_sqrt_d_k": math.sqrt(d_k)}[scale]
    if not scale_after:
        scores = scores * factor
    if mask is not None and mask_mode == "fill":
        scores = scores.masked_fill(~mask, fill)
    elif mask is not None and mask_mode == "inverted":
        scores = scores.masked_fill(mask, fill)
    if softmax_dim is None:  # F.softmax(scores) without dim: PyTorch's legacy guess
        softmax_dim = 0 if scores.dim() in (0, 1, 3) else 1
    weights = torch.softmax(scores, dim=softmax_dim)
    if mask is not None and mask_mode == "after":
        weights = weights.masked_fill(~mask, 0.0)
    if scale_after:
        weights = weights / math.sqrt(d_k)
    return weights @ values, weights


def _mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice=advice, implementation=functools.partial(_buggy, **bug))


ATTENTION_MISTAKES: dict[str, Mistake] = {
    "missing scale": _mistake(
        "Missing scale: the scores were not divided by sqrt(d_k). Use "
        "`queries @ keys.transpose(-2, -1) / math.sqrt(d_k)`.",
        scale="none",
    ),
    "scaled by d_k": _mistake(
        "Scaled by d_k: the scores were divided by d_k instead of its square root, sqrt(d_k).",
        scale="d_k",
    ),
    "scaled by sqrt(T_k)": _mistake(
        "Scaled by the square root of the wrong size: the number of keys T_k "
        "(`keys.shape[-2]`) instead of the number of features d_k (`queries.shape[-1]`). The "
        "scale corrects the variance of a dot product of d_k terms.",
        scale="sqrt_t_k",
    ),
    "multiplied by sqrt(d_k)": _mistake(
        "Multiplied by sqrt(d_k) instead of dividing: the scores must shrink by sqrt(d_k), "
        "`scores = queries @ keys.transpose(-2, -1) / math.sqrt(d_k)`.",
        scale="times_sqrt_d_k",
    ),
    "scaled after the softmax": _mistake(
        "Scaled after the softmax: dividing the *weights* by sqrt(d_k) leaves rows that sum to "
        "1/sqrt(d_k). Divide the *scores* before the softmax.",
        scale_after=True,
    ),
    "softmax over queries": _mistake(
        "Softmax over the wrong axis: the weights must sum to 1 over the keys (the last "
        "dimension), one distribution per query. Use `torch.softmax(scores, dim=-1)`.",
        softmax_dim=-2,
    ),
    "softmax over dim=1": _mistake(
        "Softmax over `dim=1`: a fixed positive index means a different axis for different inputs "
        "(the queries of (B, T_q, T_k) scores, the heads of (B, heads, T_q, T_k) ones). The keys "
        "are always the last dimension: `torch.softmax(scores, dim=-1)`.",
        softmax_dim=1,
    ),
    "softmax without dim": _mistake(
        "`F.softmax(scores)` without `dim`: PyTorch then guesses a dimension (dimension 0 for "
        "3-D scores, 1 for 4-D: the batch or the heads, never the keys) and warns that this is "
        "deprecated. Always say `dim=-1`.",
        softmax_dim=None,
    ),
    "mask ignored": _mistake(
        "The mask had no effect. A common cause: `scores.masked_fill(~mask, float('-inf'))` "
        "returns a *new* tensor and leaves `scores` unchanged, so assign the result, "
        "`scores = scores.masked_fill(...)`.",
        mask_mode="none",
    ),
    "mask after softmax": _mistake(
        "Mask applied after the softmax: zeroing weights afterwards leaves rows that no longer "
        "sum to 1. Fill the masked *scores* with -inf before the softmax.",
        mask_mode="after",
    ),
    "inverted mask": _mistake(
        "Inverted mask: in this course True means 'may attend', so fill the scores where the "
        "mask is False: `scores.masked_fill(~mask, float('-inf'))`. (nn.MultiheadAttention "
        "uses the opposite convention, True = blocked.)",
        mask_mode="inverted",
    ),
    "masked with zero": _mistake(
        "Masked scores set to 0 instead of -inf (multiplying the scores by the mask does the "
        "same): exp(0) = 1, so masked keys still get weight. Use float('-inf').",
        fill=0.0,
    ),
}


def _random_mask(shape, generator) -> torch.Tensor:
    """A random boolean mask in which every query row keeps at least one key."""
    mask = torch.rand(shape, generator=generator) < 0.6
    first = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    return mask | torch.nn.functional.one_hot(first, shape[-1]).bool()


def _distinct_sizes(generator: torch.Generator) -> list[int]:
    """T_q, T_k, d_k, d_v in 2..9: all different, and none the square of another."""
    while True:
        sizes = torch.randint(2, 10, (4,), generator=generator).tolist()
        if len(set(sizes)) == 4 and not any(a * a == b for a in sizes for b in sizes):
            return sizes


def attention_inputs(generator: torch.Generator, trial: list[int]) -> dict:
    """Random inputs; the kind of mask cycles with the trial number (full, padding, causal, none).

    Every row of every mask keeps at least one key, so PyTorch's attention is defined everywhere.
    """
    t = trial[0]
    trial[0] += 1
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=generator))
    lead = (r(2, 3),) if t % 2 == 0 else (r(2, 3), r(2, 3))  # (B,) or (B, heads)
    t_q, t_k, d_k, d_v = _distinct_sizes(generator)
    kind = ("full", "padding", "causal", "none", "full")[t % 5]
    if kind == "causal":  # new queries over cached keys: the queries are the last T_q positions
        t_q, t_k = min(t_q, t_k), max(t_q, t_k)
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
        mask = causal_mask(t_q, t_k)
    else:
        mask = None
    return {"queries": queries, "keys": keys, "values": values, "mask": mask}


def _property_hints(actual, expected, inputs) -> str | None:
    """Family-level hints from two properties of right weights: rows sum to 1, 0 where masked."""
    if not (isinstance(actual, tuple | list) and len(actual) == 2):
        return None
    output, weights = actual
    if not isinstance(weights, torch.Tensor) or weights.shape != expected[1].shape:
        return None
    weights = weights.detach().double()
    mask = inputs["mask"]
    allowed = (torch.ones(weights.shape, dtype=torch.bool) if mask is None
               else mask.expand(weights.shape))
    sums = weights.sum(-1)
    finite = torch.isfinite(sums)
    lines = []
    if not finite.all():
        where = (~finite).nonzero()[0].tolist()
        lines.append(
            f"Hint: some rows of your weights contain NaN (e.g. row {where}). A softmax over "
            f"scores that are all -inf along its dimension is 0/0; in this check every query has "
            f"at least one allowed key, so either your mask hides keys it should not, or the "
            f"softmax runs over another dimension than the keys."
        )
    good = sums[finite]
    if good.numel() and not torch.allclose(good, torch.ones_like(good), atol=1e-4):
        other = [d for d in range(weights.dim() - 1) if torch.allclose(
            weights.sum(d), torch.ones((), dtype=weights.dtype), atol=1e-4)]
        if other:
            lines.append(
                f"Hint: your weights sum to 1 along dimension {other[0]}, not over the keys (the "
                f"last dimension): the softmax normalised the wrong dimension; use dim=-1."
            )
        elif torch.allclose(good, good[:1].expand_as(good), atol=1e-4):
            lines.append(
                f"Hint: every row of your weights sums to {good[0].item():.4g}, not 1: something "
                f"scaled them after the softmax. Any scaling belongs to the scores, before it."
            )
        else:
            lines.append(
                "Hint: your weights do not sum to 1 over the keys (the last dimension): they "
                "must be a softmax over dim=-1, and nothing may change them after it."
            )
    leaked = (~allowed) & (weights.abs() > 1e-6)
    if mask is not None and bool(leaked.any()):
        where = leaked.nonzero()[0].tolist()
        lines.append(
            f"Hint: your weights are not 0 at masked keys (where the mask is False), e.g. "
            f"{weights[tuple(where)].item():.4g} at index {where}: the mask had no effect, or the "
            f"wrong one. Set the masked *scores* to -inf before the softmax, and assign the "
            f"result of masked_fill."
        )
    if not lines and not torch.allclose(weights, expected[1].double(), atol=1e-5, rtol=1e-4):
        lines.append(
            "Hint: your weights are a distribution over the allowed keys (each row sums to 1 "
            "and masked keys get 0), so the mask and the softmax are right; the scores differ. "
            "Check the scale: divide queries @ keys.transpose(-2, -1) by sqrt(d_k), with d_k = "
            "queries.shape[-1], before the softmax."
        )
    if not lines and isinstance(output, torch.Tensor):
        lines.append("Hint: your weights are right; the output should be `weights @ values`.")
    return "\n".join(lines) or None


_TRANSPOSE_HINT = ("\nHint: the shapes in a product do not fit, which usually means the keys were not transposed, "
                   "or transposed on the wrong dimensions: use `keys.transpose(-2, -1)`, which works for any "
                   "number of leading dimensions.")
_MASK_HINT = ("\nHint: the mask does not broadcast against your scores, which must be (..., T_q, T_k), as "
              "`queries @ keys.transpose(-2, -1)` gives them. Use the mask as it is given, without transposing "
              "or reshaping it: `scores.masked_fill(~mask, float('-inf'))`.")
_IF_MASK_HINT = ("\nHint: `if mask:` asks for the truth value of a whole tensor. To test whether a mask was "
                 "given, write `if mask is not None:`.")
_EITHER_HINT = ("\nHint: two shapes do not broadcast. Either the keys were transposed on the wrong dimensions "
                "(use `keys.transpose(-2, -1)`), or the mask does not fit your scores, which must be (..., T_q, "
                "T_k): use the mask as it is given, without transposing or reshaping it.")
_MATMUL_ERRORS = ("batch1", "batch2", "mat1", "mat2", "Expected size for first two dimensions")


def _crash_line(error: Exception) -> str:
    """The source line, outside PyTorch, on which ``error`` was raised ("" when it is not known)."""
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(torch_dir)]
    return (frames[-1].line or "") if frames else ""


def _crash_hint(error: Exception) -> str:
    """A hint for the usual crashes: a product of misfitting shapes, a mask that does not broadcast, `if mask:`."""
    message = str(error)
    if "Boolean value of Tensor with more than one value is ambiguous" in message:
        return _IF_MASK_HINT
    if any(marker in message for marker in _MATMUL_ERRORS):
        return _TRANSPOSE_HINT
    if "must match the size of tensor" not in message:  # not a broadcast error either
        return ""
    line = _crash_line(error)  # a broadcast: of the product's leading dimensions, or of the mask?
    product = any(op in line for op in ("@", "matmul", "bmm", "einsum"))
    mask = "mask" in line
    if product and not mask:
        return _TRANSPOSE_HINT
    if mask and not product:
        return _MASK_HINT
    return _EITHER_HINT


def likely_cause_first(message: str) -> str:
    """Move a named mistake ("Likely cause: ...") above the property hints in a failure message.

    When the answer matches a known mistake, that is what the student should read first; the
    hints ("Hint: ...", which say which property of the weights is broken) follow it.
    """
    marker = "\nLikely cause: "
    if marker not in message or "\nHint: " not in message.split(marker)[0]:
        return message
    before, cause = message.split(marker, 1)
    failure, hints = before.split("\nHint: ", 1)
    context = ""
    if "\n(trial " in cause:
        cause, context = cause.split("\n(trial ", 1)
        context = "\n(trial " + context
    return f"{failure}{marker}{cause}\nHint: {hints}{context}"


def check_attention(student: Callable, trials: int = 6, quiet: bool = False) -> None:
    """Check ``student(queries, keys, values, mask=None) -> (output, weights)``.

    The output is compared with ``torch.nn.functional.scaled_dot_product_attention``, the weights
    with the package's :func:`~transformer_lesson.attention.scaled_dot_product_attention`.
    """
    counter = [0]
    try:
        check_against(
            explain_crashes(student, "attention", hint_for=_crash_hint),
            _reference,
            lambda g: attention_inputs(g, counter),
            name="attention",
            trials=trials,
            mistakes=list(ATTENTION_MISTAKES.values()),
            quiet=True,
            confirm_mistakes=True,
            hint=_property_hints,
        )
    except CheckFailed as failure:
        raise CheckFailed(likely_cause_first(str(failure))) from None
    if not quiet:
        print(f"✓ attention: output matches torch.nn.functional.scaled_dot_product_attention and "
              f"the weights match the package's, on {trials} random inputs.")


# ---------------------------------------------------------------------------------------------
# The masks of lesson 04: padding, causal, and the two combined.
# ---------------------------------------------------------------------------------------------

def _padding_from_lengths(lengths, max_len):
    """The reference: (B,) lengths -> (B, 1, 1, max_len), True at the real tokens."""
    return padding_mask(torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None])


def _padding_buggy(lengths, max_len, *, compare="<", shift=0, left=False, invert=False):
    position = torch.arange(max_len)[None, :] + shift
    if left:  # padding at the front: the last `length` positions are real
        real = position >= max_len - lengths[:, None]
    else:
        real = position <= lengths[:, None] if compare == "<=" else position < lengths[:, None]
    return (~real if invert else real)[:, None, None, :]


def _padding_mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice, functools.partial(_padding_buggy, **bug))


PADDING_MASK_MISTAKES: dict[str, Mistake] = {
    "inverted": _padding_mistake(
        "The mask is inverted: True must mark the *real* tokens (may attend) and False the padding, "
        "the course's convention. Position t of sentence b is real when t < lengths[b].",
        invert=True,
    ),
    "one too many": _padding_mistake(
        "One position too many counts as real: a sentence of length L has real tokens at positions "
        "0 .. L-1, so compare with `<`, not `<=`.",
        compare="<=",
    ),
    "positions from 1": _padding_mistake(
        "One real position too few: positions are counted from 0 (`torch.arange(max_len)`), so a "
        "sentence of length L is real at 0 .. L-1.",
        shift=1,
    ),
    "padding on the left": _padding_mistake(
        "The padding is at the front of your sentences: in this course a padded batch has its real "
        "tokens first and the `<pad>` tokens after them, so position t is real when t < lengths[b].",
        left=True,
    ),
}


def _padding_inputs(generator: torch.Generator) -> dict:
    batch = int(torch.randint(2, 6, (1,), generator=generator))
    max_len = int(torch.randint(3, 10, (1,), generator=generator))
    lengths = torch.randint(1, max_len + 1, (batch,), generator=generator)
    lengths[0], lengths[-1] = max_len, max(1, max_len - 2)  # one full sentence, one padded
    return {"lengths": lengths, "max_len": max_len}


def check_padding_mask(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(lengths, max_len)``: (B,) int lengths -> (B, 1, 1, max_len) boolean, True = real."""
    check_against(
        explain_crashes(student, "padding_mask_from_lengths"),
        _padding_from_lengths, _padding_inputs, name="padding_mask_from_lengths", trials=trials,
        mistakes=list(PADDING_MASK_MISTAKES.values()), dims=("batch", "heads", "queries", "keys"),
        quiet=quiet, confirm_mistakes=True,
    )


def _causal_buggy(n_queries, n_keys, *, strict=False, invert=False, top_left=False):
    offset = 0 if top_left else n_keys - n_queries
    query_pos = torch.arange(offset, offset + n_queries)[:, None]
    key_pos = torch.arange(n_keys)[None, :]
    allowed = key_pos < query_pos if strict else key_pos <= query_pos
    return ~allowed if invert else allowed


def _causal_mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice, functools.partial(_causal_buggy, **bug))


CAUSAL_MASK_MISTAKES: dict[str, Mistake] = {
    "inverted": _causal_mistake(
        "The mask is inverted: True marks the *future* in yours. True must mean 'may attend': key j "
        "is allowed for a query at position i when j <= i (lower triangle, diagonal included). "
        "`torch.triu(..., diagonal=1)` gives the *blocked* part, PyTorch's convention, not ours.",
        invert=True,
    ),
    "diagonal excluded": _causal_mistake(
        "The diagonal is excluded: a query may attend to its own position (key j <= query position "
        "i, not j < i). With `torch.tril`, keep `diagonal=0`.",
        strict=True,
    ),
    "queries at the start": _causal_mistake(
        "The queries were placed at the first n_queries positions. With more keys than queries the "
        "queries are the *last* n_queries positions (new tokens attending to cached ones): query i "
        "is at position i + n_keys - n_queries. (`torch.tril(ones(n_queries, n_keys), "
        "diagonal=n_keys - n_queries)` does it in one line.)",
        top_left=True,
    ),
}


def _causal_inputs(generator: torch.Generator) -> dict:
    n_queries = int(torch.randint(1, 7, (1,), generator=generator))
    extra = int(torch.randint(0, 2, (1,), generator=generator)) * int(torch.randint(1, 5, (1,), generator=generator))
    return {"n_queries": n_queries, "n_keys": n_queries + extra}


def check_causal_mask(student: Callable, trials: int = 8, quiet: bool = False) -> None:
    """Check ``student(n_queries, n_keys)`` -> (n_queries, n_keys) boolean, True where j <= i's position."""
    check_against(
        explain_crashes(student, "causal_mask"),
        causal_mask, _causal_inputs, name="causal_mask", trials=trials,
        mistakes=list(CAUSAL_MASK_MISTAKES.values()), dims=("queries", "keys"), quiet=quiet,
        confirm_mistakes=True,
    )


def _decoder_mask(real):
    """The reference: padding & causal, (B, 1, T, T)."""
    return padding_mask(real) & causal_mask(real.shape[1], device=real.device)


def _decoder_buggy(real, *, combine="and", on_queries=False, causal=True):
    time = real.shape[1]
    pad = real[:, None, :, None] if on_queries else real[:, None, None, :]
    tri = causal_mask(time) if causal else torch.ones(time, time, dtype=torch.bool)
    return pad | tri if combine == "or" else pad & tri


def _decoder_mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice, functools.partial(_decoder_buggy, **bug))


DECODER_MASK_MISTAKES: dict[str, Mistake] = {
    "or instead of and": _decoder_mistake(
        "Combined with `|` (or): a key is then allowed when *either* mask allows it, so padding in "
        "the past and every future real token get through. A key may be attended only when both "
        "allow it: `padding & causal`.",
        combine="or",
    ),
    "padding on the queries": _decoder_mistake(
        "The padding mask hides padded *queries* (rows) instead of padded *keys* (columns): its "
        "shape must be (B, 1, 1, T), the keys last, so that it broadcasts over the query rows.",
        on_queries=True,
    ),
    "causal part missing": _decoder_mistake(
        "The causal part is missing: every query sees the whole sentence, its future included. "
        "Combine the padding mask with a causal mask of size (T, T) by `&`.",
        causal=False,
    ),
}


def _decoder_inputs(generator: torch.Generator) -> dict:
    batch = int(torch.randint(2, 5, (1,), generator=generator))
    time = int(torch.randint(3, 9, (1,), generator=generator))
    return {"real": padded_mask(generator, batch, time)}


def check_decoder_mask(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(real)``: (B, T) boolean, True at real tokens -> (B, 1, T, T) padding & causal."""
    check_against(
        explain_crashes(student, "decoder_self_attention_mask"),
        _decoder_mask, _decoder_inputs, name="decoder_self_attention_mask", trials=trials,
        mistakes=list(DECODER_MASK_MISTAKES.values()), dims=("batch", "heads", "queries", "keys"),
        quiet=quiet, confirm_mistakes=True,
    )
