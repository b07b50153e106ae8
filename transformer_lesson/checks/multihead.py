"""Checks for lesson 05: splitting d_model into heads and merging them back.

The student writes ``split_heads(x, n_heads)``: (B, T, d_model) -> (B, n_heads, T, d_head), where
head h owns the contiguous features ``h*d_head:(h+1)*d_head``, and ``merge_heads(x)``, its
inverse. A wrong split often has the right shape, so the checks compare values and recognise
the layouts in :data:`SPLIT_MISTAKES` and :data:`MERGE_MISTAKES` (a layout is named only when the
answer matches it on two inputs of different sizes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..multihead import merge_heads, split_heads
from .core import Mistake, check_against, explain_crashes


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
        explain_crashes(student, "split_heads", hint_for=_view_hint), split_heads, _split_inputs,
        name="split_heads", trials=trials, mistakes=list(SPLIT_MISTAKES.values()),
        dims=("batch", "n_heads", "time", "d_head"), quiet=quiet, confirm_mistakes=True,
    )


def check_merge_heads(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(x)``: (B, n_heads, T, d_head) -> (B, T, n_heads * d_head)."""
    check_against(
        explain_crashes(student, "merge_heads", hint_for=_view_hint), merge_heads, _merge_inputs,
        name="merge_heads", trials=trials, mistakes=list(MERGE_MISTAKES.values()),
        dims=("batch", "time", "d_model"), quiet=quiet, confirm_mistakes=True,
    )
