"""Forward + backward time of the package's MultiHeadAttention vs torch.nn.MultiheadAttention.

Run by hand (not in CI), for example::

    python benchmarks/attention_speed.py --threads 1 --runs 3
    python benchmarks/attention_speed.py --lengths 64 256 1024 --batch 16 --device cuda
    python benchmarks/attention_speed.py --threads 1 --lengths 512 --block-scores 1000000000000

Both modules hold the same weights (``load_from_torch``) and run self-attention on the same input
with a padding mask (or none, ``--no-mask``), in training mode, dropout 0; PyTorch's is called with
``need_weights=False`` (its fastest setting). Every configuration is measured in this one run,
the three contenders taking turns call by call (round robin), so that a busy spell of the machine
slows all three alike and the ratios compare like with like. Ratio = PyTorch's time /
ours: above 1 means ours is faster.

A single median still moves from run to run (by 15% on a shared machine), so ``--runs N`` repeats
the whole measurement N times and reports the spread: each cell is "lowest-highest" of the N
medians (times) or of the N per-run ratios.
"""

from __future__ import annotations

import argparse
import datetime
import statistics

import torch
from torch import nn

from transformer_lesson import attention
from transformer_lesson.attention import padding_mask
from transformer_lesson.multihead import MultiHeadAttention
from transformer_lesson.timing import describe_device, measure


def step(module, x, real, ours: bool):
    """One forward + backward pass (``real`` None: no mask); returns a closure for ``measure``."""

    def run():
        module.zero_grad(set_to_none=True)
        if ours:
            out, _ = module(x, mask=None if real is None else padding_mask(real))
        else:
            out, _ = module(x, x, x, key_padding_mask=None if real is None else ~real,
                            need_weights=False)
        out.sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole measurement; cells show the min-max of the medians")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-mask", action="store_true", help="attend everywhere, no padding")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--block-scores", type=int, default=attention.BLOCK_SCORES,
                        help="teaching path: most scores computed at once (a huge value: never split "
                             f"the queries into blocks); default {attention.BLOCK_SCORES}")
    args = parser.parse_args()
    attention.BLOCK_SCORES = args.block_scores

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(args.d_model, args.heads, batch_first=True).to(device)
    fast = MultiHeadAttention.load_from_torch(theirs, fast=True)
    teaching = MultiHeadAttention.load_from_torch(theirs, fast=False)

    masking = ("no mask" if args.no_mask
               else "padding mask (last quarter of every other row padded)")
    print(f"device: {describe_device(device)}")
    print(f"torch {torch.__version__}, float32, batch {args.batch}, d_model {args.d_model}, "
          f"{args.heads} heads, {masking}, "
          f"forward + backward, median of {args.repeats} calls each, taken in turns; "
          f"{args.runs} run(s), cells = min-max over runs; teaching path: at most "
          f"{args.block_scores} scores per block of queries")
    print(f"date: {datetime.date.today().isoformat()}")
    header = ("T", "torch ms", "fast ms", "teaching ms", "torch/fast", "torch/teaching")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    medians = {length: [] for length in args.lengths}  # per length: one dict of medians per run
    for _ in range(args.runs):
        for length in args.lengths:
            medians[length].append(measure_length(args, device, length, theirs, fast, teaching))
    for length, runs in medians.items():
        cells = [spread([run[name] * 1e3 for run in runs], "{:.2f}") for name in ("torch", "fast", "teaching")]
        for name in ("fast", "teaching"):
            cells.append(spread([run["torch"] / run[name] for run in runs], "{:.2f}x"))
        print(f"| {length} | " + " | ".join(cells) + " |")


def spread(values, fmt: str) -> str:
    """``"a"`` for one value, ``"lowest-highest"`` for several."""
    low, high = min(values), max(values)
    return fmt.format(low) if len(values) == 1 else f"{fmt.format(low)}-{fmt.format(high)}"


def measure_length(args, device, length, theirs, fast, teaching) -> dict[str, float]:
    """Median seconds per forward + backward for the three contenders at one sequence length."""
    x = torch.randn(args.batch, length, args.d_model, device=device, requires_grad=True)
    lengths = torch.full((args.batch,), length, device=device)
    lengths[::2] = max(1, length * 3 // 4)
    real = torch.arange(length, device=device)[None, :] < lengths[:, None]  # (B, T)
    real = None if args.no_mask else real
    contenders = {
        "torch": step(theirs, x, real, ours=False),
        "fast": step(fast, x, real, ours=True),
        "teaching": step(teaching, x, real, ours=True),
    }
    for fn in contenders.values():  # warm-up: allocation, kernel selection
        measure(fn, device, repeats=2, warmup=1)
    samples = {name: [] for name in contenders}
    for _ in range(args.repeats):  # round robin, so a busy spell of the machine hits all three
        for name, fn in contenders.items():
            samples[name].append(measure(fn, device, repeats=1, warmup=0).median)
    return {name: statistics.median(s) for name, s in samples.items()}

if __name__ == "__main__":
    main()
