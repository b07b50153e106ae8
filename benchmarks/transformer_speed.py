"""Training throughput of the package's Transformer vs torch.nn.Transformer of the same shape.

Run by hand (not in CI), for example::

    python benchmarks/transformer_speed.py --preset toy --threads 1 --rounds 30
    python benchmarks/transformer_speed.py --preset cpu --threads 1 --rounds 12 --post-norm
    python benchmarks/transformer_speed.py --preset base --device cuda --amp --rounds 30

One training step = forward, loss (``training.sequence_loss``), backward and an Adam step, on
translation-like batches: random sentence lengths shaped like Multi30k's (BPE, 8000 types:
source lengths mostly 8-30 tokens, the target about as long), grouped by length into batches of
a token budget (``batching.token_budget_batches``), random ids from an 8000-token vocabulary.
``--preset toy`` uses the course's toy task instead (``toy.toy_pairs``: "reverse", 3-10 symbols).

Three contenders train on the same batches:

* ``ours (fast)``: :class:`~transformer_lesson.transformer.Transformer`, fused attention;
* ``ours (teaching)``: the same model after ``set_fast_attention(False)``;
* ``torch``: ``torch.nn.Transformer`` with the same embeddings (scaled, tied with the output layer)
  and sinusoidal positions as ours, so that only the encoder and decoder stacks differ. Its masks
  are passed the way PyTorch runs fastest in training: the source padding as boolean
  ``src_key_padding_mask`` / ``memory_key_padding_mask``, the causal mask as ``tgt_mask`` with
  ``tgt_is_causal=True`` and no target padding mask, so that its decoder self-attention calls
  ``scaled_dot_product_attention(is_causal=True)`` with no mask tensor at all.

All three start from the same weights (``load_from_torch``, final norms on both sides, the
embedding copied) and the script checks, before timing, that they give the same loss and the
same embedding gradient on the first batch (dropout off for that check). Then they take turns
step by step, on the same batch, the order rotating at every batch, so that a busy spell of the
machine slows all of them alike; a round is one step on each batch of the set (``--batches``)
per model. Reported: the median and min-max over rounds of ms per step (round time / steps),
target tokens per second (real target tokens, the predictions trained, over the median round
time), and the throughput ratio ours / torch, the median and min-max of the per-round ratios
(above 1 = ours trains faster).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from transformer_lesson.batching import Batch, make_batch, token_budget_batches
from transformer_lesson.positional import SinusoidalPositionalEncoding
from transformer_lesson.timing import describe_device, measure
from transformer_lesson.tokenizer import BOS_ID, EOS_ID
from transformer_lesson.toy import toy_pairs, toy_vocab_size
from transformer_lesson.training import sequence_loss
from transformer_lesson.transformer import ScaledEmbedding, Transformer, TransformerConfig

# Model and batch sizes. "layers" is per stack (encoder and decoder alike); "batches" is how many
# batches each model trains on per round.
PRESETS = {
    "toy": dict(d_model=64, heads=4, layers=2, d_ff=128, dropout=0.1, data="toy", max_tokens=640,
                vocab=None, batches=8),
    "cpu": dict(d_model=256, heads=4, layers=3, d_ff=1024, dropout=0.1, data="translation", max_tokens=4000,
                vocab=8000, batches=2),
    "base": dict(d_model=512, heads=8, layers=6, d_ff=2048, dropout=0.1, data="translation", max_tokens=4000,
                 vocab=8000, batches=2),
}
TOY_SYMBOLS = 10
FIRST_ID = 4  # ids 0-3 are <pad>, <bos>, <eos>, <unk>


# ---------------------------------------------------------------------------------------------
# The PyTorch baseline: nn.Transformer between the same embeddings and output layer as ours
# ---------------------------------------------------------------------------------------------


class TorchTransformer(nn.Module):
    """``nn.Transformer`` with scaled tied embeddings, sinusoidal positions and a tied output layer."""

    def __init__(self, vocab: int, d_model: int, heads: int, layers: int, d_ff: int, dropout: float,
                 norm_first: bool, max_len: int):
        super().__init__()
        self.embedding = ScaledEmbedding(vocab, d_model)
        self.src_positions = SinusoidalPositionalEncoding(d_model, max_len, dropout)
        self.tgt_positions = SinusoidalPositionalEncoding(d_model, max_len, dropout)
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but ...": inference only anyway
            warnings.filterwarnings("ignore", message="enable_nested_tensor")
            self.transformer = nn.Transformer(d_model, heads, layers, layers, d_ff, dropout, batch_first=True,
                                              norm_first=norm_first)
        self._causal: dict[tuple[int, torch.device], torch.Tensor] = {}

    def causal_mask(self, length: int, device: torch.device) -> torch.Tensor:
        key = (length, device)
        if key not in self._causal:  # float, -inf above the diagonal, as PyTorch's documentation does it
            self._causal[key] = nn.Transformer.generate_square_subsequent_mask(length, device=device)
        return self._causal[key]

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        padding = ~src_mask  # PyTorch's boolean masks: True = may NOT attend
        y = self.transformer(
            self.src_positions(self.embedding(src)), self.tgt_positions(self.embedding(tgt_in)),
            tgt_mask=self.causal_mask(tgt_in.shape[1], tgt_in.device), tgt_is_causal=True,
            src_key_padding_mask=padding, memory_key_padding_mask=padding)
        return F.linear(y, self.embedding.weight)


def build_models(args, vocab: int, device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(args.seed)
    theirs = TorchTransformer(vocab, args.d_model, args.heads, args.layers, args.d_ff, args.dropout,
                              args.norm_first, args.max_len)
    config = TransformerConfig(src_vocab_size=vocab, d_model=args.d_model, n_heads=args.heads,
                               n_encoder_layers=args.layers, n_decoder_layers=args.layers, d_ff=args.d_ff,
                               dropout=args.dropout, norm_first=args.norm_first, final_norm=True,
                               max_len=args.max_len, tie_embeddings=True, fast=True)
    fast = Transformer(config).load_from_torch(theirs.transformer)
    with torch.no_grad():
        fast.src_embedding.weight.copy_(theirs.embedding.weight)  # tied: also the target's and the output's
    teaching = copy.deepcopy(fast)
    teaching.set_fast_attention(False)
    return {name: model.to(device).train() for name, model in
            (("ours (fast)", fast), ("ours (teaching)", teaching), ("torch", theirs))}


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def translation_pairs(n: int, vocab: int, generator: torch.Generator) -> tuple[list[list[int]], list[list[int]]]:
    """Random sentence pairs with Multi30k-like lengths (BPE tokens, before <bos>/<eos>).

    Source length: log-normal, median 15, 90% between 8 and 28 (Multi30k's German side has 11
    words on average, 6-18 for 90%, a little more in BPE tokens); the target's length is the
    source's times a log-normal factor of spread 15% (English runs about as long).
    """
    src_len = (15 * torch.exp(0.38 * torch.randn(n, generator=generator))).round().clamp(3, 60).long()
    tgt_len = (src_len * torch.exp(0.15 * torch.randn(n, generator=generator))).round().clamp(3, 60).long()
    sources, targets = [], []
    for s, t in zip(src_len.tolist(), tgt_len.tolist(), strict=True):
        sources.append(torch.randint(FIRST_ID, vocab, (s,), generator=generator).tolist())
        targets.append([BOS_ID, *torch.randint(FIRST_ID, vocab, (t,), generator=generator).tolist(), EOS_ID])
    return sources, targets


def make_batches(args, vocab: int) -> list[Batch]:
    """``args.batches`` batches of about ``args.max_tokens`` padded tokens (the longer side counts)."""
    generator = torch.Generator().manual_seed(args.seed)
    n = 4 * args.batches * args.max_tokens // 10  # enough sentences for several times the batches needed
    if args.data == "toy":
        sources, targets = toy_pairs("reverse", n, 3, 10, TOY_SYMBOLS, generator=generator)
    else:
        sources, targets = translation_pairs(n, vocab, generator)
    lengths = [max(len(s), len(t) - 1) for s, t in zip(sources, targets, strict=True)]
    groups = token_budget_batches(lengths, args.max_tokens, shuffle=True, seed=args.seed)
    full = [g for g in groups if len(g) * max(lengths[i] for i in g) >= args.max_tokens // 2]  # no runt batches
    if len(full) < args.batches:
        raise SystemExit(f"Only {len(full)} batches of about {args.max_tokens} tokens; ask for fewer --batches.")
    return [make_batch([sources[i] for i in g], [targets[i] for i in g]) for g in full[:args.batches]]


# ---------------------------------------------------------------------------------------------
# Training steps and the check that the models compute the same thing
# ---------------------------------------------------------------------------------------------


def loss_of(model: nn.Module, batch: Batch, device: torch.device, amp: bool) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(batch.src, batch.src_mask, batch.tgt_in)
        return sequence_loss(logits, batch.tgt_out, batch.tgt_mask)  # float32 even under autocast


def embedding_weight(model: nn.Module) -> torch.Tensor:
    return model.embedding.weight if isinstance(model, TorchTransformer) else model.src_embedding.weight


def check_same_computation(models: dict[str, nn.Module], batch: Batch, device: torch.device, amp: bool) -> str:
    """Loss and (tied) embedding gradient of every model on ``batch``, dropout off; raise if they differ."""
    results = {}
    for name, model in models.items():
        model.eval()  # dropout off; gradients on, so nn.Transformer does not take its inference fast path
        model.zero_grad(set_to_none=True)
        loss = loss_of(model, batch, device, amp)
        loss.backward()
        results[name] = (loss.item(), embedding_weight(model).grad.detach().clone())
        model.zero_grad(set_to_none=True)
        model.train()
    loss_tol, grad_tol = (2e-2, 1e-1) if amp else (1e-4, 1e-3)
    ref_loss, ref_grad = results["torch"]
    notes = []
    for name, (loss, grad) in results.items():
        loss_diff = abs(loss - ref_loss) / abs(ref_loss)
        grad_diff = ((grad - ref_grad).norm() / ref_grad.norm()).item()
        if not (loss_diff <= loss_tol and grad_diff <= grad_tol):
            raise SystemExit(f"{name} does not compute what torch does: loss {loss:.6f} vs {ref_loss:.6f} "
                             f"(relative {loss_diff:.1e}), embedding gradient relative difference {grad_diff:.1e}.")
        if name != "torch":
            notes.append(f"{name}: loss diff {loss_diff:.1e}, grad diff {grad_diff:.1e}")
    return f"same computation checked (eval mode, batch 0): torch loss {ref_loss:.4f}; " + "; ".join(notes)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, device: torch.device,
                  amp: bool):
    """A closure for ``measure``: one training step (forward, loss, backward, Adam) on ``batch``."""

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch, device, amp).backward()
        optimizer.step()

    return run


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="toy: 64/4 heads/2+2 layers/d_ff 128 on toy batches; cpu: 256/4/3+3/1024; "
                             "base: the paper's base model, 512/8/6+6/2048 (default: cpu)")
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument("--norm-first", dest="norm_first", action="store_true", default=True,
                      help="pre-norm (the package's default)")
    norm.add_argument("--post-norm", dest="norm_first", action="store_false", help="post-norm (the paper's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (each model: one step on each batch)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes over the batches per model")
    parser.add_argument("--amp", action="store_true", help="CUDA only: bfloat16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    for name, kind in (("d-model", int), ("heads", int), ("layers", int), ("d-ff", int), ("dropout", float),
                       ("max-tokens", int), ("vocab", int), ("batches", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the preset's value")
    parser.add_argument("--max-len", type=int, default=256, help="positional table length")
    args = parser.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda, but this PyTorch ({torch.__version__}) sees no CUDA GPU "
                     f"(built with CUDA {torch.version.cuda}). Run on a machine with a GPU, or use --device cpu.")
    if args.amp and args.device != "cuda":
        parser.error("--amp (bfloat16 autocast) is for --device cuda; on the CPU the benchmark runs float32.")
    if args.amp and not torch.cuda.is_bf16_supported():
        parser.error("--amp: this GPU does not support bfloat16.")
    if args.rounds < 1 or args.batches < 1:
        parser.error("--rounds and --batches must be at least 1.")
    return args


def spread(values, fmt: str) -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    vocab = toy_vocab_size(TOY_SYMBOLS) if args.data == "toy" else args.vocab
    batches = make_batches(args, vocab)
    models = build_models(args, vocab, device)
    batches = [b.to(device) for b in batches]
    check = check_same_computation(models, batches[0], device, args.amp)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.98)) for name, m in models.items()}
    steps = {name: [training_step(m, optimizers[name], b, device, args.amp) for b in batches]
             for name, m in models.items()}

    load_before = os.getloadavg()
    for fns in steps.values():  # warm-up: allocation, kernel selection, Adam's state
        for _ in range(args.warmup):
            for fn in fns:
                fn()
    names = list(steps)
    times = {name: [0.0] * args.rounds for name in names}  # per round: seconds for one pass over the batches
    for r in range(args.rounds):
        for b in range(len(batches)):
            turn = (r * len(batches) + b) % len(names)  # each model goes first, second, last in turn
            for name in names[turn:] + names[:turn]:
                times[name][r] += measure(steps[name][b], device, repeats=1, warmup=0).median
    load_after = os.getloadavg()

    n_steps = len(batches)
    target_tokens = sum(b.n_target_tokens for b in batches)
    source_tokens = sum(int(b.src_mask.sum()) for b in batches)
    shapes = ", ".join(f"{len(b)}x{b.src.shape[1]}->{b.tgt_in.shape[1]}" for b in batches)
    norm = "pre-norm" if args.norm_first else "post-norm"
    print(f"device: {describe_device(device)}")
    print(f"torch {torch.__version__}, {'bfloat16 autocast' if args.amp else 'float32'}; date: "
          f"{datetime.datetime.now().isoformat(timespec='minutes')}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after (1 min)")
    print(f"preset {args.preset}: d_model {args.d_model}, {args.heads} heads, {args.layers}+{args.layers} layers, "
          f"d_ff {args.d_ff}, dropout {args.dropout}, {norm}, vocab {vocab} (tied), Adam")
    print(f"batches ({args.data}, budget {args.max_tokens} tokens; sentences x source len -> target len): "
          f"{shapes}; {source_tokens} source / {target_tokens} target tokens per round")
    print(f"{args.rounds} rounds of {len(batches)} steps after {args.warmup} warm-up pass(es), models taking turns "
          f"step by step; {check}")
    header = ("model", "median ms/step", "min-max ms/step", "target tokens/s", "ours/torch throughput (min-max)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in names:
        median = statistics.median(times[name])
        ratios = [t / o for t, o in zip(times["torch"], times[name], strict=True)]
        ratio = "" if name == "torch" else f"{statistics.median(ratios):.2f}x ({spread(ratios, '{:.2f}')})"
        print(f"| {name} | {median / n_steps * 1e3:.1f} | {spread([t / n_steps * 1e3 for t in times[name]], '{:.1f}')}"
              f" | {target_tokens / median:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
