"""From token ids to padded tensors: padding, masks and length-bucketed batches.

Sentences have different lengths but a tensor is a rectangle, so short sentences are padded with
``<pad>`` (id 0) and a boolean *mask* records which positions are real. Convention for the whole
course: **a mask is True where a position is real (may be attended to) and False at padding**,
the same polarity as ``torch.nn.functional.scaled_dot_product_attention``'s boolean masks.

Padding is wasted work, so batches group sentences of similar length ("bucketing") and are
sized by a *token budget* (padded tokens per batch) rather than a fixed number of sentences:
a batch of short sentences holds more of them.

Under distributed training (``torchrun``, one process per GPU) every process builds the same
epoch of batches, with the same seed, and takes its own share of them: see :func:`shard`.
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch

from .tokenizer import BOS_ID, EOS_ID, PAD_ID
from .validation import require_id_sequences, require_int, require_pairs

T = TypeVar("T")


def padding_mask(lengths: torch.Tensor, longest: int | None = None) -> torch.Tensor:
    """The padding mask (batch, longest) of sequences with these ``lengths`` (batch,): True at real tokens.

    Row ``b`` is True at positions ``0 .. lengths[b] - 1`` and False after them. ``longest``
    defaults to the largest length; a larger one adds padding columns.
    """
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.is_floating_point():
        raise ValueError(f"lengths must be a 1-d integer tensor (batch,), got {lengths!r}.")
    if longest is None:
        longest = int(lengths.max()) if lengths.numel() else 0
    return torch.arange(longest, device=lengths.device)[None, :] < lengths[:, None]


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists of token ids into one tensor.

    Returns ``ids`` of shape (batch, longest) with ``pad_id`` after each sequence's end, and
    ``mask`` of the same shape, True at real tokens and False at padding.
    """
    flat = require_id_sequences(sequences, "pad_sequences' sequences")
    if len(sequences) == 0:
        raise ValueError("pad_sequences needs at least one sequence.")
    lengths = torch.tensor([len(seq) for seq in sequences])
    mask = padding_mask(lengths)  # (batch, longest)
    ids = torch.full(mask.shape, pad_id, dtype=torch.long)
    # One assignment instead of a loop over rows: boolean indexing visits the True places row by
    # row, left to right, which is exactly the order of the sequences laid end to end. (About 4x
    # faster than the loop for a batch of 137 sentences; batches are built at every training step.)
    ids[mask] = flat
    return ids, mask


def check_token_ids(tokens: Any, mask: Any, name: str, vocab_size: int, max_len: int,
                      device: torch.device) -> None:
    """Raise a clear error unless ``tokens`` is a (B, T) integer tensor on ``device`` that fits the model.

    Checks the dtype, shape, device and length (positional table), the ``mask`` (B, T) boolean if
    given, and, on the CPU, that every id is below ``vocab_size`` (on a GPU that check would make the
    CPU wait for the device at every step; a bad id there ends in a device-side assertion).
    """
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of token ids (B, T), got {type(tokens).__name__}.")
    if tokens.dim() != 2:
        raise ValueError(f"{name} has shape {tuple(tokens.shape)}, but (batch, time) token ids were expected"
                         + (": add a batch dimension with .unsqueeze(0)." if tokens.dim() == 1 else "."))
    if tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"{name} must hold integer token ids (torch.long), got {tokens.dtype}.")
    if tokens.device != device and not (tokens.device.type == device.type == "cpu"):
        raise ValueError(f"{name} is on {tokens.device} but the model is on {device}: move it with "
                         f"{name}.to({str(device)!r}) (a Batch: batch.to(device)).")
    if tokens.shape[1] > max_len:
        raise ValueError(f"{name} has {tokens.shape[1]} positions, but the positional table covers {max_len} "
                         f"(TransformerConfig.max_len): cut the sequence, or build the model with a larger max_len.")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != tokens.shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"{name}_mask must be a boolean tensor of {name}'s shape {tuple(tokens.shape)}, True "
                             f"at real tokens; got {got}.")
        if mask.device != tokens.device:
            raise ValueError(f"{name}_mask is on {mask.device} but {name} on {tokens.device}.")
    if tokens.device.type == "cpu" and tokens.numel():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} holds token id {high if high >= vocab_size else low}, but the vocabulary has "
                             f"ids 0 .. {vocab_size - 1}: the tokenizer and the model's vocab size disagree.")


