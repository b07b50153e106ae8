"""Lesson 02: the GRU encoder-decoder, its exercise checks, and that it learns the reverse task."""

import re
import time

import pytest
import torch
import torch.nn.functional as F

from transformer_lesson.batching import pad_sequences
from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.seq2seq import (
    LAST_STATE_MISTAKES,
    LOSS_MISTAKES,
    check_last_real_state,
    check_sequence_loss,
)
from transformer_lesson.seq2seq import GRUEncoder, GRUSeq2Seq, Seq2SeqConfig, last_real_state
from transformer_lesson.toy import toy_batch


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def small_config(**overrides):
    return Seq2SeqConfig(**{"vocab_size": 12, "d_embed": 8, "d_hidden": 16, "dropout": 0.0, **overrides})


def test_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = GRUEncoder(small_config(n_layers=2), bidirectional=True).eval()
    sentences = [[4, 5, 6, 7, 8], [9, 10]]
    src, mask = pad_sequences(sentences)
    outputs, final = encoder(src, mask)
    alone_outputs, alone_final = encoder(*pad_sequences([sentences[1]]))
    torch.testing.assert_close(final[1], alone_final[0])
    torch.testing.assert_close(outputs[1, :2], alone_outputs[0])
    assert final.shape == (2, 4, 16)  # batch first: (B, dirs * layers, H)


def test_last_real_state_is_the_encoders_final_state():
    torch.manual_seed(0)
    encoder = GRUEncoder(small_config()).eval()
    src, mask = pad_sequences([[4, 5, 6, 7], [8, 9], [10]])
    outputs, final = encoder(src, mask)
    torch.testing.assert_close(last_real_state(outputs, mask), final[:, -1])


def test_teacher_forced_logits_equal_step_by_step_decoding():
    torch.manual_seed(0)
    model = GRUSeq2Seq(small_config(n_layers=2)).eval()
    batch = toy_batch("reverse", 3, 2, 6, 8, torch.Generator().manual_seed(0))
    logits = model(batch.src, batch.src_mask, batch.tgt_in)
    state = model.start_decoding(batch.src, batch.src_mask)
    for t in range(batch.tgt_in.shape[1]):
        step_logits, state = model.decode_step(state, batch.tgt_in[:, t])
        torch.testing.assert_close(step_logits, logits[:, t])
    assert all(v.shape[0] == 3 for v in state.values())  # every state tensor is batch first


def test_decoder_names_a_layers_first_hidden_state():
    model = GRUSeq2Seq(small_config(n_layers=2))
    state = model.start_decoding(*pad_sequences([[4, 5], [6, 7], [8, 9]]))
    state["hidden"] = state["hidden"].transpose(0, 1)  # nn.GRU's (layers, batch, hidden)
    with pytest.raises(ValueError, match=r"transpose\(0, 1\)"):
        model.decode_step(state, torch.tensor([1, 1, 1]))


def last_state_right(outputs, src_mask):
    """Answers as a student writes them (the checks refuse the package's own)."""
    last = src_mask.sum(dim=1) - 1
    return outputs[torch.arange(outputs.shape[0]), last]


def loss_right(logits, targets, mask):
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (losses * mask.reshape(-1)).sum() / mask.sum()


def test_checks_accept_a_students_right_answer():
    check_last_real_state(last_state_right)
    check_sequence_loss(loss_right)


@pytest.mark.parametrize("mistake", LAST_STATE_MISTAKES + LOSS_MISTAKES, ids=lambda m: m.advice[:30])
def test_checks_name_each_mistake(mistake):
    check = check_last_real_state if mistake in LAST_STATE_MISTAKES else check_sequence_loss
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check(mistake.implementation)
    assert mistake.advice in str(failure.value)


def test_loss_check_accepts_ignore_index_answer():
    import torch.nn.functional as F

    check_sequence_loss(lambda logits, targets, mask: F.cross_entropy(logits.transpose(1, 2), targets,
                                                                      ignore_index=0))


def test_gru_seq2seq_learns_to_reverse(train_on_reverse):
    started = time.perf_counter()
    accuracy = train_on_reverse(GRUSeq2Seq, steps=600, min_len=2, max_len=6, d_hidden=128)
    assert accuracy >= 0.9, f"exact match {accuracy:.1%}"
    assert time.perf_counter() - started < 60


def test_off_by_one_index_error_gets_the_off_by_one_hint():
    def off_by_one(outputs, src_mask):
        return outputs[torch.arange(outputs.shape[0]), src_mask.sum(1)]  # IndexError for full rows

    with pytest.raises(CheckFailed, match=r"(?s)raised IndexError.*off by one.*src_mask.sum\(1\) - 1"):
        check_last_real_state(off_by_one)


