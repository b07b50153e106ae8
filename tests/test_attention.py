"""Scaled dot-product attention: against PyTorch, teaching path == fast path, masks, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_lesson.attention import causal_mask, padding_mask, scaled_dot_product_attention
from transformer_lesson.checks.attention import (
    ATTENTION_MISTAKES,
    _crash_hint,
    attention_inputs,
    check_attention,
)
from transformer_lesson.checks.core import CheckFailed


def random_case(generator, dtype=torch.float64):
    """Random 4-D inputs and a random boolean mask (each query row keeps at least one key)."""
    b, h, t_q, t_k, d_k, d_v = torch.randint(1, 7, (6,), generator=generator).tolist()
    q = torch.randn(b, h, t_q, d_k, generator=generator, dtype=dtype)
    k = torch.randn(b, h, t_k, d_k, generator=generator, dtype=dtype)
    v = torch.randn(b, h, t_k, d_v, generator=generator, dtype=dtype)
    mask = torch.rand(b, h, t_q, t_k, generator=generator) < 0.7
    mask[..., 0] = True
    return q, k, v, mask


def relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("fast", [False, True])
def test_matches_torch_sdpa_on_random_masked_inputs(fast):
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        q, k, v, mask = random_case(generator)
        ours, _ = scaled_dot_product_attention(q, k, v, mask, fast=fast)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert relative_error(ours, theirs) <= 1e-10


def test_weights_are_a_distribution_over_allowed_keys():
    q, k, v, mask = random_case(torch.Generator().manual_seed(1))
    _, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.allclose(weights.sum(-1), torch.ones((), dtype=weights.dtype))
    assert (weights[~mask] == 0).all()
    manual = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
        ~mask, -math.inf), dim=-1)
    assert torch.allclose(weights, manual)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_teaching_and_fast_paths_agree(dtype, tol):
    generator = torch.Generator().manual_seed(2)
    for trial in range(20):
        q, k, v, mask = random_case(generator, dtype)
        mask = None if trial % 4 == 0 else mask
        slow, weights = scaled_dot_product_attention(q, k, v, mask, fast=False)
        fast, none = scaled_dot_product_attention(q, k, v, mask, fast=True)
        assert weights is not None and none is None
        assert relative_error(fast, slow) <= tol


@pytest.mark.parametrize("mask_shape", [(2, 1, 5, 1), (2, 3, 5, 1), (5, 1), (1, 6), (2, 1, 1, 6)])
def test_paths_agree_on_masks_broadcast_over_queries_or_keys(mask_shape):
    """A mask may broadcast along the keys (its last dimension 1: it hides whole query rows) or the
    queries. Both paths agree, and the fast one gives the same numbers on every call (torch 2.4's CPU
    kernel did not, for masks with a last dimension of 1)."""
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(2, 3, 5, 4, generator=generator)
    k, v = torch.randn(2, 3, 6, 4, generator=generator), torch.randn(2, 3, 6, 4, generator=generator)
    mask = torch.rand(mask_shape, generator=generator) < 0.6
    mask.view(-1)[0] = True
    slow, _ = scaled_dot_product_attention(q, k, v, mask, fast=False)
    runs = [scaled_dot_product_attention(q, k, v, mask, fast=True)[0] for _ in range(3)]
    for fast in runs:
        assert torch.equal(fast, runs[0])
        assert relative_error(fast, slow) <= 1e-5


def test_paths_agree_on_gradients():
    generator = torch.Generator().manual_seed(3)
    q, k, v, mask = random_case(generator)
    grads = []
    for fast in (False, True):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out, _ = scaled_dot_product_attention(*inputs, mask, fast=fast)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum().backward()
        grads.append([t.grad for t in inputs])
    for slow, fast in zip(*grads, strict=True):
        assert relative_error(fast, slow) <= 1e-10


@pytest.mark.parametrize("fast", [False, True])
def test_fully_masked_rows_give_zeros_and_no_nan(fast):
    q = torch.randn(2, 3, 4, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    mask[0, :, 1] = False  # batch 0, query 1: no key allowed
    mask[1] = False  # batch 1: nothing at all
    out, weights = scaled_dot_product_attention(q, k, v, mask, fast=fast)
    assert torch.isfinite(out).all()
    assert (out[0, :, 1] == 0).all() and (out[1] == 0).all()
    if not fast:
        assert (weights[0, :, 1] == 0).all() and (weights[1] == 0).all()
        assert torch.allclose(weights[0, :, 0].sum(-1), torch.ones(3, dtype=torch.float64))
    # The other rows are ordinary attention.
    expected = F.scaled_dot_product_attention(q[0, :, [0, 2, 3]], k[0], v[0])
    assert torch.allclose(out[0, :, [0, 2, 3]], expected)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (k.grad[1] == 0).all() and (v.grad[1] == 0).all()
    assert (q.grad[0, :, 1] == 0).all() and (q.grad[1] == 0).all()  # nothing flows from no key
    assert (q.grad[0, :, 0] != 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fully_masked_rows_paths_agree_with_gradients(dtype):
    """Outputs and q, k, v gradients of both paths, with rows that have no key at all."""
    generator = torch.Generator().manual_seed(4)
    q, k, v, mask = random_case(generator, dtype)
    mask[0, 0, 0] = False  # a row with no key
    mask[-1, -1, -1] = False
    results = []
    for fast in (False, True):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out, _ = scaled_dot_product_attention(*inputs, mask, fast=fast)
        (out * torch.arange(out.numel(), dtype=dtype).view_as(out).cos()).sum().backward()
        assert torch.isfinite(out).all()
        results.append([out.detach()] + [t.grad for t in inputs])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for slow, fast in zip(*results, strict=True):
        assert torch.isfinite(slow).all() and torch.isfinite(fast).all()
        assert relative_error(fast, slow) <= tol


def test_float16_fully_masked_rows_have_finite_gradients_on_the_teaching_path():
    """score + finfo.min would be -inf in float16 for scores below -16; the bias is finfo.min / 2."""
    q = torch.full((1, 2, 4), 3.0, dtype=torch.float16, requires_grad=True)
    k = torch.full((1, 3, 4), -3.0, dtype=torch.float16, requires_grad=True)  # every score: -18
    v = torch.randn(1, 3, 4).half().requires_grad_()
    mask = torch.tensor([[[True, True, False], [False, False, False]]])  # query 1: no key
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    out.float().sum().backward()
    assert (out[0, 1] == 0).all() and (weights[0, 1] == 0).all()
    assert torch.allclose(weights[0, 0].float(), torch.tensor([0.5, 0.5, 0.0]))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("fast", [False, True])
def test_empty_batch_and_no_keys_give_empty_or_zero_outputs(fast):
    q = torch.randn(0, 4, 5, 8)
    out, _ = scaled_dot_product_attention(q, q, q, fast=fast)
    assert out.shape == (0, 4, 5, 8)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 0, 8), torch.randn(2, 0, 3)
    out, _ = scaled_dot_product_attention(q, k, v, fast=fast)
    assert out.shape == (2, 5, 3) and (out == 0).all()


def test_fast_path_zeroes_fully_masked_rows_even_if_the_kernel_returns_nan(monkeypatch):
    """Some kernels (e.g. on some GPUs) give NaN for a row with no allowed key; ours must not."""
    def nan_on_empty_rows(q, k, v, attn_mask=None, **kwargs):  # plain -inf masking: 0/0 on such rows
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        return torch.softmax(scores, dim=-1) @ v

    monkeypatch.setattr(F, "scaled_dot_product_attention", nan_on_empty_rows)
    q = torch.randn(2, 3, 4, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, :, 1] = False
    out, _ = scaled_dot_product_attention(q, q, q, mask, fast=True)
    out.sum().backward()
    assert torch.isfinite(out).all() and (out[0, :, 1] == 0).all()
    assert torch.isfinite(q.grad).all()


def test_causal_mask():
    assert causal_mask(3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # Two new queries over five keys (three cached): the queries are positions 3 and 4.
    assert causal_mask(2, 5).tolist() == [[True] * 4 + [False], [True] * 5]
    with pytest.raises(ValueError, match="n_queries <= n_keys"):
        causal_mask(4, 3)


def test_causal_mask_makes_outputs_independent_of_the_future():
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    changed = x.clone()
    changed[0, 4:] += 10.0
    for fast in (False, True):
        a, _ = scaled_dot_product_attention(x, x, x, causal_mask(6), fast=fast)
        b, _ = scaled_dot_product_attention(changed, changed, changed, causal_mask(6), fast=fast)
        assert torch.allclose(a[0, :4], b[0, :4]) and not torch.allclose(a[0, 4:], b[0, 4:])


def test_padding_mask_ignores_padded_keys():
    real = torch.tensor([[True, True, True, False, False], [True] * 5])
    mask = padding_mask(real)
    assert mask.shape == (2, 1, 1, 5)
    q = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    kv = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    noisy = kv.clone()
    noisy[0, :, 3:] = 1e3  # garbage in the padding must not matter
    a, _ = scaled_dot_product_attention(q, kv, kv, mask)
    b, _ = scaled_dot_product_attention(q, noisy, noisy, mask)
    assert torch.allclose(a, b)
    both = mask & causal_mask(5)
    assert both.shape == (2, 1, 5, 5)
    with pytest.raises(ValueError, match=r"\(batch, time\) boolean"):
        padding_mask(real.float())


def test_self_and_cross_attention_shapes():
    x = torch.randn(2, 7, 16)
    memory = torch.randn(2, 4, 16)
    out, weights = scaled_dot_product_attention(x, x, x)
    assert out.shape == (2, 7, 16) and weights.shape == (2, 7, 7)
    out, weights = scaled_dot_product_attention(x, memory, memory)
    assert out.shape == (2, 7, 16) and weights.shape == (2, 7, 4)


@pytest.mark.parametrize(
    "q_shape,k_shape,v_shape,match",
    [
        ((2, 5, 8), (2, 6, 7), (2, 6, 3), r"queries have d_k=8 .* keys have 7"),
        ((2, 5, 8), (2, 6, 8), (2, 4, 3), r"keys have T_k=6 .* values have 4"),
        ((2, 5, 8), (3, 6, 8), (3, 6, 3), r"leading \(batch, head\) dimensions must be equal"),
        ((8,), (6, 8), (6, 3), r"queries has shape \(8\), but at least 2"),
    ],
)
def test_shape_mismatches_are_explained(q_shape, k_shape, v_shape, match):
    with pytest.raises(ValueError, match=match):
        q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape)
        scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("fast", [False, True])
def test_bad_masks_are_explained(fast):
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 3)
    with pytest.raises(ValueError, match=r"\(batch, T_q, T_k\): its dimension 2 \(T_k: keys\) is 5, "
                                         r"expected 6 or 1"):
        scaled_dot_product_attention(q, k, v, torch.ones(2, 5, 5, dtype=torch.bool), fast=fast)
    with pytest.raises(ValueError, match=r"dimension 0 \(T_q: queries\) is 6, expected 5 or 1"):
        scaled_dot_product_attention(q, k, v, torch.ones(6, 6, dtype=torch.bool), fast=fast)
    with pytest.raises(ValueError, match=r"dimension 0 \(batch\) is 3, expected 2 or 1"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 1, 6, dtype=torch.bool), fast=fast)
    q4, k4, v4 = (t.unsqueeze(1).expand(2, 4, *t.shape[1:]) for t in (q, k, v))
    with pytest.raises(ValueError, match=r"dimension 1 \(heads\) is 3, expected 4 or 1"):
        scaled_dot_product_attention(q4, k4, v4, torch.ones(2, 3, 1, 6, dtype=torch.bool), fast=fast)
    with pytest.raises(ValueError, match="is_causal=True needs T_q <= T_k"):
        scaled_dot_product_attention(k, q, k[..., :5, :], is_causal=True, fast=fast)
    with pytest.raises(ValueError, match="mask has 4 dimensions"):
        scaled_dot_product_attention(q, k, v, torch.ones(2, 1, 1, 6, dtype=torch.bool), fast=fast)
    with pytest.raises(TypeError, match="mask must be a boolean tensor.*float32"):
        scaled_dot_product_attention(q, k, v, torch.zeros(2, 5, 6), fast=fast)
    with pytest.raises(TypeError, match="share one dtype"):
        scaled_dot_product_attention(q, k.double(), v, fast=fast)


def test_check_accepts_a_right_answer(capsys):
    def attention(queries, keys, values, mask=None):
        scores = queries @ keys.transpose(-2, -1) / queries.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return weights @ values, weights

    check_attention(attention)
    assert "✓ attention" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(ATTENTION_MISTAKES))
def test_check_names_each_mistake(name):
    mistake = ATTENTION_MISTAKES[name]
    with pytest.raises(CheckFailed) as failure:
        check_attention(mistake.implementation, quiet=True)
    assert f"Likely cause: {mistake.advice}" in str(failure.value)


def _attention_with(scores_of, mask_of=lambda mask: mask):
    """A right answer but for the scores (``scores_of(queries, keys)``) or the mask used in masked_fill."""
    def attention(queries, keys, values, mask=None):
        scores = scores_of(queries, keys) / queries.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask_of(mask), float("-inf"))
        weights = scores.softmax(-1)
        return weights @ values, weights
    return attention


@pytest.mark.parametrize("scores_of", [
    lambda q, k: q @ k.transpose(1, 2),  # wrong for 4-D inputs: a broadcast error
    lambda q, k: q @ k,  # no transpose: a matmul error
    lambda q, k: torch.matmul(q, k.transpose(0, 1)),
])
def test_check_explains_a_crash_in_the_product(scores_of):
    with pytest.raises(CheckFailed, match="keys were not transposed") as failure:
        check_attention(_attention_with(scores_of), quiet=True)
    assert "keys.transpose(-2, -1)" in str(failure.value) and "the mask" not in str(failure.value)


def test_check_blames_a_mask_that_does_not_broadcast_on_the_mask():
    transposed_mask = _attention_with(lambda q, k: q @ k.transpose(-2, -1), lambda mask: mask.transpose(-2, -1))
    with pytest.raises(CheckFailed, match="the mask does not broadcast against your scores") as failure:
        check_attention(transposed_mask, quiet=True)
    assert "keys were not transposed" not in str(failure.value)


def test_crash_hint_without_the_source_line_names_both_causes():
    error = RuntimeError("The size of tensor a (4) must match the size of tensor b (6) at non-singleton dimension 2")
    assert "Either the keys were transposed on the wrong dimensions" in _crash_hint(error)
    assert _crash_hint(RuntimeError("expected scalar type Float but found Double")) == ""


def test_check_explains_if_mask():
    def attention(queries, keys, values, mask=None):
        scores = queries @ keys.transpose(-2, -1) / queries.shape[-1] ** 0.5
        if mask:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return weights @ values, weights

    with pytest.raises(CheckFailed, match=r"Boolean value of Tensor.*\n.*write `if mask is not None:`"):
        check_attention(attention, quiet=True)


def test_check_inputs_vary():
    counter = [0]
    generator = torch.Generator().manual_seed(0)
    shapes = {len(attention_inputs(generator, counter)["queries"].shape) for _ in range(6)}
    assert shapes == {3, 4}


def test_check_says_an_unwritten_exercise_is_not_written_yet():
    def attention(queries, keys, values, mask=None):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="attention is not written yet"):
        check_attention(attention)


@pytest.mark.parametrize("fast", [False, True])
def test_a_3d_mask_on_4d_inputs_must_say_where_the_heads_go(fast):
    """(B, T_q, T_k) would broadcast against (heads, T_q, T_k): refused, with the fix."""
    q = torch.randn(3, 3, 4, 8, dtype=torch.float64)  # B = heads = 3: shapes alone cannot tell
    per_sentence = torch.ones(3, 4, 4, dtype=torch.bool)
    per_sentence[0, :, 2:] = False  # sentence 0 may only see keys 0 and 1
    with pytest.raises(ValueError, match=r"ambiguous.*mask.unsqueeze\(1\)"):
        scaled_dot_product_attention(q, q, q, per_sentence, fast=fast)
    out, _ = scaled_dot_product_attention(q, q, q, per_sentence.unsqueeze(1), fast=fast)
    expected, _ = scaled_dot_product_attention(q[0], q[0, :, :2], q[0, :, :2], fast=fast)
    assert torch.allclose(out[0], expected)  # every head of sentence 0 sees keys 0 and 1 only
    # A 3-D mask whose first dimension is 1 is not ambiguous.
    causal3 = causal_mask(4)[None]
    out, _ = scaled_dot_product_attention(q, q, q, causal3, fast=fast)
    assert torch.allclose(out, scaled_dot_product_attention(q, q, q, causal_mask(4), fast=fast)[0])


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("t_q, t_k", [(5, 5), (2, 6), (1, 4)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_is_causal_equals_the_explicit_causal_mask(fast, t_q, t_k, with_mask):
    """Including T_q < T_k, where PyTorch's own is_causal would line up top-left, not ours."""
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, t_q, 8, generator=generator, dtype=torch.float64)
    k = torch.randn(2, 3, t_k, 8, generator=generator, dtype=torch.float64)
    v = torch.randn(2, 3, t_k, 4, generator=generator, dtype=torch.float64)
    mask = padding_mask(torch.arange(t_k)[None, :] < torch.tensor([t_k, t_k - 1])[:, None]) \
        if with_mask else None
    explicit = causal_mask(t_q, t_k) if mask is None else mask & causal_mask(t_q, t_k)
    expected, _ = scaled_dot_product_attention(q, k, v, explicit)
    out, _ = scaled_dot_product_attention(q, k, v, mask, fast=fast, is_causal=True)
    assert relative_error(out, expected) <= 1e-10


