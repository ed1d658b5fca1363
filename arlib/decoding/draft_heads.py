"""Drafters built on the target itself: early exit, Medusa heads and Hydra heads.

All three read the frozen target's hidden states and are trained briefly by distillation (soft
cross-entropy to the target's own next-token distributions on real text, which is what acceptance
``sum min(p, q)`` rewards), with the target untouched:

- :class:`ExitHeads` + :class:`EarlyExitModel`: self-speculative decoding. The draft is the target's
  first E layers followed by an exit head (a LayerNorm and an unembedding, initialized as the
  target's own "logit lens"), as in DEL (Zarch et al. 2025) and LayerSkip (Elhoushi et al. 2024).
- :class:`MedusaHeads`: K independent heads on the target's last hidden state h_t; head k guesses
  x_(t+1+k) without seeing the tokens in between (Cai et al. 2024, eq. 1: a residual SiLU block and an
  unembedding per head).
- :class:`HydraHeads`: sequentially dependent heads (Ankner et al. 2024): head k also reads the
  embeddings of x_(t+1) .. x_(t+k), the tokens already decided or drafted before it.

:class:`HeadDrafter` turns Medusa or Hydra heads into an :class:`arlib.decoding.drafters.Drafter`;
``ModelDrafter(EarlyExitModel(target, E, exits))`` is the early-exit drafter. Position convention:
h_t is the final residual stream (before ``ln_f``) at position t, whose logits give x_(t+1).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from arlib.decoding.drafters import Draft, Drafter, SamplingOptions, check_options, check_seq
from arlib.text.gpt import GPT, GPTConfig, KVCache
from arlib.text.sampling import gumbel_noise
from arlib.validate import describe, float_tensor, ids_in_vocab, int_at_least, int_in_range, positive_int, token_ids

_PLAIN = SamplingOptions()  # sampling at temperature 1, no truncation


def _check_target(target) -> GPT:
    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    return target


def _check_states(h, name: str, width: int) -> torch.Tensor:
    """h (..., width): a floating tensor of hidden states of the target's width."""
    if not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.dim() < 1 or h.shape[-1] != width:
        raise ValueError(f"{name}: expected floating hidden states (..., {width}), got {describe(h)}")
    return h


class Unembed(nn.Module):
    """LayerNorm then a linear map to the vocabulary: a head's way out, initialized from the target's
    ``ln_f`` and tied embedding so that training starts from the target's own reading of a state."""

    def __init__(self, n_embd: int, vocab_size: int):
        super().__init__()
        positive_int(n_embd, "n_embd")
        positive_int(vocab_size, "vocab_size")
        self.ln = nn.LayerNorm(n_embd)
        self.proj = nn.Linear(n_embd, vocab_size, bias=False)

    def copy_from(self, target: GPT) -> None:
        c = _check_target(target).config
        if (c.n_embd, c.vocab_size) != (self.proj.in_features, self.proj.out_features):
            raise ValueError(f"target: width {c.n_embd} and vocabulary {c.vocab_size}, the head has "
                             f"{self.proj.in_features} and {self.proj.out_features}")
        with torch.no_grad():
            self.ln.load_state_dict(target.ln_f.state_dict())
            self.proj.weight.copy_(target.wte.weight)

    def forward(self, x):
        return self.proj(self.ln(x))  # (..., V)


class ResidualSiLU(nn.Module):
    """``h + W_out silu(W_in x)``: Medusa's residual block (W_out zero-initialized, so a new head starts
    as the target's own unembedding of h), with a wider input for Hydra."""

    def __init__(self, n_in: int, n_embd: int):
        super().__init__()
        positive_int(n_in, "n_in")
        positive_int(n_embd, "n_embd")
        self.inp = nn.Linear(n_in, n_embd)
        self.out = nn.Linear(n_embd, n_embd)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h, x):
        return h + self.out(F.silu(self.inp(x)))


