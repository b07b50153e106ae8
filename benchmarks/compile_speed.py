"""Does ``torch.compile`` speed up training of lesson 09's translator? Run by hand, for example::

    python benchmarks/compile_speed.py --preset cpu --steps 30
    python benchmarks/compile_speed.py --preset gpu --steps 200 --device cuda

Trains the preset's model (``transformer_lesson.train``: same data, batches, optimizer, mixed
precision) for ``--steps`` steps on the same Multi30k batches, once as it is and once wrapped in
``torch.compile(dynamic=True)`` (sentence lengths change from batch to batch). Reported for each:
seconds spent in the first ``--warmup`` steps (for the compiled model, mostly compiling) and the
steady-state throughput after them, in real target tokens per second, the median over the
remaining steps. Dropout is on, as in training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from transformer_lesson.batching import TranslationData
from transformer_lesson.data import load_multi30k
from transformer_lesson.runtime import get_device, seed_everything
from transformer_lesson.timing import describe_device, synchronize
from transformer_lesson.tokenizer import multi30k_tokenizer
from transformer_lesson.train import _adamw, model_config, preset
from transformer_lesson.training import Trainer, seq2seq_loss
from transformer_lesson.transformer import Transformer


def run(compiled: bool, config, data, vocab_size: int, device, steps: int, warmup: int) -> tuple[float, float]:
    seed_everything(0)
    model = Transformer(model_config(config, vocab_size)).to(device)
    network = torch.compile(model, dynamic=True) if compiled else model
    trainer = Trainer(network, _adamw(model, config), device, amp=config.amp, progress=False,
                      loss_fn=lambda m, b: seq2seq_loss(m, b, config.label_smoothing))
    batches = list(data.batches(config.max_tokens, seed=0))[:steps]
    started = time.perf_counter()
    per_step = []
    for number, batch in enumerate(batches):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        synchronize(device)
        if number >= warmup:
            per_step.append(batch.n_target_tokens / (time.perf_counter() - t0))
        if number == warmup - 1:
            warmup_seconds = time.perf_counter() - started
    return warmup_seconds, statistics.median(per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    config = preset(args.preset)
    device = get_device(args.device)
    tokenizer = multi30k_tokenizer(config.vocab_size)
    data = TranslationData(load_multi30k("train", limit=config.train_limit), tokenizer, max_len=config.max_len)
    print(f"{describe_device(device)}, torch {torch.__version__}, preset {args.preset}, {args.steps} steps "
          f"({args.warmup} warm-up)")
    print("| model | first steps (s) | target tokens/s after them |")
    print("|---|---|---|")
    for compiled in (False, True):
        warm, speed = run(compiled, config, data, tokenizer.vocab_size, device, args.steps, args.warmup)
        print(f"| {'torch.compile(dynamic=True)' if compiled else 'eager'} | {warm:.1f} | {speed:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
