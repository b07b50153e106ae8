"""Checks for lessons 07-08: the pieces of the Transformer written by the student.

Lesson 07: :func:`check_feed_forward`, :func:`check_embed`, :func:`check_encoder_layer`.
Lesson 08: :func:`check_causal_self_attention`, :func:`check_decoder_layer`, :func:`check_count_parameters`.

The layer exercises receive a layer of the package (its sub-modules: ``self_attention``,
``feed_forward``, ``norm1``...; ``layer.norm_first`` says where the norms go) and write its
forward pass. The checks build that layer afresh for every trial from a seed, with dropout, in
``eval()`` mode, and compare with the package's own forward. Besides values they test properties
that name a mistake even when no known mistake matches: the output must not change from call to
call in eval mode (dropout left on), an earlier position must not change when a later target
token does (the causal mask), and nothing may change when padded source positions do.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from ..attention import causal_mask, padding_mask
from ..multihead import MultiHeadAttention
from ..transformer import DecoderLayer, EncoderLayer, Transformer, TransformerConfig
from .core import CheckFailed, Mistake, check_against, explain_crashes

# ---------------------------------------------------------------------------------------------
# Lesson 07: the feed-forward network
# ---------------------------------------------------------------------------------------------


def _feed_forward(x, W1, b1, W2, b2):
    return torch.relu(x @ W1.T + b1) @ W2.T + b2


FEED_FORWARD_MISTAKES = [
    Mistake("No non-linearity: two linear layers in a row are just one linear layer. Apply torch.relu to "
            "the hidden layer, x @ W1.T + b1.", lambda x, W1, b1, W2, b2: (x @ W1.T + b1) @ W2.T + b2),
    Mistake("ReLU on the output too: the network is linear1 -> ReLU -> linear2, with nothing after linear2 "
            "(the output goes into a residual sum and may be negative).",
            lambda x, W1, b1, W2, b2: torch.relu(torch.relu(x @ W1.T + b1) @ W2.T + b2)),
    Mistake("ReLU applied before the first layer instead of after it: relu(x) @ W1.T loses every negative "
            "input feature. The order is linear1, ReLU, linear2.",
            lambda x, W1, b1, W2, b2: (torch.relu(x) @ W1.T + b1) @ W2.T + b2),
    Mistake("The two matrices are swapped: nn.Linear stores W1 as (d_ff, d_model), so x @ W2 happens to fit "
            "but multiplies by the wrong layer. The first layer is x @ W1.T + b1, the second h @ W2.T + b2.",
            lambda x, W1, b1, W2, b2: torch.relu(x @ W2 + b1) @ W1 + b2),
    Mistake("A bias is missing: add b1 after the first product and b2 after the second.",
            lambda x, W1, b1, W2, b2: torch.relu(x @ W1.T) @ W2.T + b2),
    Mistake("A bias is missing: add b2 after the second product.",
            lambda x, W1, b1, W2, b2: torch.relu(x @ W1.T + b1) @ W2.T),
]


def _feed_forward_inputs(generator):
    batch, time = torch.randint(1, 4, (2,), generator=generator).tolist()
    d_model, d_ff = (torch.randint(2, 6, (2,), generator=generator) * torch.tensor([2, 4])).tolist()
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    return {"x": randn(batch, time, d_model), "W1": randn(d_ff, d_model), "b1": randn(d_ff),
            "W2": randn(d_model, d_ff), "b2": randn(d_model)}


def check_feed_forward(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(x (B, T, d_model), W1 (d_ff, d_model), b1, W2 (d_model, d_ff), b2) -> (B, T, d_model)``."""
    check_against(
        explain_crashes(student, "feed_forward", "W1 is (d_ff, d_model) as in nn.Linear: multiply by W1.T."),
        _feed_forward, _feed_forward_inputs, name="feed_forward", trials=trials, mistakes=FEED_FORWARD_MISTAKES,
        dims=("batch", "time", "d_model"), quiet=quiet, confirm_mistakes=True)


