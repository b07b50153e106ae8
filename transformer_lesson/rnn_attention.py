"""Attention for RNNs: the decoder looks at every encoder state, not one summary (Bahdanau et al., 2015).

At each step the decoder scores every source position against its current hidden state, turns
the scores into weights with a softmax (masked so padding gets weight 0), and reads the
weighted average of the encoder states: a *context* made fresh for every target word. The
weights are an alignment between target and source that we can draw as a heatmap.

The scoring function here is *additive*: ``score(q, k) = v^T tanh(W_q q + W_k k)``, a one-layer
MLP. Lesson 04 replaces it with a scaled dot product, which is cheaper and runs as one matrix
product for all positions at once.
"""

from __future__ import annotations

import torch
from torch import nn

from .seq2seq import GRUEncoder, Seq2SeqConfig, expect_batch_first_hidden, expect_last_tokens


def additive_scores(
    query: torch.Tensor, keys: torch.Tensor, W_query: torch.Tensor, W_key: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Bahdanau's score of every key for one query: ``e_j = v . tanh(W_query q + W_key k_j)``.

    ``query`` (B, Hq), ``keys`` (B, S, Hk), ``W_query`` (A, Hq), ``W_key`` (A, Hk), ``v`` (A,).
    Returns the scores (B, S), before any mask or softmax.
    """
    projected = keys @ W_key.T + (query @ W_query.T)[:, None, :]  # (B, S, A)
    return torch.tanh(projected) @ v  # (B, S)


def additive_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor,
    W_query: torch.Tensor,
    W_key: torch.Tensor,
    v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bahdanau attention for one decoder step.

    ``query`` (B, Hq) is the decoder state, ``keys`` (B, S, Hk) the encoder states (they are the
    values too), ``mask`` (B, S) True at real source tokens, ``W_query`` (A, Hq), ``W_key``
    (A, Hk), ``v`` (A,). Returns ``context`` (B, Hk), the weighted sum of the keys, and
    ``weights`` (B, S), which sum to 1 over the real positions and are 0 at padding.
    """
    scores = additive_scores(query, keys, W_query, W_key, v)  # (B, S)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # exp() of it is 0
    weights = torch.softmax(scores, dim=-1)  # (B, S)
    context = (weights[:, :, None] * keys).sum(dim=1)  # (B, Hk)
    return context, weights


class AdditiveAttention(nn.Module):
    """:func:`additive_attention` with learned weights.

    ``forward(query (B, Hq), keys (B, S, Hk), mask (B, S), projected_keys (B, S, A) | None)
    -> (context (B, Hk), weights (B, S))``. ``W_k keys`` does not change while one sentence is
    decoded, so :meth:`project_keys` computes it once and the decoder passes it back each step.
    """

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int):
        super().__init__()
        self.W_query = nn.Linear(query_dim, attention_dim, bias=False)
        self.W_key = nn.Linear(key_dim, attention_dim, bias=False)
        self.v = nn.Linear(attention_dim, 1, bias=False)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.W_key(keys)  # (B, S, A)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                projected_keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        scores = self.v(torch.tanh(projected_keys + self.W_query(query)[:, None, :])).squeeze(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # (B, S)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights[:, None, :].to(keys.dtype), keys).squeeze(1)  # (B, Hk)
        return context, weights


class AttentionGRUDecoder(nn.Module):
    """A GRU decoder that attends over all encoder states at every step.

    One step: embed the previous token, attend with the current hidden state as the query, feed
    ``[embedding, context]`` to a GRU cell, and predict from ``[new hidden, context, embedding]``.
    """

    def __init__(self, config: Seq2SeqConfig, memory_dim: int):
        super().__init__()
        E, H = config.d_embed, config.d_hidden
        self.embedding = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_id)
        self.dropout = nn.Dropout(config.dropout)
        self.attention = AdditiveAttention(H, memory_dim, config.d_attention)
        self.cell = nn.GRUCell(E + memory_dim, H)
        self.out = nn.Linear(H + memory_dim + E, config.vocab_size)

    def step(self, last_tokens: torch.Tensor, hidden: torch.Tensor, memory: torch.Tensor,
             projected_keys: torch.Tensor, src_mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``last_tokens`` (B,), ``hidden`` (B, H), ``memory`` (B, S, M) ->
        ``logits`` (B, V), new ``hidden`` (B, H), attention ``weights`` (B, S)."""
        embedded = self.dropout(self.embedding(last_tokens))  # (B, E)
        context, weights = self.attention(hidden, memory, src_mask, projected_keys)  # (B, M), (B, S)
        hidden = self.cell(torch.cat([embedded, context], dim=-1), hidden)  # (B, H)
        logits = self.out(self.dropout(torch.cat([hidden, context, embedded], dim=-1)))
        return logits, hidden, weights


class AttentionGRUSeq2Seq(nn.Module):
    """Bidirectional GRU encoder + attention decoder: the lesson 03 translation model.

    ``forward(src (B, S), src_mask (B, S), tgt_in (B, T)) -> logits (B, T, V)``;
    :meth:`align` also returns the attention weights (B, T, S) for heatmaps. Decoding state:
    ``{"hidden": (B, 1, H), "memory": (B, S, 2H), "keys": (B, S, A), "src_mask": (B, S),
    "weights": (B, S)}``, all batch first.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        H = config.d_hidden
        self.encoder = GRUEncoder(config, bidirectional=True)
        self.bridge = nn.Linear(2 * H, H)  # encoder's last states (both directions) -> decoder's first
        self.decoder = AttentionGRUDecoder(config, memory_dim=2 * H)

    def start_decoding(self, src: torch.Tensor, src_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        memory, final = self.encoder(src, src_mask)  # (B, S, 2H), (B, 2L, H)
        hidden = torch.tanh(self.bridge(torch.cat([final[:, -2], final[:, -1]], dim=-1)))  # (B, H)
        return {
            "hidden": hidden[:, None, :],  # (B, 1, H): batch, layers, hidden like GRUSeq2Seq
            "memory": memory,
            "keys": self.decoder.attention.project_keys(memory),
            "src_mask": src_mask,
            "weights": src_mask.new_zeros(src_mask.shape, dtype=memory.dtype),
        }

    def decode_step(self, state: dict[str, torch.Tensor], last_tokens: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``last_tokens`` (B,) -> logits (B, V), and the new state (with this step's ``weights``)."""
        hidden = state["hidden"]
        batch = state["src_mask"].shape[0]
        expect_last_tokens(last_tokens, batch)
        expect_batch_first_hidden(hidden, batch, 1, self.config.d_hidden)
        logits, new_hidden, weights = self.decoder.step(
            last_tokens, hidden[:, 0], state["memory"], state["keys"], state["src_mask"])
        return logits, {**state, "hidden": new_hidden[:, None, :], "weights": weights}

    def align(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits (B, T, V) and attention weights (B, T, S)."""
        state = self.start_decoding(src, src_mask)
        all_logits, all_weights = [], []
        for t in range(tgt_in.shape[1]):  # the recurrence: step t needs step t - 1
            logits, state = self.decode_step(state, tgt_in[:, t])
            all_logits.append(logits)
            all_weights.append(state["weights"])
        return torch.stack(all_logits, dim=1), torch.stack(all_weights, dim=1)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.align(src, src_mask, tgt_in)[0]
