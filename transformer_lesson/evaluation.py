"""Translating sentences and scoring translations with BLEU.

BLEU compares n-grams (1 to 4 words) of the system's output with a reference translation over a
whole test set and multiplies in a penalty for output that is too short. It is only comparable
between papers when computed the same way, so we report two numbers and say which is which:

* :func:`corpus_bleu`: **sacreBLEU**, the standard: detokenized output, case-sensitive, sacreBLEU's
  own ``13a`` tokenization. Report this one.
* :func:`lowercased_bleu`: the same, **lowercased**. Older tutorials (for example the classic
  PyTorch seq2seq notebooks) scored lowercased text split into words by spaCy, with torchtext's
  ``bleu_score``; lowercased 13a BLEU *approximates* that number (the tokenizers differ a little),
  so you can compare with them roughly. It is higher than cased BLEU and is not the standard metric.

Each score comes with sacreBLEU's *signature* (``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|
version:...``), the exact settings it was computed with; report it next to the number.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.bleu import BLEUScore

from .batching import pad_sequences
from .decoding import Uncached, beam_search, greedy_decode
from .runtime import SIZES, checkpoint_dir, is_quick
from .validation import (
    require_device,
    require_int,
    require_number,
    require_pairs,
    require_same_vocab,
    require_text_list,
)

DEFAULT_MAX_SRC_LEN = 128


def translate(
    model,
    tokenizer,
    sentences: str | Sequence[str],
    device: torch.device | str,
    max_len: int | None = None,
    batch_size: int = 64,
    max_src_len: int = DEFAULT_MAX_SRC_LEN,
    beam_size: int = 1,
    alpha: float = 0.6,
    cache: bool = True,
) -> str | list[str]:
    """Translate sentences greedily, or with beam search when ``beam_size`` > 1; a string gives a string back.

    ``alpha`` is beam search's length penalty (:func:`~transformer_lesson.decoding.beam_search`);
    ``cache=False`` decodes a Transformer without its key/value cache (the same output, slower:
    :class:`~transformer_lesson.decoding.Uncached`).

    Sentences are batched by length. ``max_len`` caps each translation's tokens (default: twice
    its source's length plus 10), so a translation does not depend on the batch it was in. Empty
    sentences translate to ``""`` and sources longer than ``max_src_len`` tokens are truncated,
    each with a warning, never an error. A model with a
    ``max_positions`` attribute (the Transformer: the length of its positional table) caps both
    lengths at it. Characters the tokenizer never saw are spelled as bytes, so any text can be encoded.
    """
    single = isinstance(sentences, str)
    texts = [sentences] if single else require_text_list(sentences, "translate's sentences")
    device = require_device(device)
    batch_size = require_int(batch_size, "batch_size", at_least=1)
    beam_size = require_int(beam_size, "beam_size", at_least=1)
    max_src_len = require_int(max_src_len, "max_src_len", at_least=1)
    max_len = None if max_len is None else require_int(max_len, "max_len", at_least=1)
    alpha = require_number(alpha, "alpha", at_least=0.0)
    require_same_vocab(model, tokenizer)
    if not cache:
        if not hasattr(model, "decode"):
            raise ValueError(f"cache=False needs a model with encode() and decode() (the Transformer); "
                             f"{type(model).__name__} decodes step by step only.")
        model = Uncached(model)
    positions = getattr(model, "max_positions", None)
    if positions is not None:
        max_src_len = min(max_src_len, positions)
    encoded = tokenizer.encode_batch([t.strip() for t in texts]) if texts else []
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        warnings.warn(f"{len(empty)} empty sentence(s) to translate; their translation is ''.", stacklevel=2)
    too_long = [i for i, ids in enumerate(encoded) if len(ids) > max_src_len]
    if too_long:
        warnings.warn(f"{len(too_long)} sentence(s) longer than {max_src_len} tokens were truncated "
                      f"to their first {max_src_len} tokens before translating.", stacklevel=2)
    encoded = [ids[:max_src_len] for ids in encoded]
    results = [""] * len(texts)
    order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        src, src_mask = pad_sequences([encoded[i] for i in indices])
        limits = [max_len if max_len is not None else 2 * len(encoded[i]) + 10 for i in indices]
        limits = limits if positions is None else [min(limit, positions) for limit in limits]
        if beam_size == 1:  # each sentence decodes independently: cut each at its own limit
            hypotheses = greedy_decode(model, src.to(device), src_mask.to(device), max_len=max(limits))
            hypotheses = [ids[:limit] for ids, limit in zip(hypotheses, limits, strict=True)]
        else:
            hypotheses = beam_search(model, src.to(device), src_mask.to(device), beam_size, limits, alpha)
        for i, ids in zip(indices, hypotheses, strict=True):
            results[i] = tokenizer.decode(ids)
    return results[0] if single else results


def _check_parallel(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    """Both as lists of strings, one reference per hypothesis (at least one of each)."""
    hypotheses = require_text_list(hypotheses, "hypotheses", allow_empty=False)
    references = require_text_list(references, "references", allow_empty=False)
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references: give one reference "
                         f"per hypothesis, in the same order.")
    return hypotheses, references


def _score(metric: BLEU, hypotheses: Sequence[str], references: Sequence[str]) -> BLEUScore:
    hypotheses, references = _check_parallel(hypotheses, references)
    score = metric.corpus_score(hypotheses, [references])
    score.signature = str(metric.get_signature())  # e.g. nrefs:1|case:mixed|eff:no|tok:13a|...
    return score


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> BLEUScore:
    """Standard sacreBLEU (cased, 13a tokenization) of detokenized sentences; ``.score`` is 0-100.

    ``str(result)`` shows the score, n-gram precisions and brevity penalty, ``result.signature``
    sacreBLEU's signature of the settings; ``references`` holds one reference per hypothesis.
    """
    return _score(BLEU(), hypotheses, references)


def lowercased_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> BLEUScore:
    """:func:`corpus_bleu` of lowercased text (13a tokenization, as there): approximates the metric older
    tutorials report (not the standard one). ``.score`` is 0-100."""
    return _score(BLEU(lowercase=True, tokenize="13a"), hypotheses, references)


@dataclass(frozen=True)
class LengthBucket:
    """BLEU of the sentences whose source has ``low``..``high`` words (inclusive; ``high=None``: no limit)."""

    low: int
    high: int | None
    count: int
    bleu: float

    @property
    def label(self) -> str:
        return f"{self.low}+" if self.high is None else f"{self.low}-{self.high}"


# The last bucket is open: every sentence of 17 words or more, however long.
DEFAULT_BUCKETS = ((1, 9), (10, 11), (12, 13), (14, 16), (17, None))


def bleu_by_length(
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    buckets: Sequence[tuple[int, int | None]] = DEFAULT_BUCKETS,
    metric: Callable[[Sequence[str], Sequence[str]], BLEUScore] = lowercased_bleu,
) -> list[LengthBucket]:
    """Corpus BLEU within groups of sentences of similar source length (in words).

    Shows where a model breaks down: an encoder that squeezes the source into one vector does
    worse the longer the source is. Empty buckets get ``count=0`` and BLEU ``nan``.
    """
    hypotheses, references = _check_parallel(hypotheses, references)
    sources = require_text_list(sources, "sources")
    if len(sources) != len(hypotheses):
        raise ValueError(f"{len(sources)} sources but {len(hypotheses)} hypotheses.")
    results = []
    for low, high in buckets:
        members = [i for i, s in enumerate(sources)
                   if low <= len(s.split()) and (high is None or len(s.split()) <= high)]
        score = (metric([hypotheses[i] for i in members], [references[i] for i in members]).score
                 if members else float("nan"))
        results.append(LengthBucket(low, high, len(members), score))
    return results


@dataclass
class BleuReport:
    """Translations of a test set and their scores (see the module docstring for the two BLEUs)."""

    sources: list[str]
    references: list[str]
    hypotheses: list[str]
    bleu: BLEUScore  # corpus_bleu: cased, the standard
    lowercased: BLEUScore  # lowercased_bleu

    def __str__(self) -> str:
        return (f"sacreBLEU {self.bleu.score:.2f} (cased, standard) | "
                f"lowercased BLEU {self.lowercased.score:.2f} (approximates older tutorials' "
                f"metric) | {len(self.hypotheses)} sentences\n"
                f"  signatures: {getattr(self.bleu, 'signature', '?')} | "
                f"{getattr(self.lowercased, 'signature', '?')}")


def evaluate_bleu(model, tokenizer, pairs: Sequence[tuple[str, str]], device: torch.device | str,
                  batch_size: int = 64, max_len: int | None = None) -> BleuReport:
    """Translate ``pairs``' sources greedily and score them against their targets."""
    pairs = require_pairs(pairs, "evaluate_bleu's pairs")
    sources = [p[0] for p in pairs]
    references = [p[1] for p in pairs]
    hypotheses = translate(model, tokenizer, sources, device, max_len=max_len, batch_size=batch_size)
    return BleuReport(sources, references, hypotheses,
                      corpus_bleu(hypotheses, references), lowercased_bleu(hypotheses, references))


