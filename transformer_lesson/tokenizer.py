"""Subword tokenization with SentencePiece: text <-> token ids.

One vocabulary is shared by German and English (they share many subwords: names, numbers,
"Ball", "Hotel"), which also lets later lessons tie embedding weights. The model is BPE, trained
on the training split in a few seconds and cached on disk, keyed by the exact training text and
settings, so a second call loads it instantly.

Ids 0-3 are the special tokens ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>``. Byte fallback is on:
a character never seen in training (an emoji, a Cyrillic letter) is spelled as its UTF-8 bytes
instead of becoming ``<unk>``. So for cleaned text (single spaces, none at the ends, as
:func:`transformer_lesson.data.normalize` makes it) ``decode(encode(text)) == text`` exactly;
SentencePiece itself collapses runs of spaces.
"""

from __future__ import annotations

import hashlib
import io
import numbers
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from .validation import (
    describe,
    require_file,
    require_int,
    require_output_path,
    require_text,
    require_text_list,
    require_token_ids,
)

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CACHE_ENV = "TL_CACHE_DIR"
MODEL_TYPES = ("bpe", "unigram", "char", "word")


def cache_dir() -> Path:
    """Where trained tokenizers are kept: ``$TL_CACHE_DIR`` or ``~/.cache/transformer-lesson``."""
    folder = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "transformer-lesson")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{CACHE_ENV}={folder} names a file, not a folder: point it at a folder "
                                 f"(it is created if missing), or unset it to use ~/.cache/transformer-lesson.")
    return folder


