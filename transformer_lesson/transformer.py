"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), read top to bottom.

    source ids (B, S) -> embed * sqrt(d_model) + positions -> N encoder layers -> memory (B, S, d)
    target ids (B, T) -> embed * sqrt(d_model) + positions -> N decoder layers -> output layer -> (B, T, V)

An **encoder layer** is self-attention then a position-wise feed-forward network; a **decoder
layer** is causal self-attention, cross-attention over the encoder's output (the *memory*), then
the feed-forward network. Every sub-layer sits in a residual connection with a layer norm, placed
one of two ways (``norm_first``):

* post-norm, the paper's: ``x = norm(x + sublayer(x))``;
* pre-norm, most modern code's and **this package's default**: ``x = x + sublayer(norm(x))``, with
  one more norm at the end of each stack. The residual path is then a clean sum: one reason why, in
  lesson 07's measurements, pre-norm trained without learning-rate warm-up where post-norm did not.

The weights are laid out like ``torch.nn.Transformer``'s, so :meth:`Transformer.load_from_torch`
copies a PyTorch model's layers over and gives the same outputs. Masks follow the course
convention: True = may attend; ``src_mask`` (B, S) is True at real source tokens. The target needs
no padding mask: its pads come after every real token, where the causal mask already hides them.

Decoding (:mod:`~transformer_lesson.decoding`) works one token at a time with a key/value cache:
each decoder layer keeps the keys and values of the target positions so far (growing by one
position per step) and the cross-attention keys and values of the memory (computed once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attention import padding_mask
from .batching import check_token_ids
from .checkpoint import apply_checkpoint, load_checkpoint, model_config_of
from .multihead import MultiHeadAttention
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .tokenizer import PAD_ID

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, n_heads, T, d_head) each


@dataclass
class TransformerConfig:
    """The sizes and choices of a :class:`Transformer` (defaults: the paper's base model, pre-norm).

    ``tie_embeddings`` shares one matrix between the source embedding, the target embedding and
    the output layer; it needs one vocabulary for both languages (``tgt_vocab_size`` None or equal).
    ``final_norm`` (None: only with pre-norm) adds a layer norm after each stack; PyTorch's
    ``nn.Transformer`` always has one. ``fast`` picks the attention path (lesson 04).
    ``dropout`` applies to the embeddings plus positions and to every sub-layer's output; by default
    also to the attention weights and inside the feed-forward network, as in ``nn.Transformer``.
    ``attention_dropout`` and ``activation_dropout`` set those two apart (fairseq's defaults are 0).
    """

    src_vocab_size: int
    tgt_vocab_size: int | None = None  # None: the same vocabulary as the source
    d_model: int = 512
    n_heads: int = 8
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    attention_dropout: float | None = None  # on the attention weights; None: the same as dropout
    activation_dropout: float | None = None  # inside the feed-forward network; None: the same as dropout
    norm_first: bool = True  # True: pre-norm; False: post-norm (the paper)
    final_norm: bool | None = None
    activation: str = "relu"  # or "gelu"
    positional: str = "sinusoidal"  # or "learned"
    max_len: int = 256  # longest sequence the positional table covers
    tie_embeddings: bool = True
    fast: bool = True
    pad_id: int = PAD_ID

    def __post_init__(self):
        if self.tgt_vocab_size is None:
            self.tgt_vocab_size = self.src_vocab_size
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}.")
        for name in ("n_encoder_layers", "n_decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TransformerConfig.{name} must be an int >= 0, got {value!r}.")
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0]
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: each head gets "
                             f"d_model / n_heads features. Choose n_heads from {divisors[:10]}.")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}.")
        if self.positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional must be 'sinusoidal' or 'learned', got {self.positional!r}.")
        if self.tie_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"tie_embeddings=True shares one embedding matrix, so both vocabularies must be one: got "
                f"src_vocab_size={self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}. Use a "
                f"shared (joint) vocabulary, or set tie_embeddings=False.")

    @property
    def attention_p(self) -> float:
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @property
    def activation_p(self) -> float:
        return self.dropout if self.activation_dropout is None else self.activation_dropout

    @property
    def has_final_norm(self) -> bool:
        return self.norm_first if self.final_norm is None else self.final_norm


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


# ---------------------------------------------------------------------------------------------
# The pieces: embedding, feed-forward network
# ---------------------------------------------------------------------------------------------


