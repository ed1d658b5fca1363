"""A GPT in the GPT-2 architecture (Radford et al. 2019), with a KV cache.

Pre-LayerNorm blocks, learned absolute positions, GELU (tanh approximation) MLP of width 4d, and an
output head tied to the token embedding. Parameter names follow Hugging Face's ``GPT2LMHeadModel`` so
that :mod:`arlib.text.hf` can convert weights both ways.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from arlib.validate import describe, ids_in_vocab, int_at_least, int_in_range, number_in, positive_int, token_ids


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256  # longest context, in tokens
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    dropout: float = 0.0
    # Key/value heads: None (= n_head) is multi-head attention; 1 is multi-query attention (Shazeer 2019);
    # a divisor of n_head in between is grouped-query attention (Ainslie et al. 2023): each key/value
    # head serves n_head / n_kv_head query heads, and the KV cache shrinks by that factor.
    n_kv_head: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            setattr(self, name, positive_int(getattr(self, name), name))  # numpy ints become ints
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd: expected a multiple of n_head={self.n_head}, got {self.n_embd}")
        number_in(self.dropout, "dropout", 0, 1, bounds="[)", expected="a probability in [0, 1)")
        if self.n_kv_head is not None:
            self.n_kv_head = positive_int(self.n_kv_head, "n_kv_head")
            if self.n_head % self.n_kv_head:
                raise ValueError(f"n_kv_head: expected a divisor of n_head={self.n_head} (or None), "
                                 f"got {self.n_kv_head}")

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (n_kv_head, or n_head when it is None)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["n_kv_head"] is None:  # plain multi-head attention: the sidecars of every earlier model
            del d["n_kv_head"]
        return d


def kv_cache_bytes(config: GPTConfig, bytes_per_value: int = 2) -> dict:
    """Memory of the KV cache of ``config``: keys and values of every layer, ``bytes_per_value`` each
    (2 for float16/bfloat16). Returns bytes ``per_token`` (2 L H_kv d_head b) and ``per_sequence`` (at the
    full context); a batch of B sequences takes B times that. Pope et al. (2023) analyse this cost."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config: expected GPTConfig, got {type(config).__name__}")
    positive_int(bytes_per_value, "bytes_per_value")
    per_token = 2 * config.n_layer * config.kv_heads * (config.n_embd // config.n_head) * bytes_per_value
    return {"per_token": per_token, "per_sequence": per_token * config.block_size}


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to the block size.

    ``length`` is the number of positions seen (the position the next token takes); :meth:`crop` rolls
    back (speculative decoding discards the keys of rejected draft tokens this way).

    Attention goes through the cache: each layer hands its new keys and values to :meth:`attend`, which
    stores them and attends over everything kept, and the model calls :meth:`advance` once all layers
    have run. Caches that keep less than every position (paged, evicting, quantized: chapter 7,
    :mod:`arlib.serving`) subclass this one and override those two methods; the model does not change.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=torch.float32):
        _check_config(config)
        batch_size = positive_int(batch_size, "batch_size")
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.kv_heads, config.block_size, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, H, T_max, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.block_size = config.block_size

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def n_layers(self) -> int:
        return self.k.shape[0]

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        self.length = int_in_range(length, "length", 0, self.length)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None,
               dropout: float = 0.0) -> torch.Tensor:
        """Store layer ``layer``'s keys and values of the T new positions and attend over all cached ones.

        q (B, H, T, D); k, v (B, H_kv, T, D); returns (B, H, T, D). ``mask`` as in
        :class:`CausalSelfAttention` (None: query i at ``length + i`` sees keys 0 .. ``length + i``)."""
        start, T = self.length, q.shape[2]
        self.k[layer, :, :, start:start + T] = k
        self.v[layer, :, :, start:start + T] = v
        k, v = self.k[layer, :, :, :start + T], self.v[layer, :, :, :start + T]  # (B, H_kv, start+T, D)
        if mask is None:  # one new query sees every key: no mask needed
            mask = True if T == 1 else causal_mask(T, start, q.device)
        return _attention(q, k, v, mask, dropout)

    def advance(self, T: int) -> None:
        """Called once per forward, after every layer attended: T more positions are seen."""
        self.length += T

    #: Bytes each number kept at full precision counts for in :meth:`stored_bytes` (and in the compressed
    #: caches of :mod:`arlib.serving`); None: the tensors' own element size. Chapter 7 sets 2 to count a
    #: cache as a server keeps it, in 16-bit numbers, while the book computes in 32-bit floats.
    bytes_per_number: int | None = None

    def number_bytes(self, element_size: int) -> int:
        """What one full-precision number counts for: :attr:`bytes_per_number`, or ``element_size``."""
        return element_size if self.bytes_per_number is None else self.bytes_per_number

    def stored_bytes(self) -> int:
        """Bytes of keys and values held for the positions seen (all layers and rows of the batch); the
        preallocated but unused tail is not counted. Compressed caches count what they store instead."""
        L, B, H, _, D = self.k.shape
        return 2 * L * B * H * self.length * D * self.number_bytes(self.k.element_size())