class ExitHeads(nn.Module):
    """One exit head per layer 1 .. n_layer - 1: logits of x_(t+1) from the residual stream after E blocks."""

    def __init__(self, n_layer: int, n_embd: int, vocab_size: int):
        super().__init__()
        int_at_least(n_layer, "n_layer", 2)
        self.heads = nn.ModuleList(Unembed(n_embd, vocab_size) for _ in range(n_layer - 1))

    def copy_from(self, target: GPT) -> None:
        for head in self.heads:
            head.copy_from(target)

    def forward(self, exit_layer: int, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) from the residual stream x (..., d) after ``exit_layer`` blocks."""
        int_in_range(exit_layer, "exit_layer", 1, len(self.heads))
        _check_states(x, "x", self.heads[0].proj.in_features)
        return self.heads[exit_layer - 1](x)


class EarlyExitModel(nn.Module):
    """The target's first ``exit_layer`` blocks and an exit head, with the interface of a GPT that
    :class:`arlib.decoding.drafters.ModelDrafter` drives (``config``, ``new_cache``, ``forward(idx, cache)``).
    The blocks are the target's own (shared, not copied): the draft costs about exit_layer / n_layer of
    a target step."""

    def __init__(self, target: GPT, exit_layer: int, exits: ExitHeads):
        super().__init__()
        _check_target(target)
        int_in_range(exit_layer, "exit_layer", 1, target.config.n_layer - 1)
        if not isinstance(exits, ExitHeads) or len(exits.heads) != target.config.n_layer - 1:
            raise ValueError(f"exits: expected ExitHeads for a {target.config.n_layer}-layer target")
        self.config = replace(target.config, n_layer=exit_layer)
        self.exit_layer = exit_layer
        self._target = (target,)  # a tuple, not a submodule: the target's weights are not the draft's
        self.head = exits.heads[exit_layer - 1]

    def new_cache(self, batch_size: int = 1) -> KVCache:
        p = self._target[0].wte.weight
        return KVCache(self.config, batch_size, device=p.device, dtype=p.dtype)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, validate: bool = True) -> torch.Tensor:
        """Logits (B, T, V) of the draft; ``validate`` as in :meth:`arlib.text.gpt.GPT.forward`."""
        x = self._target[0].trunk(idx, cache, self.exit_layer, validate=validate)[-1]  # (B, T, d)
        return self.head(x)  # (B, T, V)


class MedusaHeads(nn.Module):
    """K independent draft heads on h_t (Cai et al. 2024): head k = 1 .. K gives logits of x_(t+1+k)."""

    def __init__(self, n_heads: int, n_embd: int, vocab_size: int):
        super().__init__()
        int_at_least(n_heads, "n_heads", 1)
        self.blocks = nn.ModuleList(ResidualSiLU(n_embd, n_embd) for _ in range(n_heads))
        self.unembed = nn.ModuleList(Unembed(n_embd, vocab_size) for _ in range(n_heads))

    @property
    def n_heads(self) -> int:
        return len(self.blocks)

    def copy_from(self, target: GPT) -> None:
        for u in self.unembed:
            u.copy_from(target)

    def forward(self, h: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Logits (..., n, V) of the first n heads (all by default) from h (..., d)."""
        n = self.n_heads if n is None else int_in_range(n, "n", 1, self.n_heads)
        _check_states(h, "h", self.blocks[0].inp.in_features)
        return torch.stack([self.unembed[k](self.blocks[k](h, h)) for k in range(n)], dim=-2)


