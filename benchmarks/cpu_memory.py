"""Does keeping freed memory (``runtime.keep_freed_memory``) speed up training on a CPU? Run by hand::

    python benchmarks/cpu_memory.py --preset cpu --steps 40 --set dropout=0

Trains lesson 09's preset model (``transformer_lesson.train``: same data, batches, optimizer) for
``--steps`` steps on the same Multi30k batches, in fresh processes, alternately with glibc's
default ``malloc`` settings and with ``keep_freed_memory()``, ``--repeats`` times each. Reported per
run, over the steps after the first ``--warmup``: target tokens per second, the CPU time spent in
the process itself (user) and in the kernel on its behalf (system), the minor page faults, and
the peak resident memory of the whole run. Linux with glibc only: elsewhere the setting does nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_run(args: argparse.Namespace, keep: bool) -> dict[str, float]:
    """Train in this process (called in a fresh subprocess) and return the measurements."""
    import torch

    from transformer_lesson.batching import TranslationData
    from transformer_lesson.data import load_multi30k
    from transformer_lesson.runtime import get_device, keep_freed_memory, seed_everything
    from transformer_lesson.tokenizer import multi30k_tokenizer
    from transformer_lesson.train import _adamw, model_config, preset
    from transformer_lesson.training import Trainer, seq2seq_loss
    from transformer_lesson.transformer import Transformer

    if keep and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() does nothing here (not Linux with glibc).")
    config = preset(args.preset, args.set)
    device = get_device("cpu")
    tokenizer = multi30k_tokenizer(config.vocab_size)
    data = TranslationData(load_multi30k("train", limit=config.train_limit), tokenizer, max_len=config.max_len)
    batches = list(data.batches(config.max_tokens, seed=0))[: args.steps]
    seed_everything(0)
    model = Transformer(model_config(config, tokenizer.vocab_size)).to(device)
    trainer = Trainer(model, _adamw(model, config), device, amp=False, progress=False, keep_freed_memory=False,
                      loss_fn=lambda m, b: seq2seq_loss(m, b, config.label_smoothing))
    tokens = 0
    for number, batch in enumerate(batches):
        if number == args.warmup:
            usage, started, tokens = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
        trainer.train_step(batch)
        tokens += batch.n_target_tokens
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"tokens_per_s": tokens / seconds, "user_s": after.ru_utime - usage.ru_utime,
            "system_s": after.ru_stime - usage.ru_stime, "page_faults": after.ru_minflt - usage.ru_minflt,
            "peak_mb": after.ru_maxrss / 1024, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["default", "keep"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args, keep=args.child == "keep")))
        return
    print(f"preset {args.preset} {' '.join(args.set)}, {args.steps} steps ({args.warmup} not counted), "
          f"each run in a fresh process")
    print("| malloc | tokens/s | user CPU s | system CPU s | minor page faults | peak memory |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.repeats):
        for how in ("default", "keep"):
            done = subprocess.run([sys.executable, __file__, "--child", how, *sys.argv[1:]],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            label = "glibc default" if how == "default" else "keep_freed_memory()"
            print(f"| {label} | {r['tokens_per_s']:,.0f} | {r['user_s']:.1f} | {r['system_s']:.1f} | "
                  f"{r['page_faults']:,} | {r['peak_mb']:,.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
