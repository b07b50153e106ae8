import pytest
import torch

from transformer_lesson.tokenizer import BOS_ID, EOS_ID
from transformer_lesson.toy import FIRST_SYMBOL, toy_batch, toy_pairs, toy_target, toy_vocab_size


def test_targets():
    assert toy_target("copy", [5, 4, 6]) == [5, 4, 6]
    assert toy_target("reverse", [5, 4, 6]) == [6, 4, 5]
    assert toy_target("sort", [5, 4, 6]) == [4, 5, 6]
    with pytest.raises(ValueError, match="Unknown toy task"):
        toy_target("shuffle", [1])


def test_pairs_are_framed_seeded_and_in_range():
    sources, targets = toy_pairs("reverse", 50, 2, 7, 6, torch.Generator().manual_seed(0))
    again, _ = toy_pairs("reverse", 50, 2, 7, 6, torch.Generator().manual_seed(0))
    assert sources == again
    for s, t in zip(sources, targets, strict=True):
        assert 2 <= len(s) <= 7
        assert all(FIRST_SYMBOL <= x < toy_vocab_size(6) for x in s)
        assert t == [BOS_ID, *reversed(s), EOS_ID]


def test_toy_batch_shapes():
    b = toy_batch("copy", 8, 3, 5, generator=torch.Generator().manual_seed(1))
    assert b.src.shape[0] == 8 and b.src.shape[1] <= 5
    assert b.tgt_in.shape == b.tgt_out.shape == (8, b.src.shape[1] + 1)
    with pytest.raises(ValueError, match="min_len"):
        toy_pairs("copy", 3, 5, 2)