# ---------------------------------------------------------------------------------------------
# Lesson 07: embedding scaled by sqrt(d_model), plus positions
# ---------------------------------------------------------------------------------------------


def _embed(tokens, weight, table):
    d_model = weight.shape[1]
    return weight[tokens] * math.sqrt(d_model) + table[: tokens.shape[1]]


EMBED_MISTAKES = [
    Mistake("The embedding is not scaled: multiply the looked-up vectors by sqrt(d_model) before adding "
            "the positional encoding.", lambda tokens, weight, table: weight[tokens] + table[: tokens.shape[1]]),
    Mistake("The positions are scaled too: (embedding + positions) * sqrt(d_model). Scale the embedding "
            "alone, then add the positions.",
            lambda tokens, weight, table: (weight[tokens] + table[: tokens.shape[1]]) * math.sqrt(weight.shape[1])),
    Mistake("The positional table is indexed by token id: row p of the table belongs to POSITION p, so add "
            "table[:T] (one row per position), not table[tokens].",
            lambda tokens, weight, table: weight[tokens] * math.sqrt(weight.shape[1]) + table[tokens]),
    Mistake("Scaled by d_model instead of its square root.",
            lambda tokens, weight, table: weight[tokens] * weight.shape[1] + table[: tokens.shape[1]]),
    Mistake("Divided by sqrt(d_model) instead of multiplying (the 1/sqrt(d_k) belongs to attention scores).",
            lambda tokens, weight, table: weight[tokens] / math.sqrt(weight.shape[1]) + table[: tokens.shape[1]]),
]


def _embed_inputs(generator):
    batch, time = torch.randint(1, 4, (2,), generator=generator).tolist()
    time += 1
    vocab, d_model = int(torch.randint(5, 12, (1,), generator=generator)), 2 * int(torch.randint(2, 9, (1,),
                                                                                                 generator=generator))
    return {"tokens": torch.randint(0, vocab, (batch, time), generator=generator),
            "weight": torch.randn(vocab, d_model, generator=generator) / math.sqrt(d_model),
            "table": torch.randn(time + 3, d_model, generator=generator)}


def _embed_hint(error: Exception) -> str:
    if "non-singleton dimension 1" in str(error):
        return ("\nHint: the table has max_len rows, more than the T positions of the input: take the first "
                "T rows, table[:T].")
    return ""