@dataclass
class Batch:
    """A batch of translation pairs, ready for a model.

    ``src`` (B, S) are source ids and ``src_mask`` (B, S) marks the real ones. The target is shifted
    for teacher forcing: the decoder reads ``tgt_in`` = ``<bos> y1 ... yn`` and must predict
    ``tgt_out`` = ``y1 ... yn <eos>``, both (B, T); ``tgt_mask`` (B, T) marks real positions.
    """

    src: torch.Tensor
    src_mask: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    tgt_mask: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on ``device``. ``non_blocking`` copies from pinned memory without waiting (GPU)."""
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory, from which a GPU copies asynchronously (``DataLoader`` calls it)."""
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def n_target_tokens(self) -> int:
        """Real (non-pad) target tokens: the number of predictions the loss averages over."""
        return int(self.tgt_mask.sum())


def make_batch(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> Batch:
    """Build a :class:`Batch` from source ids and target ids framed as ``<bos> ... <eos>``."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets.")
    for target in targets:
        if len(target) < 2 or target[0] != BOS_ID or target[-1] != EOS_ID:
            raise ValueError("Each target must start with <bos> and end with <eos>.")
    src, src_mask = pad_sequences(sources)
    tgt_in, tgt_mask = pad_sequences([t[:-1] for t in targets])
    tgt_out, _ = pad_sequences([t[1:] for t in targets])
    return Batch(src=src, src_mask=src_mask, tgt_in=tgt_in, tgt_out=tgt_out, tgt_mask=tgt_mask)


def token_budget_batches(
    lengths: Sequence[int],
    max_tokens: int,
    shuffle: bool = True,
    seed: int = 0,
) -> list[list[int]]:
    """Group example indices into batches of similar length.

    Examples are sorted by length (ties broken at random when ``shuffle``) and cut greedily so
    that ``batch size x longest length <= max_tokens``, the number of padded tokens. With
    ``shuffle`` the order of the batches is random too, so training does not see all the short
    sentences first. An example longer than ``max_tokens`` gets a batch of its own.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}.")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)  # random tie-break, as the sort below is stable
    lengths = [max(1, n) for n in lengths]  # an empty example still takes a row
    order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        new_longest = max(longest, lengths[index])
        if current and new_longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_longest = [], lengths[index]
        current.append(index)
        longest = new_longest
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard(batches: Sequence[T], rank: int = 0, world_size: int = 1) -> list[T]:
    """Process ``rank``'s share of one epoch's ``batches`` when ``world_size`` processes train together.

    Every process must pass the same list (build it with the same seed everywhere). Process
    ``rank`` gets batches ``rank, rank + world_size, ...``, so the shares are disjoint and
    together cover the epoch. The last ``len(batches) % world_size`` batches are dropped, so that
    every process gets the same number: distributed data parallel averages gradients across
    processes at every step, and a process with one step more would wait forever for the others.
    Dropping (rather than repeating some) keeps every sentence at most once per epoch; with a new
    shuffle each epoch, a different few are left out each time. ``world_size=1``: all of them.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1 and world_size at least 1; got rank {rank}, "
                         f"world_size {world_size}.")
    if world_size > 1 and len(batches) < world_size:
        raise ValueError(f"{len(batches)} batch(es) cannot be shared by {world_size} processes: use more "
                         f"data, a smaller max_tokens, or fewer processes.")
    usable = len(batches) - len(batches) % world_size
    return list(batches[rank:usable:world_size])


class TranslationData:
    """Tokenized sentence pairs that can be served as :class:`Batch`es.

    Sentences longer than ``max_len`` tokens are cut (with one warning saying how many), so a
    stray long line cannot exhaust memory.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer, max_len: int = 128):
        max_len = require_int(max_len, "max_len")
        if max_len < 3:
            raise ValueError(f"max_len must be at least 3 (<bos>, a token, <eos>), got {max_len}.")
        if not callable(getattr(tokenizer, "encode_batch", None)):
            raise TypeError(f"tokenizer must be a Tokenizer (train_tokenizer), got {type(tokenizer).__name__}.")
        self.pairs = require_pairs(pairs, "TranslationData's pairs")
        for number, (src, tgt) in enumerate(self.pairs):
            if not src.strip() or not tgt.strip():
                raise ValueError(f"Pair {number} has an empty side ({src!r}, {tgt!r}); every pair needs two sentences.")
        sources = tokenizer.encode_batch([p[0] for p in self.pairs])
        targets = tokenizer.encode_batch([p[1] for p in self.pairs], bos=True, eos=True)
        cut = 0
        self.sources, self.targets = [], []
        for src, tgt in zip(sources, targets, strict=True):
            if len(src) > max_len or len(tgt) > max_len:
                cut += 1
                src = src[:max_len]
                tgt = tgt[: max_len - 1] + [EOS_ID] if len(tgt) > max_len else tgt
            self.sources.append(src)
            self.targets.append(tgt)
        if cut:
            warnings.warn(f"{cut} of {len(self.pairs)} pairs were longer than {max_len} tokens and were cut.",
                          stacklevel=2)

    def __len__(self) -> int:
        return len(self.pairs)

    def lengths(self) -> list[int]:
        return [max(len(s), len(t)) for s, t in zip(self.sources, self.targets, strict=True)]

    def batch(self, indices: Sequence[int]) -> Batch:
        return make_batch([self.sources[i] for i in indices], [self.targets[i] for i in indices])

    def batches(self, max_tokens: int, shuffle: bool = True, seed: int = 0, *, rank: int = 0,
                world_size: int = 1, group: int = 1, num_workers: int = 0,
                pin_memory: bool = False) -> EpochBatches:
        """One epoch of token-budget batches (pass a different ``seed`` each epoch).

        An iterable, built batch by batch as it is consumed, that also knows how many batches
        the epoch has (``len``), so that progress bars can show the total and the time left.

        Under ``torchrun`` pass this process's ``rank`` and the ``world_size``
        (``torch.distributed.get_rank()`` and ``get_world_size()``) and the same ``seed`` in every
        process: each then gets its own share of the epoch (see :func:`shard`), and ``len`` counts
        that share. They are not read from ``torch.distributed`` automatically, because not every
        use is training: a validation set evaluated by rank 0 alone must not be cut to rank 0's share.

        ``group`` > 1 serves lists of ``group`` consecutive batches, one list per optimizer step
        (gradient accumulation, see :class:`~transformer_lesson.training.Trainer`); a last,
        incomplete list is dropped. ``num_workers`` > 0 builds the batches in that many worker
        processes of a ``torch.utils.data.DataLoader`` while the model trains, and ``pin_memory``
        puts them in page-locked memory, from which a GPU copies them asynchronously.
        """
        index_lists = token_budget_batches(self.lengths(), max_tokens, shuffle, seed)
        return EpochBatches(self, index_lists, rank=rank, world_size=world_size, group=group,
                            num_workers=num_workers, pin_memory=pin_memory)


