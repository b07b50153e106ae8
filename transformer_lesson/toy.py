"""Tiny synthetic sequence tasks that a model can learn in seconds on a CPU.

Real translation takes a GPU and an hour; these tasks take a laptop and a minute, and they have
a known right answer, so the tests can demand that a model *learns* (exact-match accuracy)
rather than that it merely runs.

* ``copy``: output the input.
* ``reverse``: output the input backwards. The *last* output token depends on the *first* input
  token, which an encoder that reads left to right saw longest ago: hard for an encoder-decoder
  that squeezes the input into one vector, easy with attention.
* ``sort``: output the input's symbols in ascending order.

Sequences use the same special ids as the real tokenizer (0-3: pad, bos, eos, unk) and symbols
``4 .. 4 + n_symbols - 1``.
"""

from __future__ import annotations

import torch

from .batching import Batch, make_batch
from .tokenizer import BOS_ID, EOS_ID

FIRST_SYMBOL = 4
TASKS = ("copy", "reverse", "sort")


def toy_vocab_size(n_symbols: int) -> int:
    """Specials plus symbols: the vocabulary size a model needs for a toy task."""
    return FIRST_SYMBOL + n_symbols


def toy_target(task: str, source: list[int]) -> list[int]:
    """The right answer for ``source`` (without <bos>/<eos>)."""
    if task == "copy":
        return list(source)
    if task == "reverse":
        return list(reversed(source))
    if task == "sort":
        return sorted(source)
    raise ValueError(f"Unknown toy task {task!r}: choose one of {TASKS}.")


def toy_pairs(
    task: str,
    n: int,
    min_len: int = 3,
    max_len: int = 10,
    n_symbols: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """``n`` random (source, target) id lists; each target is framed ``<bos> ... <eos>``."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"Need 1 <= min_len <= max_len, got {min_len} and {max_len}.")
    if task not in TASKS:
        raise ValueError(f"Unknown toy task {task!r}: choose one of {TASKS}.")
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    sources, targets = [], []
    for length in lengths.tolist():
        source = (torch.randint(0, n_symbols, (length,), generator=generator) + FIRST_SYMBOL).tolist()
        sources.append(source)
        targets.append([BOS_ID, *toy_target(task, source), EOS_ID])
    return sources, targets


def toy_batch(
    task: str,
    batch_size: int,
    min_len: int = 3,
    max_len: int = 10,
    n_symbols: int = 10,
    generator: torch.Generator | None = None,
) -> Batch:
    """A fresh random :class:`~transformer_lesson.batching.Batch` for a toy task."""
    return make_batch(*toy_pairs(task, batch_size, min_len, max_len, n_symbols, generator))
