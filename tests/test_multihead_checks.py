"""The checks of lesson 05's exercises: split, merge, the projections and the forward pass.

Each known mistake is fed to its check, which must name it; right answers pass; answers of the wrong
kind (None, a NumPy array, the wrong dtype, another device) get a message that says so, and the
forward pass may not call the module's own.
"""

import pytest
import torch

from transformer_lesson.attention import scaled_dot_product_attention
from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.multihead import (
    FORWARD_MISTAKES,
    MERGE_MISTAKES,
    PROJECTION_MISTAKES,
    SPLIT_MISTAKES,
    check_merge_heads,
    check_multi_head_attention,
    check_project_heads,
    check_split_heads,
)
from transformer_lesson.multihead import merge_heads, split_heads


def project(x, in_weight, in_bias, n_heads):
    queries, keys, values = (x @ in_weight.T + in_bias).chunk(3, dim=-1)
    return split_heads(queries, n_heads), split_heads(keys, n_heads), split_heads(values, n_heads)


def forward(mha, x, mask=None):
    queries, keys, values = (split_heads(t, mha.n_heads) for t in mha.in_proj(x).chunk(3, dim=-1))
    heads, _ = scaled_dot_product_attention(queries, keys, values, mask)
    return mha.out_proj(merge_heads(heads))


CHECKS = [
    (check_split_heads, lambda x, n: x.view(*x.shape[:2], n, -1).transpose(1, 2), SPLIT_MISTAKES),
    (check_merge_heads, lambda x: x.transpose(1, 2).flatten(2), MERGE_MISTAKES),
    (check_project_heads, project, PROJECTION_MISTAKES),
    (check_multi_head_attention, forward, FORWARD_MISTAKES),
]
CASES = [(check, mistakes[name]) for check, _, mistakes in CHECKS for name in mistakes]


@pytest.mark.parametrize("check, right, mistakes", CHECKS, ids=lambda c: getattr(c, "__name__", ""))
def test_checks_pass_a_right_answer(check, right, mistakes, capsys):
    check(right)
    assert "✓" in capsys.readouterr().out
    assert len(mistakes) >= 3


@pytest.mark.parametrize("check, mistake", CASES, ids=lambda c: getattr(c, "__name__", "") or c.advice[:25])
def test_checks_name_each_mistake(check, mistake):
    with pytest.raises(CheckFailed) as failure:
        check(mistake.implementation, quiet=True)
    assert f"Likely cause: {mistake.advice}" in str(failure.value)


def test_a_wrong_merge_does_not_fail_the_split():
    """Two checks, two grades: a right split with a wrong merge keeps the split's point."""
    check_split_heads(lambda x, n: x.view(*x.shape[:2], n, -1).transpose(1, 2), quiet=True)
    with pytest.raises(CheckFailed):
        check_merge_heads(MERGE_MISTAKES["reshape without transpose"].implementation, quiet=True)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda x, n: None, "did you forget the `return`"),
    (lambda x, n: split_heads(x, n).numpy(), "should be a torch.Tensor but is a ndarray"),
    (lambda x, n: split_heads(x, n).long(), "has dtype torch.int64 but torch.float32 was expected"),
    (lambda x, n: split_heads(x, n).to("meta"), "is on the device meta, but the inputs are on cpu"),
])
def test_split_check_explains_answers_of_the_wrong_kind(wrong, fragment):
    with pytest.raises(CheckFailed) as failure:
        check_split_heads(wrong, quiet=True)
    assert fragment in str(failure.value)


def test_projection_check_explains_an_untransposed_weight():
    def untransposed(x, in_weight, in_bias, n_heads):
        return project(x, in_weight.T, in_bias, n_heads)  # x @ in_weight: (B, T, d) @ (3d, d)

    with pytest.raises(CheckFailed, match=r"multiply by its transpose: `x @ in_weight.T \+ in_bias`"):
        check_project_heads(untransposed, quiet=True)


def test_projection_check_wants_three_values():
    with pytest.raises(CheckFailed, match=r"should return 3 value\(s\) but returned 2"):
        check_project_heads(lambda x, w, b, n: project(x, w, b, n)[:2], quiet=True)


@pytest.mark.parametrize("call", [
    lambda mha, x, mask=None: mha(x, mask=mask)[0],
    lambda mha, x, mask=None: mha.forward(x, x, x, mask)[0],
    lambda mha, x, mask=None: mha.attend(x, *mha.project_keys_values(x), mask)[0],
])
def test_forward_check_refuses_the_modules_own_forward_pass(call):
    with pytest.raises(CheckFailed, match="runs the package.s own answer"):
        check_multi_head_attention(call, quiet=True)


def test_forward_check_keeps_the_students_random_state():
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    check_multi_head_attention(forward, quiet=True)
    assert torch.equal(torch.rand(1), expected)


def test_forward_check_reports_changed_weights():
    def changes_weights(mha, x, mask=None):
        with torch.no_grad():
            mha.out_proj.weight.mul_(2)
        return forward(mha, x, mask)

    with pytest.raises(CheckFailed, match="changed its input 'mha' in place"):
        check_multi_head_attention(changes_weights, quiet=True)
