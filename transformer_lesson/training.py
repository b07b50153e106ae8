"""One training loop for every model in the course, RNNs and Transformers alike.

The loop is the plain one (forward, loss, backward, clip, step) plus what makes long runs
practical: mixed precision where the device has it, a progress bar, a record of the loss curve,
and checkpoints that let a run interrupted at any step (a Colab disconnect) resume and end
exactly where an uninterrupted run would have.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the position in
training (step, epoch, batches done in the epoch), every random-number generator's state (of
every process, under torchrun), the run's config and the tokenizer's fingerprint. It is written to
a temporary file and then renamed over the old one, so a crash while saving never leaves a
half-written checkpoint behind.
Everything in it is a tensor or a plain Python value (NumPy numbers, paths and dataclasses are
converted), so that ``torch.load(weights_only=True)`` can read it without running any code.

Resuming is exact on a CPU: bit for bit the weights an uninterrupted run ends with. On a GPU it is
exact up to the nondeterminism of some GPU kernels (cuDNN's RNNs, atomic adds), so the two runs
can drift apart in the last digits.

Under ``torchrun`` (distributed data parallel, a later lesson) every process trains on its own
share of each epoch's batches; the loss logged (and checked for divergence) is the mean over the
processes, and a checkpoint holds every process's random state, so that a resumed run is exact
there too. Only the main process (rank 0) draws the progress bar, evaluates and writes checkpoints;
the others wait for it (see :class:`Trainer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .runtime import AmpSettings, amp_settings

CHECKPOINT_FORMAT = "transformer-lesson-checkpoint"
CHECKPOINT_VERSION = 2  # 2: "rng" is a list, one state per process (1: this process's state)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model/tokenizer. The message says which."""


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def sequence_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy averaged over the real (non-pad) target tokens of a batch.

    ``logits`` (B, T, V), ``targets`` (B, T) token ids, ``mask`` (B, T) True at real tokens.
    Returns a scalar. Every real token counts once, so a long sentence weighs more than a short
    one, and padding counts not at all. Computed in float32 even under autocast.
    """
    if logits.shape[:2] != targets.shape or targets.shape != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} should be (B, T, V) with targets and mask "
                         f"(B, T); got targets {tuple(targets.shape)}, mask {tuple(mask.shape)}.")
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        reduction="none",
        label_smoothing=label_smoothing,
    )  # (B*T,)
    mask = mask.reshape(-1)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def seq2seq_loss(
    model: nn.Module, batch: Any, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The default loss of :class:`Trainer`: teacher-forced ``model(src, src_mask, tgt_in)``.

    Returns (mean loss over real target tokens, number of those tokens). The number is a 0-d tensor
    on the batch's device: turning it into an int would make the CPU wait for the GPU every step.
    """
    logits = model(batch.src, batch.src_mask, batch.tgt_in)  # (B, T, V)
    return sequence_loss(logits, batch.tgt_out, batch.tgt_mask, label_smoothing), batch.tgt_mask.sum()


# ---------------------------------------------------------------------------------------------
# Random-number generator states (so that a resumed run draws the same dropout masks)
# ---------------------------------------------------------------------------------------------


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
    keys = n["keys"].cpu().numpy().astype(np.uint32)  # .cpu(): Trainer.load maps checkpoints to the GPU
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list | tuple):  # checkpoints before 2026-11-23 held every GPU's state
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda.cpu())


# ---------------------------------------------------------------------------------------------
# Checkpoints
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


def _plain_config(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return to_plain(dataclasses.asdict(config))
    return to_plain(dict(config))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """False in every process but rank 0 of an initialised ``torch.distributed`` run (``torchrun``)."""
    return not _distributed() or dist.get_rank() == 0


def _rank_and_world_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)


def _wait_for_every_process() -> None:
    """A barrier in a distributed run; nothing otherwise."""
    if _distributed():
        dist.barrier()


