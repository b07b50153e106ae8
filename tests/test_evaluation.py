"""Translating text (including bad input) and scoring it with BLEU."""

import math
import warnings

import pytest
import sacrebleu
import torch
from torch import nn

from transformer_lesson.evaluation import (
    BleuReport,
    bleu_by_length,
    bleu_evaluator,
    corpus_bleu,
    evaluate_bleu,
    exact_match,
    load_results,
    lowercased_bleu,
    save_results,
    translate,
)
from transformer_lesson.seq2seq import GRUSeq2Seq, Seq2SeqConfig
from transformer_lesson.tokenizer import EOS_ID, multi30k_tokenizer
from transformer_lesson.toy import toy_batch


@pytest.fixture(scope="module")
def tokenizer():
    return multi30k_tokenizer(8000)


class Copier(nn.Module):
    """A perfect 'translator' for the identity task: it emits the source tokens, then <eos>."""

    def start_decoding(self, src, src_mask):
        return {"src": src.masked_fill(~src_mask, EOS_ID), "t": torch.zeros(len(src), dtype=torch.long)}

    def decode_step(self, state, last_tokens):
        src, t = state["src"], state["t"]
        padded = torch.cat([src, torch.full((len(src), 1), EOS_ID)], dim=1)
        next_tokens = padded.gather(1, t.clamp(max=src.shape[1])[:, None])[:, 0]
        return nn.functional.one_hot(next_tokens, 8000).float(), {**state, "t": t + 1}


def test_bleu_functions_match_sacrebleu_and_say_which_is_which():
    hyps = ["A man rides a bike .", "two dogs play in the snow"]
    refs = ["A man is riding a bike .", "Two dogs play in the snow ."]
    assert corpus_bleu(hyps, refs).score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert corpus_bleu(refs, refs).score == pytest.approx(100.0)
    upper = [r.upper() for r in refs]
    assert lowercased_bleu(upper, refs).score == pytest.approx(100.0)  # lowercased
    assert corpus_bleu(upper, refs).score < 10  # the standard metric is cased
    expected = sacrebleu.corpus_bleu(hyps, [refs], lowercase=True, tokenize="13a").score
    assert lowercased_bleu(hyps, refs).score == pytest.approx(expected)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(hyps, refs[:1])


def test_bleu_by_length_scores_each_bucket_on_its_own_sentences():
    sources = ["a b", "a b c d e", "a b c d e f", "x"]
    refs = ["the cat sat on the mat", "a dog ran in the park today", "he is here now", "yes it is so"]
    hyps = ["the cat sat on the mat", "a dog ran in a park", "she was there", "yes it is so"]
    buckets = bleu_by_length(sources, hyps, refs, buckets=((1, 2), (3, 6), (7, 9)))
    assert [b.count for b in buckets] == [2, 2, 0]
    assert buckets[0].bleu == pytest.approx(100.0)
    assert buckets[1].bleu == pytest.approx(lowercased_bleu(hyps[1:3], refs[1:3]).score)
    assert math.isnan(buckets[2].bleu) and buckets[1].label == "3-6"


def test_the_last_default_bucket_takes_every_longer_sentence():
    sources = ["w " * 16, "w " * 17, "w " * 250]
    buckets = bleu_by_length(sources, ["a b c d"] * 3, ["a b c d"] * 3)
    assert [b.label for b in buckets] == ["1-9", "10-11", "12-13", "14-16", "17+"]
    assert [b.count for b in buckets] == [0, 0, 0, 1, 2]  # a 250-word sentence is in no gap


def test_translate_round_trips_with_a_copying_model(tokenizer):
    sentences = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee, während es schneit.", "Hallo"]
    assert translate(Copier(), tokenizer, sentences, "cpu", batch_size=2) == sentences
    assert translate(Copier(), tokenizer, "Ein Hund.", "cpu") == "Ein Hund."
    pairs = list(zip(sentences, sentences, strict=True))
    report = evaluate_bleu(Copier(), tokenizer, pairs, "cpu")
    assert report.bleu.score == pytest.approx(100.0) and "sacreBLEU 100.00" in str(report)
    assert report.lowercased.score == pytest.approx(100.0) and "lowercased BLEU 100.00" in str(report)
    assert bleu_evaluator(tokenizer, pairs, "cpu")(Copier()) == {"bleu": pytest.approx(100.0),
                                                                 "lowercased_bleu": pytest.approx(100.0)}


