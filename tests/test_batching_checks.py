"""Lesson 00's exercises beyond padding: the padding mask and length-bucketed batches, and their checks."""

import pytest
import torch

from transformer_lesson.batching import padding_mask, token_budget_batches
from transformer_lesson.checks.batching import (
    BUCKET_MISTAKES,
    MASK_MISTAKES,
    check_bucket_batches,
    check_padding_mask,
)
from transformer_lesson.checks.core import CheckFailed


def test_padding_mask_marks_the_first_length_positions():
    mask = padding_mask(torch.tensor([2, 0, 3]), 4)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, True, False, False], [False] * 4, [True, True, True, False]]
    assert padding_mask(torch.tensor([1, 3])).shape == (2, 3)  # as wide as the longest by default
    with pytest.raises(ValueError, match="1-d integer tensor"):
        padding_mask(torch.tensor([[1, 2]]))


def test_checks_accept_right_answers_written_differently(capsys):
    check_padding_mask(lambda lengths, longest: torch.stack([torch.arange(longest) < n for n in lengths]))

    def bucket(lengths, max_tokens):  # a different way to write the greedy cut
        batches = []
        for index in sorted(range(len(lengths)), key=lengths.__getitem__):
            batch = batches[-1] if batches else []
            if batch and (len(batch) + 1) * max(lengths[i] for i in [*batch, index]) <= max_tokens:
                batch.append(index)
            else:
                batches.append([index])
        return batches

    check_bucket_batches(bucket)
    check_bucket_batches(lambda lengths, max_tokens: tuple(torch.tensor(b) for b in bucket(lengths, max_tokens)))
    out = capsys.readouterr().out
    assert "✓ padding_mask" in out and "✓ bucket_batches" in out


@pytest.mark.parametrize("mistake", MASK_MISTAKES, ids=lambda m: m.advice[:30])
def test_mask_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_padding_mask(mistake.implementation)
    assert mistake.advice in str(failure.value)


@pytest.mark.parametrize("mistake", BUCKET_MISTAKES, ids=lambda m: m.advice[:30])
def test_bucket_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_bucket_batches(mistake.implementation)
    assert mistake.advice in str(failure.value)


def _mask_by_loop(lengths, longest):
    mask = torch.zeros(len(lengths), longest, dtype=torch.bool)
    for row, n in enumerate(lengths.tolist()):
        mask[row, : n + 1] = True  # one too many
    return mask


def _bucket_in_given_order(lengths, max_tokens):
    batches, current = [], []
    for i, n in enumerate(lengths):
        if current and (len(current) + 1) * max(n, *(lengths[j] for j in current)) > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current]


def _bucket_counting_real_tokens(lengths, max_tokens):
    batches, current, used = [], [], 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if current and used + lengths[i] > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    return batches + [current]


def _bucket_forgetting_the_last(lengths, max_tokens):
    batches, current = [], []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches


@pytest.mark.parametrize(
    "check, wrong, message",
    [
        (check_padding_mask, _mask_by_loop, "compare with `<`, not `<=`"),
        (check_padding_mask, lambda lengths, longest: torch.arange(longest)[None, :] >= lengths[:, None],
         "mask is inverted"),
        (check_padding_mask, lambda lengths, longest: (torch.arange(longest)[None, :] < lengths[:, None]).int(),
         "should be a boolean tensor but has dtype torch.int32"),
        (check_padding_mask, lambda lengths, longest: None, "is None: did you forget the `return`"),
        (check_padding_mask, lambda lengths, longest: padding_mask(lengths, longest).numpy(),
         "should be a torch.Tensor but is a ndarray"),
        (check_padding_mask, lambda lengths, longest: (torch.arange(longest) < lengths[:, None]).to("meta"),
         "is on the device meta, but the inputs are on cpu"),
        (check_bucket_batches, _bucket_in_given_order, "not sorted by length first"),
        (check_bucket_batches, _bucket_counting_real_tokens, "the budget counts real tokens"),
        (check_bucket_batches, _bucket_forgetting_the_last, "the last batch is lost"),
        (check_bucket_batches, lambda lengths, max_tokens: None, "returned None: did you forget the `return`"),
        (check_bucket_batches, lambda lengths, max_tokens: [[str(i)] for i in range(len(lengths))],
         "should return a list of batches, each a list of example indices"),
        (check_bucket_batches, lambda lengths, max_tokens: [list(range(len(lengths)))],
         r"Batch 0 has \d+ examples and its longest is \d+ tokens: \d+ padded positions, over max_tokens"),
        (check_bucket_batches, lambda lengths, max_tokens: [[i] for i in range(len(lengths) - 1)],
         r"Every example must be in exactly one batch: missing \[\d+\]"),
        (check_bucket_batches,
         lambda lengths, max_tokens: [[i] for i in sorted(range(len(lengths)), key=lambda i: lengths[i])],
         "Your batches fit the budget but are cut differently"),
    ],
)
def test_checks_name_answers_written_the_wrong_way(check, wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check(wrong)


def test_the_package_answer_is_refused():
    with pytest.raises(CheckFailed, match="runs the package's own answer"):
        check_padding_mask(padding_mask)
    with pytest.raises(CheckFailed, match="runs the package's own answer"):
        check_bucket_batches(lambda lengths, max_tokens: token_budget_batches(lengths, max_tokens, shuffle=False))


def test_bucket_check_explains_a_crash_and_an_unwritten_answer():
    def unwritten(lengths, max_tokens):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not written yet"):
        check_bucket_batches(unwritten)
    with pytest.raises(CheckFailed, match=r"(?s)bucket_batches raised AttributeError.*each a list of indices"):
        check_bucket_batches(lambda lengths, max_tokens: sorted(lengths, key=lambda n: n.item()))
