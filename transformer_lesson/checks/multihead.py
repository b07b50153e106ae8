"""Checks for lesson 05: splitting d_model into heads and merging them back, the projections, the forward pass.

The student writes ``split_heads(x, n_heads)``: (B, T, d_model) -> (B, n_heads, T, d_head), where
head h owns the contiguous features ``h*d_head:(h+1)*d_head``, and ``merge_heads(x)``, its
inverse. A wrong split often has the right shape, so the checks compare values and recognise
the layouts in :data:`SPLIT_MISTAKES` and :data:`MERGE_MISTAKES` (a layout is named only when the
answer matches it on two inputs of different sizes).

Then ``project_heads(x, in_weight, in_bias, n_heads) -> (queries, keys, values)``, the three input
projections split into heads (:data:`PROJECTION_MISTAKES`), and ``multi_head_attention(mha, x,
mask=None)``, the whole forward pass written with the pieces of a
:class:`~transformer_lesson.multihead.MultiHeadAttention` (:data:`FORWARD_MISTAKES`); calling the
module's own forward pass is refused (``core.PACKAGE_ANSWERS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attention import causal_mask, padding_mask, scaled_dot_product_attention
from ..multihead import MultiHeadAttention, merge_heads, split_heads
from .core import Mistake, check_against, explain_crashes, padded_mask


def _split_without_transpose(x, n_heads):
    batch, time, d_model = x.shape
    return x.reshape(batch, n_heads, time, d_model // n_heads)


def _split_heads_inner(x, n_heads):
    batch, time, d_model = x.shape
    return x.reshape(batch, time, d_model // n_heads, n_heads).permute(0, 3, 1, 2)


def _split_transpose_first(x, n_heads):
    batch, time, d_model = x.shape
    return x.transpose(1, 2).reshape(batch, n_heads, time, d_model // n_heads)


def _merge_without_transpose(x):
    batch, n_heads, time, d_head = x.shape
    return x.reshape(batch, time, n_heads * d_head)


def _merge_swapping_time_and_d_head(x):
    batch, n_heads, time, d_head = x.shape
    return x.transpose(2, 3).reshape(batch, time, n_heads * d_head)


def _merge_heads_inner(x):
    batch, n_heads, time, d_head = x.shape
    return x.permute(0, 2, 3, 1).reshape(batch, time, n_heads * d_head)


SPLIT_MISTAKES: dict[str, Mistake] = {
    "reshape without transpose": Mistake(
        "Reshaped straight to (B, n_heads, T, d_head): the numbers are in the right shape but each "
        "'head' now holds pieces of several time steps. Reshape to (B, T, n_heads, d_head) first, "
        "then swap the time and head dimensions with `.transpose(1, 2)`.",
        _split_without_transpose,
    ),
    "heads as the inner index": Mistake(
        "Split d_model as (d_head, n_heads) instead of (n_heads, d_head): head h must own the "
        "contiguous features h*d_head:(h+1)*d_head, so view the last dimension as "
        "(n_heads, d_head).",
        _split_heads_inner,
    ),
    "transposed before splitting": Mistake(
        "Transposed the input before splitting it: `x.transpose(1, 2)` on (B, T, d_model) gives "
        "(B, d_model, T), and reshaping that to (B, n_heads, T, d_head) cuts through the features "
        "of different time steps. Split the features first, `x.view(B, T, n_heads, d_head)`, "
        "then move the heads next to the batch with `.transpose(1, 2)`.",
        _split_transpose_first,
    ),
}

MERGE_MISTAKES: dict[str, Mistake] = {
    "reshape without transpose": Mistake(
        "Reshaped straight to (B, T, d_model) without moving the head dimension back next to "
        "d_head: this mixes time steps. Use `.transpose(1, 2)` to get (B, T, n_heads, d_head), "
        "then `.reshape(B, T, n_heads * d_head)`.",
        _merge_without_transpose,
    ),
    "heads as the inner index": Mistake(
        "Merged as (d_head, n_heads): features must be laid out head by head, head 0's d_head "
        "features first, to undo split_heads.",
        _merge_heads_inner,
    ),
    "transposed time and d_head": Mistake(
        "Swapped the wrong pair of dimensions: `transpose(2, 3)` swaps time and d_head, but the "
        "*heads* dimension (1) must move next to d_head. Use `x.transpose(1, 2)` (B, T, n_heads, "
        "d_head), then `.reshape(B, T, n_heads * d_head)`.",
        _merge_swapping_time_and_d_head,
    ),
}


def _split_inputs(generator: torch.Generator) -> dict:
    batch, time, n_heads, d_head = (torch.randint(2, 6, (4,), generator=generator)).tolist()
    return {"x": torch.randn(batch, time, n_heads * d_head, generator=generator),
            "n_heads": n_heads}


def _merge_inputs(generator: torch.Generator) -> dict:
    batch, n_heads, time, d_head = (torch.randint(2, 6, (4,), generator=generator)).tolist()
    return {"x": torch.randn(batch, n_heads, time, d_head, generator=generator)}


def _view_hint(error: Exception) -> str:
    if "view" in str(error):
        return ("\nHint: after a transpose the tensor is no longer contiguous in memory, so `.view` cannot "
                "regroup its dimensions. Use `.reshape` (or `.contiguous().view`).")
    return ""


def check_split_heads(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(x, n_heads)``: (B, T, d_model) -> (B, n_heads, T, d_head)."""
    check_against(
        explain_crashes(student, "split_heads", hint_for=_view_hint),
        split_heads, _split_inputs,
        name="split_heads", trials=trials, mistakes=list(SPLIT_MISTAKES.values()),
        dims=("batch", "n_heads", "time", "d_head"), quiet=quiet, confirm_mistakes=True,
    )


