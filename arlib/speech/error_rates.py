"""Speech-recognition metrics (chapter 5): the edit distance, word and character error rates."""

from __future__ import annotations

import torch

from arlib.validate import describe

__all__ = ["edit_distance", "word_error_rate", "char_error_rate"]


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


def _sequence(x, name: str) -> list:
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise TypeError(f"{name}: expected a sequence of tokens (a 1-D tensor at most), got {describe(x)}")
        return x.tolist()
    try:
        return list(x)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence (a string or a list of tokens), got {type(x).__name__}") from None


def _error_rate(references, hypotheses, split) -> float:
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
