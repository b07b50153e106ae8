"""Checks for lesson 03: additive (Bahdanau) attention."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..rnn_attention import additive_attention
from .core import Mistake, check_against, explain_crashes_and_unwritten, padded_mask


def _attention_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(2, 5, (1,), generator=g))
    S = int(torch.randint(B + 2, 9, (1,), generator=g))
    Hq, Hk, A = (int(torch.randint(lo, lo + 4, (1,), generator=g)) for lo in (3, 8, 4))
    return {
        "query": torch.randn(B, Hq, generator=g),
        "keys": torch.randn(B, S, Hk, generator=g),
        "mask": padded_mask(g, B, S),
        "W_query": torch.randn(A, Hq, generator=g) * 0.6,
        "W_key": torch.randn(A, Hk, generator=g) * 0.6,
        "v": torch.randn(A, generator=g),
    }


def _softmax_over_batch(query, keys, mask, W_query, W_key, v):
    scores = torch.tanh(keys @ W_key.T + (query @ W_query.T)[:, None]) @ v
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=0).nan_to_num(0.0)
    return (weights[:, :, None] * keys).sum(1), weights


def _unmasked(query, keys, mask, W_query, W_key, v):
    weights = torch.softmax(torch.tanh(keys @ W_key.T + (query @ W_query.T)[:, None]) @ v, dim=-1)
    return (weights[:, :, None] * keys).sum(1), weights


def _masked_after_softmax(query, keys, mask, W_query, W_key, v):
    _, weights = _unmasked(query, keys, mask, W_query, W_key, v)
    weights = weights * mask
    return (weights[:, :, None] * keys).sum(1), weights


def _scores_times_mask(query, keys, mask, W_query, W_key, v):
    scores = torch.tanh(keys @ W_key.T + (query @ W_query.T)[:, None]) @ v
    weights = torch.softmax(scores * mask, dim=-1)  # a score of 0 is not "no attention": exp(0) = 1
    return (weights[:, :, None] * keys).sum(1), weights


def _inverted_mask(query, keys, mask, W_query, W_key, v):
    scores = torch.tanh(keys @ W_key.T + (query @ W_query.T)[:, None]) @ v
    weights = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    return (weights[:, :, None] * keys).sum(1), weights


def _no_tanh(query, keys, mask, W_query, W_key, v):
    scores = (keys @ W_key.T + (query @ W_query.T)[:, None]) @ v
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (weights[:, :, None] * keys).sum(1), weights


ATTENTION_MISTAKES = (
    Mistake("the softmax runs over the batch (dim 0); it must run over the source positions (dim -1), "
            "so that each sentence's weights sum to 1.", _softmax_over_batch),
    Mistake("padding gets attention: set the scores at padding (mask False) to -inf, or the most "
            "negative float, *before* the softmax.", _unmasked),
    Mistake("the mask was applied after the softmax, so the weights no longer sum to 1: mask the "
            "scores before the softmax instead.", _masked_after_softmax),
    Mistake("the scores were multiplied by the mask: that sets padding's scores to 0, and a score of "
            "0 still gets weight exp(0) after the softmax. Use scores.masked_fill(~mask, float('-inf')) "
            "so that padding gets weight exactly 0.", _scores_times_mask),
    Mistake("the mask is inverted: it is True at *real* tokens, so fill where it is False, "
            "scores.masked_fill(~mask, float('-inf')). (Filling where it is True hides the real words, "
            "and a sentence without padding gets NaN: a softmax over nothing but -inf.)", _inverted_mask),
    Mistake("the tanh is missing: score = v . tanh(W_query q + W_key k). Without it the score is "
            "linear and the query cannot change which key wins.", _no_tanh),
)


def check_additive_attention(student: Callable, trials: int = 5) -> None:
    """Check ``additive_attention(query, keys, mask, W_query, W_key, v) -> (context (B,Hk), weights (B,S))``."""
    hint = ("Shapes: query (B, Hq), keys (B, S, Hk), W_query (A, Hq), W_key (A, Hk), v (A,). Add a "
            "source axis to the projected query, (B, 1, A), so it broadcasts against (B, S, A).")
    check_against(
        explain_crashes_and_unwritten(student, "additive_attention", hint),
        additive_attention,
        _attention_inputs,
        name="additive_attention",
        trials=trials,
        mistakes=ATTENTION_MISTAKES,
        dims={"additive_attention(...)[0]": ("batch", "key_dim"),
              "additive_attention(...)[1]": ("batch", "source")},
    )