def bleu_evaluator(tokenizer, pairs: Sequence[tuple[str, str]], device: torch.device | str,
                   batch_size: int = 64) -> Callable[[torch.nn.Module], dict[str, float]]:
    """An ``evaluate`` callback for :meth:`Trainer.fit`: ``model -> {"bleu": ..., "lowercased_bleu": ...}``."""

    def evaluate(model) -> dict[str, float]:
        report = evaluate_bleu(model, tokenizer, pairs, device, batch_size=batch_size)
        return {"bleu": report.bleu.score, "lowercased_bleu": report.lowercased.score}

    return evaluate


def _results_path(lesson: str, size: str) -> Path:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}; got {size!r}.")
    return checkpoint_dir() / f"{lesson}_results_{size}.json"


def save_results(lesson: str, size: str, report: BleuReport, by_length: Sequence[LengthBucket]) -> Path:
    """Keep a lesson's test scores for later lessons to compare with; returns the file written.

    The file, ``checkpoint_dir() / f"{lesson}_results_{size}.json"``, holds sacreBLEU, lowercased
    BLEU and BLEU by source length. ``size`` is the lesson's :func:`~transformer_lesson.runtime.training_size`.
    """
    path = _results_path(lesson, size)
    path.write_text(json.dumps({"size": size, "bleu": report.bleu.score, "lowercased_bleu": report.lowercased.score,
                                "by_length": [dataclasses.asdict(b) for b in by_length]}))
    return path


