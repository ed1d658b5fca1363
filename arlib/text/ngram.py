"""Counting models: n-gram language models over token ids, with add-k or Kneser-Ney smoothing.

An order-n model predicts a token from the previous ``n - 1`` (order 1: unigram, 2: bigram, ...).
Counts live in sorted NumPy arrays of n-grams encoded as integers (``code = sum_j x_j V^(n-1-j)``,
the earliest token in the highest digit), so fitting is a handful of sorts and look-ups are
``searchsorted``: order 5 on the 4.5M characters of Shakespeare fits in seconds.

Smoothing:

- ``"add_k"`` (Laplace for k = 1): ``P(w | h) = (c(h w) + k) / (c(h) + k V)`` with the full context;
  an unseen context gets the uniform distribution.
- ``"kneser_ney"``: interpolated Kneser-Ney (Kneser & Ney 1995) in the form of Chen & Goodman (1999,
  eq. 17 with one discount ``D`` per model):
  ``P(w | h) = max(c(h w) - D, 0) / c(h) + D N1+(h .) / c(h) * P(w | h')`` where ``h'`` drops the
  earliest token of ``h``. The highest order uses raw counts ``c``; every lower order uses
  continuation counts ``N1+(. h w)``, the number of distinct tokens seen before ``h w``. The recursion
  ends at the uniform distribution, and a context never seen backs off to ``P(w | h')`` entirely.

- ``"modified_kneser_ney"``: Chen & Goodman's modified Kneser-Ney (1999, sec. 3): three discounts
  per order, ``D1`` for n-grams seen once, ``D2`` twice, ``D3+`` three times or more,
  ``P(w | h) = (c(h w) - D(c(h w))) / c(h) + gamma(h) P(w | h')`` with
  ``gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / c(h)``, and the discounts estimated in closed
  form from the counts of counts ``n_r`` of each order: ``Y = n1 / (n1 + 2 n2)``,
  ``D_r = r - (r + 1) Y n_{r+1} / n_r``. Lower orders use continuation counts, with discounts from
  their own counts of counts (as KenLM does); an estimate outside ``(0, r]`` falls back to 0.5, 1, 1.5.

Near the start of a sequence a context is shorter than ``n - 1``; it is then scored with the longest
context available, its own order taking the role of the highest one.
"""

from __future__ import annotations

import numpy as np
import torch

from arlib.text.sampling import sample_probs
from arlib.validate import generator as check_generator
from arlib.validate import ids_in_vocab, int_at_least, int_in_range, number_in, positive_int, token_ids


