"""One home for checking the inputs of the package's public functions.

Each kind of input has one function here, and every public function that takes that kind of
input calls it, so that a mistake gets the same short message wherever it is made: what was
given, what was expected, what to do. A wrong *type* raises :class:`TypeError`, a wrong value
:class:`ValueError`, a device this machine lacks
:class:`~transformer_lesson.runtime.DeviceError`.

=========================  ==================================================================
kind of input              function
=========================  ==================================================================
a whole number             :func:`require_int`
a sentence                 :func:`require_text`
a list of sentences        :func:`require_text_list`
(source, target) pairs     :func:`require_pairs`
token ids (one sentence)   :func:`require_token_ids`
token ids for a model      :func:`~transformer_lesson.batching.check_token_ids` ((B, T) + mask)
a tensor                   :func:`require_tensor`
a device                   :func:`require_device`
an existing file           :func:`require_file`
a file to write            :func:`require_output_path`
a model and its tokenizer  :func:`require_same_vocab`
=========================  ==================================================================
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .runtime import DeviceError, check_device_available


def describe(value: Any) -> str:
    """A short description of ``value`` for an error message: its type, and a glimpse of it."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a NumPy array of shape {value.shape} ({value.dtype})"
    if isinstance(value, str):
        return f"{value!r:.60}"
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return f"a {type(value).__name__} ({value!r:.60})"


def require_int(value: Any, name: str, *, at_least: int | None = None, at_most: int | None = None) -> int:
    """``value`` as an int (Python or NumPy integer, not a bool) within the bounds given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number (int), got {describe(value)}.")
    value = int(value)
    if (at_least is not None and value < at_least) or (at_most is not None and value > at_most):
        bounds = (f"at least {at_least}" if at_most is None else
                  f"at most {at_most}" if at_least is None else f"between {at_least} and {at_most}")
        raise ValueError(f"{name} must be {bounds}, got {value}.")
    return value


def require_number(value: Any, name: str, *, at_least: float | None = None) -> float:
    """``value`` as a finite float (an int is fine) no smaller than ``at_least``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {describe(value)}.")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")) or (at_least is not None and value < at_least):
        raise ValueError(f"{name} must be a finite number{f' >= {at_least}' if at_least is not None else ''}, "
                         f"got {value}.")
    return value


def require_text(value: Any, name: str) -> str:
    """``value`` if it is one string."""
    if not isinstance(value, str):
        hint = ": for several sentences pass them as a list to the batch version" if isinstance(
            value, list | tuple) else ""
        raise TypeError(f"{name} must be one string (a sentence), got {describe(value)}{hint}.")
    return value


def require_text_list(value: Any, name: str, *, allow_empty: bool = True) -> list[str]:
    """``value`` (a list, tuple or any iterable of strings, a generator too) as a list of strings.

    One string is refused (iterating it would give its characters), and so is any item that is not a
    string (a nested list, None, a number).
    """
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a list of sentences, got one string ({value!r:.40}); wrap it: [text].")
    if value is None or not isinstance(value, Iterable) or isinstance(value, Mapping | torch.Tensor | np.ndarray):
        raise TypeError(f"{name} must be a list of sentences (strings), got {describe(value)}.")
    texts = list(value)
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            hint = (": pass one flat list of strings, one per sentence" if isinstance(text, list | tuple)
                    else ": every item must be a sentence")
            raise TypeError(f"{name}: item {number} is {describe(text)}, not a string{hint}.")
    if not texts and not allow_empty:
        raise ValueError(f"{name} is empty: give at least one sentence.")
    return texts


