"""Grading is fair: a warning costs nothing, the package's own answer is refused, a stub and a failure read clearly.

(The nbgrader round trip in test_instructors.py checks the same through real kernels and nbgrader's feedback,
including a warning raised in a check cell's hidden tests, outside the check.)
"""

import importlib
import inspect
import math
import pkgutil
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import transformer_lesson.checks
from transformer_lesson.attention import padding_mask, scaled_dot_product_attention
from transformer_lesson.batching import pad_sequences
from transformer_lesson.checks.attention import check_attention
from transformer_lesson.checks.batching import check_pad_sequences
from transformer_lesson.checks.core import (
    PACKAGE_ANSWERS,
    PYTORCH_ANSWERS,
    CheckFailed,
    check_against,
    not_written_yet,
    resolve,
)
from transformer_lesson.checks.multihead import check_merge_heads, check_split_heads
from transformer_lesson.checks.positional import check_sinusoidal_encoding
from transformer_lesson.checks.rnn import check_rnn_cell, check_rnn_forward
from transformer_lesson.checks.rnn_attention import check_additive_attention, check_attention_step
from transformer_lesson.checks.seq2seq import check_greedy_decode, check_last_real_state, check_sequence_loss
from transformer_lesson.checks.transformer import (
    check_count_parameters,
    check_decoder_layer,
    check_embed,
    check_encoder_layer,
    check_feed_forward,
)
from transformer_lesson.decoding import greedy_decode
from transformer_lesson.multihead import merge_heads, split_heads
from transformer_lesson.positional import sinusoidal_encoding
from transformer_lesson.rnn import rnn_cell, rnn_forward
from transformer_lesson.rnn_attention import additive_attention
from transformer_lesson.seq2seq import last_real_state
from transformer_lesson.training import sequence_loss
from transformer_lesson.transformer import EncoderLayer, FeedForward, ScaledEmbedding, Transformer


def all_checks():
    """Every public check of the course: check_* functions of transformer_lesson.checks' modules."""
    found = []
    for module_info in pkgutil.iter_modules(transformer_lesson.checks.__path__):
        module = importlib.import_module(f"transformer_lesson.checks.{module_info.name}")
        found += [f for name, f in inspect.getmembers(module, inspect.isfunction)
                  if name.startswith("check_") and name != "check_against" and f.__module__ == module.__name__]
    return found


# -- a warning is advice, never standard error ---------------------------------------------------


def loss_with_a_deprecated_argument(logits, targets, mask):
    """Right, but `reduce=False` is deprecated: PyTorch warns (reduction="none" is the current spelling)."""
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduce=False)
    return (losses * mask).sum() / mask.sum()


def test_a_right_answer_that_warns_passes_with_the_warning_as_advice_on_stdout(capfd):
    with warnings.catch_warnings(record=True) as caught:  # the answer does warn, outside a check
        warnings.simplefilter("always")
        loss_with_a_deprecated_argument(torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.long),
                                        torch.ones(2, 3, dtype=torch.bool))
    assert caught
    check_sequence_loss(loss_with_a_deprecated_argument)
    out, err = capfd.readouterr()
    assert err == ""  # nbgrader gives 0 points to a graded cell that writes to standard error
    assert "✓ sequence_loss" in out
    assert out.count("Note: sequence_loss raised a warning") == 1  # once per check, not once per trial
    assert "reduction" in out  # PyTorch's own advice reaches the student


def test_any_warning_or_stderr_write_of_the_student_goes_to_stdout_and_the_checks_own_are_silenced(capfd):
    def reference(x):
        warnings.warn("the reference's own warning", UserWarning, stacklevel=1)
        return x * 2

    def answer(x):
        warnings.warn("old spelling", DeprecationWarning, stacklevel=1)
        print("debugging", file=sys.stderr)
        return x + x

    check_against(answer, reference, lambda g: {"x": torch.randn(3, generator=g)}, name="double")
    out, err = capfd.readouterr()
    assert err == ""
    assert "DeprecationWarning: old spelling" in out and "debugging" in out and "✓ double" in out
    assert "reference's own" not in out


# -- the package's own answer is refused ---------------------------------------------------------


def wrapped_attention(queries, keys, values, mask=None):
    return scaled_dot_product_attention(queries, keys, values, mask)


def feed_forward_by_the_package(x, W1, b1, W2, b2):
    network = FeedForward(W1.shape[1], W1.shape[0])
    with torch.no_grad():
        for parameter, value in zip(network.parameters(), (W1, b1, W2, b2), strict=True):
            parameter.copy_(value)
    return network(x)