def test_teaching_path_dropout():
    """Dropout acts on the weights whenever dropout_p > 0; the weights returned are before it."""
    q, k, v, mask = random_case(torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p=0.5)
    torch.manual_seed(0)
    expected = torch.nn.functional.dropout(weights, p=0.5) @ v
    assert torch.equal(out, expected)
    assert torch.allclose(weights.sum(-1), torch.ones((), dtype=weights.dtype))
    plain, _ = scaled_dot_product_attention(q, k, v, mask)
    assert not torch.allclose(out, plain)
    again, _ = scaled_dot_product_attention(q, k, v, mask, dropout_p=0.5)
    assert not torch.equal(out, again)  # no training flag here: pass dropout_p=0.0 to evaluate
    for fast in (False, True):
        a, _ = scaled_dot_product_attention(q, k, v, mask, fast=fast, dropout_p=0.0)
        b, _ = scaled_dot_product_attention(q, k, v, mask, fast=fast, dropout_p=0.0)
        assert torch.equal(a, b)


def test_check_does_not_mistake_sqrt_t_k_for_d_k():
    """Dividing by sqrt(T_k) is named as such, and never passes on coinciding sizes."""
    def sqrt_t_k(queries, keys, values, mask=None):
        scores = queries @ keys.transpose(-2, -1) / math.sqrt(keys.shape[-2])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return weights @ values, weights

    with pytest.raises(CheckFailed) as failure:
        check_attention(sqrt_t_k, quiet=True)
    message = str(failure.value)
    assert "trial 1 of" in message
    assert ATTENTION_MISTAKES["scaled by d_k"].advice not in message
    assert ATTENTION_MISTAKES["scaled by sqrt(T_k)"].advice in message