def require_pairs(value: Any, name: str, *, allow_empty: bool = False) -> list[tuple[str, str]]:
    """``value`` as a list of (source, target) string pairs, as ``load_multi30k`` returns them."""
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a list of (source, target) pairs of strings, got one string "
                        f"({value!r:.40}): pair each source with its reference, e.g. list(zip(sources, targets)).")
    if value is None or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of (source, target) pairs of strings, as load_multi30k returns; "
                        f"got {describe(value)}.")
    pairs = list(value)
    for number, pair in enumerate(pairs):
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            hint = (": a list of sentences has no targets; pair each source with its reference, e.g. "
                    "list(zip(sources, targets))" if isinstance(pair, str) else "")
            raise TypeError(f"{name} must hold (source, target) pairs of strings, as load_multi30k returns; "
                            f"item {number} is {describe(pair)}{hint}.")
    if not pairs and not allow_empty:
        raise ValueError(f"{name} is empty: give at least one (source, target) pair.")
    return pairs


def require_token_ids(ids: Any, name: str, vocab_size: int) -> list[int]:
    """One sentence's token ids (a list of ints, a 1-D integer tensor or array) as a list of ints.

    Each id must be in 0 .. vocab_size - 1. A 2-D tensor or a list of lists is refused (that is a batch).
    """
    if isinstance(ids, torch.Tensor | np.ndarray):
        if ids.ndim != 1:
            raise TypeError(f"{name} must be one sentence's ids (1-D), got {describe(ids)}: for a batch use "
                            f"decode_batch, for one row take ids[0].")
        if isinstance(ids, torch.Tensor) and ids.is_floating_point() or (
                isinstance(ids, np.ndarray) and not np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(f"{name} must hold integer token ids, got {describe(ids)}: use the argmax's ids.")
        values = ids.tolist()
    elif isinstance(ids, str | bytes) or ids is None or not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be a list of token ids (ints), got {describe(ids)}.")
    else:
        values = list(ids)
    out = []
    for number, token_id in enumerate(values):
        if isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral):
            if isinstance(token_id, torch.Tensor) and token_id.dim() == 0 and not token_id.is_floating_point():
                token_id = int(token_id)
            else:
                hint = ": for a batch of sentences use decode_batch" if isinstance(token_id, Iterable) else ""
                raise TypeError(f"{name}: item {number} is {describe(token_id)}, not a token id (int){hint}.")
        token_id = int(token_id)
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"{name} holds token id {token_id}, but this vocabulary has ids 0 .. {vocab_size - 1}: "
                             f"the ids come from another tokenizer or a model with another vocabulary size.")
        out.append(token_id)
    return out


def require_id_sequences(sequences: Any, name: str) -> torch.Tensor:
    """All the ids of a list of token-id sequences, laid end to end, as one long tensor.

    Refuses a string, a sequence that is not a list of ids (a string, a number) and ids that are not
    whole numbers (floats or booleans would be rounded silently). The ids' type is checked on the
    tensor they are converted to, at no extra cost.
    """
    if isinstance(sequences, str | bytes) or not isinstance(sequences, Sized | torch.Tensor):
        hint = ("encode text first with tokenizer.encode_batch" if isinstance(sequences, str | bytes)
                else "pass a list (list(...) of a generator)")
        raise TypeError(f"{name} must be a list of token-id lists, got {describe(sequences)}: {hint}.")
    for number, seq in enumerate(sequences):
        if isinstance(seq, str | bytes) or not isinstance(seq, Iterable):
            hint = ("encode text first with tokenizer.encode_batch" if isinstance(seq, str | bytes)
                    else "for one sequence pass [ids]")
            raise TypeError(f"{name}: item {number} is {describe(seq)}, not a list of token ids: {hint}.")
    flat = torch.tensor([token for seq in sequences for token in seq])  # the dtype the ids have
    if flat.numel() and (flat.is_floating_point() or flat.dtype == torch.bool):
        raise TypeError(f"{name} must hold whole-number token ids, but holds {flat.dtype} values: take the ids "
                        f"from tokenizer.encode or from an argmax (nothing is rounded silently).")
    return flat.long()


