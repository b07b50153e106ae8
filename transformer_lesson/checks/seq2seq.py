"""Checks for lesson 02: the encoder's final state under padding, the masked loss, greedy decoding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..batching import pad_sequences
from ..decoding import greedy_decode
from ..seq2seq import GRUSeq2Seq, Seq2SeqConfig, last_real_state
from ..tokenizer import BOS_ID, EOS_ID, PAD_ID
from ..training import sequence_loss
from .core import CheckFailed, Mistake, check_against, explain_crashes, padded_mask


def _last_state_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(3, 6, (1,), generator=g))
    S = int(torch.randint(B + 1, 10, (1,), generator=g))
    H = int(torch.randint(2, 6, (1,), generator=g))
    return {"outputs": torch.randn(B, S, H, generator=g), "src_mask": padded_mask(g, B, S)}


LAST_STATE_MISTAKES = (
    Mistake("outputs[:, -1] is the state after the *padding* for every sentence shorter than the "
            "longest: use each sentence's own last real position, src_mask.sum(1) - 1.",
            lambda outputs, src_mask: outputs[:, -1]),
    Mistake("off by one: a sentence with n real tokens ends at position n - 1.",
            lambda outputs, src_mask: outputs[torch.arange(outputs.shape[0]),
                                              src_mask.sum(1).clamp(max=outputs.shape[1] - 1)]),
    Mistake("that is the state after the first token; we want the state after the last real one.",
            lambda outputs, src_mask: outputs[:, 0]),
    Mistake("outputs[:, last] takes, for *every* sentence, the outputs at all B sentences' last positions: "
            "(B, B, H). Pair sentence i with its own last[i] by indexing both dimensions with tensors, "
            "outputs[torch.arange(B), last] (or use gather).",
            lambda outputs, src_mask: outputs[:, src_mask.sum(1) - 1]),
)


def check_last_real_state(student: Callable, trials: int = 5, seed: int = 0, quiet: bool = False) -> None:
    """Check ``last_real_state(outputs (B,S,H), src_mask (B,S)) -> (B, H)``.

    ``seed`` draws other random inputs (hidden tests use another one than the visible check).
    """
    check_against(
        explain_crashes(student, "last_real_state", "outputs is (B, S, H) and src_mask (B, S).",
                        index_hint="An index is out of range: off by one? A sentence with n real tokens ends at "
                                   "position n - 1, so use src_mask.sum(1) - 1.", explain_not_implemented=True),
        last_real_state,
        _last_state_inputs,
        name="last_real_state",
        trials=trials,
        mistakes=LAST_STATE_MISTAKES,
        dims=("batch", "hidden"),
        seed=seed,
        quiet=quiet,
    )


def _loss_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(2, 5, (1,), generator=g))
    T = int(torch.randint(3, 8, (1,), generator=g))
    V = int(torch.randint(5, 12, (1,), generator=g))
    mask = padded_mask(g, B, T)
    targets = torch.randint(1, V, (B, T), generator=g).masked_fill(~mask, 0)  # pad id 0 at padding
    return {"logits": torch.randn(B, T, V, generator=g) * 2, "targets": targets, "mask": mask}


def _per_sentence_mean(logits, targets, mask):
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    return ((losses * mask).sum(1) / mask.sum(1)).mean()


def _nll_on_logits(logits, targets, mask):
    losses = F.nll_loss(logits.transpose(1, 2), targets, reduction="none")  # -logits[target]: no softmax
    return (losses * mask).sum() / mask.sum()


LOSS_MISTAKES = (
    Mistake("padding is counted: average over the real tokens only (mask), not over every position.",
            lambda logits, targets, mask: F.cross_entropy(logits.transpose(1, 2), targets)),
    Mistake("that is the sum; divide by the number of real tokens to get the mean.",
            lambda logits, targets, mask: (F.cross_entropy(logits.transpose(1, 2), targets,
                                                           reduction="none") * mask).sum()),
    Mistake("that averages each sentence first and then the sentences, so a token of a short "
            "sentence weighs more. Average over all real tokens of the batch at once.",
            _per_sentence_mean),
    Mistake("F.nll_loss was given raw logits: it expects *log-probabilities* and only picks out "
            "-input[target]. Apply F.log_softmax(logits, dim=-1) first, or use F.cross_entropy, which "
            "does both.", _nll_on_logits),
    Mistake("padding is in the denominator: divide by mask.sum(), not by the number of positions.",
            lambda logits, targets, mask: (F.cross_entropy(logits.transpose(1, 2), targets,
                                                           reduction="none") * mask).mean()),
)


def check_sequence_loss(student: Callable, trials: int = 5, seed: int = 0, quiet: bool = False) -> None:
    """Check ``sequence_loss(logits (B,T,V), targets (B,T), mask (B,T)) -> scalar``."""
    hint = ("F.cross_entropy wants (N, V) logits and (N,) targets: flatten with "
            "logits.reshape(-1, V) and targets.reshape(-1).")

    def a_tensor(*inputs):
        loss = student(*inputs)
        if isinstance(loss, float | int) and not isinstance(loss, bool):
            raise CheckFailed("sequence_loss returned a Python number: return the scalar tensor itself "
                              "(no .item()), so that loss.backward() can reach the model's weights.")
        return loss

    check_against(
        explain_crashes(a_tensor, "sequence_loss", hint, explain_not_implemented=True),
        lambda logits, targets, mask: sequence_loss(logits, targets, mask),
        _loss_inputs,
        name="sequence_loss",
        trials=trials,
        mistakes=LOSS_MISTAKES,
        seed=seed,
        quiet=quiet,
    )


# -- greedy decoding --------------------------------------------------------------------------


class _TinyTranslator(nn.Module):
    """A tiny random :class:`GRUSeq2Seq` whose translations end at a length set by the source.

    The words come from the random GRU, so they depend on the decoder state and on the tokens fed
    back; ``<pad>`` and ``<bos>`` are never predicted (logit -inf). ``<eos>`` comes as token
    number ``2 * n + (sum of the source ids) % 2`` for a source of ``n`` tokens (its own step
    counter lives in the state, so an answer that drops the new state never ends), and words
    follow it again, so an answer must *cut* at the first ``<eos>``. A 1-token source gives a
    2-3 token translation; a 6-token source reaches ``max_len=12`` without ``<eos>``.
    ``batch_sizes`` records the batch of every ``decode_step`` call, so that the check can see
    whether the loop stopped once every sentence had ended.
    """

    def __init__(self, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # leave the student's random numbers alone
            torch.manual_seed(seed)
            self.gru = GRUSeq2Seq(Seq2SeqConfig(vocab_size=9, d_embed=8, d_hidden=12, dropout=0.0))
        with torch.no_grad():  # larger weights: the words change from step to step
            for parameter in self.gru.parameters():
                parameter.mul_(3.0)
        self.batch_sizes: list[int] = []
        self.eval()

    def start_decoding(self, src: torch.Tensor, src_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.gru.start_decoding(src, src_mask)
        lengths = src_mask.sum(1)
        total = (src * src_mask).sum(1)
        return {**state, "until_eos": 2 * lengths + total % 2}  # (B,) words still to write

    def decode_step(self, state: dict[str, torch.Tensor], last_tokens: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.batch_sizes.append(int(last_tokens.shape[0]) if last_tokens.dim() else 1)
        logits, new_state = self.gru.decode_step(state, last_tokens)
        logits = logits.clone()
        logits[:, [PAD_ID, BOS_ID]] = float("-inf")
        ends = state["until_eos"] == 0
        logits[:, EOS_ID] = torch.where(ends, logits.max(-1).values.abs() + 10.0, float("-inf"))
        return logits, {**new_state, "until_eos": state["until_eos"] - 1}


def _tiny_model(seed: int) -> _TinyTranslator:
    return _TinyTranslator(seed)


DECODE_MAX_LEN = 12


def _decode_inputs(g: torch.Generator, reach_max_len: bool = True) -> dict:
    """A batch of 4-7 sources. With ``reach_max_len`` one translation is cut at ``max_len``; without,
    every source has at most 4 tokens, so every translation ends (at most 9 tokens) before ``max_len``
    and an answer that does not stop the loop once all have ended calls ``decode_step`` too often."""
    B = int(torch.randint(4, 8, (1,), generator=g))
    lengths = torch.randint(1, 7 if reach_max_len else 5, (B,), generator=g).tolist()
    if reach_max_len:
        lengths[int(torch.randint(0, B, (1,), generator=g))] = 6  # one translation reaches max_len
    sources = [torch.randint(4, 9, (n,), generator=g).tolist() for n in lengths]
    src, src_mask = pad_sequences(sources)
    # the model travels as its seed: inputs must be plain values and tensors the check can compare
    return {"model_seed": int(torch.randint(0, 10_000, (1,), generator=g)), "src": src,
            "src_mask": src_mask, "max_len": DECODE_MAX_LEN}


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


def _drop_every_eos(model, src, src_mask, max_len):
    return [[t for t in row if t != EOS_ID] for row in _decode_without_stopping(model, src, src_mask, max_len).tolist()]


def _stop_at_first_finisher(model, src, src_mask, max_len, after: bool = True):
    """``if (last == EOS).any(): break``, placed after (``after``) or before storing the step's tokens."""
    rows = _decode_without_stopping(model, src, src_mask, max_len)
    done = (rows == EOS_ID).any(0).nonzero()
    cut = int(done[0]) + int(after) if len(done) else max_len
    rows = rows[:, :cut].tolist()
    return [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in rows]