def test_check_inputs_never_have_coinciding_sizes():
    counter = [0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        inputs = attention_inputs(generator, counter)
        t_q, d_k = inputs["queries"].shape[-2:]
        t_k, d_v = inputs["values"].shape[-2:]
        sizes = [t_q, t_k, d_k, d_v]
        assert len(set(sizes)) == 4 and not any(a * a == b for a in sizes for b in sizes)


def test_check_names_a_mistake_only_if_it_matches_twice():
    """An answer that equals a known mistake on one input only gets no 'Likely cause'."""
    def sometimes_unscaled(queries, keys, values, mask=None):
        scale = 1.0 if queries.dim() == 3 else math.sqrt(queries.shape[-1]) * 3
        scores = queries @ keys.transpose(-2, -1) / scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return weights @ values, weights

    with pytest.raises(CheckFailed) as failure:
        check_attention(sometimes_unscaled, quiet=True)
    assert "Likely cause" not in str(failure.value)
    assert "the scores differ" in str(failure.value)  # the property hint still says which family


def test_property_hint_for_scaling_after_the_softmax():
    def scaled_after(queries, keys, values, mask=None):
        scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1) / math.sqrt(keys.shape[-2])  # not one of the known mistakes
        return weights @ values, weights

    with pytest.raises(CheckFailed) as failure:
        check_attention(scaled_after, quiet=True)
    message = str(failure.value)
    assert "Likely cause" not in message
    assert "Hint: every row of your weights sums to" in message