def require_tensor(x: Any, name: str, *, ndim: int | None = None, layout: str = "", floating: bool = False,
                   dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
    """``x`` if it is a tensor with ``ndim`` dimensions (named by ``layout``), of ``dtype`` and on ``device``."""
    expected = f"{ndim}-D tensor {layout}".rstrip() if ndim is not None else "tensor"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a {expected}, got {describe(x)}.")
    if ndim is not None and x.dim() != ndim:
        hint = ": for one example, add a batch dimension with .unsqueeze(0)" if x.dim() == ndim - 1 else ""
        raise ValueError(f"{name} has shape {tuple(x.shape)}, but a {expected} was expected{hint}.")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}: convert it with .float().")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} is {x.dtype} but the module's weights are {dtype}: convert the input with "
                        f".to({dtype}), or the module with .to({x.dtype}) (or use torch.autocast).")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the module's weights are on {device}: move it with "
                         f".to({str(device)!r}).")
    return x


def require_device(device: Any, name: str = "device") -> torch.device:
    """``device`` (a ``torch.device`` or a string such as "cpu", "cuda", "cuda:1", "mps") as a torch.device.

    A device this machine does not have raises :class:`~transformer_lesson.runtime.DeviceError`.
    """
    if isinstance(device, torch.device):
        return check_device_available(device)
    if not isinstance(device, str):
        raise TypeError(f"{name} must be a torch.device or a string such as 'cpu' or 'cuda', got {describe(device)}; "
                        f"get_device() gives the best one available.")
    try:
        parsed = torch.device(device.strip().lower())
    except RuntimeError:
        raise DeviceError(f"Unknown device {device!r}: use 'cuda', 'cuda:N', 'mps' or 'cpu'.") from None
    return check_device_available(parsed)


def require_file(path: Any, name: str, *, what: str = "file", error: type[Exception] = FileNotFoundError,
                 advice: str = "check the path", usual_name: str | None = None) -> Path:
    """``path`` as a Path to an existing file; a folder or a missing path raises ``error``.

    ``usual_name`` is the file a folder usually holds (``model.pt`` in a run folder), named in the advice.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a path (str or pathlib.Path), got {describe(path)}.")
    path = Path(path)
    if path.is_dir():
        inside = f", such as {path / usual_name}" if usual_name else ""
        raise error(f"{path} is a folder, not a {what}: point to the {what} inside it{inside}.")
    if not path.is_file():
        raise error(f"No {what} at {path}: {advice}.")
    return path


def require_output_path(path: Any, name: str, *, what: str = "file", usual_name: str | None = None) -> Path:
    """``path`` as a Path to write a file to: a str or Path that is not a folder."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a file path (str or pathlib.Path), got {describe(path)}.")
    path = Path(path)
    if path.is_dir():
        inside = f", such as {path / usual_name}" if usual_name else ""
        raise IsADirectoryError(f"{path} is a folder: give a file path for the {what}{inside}.")
    return path


def require_same_vocab(model: Any, tokenizer: Any) -> None:
    """Raise ValueError when the model's vocabulary cannot hold every id of ``tokenizer``."""
    sizes = [getattr(getattr(model, "config", None), field, None)
             for field in ("src_vocab_size", "tgt_vocab_size", "vocab_size")]
    sizes = [size for size in sizes if isinstance(size, int)]
    vocab = getattr(tokenizer, "vocab_size", None)
    if not isinstance(vocab, int):
        raise TypeError(f"tokenizer must be a Tokenizer (train_tokenizer, or tokenizer_of a checkpoint), "
                        f"got {describe(tokenizer)}.")
    if sizes and min(sizes) < vocab:
        raise ValueError(f"The model's vocabulary has {min(sizes)} ids but the tokenizer's has {vocab}: they were "
                         f"not trained together. Use the tokenizer the model was trained with (a checkpoint of "
                         f"`python -m transformer_lesson.train` stores it), or build the model with "
                         f"vocab size {vocab}.")
