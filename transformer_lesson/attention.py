"""Scaled dot-product attention: every query position takes a weighted average of the values.

For queries Q (T_q, d_k), keys K (T_k, d_k) and values V (T_k, d_v)::

    scores  = Q K^T / sqrt(d_k)          # (T_q, T_k): how well query i matches key j
    weights = softmax(scores, over keys)  # each row sums to 1
    output  = weights V                  # (T_q, d_v)

Dividing by sqrt(d_k) keeps the scores' variance near 1 whatever d_k is; without it, large d_k
pushes the softmax into saturation (one weight near 1, the rest near 0, tiny gradients).

Masks follow the course convention: a boolean tensor, **True where a key may be attended** and
False where it may not (padding, or the future in a decoder). (``torch.nn.MultiheadAttention`` and
``nn.Transformer`` use the opposite polarity for their boolean masks: True = blocked.) A mask
broadcasts to (..., T_q, T_k): a causal mask is (T_q, T_k), a padding mask built by
:func:`padding_mask` is (B, 1, 1, T_k) for inputs with a heads dimension. A 3-D mask on inputs
with 4 or more dimensions is refused unless its first dimension is 1: (B, T_q, T_k) would be lined
up with (heads, T_q, T_k), not with the batch; write ``mask.unsqueeze(1)``.
``is_causal=True`` adds a causal mask (combined with ``mask`` by AND).
A query whose every key is masked has nothing to average: by definition its output is zeros and
its weights are zeros (softmax alone would give 0/0 = NaN).
A key the mask hides from every query (padding) never changes the output, even if it or its value
holds NaN or inf: both are set to zero before the product (a weight of 0 times NaN is still NaN).
A key hidden from some queries only (the causal mask) is seen by the others, so a NaN there is a
real NaN in the input.

One interface, two paths, chosen by ``fast``:

* ``fast=False``, the teaching path: the three lines above, written out. Returns the weights.
  Long sequences go a block of query rows at a time (each row depends on its own query only),
  so that no single (T_q, T_k) temporary grows huge; the numbers are the same.
* ``fast=True``: :func:`torch.nn.functional.scaled_dot_product_attention`, which fuses the steps
  (its fastest kernels never store the (T_q, T_k) weights). Returns ``None`` for the weights.

Both are tested to agree (float64: 1e-10 relative, float32: 1e-5).

``dropout_p`` is applied whenever it is above 0, like ``F.scaled_dot_product_attention``'s: this
function does not know whether the model is training, so pass 0.0 at evaluation time
(:class:`~transformer_lesson.multihead.MultiHeadAttention` does that for you in ``eval()`` mode).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _dim_names(n_dims: int) -> list[str]:
    """Names for the dimensions of a (..., T_q, T_k) score tensor with ``n_dims`` dimensions."""
    lead = {2: [], 3: ["batch"], 4: ["batch", "heads"]}.get(n_dims)
    if lead is None:
        lead = [f"leading {i}" for i in range(n_dims - 4)] + ["batch", "heads"]
    return [*lead, "T_q: queries", "T_k: keys"]


def check_attention_inputs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> None:
    """Raise ValueError/TypeError naming the wrong dimension when shapes or dtypes do not fit.

    Expected: queries (..., T_q, d_k), keys (..., T_k, d_k), values (..., T_k, d_v) with the same
    leading (batch, head) dimensions and one floating dtype; ``mask`` boolean and broadcastable to
    (..., T_q, T_k); with 4-D (batch, heads, ...) inputs a 3-D mask must be (1, T_q, T_k).
    ``is_causal`` needs T_q <= T_k (the queries are the last T_q positions).
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
    if is_causal and queries.shape[-2] > keys.shape[-2]:
        raise ValueError(
            f"is_causal=True needs T_q <= T_k: the {queries.shape[-2]} queries are taken to be the "
            f"last positions of the {keys.shape[-2]} keys."
        )
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(
            f"mask must be a boolean tensor (True = may attend), got {got}. An additive mask of "
            f"0 / -inf converts with `mask == 0`; a mask from nn.MultiheadAttention / "
            f"nn.Transformer (True = blocked) with `~mask`."
        )
    target = (*queries.shape[:-1], keys.shape[-2])
    names = _dim_names(len(target))
    layout = "(" + ", ".join(n.split(":")[0] for n in names) + ")"
    if mask.dim() > len(target):
        raise ValueError(
            f"mask has {mask.dim()} dimensions, shape {_shape(mask)}, but must broadcast to "
            f"{tuple(target)} {layout}, which has {len(target)}."
        )
    if len(target) >= 4 and mask.dim() == 3 and mask.shape[0] != 1:
        raise ValueError(
            f"mask of shape {_shape(mask)} is ambiguous for inputs of shape {tuple(target)} "
            f"{layout}: broadcasting lines a 3-D mask up with the last three dimensions, so its "
            f"first dimension would count as heads, not as the batch. For one mask per sentence "
            f"(batch, T_q, T_k) use `mask.unsqueeze(1)` (batch, 1, T_q, T_k); for one mask per "
            f"head shared by the batch use `mask.unsqueeze(0)`."
        )
    for offset in range(1, mask.dim() + 1):
        size, want = mask.shape[-offset], target[-offset]
        if size not in (1, want):
            raise ValueError(
                f"mask of shape {_shape(mask)} does not broadcast to {tuple(target)} {layout}: its "
                f"dimension {mask.dim() - offset} ({names[-offset]}) is {size}, expected {want} "
                f"or 1."
            )


