"""Train the German→English translator of lesson 09, from a notebook or the command line.

    python -m transformer_lesson.train --preset {quick,cpu,gpu} --out DIR [--set key=value ...]

trains a :class:`~transformer_lesson.transformer.Transformer` on Multi30k and writes to ``DIR``:

* ``config.json``: the run's settings (:class:`TrainConfig`), written first;
* ``checkpoint.pt``: the latest state (every ``checkpoint_every`` steps), from which a run that was
  stopped (a Colab disconnect, Ctrl-C, a killed process) resumes when started again with the same
  ``--out``, ending exactly where an uninterrupted run would have (bit for bit on a CPU);
* ``best.pt``: the weights with the best validation BLEU so far (chosen on validation only);
* ``snapshots/step-NNNNNN.pt``: the weights at ``average_checkpoints`` steps evenly spaced from
  ``average_start`` x ``max_steps`` to ``max_steps``, when ``average_checkpoints`` > 1;
* ``model.pt``: the final model, with the model's config and the tokenizer, so that
  ``python -m transformer_lesson.translate --checkpoint DIR/model.pt`` needs nothing else: best.pt's
  weights, or the average of the snapshots' weights if that scores higher on validation;
* ``results.json``: test_2016 BLEU of model.pt, with sacreBLEU's signature, throughput and examples.
  Its presence marks the run finished: starting it again prints the results and trains nothing.

Under ``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel, one
process per GPU (or, with the gloo backend, per CPU process), each on its own share of every epoch.
The notebook calls :func:`train` with the same arguments; nothing is written twice.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import checkpoint
from .batching import TranslationData
from .data import load_multi30k
from .evaluation import evaluate_bleu
from .runtime import (
    DeviceError,
    get_device,
    is_main_process,
    rank_and_world_size,
    seed_everything,
    wait_for_every_process,
)
from .schedule import warmup_linear_decay
from .timing import describe_device
from .tokenizer import multi30k_tokenizer
from .training import History, Trainer, seq2seq_loss
from .transformer import Transformer, TransformerConfig

__all__ = ["PRESETS", "RunError", "TrainConfig", "apply_overrides", "averaged_steps", "main", "model_config", "preset",
           "snapshot_path", "train"]


class RunError(RuntimeError):
    """A run that cannot start or continue as asked: the message says why and what to do."""


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the ``cpu`` preset (see :data:`PRESETS`)."""

    # data: Multi30k; the tokenizer is trained on the training split only
    vocab_size: int = 8000  # one BPE vocabulary shared by German and English
    train_limit: int | None = None  # use the first N training pairs (None: all 29,000)
    val_limit: int | None = None  # validation pairs scored during training (None: all 1,014)
    test_limit: int | None = None  # test_2016 pairs scored at the end (None: all 1,000)
    max_len: int = 100  # tokens per sentence; longer ones are cut (Multi30k has almost none)
    max_tokens: int = 4000  # per batch: sentences x longest length, padding included
    accumulate: int = 1  # batches per optimizer step (gradient accumulation)
    # the model: see TransformerConfig
    d_model: int = 256
    n_heads: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.0  # none in the cpu preset: in 30 minutes the steps it costs are worth more (docs/results.md)
    attention_dropout: float | None = None  # None: the same as dropout
    activation_dropout: float | None = None  # None: the same as dropout
    norm_first: bool = True
    activation: str = "relu"
    positional: str = "sinusoidal"
    max_positions: int = 256
    tie_embeddings: bool = True
    fast_attention: bool = True
    # optimisation: AdamW, linear warm-up, then linear decay to 0 at max_steps
    max_steps: int = 1100
    lr: float = 2e-3
    warmup_steps: int = 150
    beta2: float = 0.98
    weight_decay: float = 0.1  # with label smoothing 0.2: against over-fitting without dropout (docs/results.md)
    label_smoothing: float = 0.2
    clip_norm: float | None = 1.0
    seed: int = 0
    # the final model: best.pt, or the mean of the weights at average_checkpoints steps evenly spaced
    # from average_start * max_steps to max_steps (1: no averaging), whichever scores higher on validation
    average_checkpoints: int = 6
    average_start: float = 0.5
    # evaluation and saving
    eval_every: int = 220  # steps between validation BLEU scores (and at the end)
    checkpoint_every: int = 50
    # how to run: these may change when a run is resumed (another machine, more workers)
    device: str | None = None  # None: the best there is (TL_DEVICE overrides)
    amp: bool = True  # mixed precision where the device has it (bf16 / fp16 + scaler / off on CPU)
    compile: bool = False  # torch.compile the model
    num_workers: int = 0  # DataLoader worker processes building batches
    keep_freed_memory: bool = True  # on a CPU: malloc keeps freed memory (faster; see Trainer)
    progress: bool = True


