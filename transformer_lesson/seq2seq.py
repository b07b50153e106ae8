"""Sequence to sequence with GRUs: an encoder squeezes the source into one vector, a decoder
unfolds it into the translation (Cho et al., 2014; Sutskever et al., 2014).

The encoder reads the source left to right; its final hidden state, the *context*, is all the
decoder ever learns about the source. The decoder starts from that state and, at every step,
sees the previous target token and the context again, so the context does not have to survive
inside the decoder's state alone. The single fixed-size vector is the *bottleneck* that lesson 03's
attention removes.

Every seq2seq model in the course has the same interface:

* ``model(src (B, S), src_mask (B, S), tgt_in (B, T)) -> logits (B, T, V)`` for training with
  teacher forcing, and
* ``start_decoding`` / ``decode_step`` for generating one token at a time (see
  :mod:`transformer_lesson.decoding`). Decoder states are dicts of batch-first tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .tokenizer import PAD_ID


@dataclass
class Seq2SeqConfig:
    """Sizes of an RNN encoder-decoder. ``d_attention`` is used by lesson 03's model only."""

    vocab_size: int
    d_embed: int = 256
    d_hidden: int = 512
    n_layers: int = 1
    dropout: float = 0.3
    d_attention: int = 256
    pad_id: int = PAD_ID


@dataclass(frozen=True)
class BaselineRun:
    """How lessons 02 and 03 train their RNN baselines at one size; they share it, so the two compare.

    ``size`` is :func:`~transformer_lesson.runtime.training_size`'s: ``"full"`` is the setting of
    ``docs/results.md``'s baselines, ``"laptop"`` a smaller one for a CPU, ``"quick"`` seconds for
    tests. ``max_steps`` (None: no limit) cuts training short of ``epochs``; ``eval_every`` None
    scores validation BLEU after every epoch. ``d_attention`` is used by lesson 03's model only.
    """

    size: str
    d_embed: int
    d_hidden: int
    d_attention: int
    dropout: float
    train_limit: int | None  # training pairs (None: all 29,000)
    val_limit: int | None  # validation pairs scored during training (None: all 1,014)
    test_limit: int | None  # test_2016 pairs scored at the end (None: all 1,000)
    max_tokens: int
    lr: float
    epochs: int
    max_steps: int | None
    eval_every: int | None

    def model_config(self, vocab_size: int) -> Seq2SeqConfig:
        return Seq2SeqConfig(vocab_size=vocab_size, d_embed=self.d_embed, d_hidden=self.d_hidden,
                             d_attention=self.d_attention, dropout=self.dropout)


BASELINE_RUNS = {
    "quick": BaselineRun("quick", d_embed=64, d_hidden=96, d_attention=64, dropout=0.1, train_limit=2_000,
                         val_limit=20, test_limit=60, max_tokens=2_000, lr=2e-3, epochs=1, max_steps=10,
                         eval_every=4),
    "laptop": BaselineRun("laptop", d_embed=64, d_hidden=128, d_attention=128, dropout=0.0, train_limit=None,
                          val_limit=300, test_limit=None, max_tokens=4_000, lr=2e-3, epochs=3, max_steps=None,
                          eval_every=62),
    "full": BaselineRun("full", d_embed=128, d_hidden=256, d_attention=256, dropout=0.3, train_limit=None,
                        val_limit=None, test_limit=None, max_tokens=4_000, lr=2e-3, epochs=10, max_steps=None,
                        eval_every=None),
}


def baseline_run(size: str) -> BaselineRun:
    """The settings of lessons 02 and 03 at ``size``: ``"quick"``, ``"laptop"`` or ``"full"``."""
    if size not in BASELINE_RUNS:
        raise ValueError(f"size must be one of {', '.join(BASELINE_RUNS)}; got {size!r}.")
    return BASELINE_RUNS[size]