class HydraHeads(nn.Module):
    """K sequentially dependent draft heads (Ankner et al. 2024): head k = 1 .. K gives logits of
    x_(t+1+k) from h_t and the embeddings of x_(t+1) .. x_(t+k), concatenated."""

    def __init__(self, n_heads: int, n_embd: int, vocab_size: int):
        super().__init__()
        int_at_least(n_heads, "n_heads", 1)
        self.embed = nn.Embedding(vocab_size, n_embd)
        self.blocks = nn.ModuleList(ResidualSiLU((k + 2) * n_embd, n_embd) for k in range(n_heads))
        self.unembed = nn.ModuleList(Unembed(n_embd, vocab_size) for _ in range(n_heads))

    @property
    def n_heads(self) -> int:
        return len(self.blocks)

    def copy_from(self, target: GPT) -> None:
        with torch.no_grad():
            self.embed.weight.copy_(target.wte.weight)
        for u in self.unembed:
            u.copy_from(target)

    def head(self, k: int, h: torch.Tensor, embedded: list[torch.Tensor]) -> torch.Tensor:
        """Logits (..., V) of head k (0-based: it guesses x_(t+2+k)) from h (..., d) and the embeddings
        of x_(t+1) .. x_(t+1+k): a list of k + 1 tensors (..., d)."""
        int_in_range(k, "k", 0, self.n_heads - 1)
        if not isinstance(embedded, (list, tuple)) or len(embedded) != k + 1:
            raise ValueError(f"embedded: expected a list of k + 1 = {k + 1} embeddings, got {type(embedded).__name__}")
        return self.unembed[k](self.blocks[k](h, torch.cat([h, *embedded], dim=-1)))

    def forward(self, h: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, n, V) of the first n heads, n = following.shape[-1]: h (B, T, d);
        following (B, T, n) holds x_(t+1) .. x_(t+n) at every position t."""
        token_ids(following, "following", dim=3, vocab_size=self.embed.num_embeddings,
                  expected="a (batch, time, n) torch.long tensor of token ids")
        int_in_range(following.shape[-1], "following", 1, self.n_heads,
                     expected=f"between 1 and {self.n_heads} following tokens (one per head)")
        _check_states(h, "h", self.embed.embedding_dim)
        if h.shape[:-1] != following.shape[:-1]:
            raise ValueError(f"following: expected {tuple(h.shape[:-1])} positions like h, got {describe(following)}")
        e = self.embed(following)  # (B, T, n, d)
        return torch.stack([self.head(k, h, list(e.unbind(-2))[:k + 1]) for k in range(following.shape[-1])], -2)

    @torch.no_grad()
    def drafting_tables(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The first layer of every head, rearranged for drafting one token at a time (same function,
        fewer operations). Head k's input is [h, e_0, .., e_k] with e_j = embed(x_j), so its first layer
        is ``W_h h + b + sum_j W_j e_j``. The h part of all heads is one matrix, applied once per
        proposal; and since the vocabulary is small, each ``W_j embed(.)`` is a (V, d) table, so adding a
        token's contribution to every later head is one lookup. Returns ``W_h`` (K d, d), ``b`` (K, d)
        and ``tables[j]`` (K - j, V, d) for heads j .. K - 1. Cached until a weight changes."""
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if getattr(self, "_tables", None) is None or self._tables[0] != key:
            d, K = self.embed.embedding_dim, self.n_heads
            w = [block.inp.weight for block in self.blocks]  # (d, (k + 2) d) each
            w_h = torch.cat([wk[:, :d] for wk in w], dim=0)  # (K d, d)
            b = torch.stack([block.inp.bias for block in self.blocks])  # (K, d)
            tables = [torch.stack([self.embed.weight @ w[k][:, (j + 1) * d:(j + 2) * d].T for k in range(j, K)])
                      for j in range(K)]  # tables[j][k - j] = embed @ W_(k, j)^T: (V, d)
            self._tables = (key, (w_h, b, tables))
        return self._tables[1]