def check_embed(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(tokens (B, T), weight (V, d_model), table (max_len, d_model)) -> (B, T, d_model)``."""
    check_against(
        explain_crashes(student, "embed", hint_for=_embed_hint), _embed, _embed_inputs, name="embed",
        trials=trials, mistakes=EMBED_MISTAKES, dims=("batch", "time", "d_model"), quiet=quiet,
        confirm_mistakes=True)


# ---------------------------------------------------------------------------------------------
# Layers: built afresh from a seed for every trial
# ---------------------------------------------------------------------------------------------


def _layer(kind, seed: int, norm_first: bool, d_model: int = 16, n_heads: int = 4):
    torch.manual_seed(seed)  # the check restores the caller's random state afterwards
    config = TransformerConfig(src_vocab_size=8, d_model=d_model, n_heads=n_heads, d_ff=2 * d_model, dropout=0.25,
                               norm_first=norm_first)
    layer = kind(config).eval()
    with torch.no_grad():  # norms with non-trivial weights, so a misplaced one changes the numbers
        for name, parameter in layer.named_parameters():
            if name.startswith("norm"):
                parameter.add_(0.3 * torch.randn(parameter.shape))
    return layer


def _keep_random_state(function: Callable) -> Callable:
    """``function`` that leaves the global random state as it found it (layers are built from seeds)."""
    def run(*args, **kwargs):
        state = torch.get_rng_state()
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_rng_state(state)
    return run


def _sublayers(layer, x, norm_first, attend_fns):
    """The residual/norm wiring around ``attend_fns`` (callables h -> sublayer output), then the FF."""
    blocks = [*attend_fns, layer.feed_forward]
    for k, block in enumerate(blocks, start=1):
        norm, drop = getattr(layer, f"norm{k}"), getattr(layer, f"dropout{k}")
        x = x + drop(block(norm(x))) if norm_first else norm(x + drop(block(x)))
    return x


def _deterministic(student: Callable, name: str) -> Callable:
    """Run ``student`` twice: a layer in eval() mode must give the same output both times."""
    def run(*args):
        first = student(*args)
        second = student(*args)
        if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape \
                and not torch.equal(first, second):
            raise CheckFailed(
                f"{name} gives different outputs for the same input while the layer is in eval() mode: dropout "
                f"is still on. Use the layer's own nn.Dropout modules (layer.dropout1 ...), which eval() switches "
                f"off, or F.dropout(..., training=layer.training).")
        return first
    return run


# ---------------------------------------------------------------------------------------------
# Lesson 07: an encoder layer
# ---------------------------------------------------------------------------------------------


def _encoder_reference(x, real, seed, norm_first):
    layer = _layer(EncoderLayer, seed, norm_first)
    return layer(x, padding_mask(real))[0]


def _encoder_with(wiring):
    """A wrong encoder layer: ``wiring(layer, x, attend)`` returns the output."""
    def run(x, real, seed, norm_first):
        layer = _layer(EncoderLayer, seed, norm_first)
        mask = padding_mask(real)
        return wiring(layer, x, lambda h: layer.self_attention(h, mask=mask)[0], norm_first)
    return run


PRE_NORM_ON_POST_NORM = (
    "Pre-norm wiring on a post-norm layer: when layer.norm_first is False (post-norm, the paper) the norm "
    "comes after the residual sum, x = norm(x + sublayer(x)). Read layer.norm_first and wire both cases.")
POST_NORM_ON_PRE_NORM = (
    "Post-norm wiring on a pre-norm layer: when layer.norm_first is True the norm comes before each "
    "sub-layer and the residual path stays untouched, x = x + sublayer(norm(x)). Read layer.norm_first and "
    "wire both cases.")

ENCODER_MISTAKES = [
    Mistake(PRE_NORM_ON_POST_NORM, _encoder_with(lambda layer, x, attend, nf: _sublayers(layer, x, True, [attend]))),
    Mistake(POST_NORM_ON_PRE_NORM, _encoder_with(lambda layer, x, attend, nf: _sublayers(layer, x, False, [attend]))),
    Mistake("A residual connection is missing: each sub-layer's output is added to its input, "
            "x + sublayer(...), not used instead of it.",
            _encoder_with(lambda layer, x, attend, nf: _no_residual(layer, x, attend, nf))),
    Mistake("The residual adds the normalised input, norm(x) + sublayer(norm(x)): in pre-norm the residual "
            "path carries x itself, untouched, x + sublayer(norm(x)).",
            _encoder_with(lambda layer, x, attend, nf: _residual_from_norm(layer, x, attend, nf))),
    Mistake("The input is added twice: x + x + sublayer(...). Add the sub-layer's output to x once.",
            _encoder_with(lambda layer, x, attend, nf: _double_residual(layer, x, attend, nf))),
    Mistake("The padding mask is not passed to the self-attention: real tokens attend to padding. Pass "
            "mask=padding_mask(real).",
            lambda x, real, seed, nf: _encoder_with(lambda layer, x, attend, nf: _sublayers(
                layer, x, nf, [lambda h: layer.self_attention(h)[0]]))(x, real, seed, nf)),
]


ENCODER_MISTAKES.append(Mistake(
    "The padding mask is inverted (~padding_mask(real)): in this course True = may attend, so pass "
    "padding_mask(real) itself; inverted, real tokens attend only to the padding.",
    lambda x, real, seed, nf: _encoder_with(lambda layer, x, attend, nf: _sublayers(
        layer, x, nf, [lambda h: layer.self_attention(h, mask=~padding_mask(real))[0]]))(x, real, seed, nf)))


def _tuple_hint(error: Exception) -> str:
    if "tuple" in str(error):
        return ("\nHint: the attention modules return (output, weights): take the output with [0], e.g. "
                "layer.self_attention(h, mask=mask)[0].")
    return ""


def _train_mode_trial(kind, student, reference, make_inputs, name: str) -> None:
    """Compare ``student`` with ``reference`` (each called as f(layer, *inputs)) in train() mode, same dropout masks.

    Only the layer's own dropout1..3 stay on (the attention's and the feed-forward network's inner dropouts
    are set to 0), and both calls start from the same random state, so an answer that applies each
    dropout where the package does draws the same masks.
    """
    for norm_first in (True, False):
        inputs = make_inputs(torch.Generator().manual_seed(4242))
        layer = _layer(kind, 4242, norm_first).train()
        for module in layer.modules():
            if isinstance(module, MultiHeadAttention):
                module.dropout = 0.0
        layer.feed_forward.dropout.p = 0.0
        torch.manual_seed(1)
        expected = reference(layer, *inputs)
        torch.manual_seed(1)
        actual = student(layer, *inputs)
        if not (isinstance(actual, torch.Tensor) and actual.shape == expected.shape
                and torch.allclose(actual, expected, atol=1e-5, rtol=1e-4)):
            placement = "pre-norm" if norm_first else "post-norm"
            raise CheckFailed(
                f"{name} matches the package in eval() mode but not in train() mode ({placement}): a dropout is "
                f"missing or in the wrong place. Each sub-layer's output goes through its own dropout (dropout1 "
                f"after the first sub-layer, dropout2 after the second, ...) before it is added to x; the sum "
                f"itself is not dropped out.")


def _no_residual(layer, x, attend, norm_first):
    for norm, drop, block in ((layer.norm1, layer.dropout1, attend), (layer.norm2, layer.dropout2, layer.feed_forward)):
        x = drop(block(norm(x))) if norm_first else norm(drop(block(x)))
    return x


def _residual_from_norm(layer, x, attend, norm_first):
    if not norm_first:  # a slip of pre-norm only: post-norm has no normalised input to add
        return _sublayers(layer, x, norm_first, [attend])
    for norm, drop, block in ((layer.norm1, layer.dropout1, attend), (layer.norm2, layer.dropout2, layer.feed_forward)):
        h = norm(x)
        x = h + drop(block(h))
    return x


def _double_residual(layer, x, attend, norm_first):
    for norm, drop, block in ((layer.norm1, layer.dropout1, attend), (layer.norm2, layer.dropout2, layer.feed_forward)):
        x = x + x + drop(block(norm(x))) if norm_first else norm(x + x + drop(block(x)))
    return x


def _padded(generator, batch, length):
    """(B, S) boolean, True at real tokens; every row has at least one, and some rows have padding."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = max(1, length - 2)
    return torch.arange(length)[None, :] < lengths[:, None]


