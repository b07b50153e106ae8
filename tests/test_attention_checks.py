"""The checks of lesson 04's mask exercises, and the order of check_attention's message.

Each known mistake is fed to its check, which must name it; right answers pass; answers of the wrong
kind (None, a NumPy array, the wrong dtype, another device) get a message that says so.
"""

import pytest
import torch

from transformer_lesson.attention import causal_mask, padding_mask
from transformer_lesson.checks.attention import (
    ATTENTION_MISTAKES,
    CAUSAL_MASK_MISTAKES,
    DECODER_MASK_MISTAKES,
    PADDING_MASK_MISTAKES,
    check_attention,
    check_causal_mask,
    check_decoder_mask,
    check_padding_mask,
    likely_cause_first,
)
from transformer_lesson.checks.core import CheckFailed


def padding(lengths, max_len):
    return (torch.arange(max_len) < lengths[:, None])[:, None, None, :]


def causal(n_queries, n_keys):
    return torch.ones(n_queries, n_keys, dtype=torch.bool).tril(diagonal=n_keys - n_queries)


def decoder(real):
    return padding_mask(real) & causal_mask(real.shape[1])


CHECKS = [
    (check_padding_mask, padding, PADDING_MASK_MISTAKES),
    (check_causal_mask, causal, CAUSAL_MASK_MISTAKES),
    (check_decoder_mask, decoder, DECODER_MASK_MISTAKES),
]
CASES = [(check, mistakes[name]) for check, _, mistakes in CHECKS for name in mistakes]


@pytest.mark.parametrize("check, right, mistakes", CHECKS, ids=lambda c: getattr(c, "__name__", ""))
def test_mask_checks_pass_a_right_answer(check, right, mistakes, capsys):
    check(right)
    assert "✓" in capsys.readouterr().out
    assert len(mistakes) >= 3


@pytest.mark.parametrize("check, mistake", CASES, ids=lambda c: getattr(c, "__name__", "") or c.advice[:25])
def test_mask_checks_name_each_mistake(check, mistake):
    with pytest.raises(CheckFailed) as failure:
        check(mistake.implementation, quiet=True)
    assert f"Likely cause: {mistake.advice}" in str(failure.value)


def test_a_torch_tril_causal_mask_passes_for_square_masks_and_is_named_for_cached_keys():
    check_causal_mask(lambda n_q, n_k: torch.tril(torch.ones(n_q, n_k, dtype=torch.bool)) if n_q == n_k
                      else causal(n_q, n_k), quiet=True)
    with pytest.raises(CheckFailed, match="queries are the \\*last\\* n_queries"):
        check_causal_mask(lambda n_q, n_k: torch.tril(torch.ones(n_q, n_k, dtype=torch.bool)), quiet=True)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda lengths, max_len: None, "did you forget the `return`"),
    (lambda lengths, max_len: padding(lengths, max_len).numpy(), "should be a torch.Tensor but is a ndarray"),
    (lambda lengths, max_len: padding(lengths, max_len).int(), "should be a boolean tensor but has dtype torch.int32"),
    (lambda lengths, max_len: padding(lengths, max_len).to("meta"), "is on the device meta, but the inputs are on cpu"),
    (lambda lengths, max_len: padding(lengths, max_len)[:, 0, 0], "has 2 dimensions"),
])
def test_padding_check_explains_answers_of_the_wrong_kind(wrong, fragment):
    with pytest.raises(CheckFailed, match=None) as failure:
        check_padding_mask(wrong, quiet=True)
    assert fragment in str(failure.value)


def test_causal_check_explains_a_float_mask():
    with pytest.raises(CheckFailed, match="should be a boolean tensor"):
        check_causal_mask(lambda n_q, n_k: causal(n_q, n_k).float(), quiet=True)


def test_attention_check_explains_the_wrong_device():
    def on_meta(queries, keys, values, mask=None):
        weights = (queries @ keys.transpose(-2, -1)).softmax(-1)
        return (weights @ values).to("meta"), weights

    with pytest.raises(CheckFailed, match=r"attention\(...\)\[0\] is on the device meta"):
        check_attention(on_meta, quiet=True)


def test_a_flipped_mask_leads_with_its_likely_cause():
    """The issue's finding: the cause came after three hints; now it comes right after what differs."""
    mistake = ATTENTION_MISTAKES["inverted mask"]
    with pytest.raises(CheckFailed) as failure:
        check_attention(mistake.implementation, quiet=True)
    lines = str(failure.value).split("\n")
    assert lines[1] == f"Likely cause: {mistake.advice}"
    assert any(line.startswith("Hint:") for line in lines[2:])
    assert lines[-1].startswith("(trial ")


def test_likely_cause_first_leaves_other_messages_alone():
    assert likely_cause_first("a\nHint: b\n(trial 1 of 2)") == "a\nHint: b\n(trial 1 of 2)"
    assert likely_cause_first("a\nLikely cause: c\n(trial 1)") == "a\nLikely cause: c\n(trial 1)"
    assert likely_cause_first("a\nHint: b\nLikely cause: c\n(trial 1)") == "a\nLikely cause: c\nHint: b\n(trial 1)"