def _check_config(config) -> None:
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config: expected GPTConfig, got {type(config).__name__}")


def causal_mask(T: int, start: int, device=None) -> torch.Tensor:
    """The boolean mask (T, start + T) of T new queries after ``start`` cached positions: query i sits
    at position start + i and sees keys 0 .. start + i."""
    T, start = int_at_least(T, "T", 0), int_at_least(start, "start", 0)
    return torch.ones(T, start + T, dtype=torch.bool, device=device).tril(diagonal=start)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, H * D) -> (B, H, T, D): one slice of the channels per head (Vaswani et al. 2017, sec. 3.2.2)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x: expected a (batch, time, channels) tensor, got {describe(x)}")
    n_head = positive_int(n_head, "n_head")
    if x.shape[-1] % n_head:
        raise ValueError(f"n_head: expected a divisor of the {x.shape[-1]} channels, got {n_head}")
    return rearrange(x, "b t (h d) -> b h t d", h=n_head)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D): the heads' outputs side by side again, for the output projection."""
    if not isinstance(y, torch.Tensor) or y.dim() != 4:
        raise ValueError(f"y: expected a (batch, heads, time, head_dim) tensor, got {describe(y)}")
    return rearrange(y, "b h t d -> b t (h d)")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None, dropout: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention softmax(q k^T / sqrt(D)) v (Vaswani et al. 2017, eq. 1) with grouped
    key/value heads (Ainslie et al. 2023): query head h reads key/value head h // (H / H_kv).

    q (B, H, T, D); k, v (B, H_kv, S, D); returns (B, H, T, D). ``mask``: None for causal (S == T),
    True for none (every query sees every key), or a boolean tensor broadcastable to (B, H, T, S).
    Shapes and options are checked (no value is read); the model's layers call an unchecked twin."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating (batch, heads, time, head_dim) tensor, got {describe(t)}")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"k: expected (batch {q.shape[0]}, a divisor of {q.shape[1]} heads, time, head_dim "
                         f"{q.shape[3]}), got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not (mask is None or mask is True or (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool)):
        raise ValueError(f"mask: expected None (causal), True (no mask) or a boolean tensor, got {describe(mask)}")
    if mask is None and k.shape[2] != q.shape[2]:
        raise ValueError(f"mask: None means causal, which needs as many keys as queries; got {k.shape[2]} keys "
                         f"for {q.shape[2]} queries")
    number_in(dropout, "dropout", 0, 1, bounds="[)")
    return _attention(q, k, v, mask, dropout)


