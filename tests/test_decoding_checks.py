"""The lesson 10 checks pass right answers and name the usual wrong ones.

The wrong answers are written as a student would write them, independently of the Mistake
implementations in the checks.
"""

import pytest
import torch

from transformer_lesson.checks.core import CheckFailed
from transformer_lesson.checks.decoding import (
    check_append_to_cache,
    check_beam_step,
    check_penalised_scores,
    check_reorder_cache,
)
from transformer_lesson.decoding import length_penalty


def fails_with(check, answer, *fragments):
    with pytest.raises(CheckFailed) as failure:
        check(answer, quiet=True)
    for fragment in fragments:
        assert fragment in str(failure.value), str(failure.value)


# -- the cache -----------------------------------------------------------------------------------


def test_append_passes_a_right_answer(capsys):
    check_append_to_cache(lambda k, v, nk, nv: (torch.cat((k, nk), 2), torch.cat((v, nv), -2)))
    assert "✓ append_to_cache" in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "fragment"), [
    (lambda k, v, nk, nv: (torch.cat((nk, k), 2), torch.cat((nv, v), 2)), "went in front"),
    (lambda k, v, nk, nv: (torch.cat((k, nk), 1), torch.cat((v, nv), 1)), "along the wrong dimension"),
    (lambda k, v, nk, nv: (torch.cat((k, nk)), torch.cat((v, nv))), "along the wrong dimension"),
    (lambda k, v, nk, nv: (nk, nv), "Only the new position"),
    (lambda k, v, nk, nv: (torch.cat((v, nv), 2), torch.cat((k, nk), 2)), "swapped"),
    (lambda k, v, nk, nv: torch.cat((k, nk), 2), "should return 2 values (a tuple)"),
    (lambda k, v, nk, nv: None, "forget the `return`"),
])
def test_append_names_the_mistake(answer, fragment):
    fails_with(check_append_to_cache, answer, fragment)


# -- the length penalty --------------------------------------------------------------------------


def penalised(sums, hypotheses, alpha):
    return torch.stack([s / ((5 + len(h)) / 6) ** alpha for s, h in zip(sums, hypotheses, strict=True)])


def test_penalty_passes_a_right_answer(capsys):
    check_penalised_scores(penalised)
    assert "✓ penalised_scores" in capsys.readouterr().out


def test_penalty_refuses_the_package_s_length_penalty():
    def with_the_package(sums, hypotheses, alpha):
        return torch.stack([s / length_penalty(len(h), alpha) for s, h in zip(sums, hypotheses, strict=True)])

    fails_with(check_penalised_scores, with_the_package, "runs the package's own answer, "
                                                         "transformer_lesson.decoding.length_penalty")


def _lengths(hypotheses, minus_eos=False):
    return torch.tensor([len(h) - (minus_eos and h[-1] == 2) for h in hypotheses], dtype=torch.float64)


@pytest.mark.parametrize(("answer", "fragment"), [
    (lambda s, h, a: s / ((5 + _lengths(h, minus_eos=True)) / 6) ** a, "without the final <eos>"),
    (lambda s, h, a: s * ((5 + _lengths(h)) / 6) ** a, "multiplied by the penalty"),
    (lambda s, h, a: s / _lengths(h) ** a, "The constants are missing"),
    (lambda s, h, a: s / (5 + _lengths(h)) ** a, "without the / 6"),
    (lambda s, h, a: torch.exp(s) / ((5 + _lengths(h)) / 6) ** a, "applied to probabilities"),
    (lambda s, h, a: (s / ((5 + _lengths(h)) / 6) ** a).tolist(), "torch.Tensor but is a list"),
])
def test_penalty_names_the_mistake(answer, fragment):
    fails_with(check_penalised_scores, answer, fragment)


# -- one beam step -------------------------------------------------------------------------------


def beam_step(scores, log_probs):
    B, k, V = log_probs.shape
    candidates = (scores[:, :, None] + log_probs).reshape(B, -1)
    best, flat = torch.topk(candidates, k)
    return best, torch.div(flat, V, rounding_mode="floor"), torch.remainder(flat, V)


def per_beam_best(scores, log_probs):
    total = scores[:, :, None] + log_probs
    best, token = total.max(-1)
    best, beam = best.sort(dim=1, descending=True)
    return best, beam, token.gather(1, beam)


def split_the_wrong_way(scores, log_probs):
    B, k, V = log_probs.shape
    best, flat = (scores[:, :, None] + log_probs).reshape(B, -1).topk(k)
    return best, flat % k, flat // k


def test_beam_step_passes_a_right_answer(capsys):
    check_beam_step(beam_step)
    assert "✓ beam_step" in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "fragment"), [
    (per_beam_best, "kept its own best next token"),
    (lambda s, lp: beam_step(torch.zeros_like(s), lp), "not accumulated"),
    (lambda s, lp: beam_step(s, lp.exp()), "Probabilities were added"),
    (split_the_wrong_way, "split the wrong way"),
    (lambda s, lp: beam_step(s, lp)[:2], "should return 3 value(s)"),
])
def test_beam_step_names_the_mistake(answer, fragment):
    fails_with(check_beam_step, answer, fragment)


# -- reordering the cache ------------------------------------------------------------------------


def reorder(cache, beams):
    B, k = beams.shape
    offsets = torch.arange(B).unsqueeze(1) * k
    return cache[(offsets + beams).flatten()]


def test_reorder_passes_a_right_answer(capsys):
    check_reorder_cache(reorder)
    assert "✓ reorder_cache" in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "fragment"), [
    (lambda cache, beams: cache, "not reordered"),
    (lambda cache, beams: cache[beams.flatten()], "sentence offset is missing"),
    (lambda cache, beams: cache[(torch.arange(beams.shape[0])[:, None] * beams.shape[1] + beams).T.flatten()],
     "wrong order"),
])
def test_reorder_names_the_mistake(answer, fragment):
    fails_with(check_reorder_cache, answer, fragment)


# -- finished and live candidates ----------------------------------------------------------------

from transformer_lesson.checks.decoding import check_split_finished  # noqa: E402


def split_finished(tokens, k):
    finished = tokens[:, :k] == 2
    live = torch.stack([torch.nonzero(row != 2).flatten()[:k] for row in tokens])
    return finished, live


def test_split_passes_a_right_answer(capsys):
    check_split_finished(split_finished)
    assert "✓ split_finished" in capsys.readouterr().out


def reversed_live(tokens, k):
    finished, live = split_finished(tokens, k)
    return finished, live.flip(1)


@pytest.mark.parametrize(("answer", "fragment"), [
    (lambda tokens, k: (tokens[:, :k] == 2, torch.arange(k).repeat(tokens.shape[0], 1)), "extended after <eos>"),
    (lambda tokens, k: (tokens[:, :k] != 2, split_finished(tokens, k)[1]), "finished is inverted"),
    (reversed_live, "not in ranking order"),
    (lambda tokens, k: (tokens == 2, split_finished(tokens, k)[1]), "dimension 1"),
])
def test_split_names_the_mistake(answer, fragment):
    fails_with(check_split_finished, answer, fragment)
