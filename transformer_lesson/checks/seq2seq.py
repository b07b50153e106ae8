"""Checks for lesson 02: the encoder's final state under padding, the masked loss, greedy decoding."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..batching import pad_sequences
from ..decoding import greedy_decode
from ..seq2seq import GRUSeq2Seq, Seq2SeqConfig, last_real_state
from ..tokenizer import BOS_ID, EOS_ID
from ..training import sequence_loss
from .core import CheckFailed, Mistake, check_against
from .rnn import _explain_errors


def _padded_mask(g: torch.Generator, B: int, S: int) -> torch.Tensor:
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    lengths[0] = S  # the longest sentence fills the batch, as with real padding
    lengths[-1] = max(1, S - 2)  # and at least one sentence is padded
    return torch.arange(S)[None, :] < lengths[:, None]


def _last_state_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(3, 6, (1,), generator=g))
    S = int(torch.randint(B + 1, 10, (1,), generator=g))
    H = int(torch.randint(2, 6, (1,), generator=g))
    return {"outputs": torch.randn(B, S, H, generator=g), "src_mask": _padded_mask(g, B, S)}


LAST_STATE_MISTAKES = (
    Mistake("outputs[:, -1] is the state after the *padding* for every sentence shorter than the "
            "longest: use each sentence's own last real position, src_mask.sum(1) - 1.",
            lambda outputs, src_mask: outputs[:, -1]),
    Mistake("off by one: a sentence with n real tokens ends at position n - 1.",
            lambda outputs, src_mask: outputs[torch.arange(outputs.shape[0]),
                                              src_mask.sum(1).clamp(max=outputs.shape[1] - 1)]),
    Mistake("that is the state after the first token; we want the state after the last real one.",
            lambda outputs, src_mask: outputs[:, 0]),
)


def check_last_real_state(student: Callable, trials: int = 5) -> None:
    """Check ``last_real_state(outputs (B,S,H), src_mask (B,S)) -> (B, H)``."""
    check_against(
        _explain_errors(student, "last_real_state", "outputs is (B, S, H) and src_mask (B, S)."),
        last_real_state,
        _last_state_inputs,
        name="last_real_state",
        trials=trials,
        mistakes=LAST_STATE_MISTAKES,
        dims=("batch", "hidden"),
    )


def _loss_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(2, 5, (1,), generator=g))
    T = int(torch.randint(3, 8, (1,), generator=g))
    V = int(torch.randint(5, 12, (1,), generator=g))
    mask = _padded_mask(g, B, T)
    targets = torch.randint(1, V, (B, T), generator=g).masked_fill(~mask, 0)  # pad id 0 at padding
    return {"logits": torch.randn(B, T, V, generator=g) * 2, "targets": targets, "mask": mask}


def _per_sentence_mean(logits, targets, mask):
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    return ((losses * mask).sum(1) / mask.sum(1)).mean()


LOSS_MISTAKES = (
    Mistake("padding is counted: average over the real tokens only (mask), not over every position.",
            lambda logits, targets, mask: F.cross_entropy(logits.transpose(1, 2), targets)),
    Mistake("that is the sum; divide by the number of real tokens to get the mean.",
            lambda logits, targets, mask: (F.cross_entropy(logits.transpose(1, 2), targets,
                                                           reduction="none") * mask).sum()),
    Mistake("that averages each sentence first and then the sentences, so a token of a short "
            "sentence weighs more. Average over all real tokens of the batch at once.",
            _per_sentence_mean),
    Mistake("padding is in the denominator: divide by mask.sum(), not by the number of positions.",
            lambda logits, targets, mask: (F.cross_entropy(logits.transpose(1, 2), targets,
                                                           reduction="none") * mask).mean()),
)


def check_sequence_loss(student: Callable, trials: int = 5) -> None:
    """Check ``sequence_loss(logits (B,T,V), targets (B,T), mask (B,T)) -> scalar``."""
    hint = ("F.cross_entropy wants (N, V) logits and (N,) targets: flatten with "
            "logits.reshape(-1, V) and targets.reshape(-1).")
    check_against(
        _explain_errors(student, "sequence_loss", hint),
        lambda logits, targets, mask: sequence_loss(logits, targets, mask),
        _loss_inputs,
        name="sequence_loss",
        trials=trials,
        mistakes=LOSS_MISTAKES,
    )


# -- greedy decoding --------------------------------------------------------------------------


def _tiny_model(seed: int) -> GRUSeq2Seq:
    torch.manual_seed(seed)
    model = GRUSeq2Seq(Seq2SeqConfig(vocab_size=9, d_embed=8, d_hidden=12, dropout=0.0)).eval()
    with torch.no_grad():  # make <eos> likely enough that sentences end at different steps
        model.decoder.out.bias[EOS_ID] += 1.0
        model.decoder.out.bias[BOS_ID] -= 5.0
    return model


def _decode_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(4, 8, (1,), generator=g))
    sources = [torch.randint(4, 9, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
               for _ in range(B)]
    src, src_mask = pad_sequences(sources)
    # the model travels as its seed: inputs must be plain values and tensors the check can compare
    return {"model_seed": int(torch.randint(0, 10_000, (1,), generator=g)), "src": src,
            "src_mask": src_mask, "max_len": 12}


def _with_tiny_model(decode: Callable) -> Callable:
    """``decode(model, src, src_mask, max_len)`` as a function of the model's seed instead."""
    return lambda model_seed, src, src_mask, max_len: decode(_tiny_model(model_seed), src, src_mask, max_len)