def _attention(q, k, v, mask=None, dropout: float = 0.0) -> torch.Tensor:
    """:func:`attention` without its checks, for the layers' hot path."""
    if k.shape[1] != q.shape[1]:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, S, D)
    if mask is True:  # on a GPU the unmasked kernel is the fast one
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention (Vaswani et al. 2017) with grouped key/value heads (Ainslie et al. 2023)
    and an optional KV cache."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        _check_config(config)
        self.n_head, self.n_embd, self.n_kv_head = config.n_head, config.n_embd, config.kv_heads
        self.kv_dim = config.kv_heads * (config.n_embd // config.n_head)  # n_embd unless grouped
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * self.kv_dim)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (T, start + T) optionally passes the causal mask of a multi-position cached call
        (:func:`causal_mask`), so that the layers of one forward build it once; without a cache, a mask
        (T, T) replaces the causal one. ``mask=True`` lets every query see every key, cached or new (a
        block of a block-causal model that sees its past and all of itself): attention then runs without
        a mask, which on a GPU is the faster kernel."""
        if x.dim() != 3 or x.shape[-1] != self.n_embd:  # shape only: cheap enough for every layer
            raise ValueError(f"x: expected a (batch, time, {self.n_embd}) tensor, got {describe(x)}")
        q, k, v = self.c_attn(x).split([self.n_embd, self.kv_dim, self.kv_dim], dim=2)
        q = split_heads(q, self.n_head)  # (B, H, T, D)
        k, v = split_heads(k, self.n_kv_head), split_heads(v, self.n_kv_head)  # (B, H_kv, T, D)
        dropout = self.attn_dropout if self.training else 0.0
        if cache is not None:  # the cache stores k, v and decides which keys the queries read
            y = cache.attend(layer, q, k, v, mask, dropout)
        else:
            y = _attention(q, k, v, mask, dropout)
        y = merge_heads(y)  # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward layer: GELU between two linear maps. ``hidden`` (default 4 n_embd) and
    ``approximate`` (GPT-2's "tanh", or "none" for the exact erf GELU) let chapter 5's speech models
    build their layers from this one."""

    def __init__(self, config: GPTConfig, hidden: int | None = None, approximate: str = "tanh"):
        super().__init__()
        _check_config(config)
        hidden = 4 * config.n_embd if hidden is None else positive_int(hidden, "hidden")
        if approximate not in ("tanh", "none"):
            raise ValueError(f"approximate: expected 'tanh' or 'none', got {approximate!r}")
        self.c_fc = nn.Linear(config.n_embd, hidden)
        self.c_proj = nn.Linear(hidden, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = approximate

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """One pre-LN transformer block of GPT-2: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig, hidden: int | None = None, approximate: str = "tanh"):
        super().__init__()
        _check_config(config)
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config, hidden, approximate)  # hidden, approximate: see MLP

    def forward(self, x, cache=None, layer=0, mask=None):
        x = x + self.attn(self.ln_1(x), cache, layer, mask)  # pre-LN residual blocks
        return x + self.mlp(self.ln_2(x))


def _check_tree(tree, T: int, start: int, cache, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``tree`` = (positions (T,) long, mask (T, start + T) bool), checked; a tree needs a cache."""
    if cache is None:
        raise ValueError("tree: scoring a token tree needs a cache (the prefix the tree continues)")
    if not isinstance(tree, tuple) or len(tree) != 2:
        raise ValueError("tree: expected a tuple (positions (T,), mask (T, start + T))")
    positions, mask = tree
    if not isinstance(positions, torch.Tensor) or positions.dtype != torch.long or tuple(positions.shape) != (T,):
        raise ValueError(f"tree: positions must be a ({T},) torch.long tensor, got {describe(positions)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (T, start + T):
        raise ValueError(f"tree: mask must be a ({T}, {start + T}) bool tensor, got {describe(mask)}")
    if T and (int(positions.min()) < start or int(positions.max()) >= block_size):
        raise ValueError(f"tree: positions must lie in [{start}, {block_size}): after the cached prefix, in the "
                         "context")
    return positions, mask


class GPT(nn.Module):
    """Decoder-only transformer: ``forward(idx)`` gives next-token logits of shape (B, T, V)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 L)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences, on the model's device and dtype."""
        p = self.wte.weight
        return KVCache(self.config, batch_size, device=p.device, dtype=p.dtype)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, return_hidden: bool = False,
                validate: bool = True, tree: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Logits (B, T, V) for token ids ``idx`` (B, T).

        With ``cache``, ``idx`` continues the cached positions and the cache grows by T. ``tree`` =
        (positions (T,), mask (T, start + T) bool) scores a token tree in one pass instead of a sequence
        (SpecInfer's tree attention, Miao et al. 2024): token i takes position ``positions[i]`` and sees
        the keys its mask row allows (the cached prefix and its ancestors; :mod:`arlib.decoding.tree`).
        With ``return_hidden=True`` also returns the residual stream (B, T, d) after the embeddings
        and after each block: a list of ``n_layer + 1`` tensors. ``validate=False`` skips the range
        check of the ids (it makes the host wait for an accelerator): for samplers whose ids are in range
        by construction.
        """
        hidden = self.trunk(idx, cache, validate=validate, tree=tree)
        logits = F.linear(self.ln_f(hidden[-1]), self.wte.weight)  # tied head: (B, T, V)
        return (logits, hidden) if return_hidden else logits

    def trunk(self, idx: torch.Tensor, cache: KVCache | None = None, n_layers: int | None = None,
              validate: bool = True, tree: tuple[torch.Tensor, torch.Tensor] | None = None) -> list:
        """The residual stream (B, T, d) after the embeddings and after each of the first ``n_layers``
        blocks (all by default): a list of ``n_layers + 1`` tensors. A cache, if given, must hold at
        least ``n_layers`` layers (the first ones are used) and grows by T. Early-exit drafters
        (:mod:`arlib.decoding.draft_heads`) run the first layers only. ``validate`` as in :meth:`forward`."""
        token_ids(idx, "idx", dim=2, expected="a (batch, time) tensor of torch.long token ids")
        n_layers = self.config.n_layer if n_layers is None else n_layers
        int_in_range(n_layers, "n_layers", 0, self.config.n_layer)
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache (model.new_cache(batch)), got {type(cache).__name__}")
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.block_size:
            raise ValueError(f"idx: {start + T} positions exceed the context of {self.config.block_size}")
        if idx.device != self.wte.weight.device:
            raise ValueError(f"idx: on {idx.device}, the model is on {self.wte.weight.device}")
        if cache is not None and (cache.batch_size != B or cache.n_layers < n_layers):
            raise ValueError(f"cache: built for batch {cache.batch_size} and {cache.n_layers} layers, "
                             f"got batch {B} and {n_layers} layers")
        if validate and T:
            ids_in_vocab(idx, "idx", self.config.vocab_size)
        pos = torch.arange(start, start + T, device=idx.device)
        mask = causal_mask(T, start, idx.device) if cache is not None and T > 1 else None  # once, for all layers
        if tree is not None:
            pos, mask = _check_tree(tree, T, start, cache, self.config.block_size)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, d)
        hidden = [x]
        for layer in range(n_layers):
            x = self.h[layer](x, cache, layer, mask)
            hidden.append(x)
        if cache is not None:
            cache.advance(T)
        return hidden
