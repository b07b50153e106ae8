"""Generating a translation one token at a time, for every model in the course.

A trained model predicts the next token from the source and the tokens so far. To translate, we
start from ``<bos>``, pick a token, feed it back, and repeat until ``<eos>``. Every seq2seq model
(RNNs here, Transformers from lesson 07, with a key/value cache in lesson 10) implements the
same two methods, so one decoder works for all of them:

* ``state = model.start_decoding(src (B, S), src_mask (B, S))``: encode the source once. The state
  is a dict of tensors, **every one batch first**, so that beam search can keep, drop or copy
  hypotheses with :func:`reorder_state` (``index_select`` along dim 0).
* ``logits, state = model.decode_step(state, last_tokens (B,))``: logits (B, V) for the next token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .tokenizer import BOS_ID, EOS_ID
from .validation import require_int, require_number, require_tensor

State = dict[str, torch.Tensor]


class IncrementalDecoder(Protocol):
    """The interface of every seq2seq model in the course (see the module docstring)."""

    def start_decoding(self, src: torch.Tensor, src_mask: torch.Tensor) -> State: ...

    def decode_step(self, state: State, last_tokens: torch.Tensor) -> tuple[torch.Tensor, State]: ...


def reorder_state(state: State, index: torch.Tensor) -> State:
    """Select (and repeat) batch rows of every tensor in ``state``: ``index`` (B',) -> batch B'."""
    return {name: tensor.index_select(0, index) for name, tensor in state.items()}


@torch.no_grad()
def _check_source(src, src_mask) -> None:
    """``src`` and ``src_mask`` as every decoder takes them: (B, S) tensors (the model checks the rest)."""
    require_tensor(src, "src", ndim=2, layout="(batch, time) of token ids")
    require_tensor(src_mask, "src_mask", ndim=2, layout="(batch, time) of booleans, True at real tokens")


def greedy_decode(
    model: IncrementalDecoder,
    src: torch.Tensor,
    src_mask: torch.Tensor,
    max_len: int,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> list[list[int]]:
    """Translate a batch by always taking the most likely next token.

    ``src`` (B, S), ``src_mask`` (B, S). Returns B lists of token ids, without ``<bos>`` and
    ``<eos>``, each at most ``max_len`` long. A sentence stops at its own ``<eos>``; the loop
    stops when all have. Finished sentences leave the batch: once a quarter of the rows still
    decoded have ended, the state keeps only the others (:func:`reorder_state`), so that the
    model is not run on sentences that are done. The model is put in eval mode (no dropout) and
    restored afterwards.
    """
    _check_source(src, src_mask)
    max_len = require_int(max_len, "max_len", at_least=1)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        batch = src.shape[0]
        state = model.start_decoding(src, src_mask)
        rows = torch.arange(batch, device=src.device)  # which sentence each row of the state is
        last = torch.full((batch,), bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
        steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, their tokens) at each step
        for _ in range(max_len):
            logits, state = model.decode_step(state, last)
            last = logits.argmax(dim=-1)  # (rows,)
            last = last.masked_fill(finished, eos_id)  # ended, not yet dropped: just repeat <eos>
            steps.append((rows, last))
            finished = finished | (last == eos_id)
            done = int(finished.sum())
            if done == len(rows):
                break
            if done and done * 4 >= len(rows):  # drop the finished rows
                keep = (~finished).nonzero().squeeze(1)
                state, rows, last, finished = reorder_state(state, keep), rows[keep], last[keep], finished[keep]
        results: list[list[int]] = [[] for _ in range(batch)]
        for step_rows, tokens in steps:
            for row, token in zip(step_rows.tolist(), tokens.tolist(), strict=True):
                results[row].append(token)
        return [ids[: ids.index(eos_id)] if eos_id in ids else ids for ids in results]
    finally:
        if was_training:
            model.train()


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length penalty (Wu et al., 2016): ((5 + length) / 6) ** alpha; 1 when ``alpha`` is 0.

    A hypothesis's score is its summed log-probability divided by this. Log-probabilities only add
    negative terms, so without it beam search prefers short translations; ``alpha`` near 1
    divides by about the length, 0 ranks by raw probability.
    """
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: IncrementalDecoder,
    src: torch.Tensor,
    src_mask: torch.Tensor,
    beam_size: int,
    max_len: int | Sequence[int],
    alpha: float = 0.6,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> list[list[int]]:
    """Translate a batch keeping the ``beam_size`` most probable partial translations per sentence.

    All B x k hypotheses run through the model together, as one batch of B*k rows. At each step
    every live hypothesis is extended by every token, and of the k x V candidates per sentence
    the best 2k are ranked by summed log-probability. Candidates that end in ``<eos>`` and rank
    among the first k are *finished*: kept aside with their score divided by
    :func:`length_penalty` of their length (``<eos>`` included), never extended again. The first
    k candidates that do not end in ``<eos>`` stay live (each beam offers at most one ``<eos>``
    candidate, so there are always k of them), and the model's state is reordered to follow them
    (:func:`reorder_state`). A sentence is done when k hypotheses have finished; at ``max_len``
    tokens (one limit for all, or one per sentence) its live ones finish as they are. Returns, per
    sentence, the finished hypothesis with the best penalised score, without ``<bos>``/``<eos>``.
    ``beam_size=1`` gives greedy decoding's output.
    """
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}.")
    _check_source(src, src_mask)
    alpha = require_number(alpha, "alpha", at_least=0.0)
    if isinstance(max_len, torch.Tensor):
        max_len = max_len.tolist()
    if isinstance(max_len, Sequence):
        max_len = [require_int(n, "each max_len", at_least=1) for n in max_len]
    else:
        max_len = require_int(max_len, "max_len", at_least=1)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        batch, k, device = src.shape[0], beam_size, src.device
        limits = [max_len] * batch if isinstance(max_len, int) else max_len
        if len(limits) != batch:
            raise ValueError(f"max_len has {len(limits)} limits for a batch of {batch} sentences.")
        rows = torch.arange(batch, device=device)
        state = reorder_state(model.start_decoding(src, src_mask), rows.repeat_interleave(k))
        scores = torch.full((batch, k), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one live hypothesis (<bos>) per sentence at the start
        tokens = torch.empty(batch * k, 0, dtype=torch.long, device=device)
        last = torch.full((batch * k,), bos_id, dtype=torch.long, device=device)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        for step in range(max(limits, default=0)):
            logits, state = model.decode_step(state, last)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            vocab = log_probs.shape[-1]
            candidates = (scores.unsqueeze(-1) + log_probs.view(batch, k, vocab)).view(batch, k * vocab)
            top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)  # (B, 2k), best first
            beam, token = top_index // vocab, top_index % vocab
            is_eos = token == eos_id
            ending = is_eos[:, :k] & top_scores[:, :k].isfinite() & ~done[:, None]
            for b, j in ending.nonzero().tolist():
                history = tokens[b * k + beam[b, j]].tolist()
                finished[b].append((top_scores[b, j].item() / length_penalty(step + 1, alpha), history))
            done |= torch.tensor([len(f) >= k for f in finished], device=device)
            if bool(done.all()):
                break
            # The first k candidates that do not end the sentence go on (the keys are distinct, so the
            # ranking order is kept).
            rank = torch.arange(is_eos.shape[1], device=device)
            order = (is_eos.long() * is_eos.shape[1] + rank).argsort(dim=1)[:, :k]
            scores, beam, token = top_scores.gather(1, order), beam.gather(1, order), token.gather(1, order)
            flat = (rows[:, None] * k + beam).view(-1)
            state = reorder_state(state, flat)
            tokens = torch.cat([tokens[flat], token.view(-1, 1)], dim=1)
            last = token.view(-1)
            for b in range(batch):
                if not done[b] and limits[b] <= step + 1:  # its limit: the live hypotheses finish without <eos>
                    for j in range(k):
                        if scores[b, j].isfinite():
                            finished[b].append((scores[b, j].item() / length_penalty(step + 1, alpha),
                                                tokens[b * k + j].tolist()))
                    done[b] = True
            if bool(done.all()):
                break
        return [max(f, key=lambda item: item[0])[1] if f else [] for f in finished]
    finally:
        if was_training:
            model.train()


class Uncached:
    """A Transformer decoded *without* its key/value cache: every step reruns the decoder on the whole prefix.

    Same interface (:class:`IncrementalDecoder`) and the same tokens as the cached model, so
    lesson 10 can time the two. The state keeps the memory, the source mask and the tokens so
    far, all batch first. The decoder's work per step grows with the prefix: O(T²) token
    positions over a translation of T tokens, against O(T) with the cache.
    """

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name: str):  # parameters(), max_positions, config: the model's own
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def start_decoding(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        memory = self.model.encode(src, src_mask)
        return {"memory": memory, "src_mask": src_mask,
                "prefix": torch.empty(src.shape[0], 0, dtype=torch.long, device=src.device)}

    def decode_step(self, state: State, last_tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        prefix = torch.cat([state["prefix"], last_tokens[:, None]], dim=1)
        model = self.model
        # The decoder reruns on every position; only the last one goes through the output layer
        # (which a cached step pays once too), so that the comparison times the cache alone.
        y, _, _ = model.decoder(model.tgt_positions(model.tgt_embedding(prefix)), state["memory"], state["src_mask"])
        return model.output(y[:, -1]), {**state, "prefix": prefix}
