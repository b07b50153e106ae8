"""Multi-head attention: several small attentions side by side, each free to follow its own thing.

One attention computes one weighted average per query, so it can follow one relationship at a
time. Multi-head attention projects the input into ``n_heads`` smaller (queries, keys, values),
of ``d_head = d_model / n_heads`` features each, runs attention in every head at once, puts the
heads' outputs side by side again and mixes them with an output projection::

    (B, T, d_model) --project--> (B, T, d_model) --split--> (B, n_heads, T, d_head)
        --attention--> (B, n_heads, T_q, d_head) --merge--> (B, T_q, d_model) --project--> out

The projections are the same size as for one big head, so splitting costs no parameters.

The weights are laid out like :class:`torch.nn.MultiheadAttention`'s (one ``in_proj`` holding
W_q, W_k, W_v stacked, then ``out_proj``), so :meth:`MultiHeadAttention.load_from_torch` copies
them over unchanged. Masks follow the course convention (True = may attend).

The mask contract (one rule for :meth:`MultiHeadAttention.forward`, :meth:`~MultiHeadAttention.attend`
and :func:`attention_heads_loop`): a 2-D mask is **(T_q, T_k), shared by every sentence** (a causal
mask); one mask per sentence carries the batch first, (B, T_q, T_k) or (B, 1 or n_heads, T_q, T_k),
such as ``padding_mask(real)`` (B, 1, 1, T_k). A raw (B, T_k) real-token mask (``Batch.src_mask``)
is not a mask of this kind: when B differs from T_q it cannot broadcast and the error says to
use ``padding_mask``; when B equals T_q the two readings have the same shape, so a 2-D mask whose
rows look like real-token masks (True then False) and differ from one another is refused as
ambiguous, unless it is the causal mask itself (read as (T_q, T_k), as every 2-D mask is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import causal_mask, scaled_dot_product_attention
from .validation import require_int, require_tensor


def heads_mask(mask: torch.Tensor | None, batch: int, n_queries: int, n_keys: int) -> torch.Tensor | None:
    """A multi-head attention mask checked against the contract above; (B, T_q, T_k) gains a heads dimension.

    Returns None, a 2-D (T_q, T_k) mask, or a 4-D (B or 1, 1 or n_heads, T_q or 1, T_k) one.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        return mask  # scaled_dot_product_attention says what a mask must be
    if mask.dim() == 3:  # (B, T_q, T_k): one mask per sentence
        return mask.unsqueeze(1)  # (B, 1, T_q, T_k), the same for every head
    if mask.dim() != 2 or tuple(mask.shape) != (batch, n_keys) or batch == 1:
        return mask
    fix = ("for one mask per sentence pass padding_mask(real) (B, 1, 1, T_k); for one (T_q, T_k) mask shared "
           "by every sentence, mask[None] (1, T_q, T_k)")
    if batch != n_queries:
        raise ValueError(f"mask of shape {tuple(mask.shape)} looks like a (batch, keys) real-token mask, but a 2-D "
                         f"mask is (T_q={n_queries}, T_k={n_keys}): {fix}.")
    rows_differ = not bool((mask == mask[:1]).all())
    right_padded = bool((mask[:, :1] & (mask[:, :-1] >= mask[:, 1:]).all(dim=1, keepdim=True)).all())
    if rows_differ and right_padded and not torch.equal(mask, causal_mask(n_queries, n_keys, device=mask.device)):
        raise ValueError(f"mask of shape {tuple(mask.shape)} is ambiguous: with batch = T_q = {batch} it could be a "
                         f"(batch, keys) real-token mask or a (T_q, T_k) mask, and it looks like the first. A 2-D "
                         f"mask is read as (T_q, T_k): {fix}.")
    return mask


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, d_model) -> (B, n_heads, T, d_head): head h gets features h*d_head:(h+1)*d_head."""
    require_tensor(x, "split_heads' x", ndim=3, layout="(batch, time, d_model)")
    n_heads = require_int(n_heads, "n_heads", at_least=1)
    batch, time, d_model = x.shape
    if d_model % n_heads != 0:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}.")
    return x.view(batch, time, n_heads, d_model // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, n_heads, T, d_head) -> (B, T, n_heads * d_head): the inverse of :func:`split_heads`."""
    require_tensor(x, "merge_heads' x", ndim=4, layout="(batch, n_heads, time, d_head)")
    batch, n_heads, time, d_head = x.shape
    return x.transpose(1, 2).reshape(batch, time, n_heads * d_head)


