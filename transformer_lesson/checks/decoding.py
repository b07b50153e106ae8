"""Checks for lesson 10: the pieces of cached decoding and beam search written by the student.

:func:`check_append_to_cache` (one step of the key/value cache), :func:`check_penalised_scores`
(GNMT's length penalty), :func:`check_beam_step` (the top-k over k x V candidates),
:func:`check_reorder_cache` (the cache follows the surviving hypotheses) and
:func:`check_split_finished` (which candidates finish at ``<eos>`` and which stay live). Each
compares with a reference on random inputs and names the usual mistakes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..tokenizer import EOS_ID
from .core import Mistake, check_against, explain_crashes, explain_crashes_and_unwritten

# ---------------------------------------------------------------------------------------------
# The key/value cache: one more position
# ---------------------------------------------------------------------------------------------


def _append(keys, values, new_keys, new_values):
    return torch.cat([keys, new_keys], dim=2), torch.cat([values, new_values], dim=2)


APPEND_MISTAKES = [
    Mistake("The new position went in front: the cache is in time order, so the newest keys and values go at "
            "the end, torch.cat([keys, new_keys], dim=2).",
            lambda k, v, nk, nv: (torch.cat([nk, k], dim=2), torch.cat([nv, v], dim=2))),
    Mistake("Only the new position is returned: the cache must keep every earlier position too, or the next "
            "token attends to the last one alone.", lambda k, v, nk, nv: (nk, nv)),
    Mistake("Keys and values are swapped: return (keys, values) in that order.",
            lambda k, v, nk, nv: (torch.cat([v, nv], dim=2), torch.cat([k, nk], dim=2))),
]


def _append_inputs(generator):
    batch, heads, done, d_head = (torch.randint(2, 5, (4,), generator=generator)).tolist()
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    return {"keys": randn(batch, heads, done, d_head), "values": randn(batch, heads, done, d_head),
            "new_keys": randn(batch, heads, 1, d_head), "new_values": randn(batch, heads, 1, d_head)}


def _wrong_cat_dimension(error: Exception) -> str:
    if "must match except in dimension" in str(error):
        return ("\nLikely cause: concatenated along the wrong dimension. torch.cat joins along one dimension and "
                "every other one must match: the cache is (batch, heads, time, d_head) and grows along time, "
                "dim=2, where the new position has size 1.")
    return ""


def check_append_to_cache(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(keys, values, new_keys, new_values) -> (keys, values)``, each (B, H, t (+1), d_head)."""
    check_against(
        explain_crashes(student, "append_to_cache", "The cache is (batch, heads, time, d_head).",
                        hint_for=_wrong_cat_dimension, explain_not_implemented=True),
        _append, _append_inputs, name="append_to_cache", trials=trials, mistakes=APPEND_MISTAKES,
        dims=("batch", "heads", "time", "d_head"), quiet=quiet, confirm_mistakes=True)


# ---------------------------------------------------------------------------------------------
# The length penalty
# ---------------------------------------------------------------------------------------------


def _penalised(log_prob_sums, hypotheses, alpha):
    lengths = torch.tensor([len(h) for h in hypotheses], dtype=log_prob_sums.dtype)
    return log_prob_sums / ((5 + lengths) / 6) ** alpha


def _without_eos(hypotheses):
    return torch.tensor([len(h) - (1 if h and h[-1] == EOS_ID else 0) for h in hypotheses], dtype=torch.float64)


PENALTY_MISTAKES = [
    Mistake("The length is counted without the final <eos>: it is a token the model chose, and its "
            "log-probability is in the sum, so it counts: length = len(hypothesis).",
            lambda s, h, a: s / ((5 + _without_eos(h)) / 6) ** a),
    Mistake("The score is multiplied by the penalty: divide by it. Log-probabilities are negative, so "
            "dividing by a penalty that grows with the length is what favours longer hypotheses.",
            lambda s, h, a: s * ((5 + torch.tensor([len(x) for x in h], dtype=s.dtype)) / 6) ** a),
    Mistake("The constants are missing: GNMT's penalty is ((5 + length) / 6) ** alpha, not length ** alpha.",
            lambda s, h, a: s / torch.tensor([len(x) for x in h], dtype=s.dtype) ** a),
    Mistake("Divided by (5 + length) ** alpha without the / 6: the penalty is ((5 + length) / 6) ** alpha, "
            "which is 1 for a hypothesis of one token.",
            lambda s, h, a: s / (5 + torch.tensor([len(x) for x in h], dtype=s.dtype)) ** a),
    Mistake("The penalty was applied to probabilities (exp of the sum) instead of the log-probability sum.",
            lambda s, h, a: s.exp() / ((5 + torch.tensor([len(x) for x in h], dtype=s.dtype)) / 6) ** a),
]


