"""Speculative decoding over token trees: several guesses per position, one target pass, exact output.

A chain drafter proposes one continuation; when its first guess is wrong the step is lost. Medusa (Cai
et al. 2024, section 2.1.2), SpecInfer (Miao et al. 2024) and EAGLE (Li et al. 2024) propose a *tree*
instead: the root is the last decided token, each node's children are the drafter's best guesses for
the token after the node's path. One target pass with tree attention (:mod:`arlib.decoding.tree`) gives
the target's distribution at every node; verification walks down from the root.

The walk (:func:`walk_tree`). At node u the target's processed distribution is p_u and the children's
tokens c_1, c_2, ... are tried in the drafter's order, each as a one-hot draft (q = delta at c_i, so the
test of Leviathan et al. accepts it with probability p(c_i)); after a rejection p loses c_i and is
renormalized (the residual ``norm(max(0, p - q))`` of a one-hot q) before the next child is tried. This
is SpecInfer's multi-draft (recursive) rejection for deterministic drafts, without replacement since
siblings are distinct; Medusa's and EAGLE's reference implementations verify their top-k trees this way.
If a child is accepted the walk moves to it; if every child is rejected (or u is a leaf) the next token
is drawn from what is left of p_u and the step ends. By induction on the depth, each emitted token
is distributed exactly as the target's p given the tokens before it, whatever the drafter proposes.
Greedy decoding accepts the child whose token is the argmax of p_u, if there is one.

Tree shapes. :func:`sparse_tree` builds a static shape from Medusa-style *choices* (tuples of ranks: (0,)
is the drafter's best first token, (1, 0) the best second token after its second-best first token);
:func:`best_choices` picks the n nodes with the highest estimated chance of acceptance from per-depth
top-k accuracies, as Medusa-1 builds its sparse trees. :class:`HeadTreeDrafter` drafts such a tree with
Medusa heads (every node at depth d takes the top-ranked guesses of head d, blind to its parent) or
Hydra heads (each node's children come from its own path); :mod:`arlib.decoding.eagle` drafts with an
EAGLE head.
"""

from __future__ import annotations

import heapq
import time
from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np
import torch

from arlib.decoding.draft_heads import HydraHeads, MedusaHeads
from arlib.decoding.drafters import SamplingOptions, check_options, check_prompt, check_seq
from arlib.decoding.speculative import SpecStats
from arlib.decoding.tree import TokenTree, keep_path, tree_mask
from arlib.text.gpt import GPT
from arlib.text.sampling import gumbel_noise
from arlib.validate import describe, float_tensor, ids_in_vocab, positive_int
from arlib.validate import generator as check_generator

_PLAIN = SamplingOptions()  # sampling at temperature 1, no truncation

__all__ = ["TreeDraft", "TreeDrafter", "TreeShape", "sparse_tree", "chain_choices", "best_choices", "walk_tree",
           "head_topk_accuracy", "HeadTreeDrafter", "tree_generate"]


class TreeDraft(NamedTuple):
    """A proposal: ``tree`` (node 0 is the root, the last decided token; siblings carry distinct tokens,
    in the drafter's order of preference), ``calls``, the drafter's forward passes spent, and ``probs``:
    None when the children are deterministic candidates (one-hot drafts), else (N, V) the distribution q
    each node's children were drawn from, one after the other without replacement (rows of childless
    nodes are ignored). Limitation: a plain record; :func:`tree_generate` checks a generation's first tree."""

    tree: TokenTree
    calls: int = 0
    probs: torch.Tensor | None = None