def _stop_before_storing_first_eos(model, src, src_mask, max_len):
    return _stop_at_first_finisher(model, src, src_mask, max_len, after=False)


def _with_bos(model, src, src_mask, max_len):
    return [[BOS_ID, *row] for row in greedy_decode(model, src, src_mask, max_len)]


def _state_not_updated(model, src, src_mask, max_len):
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    out = []
    for _ in range(max_len):
        logits, _ = model.decode_step(state, last)  # the new state is thrown away
        last = logits.argmax(-1)
        out.append(last)
    rows = torch.stack(out, 1).tolist()
    return [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in rows]


def _one_step_short(model, src, src_mask, max_len):
    return greedy_decode(model, src, src_mask, max_len - 1)


_STOPPED_EARLY = ("the whole batch stopped as soon as one sentence produced <eos> (as with "
                  "`if (last == EOS).any(): break`). Keep going until every sentence has produced <eos> "
                  "or max_len is reached.")

DECODE_MISTAKES = (
    Mistake("<eos> is included: cut each sentence just before its first <eos>.", _keep_eos),
    Mistake("the sentences do not stop at <eos>: everything after the first <eos> must be dropped.",
            _no_stop),
    Mistake("every <eos> was removed, but the words after the first one were kept: cut each "
            "sentence at its first <eos> (row[:row.index(EOS)]) instead of filtering out <eos>.",
            _drop_every_eos),
    Mistake(_STOPPED_EARLY, _stop_at_first_finisher),
    Mistake(_STOPPED_EARLY, _stop_before_storing_first_eos),
    Mistake("<bos> is included: it is the decoder's first input, not part of the translation.", _with_bos),
    Mistake("the decoder state is not updated: decode_step returns (logits, new_state), and the "
            "next step must get new_state (`logits, state = model.decode_step(state, last)`).",
            _state_not_updated),
    Mistake("one step short: a sentence that never produces <eos> should have max_len tokens. "
            "Loop `for _ in range(max_len)`, not range(max_len - 1).", _one_step_short),
)


