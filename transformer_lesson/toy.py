"""Tiny synthetic sequence tasks that a model can learn in seconds on a CPU.

Real translation takes a GPU and an hour; these tasks take a laptop and a minute, and they have
a known right answer, so the tests can demand that a model *learns* (exact-match accuracy)
rather than that it merely runs.

* ``copy``: output the input.
* ``reverse``: output the input backwards. The *last* output token depends on the *first* input
  token, which an encoder that reads left to right saw longest ago: hard for an encoder-decoder
  that squeezes the input into one vector, easy with attention.
* ``sort``: output the input's symbols in ascending order.

And one tagging task for an encoder alone, one label per position: :func:`histogram_batch`.

Sequences use the same special ids as the real tokenizer (0-3: pad, bos, eos, unk) and symbols
``4 .. 4 + n_symbols - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batching import Batch, make_batch
from .tokenizer import BOS_ID, EOS_ID, PAD_ID

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


# ---------------------------------------------------------------------------------------------
# A tagging task for an encoder alone (lesson 07): one label per position
# ---------------------------------------------------------------------------------------------

IGNORE_INDEX = -100  # a label cross_entropy skips: the <bos> position and padding


@dataclass
class TaggingBatch:
    """Token ids (B, T), ``mask`` (B, T) True at real tokens, ``labels`` (B, T) (IGNORE_INDEX where none)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TaggingBatch:
        return TaggingBatch(*(t.to(device, non_blocking=non_blocking) for t in (self.tokens, self.mask, self.labels)))

    def __len__(self) -> int:
        return self.tokens.shape[0]


def histogram_batch(
    batch_size: int,
    min_len: int = 3,
    max_len: int = 12,
    n_symbols: int = 8,
    generator: torch.Generator | None = None,
) -> TaggingBatch:
    """The histogram task: label every symbol with how many times it occurs in its sequence.

    ``<bos> 5 7 5 9`` -> labels ``- 2 1 2 1``. No position can answer alone: each must find the
    others that hold its symbol, wherever they are. Every sequence starts with ``<bos>``, which
    gives attention a place to put the weight it does not spend on matches (its label is ignored).
    Labels are counts 1 .. max_len: a model needs ``max_len + 1`` classes.
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"Need 1 <= min_len <= max_len, got {min_len} and {max_len}.")
    if batch_size < 1 or n_symbols < 1:
        raise ValueError(f"batch_size and n_symbols must be positive, got {batch_size} and {n_symbols}.")
    lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=generator)
    symbols = torch.randint(0, n_symbols, (batch_size, max_len), generator=generator) + FIRST_SYMBOL
    real = torch.arange(max_len)[None, :] < lengths[:, None]  # (B, max_len)
    same = (symbols[:, :, None] == symbols[:, None, :]) & real[:, None, :]  # (B, T, T): real matches
    counts = same.sum(-1).masked_fill(~real, IGNORE_INDEX)
    longest = int(lengths.max())
    tokens = torch.cat([torch.full((batch_size, 1), BOS_ID), symbols.masked_fill(~real, PAD_ID)], 1)
    labels = torch.cat([torch.full((batch_size, 1), IGNORE_INDEX), counts], 1)
    mask = torch.cat([torch.ones(batch_size, 1, dtype=torch.bool), real], 1)
    return TaggingBatch(tokens[:, : longest + 1], mask[:, : longest + 1], labels[:, : longest + 1])


def tagging_loss(model, batch: TaggingBatch) -> torch.Tensor:
    """Cross-entropy over the labelled positions of a :class:`TaggingBatch` (a ``Trainer`` loss)."""
    logits = model(batch.tokens, batch.mask)  # (B, T, n_classes)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch.labels.flatten(),
                                             ignore_index=IGNORE_INDEX)


@torch.no_grad()
def tagging_accuracy(model, batch: TaggingBatch) -> float:
    """Fraction of labelled positions whose most likely class is the label (model in eval mode for the call)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        batch = batch.to(device)
        predicted = model(batch.tokens, batch.mask).argmax(-1)
    finally:
        model.train(was_training)
    labelled = batch.labels != IGNORE_INDEX
    return (predicted[labelled] == batch.labels[labelled]).float().mean().item()
