"""Paraformer (Gao et al. 2022): continuous integrate-and-fire, a parallel decoder, the glancing sampler.

Continuous integrate-and-fire (CIF; Dong and Xu 2020) reads a weight alpha_t in (0, 1) for each encoder
frame and integrates: when the running sum crosses 1 the predictor *fires* a token, whose acoustic
embedding is the alpha-weighted sum of the frames since the last firing; the frame that crosses
gives the part that completes the token to it and the rest to the next one. Equivalently, frame t owns
the interval [c_{t-1}, c_t) of the cumulative sum c_t = alpha_1 + ... + alpha_t, token j owns [j, j+1),
and frame t's weight in token j is the length of their overlap: that is how :func:`cif` computes all
firings at once. Training rescales alpha so that its sum equals the target length N (the right number
of tokens fire) and adds the quantity loss ``|N - sum alpha|``; at inference the predictor fires
floor(sum alpha + tail) tokens.

The decoder reads all the fired embeddings at once (self-attention without a causal mask, plus
cross-attention to the encoder) and predicts every token in one pass. The glancing language-model
sampler (GLAT, Qian et al. 2021, as used by Paraformer) trains it to use context between tokens: a first
pass without gradients counts the correct tokens, then ceil(lambda * (N - correct)) random positions get
the target token's embedding instead of the acoustic one for the second, trained pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlib.speech._checks import index_tensor
from arlib.speech._checks import lengths as check_lengths
from arlib.speech._checks import memory as check_memory
from arlib.speech.models import DecoderBlock, layer_config, padding_mask, sinusoids, speech_layer
from arlib.validate import describe, number_in, positive_int


def cif(hidden: torch.Tensor, alpha: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """Integrate and fire: (B, T, d) frames, (B, T) weights, (B,) token counts -> (B, max N, d).

    Token j's embedding is sum_t w_tj h_t with ``w_tj = |[c_{t-1}, c_t) ∩ [j, j+1)|``; tokens past a row's
    count are zero. Frames after the last whole token contribute only to tokens below ``num_tokens``.
    """
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.dim() != 3:
        raise ValueError(f"hidden: expected a float tensor (B, T, d) of frames, got {describe(hidden)}")
    if not isinstance(alpha, torch.Tensor) or alpha.shape != hidden.shape[:2]:
        raise ValueError(f"alpha: expected weights of shape {tuple(hidden.shape[:2])} matching hidden (B, T, d), "
                         f"got {describe(alpha)}")
    num_tokens = _check_cif(alpha, num_tokens)
    return cif_weights(alpha, num_tokens).transpose(1, 2) @ hidden  # (B, N, T) @ (B, T, d)


def cif_weights(alpha: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """w (B, T, max N): the share of frame t's weight that goes to token j (see :func:`cif`)."""
    num_tokens = _check_cif(alpha, num_tokens)
    N = int(num_tokens.max()) if num_tokens.numel() else 0
    c = alpha.cumsum(dim=1)  # (B, T)
    start, end = (c - alpha)[..., None], c[..., None]  # (B, T, 1)
    j = torch.arange(N, device=alpha.device, dtype=alpha.dtype)  # (N,)
    w = (torch.minimum(end, j + 1) - torch.maximum(start, j)).clamp_min(0)  # (B, T, N)
    return w * (j < num_tokens[:, None, None])


def _check_cif(alpha, num_tokens) -> torch.Tensor:
    """alpha (B, T) finite and non-negative; num_tokens (B,) non-negative integers; returns them as a tensor."""
    if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point() or alpha.dim() != 2:
        raise ValueError(f"alpha: expected a float tensor (B, T) of weights, got {describe(alpha)}")
    if not torch.isfinite(alpha).all() or (alpha < 0).any():
        raise ValueError("alpha: expected finite non-negative weights")
    return check_lengths(num_tokens, "num_tokens", alpha.shape[0], 0, 2 ** 31, alpha.device)


