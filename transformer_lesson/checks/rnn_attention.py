"""Checks for lesson 03: additive (Bahdanau) scores, additive attention, and one step of the attention decoder."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..rnn_attention import AttentionGRUDecoder, additive_attention, additive_scores
from ..seq2seq import Seq2SeqConfig
from .core import Mistake, check_against, explain_crashes, padded_mask

# -- the scores -----------------------------------------------------------------------------------


def _scores_inputs(g: torch.Generator) -> dict:
    inputs = _attention_inputs(g)
    del inputs["mask"]
    return inputs


def _projected(query, keys, W_query, W_key):
    return keys @ W_key.T + (query @ W_query.T)[:, None, :]  # (B, S, A)


SCORE_MISTAKES = (
    Mistake("the tanh is missing: e_j = v . tanh(W_query q + W_key k_j). Without it the score is linear "
            "in the key, and the query cannot change which key wins.",
            lambda query, keys, W_query, W_key, v: _projected(query, keys, W_query, W_key) @ v),
    Mistake("the tanh comes after v: apply tanh to the (B, S, A) sum first, then take the dot product "
            "with v, torch.tanh(projected) @ v.",
            lambda query, keys, W_query, W_key, v: torch.tanh(_projected(query, keys, W_query, W_key) @ v)),
    Mistake("the A numbers of each position were summed: v is a learned vector, so take the dot product "
            "with it, torch.tanh(projected) @ v, rather than .sum(-1).",
            lambda query, keys, W_query, W_key, v: torch.tanh(_projected(query, keys, W_query, W_key)).sum(-1)),
    Mistake("those are weights, not scores: the softmax (and the mask) come in the next exercise; return "
            "the raw scores e.",
            lambda query, keys, W_query, W_key, v: torch.softmax(
                torch.tanh(_projected(query, keys, W_query, W_key)) @ v, dim=-1)),
    Mistake("W_query is not transposed: it is (A, Hq), so the projection is query @ W_query.T (the sizes "
            "only fit by chance when A == Hq).",
            lambda query, keys, W_query, W_key, v: torch.tanh(
                keys @ W_key.T + (query @ W_query)[:, None, :]) @ v),
)


def _scores_crash_hint(error: Exception) -> str:
    message = str(error)
    if "must match the size of tensor" in message:
        return ("\nLikely cause: the projected query (B, A) does not broadcast against the projected keys "
                "(B, S, A): give it a source axis, (query @ W_query.T)[:, None, :] is (B, 1, A).")
    if "cannot be multiplied" in message or "size mismatch" in message:
        return ("\nLikely cause: W_query is (A, Hq) and W_key (A, Hk): project with their transposes, "
                "query @ W_query.T and keys @ W_key.T.")
    return ""


def check_additive_scores(student: Callable, trials: int = 5, seed: int = 0, quiet: bool = False) -> None:
    """Check ``additive_scores(query (B,Hq), keys (B,S,Hk), W_query (A,Hq), W_key (A,Hk), v (A,)) -> (B, S)``."""
    check_against(
        explain_crashes(student, "additive_scores", "Shapes: query (B, Hq), keys (B, S, Hk), W_query (A, Hq), "
                        "W_key (A, Hk), v (A,).", hint_for=_scores_crash_hint, explain_not_implemented=True),
        additive_scores,
        _scores_inputs,
        name="additive_scores",
        trials=trials,
        mistakes=SCORE_MISTAKES,
        dims=("batch", "source"),
        seed=seed,
        quiet=quiet,
    )


# -- attention: scores, masked softmax, context ----------------------------------------------------


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


def check_additive_attention(student: Callable, trials: int = 5, seed: int = 0, quiet: bool = False) -> None:
    """Check ``additive_attention(query, keys, mask, W_query, W_key, v) -> (context (B,Hk), weights (B,S))``."""
    hint = ("Shapes: query (B, Hq), keys (B, S, Hk), W_query (A, Hq), W_key (A, Hk), v (A,). Add a "
            "source axis to the projected query, (B, 1, A), so it broadcasts against (B, S, A).")
    check_against(
        explain_crashes(student, "additive_attention", hint, explain_not_implemented=True),
        additive_attention,
        _attention_inputs,
        name="additive_attention",
        trials=trials,
        mistakes=ATTENTION_MISTAKES,
        dims={"additive_attention(...)[0]": ("batch", "key_dim"),
              "additive_attention(...)[1]": ("batch", "source")},
        seed=seed,
        quiet=quiet,
    )


# -- one step of the attention decoder -----------------------------------------------------------


def _decoder(decoder_seed: int, sizes: tuple[int, int, int, int]) -> AttentionGRUDecoder:
    """A small random :class:`AttentionGRUDecoder` (vocabulary, embedding, hidden, attention sizes),
    in eval mode, built without touching the student's random numbers."""
    vocab, embed, hidden, attention = sizes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(decoder_seed)
        config = Seq2SeqConfig(vocab_size=vocab, d_embed=embed, d_hidden=hidden, d_attention=attention, dropout=0.1)
        return AttentionGRUDecoder(config, memory_dim=2 * hidden).eval()