def test_translate_survives_bad_input(tokenizer):
    torch.manual_seed(0)
    model = GRUSeq2Seq(Seq2SeqConfig(vocab_size=tokenizer.vocab_size, d_embed=8, d_hidden=8))
    with pytest.warns(UserWarning, match="empty"):
        out = translate(model, tokenizer, ["", "  ", "Ein Hund."], "cpu", max_len=5)
    assert out[:2] == ["", ""] and isinstance(out[2], str)
    with pytest.warns(UserWarning, match="truncated"):
        translate(model, tokenizer, ["Hund " * 400], "cpu", max_len=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strange = translate(Copier(), tokenizer, ["Привет 🙂 日本"], "cpu")
    assert strange == ["Привет 🙂 日本"]  # byte fallback: no <unk>, nothing lost
    assert translate(model, tokenizer, [], "cpu") == []


def test_exact_match_counts_whole_sequences():
    batch = toy_batch("copy", 5, 2, 6, 8, torch.Generator().manual_seed(0))
    assert exact_match(Copier(), batch) == 1.0


def test_scores_carry_sacrebleus_signature_and_the_report_shows_it():
    from transformer_lesson.evaluation import BleuReport

    hyps, refs = ["A man rides a bike ."], ["A man is riding a bike ."]
    cased, lowered = corpus_bleu(hyps, refs), lowercased_bleu(hyps, refs)
    assert cased.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "case:lc" in lowered.signature
    text = str(BleuReport(hyps, refs, hyps, cased, lowered))
    assert cased.signature in text and lowered.signature in text and "approximates" in text


def test_evaluate_bleu_refuses_strings_where_pairs_belong():
    from transformer_lesson.evaluation import evaluate_bleu

    with pytest.raises(TypeError, match="item 0 is 'Ein Hund.'"):
        evaluate_bleu(None, None, ["Ein Hund.", "A dog."], "cpu")
    with pytest.raises(TypeError, match="got one string"):
        evaluate_bleu(None, None, "Ein Hund.", "cpu")


def as_tuples(buckets):
    """Buckets as comparable tuples: an empty bucket's BLEU is NaN, which equals nothing, itself included."""
    return [(b.low, b.high, b.count, None if math.isnan(b.bleu) else b.bleu) for b in buckets]


def test_saved_results_come_back_and_the_biggest_size_run_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("TL_CHECKPOINT_DIR", str(tmp_path))
    sources = ["ein hund", "zwei katzen laufen über die straße"]
    references = ["a dog", "two cats run across the street"]
    hypotheses = ["a dog", "two cats walk across a street"]
    report = BleuReport(sources, references, hypotheses, corpus_bleu(hypotheses, references),
                        lowercased_bleu(hypotheses, references))
    buckets = bleu_by_length(sources, hypotheses, references)
    assert load_results("03", ["full", "laptop"]) is None
    path = save_results("03", "laptop", report, buckets)
    assert path == tmp_path / "03_results_laptop.json"
    saved = load_results("03", ["full", "laptop"])
    assert (saved.size, saved.bleu, saved.lowercased_bleu) == ("laptop", report.bleu.score, report.lowercased.score)
    assert as_tuples(saved.by_length) == as_tuples(buckets)  # empty buckets keep their NaN
    save_results("03", "full", report, buckets[:2])
    assert as_tuples(load_results("03", ["full", "laptop"]).by_length) == as_tuples(buckets[:2])  # full, asked first
    assert load_results("02", ["full", "laptop"]) is None  # another lesson's results are not these
    monkeypatch.setenv("TL_QUICK", "0")
    assert load_results("03").size == "full"
    monkeypatch.setenv("TL_QUICK", "1")
    assert load_results("03") is None  # quick mode compares with quick runs only
    (tmp_path / "03_results_full.json").write_text('{"bleu": 1')  # cut short
    with pytest.warns(UserWarning, match="cannot be read.*run lesson 03 again"):
        assert load_results("03", ["full", "laptop"]).size == "laptop"
    with pytest.raises(ValueError, match="size must be one of quick, laptop, full"):
        save_results("03", "huge", report, buckets)
