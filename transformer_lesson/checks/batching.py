"""Checks for lesson 00's warm-up exercise: padding a batch and building its mask."""

from __future__ import annotations

import torch

from ..batching import pad_sequences
from .core import Mistake, check_against, explain_crashes


def _random_sequences(generator: torch.Generator) -> dict:
    batch = int(torch.randint(2, 6, (), generator=generator))
    lengths = torch.randint(1, 9, (batch,), generator=generator).tolist()
    lengths[int(torch.randint(0, batch, (), generator=generator))] = max(lengths) + 1  # one is longest
    sequences = [torch.randint(4, 50, (n,), generator=generator).tolist() for n in lengths]
    pad_id = int(torch.randint(0, 4, (), generator=generator))
    return {"sequences": sequences, "pad_id": pad_id}


def _left_padded(sequences, pad_id):
    ids, mask = pad_sequences([list(reversed(s)) for s in sequences], pad_id)
    return ids.flip(1), mask.flip(1)


def _inverted_mask(sequences, pad_id):
    ids, mask = pad_sequences(sequences, pad_id)
    return ids, ~mask


def _zero_padding(sequences, pad_id):
    return pad_sequences(sequences, 0)


def _mask_against_zero(sequences, pad_id):
    ids, _ = pad_sequences(sequences, pad_id)
    return ids, ids != 0


def _first_length(sequences, pad_id):
    width = len(sequences[0])
    ids, mask = pad_sequences([list(s[:width]) for s in sequences], pad_id)
    pad = width - ids.shape[1]
    return torch.nn.functional.pad(ids, (0, pad), value=pad_id), torch.nn.functional.pad(mask, (0, pad))


PAD_MISTAKES = (
    Mistake("the padding is on the left. Put each sequence first and the padding after it.", _left_padded),
    Mistake("the mask is inverted. It must be True at real tokens and False at padding.", _inverted_mask),
    Mistake("you padded with 0 instead of the `pad_id` argument.", _zero_padding),
    Mistake("the mask compares the ids with 0; compare with `pad_id` (or, better, with the lengths).",
            _mask_against_zero),
    Mistake("you used the length of the first sequence; pad to the length of the longest.", _first_length),
)


def check_pad_sequences(student_fn, trials: int = 6) -> None:
    """Check a student's ``pad_sequences(sequences, pad_id) -> (ids, mask)``."""
    check_against(
        explain_crashes(student_fn, "pad_sequences",
                        "Sequences have different lengths: fill a torch.full((batch, longest), pad_id) "
                        "tensor row by row."),
        pad_sequences,
        _random_sequences,
        name="pad_sequences",
        trials=trials,
        mistakes=PAD_MISTAKES,
        dims=("batch", "longest"),
    )
