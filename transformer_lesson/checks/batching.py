"""Checks for lesson 00's exercises: a padding mask, padding a batch, and length-bucketed batches."""

from __future__ import annotations

import operator

import torch

from ..batching import pad_sequences, padding_mask, token_budget_batches
from .core import CheckFailed, Mistake, check_against, explain_crashes, explain_crashes_and_unwritten


def _random_lengths(generator: torch.Generator) -> dict:
    batch = int(torch.randint(2, 7, (), generator=generator))
    lengths = torch.randint(1, 9, (batch,), generator=generator)
    longest = int(lengths.max()) + int(torch.randint(0, 3, (), generator=generator))
    return {"lengths": lengths, "longest": longest}


MASK_MISTAKES = (
    Mistake("the mask is inverted. It must be True at real tokens (positions below the length) and False "
            "at padding.", lambda lengths, longest: ~padding_mask(lengths, longest)),
    Mistake("one position too many is True: positions 0 .. length - 1 are real, so compare with `<`, not `<=`.",
            lambda lengths, longest: torch.arange(longest)[None, :] <= lengths[:, None]),
    Mistake("the padding is on the left: the real tokens come first, so row b is True at its first "
            "lengths[b] positions.", lambda lengths, longest: padding_mask(lengths, longest).flip(1)),
    Mistake("the broadcast is the wrong way round: positions must run along dimension 1, so compare "
            "torch.arange(longest)[None, :] with lengths[:, None].",
            lambda lengths, longest: torch.arange(longest)[:, None] < lengths[None, :]),
    Mistake("the mask is only as wide as the largest length: make it `longest` positions wide (batches "
            "can be padded further than their longest sentence).",
            lambda lengths, longest: padding_mask(lengths)),
)


def check_padding_mask(student_fn, trials: int = 6) -> None:
    """Check a student's ``padding_mask(lengths (B,), longest) -> mask (B, longest)``, True at real tokens."""
    check_against(
        explain_crashes_and_unwritten(student_fn, "padding_mask",
                                      "Compare torch.arange(longest) (the positions) with the lengths, "
                                      "broadcast to (batch, longest)."),
        padding_mask,
        _random_lengths,
        name="padding_mask",
        trials=trials,
        mistakes=MASK_MISTAKES,
        dims=("batch", "longest"),
    )


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


def _random_lengths_and_budget(generator: torch.Generator) -> dict:
    n = int(torch.randint(6, 21, (), generator=generator))
    lengths = torch.randint(1, 13, (n,), generator=generator).tolist()
    max_tokens = int(torch.randint(12, 41, (), generator=generator))
    return {"lengths": lengths, "max_tokens": max_tokens}


def _bucket_reference(lengths, max_tokens):
    return token_budget_batches(lengths, max_tokens, shuffle=False)


def _cut(order, lengths, max_tokens, fits):
    """Cut ``order`` greedily into batches; ``fits(batch, index)`` says whether ``index`` may join ``batch``."""
    batches, current = [], []
    for index in order:
        if current and not fits(current, index):
            batches.append(current)
            current = []
        current.append(index)
    return batches + ([current] if current else [])


def _padded_fits(lengths, max_tokens):
    return lambda batch, i: max(lengths[j] for j in [*batch, i]) * (len(batch) + 1) <= max_tokens


def _unsorted(lengths, max_tokens):
    return _cut(range(len(lengths)), lengths, max_tokens, _padded_fits(lengths, max_tokens))


def _real_tokens_budget(lengths, max_tokens):
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return _cut(order, lengths, max_tokens, lambda batch, i: sum(lengths[j] for j in [*batch, i]) <= max_tokens)


def _strictly_below_budget(lengths, max_tokens):
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    fits = _padded_fits(lengths, max_tokens - 1)
    return _cut(order, lengths, max_tokens, fits)


def _last_batch_dropped(lengths, max_tokens):
    return _bucket_reference(lengths, max_tokens)[:-1]