def _mean_over_processes(value: torch.Tensor) -> float:
    """A scalar tensor's mean over the processes of a distributed run (its value otherwise), as a float.

    One all-reduce of one number: every process then sees the same value.
    """
    if not _distributed():
        return value.item()
    total = value.detach().float().reshape(1).clone()  # on the device: NCCL reduces GPU tensors
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def _gather_rng_states() -> list[dict[str, Any]] | None:
    """Every process's :func:`get_rng_state`, in rank order, on rank 0 (None on the others).

    A collective: under ``torchrun`` every process must call it at the same point.
    """
    state = get_rng_state()
    if not _distributed():
        return [state]
    states = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(state, states, dst=0)
    return states


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or DataParallel) wrapper; other models as they are."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def _fingerprint(tokenizer: Any) -> str | None:
    if tokenizer is None or isinstance(tokenizer, str):
        return tokenizer
    return tokenizer.fingerprint


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
    tokenizer: Any = None,
    history: History | None = None,
    amp: AmpSettings | None = None,
    skipped_steps: int = 0,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint atomically (to ``path.tmp<pid>``, then renamed over ``path``).

    ``position`` is the number of batches of ``epoch`` already trained on; ``tokenizer`` is a
    :class:`~transformer_lesson.tokenizer.Tokenizer` or its fingerprint string; ``amp`` the
    mixed precision the run used (recorded, so that a resume on another kind of GPU can say so).
    ``rng_states`` are the random states of every process, in rank order (by default this
    process's alone).
    """
    path = Path(path)
    model = unwrap(model)  # no "module." prefix in the saved names
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": type(model).__name__,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": step,
        "epoch": epoch,
        "position": position,
        "rng": rng_states if rng_states is not None else [get_rng_state()],
        "config": _plain_config(config),
        "tokenizer_fingerprint": _fingerprint(tokenizer),
        "history": history.state_dict() if history is not None else None,
        "amp_dtype": _precision_name(amp),
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


def _precision_name(amp: AmpSettings | None) -> str:
    """"bfloat16" or "float16" under autocast, "float32" without."""
    return "float32" if amp is None or amp.dtype is None else str(amp.dtype).removeprefix("torch.")


def check_state_dict_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint",
                          path: str | Path | None = None) -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected or differently shaped parameter.

    ``path``, the file the state dict came from, is named in the message.
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
    if problems:
        vocab_hint = ""
        if any("embedding" in p or ".out." in p for p in problems):
            vocab_hint = ("\nA differing first dimension of an embedding or output layer means a "
                          "different vocabulary size.")
        where = f" {path}" if path is not None else ""
        afresh = (f"delete {path} to train afresh" if path is not None
                  else "delete the checkpoint file to train afresh")
        raise CheckpointError(
            f"The {source}{where} does not fit this {type(model).__name__} ({len(problems)} problem(s)):\n"
            + "\n".join(problems[:12]) + ("\n  ..." if len(problems) > 12 else "") + vocab_hint
            + f"\nBuild the model with the config the checkpoint was trained with "
              f"(checkpoint['config']), or {afresh}.")


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

    Returns the whole checkpoint dict (``step``, ``epoch``, ``config``, ``history``, ...). Raises
    :class:`CheckpointError` when the file is missing, truncated or not a checkpoint, when its
    tokenizer fingerprint differs from ``tokenizer``'s, or when the model's parameters differ
    (by name or shape). Loading uses ``weights_only=True``: a checkpoint cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Train a model first (or check the path).")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
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
            f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a transformer-lesson checkpoint (a bare state_dict?). "
                              f"Save checkpoints with save_checkpoint().")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version of transformer_lesson "
                              f"(format {payload['version']}); update the package.")
    theirs, ours = payload.get("tokenizer_fingerprint"), _fingerprint(tokenizer)
    if theirs is not None and ours is not None and theirs != ours:
        raise CheckpointError(
            f"{path} was trained with a different vocabulary: its tokenizer fingerprint is "
            f"{theirs!r}, this tokenizer's is {ours!r}. Token ids would mean different words; "
            f"use the tokenizer the model was trained with (same vocab_size and training text).")
    _apply_checkpoint(payload, path, model, optimizer, scheduler, scaler)
    return payload


def _apply_checkpoint(payload: Mapping[str, Any], path: Path, model: nn.Module | None, optimizer: Any,
                      scheduler: Any, scaler: Any) -> None:
    """Load a read checkpoint's states into whatever objects are given (see :func:`load_checkpoint`)."""
    if model is not None:
        model = unwrap(model)
        check_state_dict_fits(model, payload["model"], path=path)
        model.load_state_dict(payload["model"])
    if optimizer is not None and payload.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"The optimizer state in {path} does not fit this optimizer: {error}") from None
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])


