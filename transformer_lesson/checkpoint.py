"""Checkpoints: everything needed to resume a run exactly, or to rebuild its model later.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the position in
training (step, epoch, batches done in the epoch), every random-number generator's state (of
every process, under torchrun), the run's config, the model's own config (so that the model can be
rebuilt from the file alone: :func:`read_model_config`) and the tokenizer's fingerprint. It is
written to a temporary file and then renamed over the old one, so a crash while saving never
leaves a half-written checkpoint behind.

Everything in it is a tensor or a plain Python value (NumPy numbers, paths and dataclasses are
converted by :func:`to_plain`), so that ``torch.load(weights_only=True)`` can read it without
running any code.

The training loop (:class:`~transformer_lesson.training.Trainer`) writes and reads checkpoints
with the functions here; this module knows nothing of it (it stores a run's history as the plain
dict it is given).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import random
import re
import time
import warnings
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .runtime import AmpSettings, rank_and_world_size, unwrap
from .validation import require_file, require_output_path

CHECKPOINT_FORMAT = "transformer-lesson-checkpoint"
# 3: "model_config", the model's own config (no "model_class");
# 2: "rng" is a list, one state per process; 1: "rng" is this process's state.
CHECKPOINT_VERSION = 3


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model/tokenizer. The message says which."""


# ---------------------------------------------------------------------------------------------
# Random-number generator states (so that a resumed run draws the same dropout masks)
# ---------------------------------------------------------------------------------------------


def _bytes_to_tensor(data: bytes | None) -> torch.Tensor | None:
    return None if data is None else torch.frombuffer(bytearray(data), dtype=torch.uint8)


def get_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and PyTorch's generators, in a form ``torch.load`` accepts safely."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():  # this process's GPU only (under torchrun: its rank's)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)  # .cpu(): a checkpoint may have been mapped to the GPU
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list | tuple):  # checkpoints before 2026-11-23 held every GPU's state
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda.cpu())


def gather_rng_states() -> list[dict[str, Any]] | None:
    """Every process's :func:`get_rng_state`, in rank order, on rank 0 (None on the others).

    A collective: under ``torchrun`` every process must call it at the same point. Outside a
    distributed run, a list of this process's state alone.
    """
    state = get_rng_state()
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return [state]
    states = [None] * world_size if rank == 0 else None
    dist.gather_object(state, states, dst=0)
    return states


def this_process_rng_state(saved: Any) -> dict[str, Any] | None:
    """This process's random state in a checkpoint's ``"rng"``, or None if another number of processes wrote it.

    ``saved`` is a list of states in rank order (version 2 on) or one process's state (version 1).
    """
    states = saved if isinstance(saved, list) else [saved]
    rank, world_size = rank_and_world_size()
    return states[rank] if len(states) == world_size else None


# ---------------------------------------------------------------------------------------------
# Plain values
# ---------------------------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """``value`` with NumPy numbers and arrays, paths, dataclasses, enums, devices and dtypes turned
    into plain Python values (recursively through dicts, lists and tuples), so that
    ``torch.load(weights_only=True)`` accepts it. Tensors are kept; anything else becomes its ``str``
    (with a warning)."""
    if isinstance(value, np.generic):  # before the next line: np.float64 is a subclass of float
        return value.item()
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike | torch.device | torch.dtype):
        return str(value)
    if isinstance(value, Enum):
        return to_plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {to_plain(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [to_plain(v) for v in value]
        return tuple(items) if type(value) is tuple else items  # a namedtuple becomes a list
    warnings.warn(f"A {type(value).__name__} in a checkpoint's config or history is stored as its "
                  f"string {str(value)[:60]!r}.", stacklevel=3)
    return str(value)


def plain_config(config: Any) -> dict[str, Any]:
    """A config (a dataclass, a mapping, or None) as a plain dict (``{}`` for None); see :func:`to_plain`."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return to_plain(dataclasses.asdict(config))
    return to_plain(dict(config))


