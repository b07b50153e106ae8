"""The incremental-decoder protocol and greedy decoding."""

import pytest
import torch
from torch import nn

from transformer_lesson.batching import pad_sequences
from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.seq2seq import DECODE_MISTAKES, check_greedy_decode
from transformer_lesson.decoding import greedy_decode, reorder_state
from transformer_lesson.seq2seq import GRUSeq2Seq, Seq2SeqConfig
from transformer_lesson.tokenizer import BOS_ID, EOS_ID


class Scripted(nn.Module):
    """A fake model that emits fixed token sequences, one per batch row, then <eos> forever."""

    def __init__(self, scripts, vocab=20):
        super().__init__()
        self.scripts, self.vocab, self.seen = scripts, vocab, []

    def start_decoding(self, src, src_mask):
        return {"row": torch.arange(src.shape[0]), "t": torch.zeros(src.shape[0], dtype=torch.long)}

    def decode_step(self, state, last_tokens):
        self.seen.append(last_tokens.tolist())
        logits = torch.zeros(len(state["row"]), self.vocab)
        for i, (row, t) in enumerate(zip(state["row"].tolist(), state["t"].tolist(), strict=True)):
            script = self.scripts[row]
            logits[i, script[t] if t < len(script) else EOS_ID] = 1.0
        return logits, {**state, "t": state["t"] + 1}


def test_greedy_stops_each_sentence_at_its_own_eos_and_feeds_back_tokens():
    model = Scripted([[5, 6, EOS_ID, 9], [7, EOS_ID], [8, 8, 8, 8, 8, 8]]).train()
    src, mask = pad_sequences([[4], [4], [4]])
    assert greedy_decode(model, src, mask, max_len=4) == [[5, 6], [7], [8, 8, 8, 8]]
    assert model.seen[0] == [BOS_ID] * 3 and model.seen[1] == [5, 7, 8]
    assert model.training  # eval mode during decoding, restored afterwards
    model.seen.clear()
    greedy_decode(model, src[:2], mask[:2], max_len=10)
    assert len(model.seen) == 3  # stops once every sentence has ended


def test_batched_greedy_equals_one_sentence_at_a_time():
    torch.manual_seed(0)
    model = GRUSeq2Seq(Seq2SeqConfig(vocab_size=10, d_embed=8, d_hidden=16, n_layers=2))
    sentences = [[4, 5, 6, 7, 8, 9], [5, 5], [9, 8, 7]]
    together = greedy_decode(model, *pad_sequences(sentences), max_len=8)
    alone = [greedy_decode(model, *pad_sequences([s]), max_len=8)[0] for s in sentences]
    assert together == alone


def test_reorder_state_selects_rows_of_every_tensor():
    state = {"hidden": torch.arange(6.0).reshape(3, 2), "mask": torch.tensor([True, False, True])}
    out = reorder_state(state, torch.tensor([2, 2, 0]))
    assert out["hidden"].tolist() == [[4, 5], [4, 5], [0, 1]]
    assert out["mask"].tolist() == [True, True, True]


def test_check_accepts_the_reference_and_names_each_mistake():
    check_greedy_decode(greedy_decode)
    for mistake in DECODE_MISTAKES:
        with pytest.raises(CheckFailed, match="Likely cause") as failure:
            check_greedy_decode(mistake.implementation)
        assert mistake.advice in str(failure.value)


def test_check_refuses_a_tensor_answer():
    def as_tensor(model, src, src_mask, max_len):
        return torch.tensor([row + [0] * (max_len - len(row)) for row in greedy_decode(model, src, src_mask, max_len)])

    with pytest.raises(CheckFailed, match="list of lists"):
        check_greedy_decode(as_tensor)


def test_check_models_give_varied_translation_lengths():
    """The check's references must exercise stopping: lengths 2..12, some cut by max_len."""
    from transformer_lesson.checks.seq2seq import _decode_inputs, _tiny_model

    generator = torch.Generator().manual_seed(0)  # check_greedy_decode's default seed
    lengths, words = [], set()
    for _ in range(4):
        inputs = _decode_inputs(generator)
        model = _tiny_model(inputs["model_seed"])
        logits, _ = model.decode_step(model.start_decoding(inputs["src"], inputs["src_mask"]),
                                      torch.full((inputs["src"].shape[0],), BOS_ID))
        assert torch.isinf(logits[:, [0, BOS_ID]]).all()  # <pad> and <bos> are never predicted
        translations = greedy_decode(model, inputs["src"], inputs["src_mask"], inputs["max_len"])
        lengths += [len(t) for t in translations]
        words |= {w for t in translations for w in t}
        assert max(len(t) for t in translations) == inputs["max_len"]  # every trial has one cut short
    assert min(lengths) >= 2 and len(set(lengths)) >= 6, lengths
    assert len(words) >= 4 and not words & {0, BOS_ID, EOS_ID}