class ScaledEmbedding(nn.Module):
    """Token ids (B, T) -> vectors (B, T, d_model), multiplied by sqrt(d_model).

    The weights start with standard deviation 1/sqrt(d_model), so the scaled vectors have about
    unit size, like the positional encoding added to them; and, when the matrix is shared with
    the output layer, the logits start small.
    """

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.scale = math.sqrt(d_model)
        nn.init.normal_(self.embedding.weight, std=d_model ** -0.5)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens) * self.scale


class FeedForward(nn.Module):
    """The same two-layer network at every position: (B, T, d_model) -> (B, T, d_model).

    ``linear2(dropout(activation(linear1(x))))``, with d_ff hidden units (4 * d_model in the paper).
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward; each in a residual connection with a layer norm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.norm_first = c.norm_first
        self.self_attention = MultiHeadAttention(c.d_model, c.n_heads, c.attention_p, fast=c.fast)
        self.feed_forward = FeedForward(c.d_model, c.d_ff, c.activation_p, c.activation)
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.dropout1, self.dropout2 = nn.Dropout(c.dropout), nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, S, d_model), mask broadcastable to (B, n_heads, S, S) -> x (B, S, d_model), weights or None."""
        if self.norm_first:  # pre-norm: x + sublayer(norm(x))
            attended, weights = self.self_attention(self.norm1(x), mask=mask, need_weights=need_weights)
            x = x + self.dropout1(attended)
            x = x + self.dropout2(self.feed_forward(self.norm2(x)))
        else:  # post-norm: norm(x + sublayer(x))
            attended, weights = self.self_attention(x, mask=mask, need_weights=need_weights)
            x = self.norm1(x + self.dropout1(attended))
            x = self.norm2(x + self.dropout2(self.feed_forward(x)))
        return x, weights


class Encoder(nn.Module):
    """A stack of encoder layers (plus the final norm, if any), on embedded inputs.

    ``forward(x (B, S, d), src_mask (B, S) | None)`` returns the memory (B, S, d): as many
    positions and as wide as its input, every position now informed by the whole sentence.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_encoder_layers))
        self.norm = nn.LayerNorm(config.d_model) if config.has_final_norm else nn.Identity()

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor | None = None, need_weights: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Returns the memory (B, S, d_model) and each layer's weights (B, n_heads, S, S) (None unless asked)."""
        mask = padding_mask(src_mask) if src_mask is not None else None  # (B, 1, 1, S)
        weights = []
        for layer in self.layers:
            x, w = layer(x, mask, need_weights)
            weights.append(w)
        return self.norm(x), weights


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the memory, feed-forward; each with residual and norm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.norm_first = c.norm_first
        self.self_attention = MultiHeadAttention(c.d_model, c.n_heads, c.attention_p, fast=c.fast)
        self.cross_attention = MultiHeadAttention(c.d_model, c.n_heads, c.attention_p, fast=c.fast)
        self.feed_forward = FeedForward(c.d_model, c.d_ff, c.activation_p, c.activation)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(c.dropout) for _ in range(3))

    def forward(self, x: torch.Tensor, memory_kv: KV, memory_mask: torch.Tensor | None,
                cache: KV | None = None, need_weights: bool = False):
        """One decoder layer on the target positions ``x`` (B, T, d_model).

        ``memory_kv``: the cross-attention keys and values of the memory, each (B, n_heads, S, d_head),
        from ``cross_attention.project_keys_values(memory)``; ``memory_mask`` (B, 1, 1, S) or None.
        ``cache``: keys and values of the earlier target positions (B, n_heads, t, d_head) each, or
        None when ``x`` holds the whole target (teacher forcing). ``x`` are then the last T positions.
        Returns x (B, T, d_model), the cache with these positions appended (None if none was given),
        and the (self, cross) attention weights (each None unless ``need_weights``).
        """
        if self.norm_first:
            attended, cache, self_weights = self._self_attend(self.norm1(x), cache, need_weights)
            x = x + self.dropout1(attended)
            attended, cross_weights = self._cross_attend(self.norm2(x), memory_kv, memory_mask, need_weights)
            x = x + self.dropout2(attended)
            x = x + self.dropout3(self.feed_forward(self.norm3(x)))
        else:
            attended, cache, self_weights = self._self_attend(x, cache, need_weights)
            x = self.norm1(x + self.dropout1(attended))
            attended, cross_weights = self._cross_attend(x, memory_kv, memory_mask, need_weights)
            x = self.norm2(x + self.dropout2(attended))
            x = self.norm3(x + self.dropout3(self.feed_forward(x)))
        return x, cache, (self_weights, cross_weights)

    def _self_attend(self, x, cache, need_weights):
        """Causal self-attention: each position sees itself and the positions before it."""
        if cache is None:  # all positions at once: one projection for queries, keys and values
            attended, weights = self.self_attention(x, is_causal=True, need_weights=need_weights)
            return attended, None, weights
        keys, values = self.self_attention.project_keys_values(x)  # (B, nh, T, dh): the new positions
        keys, values = torch.cat([cache[0], keys], dim=2), torch.cat([cache[1], values], dim=2)
        attended, weights = self.self_attention.attend(
            x, keys, values, need_weights=need_weights, is_causal=x.shape[1] > 1)  # one new query sees all
        return attended, (keys, values), weights

    def _cross_attend(self, x, memory_kv, memory_mask, need_weights):
        """Queries from the target, keys and values from the memory (the encoder's output)."""
        return self.cross_attention.attend(x, *memory_kv, mask=memory_mask, need_weights=need_weights)