class TreeDrafter(ABC):
    """The interface of a tree drafter.

    ``observe(states, tokens)`` hands over the target's final residual stream (before ``ln_f``) at the m
    positions decided since the previous call, states (1, m, d), and the token that follows each of them,
    tokens (1, m) (state j gave the logits of ``tokens[0, j]``): after the prompt's prefill, positions
    0 .. T - 2; after a step that accepted k nodes and drew one more token, m = k + 1.
    ``propose_tree(seq, options, generator)`` returns a :class:`TreeDraft` rooted at ``seq[0, -1]``.
    """

    uses_hidden: bool = True

    def reset(self) -> None:
        """Called before a new sequence (no-op by default)."""
        return None

    def observe(self, states: torch.Tensor, tokens: torch.Tensor) -> None:
        """Receive the target's states at newly decided positions (no-op by default)."""
        return None

    @abstractmethod
    def propose_tree(self, seq: torch.Tensor, options: SamplingOptions = _PLAIN,
                     generator: torch.Generator | None = None) -> TreeDraft: ...


# --- static tree shapes ------------------------------------------------------------------------------


class TreeShape(NamedTuple):
    """A static tree without its tokens: node 0 is the root; for node i >= 1, ``parents[i]``,
    ``depths[i]`` and ``ranks[i]`` (which of the drafter's guesses at its parent it holds, 0 = best).
    Nodes are sorted by depth, so a parent precedes its children. ``choices`` is what it was built from."""

    parents: list[int]
    depths: list[int]
    ranks: list[int]
    choices: list[tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def max_rank(self, depth: int) -> int:
        """The largest rank used at ``depth`` (-1 if none): top-(max_rank + 1) guesses are needed there."""
        return max((r for r, d in zip(self.ranks, self.depths) if d == depth), default=-1)


def sparse_tree(choices) -> TreeShape:
    """The tree of Medusa-style ``choices``: tuples of ranks, one per node, e.g. ``[(0,), (1,), (0, 0)]``
    (the best first guess, the second-best first guess, the best guess after the best first guess).
    Every prefix of a choice must be a choice too (a node needs its parent)."""
    if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__"):
        raise TypeError(f"choices: expected a list of tuples of ranks, got {type(choices).__name__}")
    paths = []
    for c in choices:
        if not isinstance(c, (tuple, list)) or not c or not all(
                isinstance(r, (int, np.integer)) and not isinstance(r, bool) and r >= 0 for r in c):
            raise ValueError(f"choices: expected non-empty tuples of ranks >= 0, got {c!r}")
        paths.append(tuple(int(r) for r in c))
    if len(set(paths)) != len(paths):
        raise ValueError("choices: a choice appears twice")
    known = set(paths)
    for c in paths:
        if len(c) > 1 and c[:-1] not in known:
            raise ValueError(f"choices: {c!r} has no parent {c[:-1]!r} among the choices")
    paths.sort(key=lambda c: (len(c), c))
    index = {(): 0}
    parents, depths, ranks = [-1], [0], [0]
    for c in paths:
        index[c] = len(parents)
        parents.append(index[c[:-1]])
        depths.append(len(c))
        ranks.append(c[-1])
    return TreeShape(parents, depths, ranks, paths)


def chain_choices(depth: int) -> list[tuple[int, ...]]:
    """The chain of the best guesses, ``depth`` deep: ``[(0,), (0, 0), ...]``."""
    positive_int(depth, "depth")
    return [(0,) * d for d in range(1, depth + 1)]


def best_choices(accuracy, n_nodes: int) -> list[tuple[int, ...]]:
    """Medusa-1's sparse tree (Cai et al. 2024, section 2.1.2): the ``n_nodes`` choices with the highest
    estimated probability of acceptance, ``prod_d accuracy[d, r_d]`` along the path, where
    ``accuracy`` (D, K) holds, per depth d, the chance that the drafter's rank-r guess is the target's
    token (estimated on held-out text). Grown best-first from the root, so every parent is included
    before its children; the expected number of accepted tokens is the sum of the chosen paths' products."""
    acc = float_tensor(accuracy, "accuracy", dim=2).double().cpu().numpy()
    if not np.isfinite(acc).all() or acc.min() < 0 or acc.max() > 1:
        raise ValueError("accuracy: expected probabilities in [0, 1]")
    positive_int(n_nodes, "n_nodes")
    D, K = acc.shape
    frontier = [(-acc[0, r], (r,)) for r in range(K)]  # (-probability, choice): a max-heap
    heapq.heapify(frontier)
    chosen = []
    while frontier and len(chosen) < n_nodes:
        neg, c = heapq.heappop(frontier)
        chosen.append(c)
        if len(c) < D:
            for r in range(K):
                heapq.heappush(frontier, (neg * acc[len(c), r], c + (r,)))
    return chosen


@torch.no_grad()
def head_topk_accuracy(target: GPT, heads: MedusaHeads | HydraHeads, x: torch.Tensor, k: int = 8) -> torch.Tensor:
    """Per depth d = 1 .. K and rank r < k, how often the heads' rank-r guess at depth d is the target's
    greedy token there, teacher-forced on windows of real text x (B, T): (K, k), the ``accuracy`` that
    :func:`best_choices` takes. Head d reads h_t (and, for Hydra, the true tokens x_(t+1) .. x_(t+d));
    the target's token is its argmax after the true prefix x_(<= t+d). Medusa-1 estimates its trees'
    accuracies this way on calibration data (with the true next tokens instead of the target's)."""
    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    if not isinstance(heads, (MedusaHeads, HydraHeads)):
        raise TypeError(f"heads: expected MedusaHeads or HydraHeads, got {type(heads).__name__}")
    K = heads.n_heads
    x = torch.as_tensor(x)
    if x.dtype != torch.long or x.dim() != 2 or x.shape[1] <= K + 1:
        raise ValueError(f"x: expected (batch, time > {K + 1}) torch.long windows, got {describe(x)}")
    ids_in_vocab(x, "x", target.config.vocab_size)
    V = heads.unembed[0].proj.out_features
    k = min(positive_int(k, "k"), V)
    logits, hidden = target(x, return_hidden=True)
    best = logits.argmax(-1)  # (B, T): the target's greedy token after each true prefix
    n = x.shape[1] - K
    h = hidden[-1][:, :n]  # (B, n, d)
    if isinstance(heads, MedusaHeads):
        guesses = heads(h)  # (B, n, K, V)
    else:
        guesses = heads(h, torch.stack([x[:, d:d + n] for d in range(1, K + 1)], dim=-1))
    top = guesses.topk(k, dim=-1).indices  # (B, n, K, k)
    wanted = torch.stack([best[:, d:d + n] for d in range(1, K + 1)], dim=-1)  # (B, n, K)
    hits = (top == wanted[..., None]).double()  # (B, n, K, k)
    return hits.mean(dim=(0, 1))  # (K, k)


# --- verification ------------------------------------------------------------------------------------


def _children(parents: list[int]) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in parents]
    for i, parent in enumerate(parents):
        if parent >= 0:
            kids[parent].append(i)
    return kids