class MultiHeadAttention(nn.Module):
    """Multi-head attention, batch-first, for self-attention and cross-attention.

    ``fast`` picks the attention path (see :mod:`transformer_lesson.attention`); it is a plain
    attribute, so ``mha.fast = False`` switches an existing module. ``dropout`` drops attention
    weights during training (``self.training``), never in ``eval()`` mode.

    For decoding with a key/value cache the two halves of :meth:`forward` are public:
    :meth:`project_keys_values` turns inputs into per-head keys and values once, and
    :meth:`attend` lets new queries attend over them (concatenate cached and new keys/values
    along dimension 2, the time dimension of (B, n_heads, T_k, d_head)).
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, fast: bool = True
    ):
        super().__init__()
        if n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} must be divisible by n_heads={n_heads}: each head gets "
                f"d_model / n_heads features. Try n_heads in "
                f"{[h for h in range(1, d_model + 1) if d_model % h == 0][:8]}."
            )
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout, self.fast = dropout, fast
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)  # W_q, W_k, W_v stacked
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def project(
        self, queries_in: torch.Tensor, keys_in: torch.Tensor, values_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input projections, each (B, T, d_model); one matmul when the inputs coincide."""
        d = self.d_model
        if queries_in is keys_in and keys_in is values_in:  # self-attention: one product
            return self.in_proj(queries_in).chunk(3, dim=-1)
        queries = self._rows_of_in_proj(queries_in, 0, d)
        keys, values = self._project_kv(keys_in, values_in)
        return queries, keys, values

    def _project_kv(self, keys_in, values_in):
        d = self.d_model
        if keys_in is values_in:  # one memory for both: one product
            return self._rows_of_in_proj(keys_in, d, 3 * d).chunk(2, dim=-1)
        return self._rows_of_in_proj(keys_in, d, 2 * d), self._rows_of_in_proj(values_in, 2 * d, 3 * d)

    def _rows_of_in_proj(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """``x`` through rows first:last of ``in_proj`` (W_q is rows 0:d, W_k d:2d, W_v 2d:3d)."""
        bias = None if self.in_proj.bias is None else self.in_proj.bias[first:last]
        return F.linear(x, self.in_proj.weight[first:last], bias)

    def project_keys_values(
        self, keys_in: torch.Tensor, values_in: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys and values, each (B, n_heads, T_k, d_head), from (B, T_k, d_model) inputs.

        ``values_in`` defaults to ``keys_in``. Compute them once for a memory that does not change
        (cross-attention in a decoder), or one new position at a time for a self-attention cache.
        """
        values_in = keys_in if values_in is None else values_in
        self._check_inputs(keys_in, keys_in, values_in)
        keys, values = self._project_kv(keys_in, values_in)
        return split_heads(keys, self.n_heads), split_heads(values, self.n_heads)

    def attend(
        self,
        queries_in: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``queries_in`` (B, T_q, d_model) over projected ``keys`` and ``values``.

        ``keys`` and ``values`` are (B, n_heads, T_k, d_head), as :meth:`project_keys_values`
        returns them (possibly concatenated with cached ones along dimension 2). ``mask``,
        ``need_weights`` and ``is_causal`` as in :meth:`forward`; with a cache, the new queries
        are the last T_q positions, so ``causal_mask(T_q, T_k)`` or ``is_causal=True`` hides the
        future correctly.
        """
        self._check_queries(queries_in)
        expected = (queries_in.shape[0], self.n_heads, None, self.d_head)
        for name, t in (("keys", keys), ("values", values)):
            require_tensor(t, name)
            if t.dim() != 4 or any(e is not None and s != e for s, e in zip(t.shape, expected, strict=True)):
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)}, but (batch={expected[0]}, "
                    f"n_heads={self.n_heads}, T_k, d_head={self.d_head}) was expected: use "
                    f"project_keys_values()."
                )
        queries = split_heads(self._rows_of_in_proj(queries_in, 0, self.d_model), self.n_heads)
        return self._attend_heads(queries, keys, values, mask, need_weights, is_causal)

    def _attend_heads(self, queries, keys, values, mask, need_weights, is_causal):
        """Attention in every head, (B, nh, T, dh) each, then merge and output projection."""
        mask = heads_mask(mask, queries.shape[0], queries.shape[2], keys.shape[2])
        heads, weights = scaled_dot_product_attention(
            queries, keys, values, mask,
            fast=self.fast and not need_weights,
            need_weights=need_weights,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, nh, T_q, dh)
        return self.out_proj(merge_heads(heads)), weights if need_weights else None

    def forward(
        self,
        queries_in: torch.Tensor,
        keys_in: torch.Tensor | None = None,
        values_in: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``queries_in`` (B, T_q, d_model) over ``keys_in``, ``values_in`` (B, T_k, d).

        ``keys_in`` defaults to ``queries_in`` and ``values_in`` to ``keys_in``, so ``mha(x)`` is
        self-attention. ``mask`` is boolean, True = may attend, of shape (T_q, T_k) (the same for
        every sentence, e.g. a causal mask), (B, T_q, T_k) (one per sentence; a heads dimension is
        added) or (B, 1 or n_heads, T_q, T_k), e.g. (B, 1, 1, T_k) from
        :func:`~transformer_lesson.attention.padding_mask`. ``is_causal=True`` also hides the future
        (AND with ``mask``).
        Returns the output (B, T_q, d_model) and, if ``need_weights``, the per-head weights
        (B, n_heads, T_q, T_k), else None. Asking for weights uses the teaching path for this call,
        because PyTorch's fused kernels do not return them.

        The same as ``attend(queries_in, *project_keys_values(keys_in, values_in), ...)``; for
        self-attention the three projections are one matrix product.
        """
        keys_in = queries_in if keys_in is None else keys_in
        values_in = keys_in if values_in is None else values_in
        self._check_inputs(queries_in, keys_in, values_in)
        if not (queries_in is keys_in and keys_in is values_in):
            keys, values = self.project_keys_values(keys_in, values_in)
            return self.attend(queries_in, keys, values, mask, need_weights, is_causal)
        queries, keys, values = (split_heads(t, self.n_heads) for t in self.project(queries_in, keys_in, values_in))
        return self._attend_heads(queries, keys, values, mask, need_weights, is_causal)

    def _weights_dtype_device(self) -> dict:
        """The dtype and device an input must have: the weights' (any floating dtype under autocast)."""
        weight = self.in_proj.weight
        autocast = torch.is_autocast_enabled(weight.device.type)
        return {"dtype": None if autocast else weight.dtype, "device": weight.device}

    def _check_queries(self, queries_in) -> None:
        require_tensor(queries_in, "queries_in", floating=True, **self._weights_dtype_device())
        if queries_in.dim() != 3 or queries_in.shape[-1] != self.d_model:
            raise ValueError(
                f"queries_in has shape {tuple(queries_in.shape)}, but (batch, time, "
                f"d_model={self.d_model}) was expected (batch first)."
            )

    def _check_inputs(self, queries_in, keys_in, values_in) -> None:
        expected = self._weights_dtype_device()
        for name, x in (("queries_in", queries_in), ("keys_in", keys_in), ("values_in", values_in)):
            require_tensor(x, name, floating=True, **expected)
            if x.dim() != 3 or x.shape[-1] != self.d_model:
                raise ValueError(
                    f"{name} has shape {tuple(x.shape)}, but (batch, time, d_model={self.d_model}) "
                    f"was expected (batch first)."
                )
        if keys_in.shape[1] != values_in.shape[1]:
            raise ValueError(
                f"keys_in has {keys_in.shape[1]} positions (dimension 1) but values_in has "
                f"{values_in.shape[1]}: each key needs one value."
            )
        if not queries_in.shape[0] == keys_in.shape[0] == values_in.shape[0]:
            raise ValueError(
                f"Batch sizes (dimension 0) differ: queries_in {queries_in.shape[0]}, keys_in "
                f"{keys_in.shape[0]}, values_in {values_in.shape[0]}."
            )

    @classmethod
    def load_from_torch(
        cls, torch_mha: nn.MultiheadAttention, fast: bool = True
    ) -> MultiHeadAttention:
        """A copy of ``torch_mha``'s weights in this class (same device, dtype and dropout).

        ``torch_mha`` may be ``batch_first=True`` or ``False``: the weights do not depend on the
        layout. The module returned is always batch-first, (B, T, d_model), so feed it
        ``x.transpose(0, 1)`` where the PyTorch module took (T, B, d_model).
        Only the common configuration is supported: one embedding size for queries, keys and
        values, and no ``add_bias_kv`` / ``add_zero_attn``. Remember that PyTorch's boolean masks
        mean the opposite of ours for ``nn.MultiheadAttention`` (True = *not* allowed).
        """
        if not torch_mha._qkv_same_embed_dim:
            raise ValueError("torch_mha has kdim/vdim different from embed_dim: not supported.")
        if torch_mha.bias_k is not None or torch_mha.add_zero_attn:
            raise ValueError("torch_mha uses add_bias_kv or add_zero_attn: not supported.")
        bias = torch_mha.in_proj_bias is not None
        weight = torch_mha.in_proj_weight
        mha = cls(torch_mha.embed_dim, torch_mha.num_heads, torch_mha.dropout, bias, fast)
        mha.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            mha.in_proj.weight.copy_(weight)
            mha.out_proj.weight.copy_(torch_mha.out_proj.weight)
            if bias:
                mha.in_proj.bias.copy_(torch_mha.in_proj_bias)
                mha.out_proj.bias.copy_(torch_mha.out_proj.bias)
        return mha

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, "
            f"dropout={self.dropout}, fast={self.fast}"
        )