def _encoder_inputs(generator):
    batch, time = int(torch.randint(2, 4, (1,), generator=generator)), int(torch.randint(4, 8, (1,),
                                                                                         generator=generator))
    return {"x": torch.randn(batch, time, 16, generator=generator), "real": _padded(generator, batch, time),
            "seed": int(torch.randint(0, 10**6, (1,), generator=generator)),
            "norm_first": bool(torch.randint(0, 2, (1,), generator=generator))}


def _padding_hint(student, key: str):
    """A hint naming a padding leak: change the ``key`` input at padded source positions only.

    ``key`` "x" (an encoder: compare the real positions) or "memory" (a decoder: compare every target position).
    """
    def hint(actual, expected, inputs):
        other = dict(inputs)
        noise = torch.randn(inputs[key].shape, generator=torch.Generator().manual_seed(5)) * 3
        other[key] = torch.where(inputs["real"][:, :, None], inputs[key], noise)
        again = student(*other.values())
        if isinstance(again, torch.Tensor) and isinstance(actual, torch.Tensor) and again.shape == actual.shape \
                and again.dim() == 3:
            rows = inputs["real"] if key == "x" else torch.ones(again.shape[:2], dtype=torch.bool)
            if not torch.allclose(again[rows], actual[rows], atol=1e-5):
                return ("Your output at real positions changed when only the padded positions' vectors changed: "
                        "padding leaks into the attention. Mask the padded keys.")
        return None
    return hint


