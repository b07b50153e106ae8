"""The incremental-decoder protocol and greedy decoding."""

import numpy as np
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


def test_check_accepts_the_reference_and_names_each_mistake(own_copy):
    check_greedy_decode(own_copy(greedy_decode))
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


def _never_stops_early(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    rows = []
    for _ in range(max_len):  # always max_len steps, even when every sentence has ended
        logits, state = model.decode_step(state, last)
        last = logits.argmax(-1)
        rows.append(last)
    rows = torch.stack(rows, 1).tolist()
    return [r[: r.index(EOS_ID)] if EOS_ID in r else r for r in rows]


def _forgets_finished_sentences(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    rows = []
    for _ in range(max_len):
        logits, state = model.decode_step(state, last)
        last = logits.argmax(-1)
        rows.append(last)
        finished = last == EOS_ID  # forgets the sentences that ended at an earlier step
        if finished.all():
            break
    rows = torch.stack(rows, 1).tolist()
    return [r[: r.index(EOS_ID)] if EOS_ID in r else r for r in rows]


def _right_answer(model, src, src_mask, max_len):
    """Greedy decoding as a student writes it (the checks refuse the package's own)."""
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID, device=src.device)
    finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    steps = []
    for _ in range(max_len):
        logits, state = model.decode_step(state, last)
        last = logits.argmax(dim=-1)
        steps.append(last)
        finished = finished | (last == EOS_ID)
        if finished.all():
            break
    rows = torch.stack(steps, dim=1).tolist()
    return [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in rows]


def test_check_accepts_a_students_right_answer(capsys):
    check_greedy_decode(_right_answer)
    check_greedy_decode(_right_answer, trials=6, seed=1, quiet=True)  # as the hidden tests run it
    assert capsys.readouterr().out.count("✓ greedy_decode") == 1


def _one_sentence_at_a_time(model, src, src_mask, max_len):
    return [_right_answer(model, src[i:i + 1], src_mask[i:i + 1], max_len)[0] for i in range(src.shape[0])]


@pytest.mark.parametrize("wrong, message", [
    (_never_stops_early, "break` when `finished.all()`"),
    (_forgets_finished_sentences, "finished = finished | (last == EOS)"),
    (_one_sentence_at_a_time, "decode the whole batch together"),
])
def test_check_refuses_right_tokens_decoded_the_slow_way(wrong, message):
    with pytest.raises(CheckFailed, match="gives the right tokens") as failure:
        check_greedy_decode(wrong)
    assert message in str(failure.value)


def test_check_has_trials_where_every_sentence_ends_before_max_len():
    from transformer_lesson.checks.seq2seq import _decode_inputs, _steps_needed, _tiny_model

    generator = torch.Generator().manual_seed(0)
    for reach_max_len in (True, False) * 3:
        inputs = _decode_inputs(generator, reach_max_len=reach_max_len)
        translations, steps = _steps_needed(*inputs.values())
        assert (steps == inputs["max_len"]) == reach_max_len, steps
        assert translations == greedy_decode(_tiny_model(inputs["model_seed"]), *list(inputs.values())[1:])


@pytest.mark.parametrize("wrong, message", [
    (lambda model, src, src_mask, max_len: None, "forget the `return`"),
    (lambda model, src, src_mask, max_len: np.zeros((src.shape[0], 3), dtype=np.int64), "not a NumPy array"),
])
def test_check_explains_answers_of_the_wrong_kind(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_greedy_decode(wrong)


def test_check_says_which_sentence_has_the_wrong_length():
    def one_too_many(model, src, src_mask, max_len):
        return [row + [4] for row in greedy_decode(model, src, src_mask, max_len)]

    with pytest.raises(CheckFailed, match=r"\(sentence 0\) has \d+ tokens, expected \d+:\n  yours: +\["):
        check_greedy_decode(one_too_many)


def test_check_leaves_the_global_random_state_alone(own_copy):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_greedy_decode(own_copy(greedy_decode))
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


# -- beam search and the uncached decoder (lesson 10) --------------------------------------------

import itertools  # noqa: E402
import math  # noqa: E402

from transformer_lesson.decoding import Uncached, beam_search, length_penalty  # noqa: E402
from transformer_lesson.transformer import Transformer, TransformerConfig  # noqa: E402


class Markov(nn.Module):
    """A fake model whose next-token log-probabilities depend on the last token and the position."""

    def __init__(self, vocab=5, max_len=4, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(max_len + 1, vocab, vocab, generator=generator) * 2  # (position, last, next)
        self.source_bias = torch.randn(8, vocab, generator=generator)  # each sentence its own preferences

    def start_decoding(self, src, src_mask):
        return {"t": torch.zeros(src.shape[0], dtype=torch.long), "bias": self.source_bias[src[:, 0]]}

    def decode_step(self, state, last_tokens):
        logits = self.table[state["t"], last_tokens] + state["bias"]
        return logits, {**state, "t": state["t"] + 1}

    def log_prob(self, first_token, tokens):
        state, last, total = self.start_decoding(torch.tensor([[first_token]]), None), torch.tensor([BOS_ID]), 0.0
        for token in tokens:
            logits, state = self.decode_step(state, last)
            total += torch.log_softmax(logits, -1)[0, token].item()
            last = torch.tensor([token])
        return total


def exhaustive_best(model, first_token, vocab, max_len, alpha):
    """The best penalised hypothesis by trying every one: ending in <eos> at any length, or at max_len without."""
    best, best_tokens = -math.inf, None
    words = [t for t in range(vocab) if t != EOS_ID]
    for length in range(0, max_len + 1):
        for body in itertools.product(words, repeat=length):
            ends = [list(body) + [EOS_ID]] if length < max_len else []
            ends += [list(body)] if length == max_len else []
            for tokens in ends:
                score = model.log_prob(first_token, tokens) / length_penalty(len(tokens), alpha)
                if score > best:
                    best, best_tokens = score, [t for t in tokens if t != EOS_ID]
    return best_tokens


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_wide_enough_beam_finds_the_best_hypothesis(alpha):
    vocab, max_len = 5, 3
    model = Markov(vocab, max_len)
    src = torch.arange(6)[:, None]  # six sentences, each with its own bias
    found = beam_search(model, src, torch.ones_like(src, dtype=torch.bool), beam_size=vocab ** max_len,
                        max_len=max_len, alpha=alpha)
    assert found == [exhaustive_best(model, s, vocab, max_len, alpha) for s in range(6)]
    assert all(EOS_ID not in h for h in found)  # a finished hypothesis is never extended past <eos>


def small_transformer(seed=0):
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(src_vocab_size=30, d_model=16, n_heads=2, n_encoder_layers=2,
                                         n_decoder_layers=2, d_ff=32, dropout=0.1)).eval()


def source(batch=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (batch,), generator=generator).tolist()
    return pad_sequences([torch.randint(4, 30, (n,), generator=generator).tolist() for n in lengths])


@pytest.mark.parametrize("seed", range(3))
def test_beam_of_one_is_greedy(seed):
    model = small_transformer(seed)
    src, mask = source(seed=seed)
    assert beam_search(model, src, mask, beam_size=1, max_len=12) == greedy_decode(model, src, mask, max_len=12)


def test_batched_beam_equals_one_sentence_at_a_time():
    model = small_transformer(1)
    src, mask = source(6, seed=1)
    batched = beam_search(model, src, mask, beam_size=4, max_len=15)
    alone = [beam_search(model, src[i:i + 1, : int(mask[i].sum())], mask[i:i + 1, : int(mask[i].sum())],
                         beam_size=4, max_len=15)[0] for i in range(6)]
    assert batched == alone


def test_the_uncached_decoder_gives_the_same_tokens_and_logits():
    model = small_transformer(3)
    src, mask = source(4, seed=3)
    assert greedy_decode(Uncached(model), src, mask, max_len=12) == greedy_decode(model, src, mask, max_len=12)
    assert beam_search(Uncached(model), src, mask, 3, 12) == beam_search(model, src, mask, 3, 12)
    cached, uncached = model.start_decoding(src, mask), Uncached(model).start_decoding(src, mask)
    last = torch.full((4,), BOS_ID)
    for _ in range(5):
        a, cached = model.decode_step(cached, last)
        b, uncached = Uncached(model).decode_step(uncached, last)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        last = a.argmax(-1)
    assert Uncached(model).max_positions == model.max_positions