def attention_heads_loop(
    mha: MultiHeadAttention,
    queries_in: torch.Tensor,
    keys_in: torch.Tensor,
    values_in: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same as ``mha(queries_in, keys_in, values_in, mask)[0]`` in ``eval()`` mode (no
    dropout), one head after another.

    Shown in lesson 05 only to be timed against the batched version: each head projects its own
    slice of W_q, W_k, W_v and runs its own attention, in a Python loop.
    Shapes: (B, T_q, d_model), (B, T_k, d_model) x 2 -> (B, T_q, d_model).
    """
    mask = heads_mask(mask, queries_in.shape[0], queries_in.shape[1], keys_in.shape[1])
    if mask is not None and mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError("attention_heads_loop needs a mask that is the same for every head.")
        mask = mask[:, 0]  # (B, 1 or T_q, T_k)
    d, dh = mha.d_model, mha.d_head
    outputs = []
    for h in range(mha.n_heads):
        first = h * dh  # head h owns rows first:first+dh of each of W_q, W_k, W_v
        queries = mha._rows_of_in_proj(queries_in, first, first + dh)  # (B, T_q, dh)
        keys = mha._rows_of_in_proj(keys_in, d + first, d + first + dh)  # (B, T_k, dh)
        values = mha._rows_of_in_proj(values_in, 2 * d + first, 2 * d + first + dh)  # (B, T_k, dh)
        out, _ = scaled_dot_product_attention(queries, keys, values, mask, fast=mha.fast)
        outputs.append(out)
    return mha.out_proj(torch.cat(outputs, dim=-1))  # (B, T_q, d_model)