def _penalty_inputs(generator):
    n = int(torch.randint(3, 7, (1,), generator=generator))
    hypotheses = []
    for _ in range(n):
        length = int(torch.randint(1, 12, (1,), generator=generator))
        body = torch.randint(4, 50, (length,), generator=generator).tolist()
        finished = bool(torch.rand(1, generator=generator) < 0.7) or length < 2
        hypotheses.append(body + [EOS_ID] if finished else body)
    sums = -torch.rand(n, generator=generator, dtype=torch.float64) * 3 * torch.tensor([len(h) for h in hypotheses])
    alpha = round(float(torch.rand(1, generator=generator)) * 1.2 + 0.3, 2)
    return {"log_prob_sums": sums, "hypotheses": hypotheses, "alpha": alpha}


def check_penalised_scores(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(log_prob_sums (N,), hypotheses (N lists of ids), alpha) -> scores (N,)``."""
    check_against(
        explain_crashes_and_unwritten(student, "penalised_scores"), _penalised, _penalty_inputs,
        name="penalised_scores", trials=trials, mistakes=PENALTY_MISTAKES, quiet=quiet, confirm_mistakes=True)


# ---------------------------------------------------------------------------------------------
# One step of beam search: the top k of k x V candidates
# ---------------------------------------------------------------------------------------------


def _beam_step(scores, log_probs):
    batch, k, vocab = log_probs.shape
    top, index = (scores.unsqueeze(-1) + log_probs).view(batch, k * vocab).topk(k, dim=1)
    return top, index // vocab, index % vocab


def _per_beam(scores, log_probs):
    """Each hypothesis keeps its own best next token: k candidates, not the best k of k x V."""
    best, token = (scores.unsqueeze(-1) + log_probs).max(dim=-1)
    order = best.argsort(dim=1, descending=True)
    return best.gather(1, order), order, token.gather(1, order)


def _not_accumulated(scores, log_probs):
    batch, k, vocab = log_probs.shape
    top, index = log_probs.reshape(batch, k * vocab).topk(k, dim=1)
    return top, index // vocab, index % vocab


def _probabilities_added(scores, log_probs):
    batch, k, vocab = log_probs.shape
    top, index = (scores.unsqueeze(-1) + log_probs.exp()).view(batch, k * vocab).topk(k, dim=1)
    return top, index // vocab, index % vocab


def _swapped_division(scores, log_probs):
    batch, k, vocab = log_probs.shape
    top, index = (scores.unsqueeze(-1) + log_probs).view(batch, k * vocab).topk(k, dim=1)
    return top, index % k, index // k


BEAM_STEP_MISTAKES = [
    Mistake("Each hypothesis kept its own best next token: beam search ranks all k x V extensions of a "
            "sentence together, so one strong hypothesis may supply several survivors and a weak one none. "
            "Flatten to (B, k * V) before topk.", _per_beam),
    Mistake("The scores were not accumulated: a candidate's score is its hypothesis's score so far plus the "
            "log-probability of the new token, scores[:, :, None] + log_probs.", _not_accumulated),
    Mistake("Probabilities were added to log-probabilities: scores live in log space, where multiplying "
            "probabilities becomes adding log-probabilities; add log_probs, not log_probs.exp().",
            _probabilities_added),
    Mistake("The flat index was split the wrong way: index i of the (B, k * V) view is hypothesis i // V "
            "and token i % V (V, the vocabulary, is the inner dimension).", _swapped_division),
]


def _beam_inputs(generator):
    batch = int(torch.randint(1, 4, (1,), generator=generator))
    k = int(torch.randint(2, 5, (1,), generator=generator))
    vocab = int(torch.randint(6, 12, (1,), generator=generator))
    scores = -torch.rand(batch, k, generator=generator) * 5
    log_probs = torch.log_softmax(torch.randn(batch, k, vocab, generator=generator) * 2, dim=-1)
    return {"scores": scores, "log_probs": log_probs}


def check_beam_step(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(scores (B, k), log_probs (B, k, V)) -> (scores (B, k), beams (B, k), tokens (B, k))``."""
    check_against(
        explain_crashes_and_unwritten(student, "beam_step", "scores is (B, k), log_probs (B, k, V)."),
        _beam_step, _beam_inputs, name="beam_step", trials=trials, mistakes=BEAM_STEP_MISTAKES,
        dims=("batch", "beam"), quiet=quiet, confirm_mistakes=True)


# ---------------------------------------------------------------------------------------------
# The cache follows the survivors
# ---------------------------------------------------------------------------------------------


def _reorder(cache, beams):
    batch, k = beams.shape
    rows = (torch.arange(batch)[:, None] * k + beams).reshape(-1)
    return cache.index_select(0, rows)


REORDER_MISTAKES = [
    Mistake("The cache was not reordered: after the top-k, row j of sentence b must hold the cache of the "
            "hypothesis it extends, beams[b, j], not the one that happened to sit in row j.",
            lambda cache, beams: cache.clone()),
    Mistake("The sentence offset is missing: the cache has B * k rows, sentence b's hypotheses in rows "
            "b * k ... b * k + k - 1, so hypothesis beams[b, j] is row b * k + beams[b, j].",
            lambda cache, beams: cache.index_select(0, beams.reshape(-1))),
    Mistake("The rows were taken in the wrong order: flatten beams row by row (sentence by sentence), "
            "b * k + beams[b, j] for b, then j.",
            lambda cache, beams: cache.index_select(
                0, (torch.arange(beams.shape[0])[:, None] * beams.shape[1] + beams).T.reshape(-1))),
]


def _reorder_inputs(generator):
    batch = int(torch.randint(2, 4, (1,), generator=generator))
    k = int(torch.randint(2, 5, (1,), generator=generator))
    cache = torch.randn(batch * k, 2, int(torch.randint(1, 5, (1,), generator=generator)), 3, generator=generator)
    beams = torch.randint(0, k, (batch, k), generator=generator)
    return {"cache": cache, "beams": beams}


def check_reorder_cache(student: Callable, trials: int = 5, quiet: bool = False) -> None:
    """Check ``student(cache (B * k, ...), beams (B, k)) -> cache (B * k, ...)`` with each row's new source."""
    check_against(
        explain_crashes_and_unwritten(student, "reorder_cache", "cache has B * k rows; beams is (B, k)."),
        _reorder, _reorder_inputs, name="reorder_cache", trials=trials, mistakes=REORDER_MISTAKES,
        quiet=quiet, confirm_mistakes=True)


# ---------------------------------------------------------------------------------------------
# Which candidates finish, which go on
# ---------------------------------------------------------------------------------------------


def _split(tokens, k):
    is_eos = tokens == EOS_ID
    finished = is_eos[:, :k]
    rank = torch.arange(tokens.shape[1])
    live = (is_eos.long() * tokens.shape[1] + rank).argsort(dim=1, stable=True)[:, :k]
    return finished, live


SPLIT_MISTAKES = [
    Mistake("A candidate that chose <eos> stays live: a finished hypothesis must not be extended after <eos> "
            "(it would grow past its end and crowd out the live ones). The live ones are the first k candidates "
            "that are not <eos>.",
            lambda tokens, k: (tokens[:, :k] == EOS_ID, torch.arange(k).expand(tokens.shape[0], k).clone())),
    Mistake("finished is inverted: it is True where one of the first k candidates chose <eos> (id 2).",
            lambda tokens, k: (tokens[:, :k] != EOS_ID, _split(tokens, k)[1])),
]


def _order_hint(actual, expected, inputs):
    """Name a live set that is right but out of ranking order (an unstable sort, say)."""
    live, want = actual[1], expected[1]
    if isinstance(live, torch.Tensor) and live.shape == want.shape and not torch.equal(live, want) \
            and torch.equal(live.sort(dim=1).values, want.sort(dim=1).values):
        return ("The live candidates are the right ones but not in ranking order: keep the order of the ranking "
                "(best first). torch.argsort is not stable unless you pass stable=True.")
    return None


def _split_inputs(generator):
    batch = int(torch.randint(2, 5, (1,), generator=generator))
    k = int(torch.randint(2, 5, (1,), generator=generator))
    tokens = torch.randint(4, 30, (batch, 2 * k), generator=generator)
    for row in range(batch):  # each hypothesis offers at most one <eos> candidate: at most k of them
        count = int(torch.randint(0, k + 1, (1,), generator=generator))
        tokens[row, torch.randperm(2 * k, generator=generator)[:count]] = EOS_ID
    return {"tokens": tokens, "k": k}


def check_split_finished(student: Callable, trials: int = 8, quiet: bool = False) -> None:
    """Check ``student(tokens (B, 2k), k) -> (finished (B, k) bool, live (B, k) long)``."""
    check_against(
        explain_crashes_and_unwritten(student, "split_finished", "tokens is (B, 2k), best candidate first."),
        _split, _split_inputs, name="split_finished", trials=trials, mistakes=SPLIT_MISTAKES, quiet=quiet,
        confirm_mistakes=True, hint=_order_hint)
