"""Forward + backward time of the package's MultiHeadAttention vs torch.nn.MultiheadAttention.

Run by hand (not in CI), for example::

    python benchmarks/attention_speed.py
    python benchmarks/attention_speed.py --lengths 64 256 1024 --batch 16 --device cuda

Both modules hold the same weights (``load_from_torch``) and run self-attention on the same input
with a padding mask (or none, ``--no-mask``), in training mode, dropout 0; PyTorch's is called with
``need_weights=False`` (its fastest setting). Every configuration is measured in this one run,
the three contenders taking turns call by call (round robin), so that a busy spell of the machine
slows all three alike and the ratios compare like with like. Ratio = PyTorch's time /
ours: above 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics

import torch
from torch import nn

from transformer_lesson.attention import padding_mask
from transformer_lesson.multihead import MultiHeadAttention
from transformer_lesson.timing import measure


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


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
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-mask", action="store_true", help="attend everywhere, no padding")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(args.d_model, args.heads, batch_first=True).to(device)
    fast = MultiHeadAttention.load_from_torch(theirs, fast=True)
    teaching = MultiHeadAttention.load_from_torch(theirs, fast=False)

    masking = ("no mask" if args.no_mask
               else "padding mask (last quarter of every other row padded)")
    print(f"device: {device_name(device)} ({device.type})")
    print(f"torch {torch.__version__}, float32, batch {args.batch}, d_model {args.d_model}, "
          f"{args.heads} heads, {masking}, "
          f"forward + backward, median of {args.repeats} runs each, taken in turns")
    print(f"date: {datetime.date.today().isoformat()}")
    header = ("T", "torch ms", "fast ms", "teaching ms", "torch/fast", "torch/teaching")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for length in args.lengths:
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
        ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
        print(f"| {length} | {ms['torch']:.2f} | {ms['fast']:.2f} | {ms['teaching']:.2f} | "
              f"{ms['torch'] / ms['fast']:.2f}x | {ms['torch'] / ms['teaching']:.2f}x |")


if __name__ == "__main__":
    main()