def check_merge_heads(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(x)``: (B, n_heads, T, d_head) -> (B, T, n_heads * d_head)."""
    check_against(
        explain_crashes(student, "merge_heads", hint_for=_view_hint),
        merge_heads, _merge_inputs,
        name="merge_heads", trials=trials, mistakes=list(MERGE_MISTAKES.values()),
        dims=("batch", "time", "d_model"), quiet=quiet, confirm_mistakes=True,
    )


# ---------------------------------------------------------------------------------------------
# The three input projections, split into heads.
# ---------------------------------------------------------------------------------------------

def _project_heads(x, in_weight, in_bias, n_heads):
    """The reference: x W^T + b, cut into W_q, W_k, W_v's outputs, each split into heads."""
    queries, keys, values = F.linear(x, in_weight, in_bias).chunk(3, dim=-1)
    return tuple(split_heads(t, n_heads) for t in (queries, keys, values))


def _project_buggy(x, in_weight, in_bias, n_heads, *, bias=True, interleaved=False, same_rows=False,
                   order=(0, 1, 2)):
    batch, time, d_model = x.shape
    if same_rows:  # W_q's rows used for all three
        parts = [F.linear(x, in_weight[:d_model], in_bias[:d_model] if bias else None)] * 3
    else:
        y = F.linear(x, in_weight, in_bias if bias else None)  # (B, T, 3 d_model)
        parts = list(y.view(batch, time, d_model, 3).unbind(-1)) if interleaved else list(y.chunk(3, dim=-1))
    return tuple(split_heads(parts[i], n_heads) for i in order)


def _project_mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice, lambda x, w, b, n: _project_buggy(x, w, b, n, **bug))


PROJECTION_MISTAKES: dict[str, Mistake] = {
    "bias forgotten": _project_mistake(
        "The bias is missing: a linear layer computes `x @ in_weight.T + in_bias` (or "
        "`F.linear(x, in_weight, in_bias)`).",
        bias=False,
    ),
    "interleaved": _project_mistake(
        "The projected features were cut as if queries, keys and values alternated (q0, k0, v0, "
        "q1, ...). They are stacked in blocks: rows 0:d_model of in_weight make the queries, "
        "d_model:2*d_model the keys, 2*d_model:3*d_model the values, so cut the last dimension "
        "into three consecutive chunks, `.chunk(3, dim=-1)`.",
        interleaved=True,
    ),
    "same rows for all three": _project_mistake(
        "Queries, keys and values all came from the same rows of in_weight (the queries'). Each has "
        "its own block of d_model rows: W_q = in_weight[:d], W_k = in_weight[d:2d], "
        "W_v = in_weight[2d:].",
        same_rows=True,
    ),
    "queries and keys swapped": _project_mistake(
        "Queries and keys came out in the wrong order: the first block of rows of in_weight makes "
        "the queries, the second the keys, the third the values; return (queries, keys, values).",
        order=(1, 0, 2),
    ),
}


def _project_inputs(generator: torch.Generator) -> dict:
    batch, time, n_heads, d_head = (torch.randint(2, 6, (4,), generator=generator)).tolist()
    d_model = n_heads * d_head
    return {"x": torch.randn(batch, time, d_model, generator=generator),
            "in_weight": torch.randn(3 * d_model, d_model, generator=generator) / math.sqrt(d_model),
            "in_bias": torch.randn(3 * d_model, generator=generator),
            "n_heads": n_heads}


def _linear_hint(error: Exception) -> str:
    if "mat1 and mat2" in str(error) or "size of tensor" in str(error):
        return ("\nHint: in_weight is (3*d_model, d_model), laid out as nn.Linear stores weights (outputs x "
                "inputs), so multiply by its transpose: `x @ in_weight.T + in_bias`.")
    return _view_hint(error)