# Settings that change how a run is executed, not what it computes: a run may resume with others.
RUNTIME_KEYS = ("device", "amp", "compile", "num_workers", "keep_freed_memory", "checkpoint_every", "progress")

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop: CI runs the whole command line and lesson 09 with it.
    "quick": dict(train_limit=2000, val_limit=40, test_limit=60, max_tokens=1500, d_model=32, n_heads=2,
                  n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.1, max_steps=40, lr=3e-3,
                  warmup_steps=10, eval_every=20, checkpoint_every=5, average_checkpoints=3),
    # Students without a GPU: about half an hour on a 2-core CPU (see docs/results.md).
    "cpu": {},
    # One modern GPU (bf16): a bigger model, bigger batches, more steps. Not measured yet; it keeps label
    # smoothing 0.1 and weight decay 0.01, since the cpu preset's 0.2 and 0.1 were chosen without dropout.
    "gpu": dict(d_model=512, n_heads=8, n_encoder_layers=4, n_decoder_layers=4, d_ff=2048, dropout=0.3,
                max_tokens=16000, max_steps=1500, lr=1e-3, warmup_steps=300, eval_every=250,
                checkpoint_every=250, num_workers=2, label_smoothing=0.1, weight_decay=0.01),
}


def preset(name: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The preset's config with ``key=value`` overrides applied (see :func:`apply_overrides`)."""
    if name not in PRESETS:
        raise RunError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    return apply_overrides(TrainConfig(**PRESETS[name]), overrides)


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """A copy of ``config`` with ``["lr=1e-3", "dropout=0.1", ...]`` applied, each value typed as its field."""
    hints = typing.get_type_hints(TrainConfig)
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RunError(f"--set takes key=value, got {item!r}.")
        if key not in hints:
            close = difflib.get_close_matches(key, hints, n=3)
            suggestion = f"; did you mean {' or '.join(close)}?" if close else "."
            raise RunError(f"--set {key}: no such setting{suggestion} Settings: {', '.join(hints)}.")
        changes[key] = _parse(key, text.strip(), hints[key])
    return dataclasses.replace(config, **changes)


def _parse(key: str, text: str, hint: Any) -> Any:
    """``text`` as the type ``hint`` (int, float, bool, str, each possibly ``| None``)."""
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in kinds and text.lower() in ("none", "null", ""):
        return None
    kind = next(k for k in kinds if k is not type(None))
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return text.lower() in ("true", "1", "yes", "on")
        return kind(text)
    except ValueError:
        allowed = "true or false" if kind is bool else f"a{'n' if kind is int else ''} {kind.__name__}"
        raise RunError(f"--set {key}={text}: {key} takes {allowed}"
                       f"{' (or none)' if type(None) in kinds else ''}.") from None


def model_config(config: TrainConfig, vocab_size: int) -> TransformerConfig:
    """The :class:`TransformerConfig` of a run with a shared vocabulary of ``vocab_size``."""
    if config.max_len > config.max_positions:
        raise RunError(f"max_len={config.max_len} exceeds max_positions={config.max_positions}, the length "
                       f"of the positional table: raise max_positions or lower max_len.")
    try:
        return TransformerConfig(
            src_vocab_size=vocab_size, d_model=config.d_model, n_heads=config.n_heads,
            n_encoder_layers=config.n_encoder_layers, n_decoder_layers=config.n_decoder_layers,
            d_ff=config.d_ff, dropout=config.dropout, attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout, norm_first=config.norm_first,
            activation=config.activation, positional=config.positional, max_len=config.max_positions,
            tie_embeddings=config.tie_embeddings, fast=config.fast_attention)
    except ValueError as error:
        raise RunError(str(error)) from None


def _check(config: TrainConfig) -> None:
    """Refuse settings that would fail later, or silently do something else, with the reason."""
    positive = ("vocab_size", "max_len", "max_tokens", "accumulate", "max_steps", "eval_every", "checkpoint_every",
                "average_checkpoints")
    for name in positive:
        if getattr(config, name) < 1:
            raise RunError(f"{name} must be at least 1, got {getattr(config, name)}.")
    for name in ("train_limit", "val_limit", "test_limit"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise RunError(f"{name} must be at least 1 or none (all pairs), got {value}.")
    if not 0 <= config.warmup_steps < config.max_steps:
        raise RunError(f"warmup_steps must be in 0 .. max_steps - 1 = {config.max_steps - 1}, "
                       f"got {config.warmup_steps}.")
    if config.lr <= 0 or not 0 <= config.label_smoothing < 1 or config.num_workers < 0:
        raise RunError("lr must be positive, label_smoothing in [0, 1), num_workers >= 0.")
    if config.clip_norm is not None and config.clip_norm <= 0:
        raise RunError(f"clip_norm must be positive or none (no clipping), got {config.clip_norm}.")
    if not 0 <= config.average_start < 1:
        raise RunError(f"average_start is a fraction of max_steps in [0, 1), got {config.average_start}.")
    steps = averaged_steps(config)
    if len(set(steps)) < len(steps) or (steps and steps[0] < 1):
        raise RunError(f"average_checkpoints={config.average_checkpoints} different steps do not fit between step "
                       f"{max(1, round(config.average_start * config.max_steps))} and max_steps={config.max_steps}: "
                       f"lower average_checkpoints or average_start, or set average_checkpoints=1 (no averaging).")


def averaged_steps(config: TrainConfig) -> list[int]:
    """The steps whose weights the final model may average: ``average_checkpoints`` of them, evenly spaced
    from ``average_start * max_steps`` to ``max_steps`` (none when ``average_checkpoints`` is 1)."""
    count = config.average_checkpoints
    if count < 2:
        return []
    first = config.average_start * config.max_steps
    return [round(first + (config.max_steps - first) * k / (count - 1)) for k in range(count)]


def snapshot_path(out: str | Path, step: int) -> Path:
    """Where a run in ``out`` keeps the weights of ``step`` for averaging."""
    return Path(out) / "snapshots" / f"step-{step:06d}.pt"


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def train(config: TrainConfig, out: str | Path,
          on_evaluate: Callable[[History, Mapping[str, float]], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or just report) the run in folder ``out``; returns its results (``results.json``).

    ``on_evaluate(history, metrics)`` is called after every validation score (the notebook draws
    live curves with it). Under ``torchrun`` every process calls this; only rank 0 evaluates,
    writes files and returns the results (the others return ``{}``).
    """
    _check(config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; give a folder (it is created if missing).")
    results_path = out / "results.json"
    if results_path.is_file():
        results = json.loads(results_path.read_text())
        if is_main_process():
            _check_same_run(out, config)
            chosen = (f"the average of steps {results['averaged_steps'][0]}-{results['averaged_steps'][-1]}"
                      if results.get("averaged_steps") else f"step {results['selected_step']}")
            print(f"{out} holds a finished run ({chosen} chosen); nothing to train. "
                  f"Delete {results_path} to evaluate again, or use another --out for a new run.")
        return results if is_main_process() else {}
    started = time.perf_counter()
    device = get_device(config.device)
    if is_main_process():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunError(f"--out {out}: cannot create this folder ({error.strerror}); give a folder you can "
                           f"write to (it is created if missing).") from None
        _check_same_run(out, config)
        _write_json(out / "config.json", dataclasses.asdict(config))
    wait_for_every_process()

    rank, world_size = rank_and_world_size()
    seed_everything(config.seed)  # the same initial weights in every process
    tokenizer = multi30k_tokenizer(config.vocab_size)  # trained on the training split only
    train_pairs = load_multi30k("train", limit=config.train_limit)
    train_data = TranslationData(train_pairs, tokenizer, max_len=config.max_len)
    val_pairs = load_multi30k("val", limit=config.val_limit)
    model = Transformer(model_config(config, tokenizer.vocab_size)).to(device)
    seed_everything(config.seed + rank)  # each process its own dropout masks
    network: torch.nn.Module = model
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        network = torch.compile(network, dynamic=True)
    optimizer = _adamw(model, config)
    trainer = Trainer(
        network, optimizer, device,
        scheduler=warmup_linear_decay(optimizer, config.warmup_steps, config.max_steps),
        clip_norm=config.clip_norm, amp=config.amp,
        loss_fn=partial(seq2seq_loss, label_smoothing=config.label_smoothing),
        checkpoint_path=out / "checkpoint.pt", checkpoint_every=config.checkpoint_every,
        config={k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME_KEYS},
        tokenizer=tokenizer, progress=config.progress, keep_freed_memory=config.keep_freed_memory)

    def make_batches(epoch: int):
        return train_data.batches(config.max_tokens, seed=config.seed * 1_000_003 + epoch, rank=rank,
                                  world_size=world_size, group=config.accumulate, num_workers=config.num_workers,
                                  pin_memory=device.type == "cuda")

    def evaluate(module: torch.nn.Module) -> dict[str, float]:
        report = evaluate_bleu(module, tokenizer, val_pairs, device, batch_size=128)
        metrics = {"bleu": report.bleu.score, "lowercased_bleu": report.lowercased.score}
        best = max((e["bleu"] for e in trainer.history.evals if e["step"] != trainer.step), default=-1.0)
        if metrics["bleu"] > best:  # chosen on validation only
            checkpoint.save_checkpoint(out / "best.pt", module, step=trainer.step, config=trainer.config,
                                       tokenizer=tokenizer)
        tqdm.write(f"step {trainer.step}: validation sacreBLEU {metrics['bleu']:.2f}"
                   f"{' (best so far)' if metrics['bleu'] > best else ''}")
        if on_evaluate is not None:
            on_evaluate(trainer.history, {"step": trainer.step, **metrics})
        return metrics

    snapshot_steps = set(averaged_steps(config))

    def snapshot(trainer: Trainer) -> None:  # before the step's checkpoint: a resumed run never misses one
        if trainer.step in snapshot_steps and is_main_process():
            checkpoint.save_checkpoint(snapshot_path(out, trainer.step), trainer.module, step=trainer.step,
                                       config=trainer.config, tokenizer=tokenizer.fingerprint)

    if is_main_process():
        print(f"Training on {describe_device(device)}{f' x {world_size} processes' if world_size > 1 else ''}: "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, {len(train_data):,} pairs, "
              f"{config.max_steps} steps; writing to {out}")
    history = trainer.fit(make_batches, max_steps=config.max_steps, evaluate=evaluate, eval_every=config.eval_every,
                          on_step=snapshot)
    if not is_main_process():
        return {}
    return _finish(config, out, device, tokenizer, val_pairs, history, world_size, time.perf_counter() - started)


def _adamw(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not on biases and layer norms)."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2))


def _finish(config: TrainConfig, out: Path, device: torch.device, tokenizer, val_pairs, history: History,
            world_size: int, seconds: float) -> dict[str, Any]:
    """Choose the final model on validation, score it on test_2016; write model.pt, then results.json (atomically).

    The candidates: best.pt (the best evaluation) and, with ``average_checkpoints`` > 1, the mean of the
    snapshots' weights, which is scored on validation here. The higher score wins (best.pt on a tie).
    """
    model = Transformer.from_checkpoint(out / "best.pt").to(device).eval()
    selected = best_step = checkpoint.load_checkpoint(out / "best.pt")["step"]
    best_val = next(e for e in history.evals if e["step"] == best_step)["bleu"]
    chosen_val, averaged, average_val = best_val, averaged_steps(config), None
    if averaged:
        average = copy.deepcopy(model)
        average.load_state_dict(checkpoint.average_weights([snapshot_path(out, s) for s in averaged]))
        average_val = evaluate_bleu(average, tokenizer, val_pairs, device, batch_size=128).bleu.score
        tqdm.write(f"average of the weights at steps {', '.join(map(str, averaged))}: validation sacreBLEU "
                   f"{average_val:.2f} ({'chosen' if average_val > best_val else 'not chosen'}: step {selected} "
                   f"alone scores {best_val:.2f})")
        if average_val > best_val:
            model, selected, chosen_val = average, averaged[-1], average_val
        else:
            averaged = []
    test_pairs = load_multi30k("test", limit=config.test_limit)
    report = evaluate_bleu(model, tokenizer, test_pairs, device, batch_size=128)
    checkpoint.save_checkpoint(out / "model.pt", model, step=selected, config=dataclasses.asdict(config),
                               tokenizer=tokenizer, history=history.state_dict())
    chosen = (f"the average of the weights at steps {averaged[0]}-{averaged[-1]}" if averaged
              else f"the model of step {selected}")
    results = {
        "selected_step": selected,  # with averaged_steps: the last of them
        "averaged_steps": averaged,  # empty: the weights of selected_step alone
        "validation_bleu": chosen_val,
        "best_step": best_step,  # the best single evaluation (best.pt)
        "validation_bleu_best_step": best_val,
        "validation_bleu_average": average_val,  # None: no averaging configured
        "test_bleu": report.bleu.score,
        "test_bleu_signature": report.bleu.signature,
        "test_lowercased_bleu": report.lowercased.score,
        "test_lowercased_bleu_signature": report.lowercased.signature,
        "test_sentences": len(test_pairs),
        "steps": history.steps[-1] if history.steps else 0,
        **history.throughput(),
        "processes": world_size,
        "device": describe_device(device),
        "torch": torch.__version__,
        "finished_at": time.strftime("%Y-%m-%d %H:%M"),
        "seconds_this_session": round(seconds, 1),
        "examples": [{"source": s, "reference": r, "translation": h} for s, r, h in
                     zip(report.sources[:5], report.references[:5], report.hypotheses[:5], strict=True)],
    }
    _write_json(out / "results.json", results)
    print(f"test_2016: sacreBLEU {report.bleu.score:.2f} ({report.bleu.signature}), lowercased BLEU "
          f"{report.lowercased.score:.2f}; {chosen} (validation sacreBLEU {chosen_val:.2f}); "
          f"{results['target_tokens_per_second']:.0f} target tokens/s per process. Wrote {out / 'model.pt'}.")
    return results


def _check_same_run(out: Path, config: TrainConfig) -> None:
    """Refuse to continue a run in ``out`` that was started with other settings."""
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"{path} is unreadable ({error}); delete {out} to start afresh.") from None
    now = dataclasses.asdict(config)
    changed = [f"{key}: {before.get(key)!r} -> {now[key]!r}" for key in now
               if key not in RUNTIME_KEYS and before.get(key) != now[key]]
    if changed:
        raise RunError(f"{out} holds a run with other settings ({'; '.join(changed)}). Use another --out for a "
                       f"new run, or delete {out} to start this one afresh.")


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # atomic: a killed run never leaves half a file


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transformer_lesson.train",
        description="Train the German->English Transformer on Multi30k (resumes from --out if it holds a run).",
        epilog=f"Settings for --set: {', '.join(f.name for f in dataclasses.fields(TrainConfig))}.")
    parser.add_argument("--preset", choices=list(PRESETS), required=True,
                        help="quick: seconds, for tests; cpu: about 30 minutes on a 2-core CPU; gpu: one modern GPU")
    parser.add_argument("--out", required=True, help="folder for checkpoints, the final model and results.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set lr=1e-3 --set dropout=0.1 (repeatable)")
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        config = preset(args.preset, args.overrides)
        if distributed:
            backend = "nccl" if get_device(config.device).type == "cuda" else "gloo"
            # Long enough for rank 0 to evaluate while the others wait in a barrier.
            dist.init_process_group(backend, timeout=timedelta(hours=1))
        train(config, args.out)
    except (RunError, checkpoint.CheckpointError, DeviceError, FloatingPointError) as error:
        print(f"train: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"train: interrupted; run the same command again to resume from {args.out}.", file=sys.stderr)
        return 130
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
