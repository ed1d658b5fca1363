"""Measures of generated text for decoding sweeps: quality, diversity, degeneration, and matched entropy.

- :func:`real_word_share`: the fraction of generated words found in a vocabulary of real words (quality);
- :func:`distinct_n`: distinct n-grams over all n-grams of a set of samples (diversity; Li et al. 2016);
- :func:`repetition`: the fraction of a text's n-grams that already occurred earlier in it, the measure
  of the repetitive loops of greedy and beam decoding (Holtzman et al. 2020, sec. 3);
- :func:`sampled_entropy`: the per-token entropy of the distributions a sampler actually drew from;
- :func:`measure_samples`: real words, distinct-n and repetition of a set of samples, one row of a sweep;
- :func:`match_entropy`: the truncation parameter (top-k's k, top-p's p, min-p's p_min) that gives the
  sampled distributions a target mean entropy, so that methods are compared at equal diversity.
"""

from __future__ import annotations

import re

import torch

from arlib.text.sampling import entropy, process_logits
from arlib.validate import ids_in_vocab, int_in_range, number_in, positive_int, token_ids

WORD = re.compile(r"[a-z]+")


def _texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"{name}: expected a list of strings, got {type(texts).__name__}")
    texts = list(texts)  # once: a generator would be spent by the check
    if not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{name}: expected a list of strings")
    return texts


def real_word_share(texts, known_words) -> float:
    """Fraction of the words of ``texts`` (lower-cased runs of letters, the first and last word of each
    text dropped since they may be cut off) that are in ``known_words`` (a set or other collection of
    words; not a string, whose ``in`` would match substrings)."""
    if isinstance(known_words, (str, bytes)) or not hasattr(known_words, "__contains__"):
        raise TypeError(f"known_words: expected a set of words, got {type(known_words).__name__}")
    words = [w for t in _texts(texts) for w in WORD.findall(t.lower())[1:-1]]
    if not words:
        raise ValueError("texts: no complete words to score")
    return sum(w in known_words for w in words) / len(words)


def distinct_n(texts, n: int = 5) -> float:
    """Distinct n-grams (of characters) over all n-grams of ``texts`` together."""
    positive_int(n, "n")
    grams = [t[i:i + n] for t in _texts(texts) for i in range(len(t) - n + 1)]
    if not grams:
        raise ValueError(f"texts: no text of at least n={n} characters")
    return len(set(grams)) / len(grams)


def repetition(text: str, n: int = 10) -> float:
    """Fraction of the n-grams (of characters) of ``text`` that already occurred earlier in it."""
    if not isinstance(text, str):
        raise TypeError("text: expected a string")
    positive_int(n, "n")
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    if not grams:
        raise ValueError(f"text: expected at least n={n} characters")
    seen, repeated = set(), 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated / len(grams)


def measure_samples(texts, known_words, n_distinct: int = 5, n_repeat: int = 10) -> dict:
    """One row of a decoding sweep for the samples ``texts``: ``real_words`` (:func:`real_word_share`,
    quality), ``distinct`` (:func:`distinct_n` of n_distinct-grams over all texts, diversity) and
    ``repetition`` (:func:`repetition` of n_repeat-grams, the mean over texts, degeneration)."""
    texts = _texts(texts)
    if not texts:
        raise ValueError("texts: expected at least one sample")
    positive_int(n_distinct, "n_distinct")
    positive_int(n_repeat, "n_repeat")
    return {"real_words": real_word_share(texts, known_words), "distinct": distinct_n(texts, n_distinct),
            "repetition": sum(repetition(t, n_repeat) for t in texts) / len(texts)}


@torch.no_grad()
def sampled_entropy(model, sequences: torch.Tensor, prompt_length: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                    greedy: bool = False) -> torch.Tensor:
    """Entropy (nats) of the distribution each new token of ``sequences`` (B, T + N), generated after a
    prompt of ``prompt_length`` = T tokens, was drawn from with these options of
    :func:`arlib.text.sampling.generate`: (B, N), zeros for greedy decoding. One teacher-forced pass of
    ``model`` over the sequences; they must fit its context (``T + N - 1 <= block_size``)."""
    if not isinstance(model, torch.nn.Module) or not hasattr(getattr(model, "config", None), "block_size"):
        raise TypeError(f"model: expected a GPT (arlib.text.gpt.GPT), got {type(model).__name__}")
    token_ids(sequences, "sequences", dim=2, expected="a (batch, time) tensor of torch.long token ids")
    ids_in_vocab(sequences, "sequences", model.config.vocab_size)
    if not greedy:  # the options, before the pass
        process_logits(torch.zeros(1, 1), temperature, top_k, top_p, min_p)
    int_in_range(prompt_length, "prompt_length", 1, sequences.shape[1] - 1)
    if sequences.shape[1] - 1 > model.config.block_size:
        raise ValueError(f"sequences: {sequences.shape[1]} tokens do not fit the context of "
                         f"{model.config.block_size} (+1)")
    was_training = model.training
    model.eval()
    try:
        logits = model(sequences[:, :-1])[:, prompt_length - 1:]  # (B, N, V): the new tokens' distributions
    finally:
        model.train(was_training)
    if greedy:
        return torch.zeros(logits.shape[:2], device=logits.device)
    flat = process_logits(logits.reshape(-1, logits.shape[-1]), temperature, top_k, top_p, min_p)
    return entropy(flat).view(logits.shape[:2])


METHODS = ("top_k", "top_p", "min_p")


def truncated_entropy(logits: torch.Tensor, method: str, value, temperature: float = 1.0) -> float:
    """Mean entropy (nats) of ``softmax`` of ``logits`` (N, V) after the temperature and one truncation."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return entropy(process_logits(logits, temperature=temperature, **{method: value})).mean().item()


def match_entropy(logits: torch.Tensor, method: str, target: float, temperature: float = 1.0,
                  iterations: int = 40):
    """The parameter of ``method`` ('top_k', 'top_p' or 'min_p') at which the truncated distributions of
    ``logits`` (N, V), at ``temperature``, have mean entropy ``target`` (nats), by bisection: the entropy
    grows with k and p and falls with p_min. For top-k, the integer k whose entropy is nearest. Raises
    ``ValueError`` when the target is outside what the method can reach at this temperature."""
    entropy(logits)  # checks the logits: finite where not -inf, every row with mass
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    process_logits(logits[:1], temperature)  # checks the temperature
    number_in(target, "target", 0, float("inf"), bounds="[)", expected="an entropy in nats >= 0")
    positive_int(iterations, "iterations")
    H = lambda v: truncated_entropy(logits, method, v, temperature)  # noqa: E731
    if method == "top_k":
        lo, hi = 1, logits.shape[-1]
        if not H(lo) <= target <= H(hi):
            raise ValueError(f"target: {target:.3f} nats is outside top-k's range [{H(lo):.3f}, {H(hi):.3f}]")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if H(mid) <= target else (lo, mid)
        return lo if abs(H(lo) - target) <= abs(H(hi) - target) else hi
    increasing = method == "top_p"
    lo, hi = 1e-6, 1.0
    H_lo, H_hi = H(lo), H(hi)
    if not min(H_lo, H_hi) <= target <= max(H_lo, H_hi):
        raise ValueError(f"target: {target:.3f} nats is outside {method}'s range "
                         f"[{min(H_lo, H_hi):.3f}, {max(H_lo, H_hi):.3f}] at temperature {temperature}")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if (H(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
