"""Scaled dot-product attention: every query position takes a weighted average of the values.

For queries Q (T_q, d_k), keys K (T_k, d_k) and values V (T_k, d_v)::

    scores  = Q K^T / sqrt(d_k)          # (T_q, T_k): how well query i matches key j
    weights = softmax(scores, over keys)  # each row sums to 1
    output  = weights V                  # (T_q, d_v)

Dividing by sqrt(d_k) keeps the scores' variance near 1 whatever d_k is; without it, large d_k
pushes the softmax into saturation (one weight near 1, the rest near 0, tiny gradients).

Masks follow the course convention: a boolean tensor, **True where a key may be attended** and
False where it may not (padding, or the future in a decoder). It broadcasts to
(..., T_q, T_k): a causal mask is (T_q, T_k), a padding mask built by :func:`padding_mask` is
(B, 1, 1, T_k). A query whose every key is masked has nothing to average: by definition its output
is zeros and its weights are zeros (softmax alone would give 0/0 = NaN).

One interface, two paths, chosen by ``fast``:

* ``fast=False``, the teaching path: the three lines above, written out. Returns the weights.
* ``fast=True``: :func:`torch.nn.functional.scaled_dot_product_attention`, which fuses the steps
  (its fastest kernels never store the (T_q, T_k) weights). Returns ``None`` for the weights.

Both are tested to agree (float64: 1e-10 relative, float32: 1e-5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_attention_inputs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> None:
    """Raise ValueError/TypeError naming the wrong dimension when shapes or dtypes do not fit.

    Expected: queries (..., T_q, d_k), keys (..., T_k, d_k), values (..., T_k, d_v) with the same
    leading (batch, head) dimensions and one floating dtype; ``mask`` boolean and broadcastable to
    (..., T_q, T_k).
    """
    for name, t in (("queries", queries), ("keys", keys), ("values", values)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() < 2:
            raise ValueError(
                f"{name} has shape {_shape(t)}, but at least 2 dimensions (..., time, features) "
                f"are needed."
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}.")
    if not queries.dtype == keys.dtype == values.dtype:
        raise TypeError(
            f"queries, keys and values must share one dtype, got {queries.dtype}, {keys.dtype} "
            f"and {values.dtype}."
        )
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(
            f"queries have d_k={queries.shape[-1]} features (last dimension) but keys have "
            f"{keys.shape[-1]}: a query and a key are compared by a dot product, so their last "
            f"dimensions must match (queries {_shape(queries)}, keys {_shape(keys)})."
        )
    if keys.shape[-2] != values.shape[-2]:
        raise ValueError(
            f"keys have T_k={keys.shape[-2]} positions (dimension -2) but values have "
            f"{values.shape[-2]}: each key needs exactly one value (keys {_shape(keys)}, "
            f"values {_shape(values)})."
        )
    if not queries.shape[:-2] == keys.shape[:-2] == values.shape[:-2]:
        raise ValueError(
            f"The leading (batch, head) dimensions must be equal: queries {_shape(queries)}, keys "
            f"{_shape(keys)}, values {_shape(values)}."
        )
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(
            f"mask must be a boolean tensor (True = may attend), got {got}. An additive mask of "
            f"0 / -inf converts with `mask == 0`."
        )
    target = (*queries.shape[:-1], keys.shape[-2])
    names = ["dim"] * (len(target) - 2) + ["T_q (queries)", "T_k (keys)"]
    if mask.dim() > len(target):
        raise ValueError(
            f"mask has {mask.dim()} dimensions, shape {_shape(mask)}, but must broadcast to "
            f"{tuple(target)} (..., T_q, T_k), which has {len(target)}."
        )
    for offset in range(1, mask.dim() + 1):
        size, want = mask.shape[-offset], target[-offset]
        if size not in (1, want):
            raise ValueError(
                f"mask of shape {_shape(mask)} does not broadcast to {tuple(target)} "
                f"(..., T_q, T_k): its dimension {mask.dim() - offset} ({names[-offset]}) is "
                f"{size}, expected {want} or 1."
            )


def scaled_dot_product_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    fast: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of every query over all keys.

    Shapes: queries (..., T_q, d_k), keys (..., T_k, d_k), values (..., T_k, d_v),
    mask boolean broadcastable to (..., T_q, T_k), True = may attend.
    Returns ``(output, weights)``: output (..., T_q, d_v); weights (..., T_q, T_k) (before dropout)
    on the teaching path and ``None`` on the fast path, whose kernels do not return them.
    Fully masked query rows give zeros in both output and weights.
    ``dropout_p`` drops attention weights (pass 0.0 at evaluation time).
    """
    check_attention_inputs(queries, keys, values, mask)
    if fast:
        return _fast_attention(queries, keys, values, mask, dropout_p), None

    d_k = queries.shape[-1]
    # Q K^T / sqrt(d_k), with the scale applied to Q: the same numbers, T_k times fewer divisions.
    scores = (queries / math.sqrt(d_k)) @ keys.transpose(-2, -1)  # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # exp(-inf) = 0: no weight there
    weights = torch.softmax(scores, dim=-1)  # normalise over the keys
    if mask is not None:
        # A row with every key masked is softmax(-inf, ..., -inf) = 0/0 = NaN: zero it instead.
        weights = weights.masked_fill(~mask, 0.0)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ values, weights  # (..., T_q, d_v), (..., T_q, T_k)


def _fast_attention(queries, keys, values, mask, dropout_p):
    """The same computation through PyTorch's fused kernel, with fully masked rows set to zero."""
    if mask is None:
        return F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout_p)
    # Kernels differ on rows with no allowed key (some return NaN). Let such rows attend to
    # everything, so that every intermediate (and gradient) is finite, then zero their output.
    has_key = mask.any(dim=-1, keepdim=True)  # (..., T_q, 1)
    output = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=mask | ~has_key, dropout_p=dropout_p
    )
    return output.masked_fill(~has_key, 0.0)


def causal_mask(
    n_queries: int, n_keys: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask, True where key j is not in query i's future.

    With ``n_keys`` larger than ``n_queries`` the queries are taken to be the *last* n_queries
    positions (as when new tokens attend to cached keys), so query i may see keys
    ``0 .. i + n_keys - n_queries``.
    """
    n_keys = n_queries if n_keys is None else n_keys
    if n_queries < 1 or n_keys < n_queries:
        raise ValueError(f"Need 1 <= n_queries <= n_keys, got {n_queries} and {n_keys}.")
    query_pos = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]
    key_pos = torch.arange(n_keys, device=device)[None, :]
    return key_pos <= query_pos


def padding_mask(real: torch.Tensor) -> torch.Tensor:
    """(B, S) boolean, True at real tokens -> (B, 1, 1, S), which broadcasts over heads and queries.

    Combine it with a causal mask by ``&``: ``padding_mask(real) & causal_mask(S)`` is
    (B, 1, S, S).
    """
    if not isinstance(real, torch.Tensor) or real.dtype != torch.bool or real.dim() != 2:
        is_tensor = isinstance(real, torch.Tensor)
        desc = f"{real.dtype} {_shape(real)}" if is_tensor else type(real).__name__
        raise ValueError(
            f"padding_mask expects a (batch, time) boolean tensor, True at real tokens; got {desc}."
        )
    return real[:, None, None, :]