def walk_tree(p: torch.Tensor, tokens: torch.Tensor, parents, generator: torch.Generator | None = None,
              greedy: bool = False, q: torch.Tensor | None = None) -> tuple[list[int], int]:
    """Verify a token tree: ``p`` (N, V) the target's processed distribution at each node (rows need not
    be normalized), ``tokens`` (N,) and ``parents`` (N,) the tree. Returns the accepted path (node ids
    from the root 0) and the next token, drawn from what is left of the last node's distribution.

    With ``q`` None the children are one-hot drafts (see the module's docstring). With ``q`` (N, V), node
    u's children were drawn from q_u one after the other without replacement, and the walk applies
    recursive rejection sampling without replacement (SpecInfer's multi-draft rule, Miao et al. 2024;
    the without-replacement form of Jeon et al. 2024): child c is accepted with probability
    ``min(1, p(c) / q(c))``; after a rejection p becomes ``norm(max(0, p - q))`` and q loses c
    (renormalized). ``greedy`` accepts the child holding the argmax of p and returns the argmax at the
    last node. Uniforms come from ``generator``."""
    p = float_tensor(p, "p", dim=2)
    N, V = p.shape
    tokens = torch.as_tensor(tokens)
    if tokens.dtype != torch.long or tuple(tokens.shape) != (N,):
        raise ValueError(f"tokens: expected ({N},) torch.long node tokens, got {describe(tokens)}")
    ids_in_vocab(tokens, "tokens", V)
    parents = torch.as_tensor(parents).tolist()
    if len(parents) != N or parents[0] != -1 or any(not 0 <= a < i for i, a in enumerate(parents) if i):
        raise ValueError("parents: expected -1 for the root and, for every other node, an earlier node")
    check_generator(generator)
    rows = p.detach().double().cpu().numpy()
    if not np.isfinite(rows).all() or (rows < 0).any() or (rows.sum(1) <= 0).any():
        raise ValueError("p: expected finite, non-negative rows with positive mass")
    kids = _children(parents)
    q_rows = None
    if q is not None:
        q = float_tensor(q, "q", dim=2)
        if tuple(q.shape) != (N, V):
            raise ValueError(f"q: expected ({N}, {V}) like p, got {describe(q)}")
        q_rows = q.detach().double().cpu().numpy()
        token_list = tokens.tolist()
        for u, children in enumerate(kids):
            row = q_rows[u]
            if children and (not np.isfinite(row).all() or (row < 0).any()
                             or any(row[token_list[c]] <= 0 for c in children)):
                raise ValueError(f"q: node {u}'s row must be finite, non-negative and positive at its children")
    return _walk(rows, tokens.tolist(), kids, generator, greedy, q_rows)


