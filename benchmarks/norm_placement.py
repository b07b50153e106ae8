"""Post-norm Transformers need learning-rate warm-up; pre-norm ones do not. Measured, not said.

Run by hand (not in CI), for example::

    python benchmarks/norm_placement.py            # full: 5 seeds (a few minutes on a 2-core CPU)
    python benchmarks/norm_placement.py --quick    # quick: 2 seeds, a smaller model, fewer steps
    python benchmarks/norm_placement.py --clip 1.0 # the same with gradient clipping at norm 1.0

An :class:`~transformer_lesson.transformer.EncoderTagger` learns the histogram task
(:func:`~transformer_lesson.toy.histogram_batch`: label every symbol with how many times it occurs
in its sequence) in four configurations, each with every seed:

* ``post`` / ``pre``: the layer norm after the residual sum (the paper's, ``norm_first=False``) or
  before the sub-layer (``norm_first=True``);
* ``none`` / ``warm-up``: the learning rate starts at its peak, or rises linearly to it over
  ``--warmup`` steps. Both then fall linearly to 0 at the last step
  (:func:`~transformer_lesson.schedule.warmup_linear_decay`).

Everything else is the same: AdamW (weight decay 0, default betas), dropout 0, batches of 64
sequences. Seed ``s`` fixes the initial weights (``seed_everything(s)``) and the stream of
training batches, so the four configurations of one seed see the same data.

For every run the table shows

* **loss**: the mean training loss over the last 50 steps;
* **acc**: accuracy on 1000 fresh sequences (the same for every run), :func:`tagging_accuracy`;
* **low grad**: the median gradient norm of the embedding and the first encoder layer over steps
  20-100 (before any clipping): how much signal reaches the bottom of the stack early on;
* **status**: ``diverged`` (a loss that is not finite), ``stuck`` (final loss above 90% of the
  *baseline*: the loss of predicting every position with the label frequencies, about 1.27, which
  needs no attention at all), ``ok`` (accuracy >= 0.9), or ``partial`` (in between).

Measured with torch 2.13 on a 2-core CPU, one thread (numbers are identical from run to run there):
full mode, post-norm without warm-up is stuck at the baseline in 5/5 seeds (accuracy 0.383, the
share of the most frequent count) while the three others reach accuracy 0.994-0.997 (212 s CPU);
quick mode shows the same split, weaker: post-norm without warm-up stuck in 2/2 seeds, post-norm
with warm-up at 0.839 and 0.965, pre-norm at 0.967-0.973 (30 s CPU). The "low grad" column shows
why: without warm-up the post-norm stack's bottom gets a gradient of about 0.000-0.006; every other
run gets 0.02-1.8. With 2 layers instead of 3 (quick) post-norm learns without warm-up too.
Clipping at 1.0 (``--clip 1.0``) does not change Adam's first updates much and hides the effect
only in part (full: 4/5 seeds still stuck, the fifth at accuracy 0.464).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from transformer_lesson.runtime import seed_everything
from transformer_lesson.schedule import warmup_linear_decay
from transformer_lesson.timing import describe_device
from transformer_lesson.toy import (
    IGNORE_INDEX,
    histogram_batch,
    tagging_accuracy,
    tagging_loss,
    toy_vocab_size,
)
from transformer_lesson.transformer import EncoderTagger, TransformerConfig

N_SYMBOLS, MAX_LEN = 8, 12  # histogram_batch's defaults
N_CLASSES = MAX_LEN + 1  # counts 1 .. MAX_LEN (class 0 never occurs)
BATCH_SIZE = 64
EVAL_SIZE, EVAL_SEED = 1000, 10_000
LOW_GRAD_STEPS = range(20, 101)  # the window of "low grad"

# Settings of the two modes; a command-line option overrides its field.
PRESETS = {
    "full": dict(seeds=5, steps=400, layers=4, d_model=32, d_ff=128, lr=1e-2, warmup=100),
    "quick": dict(seeds=2, steps=180, layers=3, d_model=32, d_ff=64, lr=1e-2, warmup=60),
}
CONFIGS = [("post", False, "none"), ("post", False, "warm-up"), ("pre", True, "none"), ("pre", True, "warm-up")]


def baseline_loss(batch) -> float:
    """Cross-entropy of predicting every position with the label frequencies of ``batch`` (no attention needed)."""
    labels = batch.labels[batch.labels != IGNORE_INDEX]
    p = torch.bincount(labels, minlength=N_CLASSES).float() / labels.numel()
    p = p[p > 0]
    return -(p * p.log()).sum().item()


def low_grad_norm(model: EncoderTagger) -> float:
    """Gradient norm of the embedding and the first encoder layer."""
    params = list(model.embedding.parameters()) + list(model.encoder.layers[0].parameters())
    return math.sqrt(sum(p.grad.pow(2).sum().item() for p in params if p.grad is not None))


def train(norm_first: bool, warmup: int, seed: int, args) -> dict:
    """One run; returns its losses, accuracy and the early gradient norms of the bottom of the stack."""
    seed_everything(seed)
    config = TransformerConfig(
        src_vocab_size=toy_vocab_size(N_SYMBOLS), d_model=args.d_model, n_heads=4, n_encoder_layers=args.layers,
        d_ff=args.d_ff, dropout=0.0, norm_first=norm_first)
    model = EncoderTagger(config, N_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = warmup_linear_decay(optimizer, warmup, args.steps)
    generator = torch.Generator().manual_seed(seed)
    losses, low_grads = [], []
    for step in range(args.steps):
        batch = histogram_batch(BATCH_SIZE, generator=generator)
        loss = tagging_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        if step in LOW_GRAD_STEPS:
            low_grads.append(low_grad_norm(model))
        if args.clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break  # diverged: nothing more to learn from this run
    accuracy = tagging_accuracy(model, args.eval_batch) if math.isfinite(losses[-1]) else float("nan")
    return {"losses": losses, "accuracy": accuracy, "low_grad": statistics.median(low_grads) if low_grads else None}


def status(run: dict, baseline: float) -> str:
    final = run["final_loss"]
    if not math.isfinite(final):
        return "diverged"
    if final > 0.9 * baseline:
        return "stuck"
    return "ok" if run["accuracy"] >= 0.9 else "partial"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick preset (default: the full one)")
    parser.add_argument("--seeds", type=int, help="number of seeds: 0 .. N-1")
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--layers", type=int, help="encoder layers")
    parser.add_argument("--d-model", type=int, help="model width (4 heads)")
    parser.add_argument("--d-ff", type=int, help="feed-forward width (default 4 * d_model)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--warmup", type=int, help="warm-up steps of the 'warm-up' configurations")
    parser.add_argument("--clip", type=float, default=None, help="clip the gradient norm at this value (default: none)")
    parser.add_argument("--curve", action="store_true", help="also print each configuration's mean loss curve")
    args = parser.parse_args()
    args.mode = "quick" if args.quick else "full"
    for key, value in PRESETS[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.d_ff is None:
        args.d_ff = 4 * args.d_model
    if not 0 < args.warmup < args.steps:
        parser.error(f"Need 0 < --warmup < --steps, got {args.warmup} and {args.steps}.")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # small models: one thread is as fast, and leaves the other cores alone
    args.eval_batch = histogram_batch(EVAL_SIZE, generator=torch.Generator().manual_seed(EVAL_SEED))
    baseline = baseline_loss(args.eval_batch)
    print(f"torch {torch.__version__}, {describe_device('cpu')}")
    print(f"{args.mode} mode: {args.seeds} seeds x {args.steps} steps, {args.layers} layers, d_model {args.d_model}, "
          f"d_ff {args.d_ff}, 4 heads, batch {BATCH_SIZE}, AdamW lr {args.lr:g} (linear decay to 0), "
          f"warm-up {args.warmup} steps, clip {args.clip if args.clip is not None else 'none'}")
    print(f"baseline loss (label frequencies, no attention): {baseline:.3f}\n")

    wall, cpu = time.perf_counter(), time.process_time()
    print(f"{'norm':<5} {'warm-up':<8} {'seed':>4} {'loss':>7} {'acc':>6} {'low grad':>9}  status")
    summary = []
    for name, norm_first, schedule in CONFIGS:
        runs = []
        for seed in range(args.seeds):
            run = train(norm_first, args.warmup if schedule == "warm-up" else 0, seed, args)
            run["final_loss"] = sum(run["losses"][-50:]) / len(run["losses"][-50:])
            run["status"] = status(run, baseline)
            runs.append(run)
            low = f"{run['low_grad']:9.3f}" if run["low_grad"] is not None else f"{'-':>9}"
            print(f"{name:<5} {schedule:<8} {seed:>4} {run['final_loss']:7.3f} {run['accuracy']:6.3f} {low}  "
                  f"{run['status']}", flush=True)
        summary.append((name, schedule, runs))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    print(f"\n{'norm':<5} {'warm-up':<8} {'mean loss':>9} {'mean acc':>8}  failed (stuck or diverged)")
    for name, schedule, runs in summary:
        failed = sum(run["status"] in ("stuck", "diverged") for run in runs)
        print(f"{name:<5} {schedule:<8} {statistics.mean(r['final_loss'] for r in runs):9.3f} "
              f"{statistics.mean(r['accuracy'] for r in runs):8.3f}  {failed}/{len(runs)}")
    if args.curve:
        points = list(range(0, args.steps, max(1, args.steps // 10)))
        print(f"\nmean training loss over seeds (steps {points[0]}-{points[0] + 9}, {points[1]}-{points[1] + 9}, ...)")
        for name, schedule, runs in summary:
            means = []
            for p in points:
                windows = [r["losses"][p:p + 10] for r in runs if len(r["losses"]) > p]
                means.append(statistics.mean(sum(w) / len(w) for w in windows) if windows else float("nan"))
            print(f"{name:<5} {schedule:<8} " + " ".join(f"{m:5.2f}" for m in means))
    print(f"\nwall time {wall:.1f} s, CPU time {cpu:.1f} s ({4 * args.seeds} runs)")


if __name__ == "__main__":
    main()