def check_project_heads(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(x, in_weight, in_bias, n_heads) -> (queries, keys, values)``, each (B, nh, T, dh)."""
    dims = ("batch", "n_heads", "time", "d_head")
    check_against(
        explain_crashes(student, "project_heads", hint_for=_linear_hint),
        _project_heads, _project_inputs, name="project_heads", trials=trials,
        mistakes=list(PROJECTION_MISTAKES.values()), dims={f"project_heads(...)[{i}]": dims for i in range(3)},
        quiet=quiet, confirm_mistakes=True,
    )


# ---------------------------------------------------------------------------------------------
# The whole forward pass, from the pieces of a module.
# ---------------------------------------------------------------------------------------------

class _Comparable(MultiHeadAttention):
    """A MultiHeadAttention that equals another with the same weights, so that the check can tell
    whether the student's code changed the module it was given (an in-place change of the weights)."""

    def __eq__(self, other):  # the same weights (so that the check can tell a changed input)
        return isinstance(other, MultiHeadAttention) and all(
            torch.equal(a, b) for a, b in zip(self.state_dict().values(), other.state_dict().values(), strict=True))

    __hash__ = MultiHeadAttention.__hash__


def _forward_reference(mha, x, mask=None):
    queries, keys, values = (split_heads(t, mha.n_heads) for t in mha.in_proj(x).chunk(3, dim=-1))
    heads, _ = scaled_dot_product_attention(queries, keys, values, mask)
    return mha.out_proj(merge_heads(heads))


def _forward_buggy(mha, x, mask=None, *, out_proj=True, one_head=False, scale_d_model=False,
                   swap_qk=False):
    queries, keys, values = mha.in_proj(x).chunk(3, dim=-1)
    if swap_qk:
        queries, keys = keys, queries
    if one_head:
        heads, _ = scaled_dot_product_attention(queries[:, None], keys[:, None], values[:, None], mask)
        merged = heads[:, 0]
    else:
        q, k, v = (split_heads(t, mha.n_heads) for t in (queries, keys, values))
        if scale_d_model:  # softmax(q k^T / sqrt(d_model)): a sqrt(n_heads) too strong scale
            q = q * math.sqrt(mha.d_head / mha.d_model)
        heads, _ = scaled_dot_product_attention(q, k, v, mask)
        merged = merge_heads(heads)
    return mha.out_proj(merged) if out_proj else merged


def _forward_mistake(advice: str, **bug) -> Mistake:
    return Mistake(advice, lambda mha, x, mask=None: _forward_buggy(mha, x, mask, **bug))


FORWARD_MISTAKES: dict[str, Mistake] = {
    "output projection forgotten": _forward_mistake(
        "The output projection is missing: after merging the heads, `mha.out_proj` mixes their "
        "findings into one d_model vector per position.",
        out_proj=False,
    ),
    "one big head": _forward_mistake(
        "Attention ran on the unsplit (B, T, d_model) projections: that is one head of size d_model. "
        "Split queries, keys and values into (B, n_heads, T, d_head) first, attend, then merge.",
        one_head=True,
    ),
    "scaled by sqrt(d_model)": _forward_mistake(
        "The scores were scaled by 1/sqrt(d_model). Each head's dot products have d_head terms, so "
        "the scale is 1/sqrt(d_head), d_head = d_model / n_heads (scaled_dot_product_attention on "
        "the split heads does it for you).",
        scale_d_model=True,
    ),
    "queries and keys swapped": _forward_mistake(
        "Queries and keys are swapped: `mha.in_proj(x).chunk(3, dim=-1)` gives (queries, keys, "
        "values) in that order. Swapping them transposes every head's score matrix.",
        swap_qk=True,
    ),
}


def _forward_inputs(generator: torch.Generator, trial: list[int]) -> dict:
    t = trial[0]
    trial[0] += 1
    batch, time, n_heads, d_head = (torch.randint(2, 5, (4,), generator=generator)).tolist()
    with torch.random.fork_rng(devices=[]):  # leave the student's random numbers alone
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        mha = _Comparable(n_heads * d_head, n_heads).eval()
    x = torch.randn(batch, time, n_heads * d_head, generator=generator)
    kind = ("none", "padding", "causal", "both")[t % 4]
    real = padded_mask(generator, batch, time)
    mask = {"none": None, "padding": padding_mask(real), "causal": causal_mask(time),
            "both": padding_mask(real) & causal_mask(time)}[kind]
    return {"mha": mha, "x": x, "mask": mask}


def _mask_hint(error: Exception) -> str:
    if "ambiguous" in str(error) or "mask" in str(error):
        return ("\nHint: pass the mask to scaled_dot_product_attention as it is given; it already broadcasts "
                "against the heads' (B, n_heads, T, T) scores.")
    return _view_hint(error)


def check_multi_head_attention(student: Callable, trials: int = 6, quiet: bool = False) -> None:
    """Check ``student(mha, x, mask=None)`` -> (B, T, d_model): the module's forward pass, from its pieces."""
    counter = [0]
    with torch.no_grad():
        check_against(
            explain_crashes(student, "multi_head_attention", hint_for=_mask_hint),
            _forward_reference, lambda g: _forward_inputs(g, counter), name="multi_head_attention",
            trials=trials, mistakes=list(FORWARD_MISTAKES.values()), dims=("batch", "time", "d_model"),
            quiet=quiet, confirm_mistakes=True,
        )