class Tokenizer:
    """A trained SentencePiece model with the course's special-token conventions."""

    def __init__(self, model_proto: bytes):
        if not isinstance(model_proto, bytes):
            raise TypeError(f"Tokenizer takes the model's bytes, got {describe(model_proto)}: to read a file use "
                            f"Tokenizer.load(path); to train one, train_tokenizer(texts, vocab_size).")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except RuntimeError:
            raise ValueError(f"These {len(model_proto)} bytes are not a SentencePiece model (a truncated or "
                             f"damaged file, or another kind of file): train the tokenizer again with "
                             f"train_tokenizer, or copy the .model file again.") from None
        self._proto = model_proto
        ids = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id())
        if ids != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
            raise ValueError(f"Tokenizer special ids are {ids}, expected (0, 1, 2, 3).")

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def fingerprint(self) -> str:
        """A short hash of the model: checkpoints store it to refuse a different vocabulary."""
        return hashlib.sha256(self._proto).hexdigest()[:16]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally framed by ``<bos>``/``<eos>``."""
        if not isinstance(text, str):
            hint = ": use encode_batch for a list of sentences" if isinstance(text, list | tuple) else ""
            raise TypeError(f"encode takes one string, got {describe(text)}{hint}.")
        ids = self._sp.encode(text, out_type=int)
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Token ids of each string in ``texts`` (a list of sentences)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of sentences, got one string (it would encode each of its "
                            "characters as a sentence): use encode for one sentence, or pass [text].")
        texts = require_text_list(texts, "encode_batch's texts")
        batch = self._sp.encode(texts, out_type=int)
        return [([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else []) for ids in batch]

    def pieces(self, text: str) -> list[str]:
        """The subword strings of ``text``; ``▁`` marks the start of a word."""
        return self._sp.encode(require_text(text, "pieces' text"), out_type=str)

    def id_to_piece(self, token_id: int) -> str:
        token_id = require_int(token_id, "token_id")
        require_token_ids([token_id], "id_to_piece's token_id", self.vocab_size)
        return self._sp.id_to_piece(token_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: stops at the first ``<eos>`` and drops ``<pad>`` and ``<bos>``."""
        kept = []
        for token_id in require_token_ids(ids, "decode's ids", self.vocab_size):
            if token_id == EOS_ID:
                break
            if token_id in (PAD_ID, BOS_ID):
                continue
            kept.append(token_id)
        return self._sp.decode(kept)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        """Texts of a batch of id sequences: a list of lists, or a (B, T) tensor (rows padded with ``<pad>``)."""
        if isinstance(batch, torch.Tensor | np.ndarray) and batch.ndim != 2:
            raise TypeError(f"decode_batch takes a (batch, time) tensor or a list of id lists, got {describe(batch)}"
                            + (": for one sentence use decode." if batch.ndim == 1 else "."))
        if isinstance(batch, str | bytes) or not isinstance(batch, Iterable):
            raise TypeError(f"decode_batch takes a list of id lists, got {describe(batch)}.")
        rows = list(batch)
        if rows and all(isinstance(row, numbers.Integral) for row in rows):
            raise TypeError("decode_batch takes a list of id lists, got one list of ids: use decode for one sentence.")
        return [self.decode(ids) for ids in rows]

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model: ``Tokenizer(model_proto)`` rebuilds it (checkpoints store it)."""
        return self._proto

    def save(self, path: str | Path) -> None:
        require_output_path(path, "path", what="tokenizer model", usual_name="tokenizer.model").write_bytes(self._proto)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = require_file(path, "path", what="tokenizer model file",
                            advice="train one with train_tokenizer and save it with tokenizer.save(path)")
        try:
            return cls(path.read_bytes())
        except ValueError:
            raise ValueError(f"{path} is not a SentencePiece model (truncated, damaged, or another kind of "
                             f"file): delete it and train the tokenizer again.") from None

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})"


def train_tokenizer(
    texts: Sequence[str],
    vocab_size: int,
    model_type: str = "bpe",
    use_cache: bool = True,
) -> Tokenizer:
    """Train (or load from the cache) a SentencePiece tokenizer on ``texts``.

    ``vocab_size`` counts everything: the 4 special tokens, 256 byte tokens, and the learned
    subwords, so it must be well above 260; and the texts must hold enough distinct subwords to
    fill it. ``texts`` may be any iterable of strings (a generator too).
    """
    vocab_size = require_int(vocab_size, "vocab_size")
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size} is too small: it must exceed 260 (specials + bytes).")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not a SentencePiece model type: use one of {MODEL_TYPES}.")
    texts = require_text_list(texts, "train_tokenizer's texts")
    if not any(text.strip() for text in texts):
        raise ValueError("Cannot train a tokenizer on no text: texts is empty or holds only blank strings.")
    settings = dict(
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        pad_piece=SPECIAL_TOKENS[0],
        bos_piece=SPECIAL_TOKENS[1],
        eos_piece=SPECIAL_TOKENS[2],
        unk_piece=SPECIAL_TOKENS[3],
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",  # the corpus is cleaned already; keep text exact
        num_threads=2,
        minloglevel=2,
    )
    key = hashlib.sha256()
    key.update(repr(sorted(settings.items())).encode())
    key.update(spm.__version__.encode())
    for text in texts:
        key.update(text.encode())
        key.update(b"\n")
    path = cache_dir() / f"spm-{model_type}-{vocab_size}-{key.hexdigest()[:16]}.model"
    if use_cache and path.is_file():
        try:
            return Tokenizer.load(path)
        except Exception as error:  # a damaged cache file: say so, then train again and replace it
            warnings.warn(f"Ignoring the unreadable cached tokenizer {path} ({error}); training a new one.",
                          stacklevel=2)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, **settings)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        if "vocabulary size" in reason.lower():
            raise ValueError(f"vocab_size={vocab_size} is more than these {len(texts)} texts can fill "
                             f"(SentencePiece: {reason}): lower vocab_size or train on more text.") from None
        raise ValueError(f"SentencePiece could not train on these texts ({reason}).") from None
    tokenizer = Tokenizer(model.getvalue())
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tokenizer.save(tmp)
        tmp.replace(path)  # atomic: a parallel run never reads a half-written file
    return tokenizer


def multi30k_tokenizer(vocab_size: int = 8000) -> Tokenizer:
    """The course's tokenizer: BPE trained on both sides of the full Multi30k training split."""
    from .data import load_multi30k

    pairs = load_multi30k("train")
    return train_tokenizer([p.src for p in pairs] + [p.tgt for p in pairs], vocab_size)
