"""Positional encoding: order blindness without it, the sinusoidal table, its relative property."""

import math
import re

import pytest
import torch

from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.positional import SINUSOIDAL_MISTAKES, check_sinusoidal_encoding
from transformer_lesson.multihead import MultiHeadAttention
from transformer_lesson.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_encoding,
)


def test_table_values_by_the_formula():
    pe = sinusoidal_encoding(50, 16, dtype=torch.float64)
    assert pe.shape == (50, 16) and pe.dtype == torch.float64
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * 8, dtype=torch.float64))
    pos, i = 37, 5
    angle = pos / 10000 ** (2 * i / 16)
    assert pe[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-12)
    assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-12)
    assert sinusoidal_encoding(4, 7).shape == (4, 7)  # odd d_model: last cosine dropped
    assert sinusoidal_encoding(4, 8).dtype == torch.float32


@pytest.mark.parametrize("fast", [False, True])
def test_self_attention_without_positions_is_permutation_equivariant(fast):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, fast=fast).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    perm = torch.randperm(9)
    out, _ = mha(x)
    shuffled_out, _ = mha(x[:, perm])
    assert torch.allclose(shuffled_out, out[:, perm], atol=1e-12)  # same outputs, same shuffle


@pytest.mark.parametrize("encoder", ["sinusoidal", "learned"])
def test_positions_break_the_equivariance(encoder):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).double().eval()
    positions = (SinusoidalPositionalEncoding(16, max_len=32) if encoder == "sinusoidal"
                 else LearnedPositionalEmbedding(16, 32)).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    perm = torch.randperm(9)
    out, _ = mha(positions(x))
    shuffled_out, _ = mha(positions(x[:, perm]))
    assert not torch.allclose(shuffled_out, out[:, perm], atol=1e-3)


def test_dot_products_depend_only_on_distance():
    pe = sinusoidal_encoding(200, 64, dtype=torch.float64)
    for k in (0, 1, 5, 40):
        dots = (pe[: 200 - k] * pe[k:]).sum(-1)  # PE[p] . PE[p + k] for every p
        assert torch.allclose(dots, dots[0].expand_as(dots), atol=1e-10)
        frequency = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
        assert dots[0].item() == pytest.approx(torch.cos(k * frequency).sum().item(), abs=1e-10)
    # ... and they fall with the distance, at first: nearby positions look alike.
    d = [(pe[0] * pe[k]).sum().item() for k in range(6)]
    assert d == sorted(d, reverse=True)