def _never_updates_state(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    rows = []
    for _ in range(max_len):
        logits, new_state = model.decode_step(state, last)  # forgets `state = new_state`
        last = logits.argmax(-1)
        rows.append(last)
    rows = torch.stack(rows, 1).tolist()
    return [r[: r.index(EOS_ID)] if EOS_ID in r else r for r in rows]


def _one_step_short(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    finished = torch.zeros(src.shape[0], dtype=torch.bool)
    rows = []
    for _ in range(max_len - 1):
        logits, state = model.decode_step(state, last)
        last = logits.argmax(-1)
        rows.append(last)
        finished |= last == EOS_ID
        if finished.all():
            break
    rows = torch.stack(rows, 1).tolist()
    return [r[: r.index(EOS_ID)] if EOS_ID in r else r for r in rows]


def _removes_every_eos(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    rows = []
    for _ in range(max_len):
        logits, state = model.decode_step(state, last)
        last = logits.argmax(-1)
        rows.append(last)
    return [[t for t in r if t != EOS_ID] for r in torch.stack(rows, 1).tolist()]


def _stops_when_any_sentence_ends(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    steps = []
    for _ in range(max_len):
        logits, state = model.decode_step(state, last)
        last = logits.argmax(dim=-1)
        steps.append(last)
        if (last == EOS_ID).any():  # should be: once every sentence has finished
            break
    rows = torch.stack(steps, dim=1).tolist()
    return [r[: r.index(EOS_ID)] if EOS_ID in r else r for r in rows]


def _checks_eos_before_storing(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    out = [[] for _ in range(src.shape[0])]
    for _ in range(max_len):
        logits, state = model.decode_step(state, last)
        last = logits.argmax(dim=-1)
        if (last == EOS_ID).any():
            break
        for row, token in zip(out, last.tolist(), strict=True):
            row.append(token)
    return out


def _keeps_eos(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    out = [[] for _ in range(src.shape[0])]
    done = [False] * src.shape[0]
    for _ in range(max_len):
        logits, state = model.decode_step(state, last)
        last = logits.argmax(dim=-1)
        for i, token in enumerate(last.tolist()):
            if not done[i]:
                out[i].append(token)  # appended before looking at it: <eos> stays in
                done[i] = token == EOS_ID
        if all(done):
            break
    return out


@pytest.mark.parametrize("wrong, cause", [
    (_never_updates_state, "state is not updated"),
    (_one_step_short, "range(max_len - 1)"),
    (_removes_every_eos, "every <eos> was removed"),
    (_stops_when_any_sentence_ends, "the whole batch stopped"),
    (_checks_eos_before_storing, "the whole batch stopped"),
    (_keeps_eos, "<eos> is included"),
])
def test_check_fails_answers_written_the_wrong_way(wrong, cause):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_greedy_decode(wrong)
    assert cause in str(failure.value)


def test_check_says_which_sentence_has_the_wrong_length():
    def one_too_many(model, src, src_mask, max_len):
        return [row + [4] for row in greedy_decode(model, src, src_mask, max_len)]

    with pytest.raises(CheckFailed, match=r"\(sentence 0\) has \d+ tokens, expected \d+:\n  yours: +\["):
        check_greedy_decode(one_too_many)


def test_check_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_greedy_decode(greedy_decode)
    assert torch.equal(torch.get_rng_state(), before)


def test_check_explains_last_tokens_of_the_wrong_shape():
    def argmax_over_batch(model, src, src_mask, max_len):
        state = model.start_decoding(src, src_mask)
        last = torch.full((src.shape[0],), BOS_ID)
        for _ in range(max_len):
            logits, state = model.decode_step(state, last)
            last = logits.argmax(0)  # (V,): the best sentence for each word
        return []

    with pytest.raises(CheckFailed, match=r"(?s)raised ValueError.*last_tokens should be \(batch,\).*argmax\(dim=-1\)"):
        check_greedy_decode(argmax_over_batch)