def _uniform(generator) -> float:
    """One uniform in [0, 1) from ``generator``, on its own device (a CUDA generator draws on the GPU)."""
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, device=device))


def _walk(rows: np.ndarray, tokens: list[int], kids: list[list[int]], generator, greedy: bool,
          q: np.ndarray | None = None):
    """:func:`walk_tree` on checked host data: rows (N, V) and q (N, V) or None, float64."""
    node, path = 0, [0]
    while True:
        if greedy:
            best = int(rows[node].argmax())
            nxt = next((c for c in kids[node] if tokens[c] == best), None)
            if nxt is None:
                return path, best
            node = nxt
            path.append(node)
            continue
        left = rows[node] / rows[node].sum()  # (V,) what is left of p_u
        drafts = None if q is None or not kids[node] else q[node] / q[node].sum()  # (V,) what is left of q_u
        accepted = None
        for child in kids[node]:
            t = tokens[child]
            if drafts is None:  # a one-hot draft: accept w.p. p(t); the residual is p without t
                if _uniform(generator) < left[t]:
                    accepted = child
                    break
                left = left.copy()
                left[t] = 0.0
            else:  # a draft from q: accept w.p. min(1, p/q); the residual is norm(max(0, p - q))
                if _uniform(generator) < left[t] / drafts[t]:
                    accepted = child
                    break
                rest = np.maximum(left - drafts, 0.0)
                if rest.sum() > 0:  # p <= q everywhere means p = q and no rejection (bar rounding)
                    left = rest
                drafts = drafts.copy()
                drafts[t] = 0.0  # without replacement: the next child was drawn from q without t
                if drafts.sum() > 0:
                    drafts = drafts / drafts.sum()
            left = left / left.sum()
        if accepted is None:
            u = _uniform(generator)
            cdf = np.cumsum(left)
            return path, int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(left) - 1))
        node = accepted
        path.append(node)


# --- drafting with Medusa or Hydra heads --------------------------------------------------------------


