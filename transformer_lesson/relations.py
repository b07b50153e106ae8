"""A synthetic task that needs two kinds of relationship at once, for lesson 05.

Each sequence holds random *symbols* and exactly one *marker* token, somewhere. At every position
the model must answer two questions:

* ``previous``: which token stands just before this position? (a relationship by **position**:
  always the neighbour on the left)
* ``marker``: which marker does the sequence contain? (a relationship by **content**: wherever
  the marker is, possibly far away)

One attention head computes one weighted average per position, so it can look at the neighbour
or at the marker, not sharply at both. With two heads the model can give one relationship to
each, and it does: :func:`head_relation_scores` measures how much attention each head puts on
the neighbour and on the marker.

Vocabulary: symbols ``0 .. n_symbols - 1``, markers ``n_symbols .. n_symbols + n_markers - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .multihead import MultiHeadAttention
from .training import History, Trainer

IGNORE = -100  # label of position 0, which has no left neighbour (cross_entropy skips it)


@dataclass
class RelationBatch:
    """``tokens`` (B, T); labels ``previous`` (B, T) and ``marker`` (B, T); ``marker_pos`` (B,)."""

    tokens: torch.Tensor
    previous: torch.Tensor
    marker: torch.Tensor
    marker_pos: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RelationBatch:
        return RelationBatch(*(t.to(device, non_blocking=non_blocking) for t in vars(self).values()))


def relation_batch(
    batch_size: int,
    seq_len: int = 12,
    n_symbols: int = 8,
    n_markers: int = 4,
    generator: torch.Generator | None = None,
) -> RelationBatch:
    """A random batch of the two-relationship task (see the module docstring)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}.")
    tokens = torch.randint(0, n_symbols, (batch_size, seq_len), generator=generator)
    marker_pos = torch.randint(0, seq_len, (batch_size,), generator=generator)
    marker = torch.randint(0, n_markers, (batch_size,), generator=generator)
    rows = torch.arange(batch_size)
    tokens[rows, marker_pos] = n_symbols + marker
    previous = torch.full_like(tokens, IGNORE)
    previous[:, 1:] = tokens[:, :-1]
    return RelationBatch(tokens, previous, marker[:, None].expand(-1, seq_len).clone(), marker_pos)


class RelationModel(nn.Module):
    """Embeddings -> one multi-head self-attention -> two linear read-outs, one per question.

    There is no residual connection and no feed-forward layer on purpose: everything the
    read-outs know must have come through the attention heads, so the heads' weights show how the
    task is solved. Positions are learned vectors added to the token embeddings (lesson 06 explains
    why attention needs them). Shapes: tokens (B, T) -> logits (B, T, vocab) and (B, T, n_markers).
    """

    def __init__(self, n_symbols: int = 8, n_markers: int = 4, seq_len: int = 12,
                 d_model: int = 32, n_heads: int = 2):
        super().__init__()
        vocab = n_symbols + n_markers
        self.token_embedding = nn.Embedding(vocab, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.attention = MultiHeadAttention(d_model, n_heads)
        self.read_previous = nn.Linear(d_model, vocab)
        self.read_marker = nn.Linear(d_model, n_markers)

    def forward(self, tokens: torch.Tensor, need_weights: bool = False):
        """Returns (previous logits, marker logits, per-head weights (B, nh, T, T) or None)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)  # (B, T, d)
        mixed, weights = self.attention(x, need_weights=need_weights)  # (B, T, d)
        return self.read_previous(mixed), self.read_marker(mixed), weights

    def loss(self, batch: RelationBatch) -> torch.Tensor:
        """Sum of the two cross-entropies (position 0's ``previous`` is ignored)."""
        previous, marker, _ = self(batch.tokens)
        return F.cross_entropy(previous.flatten(0, 1), batch.previous.flatten(),
                               ignore_index=IGNORE) + F.cross_entropy(
            marker.flatten(0, 1), batch.marker.flatten())


@torch.no_grad()
def relation_accuracy(model: RelationModel, batch: RelationBatch) -> dict[str, float]:
    """Fraction of positions answered right, for each question."""
    previous, marker, _ = model(batch.tokens)
    counted = batch.previous != IGNORE
    return {
        "previous": (previous.argmax(-1) == batch.previous)[counted].float().mean().item(),
        "marker": (marker.argmax(-1) == batch.marker).float().mean().item(),
    }


@torch.no_grad()
def head_relation_scores(weights: torch.Tensor, marker_pos: torch.Tensor) -> torch.Tensor:
    """How much each head attends to each relationship: (n_heads, 2) = (neighbour, marker).

    ``weights`` (B, n_heads, T, T), ``marker_pos`` (B,). Column 0 is the mean weight a query puts
    on its left neighbour, column 1 the mean weight on the marker. Queries where the two coincide
    (just after the marker) and the first position (no neighbour) are left out.
    """
    batch, n_heads, time, _ = weights.shape
    t = torch.arange(1, time, device=weights.device)  # queries 1 .. T-1
    on_neighbour = weights[:, :, t, t - 1]  # (B, nh, T-1)
    marker_index = marker_pos[:, None, None].expand(batch, n_heads, time - 1)
    on_marker = weights[:, :, 1:].gather(-1, marker_index[..., None]).squeeze(-1)  # (B, nh, T-1)
    keep = (t[None, :] != marker_pos[:, None] + 1)[:, None, :].expand_as(on_neighbour)
    neighbour = (on_neighbour * keep).sum((0, 2)) / keep.sum((0, 2))
    marker = (on_marker * keep).sum((0, 2)) / keep.sum((0, 2))
    return torch.stack([neighbour, marker], dim=1)


def specialisation(scores: torch.Tensor) -> torch.Tensor:
    """One number per head from :func:`head_relation_scores`: |neighbour - marker| in [0, 1].

    1: the head puts all its weight on one of the two relationships; 0: equal weight on both
    (or on neither).
    """
    return (scores[:, 0] - scores[:, 1]).abs()


def relation_loss(model: RelationModel, batch: RelationBatch) -> torch.Tensor:
    """The loss in the form :class:`~transformer_lesson.training.Trainer` expects: a scalar tensor."""
    return model.loss(batch)


def train_relation_model(
    model: RelationModel,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    **task,
) -> History:
    """Train with AdamW on fresh random batches (the course's Trainer); returns its History.

    ``task`` goes to :func:`relation_batch` (``seq_len``, ``n_symbols``, ``n_markers``). Epoch e
    is 100 batches drawn from a generator seeded with (seed, e), so a run repeats exactly.
    On a CPU it runs on one thread: for matrices this small, coordinating threads costs more
    than it saves (several times more on a busy 2-core machine).
    """

    def make_batches(epoch: int):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return (relation_batch(batch_size, generator=generator, **task) for _ in range(100))

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    trainer = Trainer(model, optimizer, device, clip_norm=None, amp=False, loss_fn=relation_loss,
                      checkpoint_path=None, progress=False)
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        history = trainer.fit(make_batches, max_steps=steps)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return history