class HeadDrafter(Drafter):
    """Draft with Medusa or Hydra heads on the target's hidden state: no draft model at all.

    :func:`arlib.decoding.speculative.speculative_generate` hands it h_t, the target's final residual stream at
    the second-to-last decided position t (its logits gave the last decided token x_(t+1)), through
    :meth:`observe` after the prompt's prefill and after every verification. It then drafts
    x_(t+2) .. x_(t+1+g), g <= number of heads, in g head calls (Hydra) or one (Medusa), under the
    generation's sampling options (drawn by the Gumbel-max trick, like ModelDrafter). Before it has
    seen a hidden state (a one-token prompt) it proposes nothing.
    """

    uses_hidden = True

    def __init__(self, heads: MedusaHeads | HydraHeads):
        if not isinstance(heads, (MedusaHeads, HydraHeads)):
            raise TypeError(f"heads: expected MedusaHeads or HydraHeads, got {type(heads).__name__}")
        self.heads = heads.eval()
        self.reset()

    def reset(self) -> None:
        self.h = None  # (1, d)
        self._checked = False  # the first proposal's ids are checked; later ones come from the verified sequence
        # Hydra's first layers rearranged for drafting; refreshed here, once per sequence, if a weight changed
        self._tables = self.heads.drafting_tables() if isinstance(self.heads, HydraHeads) else None

    def observe(self, hidden: torch.Tensor) -> None:
        """Receive h (1, d), the target's hidden state (see :class:`arlib.decoding.drafters.Drafter`)."""
        d = self.heads.unembed[0].proj.in_features
        if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.shape != (1, d):
            raise ValueError(f"hidden: expected a (1, {d}) floating tensor, got {describe(hidden)}")
        self.h = hidden

    @torch.no_grad()
    def propose(self, seq, gamma, options: SamplingOptions = _PLAIN, generator=None) -> Draft:
        """Draft up to ``gamma`` tokens after ``seq`` (1, L). Limitation: the ids of ``seq`` are checked at the
        first proposal after :meth:`reset` only (Hydra reads the last one); later proposals follow a sequence
        that the verification decided, in range by construction, and skip the check (a host sync)."""
        check_seq(seq)
        int_at_least(gamma, "gamma", 0)
        check_options(options)
        V = self.heads.unembed[0].proj.out_features
        if not self._checked:
            ids_in_vocab(seq, "seq", V)
            self._checked = True
        g = min(gamma, self.heads.n_heads)
        if self.h is None or g == 0:
            return Draft(seq.new_empty(1, 0), None, 0)
        noise = None if options.greedy else gumbel_noise((g, V), generator, seq.device)  # (g, V)

        def draw(logits, i):  # logits (1, V) -> processed logits, token (1, 1)
            if options.greedy:
                return logits, logits.argmax(dim=-1, keepdim=True)
            z = options.process(logits)
            return z, (z + noise[i]).argmax(dim=-1, keepdim=True)

        zs, xs = [], []
        if isinstance(self.heads, MedusaHeads):
            logits = self.heads(self.h, g)  # (1, g, V): one call, the heads do not see each other's drafts
            for i in range(g):
                z, x = draw(logits[:, i], i)
                zs.append(z)
                xs.append(x)
        else:
            w_h, b, tables = self._tables
            d = w_h.shape[1]
            pre = (self.h @ w_h.T).view(-1, d)[:g] + b[:g]  # (g, d): every head's first layer, h part
            x = seq[:, -1:]  # (1, 1): x_(t+1), the last decided token, is seen by every head
            for i in range(g):
                pre[i:] += tables[i][:g - i].index_select(1, x[0])[:, 0]  # token i's part of heads i .. g - 1
                # (index_select with the token tensor: int(x) would make the host wait for an accelerator)
                block = self.heads.blocks[i]
                z, x = draw(self.heads.unembed[i](self.h + block.out(F.silu(pre[i:i + 1]))), i)  # (1, V)
                zs.append(z)
                xs.append(x)
        tokens = torch.cat(xs, dim=1)  # (1, g)
        probs = None if options.greedy else torch.stack(zs, dim=1).softmax(dim=-1)  # (1, g, V)
        return Draft(tokens, probs, g if isinstance(self.heads, HydraHeads) else 1)


