"""The checks of lesson 06's exercises after the table: the rotation R_k and learned positions.

Each known mistake is fed to its check, which must name it; right answers pass; answers of the wrong
kind get a message that says so. (The sinusoidal table's check is tested in test_positional.py.)
"""

import pytest
import torch

from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.positional import (
    LEARNED_MISTAKES,
    ROTATION_MISTAKES,
    check_learned_positions,
    check_rotation_matrix,
    check_sinusoidal_encoding,
)
from transformer_lesson.positional import sinusoidal_encoding


def rotation(k, d_model):
    omega = 10000 ** (-torch.arange(0, d_model, 2) / d_model)
    cos, sin = torch.cos(k * omega), torch.sin(k * omega)
    blocks = [torch.tensor([[c, s], [-s, c]]) for c, s in zip(cos.tolist(), sin.tolist(), strict=True)]
    return torch.block_diag(*blocks)


def learned(x, weight, offset):
    if offset + x.shape[1] > weight.shape[0]:
        raise ValueError("past the table")
    return x + weight[offset : offset + x.shape[1]]


def refusing_long_inputs(implementation):
    """A mistake that also raises the required ValueError, so that only its values differ."""
    def answer(x, weight, offset):
        if offset + x.shape[1] > weight.shape[0]:
            raise ValueError("past the table")
        return implementation(x, weight, offset)
    return answer


def test_the_rotation_moves_encodings_by_k():
    table = sinusoidal_encoding(30, 8, dtype=torch.float64)
    assert torch.allclose(table[5:25] @ rotation(5, 8).double().T, table[10:30], atol=1e-6)


def test_checks_pass_right_answers(capsys):
    check_rotation_matrix(rotation)
    check_learned_positions(learned)
    out = capsys.readouterr().out
    assert "✓ rotation_matrix" in out and "✓ add_learned_positions" in out
    assert len(ROTATION_MISTAKES) >= 3 and len(LEARNED_MISTAKES) >= 3


@pytest.mark.parametrize("name", list(ROTATION_MISTAKES))
def test_rotation_check_names_each_mistake(name):
    mistake = ROTATION_MISTAKES[name]
    with pytest.raises(CheckFailed) as failure:
        check_rotation_matrix(mistake.implementation, quiet=True)
    assert str(failure.value).split("\n")[1] == f"Likely cause: {mistake.advice}"


@pytest.mark.parametrize("name", list(LEARNED_MISTAKES))
def test_learned_check_names_each_mistake(name):
    mistake = LEARNED_MISTAKES[name]
    with pytest.raises(CheckFailed) as failure:
        check_learned_positions(refusing_long_inputs(mistake.implementation), quiet=True)
    assert f"Likely cause: {mistake.advice}" in str(failure.value)


def test_rotation_check_says_where_a_wrong_matrix_sends_an_encoding():
    with pytest.raises(CheckFailed, match=r"maps PE\[20\] to PE\[\d+\], the position [-+]\d+ away"):
        check_rotation_matrix(lambda k, d: rotation(k + 1, d), quiet=True)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda k, d: None, "did you forget the `return`"),
    (lambda k, d: rotation(k, d).numpy(), "should be a torch.Tensor but is a ndarray"),
    (lambda k, d: rotation(k, d).to("meta"), "is on the device meta, but the inputs are on cpu"),
    (lambda k, d: rotation(k, d).long(), "has dtype torch.int64"),
])
def test_rotation_check_explains_answers_of_the_wrong_kind(wrong, fragment):
    with pytest.raises(CheckFailed) as failure:
        check_rotation_matrix(wrong, quiet=True)
    assert fragment in str(failure.value)


def test_sinusoidal_check_explains_the_wrong_device():
    with pytest.raises(CheckFailed, match="is on the device meta"):
        check_sinusoidal_encoding(lambda n, d: sinusoidal_encoding(n, d).to("meta"), quiet=True)


def test_learned_check_wants_a_value_error_past_the_table():
    with pytest.raises(CheckFailed, match="returned a result, but positions 4 .. 8 run past the table"):
        check_learned_positions(lambda x, w, o: x + torch.cat([w, w])[o : o + x.shape[1]], quiet=True)
    with pytest.raises(CheckFailed, match="raised RuntimeError.*\n.*raise a ValueError"):
        check_learned_positions(lambda x, w, o: x + w[o : o + x.shape[1]], quiet=True)