def embed_by_the_package(tokens, weight, table):
    embedding = ScaledEmbedding(*weight.shape)
    with torch.no_grad():
        embedding.weight.copy_(weight)
    return embedding(tokens) + table[: tokens.shape[1]]


class MyEncoderLayer(EncoderLayer):
    """The package's class, subclassed unchanged."""


PACKAGE_ANSWER_CASES = [  # (check, an answer that is the package's, the package function it runs)
    (check_pad_sequences, pad_sequences, "batching.pad_sequences"),
    (check_rnn_cell, rnn_cell, "rnn.rnn_cell"),  # lesson 01: `from transformer_lesson.rnn import rnn_cell`
    (check_rnn_cell, lambda *weights: rnn_cell(*weights), "rnn.rnn_cell"),
    (check_rnn_forward, rnn_forward, "rnn.rnn_forward"),
    (check_last_real_state, last_real_state, "seq2seq.last_real_state"),
    (check_sequence_loss, sequence_loss, "training.sequence_loss"),
    (check_greedy_decode, greedy_decode, "decoding.greedy_decode"),
    (check_additive_attention, additive_attention, "rnn_attention.additive_attention"),
    (check_attention_step, lambda decoder, *inputs: decoder.step(*inputs), "rnn_attention.AttentionGRUDecoder.step"),
    (check_attention, scaled_dot_product_attention, "attention.scaled_dot_product_attention"),  # lesson 04
    (check_attention, wrapped_attention, "attention.scaled_dot_product_attention"),
    (check_split_heads, split_heads, "multihead.split_heads"),  # lesson 05
    (check_merge_heads, lambda x: merge_heads(x), "multihead.merge_heads"),
    (check_sinusoidal_encoding, sinusoidal_encoding, "positional.sinusoidal_encoding"),
    (check_feed_forward, feed_forward_by_the_package, "transformer.FeedForward.forward"),
    (check_embed, embed_by_the_package, "transformer.ScaledEmbedding.forward"),
    (check_encoder_layer, lambda layer, x, real: layer(x, padding_mask(real))[0], "transformer.EncoderLayer.forward"),
    (check_encoder_layer, lambda layer, x, real: MyEncoderLayer.forward(layer, x, padding_mask(real))[0],
     "transformer.EncoderLayer.forward"),
    (check_decoder_layer, lambda layer, x, memory, real: layer(
        x, layer.cross_attention.project_keys_values(memory), padding_mask(real))[0],
     "transformer.DecoderLayer.forward"),
    (check_count_parameters, lambda config: sum(p.numel() for p in Transformer(config).parameters()),
     "transformer.Transformer.__init__"),
]


@pytest.mark.parametrize(("check", "answer", "package_function"), PACKAGE_ANSWER_CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(PACKAGE_ANSWER_CASES)])
def test_the_package_s_own_answer_is_refused(check, answer, package_function, capsys):
    with pytest.raises(CheckFailed, match="runs the package's own answer") as failure:
        check(answer)
    assert f"transformer_lesson.{package_function}" in str(failure.value)
    assert "write it yourself" in str(failure.value)
    assert "✓" not in capsys.readouterr().out
    assert sys.getprofile() is None  # the watch is over


def test_a_copy_of_the_reference_in_the_student_s_own_code_passes_and_other_package_functions_are_allowed(capsys):
    def own_pad_sequences(sequences, pad_id):
        longest = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), longest), pad_id)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return ids, torch.arange(longest)[None, :] < torch.tensor([len(s) for s in sequences])[:, None]

    check_pad_sequences(own_pad_sequences)

    def encoder_layer(layer, x, real):  # uses the package's attention and feed-forward: not this exercise's answer
        mask = padding_mask(real)
        if layer.norm_first:
            x = x + layer.dropout1(layer.self_attention(layer.norm1(x), mask=mask)[0])
            return x + layer.dropout2(layer.feed_forward(layer.norm2(x)))
        x = layer.norm1(x + layer.dropout1(layer.self_attention(x, mask=mask)[0]))
        return layer.norm2(x + layer.dropout2(layer.feed_forward(x)))

    check_encoder_layer(encoder_layer)
    out = capsys.readouterr().out
    assert "✓ pad_sequences" in out and "✓ encoder_layer" in out