class EpochBatches:
    """The batches of one epoch, made on demand; ``len()`` is the number of batches (or groups).

    ``index_lists`` are the whole epoch's; with ``world_size`` > 1 only process ``rank``'s share
    of them (:func:`shard`) is served. ``rank`` and ``world_size`` are kept as attributes, so that
    the trainer can check that a distributed run shares its data out. See
    :meth:`TranslationData.batches` for ``group``, ``num_workers`` and ``pin_memory``.
    """

    def __init__(self, data: TranslationData, index_lists: Sequence[Sequence[int]], *, rank: int = 0,
                 world_size: int = 1, group: int = 1, num_workers: int = 0, pin_memory: bool = False):
        for name, value, least in (("group", group, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}.")
        self._data = data
        self._index_lists = shard(index_lists, rank, world_size)
        self.rank, self.world_size = rank, world_size
        self.group, self.num_workers, self.pin_memory = group, num_workers, pin_memory
        self._iterator: Iterator[Any] | None = None

    def __len__(self) -> int:
        return len(self._index_lists) // self.group

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._serve()
        return next(self._iterator)

    def _serve(self) -> Iterator[Any]:
        index_lists = self._index_lists[: len(self) * self.group]
        if self.num_workers == 0:
            batches: Iterator[Batch] = (self._data.batch(indices) for indices in index_lists)
            if self.pin_memory:
                batches = (batch.pin_memory() for batch in batches)
        else:
            # batch_size=None: each item of the "dataset" (one batch's index list) is one batch.
            batches = iter(torch.utils.data.DataLoader(
                index_lists, batch_size=None, collate_fn=self._data.batch, num_workers=self.num_workers,
                pin_memory=self.pin_memory))
        if self.group == 1:
            yield from batches
            return
        while True:
            chunk = list(itertools.islice(batches, self.group))
            if len(chunk) < self.group:
                return
            yield chunk