def last_real_state(outputs: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
    """The output at each sentence's last real (non-pad) position.

    ``outputs`` (B, S, H), ``src_mask`` (B, S) True at real tokens. Returns (B, H). With
    right-padding, ``outputs[:, -1]`` would be the state after reading padding for every
    sentence shorter than the longest. An empty sentence takes position 0.
    """
    last = (src_mask.sum(dim=1) - 1).clamp(min=0)  # (B,)
    index = last[:, None, None].expand(-1, 1, outputs.shape[-1])  # (B, 1, H)
    return outputs.gather(1, index).squeeze(1)


def expect_batch_first_hidden(hidden: torch.Tensor, batch: int, layers: int, size: int, name: str = "hidden") -> None:
    """Raise a ``ValueError`` unless ``hidden`` is (batch, layers, size), naming the likely mix-up.

    ``nn.GRU`` returns its hidden state as (layers, batch, size) even with ``batch_first=True``;
    the course stores states batch first so that beam search can reorder them along dim 0.
    """
    want = (batch, layers, size)
    if tuple(hidden.shape) == want:
        return
    hint = ""
    if tuple(hidden.shape) == (layers, batch, size):
        hint = (" It looks like nn.GRU's (layers, batch, hidden) layout: use hidden.transpose(0, 1) "
                "to make it batch first.")
    elif tuple(hidden.shape) == (batch, size):
        hint = " It is missing the layers dimension: use hidden.unsqueeze(1)."
    raise ValueError(f"{name} should have shape (batch={batch}, layers={layers}, hidden={size}), "
                     f"got {tuple(hidden.shape)}.{hint}")


def expect_last_tokens(last_tokens: torch.Tensor, batch: int) -> None:
    """Raise a ``ValueError`` unless ``last_tokens`` is a (batch,) tensor of token ids, as ``decode_step`` needs."""
    if not isinstance(last_tokens, torch.Tensor):
        raise ValueError(f"last_tokens should be a (batch,) = ({batch},) tensor of token ids, got a "
                         f"{type(last_tokens).__name__}: take logits.argmax(dim=-1).")
    if tuple(last_tokens.shape) != (batch,):
        raise ValueError(f"last_tokens should be (batch,) = ({batch},), got {tuple(last_tokens.shape)}: "
                         f"take logits.argmax(dim=-1).")
    if last_tokens.is_floating_point() or last_tokens.dtype == torch.bool:
        raise ValueError(f"last_tokens should hold token ids (integers), got dtype {last_tokens.dtype}: "
                         f"take logits.argmax(dim=-1).")


class GRUEncoder(nn.Module):
    """Embeds the source and runs a GRU over it, skipping padding.

    ``forward(src (B, S), src_mask (B, S)) -> (outputs (B, S, dirs*H), final (B, dirs*L, H))``,
    where ``final`` is nn.GRU's final hidden state made batch first (for each layer, forward
    direction then backward). Packing the sequence makes the GRU stop at each sentence's real end,
    so padding never leaks into the final state (and a backward GRU starts at the real end).
    """

    def __init__(self, config: Seq2SeqConfig, bidirectional: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.d_embed, padding_idx=config.pad_id)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = nn.GRU(
            config.d_embed,
            config.d_hidden,
            num_layers=config.n_layers,
            batch_first=True,
            dropout=config.dropout if config.n_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.dropout(self.embedding(src))  # (B, S, E)
        lengths = src_mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        packed_outputs, final = self.rnn(packed)  # final: (dirs*L, B, H)
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=src.shape[1])
        return outputs, final.transpose(0, 1)  # (B, S, dirs*H), (B, dirs*L, H)


class GRUDecoder(nn.Module):
    """A GRU decoder that sees the context vector at every step.

    ``forward(tgt_in (B, T), hidden (B, L, H), context (B, H)) -> (logits (B, T, V), hidden (B, L, H))``.
    Input at each step: the previous token's embedding next to the context. The output layer
    reads the new hidden state, the context and the embedding, so predicting a word does not all
    have to pass through the GRU's state.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        E, H = config.d_embed, config.d_hidden
        self.embedding = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_id)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = nn.GRU(E + H, H, num_layers=config.n_layers, batch_first=True,
                          dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.out = nn.Linear(E + 2 * H, config.vocab_size)

    def forward(self, tgt_in: torch.Tensor, hidden: torch.Tensor, context: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = tgt_in.shape
        expect_batch_first_hidden(hidden, B, self.config.n_layers, self.config.d_hidden)
        embedded = self.dropout(self.embedding(tgt_in))  # (B, T, E)
        context = context[:, None, :].expand(B, T, context.shape[-1])  # (B, T, H)
        outputs, hidden = self.rnn(torch.cat([embedded, context], dim=-1),
                                   hidden.transpose(0, 1).contiguous())  # (B, T, H), (L, B, H)
        features = torch.cat([embedded, outputs, context], dim=-1)  # (B, T, E + 2H)
        return self.out(self.dropout(features)), hidden.transpose(0, 1)


class GRUSeq2Seq(nn.Module):
    """Encoder-decoder with one context vector: the lesson 02 translation model.

    ``forward(src (B, S), src_mask (B, S), tgt_in (B, T)) -> logits (B, T, V)`` (teacher forcing).
    Decoding state: ``{"hidden": (B, L, H), "context": (B, H)}``.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        self.encoder = GRUEncoder(config)
        self.decoder = GRUDecoder(config)

    def start_decoding(self, src: torch.Tensor, src_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        _, final = self.encoder(src, src_mask)  # (B, L, H)
        return {"hidden": final, "context": final[:, -1]}  # the top layer's final state

    def decode_step(self, state: dict[str, torch.Tensor], last_tokens: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``last_tokens`` (B,) -> logits (B, V) for the next token, and the new state."""
        expect_last_tokens(last_tokens, state["context"].shape[0])
        logits, hidden = self.decoder(last_tokens[:, None], state["hidden"], state["context"])
        return logits[:, 0], {**state, "hidden": hidden}

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        state = self.start_decoding(src, src_mask)
        logits, _ = self.decoder(tgt_in, state["hidden"], state["context"])  # all steps at once
        return logits