def _as_ids(ids, vocab_size: int, name: str, min_len: int = 0) -> np.ndarray:
    token_ids(ids, name, dim=1)
    if len(ids) < min_len:
        raise ValueError(f"{name}: expected at least {min_len} token ids, got {len(ids)}")
    ids_in_vocab(ids, name, vocab_size)
    return ids.detach().cpu().numpy().astype(np.int64)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values[i]`` where ``keys[i] == query``, else 0 (``keys`` sorted and unique)."""
    if len(keys) == 0:
        return np.zeros(np.shape(query), dtype=values.dtype)
    i = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    return np.where(keys[i] == query, values[i], 0)


class _Level:
    """Counts of the m-grams (contexts of m - 1 tokens), raw or as continuation counts."""

    def __init__(self, codes: np.ndarray, counts: np.ndarray, vocab_size: int):
        self.vocab_size = vocab_size
        self.codes, self.counts = codes, counts  # sorted unique m-gram codes and their counts
        ctx = codes // vocab_size  # sorted, since the token is the lowest digit
        self.ctx, first = np.unique(ctx, return_index=True)
        self.total = np.add.reduceat(counts, first) if len(first) else counts[:0]  # sum_w c(h w)
        self.types = np.add.reduceat((counts > 0).astype(np.int64), first) if len(first) else counts[:0]
        # modified Kneser-Ney: N1, N2, N3+ of each context, and the three discounts of this level
        per_ctx = lambda mask: np.add.reduceat(mask.astype(np.int64), first) if len(first) else counts[:0]  # noqa: E731
        self.n1, self.n2, self.n3p = per_ctx(counts == 1), per_ctx(counts == 2), per_ctx(counts >= 3)
        self.discounts = modified_discounts(counts)

    def stats(self, h: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """c(h w) (N, K), sum_w c(h w) (N, 1) and N1+(h .) (N, 1) for contexts ``h`` (N, 1)."""
        V = self.codes.dtype.type(self.vocab_size)
        return (_lookup(self.codes, self.counts, h * V + w), _lookup(self.ctx, self.total, h),
                _lookup(self.ctx, self.types, h))

    def gamma_mass(self, h: np.ndarray) -> np.ndarray:
        """``D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)`` (N, 1): the mass modified Kneser-Ney frees after h."""
        d1, d2, d3 = self.discounts
        return (d1 * _lookup(self.ctx, self.n1, h) + d2 * _lookup(self.ctx, self.n2, h)
                + d3 * _lookup(self.ctx, self.n3p, h))

    def discount_of(self, c: np.ndarray) -> np.ndarray:
        """The discount of each count: 0, D1, D2 or D3+ for c = 0, 1, 2, >= 3."""
        d1, d2, d3 = self.discounts
        return np.select([c == 0, c == 1, c == 2], [0.0, d1, d2], d3)


def modified_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's (1999) closed-form discounts ``(D1, D2, D3+)`` from the counts of counts
    ``n_r`` (how many n-grams occur exactly r times): ``Y = n1 / (n1 + 2 n2)``,
    ``D_r = r - (r + 1) Y n_{r+1} / n_r``. A level with too few n-grams for an estimate, or whose
    estimate leaves some ``D_r`` outside ``(0, r]``, gets the classic 0.5, 1, 1.5 instead (KenLM's
    discount fallback): a zero discount would free no mass after a context, leaving every token unseen
    there with probability exactly 0. ``counts`` must be integers >= 0."""
    try:
        counts = np.asarray(counts)
    except (TypeError, ValueError):
        raise ValueError(f"counts: expected an array of integer counts, got {type(counts).__name__}") from None
    if counts.size and (not (np.issubdtype(counts.dtype, np.integer) or (np.issubdtype(counts.dtype, np.floating)
                                                                       and bool(np.all(counts == np.round(counts)))))
                        or bool(np.any(counts < 0))):
        raise ValueError(f"counts: expected integer counts >= 0, got {counts.dtype} values")
    n = [int((counts == r).sum()) for r in range(1, 5)]
    if min(n) == 0:
        return 0.5, 1.0, 1.5
    y = n[0] / (n[0] + 2 * n[1])
    estimate = tuple(float(r - (r + 1) * y * n[r] / n[r - 1]) for r in (1, 2, 3))
    if not all(0 < d <= r for d, r in zip(estimate, (1, 2, 3))):
        return 0.5, 1.0, 1.5
    return estimate


SMOOTHINGS = ("add_k", "kneser_ney", "modified_kneser_ney")


class NotFittedError(RuntimeError, ValueError):
    """An :class:`NGramModel` asked for probabilities before :meth:`NGramModel.fit`: a ``RuntimeError``, as
    it always was, and a ``ValueError`` like every other misuse of arlib."""