class HeadTreeDrafter(TreeDrafter):
    """Draft a static tree (:func:`sparse_tree`) with Medusa or Hydra heads on the target's state h_t.

    The root is the last decided token x_(t+1). Medusa (Cai et al. 2024): head d guesses x_(t+1+d) from
    h_t alone, so every node at depth d takes the rank-r guess of head d, whatever its parent: one call
    of all heads. Hydra (Ankner et al. 2024): head d also reads the embeddings of the path's tokens, so
    the children of each node come from its own path: one batched head call per depth.

    Greedy decoding takes the heads' top-ranked tokens (rank r = the r-th largest logit). Sampling draws
    each node's children from the head's processed distribution q without replacement (the Gumbel-top-k
    trick, as Recursive Speculative Decoding builds its trees, Jeon et al. 2024: rank r = the r-th
    largest perturbed logit) and returns q, so that the walk can apply recursive
    rejection sampling (:func:`walk_tree`); top-ranked candidates would be accepted with p(x) only, well
    below ``sum min(p, q)`` when the target is not confident.
    """

    def __init__(self, heads: MedusaHeads | HydraHeads, choices):
        if not isinstance(heads, (MedusaHeads, HydraHeads)):
            raise TypeError(f"heads: expected MedusaHeads or HydraHeads, got {type(heads).__name__}")
        self.heads = heads.eval()
        self.shape = shape = sparse_tree(choices)
        if shape.max_depth > heads.n_heads:
            raise ValueError(f"choices: {shape.max_depth} deep, but there are only {heads.n_heads} heads")
        V = heads.unembed[0].proj.out_features
        if max(shape.ranks) >= V:
            raise ValueError(f"choices: a rank of {max(shape.ranks)} needs more than the {V} tokens")
        kids = _children(shape.parents)
        ancestors = [[0]]
        for i in range(1, len(shape)):
            ancestors.append(ancestors[shape.parents[i]] + [i])
        self._levels = []  # per depth d with children: (parents (n,), their paths (n, d + 1), child ids, rows, ranks)
        for d in range(shape.max_depth):
            parents = [u for u in range(len(shape)) if shape.depths[u] == d and kids[u]]
            children = [(c, row, shape.ranks[c]) for row, u in enumerate(parents) for c in kids[u]]
            ids, rows, ranks = (torch.tensor(col) for col in zip(*children))
            self._levels.append((torch.tensor(parents), torch.tensor([ancestors[u] for u in parents]), ids, rows,
                                 ranks, max(shape.ranks[c] for c, _, _ in children) + 1))
        self._parents = torch.tensor(shape.parents)
        self._depths = torch.tensor(shape.depths)
        self.reset()

    def reset(self) -> None:
        self.h = None  # (1, d): the state whose logits gave the last decided token

    def observe(self, states: torch.Tensor, tokens: torch.Tensor) -> None:
        d = self.heads.unembed[0].proj.in_features
        if not isinstance(states, torch.Tensor) or not states.is_floating_point() or states.dim() != 3 \
                or states.shape[0] != 1 or states.shape[2] != d or states.shape[1] == 0:
            raise ValueError(f"states: expected (1, m >= 1, {d}) floating states, got {describe(states)}")
        self.h = states[:, -1]

    def _ranked(self, logits: torch.Tensor, k: int, options: SamplingOptions, generator):
        """The top-k ranked tokens (n, k) of logits (n, V), and q (n, V) when sampling (else None)."""
        if options.greedy:
            return logits.topk(k, dim=-1).indices, None
        z = options.process(logits)  # (n, V)
        noise = gumbel_noise(z.shape, generator, z.device)
        return (z + noise).topk(k, dim=-1).indices, z.softmax(dim=-1)  # Gumbel-top-k: k draws without replacement

    @torch.no_grad()
    def propose_tree(self, seq, options=_PLAIN, generator=None) -> TreeDraft:
        check_seq(seq)
        check_options(options)
        root = seq[0, -1]
        device = root.device
        if self.h is None:  # a one-token prompt: nothing seen yet, no guesses
            return TreeDraft(TokenTree(root.view(1), torch.tensor([-1], device=device),
                                       torch.tensor([0], device=device)), 0)
        N, V = len(self.shape), self.heads.unembed[0].proj.out_features
        tokens = root.new_empty(N)
        tokens[0] = root
        probs = None if options.greedy else torch.zeros(N, V, device=device)
        if isinstance(self.heads, MedusaHeads):
            logits = self.heads(self.h, len(self._levels))[0]  # (D, V): head d + 1 guesses depth d + 1
            for d, (parents, _, ids, _rows, ranks, k) in enumerate(self._levels):
                top, q = self._ranked(logits[d:d + 1], k, options, generator)  # one draw shared by the level
                tokens[ids.to(device)] = top[0, ranks.to(device)]
                if q is not None:
                    probs[parents.to(device)] = q
            calls = 1
        else:
            for d, (parents, paths, ids, rows, ranks, k) in enumerate(self._levels):
                emb = self.heads.embed(tokens[paths.to(device)])  # (n, d + 1, dim): each parent's path
                logits = self.heads.head(d, self.h.expand(len(parents), -1), list(emb.unbind(1)))  # (n, V)
                top, q = self._ranked(logits, k, options, generator)
                tokens[ids.to(device)] = top[rows.to(device), ranks.to(device)]
                if q is not None:
                    probs[parents.to(device)] = q
            calls = len(self._levels)
        tree = TokenTree(tokens, self._parents.to(device), self._depths.to(device))
        return TreeDraft(tree, calls, probs)


