import pytest
import torch

from transformer_lesson.batching import TranslationData, make_batch, pad_sequences, shard, token_budget_batches
from transformer_lesson.data import load_multi30k
from transformer_lesson.tokenizer import BOS_ID, EOS_ID, PAD_ID, multi30k_tokenizer


def test_pad_sequences_pads_right_and_marks_real_tokens():
    ids, mask = pad_sequences([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


def test_pad_sequences_equals_filling_row_by_row_for_random_and_empty_sequences():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(0, 9, (int(torch.randint(1, 6, (1,), generator=generator)),), generator=generator)
        sequences = [torch.randint(1, 50, (int(n),), generator=generator).tolist() for n in lengths]
        ids, mask = pad_sequences(sequences, pad_id=-1)
        assert ids.shape == mask.shape == (len(sequences), int(lengths.max()))
        for row, seq in enumerate(sequences):
            assert ids[row].tolist() == seq + [-1] * (ids.shape[1] - len(seq))
            assert mask[row].tolist() == [True] * len(seq) + [False] * (ids.shape[1] - len(seq))
    ids, mask = pad_sequences([[], ()])  # nothing but empty sentences
    assert ids.shape == mask.shape == (2, 0)


def test_pad_sequences_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="at least one"):
        pad_sequences([])


def test_make_batch_shifts_the_target_for_teacher_forcing():
    batch = make_batch([[5, 6], [7]], [[BOS_ID, 8, 9, EOS_ID], [BOS_ID, 10, EOS_ID]])
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, 9], [BOS_ID, 10, PAD_ID]]
    assert batch.tgt_out.tolist() == [[8, 9, EOS_ID], [10, EOS_ID, PAD_ID]]
    assert batch.tgt_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.n_target_tokens == 5 and len(batch) == 2
    with pytest.raises(ValueError, match="<bos>"):
        make_batch([[5]], [[8, EOS_ID]])


def test_token_budget_batches_cover_everything_once_within_budget():
    lengths = torch.randint(1, 40, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = token_budget_batches(lengths, max_tokens=200, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 200
    # bucketing: padding waste is far below that of random batches of the same sizes
    waste = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert waste < 0.1 * sum(lengths)


def test_token_budget_batches_are_seeded_and_shuffled():
    lengths = list(range(1, 101))
    a = token_budget_batches(lengths, 100, seed=3)
    assert a == token_budget_batches(lengths, 100, seed=3)
    assert a != token_budget_batches(lengths, 100, seed=4)
    ordered = token_budget_batches(lengths, 100, shuffle=False)
    assert ordered[0][0] == 0  # unshuffled: shortest first
    assert token_budget_batches([500], 100) == [[0]]  # too long for the budget: a batch of its own


def test_translation_data_on_the_real_corpus():
    tok = multi30k_tokenizer(2000)
    data = TranslationData(load_multi30k("val", limit=300), tok)
    batches = list(data.batches(max_tokens=1000, seed=0))
    assert sum(len(b) for b in batches) == 300
    b = batches[0]
    assert b.src.shape == b.src_mask.shape and b.tgt_in.shape == b.tgt_out.shape
    assert (b.src[~b.src_mask] == PAD_ID).all() and (b.src[b.src_mask] != PAD_ID).all()
    row = int(b.tgt_mask.sum(1).argmax())
    assert tok.decode(b.tgt_out[row].tolist()) == data.pairs[[i for i in range(300)
        if data.targets[i][1:] == b.tgt_out[row][b.tgt_mask[row]].tolist()][0]][1]


def test_over_long_pairs_are_cut_with_a_warning():
    tok = multi30k_tokenizer(2000)
    long = ("Ein Hund " * 100, "A dog " * 100)
    with pytest.warns(UserWarning, match="1 of 2 pairs were longer than 20"):
        data = TranslationData([long, ("Ein Hund.", "A dog.")], tok, max_len=20)
    assert len(data.sources[0]) == 20 and len(data.targets[0]) == 20
    assert data.targets[0][-1] == EOS_ID


def test_empty_sentences_are_refused_and_empty_lengths_still_count():
    tok = multi30k_tokenizer(2000)
    with pytest.raises(ValueError, match="Pair 1 has an empty side"):
        TranslationData([("Ein Hund.", "A dog."), ("", "Nothing.")], tok)
    assert len(token_budget_batches([0] * 10, max_tokens=4, shuffle=False)) == 3


def test_shard_gives_each_process_a_disjoint_equal_share():
    batches = list(range(11))
    shares = [shard(batches, rank, 3) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 9 and 10 dropped: equal numbers of steps
    assert shard(batches) == batches and shard(batches, 0, 1) is not batches
    with pytest.raises(ValueError, match="rank must be in"):
        shard(batches, 3, 3)
    with pytest.raises(ValueError, match="2 batch\\(es\\) cannot be shared by 4 processes"):
        shard([[0], [1]], 0, 4)


def test_translation_data_batches_serve_one_processs_share():
    tok = multi30k_tokenizer(2000)
    data = TranslationData(load_multi30k("val", limit=100), tok)
    whole = token_budget_batches(data.lengths(), 300, seed=5)
    shares = [data.batches(300, seed=5, rank=rank, world_size=2) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(whole) // 2  # len() counts this process's batches
    assert (shares[0].rank, shares[0].world_size) == (0, 2)
    served = [[b.src for b in share] for share in shares]
    expected = [[data.batch(indices).src for indices in shard(whole, rank, 2)] for rank in range(2)]
    assert all(torch.equal(a, b) for rank in range(2) for a, b in zip(served[rank], expected[rank], strict=True))


def test_groups_and_worker_processes_serve_the_same_batches():
    tok = multi30k_tokenizer(2000)
    data = TranslationData(load_multi30k("val", limit=100), tok)
    plain = list(data.batches(300, seed=3))
    groups = list(data.batches(300, seed=3, group=2))
    assert len(groups) == len(plain) // 2 == len(data.batches(300, seed=3, group=2))
    assert all(len(g) == 2 for g in groups)  # an incomplete last group is dropped
    flat = [b for g in groups for b in g]
    pairs = zip(flat, plain[: len(flat)], strict=True)
    assert all(torch.equal(a.src, b.src) and torch.equal(a.tgt_out, b.tgt_out) for a, b in pairs)
    from_workers = list(data.batches(300, seed=3, num_workers=2))
    assert len(from_workers) == len(plain)
    pairs = zip(from_workers, plain, strict=True)
    assert all(torch.equal(a.src, b.src) and torch.equal(a.tgt_in, b.tgt_in) for a, b in pairs)
    with pytest.raises(ValueError, match="group must be an int >= 1"):
        data.batches(300, group=0)


def test_pinned_batches_are_pinned_once_each(monkeypatch):
    """pin_memory=True (a GPU run) puts every served batch in page-locked memory."""
    from transformer_lesson.batching import Batch

    pinned = []
    monkeypatch.setattr(Batch, "pin_memory", lambda self: pinned.append(self) or self)
    data = TranslationData(load_multi30k("val", limit=50), multi30k_tokenizer(2000))
    served = list(data.batches(300, seed=1, pin_memory=True))
    assert len(pinned) == len(served) > 0 and all(a is b for a, b in zip(pinned, served, strict=True))
