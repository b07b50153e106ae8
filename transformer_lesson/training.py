"""One training loop for every model in the course, RNNs and Transformers alike.

The loop is the plain one (forward, loss, backward, clip, step) plus what makes long runs
practical: mixed precision where the device has it, a progress bar, a record of the loss curve
(:class:`History`), and checkpoints (:mod:`transformer_lesson.checkpoint`) that let a run
interrupted at any step (a Colab disconnect) resume and end exactly where an uninterrupted run
would have: bit for bit on a CPU; on a GPU up to the nondeterminism of some kernels (cuDNN's RNNs,
atomic adds), which can make the two runs drift apart in the last digits. The same holds under
``torchrun`` (distributed data parallel, a later lesson; see :class:`Trainer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint, runtime
from .runtime import (
    AmpSettings,
    amp_settings,
    is_main_process,
    mean_over_processes,
    rank_and_world_size,
    unwrap,
    wait_for_every_process,
)
from .validation import require_device, require_int

__all__ = ["History", "Trainer", "seq2seq_loss", "sequence_loss"]

Evaluate = Callable[[nn.Module], Mapping[str, float]]  # model -> {metric name: value}

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
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be token ids (torch.long), got {targets.dtype}.")
    if targets.device.type == "cpu" and targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < \
            logits.shape[-1]:  # on a GPU this check would wait for the device at every step
        raise ValueError(f"targets hold ids outside 0 .. {logits.shape[-1] - 1}, the model's {logits.shape[-1]} "
                         f"outputs: the tokenizer and the model's vocab size disagree.")
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        reduction="none",
        label_smoothing=label_smoothing,
    )  # (B*T,)
    mask = mask.reshape(-1)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def seq2seq_loss(model: nn.Module, batch: Any, label_smoothing: float = 0.0) -> torch.Tensor:
    """The default loss of :class:`Trainer`: teacher-forced ``model(src, src_mask, tgt_in)``.

    Returns the mean loss over the batch's real target tokens, a scalar tensor.
    """
    logits = model(batch.src, batch.src_mask, batch.tgt_in)  # (B, T, V)
    return sequence_loss(logits, batch.tgt_out, batch.tgt_mask, label_smoothing)


@dataclass
class History:
    """What happened during training: one entry per step, plus one dict per evaluation.

    Data only; :func:`~transformer_lesson.plotting.plot_history` draws it.
    """

    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)  # each has "step" and "epoch"
    # Running totals since the run began (resumes included), one entry per step: seconds spent in
    # training steps (evaluations and checkpoints not counted), the part of them spent waiting for
    # the next batch, and this process's real target tokens trained on.
    seconds: list[float] = field(default_factory=list)
    data_seconds: list[float] = field(default_factory=list)
    target_tokens: list[int] = field(default_factory=list)

    def log_step(self, step: int, epoch: int, loss: float, lr: float, grad_norm: float,
                 seconds: float = 0.0, data_seconds: float = 0.0, target_tokens: int = 0) -> None:
        """Record one step; ``seconds``, ``data_seconds`` and ``target_tokens`` are this step's own."""
        self.steps.append(int(step))
        self.epochs.append(int(epoch))
        self.losses.append(float(loss))
        self.learning_rates.append(float(lr))
        self.grad_norms.append(float(grad_norm))
        for totals, value in ((self.seconds, seconds), (self.data_seconds, data_seconds),
                              (self.target_tokens, target_tokens)):
            totals.append((totals[-1] if totals else 0) + value)

    def throughput(self) -> dict[str, float]:
        """Target tokens per second of training and the share of it spent waiting for data."""
        if not self.seconds or self.seconds[-1] <= 0:
            return {"target_tokens_per_second": 0.0, "data_wait_share": 0.0, "train_seconds": 0.0}
        return {"target_tokens_per_second": self.target_tokens[-1] / self.seconds[-1],
                "data_wait_share": self.data_seconds[-1] / self.seconds[-1],
                "train_seconds": self.seconds[-1]}

    def state_dict(self) -> dict[str, Any]:
        """The record as plain values (what a checkpoint stores)."""
        return checkpoint.to_plain(dataclasses.asdict(self))

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


