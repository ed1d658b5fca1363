"""Memory, measured: how many bytes the KV cache holds, and how much of a decode step it costs.

Three parts, each answering one question of chapter 7.

**Bytes held.** Every layer keeps one key and one value vector per key/value head and position, so a
token costs ``2 * n_layer * n_kv_head * head_dim * bytes_per_value`` bytes (:func:`kv_bytes_per_token`;
the count of Pope et al. 2023, "Efficiently Scaling Transformer Inference", sec. 2, and of Kwon et al.
2023, "Efficient Memory Management for LLM Serving with PagedAttention", sec. 3, whose OPT-13B figure
2 x 5120 x 40 x 2 B = 800 KB per token the tests reproduce). :class:`ModelShape` describes a model's
cache shape and parameter count; :func:`request_bytes`, :func:`requests_that_fit`,
:func:`cache_weight_ratio` and :func:`crossover_context` turn it into the serving questions (how many
requests fit beside the weights, when the cache outweighs the weights).

The published 7B-class shapes (checked against the papers and the models' ``config.json``):

- ``LLAMA2_7B``: multi-head attention, 32 layers, 32 heads of dimension 128 (d = 4096), context
  4096, FFN 11008, vocabulary 32000 (Touvron et al. 2023, "Llama 2", Table 1 and sec. A.2.1: only the
  34B and 70B models use GQA; ``meta-llama/Llama-2-7b-hf`` config.json). 6,738,415,616 parameters.
- ``MISTRAL_7B``: grouped-query attention, 32 layers, 32 query heads, 8 key/value heads of
  dimension 128, FFN 14336, vocabulary 32000, context 8192 (Jiang et al. 2023, "Mistral 7B", Table 1;
  ``mistralai/Mistral-7B-v0.1`` config.json). 7,241,732,096 parameters.
- ``LLAMA3_8B``: the same attention shape as Mistral-7B with a vocabulary of 128256, context 8192
  (Meta's Llama 3 model card, April 2024; ``meta-llama/Meta-Llama-3-8B`` config.json). 8,030,261,248
  parameters.
- ``MISTRAL_7B_MQA``: a hypothetical multi-query variant of Mistral-7B (one key/value head,
  Shazeer 2019), to show the third point of the MHA -> GQA -> MQA line; its parameter count is
  recomputed for the smaller key/value projections.

The parameter counts come from :func:`llama_params` (embeddings, untied output head, q/k/v/o
projections, the three SwiGLU matrices, RMSNorm gains) and equal the counts the model cards publish.
The book's simplifications: the shapes count a full cache, every position kept (Mistral's own rolling
buffer of its 4096-token sliding window would cap its cache at 4096 positions, Jiang et al. sec. 2);
and memory "after the weights" ignores activations, the framework's workspace and fragmentation
(which PagedAttention is about, chapter 7's paged cache).

**Bytes read per decode step** (:func:`decode_traffic`). One decode step of a batch of B sequences
reads every weight once (``n_params * b`` bytes, shared by the batch) and every sequence's cache
(``B * n * kv_bytes_per_token``). Multiplying by the weights costs ``2 * n_params`` FLOPs per sequence;
attending costs ``4 * n_layer * n_head * head_dim * n`` FLOPs per sequence (q.K and p.V, two FLOPs per
multiply-add). The arithmetic intensity (FLOPs per byte read) of the weights is therefore ``2 B / b``:
batching raises it; that of the cache is ``2 (n_head / n_kv_head) / b`` whatever B: 1 FLOP/byte for
MHA in fp16, the group size for GQA. This is Shazeer's (2019, "Fast Transformer Decoding: One Write-Head
is All You Need", sec. 2.4.1 and 3.1) argument: incremental multi-head attention moves Theta(n / d + 1 / B)
bytes per operation (context n, width d, batch B; the 1 / B term is the weights', which batching
amortizes, the n / d term the cache's, which it does not), and multi-query attention divides the n / d
term by the number of heads. Pope et al. (2023, sec. 2 and 3.3) count the KV cache's memory time the
same way. On a GPU both intensities sit far below the ridge point (an H100 does about 300 FLOPs per byte
of HBM bandwidth), so a decode step is memory-bound and its time is close to bytes read / bandwidth: the
cache's share of the step is about its share of the bytes, :attr:`DecodeTraffic.cache_share`. The
book's simplifications: activations, the embedding gather and the softmax are left out, each parameter
counts as one multiply-add per token, and the cache is read once per step (as a grouped-query kernel
does; the book's :func:`~arlib.text.gpt.attention` repeats the key/value heads for grouped models, which
a memory-bound GPU would pay for).

**Time measured** (:func:`decode_step_profile`). One cached decode step of the book's GPT, timed at
each context length (the cache prefilled to n - 1 positions, then single-token steps rolled back with
``crop``; warm-up steps first; the variants below take turns step by step, so that a burst of other
load hits them alike; the median of the repeats; the smallest median over rounds, as
``benchmarks/speculative.py`` does, so that such a burst does not stick). The step is split
two ways, both reported:

1. ``attend_s``: the time spent inside :meth:`~arlib.text.gpt.KVCache.attend` (storing the new keys
   and attending over the cache), recorded by :class:`TimedCache` around each layer's call (with
   ``torch.cuda.synchronize`` on a GPU; its own cache, whose step totals are not reported, since these
   syncs slow a GPU step down). It includes attention's fixed cost per call, which no cache can save.
2. ``growth_s``: the step minus the same step whose attention reads only the new key
   (:class:`OneKeyCache`): the time that exists because the cache holds n - 1 earlier positions, the
   part that compressing or evicting the cache can reduce. It is a difference of two medians and can
   be slightly negative at short contexts.

On the book's 5M-parameter model on a CPU the weights are tiny (about 20 MB in float32, read at cache
speed) and most of a short-context step is the framework's fixed cost per operation, so the measured
share of the cache is small at context 16 and grows quickly with context and batch size; the byte model
above is what predicts the share for a 7B model on a GPU. No reference code was followed: the
measurement and the byte model are the book's own, from the papers' formulas.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from arlib.serving._checks import device_dtype
from arlib.text.gpt import GPT, GPTConfig, KVCache, attention
from arlib.validate import int_at_least, int_in_range, is_int, number_in, positive_int, token_ids

__all__ = ["kv_bytes_per_token", "gpt_params", "llama_params", "ModelShape", "LLAMA2_7B", "MISTRAL_7B",
           "LLAMA3_8B", "MISTRAL_7B_MQA", "SEVEN_B", "request_bytes", "requests_that_fit", "cache_weight_ratio",
           "crossover_context", "DecodeTraffic", "decode_traffic", "TimedCache", "OneKeyCache", "StepTiming",
           "decode_step_profile"]

# --- bytes held -----------------------------------------------------------------------------------


def kv_bytes_per_token(n_layer: int, n_kv_head: int, head_dim: int, bytes_per_value: int = 2) -> int:
    """Bytes of KV cache one token takes: a key and a value (the 2) of ``head_dim`` numbers per
    key/value head and layer, ``bytes_per_value`` each (2 for float16/bfloat16, 4 for float32)."""
    for name, value in (("n_layer", n_layer), ("n_kv_head", n_kv_head), ("head_dim", head_dim),
                        ("bytes_per_value", bytes_per_value)):
        positive_int(value, name)
    return 2 * n_layer * n_kv_head * head_dim * bytes_per_value


def gpt_params(config: GPTConfig) -> int:
    """Parameters of ``GPT(config)`` counted from the config alone (equal to ``num_params()``): token and
    position embeddings, per block two LayerNorms, the fused q/k/v projection, the output projection and
    the 4d MLP, all with biases, and the final LayerNorm; the output head is tied to the embedding."""
    if not isinstance(config, GPTConfig):
        raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
    d = config.n_embd
    kv = config.kv_heads * (d // config.n_head)  # width of the key (and of the value) projection
    block = (2 * 2 * d                            # ln_1, ln_2: gain and bias
             + d * (d + 2 * kv) + (d + 2 * kv)     # c_attn: q, k, v in one matrix, with bias
             + d * d + d                           # attn.c_proj
             + d * 4 * d + 4 * d + 4 * d * d + d)  # mlp.c_fc, mlp.c_proj
    return config.vocab_size * d + config.block_size * d + config.n_layer * block + 2 * d


def llama_params(n_layer: int, d_model: int, n_head: int, n_kv_head: int, d_ff: int, vocab_size: int,
                 tied: bool = False) -> int:
    """Parameters of a Llama-style decoder (Touvron et al. 2023): token embedding, untied output head
    (unless ``tied``), per layer q/k/v/o projections without bias (k and v of ``n_kv_head`` heads), the
    three SwiGLU matrices of width ``d_ff`` and two RMSNorm gains, and the final RMSNorm."""
    for name, value in (("n_layer", n_layer), ("d_model", d_model), ("n_head", n_head), ("n_kv_head", n_kv_head),
                        ("d_ff", d_ff), ("vocab_size", vocab_size)):
        positive_int(value, name)
    if not isinstance(tied, bool):
        raise ValueError(f"tied: expected a bool, got {tied!r}")
    if d_model % n_head:
        raise ValueError(f"d_model: expected a multiple of n_head={n_head}, got {d_model}")
    if n_head % n_kv_head:
        raise ValueError(f"n_kv_head: expected a divisor of n_head={n_head}, got {n_kv_head}")
    kv = n_kv_head * (d_model // n_head)
    layer = 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + 2 * d_model  # q, o; k, v; MLP; norms
    embeddings = vocab_size * d_model * (1 if tied else 2)
    return embeddings + n_layer * layer + d_model


@dataclass(frozen=True)
class ModelShape:
    """What the cache's size depends on: layers, query and key/value heads, head dimension, the
    longest context, and the parameter count (for the weights' bytes). ``source`` says where the
    numbers come from."""

    name: str
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    context: int
    n_params: int
    source: str = ""

    def __post_init__(self):
        for name in ("name", "source"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}: expected a str, got {type(getattr(self, name)).__name__}")
        for name in ("n_layer", "n_head", "n_kv_head", "head_dim", "context", "n_params"):
            positive_int(getattr(self, name), name)
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head: expected a divisor of n_head={self.n_head}, got {self.n_kv_head}")

    @classmethod
    def from_config(cls, config: GPTConfig, name: str = "GPT", n_params: int | None = None) -> ModelShape:
        """The shape of ``GPT(config)``; ``n_params`` defaults to :func:`gpt_params`."""
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        return cls(name, config.n_layer, config.n_head, config.kv_heads, config.n_embd // config.n_head,
                   config.block_size, gpt_params(config) if n_params is None else n_params, "GPTConfig")

    @property
    def group(self) -> int:
        """Query heads per key/value head: 1 for MHA, n_head for MQA."""
        return self.n_head // self.n_kv_head

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """:func:`kv_bytes_per_token` of this shape."""
        return kv_bytes_per_token(self.n_layer, self.n_kv_head, self.head_dim, bytes_per_value)

    def weight_bytes(self, bytes_per_value: int = 2) -> int:
        """Bytes of the weights stored with ``bytes_per_value`` bytes per parameter."""
        return self.n_params * positive_int(bytes_per_value, "bytes_per_value")


LLAMA2_7B = ModelShape("Llama-2-7B", n_layer=32, n_head=32, n_kv_head=32, head_dim=128, context=4096,
                       n_params=llama_params(32, 4096, 32, 32, 11008, 32000),
                       source="Touvron et al. 2023, Table 1; meta-llama/Llama-2-7b-hf config.json")
MISTRAL_7B = ModelShape("Mistral-7B", n_layer=32, n_head=32, n_kv_head=8, head_dim=128, context=8192,
                        n_params=llama_params(32, 4096, 32, 8, 14336, 32000),
                        source="Jiang et al. 2023, Table 1; mistralai/Mistral-7B-v0.1 config.json")
LLAMA3_8B = ModelShape("Llama-3-8B", n_layer=32, n_head=32, n_kv_head=8, head_dim=128, context=8192,
                       n_params=llama_params(32, 4096, 32, 8, 14336, 128256),
                       source="Meta Llama 3 model card (2024); meta-llama/Meta-Llama-3-8B config.json")
MISTRAL_7B_MQA = ModelShape("Mistral-7B, MQA variant", n_layer=32, n_head=32, n_kv_head=1, head_dim=128,
                            context=8192, n_params=llama_params(32, 4096, 32, 1, 14336, 32000),
                            source="hypothetical: Mistral-7B with one key/value head (Shazeer 2019)")
SEVEN_B = (LLAMA2_7B, MISTRAL_7B, LLAMA3_8B, MISTRAL_7B_MQA)


def _shape(shape) -> ModelShape:
    if not isinstance(shape, ModelShape):
        raise ValueError(f"shape: expected a ModelShape, got {type(shape).__name__}")
    return shape


def _weights(shape: ModelShape, weight_bytes, bytes_per_value: int) -> int:
    """The weights' bytes: given, or the shape's parameters at ``bytes_per_value`` each."""
    if weight_bytes is None:
        return shape.weight_bytes(bytes_per_value)
    return int_at_least(weight_bytes, "weight_bytes", 0)


def request_bytes(shape: ModelShape, context: int, bytes_per_value: int = 2) -> int:
    """Bytes of KV cache one request holds once it has seen ``context`` tokens (at most the shape's
    longest context)."""
    _shape(shape)
    int_in_range(context, "context", 1, shape.context)
    return context * shape.kv_bytes_per_token(bytes_per_value)


def requests_that_fit(shape: ModelShape, memory_bytes: int, context: int, bytes_per_value: int = 2,
                      weight_bytes: int | None = None) -> int:
    """How many requests of ``context`` tokens fit their caches in ``memory_bytes`` once the weights are
    loaded (``weight_bytes``, default the shape's parameters at ``bytes_per_value`` bytes each: the cache
    and the weights in the same precision). Every request is assumed to hold its full context."""
    positive_int(memory_bytes, "memory_bytes")
    weights = _weights(_shape(shape), weight_bytes, bytes_per_value)
    if weights > memory_bytes:
        raise ValueError(f"memory_bytes: expected at least the weights' {weights:,} bytes, got {memory_bytes:,}")
    return (memory_bytes - weights) // request_bytes(shape, context, bytes_per_value)


def cache_weight_ratio(shape: ModelShape, context: int, batch_size: int = 1, bytes_per_value: int = 2,
                       weight_bytes: int | None = None) -> float:
    """Bytes of the caches of ``batch_size`` requests at ``context`` tokens over the weights' bytes."""
    positive_int(batch_size, "batch_size")
    weights = _weights(_shape(shape), weight_bytes, bytes_per_value)
    if weights == 0:
        raise ValueError("weight_bytes: expected a positive number of bytes, got 0")
    return batch_size * request_bytes(shape, context, bytes_per_value) / weights


def crossover_context(shape: ModelShape, batch_size: int = 1, bytes_per_value: int = 2,
                      weight_bytes: int | None = None) -> float:
    """The context (in tokens, possibly beyond the model's own) at which the caches of ``batch_size``
    requests weigh as much as the weights: weight bytes / (B * bytes per token)."""
    positive_int(batch_size, "batch_size")
    weights = _weights(_shape(shape), weight_bytes, bytes_per_value)
    return weights / (batch_size * shape.kv_bytes_per_token(bytes_per_value))


# --- bytes read per decode step: the arithmetic-intensity model ------------------------------------------


@dataclass(frozen=True)
class DecodeTraffic:
    """Bytes read and FLOPs done by one decode step of a batch (see the module docstring)."""

    context: int
    batch_size: int
    weight_bytes: int     # every weight read once, shared by the batch
    cache_bytes: int      # every sequence's keys and values at ``context`` positions
    weight_flops: int     # 2 n_params per sequence
    attention_flops: int  # 4 L H D n per sequence: q.K and p.V

    def __post_init__(self):
        positive_int(self.context, "context")
        positive_int(self.batch_size, "batch_size")
        positive_int(self.cache_bytes, "cache_bytes")
        for name in ("weight_bytes", "weight_flops", "attention_flops"):
            int_at_least(getattr(self, name), name, 0)

    @property
    def cache_share(self) -> float:
        """The cache's share of the bytes read: a memory-bound step's share of time spent on the cache."""
        return self.cache_bytes / (self.cache_bytes + self.weight_bytes)

    @property
    def weight_intensity(self) -> float:
        """FLOPs per byte of weights read: 2 B / b, it grows with the batch (inf when no weight bytes are counted)."""
        return self.weight_flops / self.weight_bytes if self.weight_bytes else math.inf

    @property
    def cache_intensity(self) -> float:
        """FLOPs per byte of cache read: 2 (n_head / n_kv_head) / b, whatever the batch or context."""
        return self.attention_flops / self.cache_bytes


def decode_traffic(shape: ModelShape, context: int, batch_size: int = 1, bytes_per_value: int = 2,
                   weight_bytes: int | None = None) -> DecodeTraffic:
    """The byte and FLOP counts of one decode step that attends over ``context`` positions (the new
    token's included) for each of ``batch_size`` sequences, weights and cache ``bytes_per_value`` bytes
    per number (unless ``weight_bytes`` gives the weights' bytes)."""
    positive_int(batch_size, "batch_size")
    weights = _weights(_shape(shape), weight_bytes, bytes_per_value)
    cache = batch_size * request_bytes(shape, context, bytes_per_value)
    attention_flops = batch_size * 4 * shape.n_layer * shape.n_head * shape.head_dim * context
    return DecodeTraffic(context, batch_size, weights, cache, 2 * shape.n_params * batch_size, attention_flops)


# --- time measured -----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    """Wait for the accelerator, so that a host clock measures finished work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedCache(KVCache):
    """A cache that delegates everything to ``inner`` (any :class:`~arlib.text.gpt.KVCache`) and adds up
    the seconds spent in its ``attend`` in ``seconds`` (and the calls in ``calls``); on a GPU it
    synchronizes around each call, which slows the step it measures (so time the step's total without it).
    """

    def __init__(self, inner: KVCache):  # no KVCache.__init__: the tensors belong to ``inner``
        if not isinstance(inner, KVCache):
            raise ValueError(f"inner: expected a KVCache, got {type(inner).__name__}")
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    @property
    def length(self) -> int:
        """Positions seen by ``inner``."""
        return self.inner.length

    @property
    def batch_size(self) -> int:
        """``inner``'s batch size."""
        return self.inner.batch_size

    @property
    def n_layers(self) -> int:
        """``inner``'s number of layers."""
        return self.inner.n_layers

    def attend(self, layer, q, k, v, mask=None, dropout=0.0):
        """``inner.attend(...)``, timed: q (B, H, T, D), k, v (B, H_kv, T, D) -> (B, H, T, D)."""
        _sync(q.device)
        t0 = time.perf_counter()
        y = self.inner.attend(layer, q, k, v, mask, dropout)
        _sync(q.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return y

    def advance(self, T: int) -> None:
        """``inner.advance(T)``."""
        self.inner.advance(T)

    def crop(self, length: int) -> None:
        """``inner.crop(length)``."""
        self.inner.crop(length)

    def stored_bytes(self) -> int:
        """``inner.stored_bytes()``."""
        return self.inner.stored_bytes()


class OneKeyCache(KVCache):
    """The baseline of :func:`decode_step_profile`: a plain :class:`~arlib.text.gpt.KVCache` whose
    single-token steps store their key and value as usual but attend over the new position only, so the
    step reads nothing from the cache. The outputs are wrong on purpose (each query sees itself alone);
    only the time is used. Calls of several positions (the prefill) attend as the plain cache does.

    Its ``attend`` checks none of its arguments (a bad ``layer`` or shape fails inside torch): it is the
    timing baseline of the plain :class:`~arlib.text.gpt.KVCache`, which checks none either, and a check
    here would bias ``growth_s`` by its own cost."""

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=torch.float32):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        device_dtype(device, dtype)
        super().__init__(config, batch_size, device, dtype)

    def attend(self, layer, q, k, v, mask=None, dropout=0.0):
        """Store k, v (B, H_kv, T, D); for T = 1 attend over them alone, else as the plain cache."""
        if q.shape[2] != 1:
            return super().attend(layer, q, k, v, mask, dropout)
        start = self.length
        self.k[layer, :, :, start:start + 1] = k  # (B, H_kv, 1, D): the same write as a real step
        self.v[layer, :, :, start:start + 1] = v
        return attention(q, k, v, True, dropout)  # over 1 key: softmax of one score is 1


@dataclass(frozen=True)
class StepTiming:
    """Seconds of one cached decode step that attends over ``context`` positions (n - 1 cached and its
    own), for ``batch_size`` sequences: ``step_s`` the whole step, ``attend_s`` the time inside the cache's
    attend (all layers), ``one_key_s`` the same step attending over its own key only (:class:`OneKeyCache`)."""

    context: int
    batch_size: int
    step_s: float
    attend_s: float
    one_key_s: float

    def __post_init__(self):
        positive_int(self.context, "context")
        positive_int(self.batch_size, "batch_size")
        number_in(self.step_s, "step_s", 0, bounds="()", expected="a finite number of seconds > 0")
        number_in(self.attend_s, "attend_s", 0, expected="a finite number of seconds >= 0")
        number_in(self.one_key_s, "one_key_s", 0, expected="a finite number of seconds >= 0")
        for name in ("step_s", "attend_s", "one_key_s"):
            if getattr(self, name) == math.inf:
                raise ValueError(f"{name}: expected a finite number of seconds, got inf")

    @property
    def rest_s(self) -> float:
        """The step outside attention: embeddings, projections, MLPs, norms, the head, the framework."""
        return self.step_s - self.attend_s

    @property
    def attend_share(self) -> float:
        """Fraction of the step spent in the cache's attend."""
        return self.attend_s / self.step_s

    @property
    def growth_s(self) -> float:
        """Seconds the step spends because the cache holds context - 1 earlier positions (can be < 0 by noise)."""
        return self.step_s - self.one_key_s

    @property
    def growth_share(self) -> float:
        """Fraction of the step that reading the earlier positions costs."""
        return self.growth_s / self.step_s


def _prefilled(model: GPT, cache: KVCache, prompt: torch.Tensor, n: int) -> KVCache:
    """``cache`` holding the first n - 1 positions of ``prompt``; ``cache.length`` == n - 1."""
    if n > 1:
        model(prompt[:, :n - 1], cache=cache, validate=False)
    return cache


def _time_steps(model: GPT, caches: Sequence[KVCache], token: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    """Median seconds of ``repeats`` single-token steps (after ``warmup`` ones) with each cache, the caches
    taking turns step by step so that a burst of other load hits all of them alike; each step is rolled
    back with crop. For a :class:`TimedCache` the seconds are those it records inside attend."""
    starts, times = [c.length for c in caches], [[] for _ in caches]
    for i in range(warmup + repeats):
        for cache, start, kept in zip(caches, starts, times):
            before = cache.seconds if isinstance(cache, TimedCache) else 0.0
            _sync(token.device)
            t0 = time.perf_counter()
            model(token, cache=cache, validate=False)  # (B, 1) -> logits (B, 1, V)
            _sync(token.device)
            elapsed = time.perf_counter() - t0
            if i >= warmup:
                kept.append(cache.seconds - before if isinstance(cache, TimedCache) else elapsed)
            cache.crop(start)
    return [statistics.median(kept) for kept in times]


def _check_contexts(context_lengths, block_size: int) -> list[int]:
    expected = f"a non-empty list of ints in [1, {block_size}] (the model's block_size)"
    if isinstance(context_lengths, (str, bytes)) or not isinstance(context_lengths, Sequence) \
            or not context_lengths or not all(is_int(n) and 1 <= n <= block_size for n in context_lengths):
        raise ValueError(f"context_lengths: expected {expected}, got {context_lengths!r}")
    return list(context_lengths)


def decode_step_profile(model: GPT, context_lengths: Sequence[int], batch_size: int = 1, repeats: int = 20,
                        *, warmup: int = 3, rounds: int = 2, prompt: torch.Tensor | None = None,
                        new_cache: Callable[[GPT, int], KVCache] | None = None) -> list[StepTiming]:
    """Time one cached decode step of ``model`` at each context length (see the module docstring).

    For each n in ``context_lengths`` (1 .. block_size: the step attends over n positions, n - 1 cached
    and its own) three caches are prefilled with the first n - 1 tokens of ``prompt`` (batch_size, >= n;
    default: seeded random ids) and the n-th token is stepped ``warmup + repeats`` times, rolled back each
    time: a plain cache (``step_s``), a :class:`TimedCache` around one (``attend_s``) and a
    :class:`OneKeyCache` (``one_key_s``), taking turns step by step. Each number is the median of the
    repeats, the smallest over ``rounds`` rounds. ``new_cache(model, batch_size)`` builds the caches
    measured (default ``model.new_cache``; it must support ``crop``). Returns one :class:`StepTiming` per
    context, in order.
    """
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected an arlib.text.gpt.GPT, got {type(model).__name__}")
    contexts = _check_contexts(context_lengths, model.config.block_size)
    positive_int(batch_size, "batch_size")
    positive_int(repeats, "repeats")
    int_at_least(warmup, "warmup", 0)
    positive_int(rounds, "rounds")
    device = model.wte.weight.device
    if prompt is None:
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(model.config.vocab_size, (batch_size, max(contexts)), generator=gen).to(device)
    token_ids(prompt, "prompt", dim=2, rows=batch_size, vocab_size=model.config.vocab_size,
              expected=f"a ({batch_size}, >= {max(contexts)}) torch.long tensor of token ids")
    if prompt.device != device:
        raise ValueError(f"prompt: expected a tensor on the model's device {device}, got one on {prompt.device}")
    if prompt.shape[1] < max(contexts):
        raise ValueError(f"prompt: expected at least {max(contexts)} tokens per row (the longest context), "
                         f"got {prompt.shape[1]}")
    if new_cache is not None and not callable(new_cache):
        raise ValueError(f"new_cache: expected None or a callable (model, batch_size) -> KVCache, got {new_cache!r}")
    new_cache = new_cache or (lambda m, b: m.new_cache(b))

    def build() -> KVCache:
        cache = new_cache(model, batch_size)
        if not isinstance(cache, KVCache):
            raise ValueError(f"new_cache: expected a callable returning a KVCache, got {type(cache).__name__}")
        return cache

    p = model.wte.weight
    best = {n: [float("inf")] * 3 for n in contexts}  # n -> [step, attend, one key]
    with torch.no_grad():
        for _ in range(rounds):
            for n in contexts:
                token = prompt[:, n - 1:n]  # (B, 1): the step's input, at position n - 1
                plain = _prefilled(model, build(), prompt, n)
                timed = _prefilled(model, TimedCache(build()), prompt, n)
                one_key = _prefilled(model, OneKeyCache(model.config, batch_size, p.device, p.dtype), prompt, n)
                measured = _time_steps(model, [plain, timed, one_key], token, warmup, repeats)
                best[n] = [min(b, m) for b, m in zip(best[n], measured)]
    return [StepTiming(n, batch_size, *best[n]) for n in contexts]
