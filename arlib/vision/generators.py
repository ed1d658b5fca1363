"""Autoregressive image generators over VQ tokens: raster order and next-scale prediction.

- Raster (LlamaGen, Sun et al. 2024): a class token, then the 7x7 token grid row by row, modelled by the
  book's :class:`arlib.text.gpt.GPT` (its vocabulary holds the codes, then one token per class and a null
  class for classifier-free guidance). One forward pass per token: 49 steps per image.
- Next scale (VAR, Tian et al. 2024): the token maps of :class:`arlib.vision.vq.MultiScaleVQVAE`, coarse to fine;
  a transformer with *block-causal* attention predicts every token of scale k+1 at once from the
  reconstruction of scales 1..k, downsampled to scale k+1. One forward pass per scale: 5 steps.

Both train with class dropout (the label replaced by the null class with probability 0.1) so that one
network gives both the conditional and the unconditional logits; sampling mixes them as
``l_u + s (l_c - l_u)`` (classifier-free guidance on the logits, Ho and Salimans 2022; LlamaGen eq. 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arlib.text.gpt import GPT, Block, GPTConfig, KVCache
from arlib.text.sampling import draw, process_logits
from arlib.validate import describe, int_at_least, int_in_range, is_int, number_in, positive_int, probability, token_ids
from arlib.validate import generator as check_generator
from arlib.vision.vq import MultiScaleQuantizer

__all__ = ["raster_model", "raster_tokens", "raster_loss", "cfg_logits", "check_labels", "sample_raster",
           "NextScaleModel", "next_scale_loss", "scale_targets", "sample_next_scale", "block_causal_mask"]

GRID = 7  # token grid side of the book's tokenizers (28x28 images, 4x downsampling)


def check_labels(labels, num_classes: int) -> torch.Tensor:
    """``labels`` if it is a (B,) ``torch.long`` tensor of class ids in ``[0, num_classes]`` (``num_classes``
    is the null class of classifier-free guidance); else ``ValueError`` naming ``labels``."""
    int_at_least(num_classes, "num_classes", 1)
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.dim() != 1:
        raise ValueError("labels: expected a (B,) torch.long tensor of class ids")
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"labels: class ids must lie in [0, {num_classes}] ({num_classes} = the null class)")
    return labels


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: ``uncond + scale (cond - uncond)``; scale 1 is plain conditional.
    ``scale`` a finite number; cond and uncond floating tensors of one shape."""
    _check_scale(scale, "scale")
    for name, t in (("cond", cond), ("uncond", uncond)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating tensor of logits, got {describe(t)}")
    if cond.shape != uncond.shape:
        raise ValueError(f"uncond: expected the shape of cond {tuple(cond.shape)}, got {tuple(uncond.shape)}")
    return uncond + scale * (cond - uncond)


def _check_scale(scale, name: str) -> None:
    number_in(scale, name, -math.inf, math.inf, bounds="()", expected="a finite guidance scale")


def _check_raster_model(model, num_codes: int, num_classes: int) -> None:
    """A raster GPT whose vocabulary is the codes, the classes and the null class."""
    positive_int(num_codes, "num_codes")
    int_at_least(num_classes, "num_classes", 1)
    if not isinstance(model, GPT):
        raise TypeError(f"model: expected an arlib.text.gpt.GPT (raster_model), got {type(model).__name__}")
    if model.config.vocab_size != num_codes + num_classes + 1:
        raise ValueError(f"num_codes: the model's vocabulary of {model.config.vocab_size} tokens is not num_codes "
                         f"({num_codes}) + num_classes ({num_classes}) + 1 (the null class)")


def _drop_labels(labels: torch.Tensor, num_classes: int, drop: float, generator) -> torch.Tensor:
    if drop <= 0:
        return labels
    keep = torch.rand(labels.shape, generator=generator, device=labels.device) >= drop
    return torch.where(keep, labels, torch.full_like(labels, num_classes))


# --- raster order ---------------------------------------------------------------------------------


def raster_model(num_codes: int, num_classes: int = 10, n_layer: int = 4, n_head: int = 4, n_embd: int = 128) -> GPT:
    """A GPT over [class token] + 49 grid tokens: vocabulary = codes, then classes, then the null class."""
    positive_int(num_codes, "num_codes")
    int_at_least(num_classes, "num_classes", 1)
    return GPT(GPTConfig(vocab_size=num_codes + num_classes + 1, block_size=GRID * GRID + 1, n_layer=n_layer,
                         n_head=n_head, n_embd=n_embd))


def raster_tokens(grids: torch.Tensor, labels: torch.Tensor, num_codes: int, num_classes: int = 10,
                  drop: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training sequences (B, 50): the class token (num_codes + label, or the null class with probability
    ``drop``), then the grid (B, 7, 7) in raster order."""
    positive_int(num_codes, "num_codes")
    token_ids(grids, "grids", dim=3, vocab_size=num_codes, expected=f"(B, {GRID}, {GRID}) torch.long code ids")
    if grids.shape[1:] != (GRID, GRID):
        raise ValueError(f"grids: expected (B, {GRID}, {GRID}) torch.long code ids, got {describe(grids)}")
    labels = check_labels(labels, num_classes)
    if len(labels) != len(grids):
        raise ValueError(f"labels: expected one label per grid ({len(grids)}), got {len(labels)}")
    probability(drop, "drop")
    labels = _drop_labels(labels, num_classes, drop, generator)
    return torch.cat([(num_codes + labels)[:, None], grids.flatten(1)], dim=1)


def raster_loss(model: GPT, tokens: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of the 49 grid tokens given the class and the tokens before;
    the logits are restricted to the codes (a class token never follows). tokens (B, 50) from
    :func:`raster_tokens`: a class token, then 49 codes in [0, num_codes). ``model`` may be wrapped for
    distributed training (its ``module`` is then the GPT)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, GPT):
        raise TypeError(f"model: expected an arlib.text.gpt.GPT (raster_model), got {type(model).__name__}")
    V = inner.config.vocab_size
    int_in_range(num_codes, "num_codes", 1, V - 2, expected=f"an int in [1, {V - 2}] (the model's codes)")
    token_ids(tokens, "tokens", dim=2, vocab_size=V, expected=f"a (B, {GRID * GRID + 1}) torch.long tensor")
    if tokens.shape[1] != GRID * GRID + 1:
        raise ValueError(f"tokens: expected (B, {GRID * GRID + 1}) sequences from raster_tokens, "
                         f"got {describe(tokens)}")
    if tokens.numel() and int(tokens[:, 1:].max()) >= num_codes:
        raise ValueError(f"tokens: the grid positions must hold codes in [0, {num_codes})")
    logits = model(tokens[:, :-1])[..., :num_codes]  # (B, 49, K)
    return F.cross_entropy(logits.reshape(-1, num_codes), tokens[:, 1:].reshape(-1))


@torch.no_grad()
def sample_raster(model: GPT, labels: torch.Tensor, num_codes: int, num_classes: int = 10, cfg_scale: float = 1.0,
                  temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Token grids (B, 7, 7), one token per forward pass with the KV cache. With ``cfg_scale != 1`` the
    batch is doubled (conditional rows, then null-class rows) and the logits are guided."""
    _check_raster_model(model, num_codes, num_classes)
    _check_scale(cfg_scale, "cfg_scale")
    check_generator(generator)
    labels = check_labels(labels, num_classes)
    B, guided = len(labels), cfg_scale != 1.0
    first = num_codes + labels
    if guided:
        first = torch.cat([first, torch.full_like(first, num_codes + num_classes)])
    cache = model.new_cache(len(first))
    x = first[:, None]  # (B or 2B, 1)
    out = torch.empty(B, GRID * GRID, dtype=torch.long, device=labels.device)
    for i in range(GRID * GRID):
        logits = model(x, cache=cache, validate=False)[:, -1, :num_codes]  # (B or 2B, K); ids in range
        if guided:
            logits = cfg_logits(logits[:B], logits[B:], cfg_scale)
        out[:, i] = draw(process_logits(logits, temperature, top_k), generator)
        x = out[:, i:i + 1].repeat(2, 1) if guided else out[:, i:i + 1]
    return out.view(B, GRID, GRID)


# --- next-scale prediction -------------------------------------------------------------------------


def block_causal_mask(scales, device=None, markov: bool = False) -> torch.Tensor:
    """(L, L) boolean mask, L = sum s^2: a position of scale k sees every position of scales 1..k; with
    ``markov=True`` only those of scales k-1 and k, and the class token (the book's variant of the idea of
    HMAR, Kumbong et al. 2025, that the previous scale's input already carries the reconstruction of all
    coarser scales; HMAR's own block-diagonal mask is :func:`arlib.vision.hmar.hmar_mask`)."""
    if not isinstance(scales, (tuple, list)) or not scales or not all(is_int(s) and s >= 1 for s in scales):
        raise ValueError(f"scales: expected a non-empty sequence of positive ints, got {scales!r}")
    level = torch.cat([torch.full((s * s,), k, device=device) for k, s in enumerate(scales)])
    mask = level[:, None] >= level[None, :]
    return mask & ((level[:, None] - level[None, :] <= 1) | (level[None, :] == 0)) if markov else mask


class NextScaleModel(nn.Module):
    """VAR's transformer (Tian et al. 2024, section 3.2) over token maps of ``scales``.

    Position block 0 is the class embedding (the start token); block k (k >= 1) holds the features of
    the reconstruction from maps 1..k, downsampled to scale k+1
    (:meth:`~arlib.vision.vq.MultiScaleQuantizer.next_scale_inputs`), projected to the model width. Every
    position adds a learned position embedding
    and its scale's level embedding; attention is block-causal; block k predicts all tokens of map k+1.
    ``markov=True`` restricts attention to the current and the previous scale and the class token (the
    book's variant; HMAR as published is :class:`arlib.vision.hmar.HMARModel`).
    ``forward(labels, inputs)`` -> logits (B, L, num_codes).
    """

    def __init__(self, num_codes: int, code_dim: int, scales=(1, 2, 3, 5, 7), num_classes: int = 10,
                 n_layer: int = 4, n_head: int = 4, n_embd: int = 128, markov: bool = False):
        super().__init__()
        positive_int(num_codes, "num_codes")
        positive_int(code_dim, "code_dim")
        int_at_least(num_classes, "num_classes", 1)
        block_causal_mask(scales)  # checks the scales
        self.scales, self.num_codes, self.num_classes = tuple(scales), num_codes, num_classes
        self.markov = markov
        self.length = sum(s * s for s in self.scales)
        self.config = GPTConfig(vocab_size=num_codes, block_size=self.length, n_layer=n_layer, n_head=n_head,
                                n_embd=n_embd)
        self.class_emb = nn.Embedding(num_classes + 1, n_embd)  # the last row is the null class
        self.input_proj = nn.Linear(code_dim, n_embd)
        self.pos_emb = nn.Parameter(torch.randn(self.length, n_embd) * 0.02)
        self.level_emb = nn.Embedding(len(self.scales), n_embd)
        self.blocks = nn.ModuleList(Block(self.config) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, num_codes)
        level = torch.cat([torch.full((s * s,), k) for k, s in enumerate(self.scales)])
        self.register_buffer("level", level, persistent=False)  # (L,)
        mask = block_causal_mask(self.scales, markov=markov)  # (L, L)
        self.register_buffer("mask", mask, persistent=False)
        # a cached step's block sees all it can see (True: attention without a mask, the fast kernel), or
        # its rows of the mask; known here, so that step() never reads the mask's values (a host sync)
        starts = [0] + [sum(s * s for s in self.scales[:k]) for k in range(1, len(self.scales) + 1)]
        self._sees_all = {a: bool(mask[a:b, :b].all()) for a, b in zip(starts, starts[1:])}
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, labels: torch.Tensor, inputs: list[torch.Tensor], start: int) -> torch.Tensor:
        parts = [] if start else [self.class_emb(labels)[:, None]]  # (B, 1, d)
        parts += [self.input_proj(x) for x in inputs]  # (B, s^2, d) each
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        end = start + x.shape[1]  # positions start..end-1: slices, not index lookups
        return x + self.pos_emb[start:end] + self.level_emb(self.level[start:end])

    def forward(self, labels: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forced logits (B, L, num_codes); inputs: the K-1 feature blocks (B, s_(k+1)^2, D)."""
        labels = check_labels(labels, self.num_classes)
        if not isinstance(inputs, (list, tuple)) or len(inputs) != len(self.scales) - 1:
            raise ValueError(f"inputs: expected a list of {len(self.scales) - 1} feature blocks, got "
                             f"{len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs).__name__}")
        D = self.input_proj.in_features
        for s, x in zip(self.scales[1:], inputs):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.shape != (len(labels), s * s, D):
                raise ValueError(f"inputs: expected blocks (B, s^2, {D}) for scales {self.scales[1:]}, got "
                                 f"{[describe(t) for t in inputs]}")
        x = self._embed(labels, inputs, 0)  # (B, L, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, None, layer, self.mask)
        return self.head(self.ln_f(x))

    def step(self, labels: torch.Tensor | None, block_inputs: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
        """One generation step with a KV cache: the start token (labels given) or the next feature block
        (B, s^2, D); returns the logits (B, s^2, num_codes) of the next scale's tokens."""
        start = cache.length
        x = self._embed(labels, [] if block_inputs is None else [block_inputs], start)
        T = x.shape[1]
        # a block sees itself and the past (Markov: one scale back, and the class token)
        mask = True if self._sees_all.get(start, False) else self.mask[start:start + T, :start + T]
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, mask)
        cache.length = start + T  # the blocks wrote keys and values; the cache owns the count
        return self.head(self.ln_f(x))


def scale_targets(maps, scales, num_codes: int) -> torch.Tensor:
    """The token maps of ``scales`` (one (B, s, s) map of code ids in [0, num_codes) per scale, coarse to
    fine), checked and flattened into the (B, L) targets of a next-scale loss."""
    if not isinstance(maps, (list, tuple)) or len(maps) != len(scales):
        raise ValueError(f"maps: expected {len(scales)} token maps of scales {tuple(scales)}")
    for s, m in zip(scales, maps):
        token_ids(m, "maps", dim=3, vocab_size=num_codes, expected="(B, s, s) torch.long maps of code ids")
        if m.shape[1:] != (s, s):
            raise ValueError(f"maps: expected maps of scales {tuple(scales)}, got {[describe(t) for t in maps]}")
    return torch.cat([m.flatten(1) for m in maps], dim=1)


def next_scale_loss(model: NextScaleModel, labels: torch.Tensor, maps: list[torch.Tensor],
                    inputs: list[torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over all L tokens of the maps (coarse to fine) under teacher forcing; maps: one
    (B, s, s) map of code ids in [0, num_codes) per scale. ``model`` may be wrapped for distributed training."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, NextScaleModel):
        raise TypeError(f"model: expected a NextScaleModel, got {type(model).__name__}")
    target = scale_targets(maps, inner.scales, inner.num_codes)  # (B, L)
    logits = model(labels, inputs)
    return F.cross_entropy(logits.reshape(-1, inner.num_codes), target.reshape(-1))


@torch.no_grad()
def sample_next_scale(model: NextScaleModel, quantizer, labels: torch.Tensor, cfg_scale: float = 1.0,
                      temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None,
                      return_latent: bool = False):
    """Token maps [(B, 1, 1), ..., (B, 7, 7)], one forward pass per scale with a KV cache. ``quantizer`` is
    the tokenizer's :class:`arlib.vision.vq.MultiScaleQuantizer`: it turns each sampled map into the next
    scale's input. Guidance as in :func:`sample_raster`.

    The sampler builds the reconstruction f_hat (B, D, 7, 7) as it goes (VAR, Algorithm 2); with
    ``return_latent=True`` it returns (maps, f_hat), so that images come from
    :meth:`arlib.vision.vq.MultiScaleVQVAE.decode_latent` without rebuilding f_hat from the maps."""
    labels = check_labels(labels, model.num_classes)
    _check_scale(cfg_scale, "cfg_scale")
    check_generator(generator)
    if not isinstance(quantizer, MultiScaleQuantizer):
        raise TypeError(f"quantizer: expected an arlib.vision.vq.MultiScaleQuantizer, got {type(quantizer).__name__}")
    if (quantizer.vq.num_codes, quantizer.vq.dim) != (model.num_codes, model.input_proj.in_features):
        raise ValueError(f"quantizer: {quantizer.vq.num_codes} codes of dimension {quantizer.vq.dim}, the model "
                         f"expects {model.num_codes} of dimension {model.input_proj.in_features}")
    if tuple(quantizer.scales) != model.scales:
        raise ValueError(f"quantizer: expected scales {model.scales}, got {tuple(quantizer.scales)}")
    B, guided = len(labels), cfg_scale != 1.0
    rows = torch.cat([labels, torch.full_like(labels, model.num_classes)]) if guided else labels
    cache = KVCache(model.config, len(rows), device=labels.device, dtype=model.pos_emb.dtype)
    size = model.scales[-1]
    f_hat = quantizer.vq.codebook.new_zeros(B, quantizer.vq.dim, size, size)
    maps, block = [], None
    for k, s in enumerate(model.scales):
        logits = model.step(rows if k == 0 else None, block, cache)  # (B or 2B, s^2, K)
        if guided:
            logits = cfg_logits(logits[:B], logits[B:], cfg_scale)
        maps.append(draw(process_logits(logits.reshape(B * s * s, -1), temperature, top_k), generator).view(B, s, s))
        # the ids come from the sampler, in range by construction: no check (no host sync on a GPU)
        if k + 1 < len(model.scales):
            f_hat, block = quantizer.next_scale_step(f_hat, k, maps[-1], validate=False)  # block: (B, s'^2, D)
            block = block.repeat(2, 1, 1) if guided else block
        elif return_latent:
            f_hat = quantizer.add_scale(f_hat, k, maps[-1], validate=False)
    return (maps, f_hat) if return_latent else maps
