"""Lesson 03: additive attention, the attention decoder, and that attention helps on long inputs."""

import re

import pytest
import torch

from transformer_lesson.batching import pad_sequences
from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.rnn_attention import (
    ATTENTION_MISTAKES,
    SCORE_MISTAKES,
    STEP_MISTAKES,
    check_additive_attention,
    check_additive_scores,
    check_attention_step,
)
from transformer_lesson.rnn_attention import AdditiveAttention, AttentionGRUSeq2Seq, additive_attention
from transformer_lesson.seq2seq import GRUSeq2Seq, Seq2SeqConfig
from transformer_lesson.toy import toy_batch


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def test_module_equals_function_and_weights_are_a_distribution():
    torch.manual_seed(0)
    attention = AdditiveAttention(5, 7, 6)
    query, keys = torch.randn(3, 5), torch.randn(3, 4, 7)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    context, weights = attention(query, keys, mask)
    expected = additive_attention(query, keys, mask, attention.W_query.weight, attention.W_key.weight,
                                  attention.v.weight[0])
    torch.testing.assert_close((context, weights), expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(context[2], keys[2, 0])  # one real token: all weight on it


def test_alignments_and_padding_invariance():
    torch.manual_seed(0)
    model = AttentionGRUSeq2Seq(Seq2SeqConfig(vocab_size=12, d_embed=8, d_hidden=16, d_attention=8,
                                              dropout=0.0)).eval()
    src, src_mask = pad_sequences([[4, 5, 6, 7, 8], [9, 10]])
    tgt_in = torch.tensor([[1, 4, 5], [1, 6, 7]])
    logits, weights = model.align(src, src_mask, tgt_in)
    assert logits.shape == (2, 3, 12) and weights.shape == (2, 3, 5)
    assert (weights[1, :, 2:] == 0).all()
    alone_logits, alone_weights = model.align(*pad_sequences([[9, 10]]), tgt_in[1:])
    torch.testing.assert_close(logits[1], alone_logits[0])
    torch.testing.assert_close(weights[1, :, :2], alone_weights[0])
    state = model.start_decoding(src, src_mask)
    assert all(v.shape[0] == 2 for v in state.values())  # batch first, for beam search


def attention_right(query, keys, mask, W_query, W_key, v):
    """Answers as a student writes them (the checks refuse the package's own)."""
    scores = scores_right(query, keys, W_query, W_key, v).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.bmm(weights.unsqueeze(1), keys).squeeze(1), weights


def scores_right(query, keys, W_query, W_key, v):
    return torch.tanh((query @ W_query.T).unsqueeze(1) + keys @ W_key.T) @ v


def step_right(decoder, last_tokens, hidden, memory, projected_keys, src_mask):
    embedded = decoder.dropout(decoder.embedding(last_tokens))
    context, weights = decoder.attention(hidden, memory, src_mask, projected_keys)
    new_hidden = decoder.cell(torch.cat([embedded, context], dim=-1), hidden)
    logits = decoder.out(decoder.dropout(torch.cat([new_hidden, context, embedded], dim=-1)))
    return logits, new_hidden, weights


def test_checks_accept_a_students_right_answer(capsys):
    check_additive_scores(scores_right)
    check_additive_attention(attention_right)
    check_attention_step(step_right)
    # the hidden tests run the checks on other random inputs
    check_additive_scores(scores_right, trials=8, seed=1, quiet=True)
    check_additive_attention(attention_right, trials=8, seed=1, quiet=True)
    check_attention_step(step_right, trials=8, seed=1, quiet=True)
    out = capsys.readouterr().out
    assert all(f"✓ {name}" in out for name in ("additive_scores", "additive_attention", "attention_step"))
    assert out.count("✓") == 3


def test_step_check_accepts_attention_written_with_the_students_own_function():
    def own_attention_step(decoder, last_tokens, hidden, memory, projected_keys, src_mask):
        attention = decoder.attention
        context, weights = attention_right(hidden, memory, src_mask, attention.W_query.weight,
                                           attention.W_key.weight, attention.v.weight[0])
        embedded = decoder.embedding(last_tokens)  # no dropout: the check runs in eval mode
        new_hidden = decoder.cell(torch.cat([embedded, context], dim=-1), hidden)
        return decoder.out(torch.cat([new_hidden, context, embedded], dim=-1)), new_hidden, weights

    check_attention_step(own_attention_step, quiet=True)


@pytest.mark.parametrize("mistake", SCORE_MISTAKES, ids=lambda m: m.advice[:30])
def test_scores_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_additive_scores(mistake.implementation)
    assert mistake.advice in str(failure.value) or "project with their transposes" in str(failure.value)


@pytest.mark.parametrize("mistake", STEP_MISTAKES, ids=lambda m: m.advice[:30])
def test_step_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_attention_step(mistake.implementation)
    assert mistake.advice in str(failure.value)


def _scores_without_tanh(query, keys, W_query, W_key, v):
    return ((query @ W_query.T).unsqueeze(1) + keys @ W_key.T) @ v


def _scores_not_broadcast(query, keys, W_query, W_key, v):
    return torch.tanh(query @ W_query.T + keys @ W_key.T) @ v  # (B, A) + (B, S, A)


def _scores_untransposed(query, keys, W_query, W_key, v):
    return torch.tanh((query @ W_query).unsqueeze(1) + keys @ W_key) @ v


def _scores_summed(query, keys, W_query, W_key, v):
    return torch.tanh((query @ W_query.T).unsqueeze(1) + keys @ W_key.T).sum(dim=2)


@pytest.mark.parametrize("wrong, cause", [
    (_scores_without_tanh, "the tanh is missing"),
    (_scores_not_broadcast, "give it a source axis"),
    (_scores_untransposed, "project with their transposes"),
    (_scores_summed, "were summed"),
    (lambda query, keys, W_query, W_key, v: torch.softmax(scores_right(query, keys, W_query, W_key, v), dim=1),
     "those are weights, not scores"),
])
def test_scores_check_names_answers_written_the_wrong_way(wrong, cause):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_additive_scores(wrong)
    assert cause in str(failure.value)


def _step_cell_reads_context_first(decoder, last_tokens, hidden, memory, projected_keys, src_mask):
    embedded = decoder.embedding(last_tokens)
    context, weights = decoder.attention(hidden, memory, src_mask, projected_keys)
    hidden = decoder.cell(torch.cat((context, embedded), 1), hidden)
    return decoder.out(torch.cat((hidden, context, embedded), 1)), hidden, weights


def _step_predicts_from_the_old_state(decoder, last_tokens, hidden, memory, projected_keys, src_mask):
    embedded = decoder.embedding(last_tokens)
    context, weights = decoder.attention(hidden, memory, src_mask, projected_keys)
    logits = decoder.out(torch.cat((hidden, context, embedded), 1))
    return logits, decoder.cell(torch.cat((embedded, context), 1), hidden), weights


def _step_attends_after_the_cell(decoder, last_tokens, hidden, memory, projected_keys, src_mask):
    embedded = decoder.embedding(last_tokens)
    context, _ = decoder.attention(hidden, memory, src_mask, projected_keys)
    hidden = decoder.cell(torch.cat((embedded, context), 1), hidden)
    context, weights = decoder.attention(hidden, memory, src_mask)
    return decoder.out(torch.cat((hidden, context, embedded), 1)), hidden, weights


@pytest.mark.parametrize("wrong, cause", [
    (_step_cell_reads_context_first, "GRU cell's input is in the wrong order"),
    (_step_predicts_from_the_old_state, "from *before* the GRU cell"),
    (_step_attends_after_the_cell, "attention ran again with the new state"),
])
def test_step_check_names_answers_written_the_wrong_way(wrong, cause):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_attention_step(wrong)
    assert cause in str(failure.value)


def test_step_check_explains_a_cell_without_the_context():
    def no_context(decoder, last_tokens, hidden, memory, projected_keys, src_mask):
        embedded = decoder.embedding(last_tokens)
        hidden = decoder.cell(embedded, hidden)
        return decoder.out(hidden), hidden, None

    with pytest.raises(CheckFailed, match=r"(?s)raised RuntimeError.*decoder.cell takes \[embedding, context\]"):
        check_attention_step(no_context)


@pytest.mark.parametrize("check, right", [(check_additive_scores, scores_right),
                                          (check_additive_attention, attention_right),
                                          (check_attention_step, step_right)])
@pytest.mark.parametrize("change, message", [
    (lambda out: None, "forget the `return`"),
    (lambda out: tuple(t.numpy() for t in out) if isinstance(out, tuple) else out.numpy(), "is a ndarray"),
    (lambda out: tuple(t.to("meta") for t in out) if isinstance(out, tuple) else out.to("meta"), "device meta"),
    (lambda out: tuple(t.long() for t in out) if isinstance(out, tuple) else out.long(), "dtype torch.int64"),
])
def test_checks_explain_answers_of_the_wrong_kind(check, right, change, message):
    with pytest.raises(CheckFailed, match=re.escape(message)):
        check(lambda *inputs: change(right(*inputs)))


@pytest.mark.parametrize("mistake", ATTENTION_MISTAKES, ids=lambda m: m.advice[:30])
def test_check_names_each_mistake(mistake):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_additive_attention(mistake.implementation)
    assert mistake.advice in str(failure.value)


def test_check_says_when_outputs_are_swapped():
    def transposed_weights(query, keys, mask, W_query, W_key, v):
        context, weights = additive_attention(query, keys, mask, W_query, W_key, v)
        return context, weights.T

    with pytest.raises(CheckFailed, match="batch and source look swapped"):
        check_additive_attention(transposed_weights)


def test_attention_beats_a_single_context_vector_on_long_sequences(train_on_reverse):
    with_attention = train_on_reverse(AttentionGRUSeq2Seq, steps=300, min_len=10, max_len=14, d_hidden=64)
    without = train_on_reverse(GRUSeq2Seq, steps=300, min_len=10, max_len=14, d_hidden=64)
    assert with_attention >= 0.9, f"attention: exact match {with_attention:.1%}"
    assert with_attention > without + 0.5, f"attention {with_attention:.1%} vs none {without:.1%}"


def test_toy_batch_is_used_consistently():
    batch = toy_batch("reverse", 2, 3, 3, 8, torch.Generator().manual_seed(0))
    assert batch.tgt_out[:, :3].flip(1).tolist() == batch.src.tolist()


@pytest.mark.parametrize("fill, cause", [
    (lambda scores, mask: scores * mask, "multiplied by the mask"),
    (lambda scores, mask: scores.masked_fill(mask, float("-inf")), "mask is inverted"),
])
def test_check_names_masking_slips(fill, cause):
    def wrong(query, keys, mask, W_query, W_key, v):
        scores = torch.tanh(keys @ W_key.T + (query @ W_query.T)[:, None, :]) @ v
        weights = torch.softmax(fill(scores, mask), dim=-1)
        return (weights[:, :, None] * keys).sum(1), weights

    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_additive_attention(wrong)
    assert cause in str(failure.value)


def _weights_masked_after_softmax(query, keys, mask, W_query, W_key, v):
    scores = torch.tanh((query @ W_query.T).unsqueeze(1) + keys @ W_key.T) @ v
    weights = torch.softmax(scores, dim=-1).masked_fill(~mask, 0.0)
    return torch.bmm(weights.unsqueeze(1), keys).squeeze(1), weights


def _softmax_over_dim_0(query, keys, mask, W_query, W_key, v):
    scores = torch.tanh((query @ W_query.T).unsqueeze(1) + keys @ W_key.T) @ v
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=0)
    return torch.bmm(weights.unsqueeze(1), keys).squeeze(1), weights


@pytest.mark.parametrize("wrong, cause", [
    (_weights_masked_after_softmax, "mask was applied after the softmax"),
    (_softmax_over_dim_0, "softmax runs over the batch"),
])
def test_check_names_answers_written_the_wrong_way(wrong, cause):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_additive_attention(wrong)
    assert cause in str(failure.value)


def test_decode_step_refuses_last_tokens_of_the_wrong_shape():
    model = AttentionGRUSeq2Seq(Seq2SeqConfig(vocab_size=12, d_embed=8, d_hidden=16, d_attention=8)).eval()
    state = model.start_decoding(*pad_sequences([[4, 5], [6, 7], [8, 9]]))
    logits, state = model.decode_step(state, torch.tensor([1, 1, 1]))
    for last in (logits.argmax(0), logits.argmax(-1, keepdim=True)):
        expected = f"last_tokens should be (batch,) = (3,), got {tuple(last.shape)}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            model.decode_step(state, last)