def check_encoder_layer(student: Callable, trials: int = 6, quiet: bool = False) -> None:
    """Check ``student(layer, x (B, S, d_model), real (B, S)) -> (B, S, d_model)``, the layer's forward pass.

    ``layer`` is an :class:`~transformer_lesson.transformer.EncoderLayer`; ``layer.norm_first`` is
    True for pre-norm and False for post-norm, and the check tries both.
    """
    crash_explained = explain_crashes(student, "encoder_layer", hint_for=_tuple_hint)
    guarded = _deterministic(crash_explained, "encoder_layer")

    def call(x, real, seed, norm_first):
        return guarded(_layer(EncoderLayer, seed, norm_first), x, real)

    _keep_random_state(check_against)(
        call, _encoder_reference, _encoder_inputs, name="encoder_layer", trials=trials, mistakes=ENCODER_MISTAKES,
        dims=("batch", "time", "d_model"), quiet=True, confirm_mistakes=True,
        hint=_padding_hint(call, "x"))
    _keep_random_state(_train_mode_trial)(
        EncoderLayer, crash_explained, lambda layer, x, real: layer(x, padding_mask(real))[0],
        lambda g: [v for k, v in _encoder_inputs(g).items() if k in ("x", "real")], "encoder_layer")
    if not quiet:
        print(f"✓ encoder_layer: matches the package's EncoderLayer on {trials} random inputs, pre-norm and post-norm.")


# ---------------------------------------------------------------------------------------------
# Lesson 08: causal self-attention
# ---------------------------------------------------------------------------------------------


def _causal_reference(x, seed):
    return _layer(DecoderLayer, seed, True).self_attention(x, is_causal=True)[0]


def _causal_with(make_mask):
    def run(x, seed):
        attention = _layer(DecoderLayer, seed, True).self_attention
        return attention(x, mask=make_mask(x.shape[1]))[0]
    return run


CAUSAL_MISTAKES = [
    Mistake("No causal mask: every position sees the whole target, future included. Pass is_causal=True (or "
            "mask=causal_mask(T)).", lambda x, seed: _layer(DecoderLayer, seed, True).self_attention(x)[0]),
    Mistake("The mask is inverted (True = blocked, PyTorch's convention for nn.MultiheadAttention): in this "
            "course True = may attend, so use causal_mask(T) itself, not ~causal_mask(T).",
            _causal_with(lambda t: ~causal_mask(t))),
    Mistake("The mask is transposed: causal_mask(T).T lets position i see the positions *after* it. Row i "
            "(a query) may see columns 0 .. i (keys).", _causal_with(lambda t: causal_mask(t).T)),
    Mistake("Each position is hidden from itself: position i may see positions 0 .. i, itself included "
            "(its own token is the input, known before predicting the next one).",
            _causal_with(lambda t: torch.tril(torch.ones(t, t, dtype=torch.bool), diagonal=-1))),
]


def _causal_inputs(generator):
    batch, time = int(torch.randint(1, 4, (1,), generator=generator)), int(torch.randint(3, 8, (1,),
                                                                                         generator=generator))
    return {"x": torch.randn(batch, time, 16, generator=generator),
            "seed": int(torch.randint(0, 10**6, (1,), generator=generator))}