# --- the generation loop -----------------------------------------------------------------------------


def _check_tree_draft(draft, root: int, vocab_size: int) -> TokenTree:
    if not isinstance(draft, TreeDraft) or not isinstance(draft.tree, TokenTree):
        raise TypeError(f"drafter: propose_tree must return a TreeDraft, got {type(draft).__name__}")
    tree = draft.tree
    N = len(tree)
    parents = tree.parents.tolist()
    if N == 0 or int(tree.tokens[0]) != root or parents[0] != -1:
        raise ValueError("drafter: a tree's node 0 must be the root, the last decided token")
    if any(not 0 <= a < i for i, a in enumerate(parents) if i):
        raise ValueError("drafter: every node's parent must be an earlier node")
    if tree.depths.tolist() != [0] + [tree.depths.tolist()[a] + 1 for a in parents[1:]]:
        raise ValueError("drafter: depths must be the parents' depths plus one")
    ids_in_vocab(tree.tokens.view(1, -1), "drafter", vocab_size)
    for kids in _children(parents):
        if len({int(tree.tokens[c]) for c in kids}) != len(kids):
            raise ValueError("drafter: siblings must carry distinct tokens")
    probs = draft.probs
    if probs is not None and (not isinstance(probs, torch.Tensor) or not probs.is_floating_point()
                              or tuple(probs.shape) != (N, vocab_size)):
        raise ValueError(f"drafter: a tree's probs must be None or ({N}, {vocab_size}) floating, got {describe(probs)}")
    return tree