def _steps_needed(model_seed: int, src: torch.Tensor, src_mask: torch.Tensor, max_len: int
                  ) -> tuple[list[list[int]], int]:
    """The translations, and how many decoding steps the batch needs: until every sentence has
    produced <eos>, or max_len. (The checks' own loop, not the package's ``greedy_decode``: an
    answer is refused for running that one.)"""
    model = _tiny_model(model_seed)
    state = model.start_decoding(src, src_mask)
    last = torch.full((src.shape[0],), BOS_ID)
    finished = torch.zeros(src.shape[0], dtype=torch.bool)
    steps = []
    with torch.no_grad():
        for _ in range(max_len):
            logits, state = model.decode_step(state, last)
            last = logits.argmax(-1)
            steps.append(last)
            finished = finished | (last == EOS_ID)
            if finished.all():
                break
    rows = torch.stack(steps, 1).tolist()
    return [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in rows], len(steps)


def _stop_when_done(student: Callable) -> Callable:
    """``student`` as a function of the model's seed, refusing a right answer that decodes too many steps.

    The translations are compared afterwards, by the check; this only looks at how the model was called
    once they are right, so a wrong translation is reported as such first.
    """

    def decode(model_seed, src, src_mask, max_len):
        model = _tiny_model(model_seed)
        result = student(model, src, src_mask, max_len)
        expected, needed = _steps_needed(model_seed, src, src_mask, max_len)
        try:
            right = [list(map(int, row)) for row in result] == expected
        except (TypeError, ValueError):
            right = False
        if not right:
            return result
        batch, calls = src.shape[0], model.batch_sizes
        if batch > 1 and calls and max(calls) < batch:
            raise CheckFailed(
                f"greedy_decode gives the right tokens, but decoded at most {max(calls)} of the {batch} sentences "
                "per model.decode_step call: decode the whole batch together (one call per step for all "
                "sentences), which is what makes batched translation fast.")
        if len(calls) > needed:
            raise CheckFailed(
                f"greedy_decode gives the right tokens, but called model.decode_step {len(calls)} times where "
                f"{needed} were enough: every sentence had produced <eos> by step {needed} (max_len = "
                f"{max_len}). Stop the loop once all have finished: keep a boolean `finished` (B,), update it "
                "with `finished = finished | (last == EOS)` (a sentence stays finished: after its <eos> a model "
                "may write words again), and `break` when `finished.all()`.")
        return result

    return decode