def soft_cross_entropy(logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``-sum_x p(x) log q(x)``: KL(p || q) up to p's entropy (distillation).
    logits (..., V) and teacher_probs (..., V) of one shape, at least one position; teacher_probs finite."""
    float_tensor(logits, "logits", finite=False)
    float_tensor(teacher_probs, "teacher_probs")
    if teacher_probs.shape != logits.shape:
        raise ValueError(f"teacher_probs: expected the shape of logits {tuple(logits.shape)}, got "
                         f"{tuple(teacher_probs.shape)}")
    if logits.dim() < 1 or logits.numel() == 0:
        raise ValueError(f"logits: expected at least one position (..., V), got {tuple(logits.shape)}")
    return -(teacher_probs * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def _check_families(target, exits, medusa, hydra, x) -> int:
    """The heads of every family for ``target`` and windows x (B, T) of its token ids; returns n = T - K - 1,
    the positions whose K following tokens are in the window (K the number of Medusa/Hydra heads)."""
    c = _check_target(target).config
    for name, heads, kind in (("exits", exits, ExitHeads), ("medusa", medusa, MedusaHeads),
                              ("hydra", hydra, HydraHeads)):
        if not isinstance(heads, kind):
            raise TypeError(f"{name}: expected {kind.__name__}, got {type(heads).__name__}")
    token_ids(x, "x", dim=2, vocab_size=c.vocab_size, expected="a (batch, time) torch.long tensor of token ids")
    K = max(medusa.n_heads, hydra.n_heads)
    n = x.shape[1] - K - 1
    if n < 1:
        raise ValueError(f"x: windows of {x.shape[1]} tokens are too short for {K} heads")
    return n


def distillation_losses(target: GPT, exits: ExitHeads, medusa: MedusaHeads, hydra: HydraHeads,
                        x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each family's loss on a batch of windows x (B, T): every head learns the target's own
    distribution of the token it guesses, with the true text as context (teacher forcing).
    Positions t < T - K - 1 are used, K the number of Medusa/Hydra heads."""
    n = _check_families(target, exits, medusa, hydra, x)  # positions with every future token in the window
    with torch.no_grad():
        logits, hidden = target(x, return_hidden=True)
        p = logits.float().softmax(dim=-1)  # (B, T, V): the teacher at every position
    h = hidden[-1][:, :n]  # (B, n, d)
    losses = {"exit": sum(soft_cross_entropy(exits(e, hidden[e][:, :n]), p[:, :n]) for e in range(1, len(hidden) - 1))
              / (len(hidden) - 2)}
    # head k guesses x_(t+1+k): the teacher is the target at position t + k
    teach = lambda k: p[:, k:k + n]  # noqa: E731
    med = medusa(h)  # (B, n, K, V)
    losses["medusa"] = sum(soft_cross_entropy(med[:, :, k - 1], teach(k)) for k in range(1, medusa.n_heads + 1)) \
        / medusa.n_heads
    following = torch.stack([x[:, k:k + n] for k in range(1, hydra.n_heads + 1)], dim=-1)  # (B, n, K)
    hyd = hydra(h, following)  # (B, n, K, V)
    losses["hydra"] = sum(soft_cross_entropy(hyd[:, :, k - 1], teach(k)) for k in range(1, hydra.n_heads + 1)) \
        / hydra.n_heads
    return losses


@torch.no_grad()
def head_acceptance(target: GPT, exits: ExitHeads, medusa: MedusaHeads, hydra: HydraHeads,
                    x: torch.Tensor) -> dict[str, list[float]]:
    """Teacher-forced mean ``beta = sum min(p, q)`` of every head on windows x (B, T): under i.i.d.
    acceptance this is the probability that the head's draft is accepted given that the drafts before
    it were (for Medusa and Hydra heads k >= 2 the drafts before are the true tokens here, so this is an
    upper estimate of in-loop acceptance)."""
    n = _check_families(target, exits, medusa, hydra, x)
    logits, hidden = target(x, return_hidden=True)
    p = logits.softmax(dim=-1)
    beta = lambda logits_q, p_: torch.minimum(logits_q.softmax(-1), p_).sum(-1).mean().item()  # noqa: E731
    h = hidden[-1][:, :n]
    following = torch.stack([x[:, k:k + n] for k in range(1, hydra.n_heads + 1)], dim=-1)
    med, hyd = medusa(h), hydra(h, following)
    return {
        "exit": [beta(exits(e, hidden[e][:, :n]), p[:, :n]) for e in range(1, len(hidden) - 1)],
        "medusa": [beta(med[:, :, k - 1], p[:, k:k + n]) for k in range(1, medusa.n_heads + 1)],
        "hydra": [beta(hyd[:, :, k - 1], p[:, k:k + n]) for k in range(1, hydra.n_heads + 1)],
    }


class DraftHeads(nn.Module):
    """Every family's heads for one target, trained together and stored as one checkpoint."""

    def __init__(self, target: GPT | GPTConfig, n_heads: int = 6):
        super().__init__()
        c = target if isinstance(target, GPTConfig) else _check_target(target).config
        self.exits = ExitHeads(c.n_layer, c.n_embd, c.vocab_size)
        self.medusa = MedusaHeads(n_heads, c.n_embd, c.vocab_size)
        self.hydra = HydraHeads(n_heads, c.n_embd, c.vocab_size)
        self.n_heads = n_heads

    def copy_from(self, target: GPT) -> None:
        """Start every unembedding (and Hydra's embedding) from the target's own."""
        for family in (self.exits, self.medusa, self.hydra):
            family.copy_from(target)

    def losses(self, target: GPT, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return distillation_losses(target, self.exits, self.medusa, self.hydra, x)

    def acceptance(self, target: GPT, x: torch.Tensor) -> dict[str, list[float]]:
        return head_acceptance(target, self.exits, self.medusa, self.hydra, x)