@torch.no_grad()
def tree_generate(target, drafter: TreeDrafter, prompt: torch.Tensor, max_new_tokens: int, *,
                  generator: torch.Generator | None = None, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, min_p: float | None = None, greedy: bool = False,
                  stats: bool = True):
    """Continue ``prompt`` (T,) or (1, T) by ``max_new_tokens`` tokens, one token tree per target pass:
    ``(tokens, SpecStats)``, or the tokens alone with ``stats=False``. Batch size 1.

    The output has the law of :func:`arlib.text.sampling.generate` on ``target`` with the same sampling
    options, and with ``greedy=True`` the same tokens. The target's cache holds every decided token but
    the last; a step scores the drafter's tree (root = the last decided token) in one pass with tree
    attention, walks it (:func:`walk_tree`), keeps the accepted path's keys and values
    (:func:`arlib.decoding.tree.keep_path`) and appends the accepted tokens and one more. In the stats,
    ``drafted`` counts the tree's nodes besides the root and ``scored`` the nodes the target scored.
    """
    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    if not isinstance(drafter, TreeDrafter):
        raise TypeError(f"drafter: expected an arlib.decoding.tree_decoding.TreeDrafter, got {type(drafter).__name__}")
    check_generator(generator)
    T = check_prompt(prompt, max_new_tokens, target.config)
    options = SamplingOptions(temperature, top_k, top_p, min_p, greedy)
    block_size = target.config.block_size
    record = SpecStats()
    start = time.perf_counter()
    device = target.wte.weight.device
    out = torch.empty(1, T + max_new_tokens, dtype=torch.long, device=device)
    out[0, :T] = prompt.reshape(-1)
    n, end = T, T + max_new_tokens
    checked = False
    was_training = target.training
    target.eval()
    drafter.reset()
    try:
        cache = target.new_cache(1)
        if T > 1:
            t0 = time.perf_counter()
            _, hidden = target(out[:, :T - 1], cache=cache, return_hidden=True)
            drafter.observe(hidden[-1], out[:, 1:T])
            record.target_time += time.perf_counter() - t0
        while n < end:
            t0 = time.perf_counter()
            draft = drafter.propose_tree(out[:, :n], options, generator)
            t1 = time.perf_counter()
            if not checked:
                tree = _check_tree_draft(draft, int(out[0, n - 1]), target.config.vocab_size)
                checked = True
            tree = draft.tree
            room = end - n  # at most room - 1 accepted nodes, then one more token: cut deeper nodes
            slots = block_size - (n - 1)  # node i's keys go to cache slot n - 1 + i: the tree must fit the context
            probs = draft.probs  # (N, V) or None
            if int(tree.depths.max()) > room - 1 or len(tree) > slots:
                tree, kept = _prune(tree, room - 1, slots)
                probs = None if probs is None else probs[kept.to(probs.device)]
            N = len(tree)
            positions = (n - 1) + tree.depths.to(device)
            logits, hidden = target(tree.tokens.view(1, N).to(device), cache=cache, return_hidden=True,
                                    validate=False, tree=(positions, tree_mask(tree, n - 1)))  # (1, N, V)
            t2 = time.perf_counter()
            rows = (logits[0] if greedy else options.probs(logits[0])).double().cpu().numpy()  # (N, V)
            q = None if greedy or probs is None else probs.double().cpu().numpy()  # (N, V)
            path, y = _walk(rows, tree.tokens.tolist(), _children(tree.parents.tolist()), generator, greedy, q)
            k = len(path) - 1
            keep_path(cache, n - 1, path)  # positions n - 1 .. n - 1 + k: the root and the accepted nodes
            out[0, n:n + k] = tree.tokens[path[1:]].to(device)
            out[0, n + k] = y
            drafter.observe(hidden[-1][:, path], out[:, n:n + k + 1])
            n += k + 1
            record.draft_time += t1 - t0
            record.target_time += t2 - t1
            record.accepted.append(k)
            record.drafted.append(N - 1)
            record.scored.append(N)
            record.target_calls += 1
            record.draft_calls += draft.calls
    finally:
        target.train(was_training)
    record.new_tokens = max_new_tokens
    record.wall_time = time.perf_counter() - start
    tokens = out[0] if prompt.dim() == 1 else out
    return (tokens, record) if stats else tokens


def _prune(tree: TokenTree, max_depth: int, max_nodes: int) -> tuple[TokenTree, torch.Tensor]:
    """The first ``max_nodes`` nodes of ``tree`` at depth <= max_depth (node order kept, so parents still
    precede children and a kept node's parent is kept), and the kept nodes' old ids."""
    keep = (tree.depths <= max_depth).nonzero().view(-1)[:max_nodes]
    new_id = torch.full((len(tree),), -1, dtype=torch.long)
    new_id[keep.cpu()] = torch.arange(len(keep))
    parents = tree.parents[keep].cpu()
    parents = torch.where(parents >= 0, new_id[parents.clamp_min(0)], parents)
    return TokenTree(tree.tokens[keep], parents.to(tree.tokens.device), tree.depths[keep]), keep
