"""HMAR as published (Kumbong et al. 2025, "HMAR: Efficient Hierarchical Masked Auto-Regressive Image
Generation"; reference code github.com/NVlabs/HMAR), on chapter 4's multi-scale tokens.

Two changes to VAR (:class:`arlib.vision.generators.NextScaleModel`):

1. **Markovian next-scale prediction.** Scale k+1 is predicted from the reconstruction of scales 1..k,
   interpolated to scale k+1 (VAR's input), and nothing else: attention is *block-diagonal*, each scale's
   block seeing only itself (:func:`hmar_mask`). Each scale is then one independent forward pass over
   s^2 positions, with no KV cache of the coarser scales. The class reaches every position: HMAR
   conditions every block by AdaLN; the book adds the class embedding to every position instead (a
   simplification, stated).
2. **Masked prediction within a scale.** A second branch refines a scale in a few steps (MaskGIT within
   the scale): it sees the scale's input plus the scale's own tokens, masked ones replaced by a learned
   [MASK] vector, and predicts the masked ones. As in the reference code the first layers are shared and
   frozen, the last ``mask_layers`` are the branch's own (started from the next-scale branch's), trained
   second with the cross-entropy of the masked tokens; ceil(n r) positions of each scale are masked, r ~
   U(0, 1), the same positions for the whole batch. The book feeds a token as its code vector (the
   reference code feeds the token's downsampled contribution to the reconstruction).

Sampling (reference ``hmar.py``): the next-scale branch draws every token of the scale; when the scale's
schedule has several steps, the tokens are ranked by the probability of their draw, the first step keeps
the most confident ``schedule[k][0]``, and each later step re-draws the still-masked tokens with the mask
branch (no guidance there, as in the reference) and keeps the most confident ``schedule[k][j]`` of them;
a kept token never changes. HMAR's default refines only its smallest scales: here scale 2 in steps
(1, 3) and scale 3 in (1, 1, 2, 5), the other scales in one pass each. HMAR also reweights the
next-scale loss per scale and ramps the guidance scale up over the scales; the book trains with uniform
weights and guides every scale alike, as it does VAR.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arlib.text.gpt import Block, GPTConfig
from arlib.text.sampling import draw, process_logits
from arlib.validate import describe, int_at_least, is_int, number_in, positive_int
from arlib.validate import generator as check_generator
from arlib.vision.generators import cfg_logits, check_labels, scale_targets
from arlib.vision.vq import MultiScaleQuantizer

__all__ = ["hmar_mask", "HMARModel", "hmar_loss", "hmar_masked_loss", "sample_hmar", "DEFAULT_SCHEDULE"]

DEFAULT_SCHEDULE = ((1,), (1, 3), (1, 1, 2, 5), (25,), (49,))  # tokens kept per step, scales 1, 2, 3, 5, 7


def _check_scales(scales) -> tuple[int, ...]:
    if not isinstance(scales, (tuple, list)) or not scales or not all(is_int(s) and s >= 1 for s in scales):
        raise ValueError(f"scales: expected a non-empty sequence of positive ints, got {scales!r}")
    return tuple(int(s) for s in scales)


def hmar_mask(scales, device=None) -> torch.Tensor:
    """(L, L) boolean mask, L = sum s^2: block-diagonal, a position of scale k sees the positions of scale k
    and no other (HMAR's Markovian attention)."""
    scales = _check_scales(scales)
    level = torch.cat([torch.full((s * s,), k, device=device) for k, s in enumerate(scales)])
    return level[:, None] == level[None, :]


class HMARModel(nn.Module):
    """HMAR's two branches over token maps of ``scales`` (see the module's docstring).

    ``forward(labels, inputs)``: teacher-forced next-scale logits (B, L, num_codes) with the block-diagonal
    mask (the same numbers as one :meth:`scale_logits` pass per scale); ``masked_forward(labels, inputs,
    maps, masked)``: the mask branch's logits (B, L, num_codes) given every scale's tokens, ``masked``
    (L,) bool marking the hidden ones."""

    def __init__(self, num_codes: int, code_dim: int, scales=(1, 2, 3, 5, 7), num_classes: int = 10,
                 n_layer: int = 4, n_head: int = 4, n_embd: int = 128, mask_layers: int = 2):
        super().__init__()
        positive_int(num_codes, "num_codes")
        positive_int(code_dim, "code_dim")
        int_at_least(num_classes, "num_classes", 1)
        n_layer = positive_int(n_layer, "n_layer")
        mask_layers = positive_int(mask_layers, "mask_layers")
        if mask_layers > n_layer:
            raise ValueError(f"mask_layers: expected at most n_layer = {n_layer}, got {mask_layers}")
        self.scales, self.num_codes, self.num_classes = _check_scales(scales), num_codes, num_classes
        self.length = sum(s * s for s in self.scales)
        self.starts = [sum(s * s for s in self.scales[:k]) for k in range(len(self.scales) + 1)]
        self.config = GPTConfig(vocab_size=num_codes, block_size=self.length, n_layer=n_layer, n_head=n_head,
                                n_embd=n_embd)
        self.class_emb = nn.Embedding(num_classes + 1, n_embd)  # the last row is the null class
        self.start = nn.Parameter(torch.randn(n_embd) * 0.02)  # scale 1's input (there is no coarser scale)
        self.input_proj = nn.Linear(code_dim, n_embd)
        self.pos_emb = nn.Parameter(torch.randn(self.length, n_embd) * 0.02)
        self.level_emb = nn.Embedding(len(self.scales), n_embd)
        shared = n_layer - mask_layers
        self.trunk = nn.ModuleList(Block(self.config) for _ in range(shared))
        self.ns_blocks = nn.ModuleList(Block(self.config) for _ in range(mask_layers))
        self.ns_ln, self.ns_head = nn.LayerNorm(n_embd), nn.Linear(n_embd, num_codes)
        self.token_proj = nn.Linear(code_dim, n_embd)  # the mask branch's view of the scale's own tokens
        self.mask_emb = nn.Parameter(torch.zeros(n_embd))
        self.mask_blocks = nn.ModuleList(Block(self.config) for _ in range(mask_layers))
        self.mask_ln, self.mask_head = nn.LayerNorm(n_embd), nn.Linear(n_embd, num_codes)
        level = torch.cat([torch.full((s * s,), k) for k, s in enumerate(self.scales)])
        self.register_buffer("level", level, persistent=False)  # (L,)
        self.register_buffer("mask", hmar_mask(self.scales), persistent=False)  # (L, L)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    def start_next_scale_branch(self) -> None:
        """Freeze the mask branch for the first training stage (it is unused there: a distributed wrapper
        would otherwise wait for its gradients)."""
        branch = self._mask_branch_ids()
        for p in self.parameters():
            p.requires_grad_(id(p) not in branch)

    def _mask_branch_ids(self) -> set[int]:
        return {id(p) for m in (self.mask_blocks, self.mask_ln, self.mask_head, self.token_proj)
                for p in m.parameters()} | {id(self.mask_emb)}

    def start_mask_branch(self) -> None:
        """Copy the next-scale branch's own layers and head into the mask branch, and freeze everything
        else: the second training stage then updates only the mask branch (the reference code's finetune)."""
        self.mask_blocks.load_state_dict(self.ns_blocks.state_dict())
        self.mask_ln.load_state_dict(self.ns_ln.state_dict())
        self.mask_head.load_state_dict(self.ns_head.state_dict())
        branch = self._mask_branch_ids()
        for p in self.parameters():
            p.requires_grad_(id(p) in branch)

    def _embed(self, labels: torch.Tensor, inputs: list[torch.Tensor], first: int) -> torch.Tensor:
        """Inputs of scales first..first+len(inputs)-1 (scale 0's is the start vector: pass None)."""
        parts = [self.start.expand(len(labels), 1, -1) if x is None else self.input_proj(x) for x in inputs]
        x = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        a, b = self.starts[first], self.starts[first + len(inputs)]
        return x + self.pos_emb[a:b] + self.level_emb(self.level[a:b]) + self.class_emb(labels)[:, None]

    def _run(self, x: torch.Tensor, mask, blocks, ln, head) -> torch.Tensor:
        for layer, block in enumerate(list(self.trunk) + list(blocks)):
            x = block(x, None, layer, mask)
        return head(ln(x))

    def _check_inputs(self, labels, inputs) -> torch.Tensor:
        labels = check_labels(labels, self.num_classes)
        D = self.input_proj.in_features
        if not isinstance(inputs, (list, tuple)) or len(inputs) != len(self.scales) - 1:
            raise ValueError(f"inputs: expected a list of {len(self.scales) - 1} feature blocks (B, s^2, {D})")
        for s, x in zip(self.scales[1:], inputs):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.shape != (len(labels), s * s, D):
                raise ValueError(f"inputs: expected blocks (B, s^2, {D}) for scales {self.scales[1:]}, got "
                                 f"{[describe(t) for t in inputs]}")
        return labels

    def forward(self, labels: torch.Tensor, inputs: list[torch.Tensor], codes: torch.Tensor | None = None,
                masked: torch.Tensor | None = None) -> torch.Tensor:
        """Next-scale logits; with ``codes`` and ``masked``, the mask branch's (:meth:`masked_forward`)."""
        if codes is not None or masked is not None:
            return self.masked_forward(labels, inputs, codes, masked)
        labels = self._check_inputs(labels, inputs)
        x = self._embed(labels, [None, *inputs], 0)  # (B, L, d)
        return self._run(x, self.mask, self.ns_blocks, self.ns_ln, self.ns_head)

    def scale_logits(self, labels: torch.Tensor, k: int, block_input: torch.Tensor | None) -> torch.Tensor:
        """Next-scale logits (B, s_k^2, num_codes) of scale k alone: one forward pass over its s_k^2 positions
        (no mask needed: the block sees only itself). block_input (B, s_k^2, D), None for k = 0."""
        x = self._embed(labels, [block_input], k)
        return self._run(x, True, self.ns_blocks, self.ns_ln, self.ns_head)

    def masked_scale_logits(self, labels: torch.Tensor, k: int, block_input: torch.Tensor | None,
                            codes: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The mask branch on scale k alone: block_input as :meth:`scale_logits`, codes (B, s_k^2, D) the code
        vectors of the scale's tokens, masked (B, s_k^2) bool the hidden ones. Logits (B, s_k^2, num_codes)."""
        own = torch.where(masked[..., None], self.mask_emb, self.token_proj(codes))
        x = self._embed(labels, [block_input], k) + own
        return self._run(x, True, self.mask_blocks, self.mask_ln, self.mask_head)

    def masked_forward(self, labels: torch.Tensor, inputs: list[torch.Tensor], codes: torch.Tensor,
                       masked: torch.Tensor) -> torch.Tensor:
        """The mask branch on every scale at once (block-diagonal): codes (B, L, D) the code vectors of all
        tokens, masked (L,) or (B, L) bool. Logits (B, L, num_codes)."""
        labels = self._check_inputs(labels, inputs)
        D = self.input_proj.in_features
        if not isinstance(codes, torch.Tensor) or not codes.is_floating_point() or codes.shape != (len(labels),
                                                                                                  self.length, D):
            raise ValueError(f"codes: expected ({len(labels)}, {self.length}, {D}) code vectors, got {describe(codes)}")
        if not isinstance(masked, torch.Tensor) or masked.dtype != torch.bool or masked.shape[-1] != self.length:
            raise ValueError(f"masked: expected an ({self.length},) or (B, {self.length}) bool tensor, "
                             f"got {describe(masked)}")
        own = torch.where(masked[..., None], self.mask_emb, self.token_proj(codes))
        x = self._embed(labels, [None, *inputs], 0) + own
        return self._run(x, self.mask, self.mask_blocks, self.mask_ln, self.mask_head)


def _check_model(model) -> HMARModel:
    inner = getattr(model, "module", model)
    if not isinstance(inner, HMARModel):
        raise TypeError(f"model: expected an HMARModel, got {type(model).__name__}")
    return inner


def _targets(inner: HMARModel, maps) -> torch.Tensor:
    return scale_targets(maps, inner.scales, inner.num_codes)  # (B, L)


def hmar_loss(model: HMARModel, labels: torch.Tensor, maps: list[torch.Tensor], inputs: list[torch.Tensor]):
    """Stage 1: mean cross-entropy of every token under teacher forcing with the block-diagonal mask."""
    inner = _check_model(model)
    target = _targets(inner, maps)
    return F.cross_entropy(model(labels, inputs).reshape(-1, inner.num_codes), target.reshape(-1))


def hmar_masked_loss(model: HMARModel, labels: torch.Tensor, maps: list[torch.Tensor], inputs: list[torch.Tensor],
                     codebook: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 2: the mask branch's mean cross-entropy of the masked tokens. In every scale with more than
    one token, ceil(n r) of its n positions are masked (r ~ U(0, 1); positions drawn at random, shared by
    the batch); codebook (num_codes, D) gives the visible tokens' code vectors."""
    inner = _check_model(model)
    target = _targets(inner, maps)
    check_generator(generator)
    if not isinstance(codebook, torch.Tensor) or codebook.shape != (inner.num_codes, inner.input_proj.in_features):
        raise ValueError(f"codebook: expected ({inner.num_codes}, {inner.input_proj.in_features}) code vectors, "
                         f"got {describe(codebook)}")
    device, draws_on = target.device, (generator.device if generator is not None else "cpu")
    masked = torch.zeros(inner.length, dtype=torch.bool, device=device)
    for k, s in enumerate(inner.scales):
        n = s * s
        if n == 1:
            continue
        r = float(torch.rand((), generator=generator, device=draws_on))
        hidden = max(1, math.ceil(n * r))
        order = torch.randperm(n, generator=generator, device=draws_on).to(device)
        masked[inner.starts[k] + order[:hidden]] = True
    logits = model(labels, inputs, codebook[target], masked)  # through a distributed wrapper, if any
    return F.cross_entropy(logits[:, masked].reshape(-1, inner.num_codes), target[:, masked].reshape(-1))


def _check_schedule(schedule, scales) -> tuple[tuple[int, ...], ...]:
    if schedule is None:
        schedule = DEFAULT_SCHEDULE if tuple(scales) == (1, 2, 3, 5, 7) else tuple((s * s,) for s in scales)
    ok = isinstance(schedule, (tuple, list)) and len(schedule) == len(scales) and all(
        isinstance(steps, (tuple, list)) and steps and all(is_int(n) and n >= 1 for n in steps)
        and sum(steps) == s * s for steps, s in zip(schedule, scales))
    if not ok:
        raise ValueError(f"schedule: expected, per scale, a sequence of positive token counts summing to s^2 for "
                         f"scales {tuple(scales)}, got {schedule!r}")
    return tuple(tuple(int(n) for n in steps) for steps in schedule)


def _keep_most_confident(confidence: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n_pos) bool: the n most confident positions among ``candidates`` (B, n_pos) in each row."""
    score = torch.where(candidates, confidence, -math.inf)
    top = score.topk(n, dim=1).indices
    return torch.zeros_like(candidates).scatter_(1, top, True) & candidates


@torch.no_grad()
def sample_hmar(model: HMARModel, quantizer: MultiScaleQuantizer, labels: torch.Tensor, schedule=None,
                cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None, return_latent: bool = False, return_passes: bool = False):
    """Token maps [(B, 1, 1), ..., (B, 7, 7)] by HMAR's sampling (see the module's docstring): per scale one
    next-scale pass (guided when ``cfg_scale`` != 1: conditional and null rows), then the mask branch's
    steps of ``schedule`` (default ``DEFAULT_SCHEDULE``; ``((s*s,),)`` per scale is plain Markovian
    next-scale sampling). ``return_latent`` as in :func:`arlib.vision.generators.sample_next_scale`;
    ``return_passes`` adds the number of forward passes (guided rows run in the same pass)."""
    inner = _check_model(model)
    labels = check_labels(labels, inner.num_classes)
    number_in(cfg_scale, "cfg_scale", -math.inf, math.inf, bounds="()", expected="a finite guidance scale")
    check_generator(generator)
    if not isinstance(quantizer, MultiScaleQuantizer):
        raise TypeError(f"quantizer: expected an arlib.vision.vq.MultiScaleQuantizer, got {type(quantizer).__name__}")
    if tuple(quantizer.scales) != inner.scales or quantizer.vq.num_codes != inner.num_codes:
        raise ValueError(f"quantizer: expected {inner.num_codes} codes at scales {inner.scales}")
    schedule = _check_schedule(schedule, inner.scales)
    B, guided = len(labels), cfg_scale != 1.0
    rows = torch.cat([labels, torch.full_like(labels, inner.num_classes)]) if guided else labels
    size = inner.scales[-1]
    f_hat = quantizer.vq.codebook.new_zeros(B, quantizer.vq.dim, size, size)
    maps, block, passes = [], None, 0
    for k, s in enumerate(inner.scales):
        logits = model.scale_logits(rows, k, None if block is None else (block.repeat(2, 1, 1) if guided else block))
        passes += 1
        if guided:
            logits = cfg_logits(logits[:B], logits[B:], cfg_scale)
        logits = process_logits(logits.reshape(B * s * s, -1), temperature, top_k)  # (B s^2, K)
        tokens = draw(logits, generator).view(B, s * s)
        steps = schedule[k]
        if len(steps) > 1:
            confidence = logits.softmax(-1).gather(1, tokens.view(-1, 1)).view(B, s * s)
            kept = _keep_most_confident(confidence, torch.ones_like(tokens, dtype=torch.bool), steps[0])
            for n in steps[1:]:
                hidden = ~kept
                codes = quantizer.vq.codebook[tokens]  # (B, s^2, D); hidden ones are replaced by [MASK]
                m_logits = model.masked_scale_logits(labels, k, block, codes, hidden)  # conditional only
                passes += 1
                m_logits = process_logits(m_logits.reshape(B * s * s, -1), temperature, top_k)
                redrawn = draw(m_logits, generator).view(B, s * s)
                tokens = torch.where(hidden, redrawn, tokens)
                confidence = m_logits.softmax(-1).gather(1, tokens.view(-1, 1)).view(B, s * s)
                kept = kept | _keep_most_confident(confidence, hidden, n)
        maps.append(tokens.view(B, s, s))
        if k + 1 < len(inner.scales):
            f_hat, block = quantizer.next_scale_step(f_hat, k, maps[-1], validate=False)
        elif return_latent:
            f_hat = quantizer.add_scale(f_hat, k, maps[-1], validate=False)
    out = (maps, f_hat) if return_latent else maps
    return (out, passes) if return_passes else out
