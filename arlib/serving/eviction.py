"""Evicting KV caches (chapter 7): keep at most ``budget`` positions per layer and forget the rest.

Three policies, each a subclass of :class:`arlib.text.gpt.KVCache` so that the unchanged GPT runs with it
(``model(idx, cache=cache)``):

* :class:`SlidingWindowCache` keeps the ``budget`` most recent positions (the "Local" baseline of
  Zhang et al. 2023 and of Xiao et al. 2024).
* :class:`SinkCache` is StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention
  Sinks", ICLR 2024, sec. 3.2 and Fig. 4): the first ``n_sink`` positions (the attention sinks, 4 in the
  paper) plus the ``budget - n_sink`` most recent ones. Reference code: mit-han-lab/streaming-llm,
  ``streaming_llm/kv_cache.py`` (``StartRecentKVCache.__call__``, read at commit d729b3f).
* :class:`HeavyHitterCache` is H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative
  Inference of Large Language Models", NeurIPS 2023, Definition 4.3 and Algorithm 1): the ``recent`` most
  recent positions plus the ``budget - recent`` positions with the largest attention score accumulated
  over every query seen so far, per layer and per key/value head. Reference code: FMInference/H2O,
  ``h2o_hf/utils_real_drop/modify_llama.py`` (``H2OKVCache_LayerWise``, read at commit 0ee6a85), which we
  follow where the paper leaves details open:

  - the score of a kept key is the sum of its softmax probabilities over all queries since it entered
    the cache (the prompt's queries included), computed over the *compressed* cache, per head;
  - a new key enters with the probability mass the queries of its own forward gave it;
  - when more than ``budget`` keys are held, the last ``recent`` are kept and, among the others, the
    ``budget - recent`` with the largest scores (a top-k; after one new token that evicts exactly the
    lowest-scored one, the greedy step of Algorithm 1); the kept keys keep their scores.

When eviction happens, in all three. As in both reference implementations, a forward first attends over
the kept keys plus all of its own new positions (the prompt attends to all of itself, causally), and only
then, at the end of each layer's :meth:`~EvictingCache.attend`, the layer evicts down to ``budget``. So
between forwards every layer holds at most ``budget`` positions, and a decoding query reads ``budget``
kept keys plus its own.

Where the book departs from the papers (the book's choices, not the papers'):

- **Positions stay the original ones.** StreamingLLM re-assigns positions *inside* the cache (the sinks at
  0, 1, ..., the window after them) because its models use rotary embeddings applied at attention time.
  The book's GPT adds learned absolute position embeddings to the input, so the position is baked into
  every key when it is computed and cannot be re-assigned; here a kept key keeps its original position,
  and the context can never exceed the block size (256). The same holds for H2O.
- **Per row of the batch.** H2O's reference code sums the scores over the batch (it runs batch 1); the
  book keeps one score per row, so every row of a batch evicts on its own.
- **Grouped heads.** The reference code assumes one key/value head per query head; with grouped-query
  attention the book sums the scores of the query heads that share a key/value head, so each key/value
  head keeps one set of positions.
- ``stored_bytes()`` counts the kept keys and values only. H2O also needs one score per kept key and head
  (1 / (2 D) of the keys' and values' size, at float32); the positions are kept for inspection
  (:meth:`~EvictingCache.kept_positions`), not needed by attention.

Evicted positions cannot be restored, so :meth:`~EvictingCache.crop` (speculative decoding's rollback)
raises an error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arlib.serving._checks import attend_args, device_dtype
from arlib.text.gpt import GPTConfig, KVCache, attention, causal_mask
from arlib.validate import describe, int_at_least, int_in_range, positive_int

__all__ = ["EvictingCache", "SlidingWindowCache", "SinkCache", "HeavyHitterCache", "attention_probs",
           "window_keep", "sink_keep", "heavy_hitter_keep"]


# --- which slots to keep: pure functions of what the cache holds -----------------------------------


def window_keep(n: int, budget: int) -> torch.Tensor:
    """Slots (1-D, ascending) to keep of ``n`` held positions sorted by position: the last ``budget``."""
    int_at_least(n, "n", 0)
    positive_int(budget, "budget")
    return torch.arange(max(0, n - budget), n)


def sink_keep(n: int, budget: int, n_sink: int) -> torch.Tensor:
    """StreamingLLM's rule (Xiao et al. 2024, sec. 3.2): the first ``n_sink`` slots and the last
    ``budget - n_sink`` of ``n`` held positions sorted by position (all of them while n <= budget)."""
    int_at_least(n, "n", 0)
    positive_int(budget, "budget")
    int_in_range(n_sink, "n_sink", 0, budget)
    if n <= budget:
        return torch.arange(n)
    return torch.cat([torch.arange(n_sink), torch.arange(n - (budget - n_sink), n)])


def heavy_hitter_keep(scores: torch.Tensor, budget: int, recent: int) -> torch.Tensor:
    """H2O's rule (Zhang et al. 2023, Algorithm 1 as its reference code runs it): of the S held slots,
    sorted by position, keep the last ``recent`` and the ``budget - recent`` earlier ones with the largest
    accumulated ``scores`` (..., S). Returns the kept slots (..., budget), ascending, or all S slots while
    S <= budget. NaN scores are not looked for (the caches call this at every step); ``topk`` ranks them
    first."""
    if not isinstance(scores, torch.Tensor) or scores.dim() < 1 or not scores.is_floating_point():
        raise ValueError(f"scores: expected a float tensor (..., S), got {describe(scores)}")
    positive_int(budget, "budget")
    int_in_range(recent, "recent", 0, budget)
    S = scores.shape[-1]
    if S <= budget:
        return torch.arange(S, device=scores.device).expand(*scores.shape[:-1], S)
    heavy = scores[..., :S - recent].topk(budget - recent, dim=-1).indices.sort(dim=-1).values  # (..., budget - recent)
    last = torch.arange(S - recent, S, device=scores.device).expand(*scores.shape[:-1], recent)  # (..., recent)
    return torch.cat([heavy, last], dim=-1)


def attention_probs(q: torch.Tensor, k: torch.Tensor, visible) -> torch.Tensor:
    """The attention matrix softmax(q k^T / sqrt(D)) (Vaswani et al. 2017, eq. 1), written out because
    H2O's scores need it: q (B, H, T, D), k (B, H_kv, S, D) -> (B, H, T, S). ``visible`` is True (every
    query sees every key) or a boolean mask broadcastable to (B, H, T, S)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q: expected a tensor (B, H, T, D), got {describe(q)}")
    if not isinstance(k, torch.Tensor) or k.dim() != 4 or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] \
            or q.shape[1] % k.shape[1]:
        raise ValueError(f"k: expected a tensor (B, H_kv, S, D) with H_kv dividing H for q {describe(q)}, "
                         f"got {describe(k)}")
    if visible is not True:
        shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        if not isinstance(visible, torch.Tensor) or visible.dtype != torch.bool or visible.dim() > 4 \
                or not all(v in (1, n) for v, n in zip(visible.shape[::-1], shape[::-1])):
            raise ValueError(f"visible: expected True or a bool mask broadcastable to {shape}, got {describe(visible)}")
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # query head h reads key head h // group
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if visible is not True:
        logits = logits.masked_fill(~visible, float("-inf"))
    return logits.softmax(dim=-1)


