"""Drafters for speculative decoding: cheap proposals that the target model then verifies.

A drafter proposes up to ``gamma`` tokens that continue the current sequence, and (optionally) the
distributions q it drew them from. :func:`arlib.decoding.speculative.speculative_generate` accepts a prefix of
them with Leviathan et al. (2023, Algorithm 1), so the output follows the target whatever the drafter
proposes; a better drafter only gets more tokens accepted per target call. Two families live here:

- :class:`ModelDrafter`: a small autoregressive model sampled gamma times with its own KV cache,
  rolled back after each verification (Leviathan et al. 2023; Chen et al. 2023).
- :class:`NGramDrafter`: no model and no training; it copies what followed the most recent earlier
  occurrence of the last n tokens (prompt lookup, Saxena 2023; in the spirit of Aggressive Decoding's
  input copying, Ge et al. 2022, and ADED's adaptive n-gram drafts). Its drafts are one-hot (q = None).

Every drafter works on batch size 1: a sequence is a (1, L) tensor of token ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from arlib.text.sampling import gumbel_noise, process_logits
from arlib.validate import describe, ids_in_vocab, int_at_least, probability, token_ids


@dataclass(frozen=True)
class SamplingOptions:
    """How logits become the distribution a token is drawn from, shared by the target and the drafts.

    Speculative sampling reproduces the target's *processed* distribution
    ``softmax(process_logits(logits, ...))``; applying the same processing to the draft keeps q close to p.
    ``greedy=True`` takes argmaxes instead (verification by exact match).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    greedy: bool = False

    def __post_init__(self):
        if not isinstance(self.greedy, (bool, np.bool_)):
            raise ValueError(f"greedy: expected a bool, got {self.greedy!r}")
        if not self.greedy:  # the processors check their own arguments and name them
            process_logits(torch.zeros(1, 1), self.temperature, self.top_k, self.top_p, self.min_p)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Processed logits (..., V), float32: ``softmax`` of them is the distribution to draw from."""
        flat = logits.reshape(-1, logits.shape[-1]).float()  # (N, V): the processors take 2-D logits
        if self.temperature == 1.0 and self.top_k is None and self.top_p is None and self.min_p is None:
            return flat.reshape(logits.shape)  # nothing to do (the common case: skip the calls)
        flat = process_logits(flat, self.temperature, self.top_k, self.top_p, self.min_p)
        return flat.reshape(logits.shape)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities (..., V) from logits (..., V), float32.

        Limitation: the logits are not scanned for NaN (this runs at every decoding step); a row of NaN or
        all ``-inf`` logits gives a row of NaN. The decoding loops check the probabilities they verify once."""
        return self.process(logits).softmax(dim=-1)


class Draft(NamedTuple):
    """A proposal: ``tokens`` (1, g) with ``0 <= g <= gamma``; ``probs`` (1, g, V) the distributions
    they were drawn from, or None for one-hot drafts (deterministic proposals); ``calls`` the
    forward passes the drafter spent.

    Limitation: a plain record (a named tuple), not checked when built, since drafters build one per
    step; :func:`arlib.decoding.speculative.speculative_generate` checks a drafter's first proposal
    (shapes, ids in the target's vocabulary, q over that vocabulary)."""

    tokens: torch.Tensor
    probs: torch.Tensor | None
    calls: int = 0


class Drafter(ABC):
    """The interface every drafter implements.

    ``propose(seq, gamma, options, generator)`` looks at the sequence so far, seq (1, L), and returns
    a :class:`Draft` of at most ``gamma`` tokens (fewer, even none, is allowed: the generator then
    takes a plain target step). ``accept(n)`` reports how many of the last proposal were accepted, so
    that a stateful drafter can roll back (a KV cache); ``reset()`` forgets any state.
    """

    #: True for drafters that read the target's hidden state (:mod:`arlib.decoding.draft_heads`): the generator then
    #: calls :meth:`observe` with it after the prefill and after every verification.
    uses_hidden: bool = False

    @abstractmethod
    def propose(self, seq: torch.Tensor, gamma: int, options: SamplingOptions = SamplingOptions(),
                generator: torch.Generator | None = None) -> Draft: ...

    def accept(self, n_accepted: int) -> None:
        """Called after each verification with the number of draft tokens accepted (no-op by default)."""
        return None

    def reset(self) -> None:
        """Called before a new sequence (no-op by default)."""
        return None

    def observe(self, hidden: torch.Tensor) -> None:
        """Receives h (1, d), the target's final residual stream at the second-to-last decided position
        (its logits gave the last decided token); only called when ``uses_hidden`` is True."""
        return None


def check_options(options) -> SamplingOptions:
    """``options`` if it is a :class:`SamplingOptions`, else ``TypeError`` naming ``options``."""
    if not isinstance(options, SamplingOptions):
        raise TypeError(f"options: expected arlib.decoding.drafters.SamplingOptions, got {type(options).__name__}")
    return options