def test_a_wrong_answer_built_on_the_package_is_told_what_is_wrong_not_refused():
    with pytest.raises(CheckFailed, match="Likely cause: h_last is the state after the \\*first\\* step"):
        check_rnn_forward(lambda *inputs: (rnn_forward(*inputs)[0], rnn_forward(*inputs)[0][:, 0]))


def test_every_package_answer_listed_exists():
    for name, dotted_names in PACKAGE_ANSWERS.items():
        for dotted in dotted_names:
            assert inspect.isfunction(resolve(dotted)), f"PACKAGE_ANSWERS[{name!r}]: {dotted} is not a function"


def test_the_watch_keeps_a_profiler_already_running():
    events = []

    def profiler(frame, event, arg):
        events.append(event)

    sys.setprofile(profiler)
    try:
        with pytest.raises(CheckFailed):
            check_split_heads(split_heads, quiet=True)
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert events  # it was chained, not switched off


# -- an unfinished exercise, a crash and a failure read clearly ----------------------------------


@pytest.mark.parametrize("check", all_checks(), ids=lambda check: check.__name__)
def test_an_unwritten_exercise_reads_the_same_in_every_check(check):
    def stub(*args, **kwargs):
        # YOUR CODE HERE
        raise NotImplementedError()

    with pytest.raises(CheckFailed) as failure:
        check(stub)
    message = str(failure.value)
    name = message.split(" ", 1)[0]
    assert message == not_written_yet(name), message


def test_an_operation_pytorch_lacks_is_a_crash_not_an_unwritten_exercise():
    def attention(queries, keys, values, mask=None):
        raise NotImplementedError("Could not run 'aten::bmm' with arguments from the 'Meta' backend")

    with pytest.raises(CheckFailed, match="(?s)attention raised NotImplementedError .*Could not run"):
        check_attention(attention, quiet=True)


def test_a_crash_names_the_student_s_line():
    def attention(queries, keys, values, mask=None):
        # the keys are not transposed
        scores = queries @ keys / math.sqrt(queries.shape[-1])
        return scores.softmax(-1) @ values, scores.softmax(-1)

    with pytest.raises(CheckFailed) as failure:
        check_attention(attention, quiet=True)
    assert "at line" in str(failure.value)
    assert "of attention (`scores = queries @ keys / math.sqrt(queries.shape[-1])`):" in str(failure.value)


def test_jupyter_shows_a_failed_check_as_its_diagnosis_alone():
    with pytest.raises(CheckFailed) as failure:
        check_split_heads(lambda x, n: x.reshape(x.shape[0], n, x.shape[1], -1), quiet=True)
    shown = failure.value._render_traceback_()  # what IPython shows instead of the traceback
    assert shown[0].startswith("\x1b[0;31mCheckFailed\x1b[0m: split_heads(...) has the right shape but wrong values")
    assert "\n".join(shown).endswith(str(failure.value).splitlines()[-1])
    assert len(shown) == len(str(failure.value).splitlines()) < 8


def attention_by_pytorch(queries, keys, values, mask=None):
    """Right weights by hand, and the output from PyTorch's fused attention: its values pass."""
    scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.nan_to_num(scores.softmax(dim=-1))  # a fully hidden row: zeros
    output = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
    return torch.nan_to_num(output) * (weights.sum(-1, keepdim=True) > 0), weights


PYTORCH_ANSWER_CASES = [  # (check, an answer whose values pass through PyTorch's ready-made version, its name)
    (check_rnn_cell, lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.rnn_tanh_cell(x, h, W_ih, W_hh, b_ih, b_hh),
     "torch.rnn_tanh_cell"),
    (check_attention, attention_by_pytorch, "torch.nn.functional.scaled_dot_product_attention"),
]


@pytest.mark.parametrize(("check", "answer", "builtin"), PYTORCH_ANSWER_CASES,
                         ids=[name for _, _, name in PYTORCH_ANSWER_CASES])
def test_pytorch_s_ready_made_version_of_the_exercise_is_refused(check, answer, builtin, capsys):
    with pytest.raises(CheckFailed, match="runs PyTorch's ready-made version of this exercise") as failure:
        check(answer)
    assert builtin in str(failure.value) and "basic operations" in str(failure.value)
    assert "✓" not in capsys.readouterr().out
    assert sys.getprofile() is None


def test_every_pytorch_answer_listed_exists_and_belongs_to_a_check():
    for name, dotted_names in PYTORCH_ANSWERS.items():
        assert name in PACKAGE_ANSWERS, f"PYTORCH_ANSWERS[{name!r}]: no check of that name"
        for dotted in dotted_names:
            assert callable(resolve(dotted)), dotted