class NGramModel:
    """An n-gram model of ``order`` over token ids in ``[0, vocab_size)``.

    >>> m = NGramModel(2, vocab_size=3).fit(torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> m.probs(torch.tensor([0])).argmax().item()
    1
    """

    def __init__(self, order: int, vocab_size: int, smoothing: str = "kneser_ney", k: float = 1.0,
                 discount: float = 0.75):
        order, vocab_size = positive_int(order, "order"), positive_int(vocab_size, "vocab_size")  # Python ints
        if vocab_size ** order >= 2**62:
            raise ValueError(f"order: vocab_size ** order must fit in 62 bits, got {vocab_size}**{order}")
        if not isinstance(smoothing, str) or smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing: expected one of {', '.join(map(repr, SMOOTHINGS))}, got {smoothing!r}")
        number_in(k, "k", 0, float("inf"), bounds="()", expected="a finite number > 0")
        number_in(discount, "discount", 0, 1, bounds="(]")
        self.order, self.vocab_size, self.smoothing = order, vocab_size, smoothing
        self.k, self.discount = float(k), float(discount)
        self.raw: list[_Level] = []  # raw[m - 1]: m-gram counts c(h w)
        self.cont: list[_Level] = []  # cont[m - 1]: continuation counts N1+(. h w), m < order

    def __repr__(self) -> str:
        state = f"{sum(len(r.codes) for r in self.raw):,} n-grams" if self.raw else "not fitted"
        return f"NGramModel(order={self.order}, smoothing={self.smoothing!r}, {state})"

    # --- fitting ---------------------------------------------------------------------------------

    def fit(self, ids: torch.Tensor) -> NGramModel:
        """Count every m-gram of ``ids`` (1-D token ids) for m = 1 .. order; returns ``self``."""
        x = _as_ids(ids, self.vocab_size, "ids", min_len=1)
        V = self.vocab_size
        self.raw, self.cont = [], []
        grams = np.zeros(len(x), dtype=np.int64)  # grams[i]: code of the m-gram starting at i
        for m in range(1, self.order + 1):
            grams = grams[:max(0, len(x) - m + 1)] * V + x[m - 1:]
            codes, counts = np.unique(grams, return_counts=True)
            self.raw.append(_Level(codes, counts.astype(np.int64), V))
        for m in range(1, self.order):  # N1+(. g): distinct left neighbours = (m+1)-gram types ending in g
            suffixes, n_left = np.unique(self.raw[m].codes % V**m, return_counts=True)
            codes = self.raw[m - 1].codes
            self.cont.append(_Level(codes, _lookup(suffixes, n_left, codes), V))
        return self

    def _check_fitted(self):
        if not self.raw:
            raise NotFittedError("NGramModel: call fit(ids) before asking for probabilities")

    # --- probabilities ---------------------------------------------------------------------------

    def _prob(self, hist: np.ndarray, ctx_len: np.ndarray, w: np.ndarray) -> np.ndarray:
        """P(w | context) (N, K) for tokens ``w`` (N, K) after contexts ``hist`` (N, order - 1).

        Contexts are right-aligned (``hist[:, -1]`` is the previous token) and only the last
        ``ctx_len`` (N,) tokens of each count: row i uses orders 1 .. ctx_len[i] + 1.
        """
        V, D = self.vocab_size, self.discount
        top = ctx_len[:, None] + 1  # (N, 1): the highest order each row uses
        h = np.zeros((len(hist), 1), dtype=np.int64)  # (N, 1): code of the last m - 1 tokens
        p = np.full(w.shape, 1.0 / V)  # order 0: uniform
        for m in range(1, self.order + 1):
            if m > 1:
                h = h + hist[:, -(m - 1), None] * V ** (m - 2)
            if self.smoothing == "add_k":
                if (top == m).any():
                    c, tot, _ = self.raw[m - 1].stats(h, w)
                    p = np.where(top == m, (c + self.k) / (tot + self.k * V), p)
                continue
            # Kneser-Ney: raw counts at the row's highest order, continuation counts below it
            if (top > m).any():
                c, tot, types = self.cont[m - 1].stats(h, w)
                if (top == m).any():
                    c, tot, types = (np.where(top == m, r, s) for r, s in zip(self.raw[m - 1].stats(h, w),
                                                                               (c, tot, types)))
            else:
                c, tot, types = self.raw[m - 1].stats(h, w)
            if self.smoothing == "modified_kneser_ney":  # Chen & Goodman's modified KN
                levels = (self.raw[m - 1], self.cont[m - 1] if m < self.order else self.raw[m - 1])
                at_top = top == m
                mass = np.where(at_top, levels[0].gamma_mass(h), levels[1].gamma_mass(h))  # (N, 1)
                discount = np.where(at_top, levels[0].discount_of(c), levels[1].discount_of(c))  # (N, K)
                new = (np.maximum(c - discount, 0) + mass * p) / np.maximum(tot, 1)
            else:
                new = (np.maximum(c - D, 0) + D * types * p) / np.maximum(tot, 1)  # Chen & Goodman eq. 17
            p = np.where((top >= m) & (tot > 0), new, p)  # an unseen context keeps the lower order
        return p

    def _contexts(self, context: torch.Tensor) -> tuple[np.ndarray, np.ndarray, bool]:
        if not isinstance(context, torch.Tensor) or context.dim() not in (1, 2):
            raise ValueError("context: expected a (batch, length) or (length,) tensor of token ids")
        squeeze = context.dim() == 1
        ctx = context[None] if squeeze else context
        flat = _as_ids(ctx.reshape(-1), self.vocab_size, "context").reshape(ctx.shape)
        n = self.order - 1
        hist = np.zeros((len(flat), n), dtype=np.int64)
        keep = min(n, flat.shape[1])
        if keep:
            hist[:, n - keep:] = flat[:, flat.shape[1] - keep:]
        return hist, np.full(len(flat), keep), squeeze

    def probs(self, context: torch.Tensor) -> torch.Tensor:
        """Next-token distribution after ``context`` (B, L) or (L,): float64 (B, V) or (V,).

        Only the last ``order - 1`` tokens matter; ``L`` may be 0.
        """
        self._check_fitted()
        hist, ctx_len, squeeze = self._contexts(context)
        w = np.broadcast_to(np.arange(self.vocab_size), (len(hist), self.vocab_size))  # (B, V)
        p = torch.from_numpy(self._prob(hist, ctx_len, w))
        return p[0] if squeeze else p

    def log_probs(self, context: torch.Tensor) -> torch.Tensor:
        """Natural log of :meth:`probs`."""
        return self.probs(context).log()

    def token_nll(self, ids: torch.Tensor) -> torch.Tensor:
        """``-log P(x_t | x_{<t})`` for t = 1 .. len(ids) - 1 (float64, length ``len(ids) - 1``)."""
        self._check_fitted()
        x = _as_ids(ids, self.vocab_size, "ids", min_len=2)
        n, t = self.order - 1, np.arange(1, len(x))
        padded = np.concatenate([np.zeros(n, dtype=np.int64), x])
        # row t holds x[t-n .. t-1] (zeros before the start, ignored through ctx_len)
        hist = np.lib.stride_tricks.sliding_window_view(padded, n)[t] if n else np.zeros((len(t), 0), np.int64)
        p = self._prob(hist, np.minimum(t, n), x[1:, None])[:, 0]  # (len(ids) - 1,)
        return torch.from_numpy(-np.log(p))

    def nll(self, ids: torch.Tensor) -> float:
        """Mean negative log-likelihood of held-out ``ids``, in nats per token, over every token after
        the first (each with up to ``order - 1`` tokens of context)."""
        return float(self.token_nll(ids).mean())

    def count_ranks(self, m: int) -> np.ndarray:
        """The counts of the distinct m-grams of the training text, largest first: plotted against their
        rank on log-log axes, Zipf's law for m-grams."""
        self._check_fitted()
        int_in_range(m, "m", 1, self.order)
        return np.sort(self.raw[m - 1].counts)[::-1]

    # --- sampling --------------------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None,
               prompt: torch.Tensor | None = None) -> torch.Tensor:
        """``prompt`` (T,) or (B, T) followed by ``n`` sampled tokens: (T + n,) or (B, T + n).

        Without a prompt the first token is drawn from the model's unigram distribution.
        """
        self._check_fitted()
        n = int_at_least(n, "n", 0)
        check_generator(generator)
        if prompt is None:
            prompt = torch.zeros(0, dtype=torch.long)
        if not isinstance(prompt, torch.Tensor) or prompt.dim() not in (1, 2):
            raise ValueError("prompt: expected a (batch, length) or (length,) tensor of token ids")
        seq = prompt[None] if prompt.dim() == 1 else prompt  # (B, T)
        _as_ids(seq.reshape(-1), self.vocab_size, "prompt")
        out = torch.cat([seq.cpu(), torch.zeros(len(seq), n, dtype=torch.long)], dim=1)
        T = seq.shape[1]
        for t in range(T, T + n):
            probs = self.probs(out[:, max(0, t - self.order + 1):t])  # (B, V)
            out[:, t] = sample_probs(probs, generator)
        return out[0] if prompt.dim() == 1 else out