def test_an_offset_is_a_rotation_that_does_not_depend_on_the_position():
    d_model, k = 8, 3
    pe = sinusoidal_encoding(20, d_model, dtype=torch.float64)
    rotation = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i in range(d_model // 2):
        a = k * 10000.0 ** (-2 * i / d_model)
        # (sin(x + a), cos(x + a)) = [[cos a, sin a], [-sin a, cos a]] (sin x, cos x)
        rotation[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor(
            [[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)
    assert torch.allclose(pe[:-k] @ rotation.T, pe[k:], atol=1e-12)


def test_modules_add_positions_and_respect_offset():
    x = torch.zeros(2, 5, 8)
    module = SinusoidalPositionalEncoding(8, max_len=10)
    assert torch.equal(module(x), sinusoidal_encoding(5, 8).expand(2, 5, 8))
    assert torch.equal(module(x[:, :1], offset=4)[0, 0], sinusoidal_encoding(10, 8)[4])
    assert list(module.state_dict()) == []  # the table is recomputed, not stored
    learned = LearnedPositionalEmbedding(8, 10)  # (d_model, max_len), like the sinusoidal one
    assert learned.embedding.weight.shape == (10, 8)
    assert torch.equal(learned(x), learned.embedding.weight[:5].expand(2, 5, 8))
    assert torch.equal(learned(x[:, :2], offset=3)[0], learned.embedding.weight[3:5])
    assert sum(p.numel() for p in learned.parameters()) == 80


@pytest.mark.parametrize("module", [SinusoidalPositionalEncoding(8, max_len=6),
                                    LearnedPositionalEmbedding(8, 6)])
def test_too_long_or_wrong_shape_is_explained(module):
    with pytest.raises(ValueError, match=r"positions 0 .. 5 \(max_len=6\).*0 .. 6"):
        module(torch.zeros(1, 7, 8))
    with pytest.raises(ValueError, match=r"positions 4 .. 6"):
        module(torch.zeros(1, 3, 8), offset=4)
    with pytest.raises(ValueError, match=r"\(batch, time, d_model=8\), got \(7, 8\)"):
        module(torch.zeros(7, 8))


def test_dropout_in_training_only():
    module = SinusoidalPositionalEncoding(8, max_len=10, dropout=0.5)
    x = torch.ones(2, 5, 8)
    assert (module(x) == 0).any()
    module.eval()
    assert torch.equal(module(x), x + sinusoidal_encoding(5, 8))


def test_check_accepts_a_right_answer(capsys):
    def table(max_len, d_model):
        angle = torch.arange(max_len)[:, None] / 10000 ** (torch.arange(0, d_model, 2) / d_model)
        return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)

    check_sinusoidal_encoding(table)
    assert "✓ sinusoidal_encoding" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(SINUSOIDAL_MISTAKES))
def test_check_names_each_mistake(name):
    mistake = SINUSOIDAL_MISTAKES[name]
    with pytest.raises(CheckFailed) as failure:
        check_sinusoidal_encoding(mistake.implementation, quiet=True)
    assert f"Likely cause: {mistake.advice}" in str(failure.value)


def _float32_table(frequency, *, start=0, degrees=False, swap=False, halves=False):
    """A student's table in float32, from a frequency row ``frequency(d_model)`` of d_model/2 values."""
    def table(max_len, d_model):
        angle = torch.arange(start, start + max_len, dtype=torch.float32)[:, None] * frequency(d_model)
        if degrees:
            angle = torch.rad2deg(angle)
        first, second = (torch.cos(angle), torch.sin(angle)) if swap else (torch.sin(angle), torch.cos(angle))
        if halves:
            return torch.cat([first, second], dim=1)
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2], pe[:, 1::2] = first, second
        return pe
    return table


_two_i = lambda d: torch.arange(0, d, 2, dtype=torch.float32)  # noqa: E731
_omega = lambda d: torch.exp(-_two_i(d) * math.log(10000.0) / d)  # noqa: E731

FLOAT32_MISTAKES = {
    "sin and cos swapped": _float32_table(_omega, swap=True),
    "halves instead of interleaved": _float32_table(_omega, halves=True),
    "exponent without the 2": _float32_table(lambda d: 10000 ** (-torch.arange(d // 2) / d)),
    "exponent 4i": _float32_table(lambda d: 1 / 10000 ** (2 * _two_i(d) / d)),
    "base 1000": _float32_table(lambda d: torch.exp(-_two_i(d) * math.log(1000.0) / d)),
    "divided by d_model - 1": _float32_table(lambda d: 10000 ** (-_two_i(d) / (d - 1))),
    "angles in degrees": _float32_table(_omega, degrees=True),
    "integer division in the exponent": _float32_table(lambda d: 1 / 10000 ** (_two_i(d) // d)),
    "positions from 1": _float32_table(_omega, start=1),
    "multiplied by the power": _float32_table(lambda d: torch.exp(_two_i(d) * math.log(10000.0) / d)),
}


@pytest.mark.parametrize("name", list(SINUSOIDAL_MISTAKES))
def test_check_names_each_mistake_in_a_float32_answer(name):
    """Written like a student's, in float32: its large angles are off by hundredths, yet it is named."""
    with pytest.raises(CheckFailed) as failure:
        check_sinusoidal_encoding(FLOAT32_MISTAKES[name], quiet=True)
    assert f"Likely cause: {SINUSOIDAL_MISTAKES[name].advice}" in str(failure.value)


def test_check_explains_a_crash_in_the_broadcast():
    def flat_positions(max_len, d_model):
        angle = torch.arange(max_len) * 10000 ** (-torch.arange(0, d_model, 2) / d_model)  # (max_len,) * (d/2,)
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2], pe[:, 1::2] = angle.sin(), angle.cos()
        return pe

    with pytest.raises(CheckFailed, match=r"sinusoidal_encoding\(\d+, \d+\) raised RuntimeError") as failure:
        check_sinusoidal_encoding(flat_positions, quiet=True)
    assert "`torch.arange(max_len)[:, None] * frequencies`" in str(failure.value)


def test_both_modules_take_d_model_then_max_len():
    for cls in (SinusoidalPositionalEncoding, LearnedPositionalEmbedding):
        module = cls(12, 7)
        assert (module.d_model, module.max_len) == (12, 7)
        assert module(torch.zeros(1, 7, 12)).shape == (1, 7, 12)


def _reference_table(max_len, d_model):
    """The table in Python floats (float64), one element at a time."""
    return torch.tensor([[math.sin(p * 10000.0 ** (-(j - j % 2) / d_model)) if j % 2 == 0
                          else math.cos(p * 10000.0 ** (-(j - j % 2) / d_model))
                          for j in range(d_model)] for p in range(max_len)], dtype=torch.float64)


def test_sinusoidal_module_is_exact_in_float64():
    """A float64 model gets the float64 table, not a float32 one widened."""
    reference = _reference_table(64, 16)
    module = SinusoidalPositionalEncoding(16, max_len=64).double().eval()
    out = module(torch.zeros(2, 64, 16, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert (out - reference).abs().max().item() <= 1e-12
    assert (module(torch.zeros(1, 4, 16, dtype=torch.float64), offset=60)[0] - reference[60:]).abs().max() <= 1e-12
    module.float()  # back and forth: nothing was rounded on the way
    assert module(torch.zeros(1, 64, 16)).dtype == torch.float32
    module.double()
    assert (module(torch.zeros(1, 64, 16, dtype=torch.float64))[0] - reference).abs().max() <= 1e-12
    # float32 input: the correctly rounded table.
    assert torch.equal(module(torch.zeros(1, 64, 16))[0], reference.float())
    assert (sinusoidal_encoding(64, 16, dtype=torch.float64) - reference).abs().max() <= 1e-12


@pytest.mark.parametrize(
    "name, frequency, expected",
    [
        ("4i exponent", lambda d: 10000 ** (-2 * torch.arange(0, d, 2) / d), "exponent 4i"),
        ("base 1000", lambda d: 1000 ** (-torch.arange(0, d, 2) / d), "base 1000"),
        ("d - 1", lambda d: 10000 ** (-torch.arange(0, d, 2) / (d - 1)), "divided by d_model - 1"),
        ("degrees", lambda d: 10000 ** (-torch.arange(0, d, 2) / d) * 180 / math.pi, None),
        ("power", lambda d: 10000 ** (torch.arange(0, d, 2) / d), "multiplied by the power"),
    ],
)
def test_check_says_where_and_compares_the_frequency(name, frequency, expected):
    """Wrong frequencies: position, feature and pair, and the pair's frequency against omega_i."""
    def table(max_len, d_model):
        angle = torch.arange(max_len, dtype=torch.float32)[:, None] * frequency(d_model)
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(angle), torch.cos(angle)
        return pe

    with pytest.raises(CheckFailed) as failure:
        check_sinusoidal_encoding(table, quiet=True)
    message = str(failure.value)
    assert re.search(r"at position \d+, feature \d+ \(pair \d+, its (sin|cos)\)", message)
    match = re.search(r"Your frequency for pair (\d+) is ([\d.e-]+) rad per position, expected "
                      r"omega_\1 = 10000\^\(-2\*\1/(\d+)\) = ([\d.e-]+)", message)
    assert match, message
    pair, d_model = int(match.group(1)), int(match.group(3))
    assert float(match.group(4)) == pytest.approx(10000 ** (-2 * pair / d_model), rel=1e-5)
    if expected is not None:
        assert f"Likely cause: {SINUSOIDAL_MISTAKES[expected].advice}" in message
    else:
        assert "180/pi times larger" in message