def _decode_without_stopping(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    out = []
    for _ in range(max_len):
        logits, state = model.decode_step(state, last)
        last = logits.argmax(-1)
        out.append(last)
    return torch.stack(out, 1)


def _keep_eos(model, src, src_mask, max_len):
    rows = _decode_without_stopping(model, src, src_mask, max_len).tolist()
    return [row[: row.index(EOS_ID) + 1] if EOS_ID in row else row for row in rows]


def _no_stop(model, src, src_mask, max_len):
    return _decode_without_stopping(model, src, src_mask, max_len).tolist()


def _stop_at_first_finisher(model, src, src_mask, max_len):
    rows = _decode_without_stopping(model, src, src_mask, max_len)
    done = (rows == EOS_ID).any(0).nonzero()
    cut = int(done[0]) if len(done) else max_len
    return [[t for t in row[:cut] if t != EOS_ID] for row in rows.tolist()]


def _with_bos(model, src, src_mask, max_len):
    return [[BOS_ID, *row] for row in greedy_decode(model, src, src_mask, max_len)]


DECODE_MISTAKES = (
    Mistake("<eos> is included: cut each sentence just before its first <eos>.", _keep_eos),
    Mistake("the sentences do not stop at <eos>: everything after the first <eos> must be dropped.",
            _no_stop),
    Mistake("the whole batch stopped when the first sentence finished; keep going until every "
            "sentence has produced <eos> (or max_len is reached).", _stop_at_first_finisher),
    Mistake("<bos> is included: it is the decoder's first input, not part of the translation.", _with_bos),
)


def check_greedy_decode(student: Callable, trials: int = 4) -> None:
    """Check ``greedy_decode(model, src, src_mask, max_len) -> list of token-id lists`` on tiny random models."""

    def as_lists(*inputs):
        result = student(*inputs)
        if isinstance(result, torch.Tensor):
            raise CheckFailed("greedy_decode should return a Python list of lists of ints (one per "
                              "sentence, of different lengths), not a tensor: use .tolist().")
        return [list(map(int, row)) for row in result]

    check_against(
        _with_tiny_model(_explain_errors(as_lists, "greedy_decode",
                                         "Use model.start_decoding and model.decode_step.")),
        _with_tiny_model(greedy_decode),
        _decode_inputs,
        name="greedy_decode",
        trials=trials,
        mistakes=[Mistake(m.advice, _with_tiny_model(m.implementation)) for m in DECODE_MISTAKES],
    )