@dataclass(frozen=True)
class SavedResults:
    """A lesson's test scores as :func:`save_results` kept them."""

    lesson: str
    size: str
    bleu: float
    lowercased_bleu: float
    by_length: list[LengthBucket]


def load_results(lesson: str, sizes: Sequence[str] | None = None) -> SavedResults | None:
    """The saved results of ``lesson`` at the first of ``sizes`` that has some, or None.

    By default, in quick mode ``["quick"]``, otherwise ``["full", "laptop"]``: the biggest that was
    run. A file that cannot be read (cut short, edited by hand) counts as missing, with a warning.
    """
    if sizes is None:
        sizes = ["quick"] if is_quick() else ["full", "laptop"]
    for size in sizes:
        path = _results_path(lesson, size)
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text())
            return SavedResults(lesson, size, float(saved["bleu"]), float(saved["lowercased_bleu"]),
                                [LengthBucket(**bucket) for bucket in saved["by_length"]])
        except (ValueError, KeyError, TypeError) as error:
            warnings.warn(f"{path} cannot be read ({error}); run lesson {lesson} again to rewrite it.", stacklevel=2)
    return None


def exact_match(model, batch, max_len: int | None = None) -> float:
    """Fraction of a batch's sentences that greedy decoding gets exactly right (the toy tasks' metric).

    ``batch`` is a :class:`~transformer_lesson.batching.Batch`; its ``tgt_out`` holds the answers.
    """
    limit = max_len if max_len is not None else batch.tgt_out.shape[1] + 2
    batch = batch.to(next((p.device for p in model.parameters()), batch.src.device))  # the model's device
    hypotheses = greedy_decode(model, batch.src, batch.src_mask, max_len=limit)
    references = [row[: int(n) - 1] for row, n in zip(batch.tgt_out.tolist(), batch.tgt_mask.sum(1), strict=True)]
    return sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)