BLOCK_SCORES = 2**22
"""How many (T_q, T_k) scores, all batch and head dimensions together, the teaching path computes
at once; for more, it takes the queries a block of rows at a time (at least one row per block)."""


def scaled_dot_product_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    fast: bool = False,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    need_weights: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of every query over all keys.

    Shapes: queries (..., T_q, d_k), keys (..., T_k, d_k), values (..., T_k, d_v),
    mask boolean broadcastable to (..., T_q, T_k), True = may attend (a 3-D mask on 4-D inputs
    must be (1, T_q, T_k): use ``mask.unsqueeze(1)`` for (B, T_q, T_k)).
    ``is_causal=True`` also hides every key in a query's future, as ``causal_mask(T_q, T_k)``
    does (the queries are the *last* T_q positions), combined with ``mask`` by AND.
    Returns ``(output, weights)``: output (..., T_q, d_v); weights (..., T_q, T_k) (before dropout)
    on the teaching path and ``None`` on the fast path, whose kernels do not return them.
    Fully masked query rows give zeros in both output and weights.
    ``dropout_p`` drops attention weights whenever it is above 0, training or not (this function
    cannot tell): pass 0.0 at evaluation time. ``need_weights=False`` returns ``None`` for the
    weights on the teaching path too, which saves assembling them for long sequences.
    """
    check_attention_inputs(queries, keys, values, mask, is_causal)
    t_q, t_k = queries.shape[-2], keys.shape[-2]
    if mask is not None:
        keys, values = _zero_hidden_keys(keys, values, mask)
    if fast:
        if is_causal and mask is None and t_q == t_k:
            # SDPA's own is_causal lines the mask up top-left; with T_q == T_k that is ours.
            output = F.scaled_dot_product_attention(
                queries, keys, values, dropout_p=dropout_p, is_causal=True
            )
            return output, None
        if is_causal:
            mask = _with_causal(mask, t_q, t_k, queries.device)
        return _fast_attention(queries, keys, values, mask, dropout_p), None

    if is_causal:
        mask = _with_causal(mask, t_q, t_k, queries.device)
    # Rows with no key to attend to get zeros. Asked once per call: on a GPU, reading the answer
    # waits for the device.
    zero_empty_rows = mask is not None and not bool(mask.any(dim=-1).all())
    # A query's row of weights depends on that query alone, so the rows can be computed a block
    # at a time, with the same numbers. Long sequences are: a block's scores hold about
    # BLOCK_SCORES numbers (16 MB in float32; never less than one row), which bounds the memory of
    # the temporaries and, on CPU, is faster than one huge tensor (fresh memory of that size costs
    # a page fault per 4 kB; see docs/benchmarks.md). Short sequences make one block.
    scores_per_row = max(1, math.prod(queries.shape[:-2]) * t_k)  # one query, every batch and head
    rows = max(1, BLOCK_SCORES // scores_per_row)
    if rows >= t_q:
        output, weights = _attention(queries, keys, values, mask, dropout_p, zero_empty_rows)
        return output, weights if need_weights else None
    outputs, weights = [], []
    for first in range(0, t_q, rows):
        block_queries = queries[..., first : first + rows, :]  # (..., rows, d_k)
        block_mask = _query_rows(mask, first, rows)
        out, w = _attention(block_queries, keys, values, block_mask, dropout_p, zero_empty_rows)
        outputs.append(out)
        weights.append(w if need_weights else None)
    output = torch.cat(outputs, dim=-2)  # (..., T_q, d_v)
    return output, torch.cat(weights, dim=-2) if need_weights else None


def _zero_hidden_keys(keys, values, mask):
    """Keys and values with every position that no query may see set to 0 (so NaN there cannot leak).

    One pass over K and V (T_k·d numbers), small next to attention's T_q·T_k·d; no check for
    NaN first, which on a GPU would wait for the device.
    """
    seen = mask.any(dim=-2) if mask.dim() >= 2 else mask  # (..., T_k): some query may see key j
    hidden = ~seen.unsqueeze(-1)  # (..., T_k, 1)
    return keys.masked_fill(hidden, 0.0), values.masked_fill(hidden, 0.0)


def _query_rows(mask, first, rows):
    """Rows first:first+rows of a mask broadcastable to (..., T_q, T_k) (one row: all of it)."""
    if mask is None or mask.dim() < 2 or mask.shape[-2] == 1:
        return mask
    return mask[..., first : first + rows, :]


def _attention(queries, keys, values, mask, dropout_p, zero_empty_rows):
    """The teaching path for one block of query rows: returns (output, weights)."""
    d_k = queries.shape[-1]
    # Q K^T / sqrt(d_k), with the scale applied to Q: the same numbers, T_k times fewer divisions.
    scores = (queries / math.sqrt(d_k)) @ keys.transpose(-2, -1)  # (..., T_q, T_k)
    if mask is not None:
        # The mask as an additive bias: 0 where a key may be attended, and a huge negative number
        # where it may not, half the most negative finite number of the dtype (finfo.min / 2).
        # Why not -inf: for a row with at least one allowed key the weights are the same
        # (exp(min/2 - max) is exactly 0), but a row with *no* allowed key becomes a finite softmax
        # instead of 0/0 = NaN, so nothing is NaN forwards or backwards (such rows are zeroed
        # below). Why half: score + finfo.min would overflow to -inf for any negative score, which
        # in float16 (finfo.min = -65504) is a score of -16 or less. Why not a constant like -1e9:
        # it is -inf in float16, while finfo.min / 2 fits every dtype.
        # Adding the bias in place is cheaper than masked_fill: no new (T_q, T_k) tensor when the
        # mask broadcasts (a padding mask), and the backward pass of an addition costs nothing.
        bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
        scores += bias.masked_fill_(~mask, torch.finfo(scores.dtype).min / 2)  # the mask's size
    weights = torch.softmax(scores, dim=-1)  # normalise over the keys
    if zero_empty_rows:  # some row has no key: its meaningless weights become zeros
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ values, weights  # (..., T_q, d_v), (..., T_q, T_k)


def _with_causal(mask, n_queries, n_keys, device):
    causal = causal_mask(n_queries, n_keys, device=device)
    return causal if mask is None else mask & causal


def _fast_attention(queries, keys, values, mask, dropout_p):
    """The same computation through PyTorch's fused kernel, with fully masked rows set to zero."""
    if mask is None:
        return F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout_p)
    # Kernels differ on rows with no allowed key (some return NaN). Let such rows attend to
    # everything, so that every intermediate (and gradient) is finite, then zero their output.
    # (No `if has_key.all()` shortcut here: on a GPU that would wait for the device every call.)
    has_key = mask.any(dim=-1, keepdim=True)  # (..., T_q, 1)
    attn_mask = mask | ~has_key
    # A mask broadcast over the keys (last dimension 1, e.g. (B, 1, T_q, 1)) is widened to T_k (a
    # view, no copy): torch 2.4's CPU kernel read such a mask wrongly (different numbers on every call).
    attn_mask = attn_mask.expand(*attn_mask.shape[:-1], keys.shape[-2])
    output = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=attn_mask, dropout_p=dropout_p
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
    (B, 1, S, S). For inputs without a heads dimension, (B, T, d), the padding mask is
    (B, 1, S): ``padding_mask(real)[:, 0]``.
    """
    if not isinstance(real, torch.Tensor) or real.dtype != torch.bool or real.dim() != 2:
        is_tensor = isinstance(real, torch.Tensor)
        desc = f"{real.dtype} {_shape(real)}" if is_tensor else type(real).__name__
        raise ValueError(
            f"padding_mask expects a (batch, time) boolean tensor, True at real tokens; got {desc}."
        )
    return real[:, None, None, :]