class Trainer:
    """Trains ``model`` with ``optimizer`` on ``device``; see :meth:`fit`.

    ``loss_fn(model, batch) -> loss`` (a scalar tensor) defaults to :func:`seq2seq_loss`.
    ``clip_norm`` caps the gradient's global norm (None: no clipping; RNNs need it, their
    gradients can explode). ``amp=True`` uses :func:`~transformer_lesson.runtime.amp_settings`:
    bfloat16 autocast on recent GPUs, float16 with a gradient scaler on older ones, off on CPU
    (an :class:`~transformer_lesson.runtime.AmpSettings` may be given instead).
    With ``checkpoint_path`` a checkpoint is written every ``checkpoint_every`` steps, at the end
    of every epoch and at the end of :meth:`fit`, and :meth:`fit` resumes from it if it exists.
    ``config`` (a dict or dataclass: the run's hyperparameters) and ``tokenizer`` are stored in it,
    and so is the model's own ``config`` when it is a dataclass (see
    :func:`~transformer_lesson.checkpoint.save_checkpoint`); resuming from a checkpoint whose
    ``config`` differs raises :class:`~transformer_lesson.checkpoint.CheckpointError` (delete the
    file to train afresh with the new settings).

    ``model`` may be wrapped in ``DistributedDataParallel``: it is trained as given, while
    ``self.module`` (the model inside) is what is saved, evaluated and decoded with.

    On a CPU the trainer calls :func:`~transformer_lesson.runtime.keep_freed_memory` (Linux with
    glibc: the memory allocator keeps freed blocks for the next step instead of returning them to the
    kernel; 25-36 % faster in ``docs/benchmarks.md``, for some more resident memory) unless ``keep_freed_memory=False``.

    Under ``torchrun`` every process runs the same :meth:`fit` on its own share of each epoch's
    batches; the loss logged (and checked for divergence) is the mean over the processes, and a
    checkpoint holds every process's random state. Only the main process (rank 0) draws the
    progress bar, evaluates and writes checkpoints; the others wait for it. The command line must:

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
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] = seq2seq_loss,
        checkpoint_path: str | Path | None = None,
        checkpoint_every: int | None = 500,
        config: Any = None,
        tokenizer: Any = None,
        progress: bool = True,
        keep_freed_memory: bool = True,
    ):
        self.device = require_device(device)
        if keep_freed_memory and self.device.type == "cpu":
            runtime.keep_freed_memory()  # faster on Linux; process-wide (see there)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, such as torch.optim.Adam(model.parameters()); "
                            f"got {type(optimizer).__name__}.")
        self.model = model.to(self.device)
        self.module = unwrap(self.model)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.clip_norm = clip_norm
        self.amp = amp if isinstance(amp, AmpSettings) else amp_settings(self.device if amp else "cpu")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.use_grad_scaler)
        self.loss_fn = loss_fn
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_every = checkpoint_every
        self.config = checkpoint.plain_config(config)
        self.tokenizer = tokenizer
        self.progress = progress
        self.history = History()
        self.step = 0  # optimizer steps taken
        self.epoch = 0  # current epoch (0-based)
        self.position = 0  # batches of the current epoch already trained on
        self.last_lr = float(optimizer.param_groups[0]["lr"])  # the rate the last step used
        self.target_tokens = 0  # real target tokens this process trained on, in this session
        self.skipped_steps = 0  # float16 steps the gradient scaler skipped (inf/NaN gradients)
        # The step last evaluated, kept by every process (only rank 0's history records evaluations),
        # so that all of them agree on when to evaluate and wait.
        self.evaluated_step: int | None = None
        self._pending_rng: dict[str, Any] | None = None  # from a resumed checkpoint, until its batches are ready

    @property
    def is_main_process(self) -> bool:
        """True unless this is a non-zero rank of a distributed run."""
        return is_main_process()

    # -- the loop ------------------------------------------------------------------------------

    def train_step(self, batch: Any) -> tuple[float, float]:
        """One optimizer step on ``batch``; returns (loss, gradient norm before clipping).

        ``batch`` may be a list of batches (gradient accumulation): their gradients are averaged,
        as if each came from its own process of a distributed run, and the loss is their mean.
        The learning rate this step used is left in ``self.last_lr``. With float16's gradient
        scaler, a step whose gradients overflowed is skipped (the scaler lowers its scale), and
        then the scheduler does not step either.
        """
        micro_batches = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for number, micro_batch in enumerate(micro_batches):
            self.target_tokens += getattr(micro_batch, "n_target_tokens", 0)  # counted before the copy
            # From pinned memory a GPU copies without stopping this thread; ``to`` takes the flag
            # only when it is needed, so that any batch class with a plain ``to(device)`` works.
            micro_batch = (micro_batch.to(self.device, non_blocking=True) if self.device.type == "cuda"
                           else micro_batch.to(self.device))
            # Only the last backward of a step makes DistributedDataParallel average the gradients.
            last = number == len(micro_batches) - 1
            no_sync = getattr(self.model, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with (torch.autocast(self.device.type, dtype=self.amp.dtype) if self.amp.enabled
                      else contextlib.nullcontext()):
                    loss = self.loss_fn(self.model, micro_batch)
                self.scaler.scale(loss / len(micro_batches)).backward()
            losses.append(loss.detach().float())
        # Waits for the device; needed anyway, for the log and this check. Under torchrun it is the
        # mean over the processes, so that all of them log the same loss and, if one diverges,
        # all raise together (instead of the others waiting forever in the next all-reduce).
        loss_value = mean_over_processes(torch.stack(losses).mean())
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"The loss became {loss_value} at step {self.step + 1}: training diverged. Lower the "
                f"learning rate or clip gradients (clip_norm) and start a new run (a run cannot change "
                f"its settings when it resumes).")
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

    def fit(
        self,
        make_batches: Callable[[int], Iterable[Any]],
        epochs: int | None = None,
        max_steps: int | None = None,
        evaluate: Evaluate | None = None,
        eval_every: int | None = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> History:
        """Train until ``epochs`` epochs or ``max_steps`` optimizer steps in total, whichever is first.

        ``make_batches(epoch)`` returns that epoch's batches (objects with ``.to(device)``). It
        must give the same batches whenever it is called with the same epoch (seed it with the
        epoch, e.g. ``data.batches(4000, seed=epoch)``): on resume, the batches already trained
        on are skipped. ``evaluate(model) -> {name: value}`` runs every ``eval_every`` steps, or
        after every epoch if ``eval_every`` is None, and once more at the end unless the last
        step was just evaluated (so a run cut short by ``max_steps`` is still measured). If
        ``checkpoint_path`` exists, training resumes from it. ``on_step(trainer)`` runs after every
        step, in every process, before that step's evaluation and checkpoint: whatever it writes
        for step t exists before any checkpoint a resumed run would start after t from.

        Under ``torchrun`` ``make_batches(epoch)`` must give each process its own share of the
        epoch, the same number of batches in every process (:func:`~transformer_lesson.batching.shard`);
        ``TranslationData.batches`` that were not told the rank and world size are refused.
        """
        if epochs is None and max_steps is None:
            raise ValueError("Say how long to train: epochs=..., max_steps=..., or both.")
        epochs, max_steps, eval_every = (None if value is None else require_int(value, name, at_least=least)
                                         for value, name, least in ((epochs, "epochs", 0), (max_steps, "max_steps", 0),
                                                                    (eval_every, "eval_every", 1)))
        if not callable(make_batches):
            raise TypeError(f"make_batches must be a function of the epoch, such as lambda epoch: "
                            f"data.batches(4000, seed=epoch); got {type(make_batches).__name__}.")

        def finished() -> bool:
            return (max_steps is not None and self.step >= max_steps) or (
                epochs is not None and self.epoch >= epochs)

        self._resume_if_interrupted()
        self.model.train()
        bar = self._progress_bar(max_steps)
        try:
            while not finished():
                batches = self._batches_left_in_epoch(make_batches, bar, epochs, max_steps)
                for batch, waited in _timed(batches):
                    started, tokens_before = time.perf_counter(), self.target_tokens
                    loss, grad_norm = self.train_step(batch)  # forward, loss, backward, clip, step
                    self.step += 1
                    self.position += 1
                    self._record_step(loss, grad_norm, bar, waited + time.perf_counter() - started, waited,
                                      self.target_tokens - tokens_before)
                    if on_step is not None:
                        on_step(self)
                    self._evaluate_and_save_on_schedule(evaluate, eval_every)
                    if finished():
                        break
                else:  # the epoch ran out of batches
                    self._end_epoch(evaluate, eval_every)
        finally:
            bar.close()
        self._end_fit(evaluate)
        return self.history

    # -- what fit does around the loop ---------------------------------------------------------

    def _resume_if_interrupted(self) -> None:
        """Restore ``checkpoint_path`` if it exists; this process's random state waits in ``_pending_rng``."""
        self._pending_rng = None
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return
        saved = self.load()["rng"]  # nothing else of the file is kept
        self._pending_rng = checkpoint.this_process_rng_state(saved)
        if not self.is_main_process:
            return
        print(f"Resuming from {self.checkpoint_path}: step {self.step}, epoch {self.epoch}, "
              f"batch {self.position} of the epoch.")
        if self._pending_rng is None:  # the batches are shared out differently anyway: no exact resume
            print(f"Note: {self.checkpoint_path} was written by {len(saved) if isinstance(saved, list) else 1} "
                  f"process(es), this run has {rank_and_world_size()[1]}: every process keeps its own random "
                  f"state, and the resumed run differs from an uninterrupted one.")

    def _restore_pending_rng(self) -> None:
        if self._pending_rng is not None:
            checkpoint.set_rng_state(self._pending_rng)
            self._pending_rng = None

    def _progress_bar(self, max_steps: int | None) -> tqdm:
        """A bar of ``max_steps`` steps (or of the epochs' batches, see :meth:`_batches_left_in_epoch`)."""
        return tqdm(total=max_steps, initial=self.step, desc="training",
                    disable=not (self.progress and self.is_main_process), dynamic_ncols=True)

    def _batches_left_in_epoch(self, make_batches: Callable[[int], Iterable[Any]], bar: tqdm,
                               epochs: int | None, max_steps: int | None) -> Iterator[Any]:
        """This epoch's batches not trained on yet; then a resumed run's random state is restored.

        Without ``max_steps`` the bar's total becomes the steps of all epochs, counted from this
        epoch's number of batches (when the batches have a length: all epochs are assumed equal).
        """
        epoch_batches = make_batches(self.epoch)
        _check_shared_out(epoch_batches, self.epoch)
        if max_steps is None and hasattr(epoch_batches, "__len__"):
            per_epoch = len(epoch_batches)
            bar.total = self.step + (per_epoch - self.position) + (epochs - self.epoch - 1) * per_epoch
            bar.refresh()
        batches = iter(epoch_batches)
        for _ in range(self.position):  # already trained on before the interruption
            next(batches, None)
        self._restore_pending_rng()
        return batches

    def _record_step(self, loss: float, grad_norm: float, bar: tqdm, seconds: float, waited: float,
                     tokens: int) -> None:
        self.history.log_step(self.step, self.epoch, loss, self.last_lr, grad_norm, seconds, waited, tokens)
        bar.update(1)
        bar.set_postfix(epoch=self.epoch, loss=f"{loss:.3f}", refresh=False)

    def _evaluate_and_save_on_schedule(self, evaluate: Evaluate | None, eval_every: int | None) -> None:
        """Evaluate every ``eval_every`` steps and checkpoint every ``checkpoint_every`` steps."""
        if evaluate is not None and eval_every and self.step % eval_every == 0:
            self._evaluate(evaluate)
        if self.checkpoint_every and self.step % self.checkpoint_every == 0:
            self._save_if_asked()

    def _end_epoch(self, evaluate: Evaluate | None, eval_every: int | None) -> None:
        """Move on to the next epoch; evaluate (unless on a step schedule) and checkpoint."""
        if self.position == 0:  # nothing trained on in this epoch, before or since a resume
            raise ValueError(f"make_batches({self.epoch}) gave no batches.")
        self.epoch += 1
        self.position = 0
        if evaluate is not None and not eval_every:
            self._evaluate(evaluate)
        self._save_if_asked()  # a disconnect loses at most part of an epoch

    def _end_fit(self, evaluate: Evaluate | None) -> None:
        """Measure the last step unless it was just evaluated, and checkpoint it."""
        self._restore_pending_rng()  # resumed a run that had already finished
        if evaluate is not None and self.step > 0 and self.evaluated_step != self.step:
            self._evaluate(evaluate)  # stopped by max_steps (or between evaluations): measure the end
        self._save_if_asked()

    # -- evaluation ----------------------------------------------------------------------------

    def _evaluate(self, evaluate: Evaluate) -> None:
        """Rank 0 evaluates, the other processes wait for it (so every process must call this)."""
        self.evaluated_step = self.step
        if self.is_main_process:
            self._evaluate_here(evaluate)
        wait_for_every_process()

    def _evaluate_here(self, evaluate: Evaluate) -> None:
        rng = checkpoint.get_rng_state()  # evaluation must not change the random numbers training sees
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                metrics = checkpoint.to_plain(dict(evaluate(self.module)))
        finally:
            self.module.train(was_training)
            checkpoint.set_rng_state(rng)
        record = {"step": self.step, "epoch": self.epoch, **metrics}
        if self.history.evals and self.history.evals[-1]["step"] == self.step:
            self.history.evals[-1] = record  # this step again (e.g. its epoch's end, after a resume)
        else:
            self.history.evals.append(record)

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
        rng_states = checkpoint.gather_rng_states()
        if self.is_main_process:
            checkpoint.save_checkpoint(
                path, self.module, self.optimizer, self.scheduler, self.scaler,
                step=self.step, epoch=self.epoch, position=self.position, config=self.config,
                tokenizer=self.tokenizer, history=self.history.state_dict(), amp=self.amp,
                skipped_steps=self.skipped_steps, rng_states=rng_states)
        wait_for_every_process()
        return Path(path)

    def _save_if_asked(self) -> None:
        if self.checkpoint_path is not None:
            self.save()

    def load(self, path: str | Path | None = None) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save`; returns it. RNG states are restored by :meth:`fit`.

        Raises :class:`~transformer_lesson.checkpoint.CheckpointError` when the checkpoint's config
        differs from this trainer's: resuming would silently continue the old run (its weights, its
        optimizer's learning rate) instead of training with the new settings.
        """
        path = Path(path or self.checkpoint_path)
        # Loaded on the CPU: load_state_dict copies each tensor to its parameter's device, and
        # Adam's step counters stay on the CPU, where it reads them (mapped to a GPU, they make
        # every later step wait for the device).
        payload = checkpoint.load_checkpoint(path, tokenizer=self.tokenizer, map_location="cpu")
        checkpoint.check_same_config(payload, self.config, path)
        checkpoint.apply_checkpoint(payload, path, self.module, self.optimizer, self.scheduler, self.scaler)
        self.step, self.epoch, self.position = payload["step"], payload["epoch"], payload["position"]
        self.skipped_steps = payload.get("skipped_steps", 0)
        before, now = payload.get("amp_dtype"), checkpoint.precision_name(self.amp)
        if before is not None and before != now and self.is_main_process:
            print(f"Note: {path} was trained in {before} mixed precision; this device continues in {now}"
                  f"{' (a new loss scale starts at 65536)' if self.amp.use_grad_scaler else ''}.")
        if payload.get("history") is not None:
            self.history = History.from_state_dict(payload["history"])
            evals = self.history.evals
            self.evaluated_step = evals[-1]["step"] if evals else None
        return payload


def _timed(batches: Iterator[Any]) -> Iterator[tuple[Any, float]]:
    """Each batch with the seconds spent waiting for it (building it, or a DataLoader's queue)."""
    while True:
        started = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch, time.perf_counter() - started


def _check_shared_out(epoch_batches: Any, epoch: int) -> None:
    """Refuse batches made for another number of processes (``TranslationData.batches`` records it).

    Without ``rank`` and ``world_size`` every process would train on the whole epoch: the same
    batches, ``world_size`` times over.
    """
    made_for = getattr(epoch_batches, "world_size", None)
    _, world_size = rank_and_world_size()
    if made_for is not None and made_for != world_size:
        raise ValueError(f"make_batches({epoch}) made batches for {made_for} process(es), but {world_size} "
                         f"train together: pass rank= and world_size= (torch.distributed.get_rank() and "
                         f"get_world_size()) to data.batches().")