def _longest_first(lengths, max_tokens):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return _cut(order, lengths, max_tokens, _padded_fits(lengths, max_tokens))


BUCKET_MISTAKES = (
    Mistake("the examples are not sorted by length first, so long and short sentences share batches. Sort "
            "the indices by length (`sorted(range(len(lengths)), key=lambda i: lengths[i])`), then cut.",
            _unsorted),
    Mistake("the budget counts real tokens (the sum of the lengths); it counts padded positions: "
            "batch size x longest length in the batch.", _real_tokens_budget),
    Mistake("a batch that exactly fills the budget is refused: batch size x longest may *equal* max_tokens "
            "(use `<=`).", _strictly_below_budget),
    Mistake("the last batch is lost: after the loop, append the batch you were still filling.",
            _last_batch_dropped),
    Mistake("the lengths are sorted longest first; sort them shortest first (ascending).", _longest_first),
)


def _as_batches(result, n_examples):
    """The student's batches as a list of tuples of ints, or a CheckFailed that says what is wrong."""
    if result is None or isinstance(result, torch.Tensor):
        return result  # compare() explains a missing return; a tensor cannot hold ragged batches
    try:
        return [tuple(operator.index(i) for i in batch) for batch in result]
    except TypeError:
        raise CheckFailed(f"bucket_batches should return a list of batches, each a list of example indices "
                          f"(ints from 0 to {n_examples - 1}); got {_preview(result)}.") from None


def _preview(value, limit=120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _bucket_hint(actual, expected, inputs) -> str | None:
    """What property of the batches is broken, in words."""
    if not isinstance(actual, list):
        return None
    lengths, budget = inputs["lengths"], inputs["max_tokens"]
    seen = sorted(i for batch in actual for i in batch)
    if seen != list(range(len(lengths))):
        missing = sorted(set(range(len(lengths))) - set(seen))
        repeated = sorted({i for i in seen if seen.count(i) > 1})
        return (f"Every example must be in exactly one batch: missing {missing}, repeated {repeated}, "
                f"out of range {sorted(i for i in set(seen) if not 0 <= i < len(lengths))}.")
    for number, batch in enumerate(actual):
        if not batch:
            return f"Batch {number} is empty: start a new batch only when there is an example to put in it."
        padded = len(batch) * max(lengths[i] for i in batch)
        if len(batch) > 1 and padded > budget:
            return (f"Batch {number} has {len(batch)} examples and its longest is {max(lengths[i] for i in batch)} "
                    f"tokens: {padded} padded positions, over max_tokens = {budget}.")
    flat = [lengths[i] for batch in actual for i in batch]
    if flat != sorted(flat):
        return "The examples are not in order of length (shortest first) across the batches."
    return (f"Your batches fit the budget but are cut differently: {len(actual)} batches where filling each "
            f"as far as the budget allows gives {len(expected)}. Start a new batch only when the next "
            f"example would not fit; ties in length keep the smaller index first (a stable sort).")


def check_bucket_batches(student_fn, trials: int = 6) -> None:
    """Check a student's ``bucket_batches(lengths, max_tokens) -> list of lists of indices``.

    The reference is :func:`~transformer_lesson.batching.token_budget_batches` without shuffling:
    indices sorted by length (stable), cut greedily so that batch size x longest <= max_tokens.
    """
    guarded = explain_crashes_and_unwritten(
        student_fn, "bucket_batches",
        "lengths is a list of ints; return a list of batches, each a list of indices into lengths.")

    def student(lengths, max_tokens):
        return _as_batches(guarded(lengths, max_tokens), len(lengths))

    def reference(lengths, max_tokens):
        return [tuple(batch) for batch in _bucket_reference(lengths, max_tokens)]

    check_against(
        student,
        reference,
        _random_lengths_and_budget,
        name="bucket_batches",
        trials=trials,
        mistakes=tuple(Mistake(m.advice, lambda lengths, budget, f=m.implementation:
                               [tuple(b) for b in f(lengths, budget)]) for m in BUCKET_MISTAKES),
        hint=_bucket_hint,
    )