def test_a_float_index_gets_no_off_by_one_hint():
    def float_index(outputs, src_mask):
        last = src_mask.float().sum(1) - 1  # float indices: IndexError, but not out of range
        return outputs[torch.arange(outputs.shape[0]), last]

    with pytest.raises(CheckFailed, match="must be long, int") as failure:
        check_last_real_state(float_index)
    assert "off by one" not in str(failure.value)


def test_last_state_check_names_a_loop_over_the_last_position():
    def last_column(outputs, src_mask):
        return torch.stack([outputs[b, outputs.shape[1] - 1] for b in range(outputs.shape[0])])

    with pytest.raises(CheckFailed, match=r"Likely cause: outputs\[:, -1\] is the state after the \*padding\*"):
        check_last_real_state(last_column)


@pytest.mark.parametrize("wrong, cause", [
    (lambda logits, targets, mask: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)),
     "padding is counted"),
    (lambda logits, targets, mask: (F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                    reduction="none") * mask.reshape(-1)).mean(),
     "padding is in the denominator"),
])
def test_loss_check_names_answers_written_the_wrong_way(wrong, cause):
    with pytest.raises(CheckFailed, match="Likely cause") as failure:
        check_sequence_loss(wrong)
    assert cause in str(failure.value)


@pytest.mark.parametrize("wrong_shape", ["argmax over the batch", "(B, 1)"])
def test_decode_step_refuses_last_tokens_of_the_wrong_shape(wrong_shape):
    model = GRUSeq2Seq(small_config()).eval()
    state = model.start_decoding(*pad_sequences([[4, 5], [6, 7], [8, 9]]))
    logits, state = model.decode_step(state, torch.tensor([1, 1, 1]))
    last = logits.argmax(0) if wrong_shape == "argmax over the batch" else logits.argmax(-1, keepdim=True)
    expected = re.escape(f"last_tokens should be (batch,) = (3,), got {tuple(last.shape)}: take logits.argmax(dim=-1).")
    with pytest.raises(ValueError, match=expected):
        model.decode_step(state, last)


def test_loss_check_names_nll_loss_on_raw_logits():
    import torch.nn.functional as F

    def nll_on_logits(logits, targets, mask):
        losses = F.nll_loss(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        return (losses * mask.reshape(-1)).sum() / mask.sum()

    with pytest.raises(CheckFailed, match="(?s)Likely cause: F.nll_loss was given raw logits.*log_softmax"):
        check_sequence_loss(nll_on_logits)


def test_last_state_check_names_the_arange_fix_for_indexing_one_dimension():
    def all_pairs(outputs, src_mask):
        last = src_mask.sum(dim=1) - 1
        return outputs[:, last]  # (B, B, H): every sentence at every sentence's last position

    with pytest.raises(CheckFailed, match=r"(?s)has 3 dimensions.*Likely cause: outputs\[:, last\].*"
                                          r"outputs\[torch.arange\(B\), last\]"):
        check_last_real_state(all_pairs)


@pytest.mark.parametrize("wrong, message", [
    (lambda outputs, src_mask: None, "forget the `return`"),
    (lambda outputs, src_mask: last_state_right(outputs, src_mask).numpy(), "is a ndarray"),
    (lambda outputs, src_mask: last_state_right(outputs, src_mask).to("meta"), "device meta"),
    (lambda outputs, src_mask: last_state_right(outputs, src_mask).long(), "dtype torch.int64"),
])
def test_last_state_check_explains_answers_of_the_wrong_kind(wrong, message):
    with pytest.raises(CheckFailed, match=re.escape(message)):
        check_last_real_state(wrong)


@pytest.mark.parametrize("wrong, message", [
    (lambda logits, targets, mask: loss_right(logits, targets, mask).item(), "no .item()"),
    (lambda logits, targets, mask: None, "forget the `return`"),
    (lambda logits, targets, mask: loss_right(logits, targets, mask).detach().numpy(), "is a ndarray"),
    (lambda logits, targets, mask: loss_right(logits, targets, mask).to("meta"), "device meta"),
    (lambda logits, targets, mask: loss_right(logits, targets, mask).reshape(1), "has 1 dimensions"),
])
def test_loss_check_explains_answers_of_the_wrong_kind(wrong, message):
    with pytest.raises(CheckFailed, match=re.escape(message)):
        check_sequence_loss(wrong)


def test_checks_take_another_seed_for_hidden_tests(capsys):
    check_last_real_state(last_state_right, trials=3, seed=1, quiet=True)
    check_sequence_loss(loss_right, trials=3, seed=1, quiet=True)
    assert capsys.readouterr().out == ""