def _take(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """x (B, H, S, ...) at ``slots`` along dim 2: one 1-D index shared by all rows and heads, or one per
    row and head (B, H, n)."""
    if slots.dim() == 1:
        return x[:, :, slots.to(x.device)]
    index = slots.view(*slots.shape, *([1] * (x.dim() - 3))).expand(*slots.shape, *x.shape[3:])
    return x.gather(2, index)


# --- the caches -------------------------------------------------------------------------------------


class EvictingCache(KVCache):
    """A KV cache that keeps at most ``budget`` positions per layer (and per key/value head), forgetting
    the others at the end of every forward; the policy is :meth:`keep`, which subclasses define.

    Every layer, row and head holds the same number of positions (min(seen, budget) between forwards),
    so the kept keys of a layer form one dense tensor (B, H_kv, n, D), sorted by original position.
    ``length`` is still the number of positions *seen*: the position the next token takes."""

    def __init__(self, config: GPTConfig, batch_size: int, budget: int, device=None, dtype=torch.float32):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        positive_int(batch_size, "batch_size")
        device_dtype(device, dtype)
        self.budget = positive_int(budget, "budget", expected="a positive int (positions kept per layer)")
        self.config = config
        self.block_size = config.block_size
        self.length = 0
        self._batch = batch_size
        head_dim = config.n_embd // config.n_head
        empty = lambda dt: torch.zeros(batch_size, config.kv_heads, 0, head_dim, device=device, dtype=dt)
        self.keys = [empty(dtype) for _ in range(config.n_layer)]  # per layer (B, H_kv, n, D)
        self.values = [empty(dtype) for _ in range(config.n_layer)]
        self.positions = [empty(torch.long)[..., 0] for _ in range(config.n_layer)]  # per layer (B, H_kv, n)

    @property
    def batch_size(self) -> int:
        return self._batch

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    def kept_positions(self, layer: int) -> torch.Tensor:
        """The original positions of the keys layer ``layer`` holds: (B, H_kv, n), ascending along n."""
        int_in_range(layer, "layer", 0, self.n_layers - 1)
        return self.positions[layer].clone()

    def crop(self, length: int) -> None:
        """Only ``crop(length)`` with the current length (a no-op) is possible: evicted positions cannot
        be restored, so an evicting cache cannot roll back (speculative decoding needs a plain cache)."""
        if length != self.length:
            raise ValueError(f"length: an evicting cache cannot roll back from {self.length} to {length!r}: "
                             "evicted keys and values cannot be restored")

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None,
               dropout: float = 0.0) -> torch.Tensor:
        """Append the T new keys and values, attend over everything held (kept + new), then evict down to
        ``budget``. q (B, H, T, D); k, v (B, H_kv, T, D); returns (B, H, T, D)."""
        attend_args(layer, self.n_layers, q, k, v, self._batch, self.config.kv_heads,
                    self.config.n_embd // self.config.n_head, self.block_size - self.length)
        B, H_kv, T, _ = k.shape
        new = torch.arange(self.length, self.length + T, device=k.device).expand(B, H_kv, T)  # (B, H_kv, T)
        self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)  # (B, H_kv, n + T, D)
        self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        self.positions[layer] = torch.cat([self.positions[layer], new], dim=2)  # (B, H_kv, n + T)
        visible = self._visible(layer, mask, T, q.shape[1])
        y = self._attention(layer, q, visible, dropout)
        if self.keys[layer].shape[2] > self.budget:
            self._evict(layer, self.keep(layer))
        return y

    def advance(self, T: int) -> None:
        self.length += T

    def stored_bytes(self) -> int:
        """Bytes of the keys and values held, all layers and rows (the positions and any scores aside)."""
        return sum((k.numel() + v.numel()) * self.number_bytes(k.element_size())
                   for k, v in zip(self.keys, self.values))

    def keep(self, layer: int) -> torch.Tensor:
        """The slots of layer ``layer`` to keep, when it holds more than ``budget``: 1-D (the same for
        every row and head) or (B, H_kv, budget). Subclasses define the policy."""
        raise NotImplementedError

    # --- steps of attend ---

    def _visible(self, layer: int, mask, T: int, n_head: int):
        """Which held keys each new query sees: True (all) or a bool mask (B, H, T, n + T). The model's
        ``mask`` is written over original positions (T, length + T); it is read at the kept positions."""
        if mask is True or (mask is None and T == 1):
            return True  # one new query sees every kept key and itself
        if mask is None:
            mask = causal_mask(T, self.length, self.positions[layer].device)
        if not isinstance(mask, torch.Tensor) or mask.shape != (T, self.length + T):
            raise ValueError(f"mask: expected None, True or a bool tensor ({T}, {self.length + T}), "
                             f"got {getattr(mask, 'shape', mask)!r}")
        visible = mask[:, self.positions[layer]].permute(1, 2, 0, 3)  # (B, H_kv, T, n + T)
        return visible.repeat_interleave(n_head // visible.shape[1], dim=1)  # (B, H, T, n + T)

    def _attention(self, layer: int, q: torch.Tensor, visible, dropout: float) -> torch.Tensor:
        return attention(q, self.keys[layer], self.values[layer], visible, dropout)

    def _evict(self, layer: int, slots: torch.Tensor) -> None:
        self.keys[layer] = _take(self.keys[layer], slots)
        self.values[layer] = _take(self.values[layer], slots)
        self.positions[layer] = _take(self.positions[layer], slots)


class SlidingWindowCache(EvictingCache):
    """Keeps the ``budget`` most recent positions of every layer: a decoding query at position i reads
    positions i - budget .. i (the "Local" policy both papers compare against)."""

    def keep(self, layer: int) -> torch.Tensor:
        return window_keep(self.keys[layer].shape[2], self.budget)


class SinkCache(EvictingCache):
    """StreamingLLM (Xiao et al., ICLR 2024): the first ``n_sink`` positions, which draw large attention
    whatever their content (the attention sinks), plus the ``budget - n_sink`` most recent ones. Positions
    stay the original ones (the book's GPT has learned absolute positions; see the module docstring)."""

    def __init__(self, config: GPTConfig, batch_size: int, budget: int, n_sink: int = 4, device=None,
                 dtype=torch.float32):
        super().__init__(config, batch_size, budget, device, dtype)
        self.n_sink = int_in_range(n_sink, "n_sink", 0, budget, expected=f"an int in [0, budget={budget}]")

    def keep(self, layer: int) -> torch.Tensor:
        return sink_keep(self.keys[layer].shape[2], self.budget, self.n_sink)


class HeavyHitterCache(EvictingCache):
    """H2O (Zhang et al., NeurIPS 2023): the ``recent`` most recent positions (default ``budget // 2``,
    the paper's even split) plus the ``budget - recent`` with the largest accumulated attention, chosen
    per layer, row and key/value head (see the module docstring for how the scores accumulate).

    ``scores[layer]`` (B, H_kv, n) holds each kept key's accumulated attention."""

    def __init__(self, config: GPTConfig, batch_size: int, budget: int, recent: int | None = None, device=None,
                 dtype=torch.float32):
        super().__init__(config, batch_size, budget, device, dtype)
        recent = budget // 2 if recent is None else recent
        self.recent = int_in_range(recent, "recent", 0, budget, expected=f"None or an int in [0, budget={budget}]")
        self.scores = [torch.zeros(p.shape, device=device, dtype=torch.float32) for p in self.positions]

    def _attention(self, layer: int, q: torch.Tensor, visible, dropout: float) -> torch.Tensor:
        """Attention written out (softmax(q k^T / sqrt(D)) v) so that its probabilities update the scores."""
        k, v = self.keys[layer], self.values[layer]  # (B, H_kv, S, D), S = n + T
        probs = attention_probs(q, k, visible)  # (B, H, T, S)
        B, H, _, S = probs.shape
        # Each key's share of attention, summed over the new queries and over the query heads of its group.
        received = probs.detach().float().sum(dim=2).view(B, k.shape[1], H // k.shape[1], S).sum(dim=2)  # (B, H_kv, S)
        old = self.scores[layer]  # (B, H_kv, n): the kept keys' scores so far
        self.scores[layer] = received + F.pad(old, (0, S - old.shape[2]))  # new keys start at what they got
        if dropout:
            probs = F.dropout(probs, dropout)
        if v.shape[1] != H:
            v = v.repeat_interleave(H // v.shape[1], dim=1)  # (B, H, S, D)
        return probs @ v  # (B, H, T, D)

    def keep(self, layer: int) -> torch.Tensor:
        return heavy_hitter_keep(self.scores[layer], self.budget, self.recent)  # (B, H_kv, budget)

    def _evict(self, layer: int, slots: torch.Tensor) -> None:
        super()._evict(layer, slots)
        self.scores[layer] = _take(self.scores[layer], slots)