def _future_hint(student, key: str = "x"):
    """A hint naming a leak from the future: change the last position and see whether earlier ones move."""
    def hint(actual, expected, inputs):
        changed = dict(inputs)
        changed[key] = inputs[key].clone()
        changed[key][:, -1] += 5.0
        again = student(*changed.values())
        if isinstance(again, torch.Tensor) and again.shape == actual.shape and again.dim() == 3 \
                and not torch.allclose(again[:, :-1], actual[:, :-1], atol=1e-5):
            return ("Changing only the LAST target position changed your outputs at earlier positions: they "
                    "see the future. The self-attention needs the causal mask (and in a decoder layer, the "
                    "cross-attention's keys and values must come from the memory, not from x).")
        return None
    return hint


def check_causal_self_attention(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(attention, x (B, T, d_model)) -> (B, T, d_model)``: each position sees itself and the past."""
    guarded = explain_crashes(student, "causal_self_attention")

    def call(x, seed):
        return guarded(_layer(DecoderLayer, seed, True).self_attention, x)

    _keep_random_state(check_against)(
        call, _causal_reference, _causal_inputs, name="causal_self_attention", trials=trials,
        mistakes=CAUSAL_MISTAKES, dims=("batch", "time", "d_model"), quiet=quiet, confirm_mistakes=True,
        hint=_future_hint(call))


# ---------------------------------------------------------------------------------------------
# Lesson 08: a decoder layer
# ---------------------------------------------------------------------------------------------


def _decoder_reference(x, memory, real, seed, norm_first):
    layer = _layer(DecoderLayer, seed, norm_first)
    kv = layer.cross_attention.project_keys_values(memory)
    return layer(x, kv, padding_mask(real))[0]


def _decoder_with(self_attend, cross_attend, wiring=_sublayers, force_norm_first=None):
    """A wrong decoder layer, from its self-attention and cross-attention as callables of (layer, h, memory, real)."""
    def run(x, memory, real, seed, norm_first):
        layer = _layer(DecoderLayer, seed, norm_first)
        blocks = [lambda h: self_attend(layer, h), lambda h: cross_attend(layer, h, memory, real)]
        return wiring(layer, x, norm_first if force_norm_first is None else force_norm_first, blocks)
    return run


def _causal(layer, h):
    return layer.self_attention(h, is_causal=True)[0]


def _cross(layer, h, memory, real):
    return layer.cross_attention(h, memory, memory, mask=padding_mask(real))[0]


DECODER_MISTAKES = [
    Mistake("The self-attention has no causal mask: a position sees target tokens after it, which at "
            "generation time do not exist yet. Pass is_causal=True.",
            _decoder_with(lambda layer, h: layer.self_attention(h)[0], _cross)),
    Mistake("The cross-attention takes its keys and values from the decoder: they must come from the "
            "encoder's output, layer.cross_attention(h, memory, memory, ...). Only the queries come from "
            "the target.", _decoder_with(_causal, lambda layer, h, memory, real: layer.cross_attention(h)[0])),
    Mistake("The cross-attention attends to the source's padding: pass mask=padding_mask(real).",
            _decoder_with(_causal, lambda layer, h, memory, real: layer.cross_attention(h, memory, memory)[0])),
    Mistake(PRE_NORM_ON_POST_NORM, _decoder_with(_causal, _cross, force_norm_first=True)),
    Mistake(POST_NORM_ON_PRE_NORM, _decoder_with(_causal, _cross, force_norm_first=False)),
    Mistake("A residual connection is missing: add each sub-layer's output to its input.",
            _decoder_with(_causal, _cross, wiring=lambda layer, x, nf, blocks: _no_residual3(layer, x, nf, blocks))),
    Mistake("The sub-layers are in the wrong order: causal self-attention first, then cross-attention "
            "over the memory, then the feed-forward network.",
            _decoder_with(_causal, _cross, wiring=lambda layer, x, nf, blocks: _sublayers(layer, x, nf, blocks[::-1]))),
]


def _no_residual3(layer, x, norm_first, blocks):
    norms, drops = (layer.norm1, layer.norm2, layer.norm3), (layer.dropout1, layer.dropout2, layer.dropout3)
    for norm, drop, block in zip(norms, drops, [*blocks, layer.feed_forward], strict=True):
        x = drop(block(norm(x))) if norm_first else norm(drop(block(x)))
    return x


def _decoder_inputs(generator):
    batch = int(torch.randint(2, 4, (1,), generator=generator))
    time, src_time = (torch.randint(3, 7, (2,), generator=generator) + torch.tensor([0, 2])).tolist()
    return {"x": torch.randn(batch, time, 16, generator=generator),
            "memory": torch.randn(batch, src_time, 16, generator=generator),
            "real": _padded(generator, batch, src_time),
            "seed": int(torch.randint(0, 10**6, (1,), generator=generator)),
            "norm_first": bool(torch.randint(0, 2, (1,), generator=generator))}


def _memory_unused_hint(student):
    """A hint for a decoder layer whose output ignores the memory (cross-attention on x)."""
    def hint(actual, expected, inputs):
        other = dict(inputs)
        other["memory"] = inputs["memory"] * -2.0 + 1.0
        again = student(*other.values())
        if isinstance(again, torch.Tensor) and isinstance(actual, torch.Tensor) and again.shape == actual.shape \
                and torch.allclose(again, actual, atol=1e-6):
            return ("Your output does not change when the memory does: the cross-attention must take its keys "
                    "and values from memory, layer.cross_attention(h, memory, memory, mask=...); only its "
                    "queries come from x.")
        return None
    return hint


def _decoder_hints(call):
    memory, future, padding = _memory_unused_hint(call), _future_hint(call), _padding_hint(call, "memory")

    def hint(actual, expected, inputs):
        unused = memory(actual, expected, inputs)  # if so, x is attended twice and "the future" is a symptom
        found = [unused] if unused else [future(actual, expected, inputs), padding(actual, expected, inputs)]
        return "\n".join(h for h in found if h) or None
    return hint


def check_decoder_layer(student: Callable, trials: int = 6, quiet: bool = False) -> None:
    """Check ``student(layer, x (B, T, d), memory (B, S, d), real (B, S)) -> (B, T, d)``, a DecoderLayer's forward.

    Tries pre-norm and post-norm layers (``layer.norm_first``), sources with padding, and checks
    that no position sees a later one and that padded source positions change nothing.
    """
    crash_explained = explain_crashes(student, "decoder_layer", hint_for=_tuple_hint)
    guarded = _deterministic(crash_explained, "decoder_layer")

    def call(x, memory, real, seed, norm_first):
        return guarded(_layer(DecoderLayer, seed, norm_first), x, memory, real)

    _keep_random_state(check_against)(
        call, _decoder_reference, _decoder_inputs, name="decoder_layer", trials=trials, mistakes=DECODER_MISTAKES,
        dims=("batch", "time", "d_model"), quiet=True, confirm_mistakes=True, hint=_decoder_hints(call))

    def reference(layer, x, memory, real):
        return layer(x, layer.cross_attention.project_keys_values(memory), padding_mask(real))[0]

    _keep_random_state(_train_mode_trial)(
        DecoderLayer, crash_explained, reference,
        lambda g: [v for k, v in _decoder_inputs(g).items() if k in ("x", "memory", "real")], "decoder_layer")
    if not quiet:
        print(f"✓ decoder_layer: matches the package's DecoderLayer on {trials} random inputs, pre-norm and "
              f"post-norm, causal and blind to padding.")


# ---------------------------------------------------------------------------------------------
# Lesson 08: counting parameters
# ---------------------------------------------------------------------------------------------


def _count(config: TransformerConfig) -> int:
    return sum(p.numel() for p in Transformer(config).parameters())  # a shared matrix counts once


def _count_with(**changes):
    """Count a model that differs from ``config`` as a mistake would (e.g. untied embeddings)."""
    def run(config):
        total = 0
        d, f, v = config.d_model, config.d_ff, config.src_vocab_size
        attention, ff, norm = 4 * d * d + 4 * d, 2 * d * f + f + d, 2 * d
        if changes.get("no_biases"):
            attention, ff = 4 * d * d, 2 * d * f
        if changes.get("no_norms"):
            norm = 0
        cross = 0 if changes.get("no_cross") else attention + norm
        total += config.n_encoder_layers * (attention + ff + 2 * norm)
        total += config.n_decoder_layers * (attention + cross + ff + 2 * norm)
        if config.has_final_norm and not changes.get("no_final_norms"):
            total += 2 * norm
        if config.tie_embeddings:  # one matrix (or, by mistake, three)
            total += (3 if changes.get("untied") else 1) * v * d
        else:  # source embedding, target embedding, output layer (no bias)
            total += (config.src_vocab_size + 2 * config.tgt_vocab_size) * d
        return total
    return run


COUNT_MISTAKES = [
    Mistake("The shared embedding is counted three times: with tie_embeddings the source embedding, the target "
            "embedding and the output layer are ONE matrix of vocab_size x d_model.", _count_with(untied=True)),
    Mistake("The biases are missing: every nn.Linear in attention (in_proj: 3 d_model, out_proj: d_model) and in "
            "the feed-forward network (d_ff, then d_model) has one. (The output layer has none.)",
            _count_with(no_biases=True)),
    Mistake("The layer norms are missing: each has a weight and a bias of d_model numbers; an encoder layer has "
            "2, a decoder layer 3.", _count_with(no_norms=True)),
    Mistake("The decoder's cross-attention (and its norm) is missing: a decoder layer has two attentions.",
            _count_with(no_cross=True)),
    Mistake("The final norms are missing: a pre-norm model (final_norm None or True) ends each stack with one "
            "more LayerNorm.", _count_with(no_final_norms=True)),
]


def _count_inputs(generator):
    pick = lambda low, high: int(torch.randint(low, high, (1,), generator=generator))  # noqa: E731
    n_heads = pick(1, 4)
    tie = bool(pick(0, 2))
    vocab = pick(10, 60)
    return {"config": TransformerConfig(
        src_vocab_size=vocab, tgt_vocab_size=vocab if tie else pick(10, 60), d_model=4 * n_heads * pick(1, 4),
        n_heads=n_heads, n_encoder_layers=pick(1, 4), n_decoder_layers=pick(1, 4), d_ff=8 * pick(1, 6),
        norm_first=bool(pick(0, 2)), tie_embeddings=tie)}


def check_count_parameters(student: Callable, trials: int = 8, quiet: bool = False) -> None:
    """Check ``student(config: TransformerConfig) -> int``, the number of trained numbers of a Transformer."""
    def call(config):
        answer = explain_crashes(student, "count_parameters")(config)
        if isinstance(answer, torch.Tensor) and answer.numel() == 1:
            answer = answer.item()
        if isinstance(answer, float) and answer.is_integer():
            answer = int(answer)
        if isinstance(answer, numbers.Integral) and not isinstance(answer, bool):
            answer = int(answer)  # a NumPy integer is fine
        if answer is not None and not isinstance(answer, int):
            raise CheckFailed(f"count_parameters should return an int, got {type(answer).__name__} {answer!r}.")
        return answer

    def difference(actual, expected, inputs):
        if not isinstance(actual, int):
            return None
        d = inputs["config"].d_model
        off = actual - expected
        in_d = f" = {off // d:+,} x d_model" if off % d == 0 else ""
        return f"Your count is off by {off:+,}{in_d} (d_model = {d}): which parameters does that many make?"

    check_against(call, _count, _count_inputs, name="count_parameters", trials=trials, mistakes=COUNT_MISTAKES,
                  quiet=quiet, confirm_mistakes=True, hint=difference)

