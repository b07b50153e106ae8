"""Positional encoding: order blindness without it, the sinusoidal table, its relative property."""

import math

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
                 else LearnedPositionalEmbedding(32, 16)).double()
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
    learned = LearnedPositionalEmbedding(10, 8)
    assert torch.equal(learned(x), learned.embedding.weight[:5].expand(2, 5, 8))
    assert sum(p.numel() for p in learned.parameters()) == 80


@pytest.mark.parametrize("module", [SinusoidalPositionalEncoding(8, max_len=6),
                                    LearnedPositionalEmbedding(6, 8)])
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