def check_seq(seq) -> int:
    """The length L of ``seq`` if it is what ``Drafter.propose`` takes, a (1, L) ``torch.long`` tensor
    with L >= 1; else ``ValueError`` naming ``seq``."""
    token_ids(seq, "seq", dim=2, rows=1, expected="a (1, length) torch.long tensor (batch size 1)")
    if seq.shape[1] == 0:
        raise ValueError("seq: expected at least one token")
    return seq.shape[1]


def check_prompt(prompt, max_new_tokens, config) -> int:
    """The prompt (T,) or (1, T) of a batch-1 generation, checked against the target's ``config`` (a
    :class:`arlib.text.gpt.GPTConfig`) with ``max_new_tokens`` to come; returns T. The decoding loops'
    shared check."""
    if not all(hasattr(config, a) for a in ("block_size", "vocab_size")):
        raise TypeError(f"config: expected the target's GPTConfig, got {type(config).__name__}")
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long or prompt.dim() not in (1, 2) \
            or (prompt.dim() == 2 and prompt.shape[0] != 1) or prompt.shape[-1] == 0:
        raise ValueError(f"prompt: expected a non-empty (time,) or (1, time) torch.long tensor (batch size 1), "
                         f"got {describe(prompt)}")
    int_at_least(max_new_tokens, "max_new_tokens", 0)
    T = prompt.shape[-1]
    if T + max_new_tokens > config.block_size:
        raise ValueError(f"max_new_tokens: prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds the target's "
                         f"context of {config.block_size} tokens")
    ids_in_vocab(prompt, "prompt", config.vocab_size)  # once: later tokens are checked or drawn in range
    return T


class ModelDrafter(Drafter):
    """Draft with a small autoregressive model (Leviathan et al. 2023, Algorithm 1, lines 1-4).

    Draws x_1 ~ q_1, ..., x_gamma ~ q_gamma one step at a time with the draft model's own KV cache,
    under the generation's :class:`SamplingOptions`; keyword ``overrides`` (e.g. ``temperature=0.7``)
    change them for the draft only: speculative sampling stays exact for any q, only acceptance
    changes. After verification the cache is cropped to the accepted prefix; it also checks, at each
    proposal, that what it holds is a prefix of the sequence, so a drafter reused on a new sequence
    stays correct.

    ``confidence_stop`` (a probability, or None: off) is Hugging Face assisted generation's confidence stop
    (``assistant_confidence_threshold``, 0.4 by default since transformers PR #33657 of 2024;
    ``ConfidenceCriteria`` in transformers 5.24.0, an unsupervised form of the dynamic speculation lookahead
    of Mamou et al. 2024): after drawing x_i,
    drafting stops if ``q_i(x_i)``, the processed draft distribution's probability of the token just drafted
    (under greedy drafting, the softmax of the logits at their argmax: the top probability), is below it.
    As in HF, x_i itself is still proposed: the stop saves the drafts after it. It only shortens proposals,
    so the output law is unchanged. Not done: HF also re-tunes the threshold during generation from the
    acceptances seen (an ROC cost rule, when scikit-learn is installed); here it stays fixed. Each check reads
    one probability back to the host (a sync per draft on an accelerator).
    """

    def __init__(self, model, *, confidence_stop: float | None = None, **overrides):
        if not all(hasattr(model, a) for a in ("config", "new_cache", "eval")):
            raise TypeError(f"model: expected an autoregressive model with a KV cache (an arlib.text.gpt.GPT), "
                            f"got {type(model).__name__}")
        unknown = set(overrides) - {"temperature", "top_k", "top_p", "min_p"}
        if unknown:
            raise ValueError(f"overrides: unknown sampling options {sorted(unknown)}")
        replace(SamplingOptions(), **overrides)  # check the values now
        if confidence_stop is not None:
            probability(confidence_stop, "confidence_stop", expected="a probability in [0, 1] or None")
        self.model, self.overrides, self.confidence_stop = model, overrides, confidence_stop
        self.reset()

    def reset(self) -> None:
        self.cache = None  # created on the first proposal, on the model's device
        self._ids = None  # (1, block_size): the tokens whose keys and values the cache holds
        self._base = 0  # sequence length at the last proposal
        self._last = None  # (options, options with the overrides applied)

    def _sync(self, seq: torch.Tensor) -> int:
        """Crop the cache to the longest prefix of seq (leaving at least one token to feed); returns it."""
        if self.cache is None:
            self.cache = self.model.new_cache(1)
            self._ids = torch.empty(1, self.model.config.block_size, dtype=torch.long, device=seq.device)
        m = min(self.cache.length, seq.shape[1] - 1)
        if torch.equal(self._ids[0, :m], seq[0, :m]):  # the usual case: one comparison, no search
            common = m
        else:
            common = int((self._ids[0, :m] != seq[0, :m]).nonzero()[0])
        self.cache.crop(common)
        return common

    def _options(self, options: SamplingOptions) -> SamplingOptions:
        if not self.overrides:
            return options
        if self._last is None or self._last[0] is not options:  # dataclasses.replace is slow: once per options
            self._last = (options, replace(options, **self.overrides))
        return self._last[1]

    @torch.no_grad()
    def propose(self, seq, gamma, options=SamplingOptions(), generator=None) -> Draft:
        """Draw x_i ~ q_i by the Gumbel-max trick, ``argmax(z_i + G_i)`` with z_i the processed logits and
        G_i i.i.d. Gumbel noise drawn for all gamma steps at once: its law is exactly ``softmax(z_i)``
        (Gumbel 1954; Maddison et al. 2014), and it costs two tensor ops per step where inverting the
        CDF costs many. The q_i are computed in one softmax after the loop."""
        L = check_seq(seq)
        int_at_least(gamma, "gamma", 0)
        options = self._options(check_options(options))
        config = self.model.config
        g = min(gamma, config.block_size - L + 1)  # the cache must hold L + g - 1 positions
        self._base = L
        if g <= 0:
            return Draft(seq.new_empty(1, 0), None, 0)
        start = self._sync(seq)
        x = ids_in_vocab(seq[:, start:], "seq", config.vocab_size)  # (1, L - start): the tokens the cache lacks
        self._ids[:, start:L] = x
        if not options.greedy:
            gumbel = gumbel_noise((g, config.vocab_size), generator, seq.device)  # (g, V)
            z = []
        was_training = self.model.training
        if was_training:  # (setting the mode walks every module: too slow to do at every step)
            self.model.eval()
        try:
            xs = []
            for i in range(g):
                # the tokens of seq were checked above; the later calls feed argmaxes, in range by construction,
                # so no call repeats the range check (a host sync on an accelerator)
                logits = self.model(x, cache=self.cache, validate=False)[:, -1]  # (1, V)
                if options.greedy:
                    x = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
                else:
                    z.append(options.process(logits))
                    x = (z[-1] + gumbel[i]).argmax(dim=-1, keepdim=True)  # (1, 1): x_i ~ softmax(z_i)
                xs.append(x)
                if self.confidence_stop is not None and i + 1 < g:  # HF's stop: unsure of x_i, draft no further
                    confidence = (logits if options.greedy else z[-1]).softmax(dim=-1).gather(-1, x)  # (1, 1)
                    if confidence.item() < self.confidence_stop:
                        break
        finally:
            if was_training:
                self.model.train()
        g = len(xs)  # fewer than asked after a confidence stop
        tokens = torch.cat(xs, dim=1)  # (1, g)
        self._ids[:, L:L + g - 1] = tokens[:, :g - 1]  # x_1 .. x_(g-1) were fed; x_g was not
        probs = None if options.greedy else torch.stack(z, dim=1).softmax(dim=-1)  # (1, g, V)
        return Draft(tokens, probs, g)

    def accept(self, n_accepted: int) -> None:
        """Keep the keys of the accepted drafts: the cache held seq and x_1 .. x_(g-1)."""
        int_at_least(n_accepted, "n_accepted", 0)
        if self.cache is not None:
            self.cache.crop(min(self.cache.length, self._base + n_accepted))