def test_property_hint_for_weight_on_masked_keys():
    def half_masked(queries, keys, values, mask=None):
        scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, -2.0)  # not -inf: masked keys keep some weight
        weights = scores.softmax(-1)
        return weights @ values, weights

    with pytest.raises(CheckFailed, match="your weights are not 0 at masked keys"):
        check_attention(half_masked, quiet=True)


def test_check_compares_the_output_with_torch(monkeypatch):
    """The reference output is PyTorch's own F.scaled_dot_product_attention."""
    import transformer_lesson.checks.attention as checks

    def shifted(*args, **kwargs):
        return F.scaled_dot_product_attention(*args, **kwargs) + 1.0

    monkeypatch.setattr(checks, "torch_sdpa", shifted)
    with pytest.raises(CheckFailed, match=r"attention\(...\)\[0\] has the right shape"):
        check_attention(lambda q, k, v, m=None: scaled_dot_product_attention(q, k, v, m), quiet=True)


def _mask_cases(generator, b, h, t_q, t_k):
    """Masks of every accepted layout, one with fully masked query rows."""
    per_query = torch.rand(b, h, t_q, t_k, generator=generator) < 0.6
    per_query[0, 0, 1] = False  # a row with no key at all
    real = torch.rand(b, t_k, generator=generator) < 0.8
    real[:, 0] = True
    return {
        "none": None,
        "keys only (T_k,)": torch.rand(t_k, generator=generator) < 0.7,
        "causal (T_q, T_k)": causal_mask(t_q, t_k),
        "padding (B, 1, 1, T_k)": padding_mask(real),
        "padding & causal (B, 1, T_q, T_k)": padding_mask(real) & causal_mask(t_q, t_k),
        "per query (B, H, T_q, T_k), a fully masked row": per_query,
    }


