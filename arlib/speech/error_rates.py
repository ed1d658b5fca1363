"""Speech-recognition metrics (chapter 5): the edit distance, word and character error rates, the errors
split into substitutions, deletions and insertions, and bootstrap intervals over utterances (Bisani & Ney
2004)."""

from __future__ import annotations

import numpy as np
import torch

from arlib.validate import describe, number_in, positive_int

__all__ = ["edit_distance", "error_counts", "word_error_rate", "char_error_rate", "word_error_counts",
           "wer_interval", "wer_difference"]


def edit_distance(reference, hypothesis) -> int:
    """Levenshtein distance between two sequences: the fewest substitutions, insertions and deletions
    that turn ``reference`` into ``hypothesis`` (dynamic programming, one row at a time). Tokens are
    compared with ``!=``: strings, ints, 1-D tensors (read as lists of ints) and the like."""
    ref, hyp = _sequence(reference, "reference"), _sequence(hypothesis, "hypothesis")
    row = list(range(len(hyp) + 1))  # distances from ref[:0] to each prefix of hyp
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def error_counts(reference, hypothesis) -> tuple[int, int, int]:
    """``(substitutions, deletions, insertions)`` of one minimal alignment of ``hypothesis`` to ``reference``
    (their sum is :func:`edit_distance`). Among minimal alignments the backtrace prefers a match or a
    substitution, then a deletion, then an insertion, so the split is deterministic."""
    ref, hyp = _sequence(reference, "reference"), _sequence(hypothesis, "hypothesis")
    R, H = len(ref), len(hyp)
    d = np.zeros((R + 1, H + 1), dtype=np.int64)  # d[i, j]: distance from ref[:i] to hyp[:j]
    d[:, 0], d[0, :] = np.arange(R + 1), np.arange(H + 1)
    for i in range(1, R + 1):
        for j in range(1, H + 1):
            d[i, j] = min(d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1, j] + 1, d[i, j - 1] + 1)
    sub = dele = ins = 0
    i, j = R, H
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            sub += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            dele, i = dele + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return int(sub), dele, ins


def _sequence(x, name: str) -> list:
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise TypeError(f"{name}: expected a sequence of tokens (a 1-D tensor at most), got {describe(x)}")
        return x.tolist()
    try:
        return list(x)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence (a string or a list of tokens), got {type(x).__name__}") from None


def _texts(references, hypotheses) -> tuple[list, list]:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("references, hypotheses: expected lists of strings, got a string")
    references, hypotheses = _sequence(references, "references"), _sequence(hypotheses, "hypotheses")
    for name, texts in (("references", references), ("hypotheses", hypotheses)):
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{name}: expected a list of strings, got an item of type {type(bad[0]).__name__}")
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"references, hypotheses: expected equally long non-empty lists, got "
                         f"{len(references)} and {len(hypotheses)}")
    return references, hypotheses


def _error_rate(references, hypotheses, split) -> float:
    references, hypotheses = _texts(references, hypotheses)
    errors = sum(edit_distance(split(r), split(h)) for r, h in zip(references, hypotheses))
    total = sum(len(split(r)) for r in references)
    if total == 0:
        raise ValueError("references: expected at least one word or character to score against")
    return errors / total


def word_error_rate(references, hypotheses) -> float:
    """WER: word edit distance summed over the corpus / reference words (can exceed 1)."""
    return _error_rate(references, hypotheses, str.split)


def char_error_rate(references, hypotheses) -> float:
    """CER: character edit distance summed over the corpus / reference characters."""
    return _error_rate(references, hypotheses, list)


def _per_utterance(references, hypotheses) -> tuple[np.ndarray, np.ndarray]:
    """Word errors and reference words of each utterance, (N,) each."""
    references, hypotheses = _texts(references, hypotheses)
    errors = np.array([edit_distance(r.split(), h.split()) for r, h in zip(references, hypotheses)], dtype=np.int64)
    words = np.array([len(r.split()) for r in references], dtype=np.int64)
    if words.sum() == 0:
        raise ValueError("references: expected at least one word to score against")
    return errors, words


def word_error_counts(references, hypotheses) -> dict:
    """The corpus's word errors split by kind: ``{"substitutions", "deletions", "insertions", "words", "wer"}``
    (counts summed over utterances, ``words`` the reference words, ``wer`` their sum over ``words``)."""
    references, hypotheses = _texts(references, hypotheses)
    counts = np.array([error_counts(r.split(), h.split()) for r, h in zip(references, hypotheses)]).sum(0)
    words = sum(len(r.split()) for r in references)
    if words == 0:
        raise ValueError("references: expected at least one word to score against")
    s, d, i = (int(x) for x in counts)
    return {"substitutions": s, "deletions": d, "insertions": i, "words": words, "wer": (s + d + i) / words}


def _boot_indices(n: int, boots: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(boots, n))  # (boots, n) utterances drawn


def _check_boots(boots, level) -> None:
    positive_int(boots, "boots")
    number_in(level, "level", 0, 1, bounds="()", expected="a confidence level strictly between 0 and 1")


def wer_interval(references, hypotheses, boots: int = 1000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """``(wer, low, high)``: the corpus WER and a percentile bootstrap interval over utterances (Bisani & Ney
    2004): ``boots`` resamples of the N utterances with replacement, each scored as the corpus is (errors
    summed over words summed)."""
    _check_boots(boots, level)
    errors, words = _per_utterance(references, hypotheses)
    idx = _boot_indices(len(words), boots, seed)
    rates = errors[idx].sum(1) / np.maximum(words[idx].sum(1), 1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(rates, [tail, 100 - tail])
    return float(errors.sum() / words.sum()), float(low), float(high)


def wer_difference(references, hypotheses_a, hypotheses_b, boots: int = 1000, level: float = 0.95, seed: int = 0
                   ) -> tuple[float, float, float]:
    """``(wer_a - wer_b, low, high)`` with a *paired* bootstrap interval (Bisani & Ney 2004): both systems are
    scored on the same resampled utterances, so the variation the test set shares cancels. A difference is
    claimed only when the interval excludes 0."""
    _check_boots(boots, level)
    errors_a, words = _per_utterance(references, hypotheses_a)
    errors_b, _ = _per_utterance(references, hypotheses_b)
    idx = _boot_indices(len(words), boots, seed)
    diffs = (errors_a[idx].sum(1) - errors_b[idx].sum(1)) / np.maximum(words[idx].sum(1), 1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float((errors_a.sum() - errors_b.sum()) / words.sum()), float(low), float(high)
