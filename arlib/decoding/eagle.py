"""EAGLE: a one-layer drafter that predicts the target's next *feature*, and drafts token trees with it.

EAGLE (Li et al. 2024a, "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty", ICML 2024,
section 4.1) drafts at the level of features rather than tokens. Its input at position j is the pair
(f_j, x_(j+1)): the target's feature f_j (the state whose logits gave x_(j+1)) and the embedding of the
token x_(j+1) that was actually sampled there (which removes the uncertainty of which token f_j led to).
The two are concatenated and reduced by a linear layer 2d -> d, then go through ONE transformer decoder
layer, whose output is the predicted next feature f^_(j+1). The target's own frozen LM head turns it into
the distribution of x_(j+2); the embedding is the target's frozen embedding too. To draft further, the
drafter feeds its own predicted feature back with the token it guessed.

In this book (:class:`EagleHead`):

- the *feature* is the target's final residual stream before ``ln_f`` (``GPT.forward(...,
  return_hidden=True)[1][-1]``), and the frozen LM head is ``ln_f`` followed by the tied embedding
  ``wte``. EAGLE's reference code takes LLaMA's last hidden state after the final RMSNorm (and the LM
  head alone); the two carry the same information, since ``ln_f`` is a fixed function of each state;
- the decoder layer is one :class:`arlib.text.gpt.Block` of the target's width and heads (GPT-2's
  pre-LN layer instead of LLaMA's); as in the reference code, the layer has no input normalization
  (``ln_1`` is the identity), the fc output enters attention directly;
- positions: LLaMA's rotary positions become GPT-2's learned absolute positions, the target's frozen
  ``wpe`` added to the fc output. The pair (f_j, x_(j+1)) sits at position j;
- the head keeps its own one-layer :class:`arlib.text.gpt.KVCache` of the decided pairs, so a draft step
  costs one small block per depth.

Training (section 4.2, :func:`eagle_losses`), teacher-forced on the target's features of real text:
``L = L_reg + w_cls L_cls`` with ``L_reg = SmoothL1(f_(j+1), f^_(j+1))`` and ``L_cls`` the cross-entropy
of the drafter's token distribution to the target's (soft labels p_(j+2) = softmax(LMHead(f_(j+1)))),
w_cls = 0.1; uniform noise U(-0.1, 0.1) is added to the input features (the features the drafter
reads at test time are its own, slightly wrong, predictions).

Drafting trees (:class:`EagleDrafter`): EAGLE-1 drafts a static tree (section 4.1; verified in 4.3) of a
fixed shape; here any Medusa-style ``choices`` of :func:`arlib.decoding.tree_decoding.sparse_tree`, a chain
being a special case. EAGLE-2
(Li et al. 2024b, "EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees", EMNLP 2024,
section 4) grows the tree dynamically: a node's value is the product of the drafter's confidences
(probabilities) along its path; at each depth the ``top_k`` nodes of highest value are expanded, each into
its ``top_k`` most likely children (*expansion*), and at the end the ``n_nodes`` drafted nodes of
highest value are kept (*reranking*; a parent's value is never below its child's, so they form a tree).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from arlib.decoding.drafters import SamplingOptions, check_options, check_seq
from arlib.decoding.tree import TokenTree
from arlib.decoding.tree_decoding import TreeDraft, TreeDrafter, chain_choices, sparse_tree
from arlib.text.gpt import GPT, Block, GPTConfig, KVCache
from arlib.text.sampling import gumbel_noise
from arlib.validate import describe, ids_in_vocab, number_in, positive_int, token_ids
from arlib.validate import generator as check_generator

__all__ = ["EagleHead", "eagle_losses", "eagle_acceptance", "EagleDrafter"]

_PLAIN = SamplingOptions()  # the default of propose_tree (not read: the tree is the drafter's top guesses)


def _check_target(target) -> GPT:
    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    return target


class EagleHead(nn.Module):
    """EAGLE's autoregression head (Li et al. 2024a, section 4.1) on a frozen target GPT.

    ``fc``: Linear(2d -> d) of [embedding of x_(j+1), f_j]; ``block``: one GPT-2 block without its input
    LayerNorm; the embedding, the positions and the LM head are the target's, read, not copied (the
    target is kept in a tuple, not as a submodule: its weights are not the head's). Built from a
    :class:`arlib.text.gpt.GPTConfig` (a checkpoint being loaded) the head is unattached until :meth:`attach`.
    """

    def __init__(self, target: GPT | GPTConfig):
        super().__init__()
        if isinstance(target, GPT):
            config = target.config
        elif isinstance(target, GPTConfig):
            config = target
        else:
            raise TypeError(f"target: expected an arlib.text.gpt.GPT (or its GPTConfig), got {type(target).__name__}")
        self.target_config = config
        self.config = replace(config, n_layer=1, dropout=0.0)  # one decoder layer; its cache has one layer
        d = config.n_embd
        self.fc = nn.Linear(2 * d, d)  # the reference code's default keeps the bias
        self.block = Block(self.config)
        self.block.ln_1 = nn.Identity()  # the reference code: the first decoder layer has no input norm
        for module in self.modules():
            GPT._init_weights(module)
        for name, p in self.named_parameters():  # GPT-2's scaled residual projections (one layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / 2 ** 0.5)
        self._target: tuple[GPT, ...] = ()
        if isinstance(target, GPT):
            self.attach(target)

    def attach(self, target: GPT) -> EagleHead:
        """Read the frozen ``target`` (same config as the head's) from now on; returns the head."""
        _check_target(target)
        if target.config.to_dict() | {"dropout": 0} != self.target_config.to_dict() | {"dropout": 0}:
            raise ValueError(f"target: config {target.config.to_dict()} differs from the head's "
                             f"{self.target_config.to_dict()}")
        self._target = (target,)
        return self

    @property
    def target(self) -> GPT:
        if not self._target:
            raise ValueError("target: this head is not attached to its target GPT; call head.attach(target)")
        return self._target[0]

    def new_cache(self, batch_size: int = 1, length: int | None = None) -> KVCache:
        """An empty one-layer cache for ``batch_size`` rows and ``length`` pairs (default: the context)."""
        config = self.config if length is None else replace(self.config, block_size=positive_int(length, "length"))
        p = self.fc.weight
        return KVCache(config, batch_size, device=p.device, dtype=p.dtype)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted next features (B, T, d) from pairs (f_j, x_(j+1)): ``features`` (B, T, d), ``tokens``
        (B, T). ``positions`` (T,) long, default ``start + arange(T)`` (start = the cache's length, or 0).
        With ``cache`` the pairs continue the cached ones and the cache grows by T; ``mask`` (T, start + T)
        bool replaces the causal mask (tree attention), as in ``arlib.text.gpt.Block.forward``."""
        target = self.target
        d = self.config.n_embd
        if not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.dim() != 3 \
                or features.shape[-1] != d:
            raise ValueError(f"features: expected floating (batch, time, {d}) target features, "
                             f"got {describe(features)}")
        token_ids(tokens, "tokens", dim=2, expected="a (batch, time) torch.long tensor of token ids")
        if tokens.shape != features.shape[:2]:
            raise ValueError(f"tokens: expected {tuple(features.shape[:2])} like features, got {describe(tokens)}")
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache (head.new_cache()), got {type(cache).__name__}")
        B, T = tokens.shape
        start = 0 if cache is None else cache.length
        if cache is not None and (start + T > cache.k.shape[3] or cache.batch_size != B):
            raise ValueError(f"cache: holds {start} of {cache.k.shape[3]} pairs for batch {cache.batch_size}; "
                             f"{T} more for batch {B} do not fit")
        if positions is None:
            positions = torch.arange(start, start + T, device=tokens.device)
        elif not isinstance(positions, torch.Tensor) or positions.dtype != torch.long or positions.shape != (T,):
            raise ValueError(f"positions: expected a ({T},) torch.long tensor, got {describe(positions)}")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                                 or mask.shape != (T, start + T)):
            raise ValueError(f"mask: expected a ({T}, {start + T}) bool tensor, got {describe(mask)}")
        x = self.fc(torch.cat([target.wte(tokens), features], dim=-1)) + target.wpe(positions)  # (B, T, d)
        y = self.block(x, cache, 0, mask)  # (B, T, d): the predicted features f^_(j+1)
        if cache is not None:
            cache.advance(T)
        return y

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The target's frozen LM head on features (..., d): ``ln_f`` then the tied embedding, (..., V)."""
        target = self.target
        return F.linear(target.ln_f(features), target.wte.weight)


def _check_head(head) -> EagleHead:
    if not isinstance(head, EagleHead):
        raise TypeError(f"head: expected an EagleHead, got {type(head).__name__}")
    head.target  # noqa: B018 (raises when unattached)
    return head


def _features_for(head: EagleHead, x: torch.Tensor, features) -> torch.Tensor:
    """The target's features (B, T, d) of windows x (B, T): given, checked, or computed (no gradient)."""
    target = head.target
    token_ids(x, "x", dim=2, vocab_size=target.config.vocab_size,
              expected="a (batch, time) torch.long tensor of token ids")
    if x.shape[1] < 2:
        raise ValueError(f"x: expected windows of at least 2 tokens, got {describe(x)}")
    if x.shape[1] > target.config.block_size:
        raise ValueError(f"x: windows of {x.shape[1]} tokens exceed the target's context of {target.config.block_size}")
    if features is None:
        with torch.no_grad():
            return target.trunk(x)[-1]
    d = target.config.n_embd
    if not isinstance(features, torch.Tensor) or not features.is_floating_point() \
            or features.shape != (*x.shape, d):
        raise ValueError(f"features: expected the target's features ({x.shape[0]}, {x.shape[1]}, {d}), "
                         f"got {describe(features)}")
    return features.float()


def eagle_losses(head: EagleHead, x: torch.Tensor, features: torch.Tensor | None = None, *, noise: float = 0.1,
                 w_cls: float = 0.1, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """EAGLE's training loss on windows x (B, T) of real text, teacher-forced (Li et al. 2024a, section 4.2).

    Inputs: the pairs (f_j + u, x_(j+1)) for j = 0 .. T - 2, u ~ U(-noise, noise) per entry (the paper's
    data augmentation, 0.1); targets: the true next features f_(j+1). ``features`` (B, T, d) are the
    target's (its final residual stream before ``ln_f``), computed here when None (precomputed ones save
    the target's pass, as EAGLE trains on a fixed dataset of features). Returns ``reg`` (smooth L1,
    beta 1, mean over positions and channels), ``cls`` (cross-entropy of the drafter's token
    distribution LMHead(f^_(j+1)) to the target's p_(j+2) = softmax(LMHead(f_(j+1)))) and ``loss`` =
    reg + w_cls cls (w_cls = 0.1 in the paper)."""
    _check_head(head)
    f = _features_for(head, x, features)
    number_in(noise, "noise", 0, 1e3, expected="a noise amplitude >= 0")
    number_in(w_cls, "w_cls", 0, 1e6, expected="a weight >= 0")
    check_generator(generator)
    inputs = f[:, :-1]  # (B, T-1, d): f_j
    if noise:
        u = torch.rand(inputs.shape, generator=generator, device="cpu" if generator is None else generator.device)
        inputs = inputs + (2 * u.to(inputs.device) - 1) * noise
    with torch.no_grad():
        goal = f[:, 1:]  # (B, T-1, d): f_(j+1)
        p = head.logits(goal).softmax(dim=-1)  # (B, T-1, V): the target's distribution of x_(j+2)
    pred = head(inputs, x[:, 1:])  # (B, T-1, d)
    reg = F.smooth_l1_loss(pred, goal)
    cls = -(p * head.logits(pred).log_softmax(dim=-1)).sum(-1).mean()
    return {"reg": reg, "cls": cls, "loss": reg + w_cls * cls}


@torch.no_grad()
def eagle_acceptance(head: EagleHead, x: torch.Tensor, features: torch.Tensor | None = None, depth: int = 2,
                     ranks: int = 4) -> dict[str, list]:
    """Teacher-forced agreement of the drafter with the target at depths 1 .. ``depth`` on windows x (B, T).

    Depth 1 reads the target's true features; depth d > 1 reads the drafter's own predicted feature of
    the previous depth, with the true token (the drafter's chain after d - 1 accepted tokens), attending
    to the true pairs before the root and to its own chain, as in drafting. Over the roots j = 0 ..
    T - 1 - depth, returns per depth: ``top1`` (the drafter's argmax is the target's argmax), ``beta``
    (mean sum min(p, q), the acceptance rate of speculative sampling) and ``rank_accuracy`` (depth, ranks):
    the chance that the drafter's rank-r guess is the target's argmax, what
    :func:`arlib.decoding.tree_decoding.best_choices` reads to pick a static tree."""
    _check_head(head)
    f = _features_for(head, x, features)
    depth = positive_int(depth, "depth")
    B, T = x.shape
    n = T - 1 - depth  # roots with every compared token in the window
    if n < 1:
        raise ValueError(f"depth: {depth} is too deep for windows of {T} tokens")
    ranks = positive_int(ranks, "ranks")
    V = head.target.config.vocab_size
    if ranks > V:
        raise ValueError(f"ranks: expected at most the vocabulary's {V}, got {ranks}")
    p_logits = head.logits(f)  # (B, T, V): the target at every position
    # one cache for the true pairs (T - 1 of them) and, per depth > 1, one chained pair per root
    cache = head.new_cache(B, (T - 1) + (depth - 1) * n)
    pred = head(f[:, :-1], x[:, 1:], cache=cache)[:, :n]  # (B, n, d): f^_(j+1) from the true pairs <= j
    roots = torch.arange(n, device=x.device)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    seen = torch.ones(n, T - 1, dtype=torch.bool, device=x.device).tril()  # root j sees the true pairs <= j
    out: dict[str, list] = {"top1": [], "beta": [], "rank_accuracy": []}
    for d in range(1, depth + 1):
        if d > 1:  # the pair (f^_(j+d-1), x_(j+d)) at position j + d - 1, seeing its chain
            mask = torch.cat([seen] + [eye] * (d - 1), dim=1)  # (n, (T-1) + (d-1) n)
            pred = head(pred, x[:, d:d + n], roots + d - 1, cache=cache, mask=mask)
        q = head.logits(pred)  # (B, n, V): the drafter's guess of x_(j+d+1)
        p = p_logits[:, d:d + n]  # the target's distribution of x_(j+d+1)
        best = p.argmax(-1, keepdim=True)  # (B, n, 1)
        top = q.topk(ranks, dim=-1).indices  # (B, n, ranks)
        out["top1"].append((top[..., 0:1] == best).float().mean().item())
        out["beta"].append(torch.minimum(p.softmax(-1), q.softmax(-1)).sum(-1).mean().item())
        out["rank_accuracy"].append((top == best).float().mean((0, 1)).tolist())
    return out


class EagleDrafter(TreeDrafter):
    """Draft token trees with an :class:`EagleHead` (EAGLE-1's static trees, or EAGLE-2's dynamic ones).

    :meth:`observe` extends the head's cache with the pairs (target state, following token) of the newly
    decided positions and keeps the last predicted feature, which gives the root's children. Then
    :meth:`propose_tree` drafts depth by depth, one block call per depth for all the nodes expanded at
    that depth, with tree attention in the head's own cache (each node sees the decided pairs and its
    ancestors; position = the root's + depth); afterwards the cache is cropped back to the decided pairs.

    - static (``choices``, EAGLE-1, Li et al. 2024a, section 4.1): the tree of Medusa-style choices
      (:func:`arlib.decoding.tree_decoding.sparse_tree`); node (r_1, .., r_d) takes the drafter's rank-r_d
      guess after its parent's path. Default: a chain of ``depth`` best guesses.
    - ``dynamic=True`` (EAGLE-2, Li et al. 2024b, section 4): ``depth`` levels, ``top_k`` expanded per level,
      ``n_nodes`` kept by reranking (the reference code's defaults are depth 8, top_k 10, 59 nodes, for 7B
      models).

    Greedy decoding and the dynamic trees take the drafter's deterministic top guesses, ranked by its own
    (unprocessed) distribution as in the reference code (verification by
    :func:`arlib.decoding.tree_decoding.tree_generate` is exact for any deterministic tree). When sampling, a
    static tree's children are drawn from the drafter's processed distribution without replacement and
    verified by recursive rejection sampling (the book's choice: at temperature 1 a deterministic top guess
    is accepted with probability p(x) only; the reference code ranks its tree by the drafter's distribution
    whether or not it samples).
    ``calls`` counts the head's block calls: the one of :meth:`observe` and one per expanded depth.
    """

    uses_hidden = True

    def __init__(self, head: EagleHead, choices=None, *, dynamic: bool = False, depth: int = 5, top_k: int = 8,
                 n_nodes: int = 40):
        self.head = _check_head(head).eval()
        if not isinstance(dynamic, bool):
            raise TypeError(f"dynamic: expected True or False, got {dynamic!r}")
        self.dynamic = dynamic
        self.depth = positive_int(depth, "depth")
        self.top_k = positive_int(top_k, "top_k")
        self.n_nodes = positive_int(n_nodes, "n_nodes")
        V = head.target_config.vocab_size
        if top_k > V:
            raise ValueError(f"top_k: expected at most the vocabulary's {V} tokens, got {top_k}")
        if dynamic and choices is not None:
            raise ValueError("choices: a dynamic tree (dynamic=True) takes depth, top_k and n_nodes, not choices")
        self.shape = None if dynamic else sparse_tree(chain_choices(depth) if choices is None else choices)
        if self.shape is not None and max(self.shape.ranks) >= V:
            raise ValueError(f"choices: a rank of {max(self.shape.ranks)} needs more than the {V} tokens")
        self.reset()

    def reset(self) -> None:
        # the decided pairs (f_j, x_(j+1)), at most the context, then room for the tree's expanded nodes
        self.cache = self.head.new_cache(1, self.head.config.block_size + self._tree_slots())
        self.last = None  # (1, d): f^ predicted at the last decided pair, which gives the root's children
        self._calls = 0  # block calls of observe() not yet counted in a proposal

    def _tree_slots(self) -> int:
        """The most tree nodes one proposal runs through the block (those with children)."""
        if self.dynamic:
            return (self.depth - 1) * self.top_k
        return len(set(self.shape.parents[1:]) - {0})

    @torch.no_grad()
    def observe(self, states: torch.Tensor, tokens: torch.Tensor) -> None:
        """Extend the cache with m pairs: ``states`` (1, m, d) the target's features at the newly decided
        positions and ``tokens`` (1, m) the token following each (see
        :class:`arlib.decoding.tree_decoding.TreeDrafter`)."""
        d = self.head.config.n_embd
        if not isinstance(states, torch.Tensor) or not states.is_floating_point() or states.dim() != 3 \
                or states.shape[0] != 1 or states.shape[2] != d or states.shape[1] == 0:
            raise ValueError(f"states: expected (1, m >= 1, {d}) floating states, got {describe(states)}")
        token_ids(tokens, "tokens", dim=2, rows=1, expected="a (1, m) torch.long tensor of token ids")
        if tokens.shape != states.shape[:2]:
            raise ValueError(f"tokens: expected {tuple(states.shape[:2])} like states, got {describe(tokens)}")
        ids_in_vocab(tokens, "tokens", self.head.target_config.vocab_size)
        context = self.head.config.block_size
        if self.cache.length + states.shape[1] > context:
            raise ValueError(f"states: {self.cache.length} pairs seen and {states.shape[1]} more exceed the "
                             f"context of {context}")
        y = self.head(states.to(self.head.fc.weight.dtype), tokens, cache=self.cache)  # (1, m, d)
        self.last = y[:, -1]
        self._calls += 1

    def _run(self, parents: list[int], tokens: torch.Tensor, feats: torch.Tensor, position: int,
             start: int) -> torch.Tensor:
        """One block call for m new tree nodes at one depth: ``parents`` their parents' slots in the tree
        part of the cache (-1: the root, whose pair is decided), ``tokens`` (m,), ``feats`` (m, d) their
        parents' predicted features. Returns their predicted features (m, d)."""
        m, slots = len(parents), self._anc.shape[0]
        anc = torch.zeros(m, slots + m, dtype=torch.bool)
        for i, s in enumerate(parents):
            if s >= 0:
                anc[i, :slots] = self._anc[s]
            anc[i, slots + i] = True
        grown = torch.zeros(slots + m, slots + m, dtype=torch.bool)
        grown[:slots, :slots] = self._anc
        grown[slots:] = anc
        self._anc = grown
        device = tokens.device
        mask = torch.cat([torch.ones(m, start, dtype=torch.bool), anc], 1).to(device)  # (m, start + slots + m)
        positions = torch.full((m,), position, dtype=torch.long, device=device)
        self._calls += 1
        return self.head(feats[None], tokens[None], positions, self.cache, mask)[0]

    @torch.no_grad()
    def propose_tree(self, seq: torch.Tensor, options: SamplingOptions = _PLAIN,
                     generator: torch.Generator | None = None) -> TreeDraft:
        """A tree rooted at ``seq[0, -1]``; ``seq`` (1, L) the decided tokens, of which the drafter has
        observed the first L - 1 pairs (before any observation it proposes the root alone)."""
        L = check_seq(seq)
        check_options(options)
        check_generator(generator)
        root = seq[0, -1]
        start = self.cache.length
        if self.last is None:
            return self._done(root.view(1), [-1], [0], start)
        if start != L - 1:
            raise ValueError(f"seq: the drafter has observed {start} pairs, so it continues a sequence of "
                             f"{start + 1} tokens, got {L}")
        max_depth = min(self.depth if self.dynamic else self.shape.max_depth, self.head.config.block_size - L)
        if max_depth < 1:  # no room left in the context
            return self._done(root.view(1), [-1], [0], start)
        self._anc = torch.zeros(0, 0, dtype=torch.bool)
        if self.dynamic:
            return self._dynamic(root, start, max_depth)
        return self._static(root, start, max_depth, options, generator)

    def _done(self, tokens, parents, depths, start, probs=None) -> TreeDraft:
        self.cache.crop(start)  # forget the tree's keys: only decided pairs stay
        calls, self._calls = self._calls, 0
        device = tokens.device
        return TreeDraft(TokenTree(tokens, torch.tensor(parents, device=device), torch.tensor(depths, device=device)),
                         calls, probs)

    def _static(self, root, start, max_depth, options: SamplingOptions = _PLAIN, generator=None) -> TreeDraft:
        """The static tree; when sampling (``options.greedy`` False) each node's children are drawn from the
        drafter's processed q without replacement (Gumbel-top-k, as in Recursive Speculative Decoding, Jeon
        et al. 2024) and q is returned for the walk's recursive rejection sampling; greedy takes the top ranks."""
        shape = self.shape
        N = sum(1 for d in shape.depths if d <= max_depth)  # nodes sorted by depth: a prefix
        parents, depths, ranks = shape.parents[:N], shape.depths[:N], shape.ranks[:N]
        has_kids = [False] * N
        for a in parents[1:]:
            has_kids[a] = True
        tokens = root.new_empty(N)
        tokens[0] = root
        sampled = not options.greedy
        probs = torch.zeros(N, self.head.target_config.vocab_size, device=root.device) if sampled else None
        feat = {0: self.last[0]}  # node -> the feature its children's pairs read (d,)
        slot = {0: -1}
        logits = self.head.logits(self.last)  # (1, V): the root's children
        level = [0]  # nodes at depth d whose children are next
        for d in range(1, max_depth + 1):
            kids = [i for i in range(N) if depths[i] == d]
            if not kids:
                break
            rows = {u: r for r, u in enumerate(level)}
            k = max(ranks[i] for i in kids) + 1
            if sampled:  # k draws without replacement from q per expanded node: the Gumbel-top-k trick
                z = options.process(logits)  # (len(level), V)
                top = (z + gumbel_noise(z.shape, generator, z.device)).topk(k, dim=-1).indices
                probs[torch.tensor(level, device=root.device)] = z.softmax(-1).to(probs.dtype)
            else:
                top = logits.topk(k, dim=-1).indices  # (len(level), k)
            for i in kids:
                tokens[i] = top[rows[parents[i]], ranks[i]]
            expand = [i for i in kids if has_kids[i]]
            if not expand:
                break
            out = self._run([slot[parents[i]] for i in expand], tokens[expand],
                            torch.stack([feat[parents[i]] for i in expand]), start + d - 1, start)
            base = self._anc.shape[0] - len(expand)
            for j, i in enumerate(expand):
                feat[i], slot[i] = out[j], base + j
            logits = self.head.logits(out)  # (len(expand), V)
            level = expand
        return self._done(tokens, parents, depths, start, probs)

    def _dynamic(self, root, start, max_depth) -> TreeDraft:
        K = self.top_k
        logp = self.head.logits(self.last).log_softmax(-1)[0]  # (V,)
        top = logp.topk(K)
        # candidates in creation order: token, value (log of the product of confidences), parent, depth
        tok, val, par, dep = [top.indices], [top.values], [torch.full((K,), -1)], [1]
        frontier = torch.arange(K)  # candidate ids expanded next
        values = top.values
        feats = self.last.expand(K, -1)  # (K, d): the features the frontier's pairs read
        parent_slots = [-1] * K
        count = K
        for d in range(2, max_depth + 1):
            tokens = torch.cat(tok)[frontier]
            out = self._run(parent_slots, tokens, feats, start + d - 2, start)  # (m, d): the frontier's features
            base = self._anc.shape[0] - len(frontier)
            lp = self.head.logits(out).log_softmax(-1)  # (m, V)
            top = lp.topk(K, dim=-1)  # (m, K): each expanded node's K best children
            cum = values[:, None] + top.values  # (m, K): the children's values
            tok.append(top.indices.reshape(-1))
            val.append(cum.reshape(-1))
            par.append(frontier.repeat_interleave(K).cpu())
            dep.append(d)
            best = cum.reshape(-1).topk(min(K, cum.numel())).indices.cpu()  # expansion: the K best of this depth
            parents_of_best = best // K
            frontier = count + best
            values = cum.reshape(-1)[best.to(cum.device)]
            feats = out[parents_of_best.to(out.device)]
            parent_slots = (base + parents_of_best).tolist()
            count += cum.numel()
        tokens, values = torch.cat(tok), torch.cat(val).cpu()
        parents = torch.cat(par).tolist()
        depths = [x for i, d in enumerate(dep) for x in [d] * len(tok[i])]
        # reranking: the n_nodes best values; ties go to the earlier (shallower) candidate, so a parent
        # (whose value is never below its child's) is always kept with its child
        order = torch.sort(-values, stable=True).indices[:self.n_nodes]
        keep = sorted(order.tolist())
        new_id = {c: j + 1 for j, c in enumerate(keep)}
        new_id[-1] = 0
        node_tokens = torch.cat([root.view(1), tokens[torch.tensor(keep, device=tokens.device)]])
        return self._done(node_tokens, [-1] + [new_id[parents[c]] for c in keep], [0] + [depths[c] for c in keep],
                          start)