def check_greedy_decode(student: Callable, trials: int = 4, seed: int = 0, quiet: bool = False) -> None:
    """Check ``greedy_decode(model, src, src_mask, max_len) -> list of token-id lists`` on tiny random models.

    The trials alternate between a batch where one translation is cut at ``max_len`` and one where all
    end before it; in the latter an answer must also stop calling ``decode_step`` once all have ended.
    """

    def as_lists(*inputs):
        result = student(*inputs)
        if isinstance(result, np.ndarray):
            raise CheckFailed("greedy_decode should return a Python list of lists of ints (one per "
                              "sentence, of different lengths), not a NumPy array.")
        if result is None or not isinstance(result, tuple | list | torch.Tensor):
            return result  # the comparison says what is wrong with it
        if isinstance(result, torch.Tensor):
            raise CheckFailed("greedy_decode should return a Python list of lists of ints (one per "
                              "sentence, of different lengths), not a tensor: use .tolist().")
        return [list(map(int, row)) for row in result]

    trial = iter(range(10**9))

    def inputs(g: torch.Generator) -> dict:
        return _decode_inputs(g, reach_max_len=next(trial) % 2 == 0)

    check_against(
        _stop_when_done(explain_crashes(as_lists, "greedy_decode", "Use model.start_decoding and model.decode_step.",
                                        explain_not_implemented=True)),
        _with_tiny_model(greedy_decode),
        inputs,
        name="greedy_decode",
        trials=trials,
        mistakes=[Mistake(m.advice, _with_tiny_model(m.implementation)) for m in DECODE_MISTAKES],
        seed=seed,
        quiet=quiet,
    )