@pytest.mark.parametrize("block_scores", [1, 2 * 3 * 11, 2 * 3 * 11 * 4])
def test_query_blocks_give_the_same_numbers_and_gradients(monkeypatch, block_scores):
    """Long inputs are computed a block of query rows at a time; outputs, weights and gradients must not change."""
    import transformer_lesson.attention as attention

    generator = torch.Generator().manual_seed(11)
    b, h, t_q, t_k = 2, 3, 10, 11  # 10 rows: blocks of 1, 1 (one row of 66 scores), 4 (uneven last block)
    q, k, v = (torch.randn(b, h, t, 5, generator=generator, dtype=torch.float64) for t in (t_q, t_k, t_k))
    whole_matrix = attention.BLOCK_SCORES  # far more than 2 * 3 * 10 * 11 scores: one block
    for name, mask in _mask_cases(generator, b, h, t_q, t_k).items():
        results = []
        for block in (whole_matrix, block_scores):  # whole matrix (this size is small), then blocks
            monkeypatch.setattr(attention, "BLOCK_SCORES", block)
            inputs = [t.clone().requires_grad_() for t in (q, k, v)]
            out, weights = scaled_dot_product_attention(*inputs, mask)
            (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
            results.append((out, weights, *(t.grad for t in inputs)))
        for whole, blocked in zip(*results, strict=True):
            assert torch.isfinite(blocked).all(), name
            assert relative_error(blocked, whole) <= 1e-12, name


def test_need_weights_false_returns_no_weights_and_the_same_output(monkeypatch):
    import transformer_lesson.attention as attention

    q, k, v, mask = random_case(torch.Generator().manual_seed(12))
    for block in (attention.BLOCK_SCORES, 1):  # the tuple is built once, before any setattr
        monkeypatch.setattr(attention, "BLOCK_SCORES", block)
        out, weights = scaled_dot_product_attention(q, k, v, mask)
        out_only, none = scaled_dot_product_attention(q, k, v, mask, need_weights=False)
        assert weights is not None and none is None
        assert torch.equal(out, out_only)


def test_long_sequences_are_split_into_blocks_of_bounded_size(monkeypatch):
    """The block rule itself: at most BLOCK_SCORES scores per block, and one block when they fit."""
    import transformer_lesson.attention as attention

    seen = []
    original = attention._attention
    monkeypatch.setattr(attention, "_attention", lambda q, *rest: seen.append(q.shape[-2]) or original(q, *rest))
    q = torch.randn(2, 4, 100, 8)
    scaled_dot_product_attention(q, q, q)
    assert seen == [100]  # 2 * 4 * 100 * 100 scores fit in one block
    seen.clear()
    monkeypatch.setattr(attention, "BLOCK_SCORES", 2 * 4 * 100 * 30)
    scaled_dot_product_attention(q, q, q)
    assert seen == [30, 30, 30, 10]
