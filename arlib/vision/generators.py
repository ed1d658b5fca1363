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

__all__ = ["raster_model", "raster_tokens", "raster_loss", "cfg_logits", "check_labels", "sample_raster",
           "NextScaleModel", "next_scale_loss", "sample_next_scale", "block_causal_mask"]

GRID = 7  # token grid side of the book's tokenizers (28x28 images, 4x downsampling)


def check_labels(labels, num_classes: int) -> torch.Tensor:
    """``labels`` if it is a (B,) ``torch.long`` tensor of class ids in ``[0, num_classes]`` (``num_classes``
    is the null class of classifier-free guidance); else ``ValueError`` naming ``labels``."""
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.dim() != 1:
        raise ValueError("labels: expected a (B,) torch.long tensor of class ids")
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"labels: class ids must lie in [0, {num_classes}] ({num_classes} = the null class)")
    return labels


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: ``uncond + scale (cond - uncond)``; scale 1 is plain conditional."""
    if cond.shape != uncond.shape:
        raise ValueError(f"uncond: expected the shape of cond {tuple(cond.shape)}, got {tuple(uncond.shape)}")
    return uncond + scale * (cond - uncond)


def _drop_labels(labels: torch.Tensor, num_classes: int, drop: float, generator) -> torch.Tensor:
    if drop <= 0:
        return labels
    keep = torch.rand(labels.shape, generator=generator, device=labels.device) >= drop
    return torch.where(keep, labels, torch.full_like(labels, num_classes))


# --- raster order ---------------------------------------------------------------------------------


def raster_model(num_codes: int, num_classes: int = 10, n_layer: int = 4, n_head: int = 4, n_embd: int = 128) -> GPT:
    """A GPT over [class token] + 49 grid tokens: vocabulary = codes, then classes, then the null class."""
    return GPT(GPTConfig(vocab_size=num_codes + num_classes + 1, block_size=GRID * GRID + 1, n_layer=n_layer,
                         n_head=n_head, n_embd=n_embd))


def raster_tokens(grids: torch.Tensor, labels: torch.Tensor, num_codes: int, num_classes: int = 10,
                  drop: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training sequences (B, 50): the class token (num_codes + label, or the null class with probability
    ``drop``), then the grid (B, 7, 7) in raster order."""
    if grids.dim() != 3 or grids.shape[1:] != (GRID, GRID) or grids.dtype != torch.long:
        raise ValueError(f"grids: expected (B, {GRID}, {GRID}) torch.long code ids, got {tuple(grids.shape)}")
    labels = _drop_labels(check_labels(labels, num_classes), num_classes, drop, generator)
    return torch.cat([(num_codes + labels)[:, None], grids.flatten(1)], dim=1)


def raster_loss(model: GPT, tokens: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of the 49 grid tokens given the class and the tokens before;
    the logits are restricted to the codes (a class token never follows)."""
    logits = model(tokens[:, :-1])[..., :num_codes]  # (B, 49, K)
    return F.cross_entropy(logits.reshape(-1, num_codes), tokens[:, 1:].reshape(-1))


@torch.no_grad()
def sample_raster(model: GPT, labels: torch.Tensor, num_codes: int, num_classes: int = 10, cfg_scale: float = 1.0,
                  temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Token grids (B, 7, 7), one token per forward pass with the KV cache. With ``cfg_scale != 1`` the
    batch is doubled (conditional rows, then null-class rows) and the logits are guided."""
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
    ``markov=True`` only those of scales k-1 and k, and the class token (HMAR's Markovian variant, Kumbong
    et al. 2025: the previous scale's input already carries the reconstruction of all coarser scales)."""
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
    ``markov=True`` restricts attention to the current and the previous scale (HMAR).
    ``forward(labels, inputs)`` -> logits (B, L, num_codes).
    """

    def __init__(self, num_codes: int, code_dim: int, scales=(1, 2, 3, 5, 7), num_classes: int = 10,
                 n_layer: int = 4, n_head: int = 4, n_embd: int = 128, markov: bool = False):
        super().__init__()
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
        if len(inputs) != len(self.scales) - 1:
            raise ValueError(f"inputs: expected {len(self.scales) - 1} feature blocks, got {len(inputs)}")
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


def next_scale_loss(model: NextScaleModel, labels: torch.Tensor, maps: list[torch.Tensor],
                    inputs: list[torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over all L tokens of the maps (coarse to fine) under teacher forcing."""
    target = torch.cat([m.flatten(1) for m in maps], dim=1)  # (B, L)
    logits = model(labels, inputs)
    return F.cross_entropy(logits.reshape(-1, model.num_codes), target.reshape(-1))


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