class NGramDrafter(Drafter):
    """Prompt lookup: find the most recent earlier occurrence of the last n tokens and propose the
    gamma tokens that followed it, trying n = max_n down to min_n (Saxena 2023; cf. Ge et al. 2022 and
    ADED). A match d tokens back proposes a copy with period d, so a short loop is continued past the
    end of the text. No training and no model calls; drafts are one-hot, so verification accepts x
    with probability p(x) and on rejection samples p with x removed, renormalized. When nothing
    matches it proposes no tokens (the generator then takes a plain target step).
    """

    def __init__(self, max_n: int = 3, min_n: int = 1):
        int_at_least(max_n, "max_n", 1)
        int_at_least(min_n, "min_n", 1)
        if min_n > max_n:
            raise ValueError(f"min_n: expected min_n <= max_n={max_n}, got {min_n}")
        self.max_n, self.min_n = max_n, min_n

    @torch.no_grad()
    def propose(self, seq, gamma, options=SamplingOptions(), generator=None) -> Draft:
        L = check_seq(seq)
        int_at_least(gamma, "gamma", 0)
        check_options(options)
        s = seq[0]  # (L,)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            windows = s[:-1].unfold(0, n, 1)  # (L - n, n): every n-gram followed by a token, except the suffix
            hits = (windows == s[L - n:]).all(dim=-1).nonzero()
            if len(hits):
                d = L - n - int(hits[-1])  # the most recent match starts d tokens before the suffix
                # copy what followed it; past the end the copy reads its own output (as in LZ77): period d
                return Draft(s[L - d + torch.arange(gamma, device=s.device) % d][None], None, 0)
        return Draft(seq.new_empty(1, 0), None, 0)