class Decoder(nn.Module):
    """A stack of decoder layers (plus the final norm, if any), on embedded target positions."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_decoder_layers))
        self.norm = nn.LayerNorm(config.d_model) if config.has_final_norm else nn.Identity()

    def memory_keys_values(self, memory: torch.Tensor) -> list[KV]:
        """Every layer's cross-attention keys and values of ``memory`` (B, S, d): computed once per sentence."""
        return [layer.cross_attention.project_keys_values(memory) for layer in self.layers]

    def forward(self, y: torch.Tensor, memory: torch.Tensor | list[KV], src_mask: torch.Tensor | None = None,
                caches: list[KV] | None = None, need_weights: bool = False):
        """``y`` (B, T, d_model) embedded targets; ``memory`` (B, S, d_model) or its :meth:`memory_keys_values`.

        Returns y (B, T, d_model), the updated caches (None if none were given) and, per layer, the
        (self, cross) weights ((B, n_heads, T, T + cached), (B, n_heads, T, S)) or Nones.
        """
        memory_kv = self.memory_keys_values(memory) if isinstance(memory, torch.Tensor) else memory
        memory_mask = padding_mask(src_mask) if src_mask is not None else None  # (B, 1, 1, S)
        new_caches, weights = [], []
        for i, layer in enumerate(self.layers):
            y, cache, w = layer(y, memory_kv[i], memory_mask, None if caches is None else caches[i], need_weights)
            new_caches.append(cache)
            weights.append(w)
        return self.norm(y), (new_caches if caches is not None else None), weights


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class Transformer(nn.Module):
    """The encoder-decoder Transformer: ``forward(src (B, S), src_mask (B, S), tgt_in (B, T)) -> logits (B, T, V)``.

    Also an :class:`~transformer_lesson.decoding.IncrementalDecoder` (``start_decoding`` /
    ``decode_step``, with a key/value cache), so ``greedy_decode`` and ``translate`` work on it.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.n_decoder_layers < 1:
            raise ValueError("A Transformer needs at least one decoder layer (n_decoder_layers >= 1); "
                             "for an encoder alone use EncoderTagger.")
        self.config = c = config
        self.src_embedding = ScaledEmbedding(c.src_vocab_size, c.d_model)
        self.tgt_embedding = self.src_embedding if c.tie_embeddings else ScaledEmbedding(c.tgt_vocab_size, c.d_model)
        self.src_positions = _positional(c)
        self.tgt_positions = _positional(c)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)  # no bias: it may share the embedding
        for name, parameter in self.named_parameters():  # as nn.Transformer: Xavier for every matrix
            if parameter.dim() > 1 and "embedding" not in name:
                nn.init.xavier_uniform_(parameter)
        if c.tie_embeddings:
            self.output.weight = self.tgt_embedding.weight  # one matrix, three uses

    # -- the two halves ------------------------------------------------------------------------

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """src (B, S) ids, src_mask (B, S) -> memory (B, S, d_model)."""
        self._check_tokens(src, src_mask, "src", self.config.src_vocab_size)
        memory, _ = self.encoder(self.src_positions(self.src_embedding(src)), src_mask)
        return memory

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """tgt_in (B, T) ids, memory (B, S, d_model), src_mask (B, S) -> logits (B, T, V), teacher-forced."""
        self._check_tokens(tgt_in, None, "tgt_in", self.config.tgt_vocab_size)
        y, _, _ = self.decoder(self.tgt_positions(self.tgt_embedding(tgt_in)), memory, src_mask)
        return self.output(y)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) for every target position at once."""
        if tgt_in.dim() == 2 and src.dim() == 2 and tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"src has batch size {src.shape[0]} (dimension 0) but tgt_in has {tgt_in.shape[0]}.")
        return self.decode(tgt_in, self.encode(src, src_mask), src_mask)

    # -- decoding one token at a time (the interface of decoding.py) ------------------------------

    def start_decoding(self, src: torch.Tensor, src_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode once; the state holds, per layer i, the memory's cross-attention keys/values
        (``cross_keys.i``, ``cross_values.i``) and an empty self-attention cache (``self_keys.i``,
        ``self_values.i``, (B, n_heads, 0, d_head)), all batch first."""
        memory = self.encode(src, src_mask)
        state = {"src_mask": src_mask}
        batch, heads, d_head = src.shape[0], self.config.n_heads, self.config.d_model // self.config.n_heads
        for i, (keys, values) in enumerate(self.decoder.memory_keys_values(memory)):
            state[f"cross_keys.{i}"], state[f"cross_values.{i}"] = keys, values
            empty = memory.new_zeros(batch, heads, 0, d_head)
            state[f"self_keys.{i}"], state[f"self_values.{i}"] = empty, empty
        return state

    def decode_step(self, state: dict[str, torch.Tensor], last_tokens: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``last_tokens`` (B,) -> logits (B, V) for the next token; the caches grow by one position."""
        batch = state["src_mask"].shape[0]
        if last_tokens.shape != (batch,):
            raise ValueError(f"last_tokens has shape {tuple(last_tokens.shape)}, but (batch={batch},) was "
                             f"expected: one token per sentence, the one chosen at the previous step.")
        n_layers = self.config.n_decoder_layers
        done = state["self_keys.0"].shape[2]  # target positions decoded so far
        y = self.tgt_positions(self.tgt_embedding(last_tokens[:, None]), offset=done)  # (B, 1, d_model)
        memory_kv = [(state[f"cross_keys.{i}"], state[f"cross_values.{i}"]) for i in range(n_layers)]
        caches = [(state[f"self_keys.{i}"], state[f"self_values.{i}"]) for i in range(n_layers)]
        y, caches, _ = self.decoder(y, memory_kv, state["src_mask"], caches)
        state = dict(state)
        for i, (keys, values) in enumerate(caches):
            state[f"self_keys.{i}"], state[f"self_values.{i}"] = keys, values
        return self.output(y[:, 0]), state

    # -- looking inside ----------------------------------------------------------------------------

    @torch.no_grad()
    def attention_weights(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
                          ) -> dict[str, torch.Tensor]:
        """Every layer's and head's attention weights, teacher-forced (dropout off for this call).

        Returns ``{"encoder": (L_enc, B, H, S, S), "decoder_self": (L_dec, B, H, T, T),
        "cross": (L_dec, B, H, T, S)}``.
        """
        was_training = self.training
        self.eval()
        try:
            memory, enc = self.encoder(self.src_positions(self.src_embedding(src)), src_mask, need_weights=True)
            _, _, dec = self.decoder(self.tgt_positions(self.tgt_embedding(tgt_in)), memory, src_mask,
                                     need_weights=True)
        finally:
            self.train(was_training)
        return {"encoder": torch.stack(enc) if enc else memory.new_zeros(0),
                "decoder_self": torch.stack([w[0] for w in dec]),
                "cross": torch.stack([w[1] for w in dec])}

    # -- PyTorch's nn.Transformer, and rebuilding from a config -----------------------------------

    def load_from_torch(self, torch_transformer: nn.Transformer) -> Transformer:
        """Copy the layers and final norms of a ``torch.nn.Transformer`` of the same shape into this model.

        nn.Transformer has no embeddings or output layer: those stay as they are. It always has a
        final norm after each stack, so build this model with ``final_norm=True``. Returns self.
        """
        theirs = {_our_name(name): tensor for name, tensor in torch_transformer.state_dict().items()}
        ours = {name: t for name, t in self.state_dict().items() if name.startswith(("encoder.", "decoder."))}
        problems = [f"{n}: only in {'ours' if n in ours else 'torch'}" for n in sorted(set(ours) ^ set(theirs))]
        problems += [f"{n}: torch {tuple(theirs[n].shape)}, ours {tuple(t.shape)}"
                     for n, t in ours.items() if n in theirs and theirs[n].shape != t.shape]
        torch_norm_first = next(iter(torch_transformer.encoder.layers)).norm_first
        if torch_norm_first != self.config.norm_first:  # the same parameters, wired differently
            problems.insert(0, f"norm_first: torch {torch_norm_first}, ours {self.config.norm_first}")
        if problems:
            raise ValueError("The torch.nn.Transformer does not have this model's shape:\n  "
                             + "\n  ".join(problems[:8]) + "\nBuild a TransformerConfig to match "
                             "(nn.Transformer always has final norms: final_norm=True).")
        self.load_state_dict(theirs, strict=False)  # strict=False: embeddings and output layer stay
        return self

    @classmethod
    def from_config(cls, config: TransformerConfig | dict[str, Any]) -> Transformer:
        """A fresh model from a config or its plain dict (as a checkpoint stores it)."""
        if isinstance(config, dict):
            known = set(TransformerConfig.__dataclass_fields__)
            unknown = sorted(set(config) - known)
            if unknown:
                raise ValueError(f"Not TransformerConfig fields: {unknown}. Is this a Transformer's config?")
            config = TransformerConfig(**config)
        return cls(config)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Transformer:
        """A model rebuilt from a checkpoint alone: the config stored in it, then its weights."""
        payload = load_checkpoint(path, map_location=map_location)
        model = cls.from_config(model_config_of(payload, path))
        apply_checkpoint(payload, path, model)
        return model

    @property
    def max_positions(self) -> int:
        """The longest source, and the most decoding steps, the positional tables allow."""
        return self.config.max_len

    def set_fast_attention(self, fast: bool) -> None:
        """Switch every attention of the model to the fast (fused) or the teaching path."""
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.fast = fast
        self.config.fast = fast

    # -- input checks ----------------------------------------------------------------------------

    def _check_tokens(self, tokens: torch.Tensor, mask: torch.Tensor | None, name: str, vocab_size: int) -> None:
        check_token_ids(tokens, mask, name, vocab_size, self.config.max_len, self.src_embedding.weight.device)


def _positional(config: TransformerConfig) -> nn.Module:
    if config.positional == "learned":
        return LearnedPositionalEmbedding(config.d_model, config.max_len, config.dropout)
    return SinusoidalPositionalEncoding(config.d_model, config.max_len, config.dropout)


_TORCH_NAMES = (("self_attn.", "self_attention."), ("multihead_attn.", "cross_attention."),
                ("in_proj_weight", "in_proj.weight"), ("in_proj_bias", "in_proj.bias"),
                ("linear1.", "feed_forward.linear1."), ("linear2.", "feed_forward.linear2."))


def _our_name(torch_name: str) -> str:
    """A parameter's name in nn.Transformer -> here (``...self_attn.in_proj_weight`` -> ``...in_proj.weight``)."""
    for theirs, ours in _TORCH_NAMES:
        torch_name = torch_name.replace(theirs, ours)
    return torch_name


# ---------------------------------------------------------------------------------------------
# Encoder-only: one label per position (lesson 07)
# ---------------------------------------------------------------------------------------------


class EncoderTagger(nn.Module):
    """An encoder with a linear read-out at every position: (B, T) ids, (B, T) mask -> (B, T, n_classes).

    Uses the source half of ``config`` (``src_vocab_size``, encoder layers); the decoder's fields
    are ignored.
    """

    def __init__(self, config: TransformerConfig, n_classes: int):
        super().__init__()
        self.config = config
        self.embedding = ScaledEmbedding(config.src_vocab_size, config.d_model)
        self.positions = _positional(config)
        self.encoder = Encoder(config)
        self.classifier = nn.Linear(config.d_model, n_classes)
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and "embedding" not in name:
                nn.init.xavier_uniform_(parameter)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False):
        """Logits (B, T, n_classes); with ``need_weights``, also each layer's weights (L, B, H, T, T)."""
        check_token_ids(tokens, mask, "tokens", self.config.src_vocab_size, self.config.max_len,
                          self.embedding.weight.device)
        x, weights = self.encoder(self.positions(self.embedding(tokens)), mask, need_weights)
        logits = self.classifier(x)
        return (logits, torch.stack(weights)) if need_weights else logits