class CIFPredictor(nn.Module):
    """alpha_t = sigmoid(Linear(ReLU(Conv1d(h))_t)), zero on padding frames (Paraformer's predictor)."""

    def __init__(self, d: int, kernel: int = 3):
        super().__init__()
        positive_int(d, "d")
        if positive_int(kernel, "kernel") % 2 == 0:
            raise ValueError(f"kernel: expected an odd width (the output keeps the input's length), got {kernel}")
        self.conv = nn.Conv1d(d, d, kernel, padding=kernel // 2)
        self.out = nn.Linear(d, 1)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        d = self.conv.in_channels
        if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.dim() != 3 \
                or hidden.shape[2] != d:
            raise ValueError(f"hidden: expected a float tensor (B, T, {d}), got {describe(hidden)}")
        lengths = check_lengths(lengths, "lengths", hidden.shape[0], 0, hidden.shape[1], hidden.device)
        h = F.relu(self.conv(hidden.transpose(1, 2))).transpose(1, 2)  # (B, T, d)
        return torch.sigmoid(self.out(h)).squeeze(-1) * padding_mask(lengths, hidden.shape[1])  # (B, T)


class Paraformer(nn.Module):
    """CIF predictor + parallel decoder over a (frozen or trained) speech encoder's output."""

    def __init__(self, vocab_size: int, d: int = 64, layers: int = 2, heads: int = 4, ff: int = 256,
                 dropout: float = 0.1, tail: float = 0.45):
        super().__init__()
        positive_int(vocab_size, "vocab_size")
        positive_int(ff, "ff")
        number_in(tail, "tail", 0, 1, bounds="[)")
        layer = layer_config(d, heads, layers, dropout)  # checks the sizes before anything is built
        self.config = dict(vocab_size=vocab_size, d=d, layers=layers, heads=heads, ff=ff, dropout=dropout, tail=tail)
        self.predictor = CIFPredictor(d)
        self.embed = nn.Embedding(vocab_size, d)  # target embeddings for the glancing sampler
        self.blocks = nn.ModuleList(speech_layer(DecoderBlock(layer, ff, "none")) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)

    def decode_embeddings(self, acoustic, num_tokens, memory, memory_lengths) -> torch.Tensor:
        """The parallel decoder: (B, N, d) token embeddings -> logits (B, N, V) in one pass."""
        N = acoustic.shape[1]
        x = acoustic + sinusoids(N, acoustic.shape[2], acoustic.device)
        self_mask = padding_mask(num_tokens, N)[:, None, None, :]
        # A row with no token would attend to nothing (nan): let it attend to position 0 instead.
        self_mask = self_mask | (num_tokens == 0)[:, None, None, None]
        mmask = padding_mask(memory_lengths, memory.shape[1])[:, None, None, :]
        for block in self.blocks:  # self-attention without a causal mask: all tokens at once
            x = block(x, block.cross.keys_values(memory), mmask, mask=self_mask)
        return self.head(self.ln(x))

    def _check_memory(self, memory, memory_lengths) -> torch.Tensor:
        return check_memory(memory, memory_lengths, self.config["d"])

    def token_count(self, alpha: torch.Tensor) -> torch.Tensor:
        """Tokens fired at inference: floor(sum alpha + tail), (B,)."""
        _check_cif(alpha, torch.zeros(len(alpha), dtype=torch.long) if isinstance(alpha, torch.Tensor) else None)
        return torch.floor(alpha.sum(dim=1) + self.config["tail"]).long()

    def loss(self, memory, memory_lengths, targets, target_lengths, glance: float = 0.0,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of the parallel decoder + the quantity loss ``|N - sum alpha|`` (mean over the batch).

        With ``glance`` = lambda > 0 the glancing sampler replaces ceil(lambda * wrong) acoustic embeddings
        by target embeddings before the trained pass."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        number_in(glance, "glance", 0, 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        if not index_tensor(targets) or targets.dim() != 2 or targets.shape[0] != len(memory):
            raise ValueError(f"targets: expected an integer tensor (B, U) of ids, got {describe(targets)}")
        if targets.numel() and (targets.min() < 0 or targets.max() >= self.config["vocab_size"]):
            raise ValueError(f"targets: ids must lie in [0, {self.config['vocab_size']})")
        target_lengths = check_lengths(target_lengths, "target_lengths", targets.shape[0], 0, targets.shape[1],
                                       targets.device)
        alpha = self.predictor(memory, memory_lengths)  # (B, T)
        total = alpha.sum(dim=1)
        quantity = (target_lengths.to(total) - total).abs().mean()
        scaled = alpha * (target_lengths.to(total) / total.clamp_min(1e-6))[:, None]  # fire exactly N tokens
        acoustic = cif(memory, scaled, target_lengths)  # (B, U, d)
        valid = padding_mask(target_lengths.to(memory.device), targets.shape[1])  # (B, U)
        stats = {}
        if glance > 0:
            with torch.no_grad():
                first = self.decode_embeddings(acoustic, target_lengths, memory, memory_lengths).argmax(-1)
                wrong = ((first != targets) & valid).sum(dim=1)  # (B,)
                n_glance = torch.ceil(glance * wrong.float()).long()
                noise = torch.rand(targets.shape, generator=generator, device="cpu").to(memory.device)
                noise = noise.masked_fill(~valid, 2.0)  # never pick padding
                rank = noise.argsort(dim=1).argsort(dim=1)  # a random order of each row's positions
                chosen = rank < n_glance[:, None]
            acoustic = torch.where(chosen[..., None], self.embed(targets), acoustic)
            stats["glanced"] = (chosen.sum() / valid.sum()).item()
        logits = self.decode_embeddings(acoustic, target_lengths, memory, memory_lengths)
        ce = F.cross_entropy(logits[valid], targets[valid])
        stats.update(ce=ce.item(), quantity=quantity.item())
        return ce + quantity, stats

    @torch.no_grad()
    def decode(self, memory, memory_lengths, num_tokens: torch.Tensor | None = None) -> list[list[int]]:
        """Token lists for a batch: fire ``token_count`` tokens (or the given counts), decode them at once."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        alpha = self.predictor(memory, memory_lengths)
        if num_tokens is None:
            num_tokens = self.token_count(alpha)
        num_tokens = check_lengths(num_tokens, "num_tokens", memory.shape[0], 0, 2 ** 31, memory.device)
        if int(num_tokens.max()) == 0:
            return [[] for _ in range(memory.shape[0])]
        acoustic = cif(memory, alpha, num_tokens)
        best = self.decode_embeddings(acoustic, num_tokens, memory, memory_lengths).argmax(-1).tolist()
        return [row[:n] for row, n in zip(best, num_tokens.tolist())]
