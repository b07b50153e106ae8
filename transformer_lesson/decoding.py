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

from typing import Protocol

import torch

from .tokenizer import BOS_ID, EOS_ID

State = dict[str, torch.Tensor]


class IncrementalDecoder(Protocol):
    """The interface of every seq2seq model in the course (see the module docstring)."""

    def start_decoding(self, src: torch.Tensor, src_mask: torch.Tensor) -> State: ...

    def decode_step(self, state: State, last_tokens: torch.Tensor) -> tuple[torch.Tensor, State]: ...


def reorder_state(state: State, index: torch.Tensor) -> State:
    """Select (and repeat) batch rows of every tensor in ``state``: ``index`` (B',) -> batch B'."""
    return {name: tensor.index_select(0, index) for name, tensor in state.items()}


@torch.no_grad()
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
    stops when all have, so a batch costs as long as its longest translation. The model is put
    in eval mode (no dropout) and restored afterwards.
    """
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        batch = src.shape[0]
        state = model.start_decoding(src, src_mask)
        last = torch.full((batch,), bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
        steps = []
        for _ in range(max_len):
            logits, state = model.decode_step(state, last)
            last = logits.argmax(dim=-1)  # (B,)
            last = last.masked_fill(finished, eos_id)  # finished sentences just repeat <eos>
            steps.append(last)
            finished = finished | (last == eos_id)
            if bool(finished.all()):
                break
        tokens = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(batch)]
        results = []
        for row in tokens:
            results.append(row[: row.index(eos_id)] if eos_id in row else row)
        return results
    finally:
        if was_training:
            model.train()
