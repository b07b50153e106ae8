"""The lesson 07-08 checks pass right answers and name the usual wrong ones.

Every wrong answer here is written as a student would write it, independently of the Mistake
implementations in the checks, so a test fails if a check stops recognising a real slip.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transformer_lesson.attention import causal_mask, padding_mask
from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.transformer import (
    _count,
    _count_inputs,
    _count_with,
    check_causal_self_attention,
    check_count_parameters,
    check_decoder_layer,
    check_embed,
    check_encoder_layer,
    check_feed_forward,
)


def fails_with(check, answer, *fragments):
    with pytest.raises(CheckFailed) as failure:
        check(answer, quiet=True)
    for fragment in fragments:
        assert fragment in str(failure.value), str(failure.value)
    return str(failure.value)


# -- feed-forward ---------------------------------------------------------------------------------


def ff_right(x, W1, b1, W2, b2):
    hidden = F.relu(F.linear(x, W1, b1))
    return F.linear(hidden, W2, b2)


def test_feed_forward_passes_a_right_answer(capsys):
    check_feed_forward(ff_right)
    assert "✓ feed_forward" in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "fragment"), [
    (lambda x, W1, b1, W2, b2: F.linear(F.linear(x, W1, b1), W2, b2), "No non-linearity"),
    (lambda x, W1, b1, W2, b2: F.relu(F.linear(F.relu(F.linear(x, W1, b1)), W2, b2)), "ReLU on the output"),
    (lambda x, W1, b1, W2, b2: F.linear(F.relu(x @ W1.T), W2, b2), "A bias is missing"),
    (lambda x, W1, b1, W2, b2: F.relu(x @ W2 + b1) @ W1 + b2, "The two matrices are swapped"),
    (lambda x, W1, b1, W2, b2: F.relu(x @ W1 + b1) @ W2 + b2, "multiply by W1.T"),
    (lambda x, W1, b1, W2, b2: None, "forget the `return`"),
    (lambda x, W1, b1, W2, b2: ff_right(x, W1, b1, W2, b2).numpy(), "should be a torch.Tensor but is a ndarray"),
])
def test_feed_forward_names_the_mistake(answer, fragment):
    fails_with(check_feed_forward, answer, fragment)


# -- embedding -----------------------------------------------------------------------------------


def embed_right(tokens, weight, table):
    d_model = weight.shape[-1]
    return F.embedding(tokens, weight) * d_model ** 0.5 + table[: tokens.shape[1]]


def test_embed_passes_a_right_answer_in_float64_too():
    check_embed(embed_right, quiet=True)
    check_embed(lambda tokens, weight, table: embed_right(tokens, weight.double(), table.double()), quiet=True)


@pytest.mark.parametrize(("answer", "fragment"), [
    (lambda tokens, weight, table: F.embedding(tokens, weight) + table[: tokens.shape[1]], "not scaled"),
    (lambda tokens, weight, table: (F.embedding(tokens, weight) + table[: tokens.shape[1]]) * math.sqrt(
        weight.shape[1]), "The positions are scaled too"),
    (lambda tokens, weight, table: F.embedding(tokens, weight) * weight.shape[1] + table[: tokens.shape[1]],
     "instead of its square root"),
    (lambda tokens, weight, table: F.embedding(tokens, weight) * math.sqrt(weight.shape[1]) + table,
     "take the first T rows"),
    (lambda tokens, weight, table: F.embedding(tokens, weight) * math.sqrt(weight.shape[1]) + table[tokens],
     "indexed by token id"),
    (lambda tokens, weight, table: (F.embedding(tokens, weight) * math.sqrt(weight.shape[1])
                                    + table[: tokens.shape[1]]).long(), "dtype torch.int64"),
])
def test_embed_names_the_mistake(answer, fragment):
    fails_with(check_embed, answer, fragment)


# -- encoder layer -------------------------------------------------------------------------------


def encoder_right(layer, x, real):
    mask = padding_mask(real)
    if layer.norm_first:
        x = x + layer.dropout1(layer.self_attention(layer.norm1(x), mask=mask)[0])
        return x + layer.dropout2(layer.feed_forward(layer.norm2(x)))
    x = layer.norm1(x + layer.dropout1(layer.self_attention(x, mask=mask)[0]))
    return layer.norm2(x + layer.dropout2(layer.feed_forward(x)))


def encoder_always_pre_norm(layer, x, real):
    mask = padding_mask(real)
    x = x + layer.self_attention(layer.norm1(x), mask=mask)[0]
    return x + layer.feed_forward(layer.norm2(x))


def encoder_residual_from_normed(layer, x, real):
    if not layer.norm_first:
        return encoder_right(layer, x, real)
    h = layer.norm1(x)
    x = h + layer.self_attention(h, mask=padding_mask(real))[0]
    h = layer.norm2(x)
    return h + layer.feed_forward(h)


def encoder_without_residuals(layer, x, real):
    mask = padding_mask(real)
    if layer.norm_first:
        x = layer.self_attention(layer.norm1(x), mask=mask)[0]
        return layer.feed_forward(layer.norm2(x))
    x = layer.norm1(layer.self_attention(x, mask=mask)[0])
    return layer.norm2(layer.feed_forward(x))


def encoder_dropout_always_on(layer, x, real):
    mask = padding_mask(real)
    if layer.norm_first:
        x = x + F.dropout(layer.self_attention(layer.norm1(x), mask=mask)[0], 0.25)
        return x + F.dropout(layer.feed_forward(layer.norm2(x)), 0.25)
    x = layer.norm1(x + F.dropout(layer.self_attention(x, mask=mask)[0], 0.25))
    return layer.norm2(x + F.dropout(layer.feed_forward(x), 0.25))


def encoder_no_padding_mask(layer, x, real):
    return encoder_right(layer, x, torch.ones_like(real))


def encoder_mask_wrong_shape(layer, x, real):
    mask = real[:, None, :, None]  # (B, 1, S, 1): hides whole query rows instead of keys
    if layer.norm_first:
        x = x + layer.self_attention(layer.norm1(x), mask=mask)[0]
        return x + layer.feed_forward(layer.norm2(x))
    x = layer.norm1(x + layer.self_attention(x, mask=mask)[0])
    return layer.norm2(x + layer.feed_forward(x))


def encoder_dropout_on_the_sum(layer, x, real):
    mask = padding_mask(real)
    if layer.norm_first:
        x = layer.dropout1(x + layer.self_attention(layer.norm1(x), mask=mask)[0])
        return layer.dropout2(x + layer.feed_forward(layer.norm2(x)))
    x = layer.norm1(layer.dropout1(x + layer.self_attention(x, mask=mask)[0]))
    return layer.norm2(layer.dropout2(x + layer.feed_forward(x)))


def encoder_without_dropout(layer, x, real):
    mask = padding_mask(real)
    if layer.norm_first:
        x = x + layer.self_attention(layer.norm1(x), mask=mask)[0]
        return x + layer.feed_forward(layer.norm2(x))
    x = layer.norm1(x + layer.self_attention(x, mask=mask)[0])
    return layer.norm2(x + layer.feed_forward(x))


def _inverted_mask(layer, x, real):
    mask = ~padding_mask(real)
    if layer.norm_first:
        x = x + layer.dropout1(layer.self_attention(layer.norm1(x), mask=mask)[0])
        return x + layer.dropout2(layer.feed_forward(layer.norm2(x)))
    x = layer.norm1(x + layer.dropout1(layer.self_attention(x, mask=mask)[0]))
    return layer.norm2(x + layer.dropout2(layer.feed_forward(x)))


def test_encoder_layer_accepts_the_dropout_written_functionally():
    def functional(layer, x, real):
        mask = padding_mask(real)
        drop = lambda h: F.dropout(h, 0.25, training=layer.training)  # noqa: E731
        if layer.norm_first:
            x = x + drop(layer.self_attention(layer.norm1(x), mask=mask)[0])
            return x + drop(layer.feed_forward(layer.norm2(x)))
        x = layer.norm1(x + drop(layer.self_attention(x, mask=mask)[0]))
        return layer.norm2(x + drop(layer.feed_forward(x)))
    check_encoder_layer(functional, quiet=True)


def test_encoder_layer_passes_a_right_answer_and_keeps_the_random_state(capsys):
    state = torch.get_rng_state()
    check_encoder_layer(encoder_right)
    assert torch.equal(torch.get_rng_state(), state)
    assert "pre-norm and post-norm" in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "fragments"), [
    (encoder_always_pre_norm, ["Pre-norm wiring on a post-norm layer"]),
    (encoder_residual_from_normed, ["The residual adds the normalised input"]),
    (encoder_without_residuals, ["A residual connection is missing"]),
    (encoder_dropout_always_on, ["dropout is still on"]),
    (encoder_no_padding_mask, ["padding mask is not passed", "padding leaks into the attention"]),
    (encoder_mask_wrong_shape, ["padding leaks into the attention"]),
    (encoder_dropout_on_the_sum, ["not in train() mode", "the sum itself is not dropped out"]),
    (encoder_without_dropout, ["not in train() mode"]),
    (lambda layer, x, real: encoder_right(layer, x, real) if False else _inverted_mask(layer, x, real),
     ["The padding mask is inverted"]),
    (lambda layer, x, real: layer.feed_forward(layer.self_attention(layer.norm1(x))), ["take the output with [0]"]),
])
def test_encoder_layer_names_the_mistake(answer, fragments):
    fails_with(check_encoder_layer, answer, *fragments)


# -- causal self-attention -----------------------------------------------------------------------


def test_causal_self_attention_passes_both_ways_of_writing_it():
    check_causal_self_attention(lambda attention, x: attention(x, is_causal=True)[0], quiet=True)
    check_causal_self_attention(lambda attention, x: attention(x, mask=causal_mask(x.shape[1]))[0], quiet=True)


def upper_triangle(attention, x):
    t = x.shape[1]
    return attention(x, mask=torch.triu(torch.ones(t, t, dtype=torch.bool)))[0]


@pytest.mark.parametrize(("answer", "fragments"), [
    (lambda attention, x: attention(x)[0], ["No causal mask", "they see the future"]),
    (lambda attention, x: attention(x, mask=~causal_mask(x.shape[1]))[0], ["The mask is inverted"]),
    (upper_triangle, ["The mask is transposed", "they see the future"]),
    (lambda attention, x: attention(x, mask=torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril(-1))[0],
     ["hidden from itself"]),
    (lambda attention, x: attention(x, is_causal=True), ["should be a torch.Tensor but is a tuple"]),
])
def test_causal_self_attention_names_the_mistake(answer, fragments):
    fails_with(check_causal_self_attention, answer, *fragments)


# -- decoder layer -------------------------------------------------------------------------------


def decoder(layer, x, memory, real, causal=True, cross_from="memory", pad_mask=True, residual=True, swap=False,
            residual_dropout=False):
    """A decoder layer written out, with switches for the usual slips."""
    mask = padding_mask(real) if pad_mask else None

    def self_block(h):
        return layer.self_attention(h, is_causal=causal)[0]

    def cross_block(h):
        source = memory if cross_from == "memory" else h
        return layer.cross_attention(h, source, source, mask=mask if cross_from == "memory" else None)[0]

    blocks = [cross_block, self_block] if swap else [self_block, cross_block]
    for norm, drop, block in zip((layer.norm1, layer.norm2, layer.norm3),
                                 (layer.dropout1, layer.dropout2, layer.dropout3),
                                 [*blocks, layer.feed_forward], strict=True):
        if residual_dropout:  # the dropout on the residual sum instead of the sub-layer's output
            x = drop(x + block(norm(x))) if layer.norm_first else norm(drop(x + block(x)))
        elif layer.norm_first:
            x = (x if residual else 0) + drop(block(norm(x)))
        else:
            x = norm((x if residual else 0) + drop(block(x)))
    return x


def test_decoder_layer_passes_a_right_answer():
    check_decoder_layer(decoder, quiet=True)


@pytest.mark.parametrize(("switches", "fragments"), [
    (dict(causal=False), ["has no causal mask", "they see the future"]),
    (dict(cross_from="decoder"), ["takes its keys and values from the decoder", "does not change when the memory"]),
    (dict(pad_mask=False), ["attends to the source's padding", "padding leaks"]),
    (dict(residual=False), ["A residual connection is missing"]),
    (dict(swap=True), ["in the wrong order"]),
    (dict(residual_dropout=True), ["not in train() mode"]),
])
def test_decoder_layer_names_the_mistake(switches, fragments):
    fails_with(check_decoder_layer, lambda layer, x, memory, real: decoder(layer, x, memory, real, **switches),
               *fragments)


def test_decoder_layer_with_post_norm_wiring_everywhere_is_named():
    def always_post_norm(layer, x, memory, real):
        layer.norm_first = False
        return decoder(layer, x, memory, real)
    fails_with(check_decoder_layer, always_post_norm, "Post-norm wiring on a pre-norm layer")


def test_decoder_layer_crash_is_explained():
    message = fails_with(check_decoder_layer, lambda layer, x, memory, real: layer.cross_attention(x, memory)[0]
                         @ torch.ones(3, 3), "decoder_layer raised RuntimeError")
    assert "on inputs" in message


# -- parameter count -----------------------------------------------------------------------------


def count_right(config):
    d, f = config.d_model, config.d_ff
    attention = 3 * d * d + 3 * d + d * d + d  # in_proj, out_proj
    feed_forward = d * f + f + f * d + d
    norm = 2 * d
    total = config.n_encoder_layers * (attention + feed_forward + 2 * norm)
    total += config.n_decoder_layers * (2 * attention + feed_forward + 3 * norm)
    if config.has_final_norm:
        total += 2 * norm
    if config.tie_embeddings:
        return total + config.src_vocab_size * d
    return total + (config.src_vocab_size + 2 * config.tgt_vocab_size) * d


def test_count_parameters_passes_a_right_answer_also_as_a_tensor_or_float():
    check_count_parameters(count_right, quiet=True)
    check_count_parameters(lambda c: np.int64(count_right(c)), quiet=True)
    check_count_parameters(lambda c: torch.tensor(count_right(c)), quiet=True)
    check_count_parameters(lambda c: float(count_right(c)), quiet=True)


def test_the_mistakes_base_count_is_the_models():
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        config = _count_inputs(generator)["config"]
        assert _count_with()(config) == _count(config) == count_right(config)


@pytest.mark.parametrize(("answer", "fragment"), [
    (lambda c: count_right(c) + (2 * c.src_vocab_size * c.d_model if c.tie_embeddings else 0),
     "counted three times"),
    (lambda c: count_right(c) - c.n_encoder_layers * (5 * c.d_model + c.d_ff)
     - c.n_decoder_layers * (9 * c.d_model + c.d_ff), "The biases are missing"),
    (lambda c: count_right(c) - c.n_decoder_layers * (4 * c.d_model ** 2 + 6 * c.d_model), "cross-attention"),
    (lambda c: count_right(c) - (4 * c.d_model if c.has_final_norm else 0), "final norms are missing"),
    (lambda c: str(count_right(c)), "should return an int"),
    (lambda c: np.int64(count_right(c)) + 1, "off by +1"),
    (lambda c: count_right(c) - 2 * c.d_model, "off by -24 = -2 x d_model"),
])
def test_count_parameters_names_the_mistake(answer, fragment):
    fails_with(check_count_parameters, answer, fragment)