def _own_model_config(model: nn.Module) -> dict[str, Any] | None:
    """The model's ``config`` attribute as a plain dict, if it has one that is a dataclass instance."""
    config = getattr(unwrap(model), "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return plain_config(config)
    return None


def _fingerprint(tokenizer: Any) -> str | None:
    if tokenizer is None or isinstance(tokenizer, str):
        return tokenizer
    return tokenizer.fingerprint


def precision_name(amp: AmpSettings | None) -> str:
    """"bfloat16" or "float16" under autocast, "float32" without (``amp`` None: without)."""
    return "float32" if amp is None or amp.dtype is None else str(amp.dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    *,
    step: int = 0,
    epoch: int = 0,
    position: int = 0,
    config: Any = None,
    model_config: Any = None,
    tokenizer: Any = None,
    history: Mapping[str, Any] | None = None,
    amp: AmpSettings | None = None,
    skipped_steps: int = 0,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint atomically (to ``path.tmp<pid>``, then renamed over ``path``).

    ``position`` is the number of batches of ``epoch`` already trained on; ``config`` the run's
    settings (a dict or dataclass); ``model_config`` the model's own config (a dataclass or dict;
    by default the model's ``config`` attribute when that is a dataclass), which
    :func:`read_model_config` gives back to rebuild the model; ``tokenizer`` a
    :class:`~transformer_lesson.tokenizer.Tokenizer` or its fingerprint string; ``history`` a
    run's record as a plain dict (``History.state_dict()``); ``amp`` the mixed precision the run
    used (recorded, so that a resume on another kind of GPU can say so). ``rng_states`` are the
    random states of every process, in rank order (by default this process's alone).
    """
    path = require_output_path(path, "path", what="checkpoint", usual_name="model.pt")
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_checkpoint saves an nn.Module, got {type(model).__name__}.")
    model = unwrap(model)  # no "module." prefix in the saved names
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "model_sha256": weights_digest(model.state_dict()),
        "model_config": plain_config(model_config) if model_config is not None else _own_model_config(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_class": type(optimizer).__name__ if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": step,
        "epoch": epoch,
        "position": position,
        "rng": rng_states if rng_states is not None else [get_rng_state()],
        "config": plain_config(config),
        "tokenizer_fingerprint": _fingerprint(tokenizer),
        # The tokenizer itself (a few hundred kB), so that the file alone can translate; as a uint8
        # tensor, not bytes: torch < 2.5's weights-only loader refuses pickled bytes (_codecs.encode).
        "tokenizer_model": _bytes_to_tensor(getattr(tokenizer, "model_proto", None)),
        "history": to_plain(dict(history)) if history is not None else None,
        "amp_dtype": precision_name(amp),
        "skipped_steps": skipped_steps,
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{glob.escape(path.name)}.tmp*"):  # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _config_differences(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """``"key: <theirs> in the checkpoint, <ours> in this model"`` for every key whose value differs."""
    keys = sorted((k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)), key=str)
    return [f"{k}: {theirs.get(k, '(unset)')!r} in the checkpoint, {ours.get(k, '(unset)')!r} in this model"
            for k in keys]


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 of a state dict's names, dtypes, shapes and bytes: a checkpoint stores it, so that a
    damaged file (one flipped byte inside a weight) is refused instead of loading wrong numbers."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_state_dict_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint",
                          path: str | Path | None = None, model_config: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected or differently shaped parameter.

    ``path``, the file the state dict came from, is named in the message. ``model_config``, the
    config the checkpoint's model was built with, is compared with the model's own ``config``
    (when it has a dataclass one): the message lists the settings that differ.
    """
    own = model.state_dict()
    problems = []
    for name, tensor in state_dict.items():
        if name not in own:
            problems.append(f"  {name}: in the {source} but not in the model")
        elif tuple(own[name].shape) != tuple(tensor.shape):
            problems.append(f"  {name}: {source} has shape {tuple(tensor.shape)}, "
                            f"the model has {tuple(own[name].shape)}")
    problems += [f"  {name}: in the model but not in the {source}" for name in own if name not in state_dict]
    if not problems:
        return
    where = f" {path}" if path is not None else ""
    ours = _own_model_config(model)
    differences = _config_differences(model_config, ours) if model_config and ours is not None else []
    settings = ("\nThe model's config differs from the checkpoint's:\n"
                + "\n".join(f"  {d}" for d in differences)) if differences else ""
    if model_config and path is not None:
        read = f"read_model_config({str(path)!r})"
        built = f"{type(unwrap(model).config).__name__}(**{read})" if ours is not None else read
        rebuild = f"Build the same kind of model from the checkpoint's model config, {built}"
    else:
        rebuild = "Build the model with the config the checkpoint was trained with (checkpoint['config'])"
    afresh = f"delete {path} to train afresh" if path is not None else "delete the checkpoint file to train afresh"
    raise CheckpointError(
        f"The {source}{where} does not fit this {type(model).__name__} ({len(problems)} problem(s)):\n"
        + "\n".join(problems[:12]) + ("\n  ..." if len(problems) > 12 else "") + settings
        + f"\n{rebuild}, or {afresh}.")


def check_same_config(payload: Mapping[str, Any], config: Mapping[str, Any], path: str | Path) -> None:
    """Raise :class:`CheckpointError` when a read checkpoint's run ``config`` differs from ``config``.

    Resuming would silently continue the old run (its weights, its optimizer's learning rate)
    instead of training with the new settings. An empty config on either side matches anything.
    """
    theirs = payload.get("config") or {}
    if theirs and config and theirs != config:
        changed = sorted(str(k) for k in set(theirs) | set(config) if theirs.get(k) != config.get(k))
        details = ", ".join(f"{k}: {theirs.get(k, '(unset)')!r} -> {config.get(k, '(unset)')!r}" for k in changed[:8])
        raise CheckpointError(
            f"The checkpoint {path} was trained with a different config ({details}). Resuming it "
            f"would continue the old run, not train with the new settings. Delete {path} to "
            f"train afresh, or set the config back to resume it.")


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    *,
    tokenizer: Any = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint, check it fits, and load it into whatever objects are given.

    Returns the whole checkpoint dict (``step``, ``epoch``, ``config``, ``model_config``,
    ``history``, ...). Raises :class:`CheckpointError` when the file is missing, truncated or not a
    checkpoint, when its tokenizer fingerprint differs from ``tokenizer``'s, or when the model's
    parameters differ (by name or shape). Loading uses ``weights_only=True``: a checkpoint cannot
    run code. Checkpoints of versions 1 and 2 (before ``model_config``) load too.
    """
    path = require_file(path, "path", what="checkpoint", error=CheckpointError,
                        advice="train a model first, or check the path", usual_name="model.pt")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        what = "it is empty" if not head else "an HTML page saved by a failed download, or another kind of file?"
        raise CheckpointError(
            f"{path} is not a checkpoint: torch.save writes a zip archive, and this file starts with {head!r} "
            f"({what}). Point to a checkpoint written by the course (such as DIR/model.pt of "
            f"`python -m transformer_lesson.train`), or download it again.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # PyTorch's own first sentence, without its advice (which is not ours) or colour codes.
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().split("\n")[0].split(". ")[0][:120]
        if "weights only load failed" in str(error).lower():
            raise CheckpointError(
                f"The checkpoint {path} is complete, but it holds a Python object that a safe load "
                f"(torch.load(weights_only=True)) refuses to read, such as a NumPy number or a Path "
                f"saved by other code. Do not delete it: if you trust the file, read it with "
                f"torch.load(path, weights_only=False) and save it again with save_checkpoint(), "
                f"which stores plain values only. ({first_line})") from None
        raise CheckpointError(
            f"The checkpoint {path} could not be read: it is truncated or corrupt (perhaps the run "
            f"was killed while copying it). Delete it to start afresh. ({type(error).__name__}: "
            f"{first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a transformer-lesson checkpoint (a bare state_dict?). "
                              f"Save checkpoints with save_checkpoint().")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version of transformer_lesson "
                              f"(format {payload['version']}); update the package.")
    expected = payload.get("model_sha256")  # absent before this field existed: nothing to compare
    weights = payload.get("model")
    if expected is not None and isinstance(weights, Mapping) and weights_digest(weights) != expected:
        raise CheckpointError(
            f"{path} is damaged: its weights do not match the checksum saved with them (a flipped bit on the "
            f"disk, or an interrupted copy). Use an earlier checkpoint or train again.")
    theirs, ours = payload.get("tokenizer_fingerprint"), _fingerprint(tokenizer)
    if theirs is not None and ours is not None and theirs != ours:
        raise CheckpointError(
            f"{path} was trained with a different vocabulary: its tokenizer fingerprint is "
            f"{theirs!r}, this tokenizer's is {ours!r}. Token ids would mean different words; "
            f"use the tokenizer the model was trained with (same vocab_size and training text).")
    apply_checkpoint(payload, path, model, optimizer, scheduler, scaler)
    return payload


def apply_checkpoint(payload: Mapping[str, Any], path: str | Path, model: nn.Module | None = None,
                     optimizer: Any = None, scheduler: Any = None, scaler: Any = None) -> None:
    """Load a read checkpoint's states into whatever objects are given (see :func:`load_checkpoint`).

    The model is checked first (:func:`check_state_dict_fits`); random states are not restored
    (:func:`set_rng_state` does that, when the caller is ready to continue).
    """
    if model is not None:
        model = unwrap(model)
        check_state_dict_fits(model, payload["model"], path=path, model_config=payload.get("model_config"))
        model.load_state_dict(payload["model"])
    if optimizer is not None and payload.get("optimizer") is not None:
        _check_same_optimizer(payload, path, optimizer)
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"The optimizer state in {path} does not fit this optimizer: {error}") from None
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])


def _check_same_optimizer(payload: Mapping[str, Any], path: str | Path, optimizer: Any) -> None:
    """Refuse another kind of optimizer's state (Adam's into SGD: ``load_state_dict`` takes it, and the
    first step fails looking for ``momentum``); the class, or else the group settings, tell them apart."""
    saved_class = payload.get("optimizer_class")
    saved_groups = payload["optimizer"].get("param_groups") or [{}]
    saved_keys = set(saved_groups[0]) - {"params"}
    our_keys = set(optimizer.param_groups[0]) - {"params"} if optimizer.param_groups else set()
    ours = type(optimizer).__name__
    # Settings that define a kind of optimizer (not ones a newer PyTorch may add to every kind).
    defining = {"momentum", "dampening", "nesterov", "betas", "eps", "rho", "lr_decay", "alpha"}
    if (saved_class is not None and saved_class != ours) or (saved_keys and (our_keys - saved_keys) & defining):
        settings = ", ".join(sorted(saved_keys & defining)) or "other settings"
        saved = saved_class or f"another optimizer (with {settings})"
        raise CheckpointError(f"The optimizer state in {path} was saved by {saved}, but this optimizer is {ours}: "
                              f"resume with the optimizer the run was trained with, or load only the model "
                              f"(load_checkpoint(path, model)) and start a new optimizer.")


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The config the checkpoint's model was built with, as a plain dict: ``Config(**read_model_config(path))``.

    Raises :class:`CheckpointError` when the file is not a readable checkpoint, or holds no model
    config (written before version 3, or by a model without a dataclass ``config``).
    """
    return model_config_of(load_checkpoint(path), path)


def tokenizer_of(payload: Mapping[str, Any], path: str | Path):
    """The :class:`~transformer_lesson.tokenizer.Tokenizer` stored in a checkpoint already read.

    Raises :class:`CheckpointError` when it holds none (saved without a tokenizer object, or only
    its fingerprint) or when the stored one does not match the fingerprint.
    """
    from .tokenizer import Tokenizer

    proto = payload.get("tokenizer_model")
    if isinstance(proto, torch.Tensor) and proto.dtype == torch.uint8 and proto.dim() == 1:
        proto = proto.cpu().numpy().tobytes()  # format 3 stored the bytes themselves: both load
    if not isinstance(proto, bytes) or not proto:
        raise CheckpointError(
            f"The checkpoint {path} holds no tokenizer (it was saved without one, or with only its "
            f"fingerprint), so it cannot translate on its own. Save it with save_checkpoint(..., "
            f"tokenizer=tokenizer), as `python -m transformer_lesson.train` does.")
    try:
        tokenizer = Tokenizer(proto)
    except Exception as error:
        raise CheckpointError(f"The tokenizer stored in {path} is damaged ({type(error).__name__}); the "
                              f"checkpoint cannot be used to translate.") from None
    expected = payload.get("tokenizer_fingerprint")
    if expected is not None and tokenizer.fingerprint != expected:
        raise CheckpointError(f"The tokenizer stored in {path} does not match the fingerprint recorded "
                              f"with it ({tokenizer.fingerprint} vs {expected}): the file is damaged.")
    return tokenizer


def model_config_of(payload: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The model config in a checkpoint already read (see :func:`read_model_config`)."""
    model_config = payload.get("model_config")
    if not model_config:
        raise CheckpointError(
            f"The checkpoint {path} holds no model config (format version {payload.get('version', '?')}; "
            f"version 3 stores the model's dataclass `config`, when it has one). Build the model with "
            f"the settings it was trained with (the run's config, checkpoint['config'], may hold them), "
            f"load it with load_checkpoint(path, model), and save it again to store its config.")
    return dict(model_config)


def average_weights(paths: list[str | Path] | tuple[str | Path, ...]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights of the checkpoints at ``paths`` (a state dict).

    Averaging the weights of the last few checkpoints of one run, as the Transformer paper did
    (Vaswani et al., 2017: the last 5 or 20), gives a model near the centre of the region the
    optimizer was moving around in at the end, which usually scores a little higher than any one
    of them. The weights must come from one run (the same shapes, and close to each other: the mean
    of two unrelated models is no model at all). Floating-point tensors are averaged in float64
    and stored in their own dtype; any other tensor must be equal in every checkpoint.
    """
    if not paths:
        raise ValueError("average_weights needs at least one checkpoint path.")
    total: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}
    for path in paths:
        weights = load_checkpoint(path)["model"]
        if not first:
            first = weights
            total = {name: t.double() for name, t in weights.items() if t.is_floating_point()}
            continue
        if set(weights) != set(first) or any(weights[n].shape != first[n].shape for n in first):
            raise CheckpointError(f"{path} holds other weights than {paths[0]} (names or shapes differ): "
                                  f"only checkpoints of one run can be averaged.")
        for name, tensor in weights.items():
            if name in total:
                total[name] += tensor.double()
            elif not torch.equal(tensor, first[name]):
                raise CheckpointError(f"{path} and {paths[0]} differ in {name}, which is not a float "
                                      f"tensor and cannot be averaged.")
    return {name: (total[name] / len(paths)).to(t.dtype) if name in total else t for name, t in first.items()}