# ---------------------------------------------------------------------------------------------
# The record of a run
# ---------------------------------------------------------------------------------------------


@dataclass
class History:
    """What happened during training: one entry per step, plus one dict per evaluation."""

    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)  # each has "step" and "epoch"

    def log_step(self, step: int, epoch: int, loss: float, lr: float, grad_norm: float) -> None:
        self.steps.append(int(step))
        self.epochs.append(int(epoch))
        self.losses.append(float(loss))
        self.learning_rates.append(float(lr))
        self.grad_norms.append(float(grad_norm))

    def state_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> History:
        return cls(**{f.name: list(state.get(f.name, [])) for f in dataclasses.fields(cls)})

    def smoothed_losses(self, window: int = 50) -> np.ndarray:
        """Moving average of the loss over ``window`` steps (shorter at the start)."""
        losses = np.asarray(self.losses, dtype=float)
        if len(losses) == 0:
            return losses
        cumulative = np.cumsum(np.insert(losses, 0, 0.0))
        starts = np.maximum(np.arange(1, len(losses) + 1) - window, 0)
        return (cumulative[1:] - cumulative[starts]) / (np.arange(1, len(losses) + 1) - starts)

    def plot(self, title: str = "Training", window: int = 50):
        """Loss per step (raw and smoothed) and, if any, evaluation metrics per step. Returns the figure."""
        import matplotlib.pyplot as plt

        metric_names = sorted({k for e in self.evals for k in e if k not in ("step", "epoch")})
        n_panels = 1 + bool(metric_names)
        fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 3.8), squeeze=False)
        ax = axes[0, 0]
        ax.plot(self.steps, self.losses, alpha=0.3, lw=0.8, label="per step")
        ax.plot(self.steps, self.smoothed_losses(window), lw=2, label=f"mean of last {window}")
        ax.set(title=f"{title}: loss", xlabel="optimizer step", ylabel="cross-entropy (nats/token)")
        ax.legend()
        if metric_names:
            ax = axes[0, 1]
            for name in metric_names:
                points = [(e["step"], e[name]) for e in self.evals if name in e]
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
            ax.set(title=f"{title}: evaluation", xlabel="optimizer step", ylabel="metric value")
            ax.legend()
        fig.tight_layout()
        return fig


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` with ``optimizer`` on ``device``; see :meth:`fit`.

    ``loss_fn(model, batch) -> (loss, n_tokens)`` defaults to :func:`seq2seq_loss`.
    ``clip_norm`` caps the gradient's global norm (None: no clipping; RNNs need it, their
    gradients can explode). ``amp=True`` uses :func:`~transformer_lesson.runtime.amp_settings`:
    bfloat16 autocast on recent GPUs, float16 with a gradient scaler on older ones, off on CPU
    (an :class:`~transformer_lesson.runtime.AmpSettings` may be given instead).
    With ``checkpoint_path`` a checkpoint is written every ``checkpoint_every`` steps, at the end
    of every epoch and at the end of :meth:`fit`, and :meth:`fit` resumes from it if it exists.
    ``config`` (a dict or dataclass: the run's hyperparameters) and ``tokenizer`` are stored in it;
    resuming from a checkpoint whose config differs raises :class:`CheckpointError` (delete the
    file to train afresh with the new settings).

    ``model`` may be wrapped in ``DistributedDataParallel``: it is trained as given, while
    ``self.module`` (the model inside) is what is saved, evaluated and decoded with.

    Under ``torchrun`` every process runs the same :meth:`fit`, and the command line must:

    * initialise the process group *before* building the Trainer, with a ``timeout`` longer than
      one evaluation: rank 0 evaluates alone while the others wait for it in a barrier;
    * put each process on its own GPU (:func:`~transformer_lesson.runtime.get_device` does,
      ``cuda:LOCAL_RANK``), which NCCL's collectives use;
    * seed each process differently (say ``seed + rank``), so that their dropout masks differ
      (``DistributedDataParallel`` copies rank 0's initial weights to the others);
    * give each process its share of the batches, the same number in every process:
      ``data.batches(max_tokens, seed=epoch, rank=rank, world_size=world_size)``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device | str,
        scheduler: Any = None,
        clip_norm: float | None = 1.0,
        amp: bool | AmpSettings = True,
        loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor | int]] = seq2seq_loss,
        checkpoint_path: str | Path | None = None,
        checkpoint_every: int | None = 500,
        config: Any = None,
        tokenizer: Any = None,
        progress: bool = True,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.module = unwrap(self.model)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.clip_norm = clip_norm
        if isinstance(amp, AmpSettings):
            self.amp = amp
        else:
            self.amp = amp_settings(self.device) if amp else amp_settings("cpu")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.use_grad_scaler)
        self.loss_fn = loss_fn
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_every = checkpoint_every
        self.config = _plain_config(config)
        self.tokenizer = tokenizer
        self.progress = progress
        self.history = History()
        self.step = 0  # optimizer steps taken
        self.epoch = 0  # current epoch (0-based)
        self.position = 0  # batches of the current epoch already trained on
        self.last_lr = float(optimizer.param_groups[0]["lr"])  # the rate the last step used
        self.skipped_steps = 0  # float16 steps the gradient scaler skipped (inf/NaN gradients)
        # The step last evaluated, kept by every process (only rank 0's history records evaluations),
        # so that all of them agree on when to evaluate and wait.
        self.evaluated_step: int | None = None

    @property
    def is_main_process(self) -> bool:
        """True unless this is a non-zero rank of a distributed run."""
        return is_main_process()

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, path: str | Path | None = None) -> Path:
        """Checkpoint everything needed to resume (to ``checkpoint_path`` by default).

        Under ``torchrun`` every process must call it at the same step: it collects every
        process's random state; rank 0 alone writes the file, and the others wait until it is
        complete (so that none reads a half-written checkpoint).
        """
        path = path or self.checkpoint_path
        if path is None:
            raise ValueError("No path: pass one or give the Trainer a checkpoint_path.")
        rng_states = _gather_rng_states()
        if self.is_main_process:
            save_checkpoint(path, self.module, self.optimizer, self.scheduler, self.scaler,
                            step=self.step, epoch=self.epoch, position=self.position,
                            config=self.config, tokenizer=self.tokenizer, history=self.history,
                            amp=self.amp, skipped_steps=self.skipped_steps, rng_states=rng_states)
        _wait_for_every_process()
        return Path(path)

    def _save_if_asked(self) -> None:
        if self.checkpoint_path is not None:
            self.save()

    def load(self, path: str | Path | None = None) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save`; returns it. RNG states are restored by :meth:`fit`.

        Raises :class:`CheckpointError` when the checkpoint's config differs from this trainer's:
        resuming would silently continue the old run (its weights, its optimizer's learning rate)
        instead of training with the new settings.
        """
        path = Path(path or self.checkpoint_path)
        # Loaded on the CPU: load_state_dict copies each tensor to its parameter's device, and
        # Adam's step counters stay on the CPU, where it reads them (mapped to a GPU, they make
        # every later step wait for the device).
        payload = load_checkpoint(path, tokenizer=self.tokenizer, map_location="cpu")
        theirs = payload.get("config") or {}
        if theirs and self.config and theirs != self.config:
            changed = sorted(str(k) for k in set(theirs) | set(self.config) if theirs.get(k) != self.config.get(k))
            details = ", ".join(f"{k}: {theirs.get(k, '(unset)')!r} -> {self.config.get(k, '(unset)')!r}"
                                for k in changed[:8])
            raise CheckpointError(
                f"The checkpoint {path} was trained with a different config ({details}). Resuming it "
                f"would continue the old run, not train with the new settings. Delete {path} to "
                f"train afresh, or set the config back to resume it.")
        _apply_checkpoint(payload, path, self.module, self.optimizer, self.scheduler, self.scaler)
        self.step, self.epoch, self.position = payload["step"], payload["epoch"], payload["position"]
        self.skipped_steps = payload.get("skipped_steps", 0)
        before, now = payload.get("amp_dtype"), _precision_name(self.amp)
        if before is not None and before != now and self.is_main_process:
            print(f"Note: {path} was trained in {before} mixed precision; this device continues in {now}"
                  f"{' (a new loss scale starts at 65536)' if self.amp.use_grad_scaler else ''}.")
        if payload.get("history") is not None:
            self.history = History.from_state_dict(payload["history"])
            evals = self.history.evals
            self.evaluated_step = evals[-1]["step"] if evals else None
        return payload

    def _this_process_rng_state(self, saved: Any) -> dict[str, Any] | None:
        """This process's random state in a checkpoint's ``"rng"``, or None if the run's size changed."""
        states = saved if isinstance(saved, list) else [saved]  # version 1 held one process's state
        rank, world_size = _rank_and_world_size()
        if len(states) == world_size:
            return states[rank]
        if self.is_main_process:  # the batches are shared out differently anyway: no exact resume
            print(f"Note: {self.checkpoint_path} was written by {len(states)} process(es), this run has "
                  f"{world_size}: every process keeps its own random state, and the resumed run "
                  f"differs from an uninterrupted one.")
        return None

    # -- training ------------------------------------------------------------------------------

    def train_step(self, batch: Any) -> tuple[float, float]:
        """One optimizer step on ``batch``; returns (loss, gradient norm before clipping).

        The learning rate this step used is left in ``self.last_lr``. With float16's gradient
        scaler, a step whose gradients overflowed is skipped (the scaler lowers its scale), and
        then the scheduler does not step either.
        """
        batch = batch.to(self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.amp.dtype) if self.amp.enabled
                    else contextlib.nullcontext())
        with autocast:
            loss, _ = self.loss_fn(self.model, batch)
        # Waits for the device; needed anyway, for the log and this check. Under torchrun it is the
        # mean over the processes, so that all of them log the same loss and, if one diverges,
        # all raise together (instead of the others waiting forever in the next all-reduce).
        loss_value = _mean_over_processes(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"The loss became {loss_value} at step {self.step}: training diverged. Lower the "
                f"learning rate or clip gradients (clip_norm), then resume from the last checkpoint.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # a no-op when the scaler is disabled
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.clip_norm if self.clip_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])  # before the scheduler changes it
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        stepped = scale_before is None or self.scaler.get_scale() >= scale_before
        if not stepped:
            self.skipped_steps += 1
        if self.scheduler is not None and stepped:
            self.scheduler.step()
        return loss_value, float(grad_norm)

    def _evaluate(self, evaluate: Callable[[nn.Module], Mapping[str, float]]) -> None:
        """Rank 0 evaluates, the other processes wait for it (so every process must call this)."""
        self.evaluated_step = self.step
        if self.is_main_process:
            self._evaluate_here(evaluate)
        _wait_for_every_process()

    def _evaluate_here(self, evaluate: Callable[[nn.Module], Mapping[str, float]]) -> None:
        rng = get_rng_state()  # evaluation must not change the random numbers training sees
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                metrics = to_plain(dict(evaluate(self.module)))
        finally:
            self.module.train(was_training)
            set_rng_state(rng)
        record = {"step": self.step, "epoch": self.epoch, **metrics}
        if self.history.evals and self.history.evals[-1]["step"] == self.step:
            self.history.evals[-1] = record  # this step again (e.g. its epoch's end, after a resume)
        else:
            self.history.evals.append(record)

    def fit(
        self,
        make_batches: Callable[[int], Iterable[Any]],
        epochs: int | None = None,
        max_steps: int | None = None,
        evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
        eval_every: int | None = None,
    ) -> History:
        """Train until ``epochs`` epochs or ``max_steps`` optimizer steps in total, whichever is first.

        ``make_batches(epoch)`` returns that epoch's batches (objects with ``.to(device)``). It
        must give the same batches whenever it is called with the same epoch (seed it with the
        epoch, e.g. ``data.batches(4000, seed=epoch)``): on resume, the batches already trained
        on are skipped. ``evaluate(model) -> {name: value}`` runs every ``eval_every`` steps, or
        after every epoch if ``eval_every`` is None, and once more at the end unless the last
        step was just evaluated (so a run cut short by ``max_steps`` is still measured). If
        ``checkpoint_path`` exists, training resumes from it.

        Under ``torchrun`` ``make_batches(epoch)`` must give each process its own share of the
        epoch, the same number of batches in every process (:func:`~transformer_lesson.batching.shard`);
        ``TranslationData.batches`` that were not told the rank and world size are refused.
        """
        if epochs is None and max_steps is None:
            raise ValueError("Say how long to train: epochs=..., max_steps=..., or both.")
        pending_rng = None
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            pending_rng = self._this_process_rng_state(self.load()["rng"])  # nothing else of the file is kept
            if self.is_main_process:
                print(f"Resuming from {self.checkpoint_path}: step {self.step}, epoch {self.epoch}, "
                      f"batch {self.position} of the epoch.")

        def finished() -> bool:
            return (max_steps is not None and self.step >= max_steps) or (
                epochs is not None and self.epoch >= epochs)

        self.model.train()
        bar = tqdm(total=max_steps, initial=self.step, desc="training",
                   disable=not (self.progress and self.is_main_process), dynamic_ncols=True)
        try:
            while not finished():
                epoch_batches = make_batches(self.epoch)
                _check_shared_out(epoch_batches, self.epoch)
                if max_steps is None and hasattr(epoch_batches, "__len__"):  # assume equal epochs
                    per_epoch = len(epoch_batches)
                    bar.total = self.step + (per_epoch - self.position) + (epochs - self.epoch - 1) * per_epoch
                    bar.refresh()
                batches = iter(epoch_batches)
                for _ in range(self.position):  # already trained on before the interruption
                    next(batches, None)
                if pending_rng is not None:
                    set_rng_state(pending_rng)
                    pending_rng = None
                trained_this_call = 0
                for batch in batches:
                    loss, grad_norm = self.train_step(batch)
                    self.step += 1
                    self.position += 1
                    trained_this_call += 1
                    self.history.log_step(self.step, self.epoch, loss, self.last_lr, grad_norm)
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch, loss=f"{loss:.3f}", refresh=False)
                    if evaluate is not None and eval_every and self.step % eval_every == 0:
                        self._evaluate(evaluate)
                    if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                        self._save_if_asked()
                    if finished():
                        break
                else:  # the epoch ran out of batches
                    if trained_this_call == 0 and self.position == 0:
                        raise ValueError(f"make_batches({self.epoch}) gave no batches.")
                    self.epoch += 1
                    self.position = 0
                    if evaluate is not None and not eval_every:
                        self._evaluate(evaluate)
                    self._save_if_asked()  # a disconnect loses at most part of an epoch
        finally:
            bar.close()
        if pending_rng is not None:  # resumed a run that had already finished
            set_rng_state(pending_rng)
        if evaluate is not None and self.step > 0 and self.evaluated_step != self.step:
            self._evaluate(evaluate)  # stopped by max_steps (or between evaluations): measure the end
        self._save_if_asked()
        return self.history


def _check_shared_out(epoch_batches: Any, epoch: int) -> None:
    """Refuse batches made for another number of processes (``TranslationData.batches`` records it).

    Without ``rank`` and ``world_size`` every process would train on the whole epoch: the same
    batches, ``world_size`` times over.
    """
    made_for = getattr(epoch_batches, "world_size", None)
    _, world_size = _rank_and_world_size()
    if made_for is not None and made_for != world_size:
        raise ValueError(f"make_batches({epoch}) made batches for {made_for} process(es), but {world_size} "
                         f"train together: pass rank= and world_size= (torch.distributed.get_rank() and "
                         f"get_world_size()) to data.batches().")