def _step_inputs(g: torch.Generator) -> dict:
    B = int(torch.randint(2, 5, (1,), generator=g))
    S = int(torch.randint(B + 2, 9, (1,), generator=g))
    sizes = (int(torch.randint(11, 16, (1,), generator=g)), int(torch.randint(3, 6, (1,), generator=g)),
             int(torch.randint(6, 9, (1,), generator=g)), int(torch.randint(3, 6, (1,), generator=g)))
    decoder_seed = int(torch.randint(0, 10_000, (1,), generator=g))
    memory = torch.randn(B, S, 2 * sizes[2], generator=g)
    with torch.no_grad():
        projected_keys = _decoder(decoder_seed, sizes).attention.project_keys(memory)
    # the decoder travels as its seed and sizes: inputs must be plain values and tensors the check can compare
    return {"decoder_seed": decoder_seed, "sizes": sizes,
            "last_tokens": torch.randint(0, sizes[0], (B,), generator=g),
            "hidden": torch.randn(B, sizes[2], generator=g), "memory": memory,
            "projected_keys": projected_keys, "src_mask": padded_mask(g, B, S)}


def _with_decoder(step: Callable) -> Callable:
    """``step(decoder, last_tokens, hidden, memory, projected_keys, src_mask)`` as a function of the decoder's seed."""

    def run(decoder_seed, sizes, last_tokens, hidden, memory, projected_keys, src_mask):
        with torch.no_grad():
            return step(_decoder(decoder_seed, sizes), last_tokens, hidden, memory, projected_keys, src_mask)

    return run


def _reference_step(decoder, last_tokens, hidden, memory, projected_keys, src_mask):
    return decoder.step(last_tokens, hidden, memory, projected_keys, src_mask)


def _step_with(cell_input=None, output_input=None, new_query=False, old_hidden_out=False):
    """A wrong decoder step: the orders of the two concatenations, the query, the hidden returned."""

    def step(decoder, last_tokens, hidden, memory, projected_keys, src_mask):
        embedded = decoder.dropout(decoder.embedding(last_tokens))
        context, weights = decoder.attention(hidden, memory, src_mask, projected_keys)
        parts = {"embedded": embedded, "context": context}
        new_hidden = decoder.cell(torch.cat([parts[k] for k in cell_input or ("embedded", "context")], -1), hidden)
        if new_query:  # attends again with the new state, for the output (Luong's order, not Bahdanau's)
            context, weights = decoder.attention(new_hidden, memory, src_mask, projected_keys)
        parts = {"embedded": embedded, "context": context, "new": new_hidden, "old": hidden}
        logits = decoder.out(decoder.dropout(torch.cat([parts[k] for k in output_input or
                                                        ("new", "context", "embedded")], -1)))
        return logits, hidden if old_hidden_out else new_hidden, weights

    return step


_OUTPUT_ORDER = ("the output layer's input is in the wrong order: decoder.out reads [new hidden, context, "
                 "embedding], torch.cat([hidden, context, embedded], dim=-1), with the state after the GRU cell.")

STEP_MISTAKES = (
    Mistake("the GRU cell's input is in the wrong order: it reads [embedding, context], "
            "torch.cat([embedded, context], dim=-1).", _step_with(cell_input=("context", "embedded"))),
    Mistake("the output layer reads the state from *before* the GRU cell: predict from the new state "
            "the cell returns, [new hidden, context, embedding].",
            _step_with(output_input=("old", "context", "embedded"))),
    Mistake(_OUTPUT_ORDER, _step_with(output_input=("context", "new", "embedded"))),
    Mistake(_OUTPUT_ORDER, _step_with(output_input=("embedded", "context", "new"))),
    Mistake("the hidden state returned is the old one: return the state the GRU cell computed, so that "
            "the next step continues from it.", _step_with(old_hidden_out=True)),
    Mistake("attention ran again with the new state: in Bahdanau's decoder the query is the state "
            "*before* this step, s_(t-1), and its one context feeds both the GRU cell and the output layer "
            "(attending with the new state is Luong et al.'s order, a different model).",
            _step_with(new_query=True)),
)


def check_attention_step(student: Callable, trials: int = 5, seed: int = 0, quiet: bool = False) -> None:
    """Check ``attention_step(decoder, last_tokens (B,), hidden (B,H), memory (B,S,2H), projected_keys (B,S,A),
    src_mask (B,S)) -> (logits (B,V), hidden (B,H), weights (B,S))`` against ``AttentionGRUDecoder.step``,
    on small random decoders in eval mode."""
    hint = ("Shapes: last_tokens (B,), hidden (B, H), memory (B, S, 2H). decoder.attention(query, memory, "
            "src_mask, projected_keys) returns (context (B, 2H), weights (B, S)); decoder.cell takes "
            "[embedding, context] (E + 2H numbers) and the old state; decoder.out takes [new state, context, "
            "embedding] (H + 2H + E numbers).")
    check_against(
        _with_decoder(explain_crashes(student, "attention_step", hint, explain_not_implemented=True)),
        _with_decoder(_reference_step),
        _step_inputs,
        name="attention_step",
        trials=trials,
        mistakes=[Mistake(m.advice, _with_decoder(m.implementation)) for m in STEP_MISTAKES],
        dims={"attention_step(...)[0]": ("batch", "vocab"), "attention_step(...)[1]": ("batch", "hidden"),
              "attention_step(...)[2]": ("batch", "source")},
        seed=seed,
        quiet=quiet,
    )
