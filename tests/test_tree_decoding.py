"""Token-tree speculative decoding (arlib.decoding.tree_decoding): the walk is exact, greedy trees give the
target's greedy tokens, and a broken walk fails the same chi-square test."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from tiny_models import tiny_gpt

import arlib.decoding.tree_decoding as td
from arlib.decoding.draft_heads import HydraHeads, MedusaHeads
from arlib.decoding.tree import TokenTree
from arlib.decoding.tree_decoding import (
    HeadTreeDrafter,
    TreeDraft,
    TreeDrafter,
    best_choices,
    chain_choices,
    head_topk_accuracy,
    sparse_tree,
    tree_generate,
    walk_tree,
)
from arlib.text.sampling import generate


def node_law(p: np.ndarray, candidates: list[int]) -> np.ndarray:
    """The exact law of the token a node emits next (accepted child or final draw), by enumerating the
    walk's branches: child i is reached after i rejections and accepted with what is left of p there."""
    law, left, reach = np.zeros_like(p), p / p.sum(), 1.0
    for c in candidates:
        law[c] += reach * left[c]
        reach *= 1 - left[c]
        left = left.copy()
        left[c] = 0.0
        if left.sum() == 0:
            return law
        left /= left.sum()
    return law + reach * left


@pytest.mark.parametrize("seed", range(6))
def test_the_node_rule_emits_p_exactly(seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(7, 0.4))
    p[rng.integers(7)] = 0.0  # a token the target never emits
    for k in range(0, 5):
        candidates = list(rng.permutation(7)[:k])
        assert np.allclose(node_law(p, candidates), p / p.sum(), atol=1e-15)


def test_sparse_tree_and_best_choices():
    shape = sparse_tree([(0, 0), (1,), (0,)])
    assert shape.parents == [-1, 0, 0, 1] and shape.depths == [0, 1, 1, 2] and shape.ranks == [0, 0, 1, 0]
    assert chain_choices(3) == [(0,), (0, 0), (0, 0, 0)]
    acc = torch.tensor([[0.6, 0.2, 0.1], [0.5, 0.1, 0.05]])
    assert best_choices(acc, 4) == [(0,), (0, 0), (1,), (1, 0)]  # 0.6, 0.3, 0.2, 0.1
    with pytest.raises(ValueError, match="choices"):
        sparse_tree([(0, 1)])  # no parent (0,)


class RandomTreeDrafter(TreeDrafter):
    """Random trees of random tokens (distinct siblings), up to ``depth`` deep: the worst drafts. With
    ``fixed``, the same tree shape and tokens at every step (random drafts would average a bias away)."""

    def __init__(self, vocab_size, depth=2, width=3, seed=0, fixed=False):
        self.V, self.depth, self.width, self.seed, self.fixed = vocab_size, depth, width, seed, fixed
        self.rng = np.random.default_rng(seed)

    def propose_tree(self, seq, options=None, generator=None):
        if self.fixed:
            self.rng = np.random.default_rng(self.seed)
        tokens, parents, depths = [int(seq[0, -1])], [-1], [0]
        frontier = [0]
        for d in range(1, self.depth + 1):
            nxt = []
            for u in frontier:
                k = int(self.rng.integers(0, self.width + 1))
                for t in self.rng.permutation(self.V)[:k]:
                    tokens.append(int(t))
                    parents.append(u)
                    depths.append(d)
                    nxt.append(len(tokens) - 1)
            frontier = nxt
        return TreeDraft(TokenTree(torch.tensor(tokens), torch.tensor(parents), torch.tensor(depths)), 1)


class OracleTreeDrafter(RandomTreeDrafter):
    """Random trees whose rank-0 chain is the target's greedy continuation: greedy steps accept it all."""

    def __init__(self, target, vocab_size, depth=3, seed=0):
        super().__init__(vocab_size, depth, 2, seed)
        self.target = target

    def propose_tree(self, seq, options=None, generator=None):
        greedy = generate(self.target, seq, self.depth, greedy=True)[0, seq.shape[1]:].tolist()
        tokens, parents, depths = [int(seq[0, -1])], [-1], [0]
        for d, t in enumerate(greedy, start=1):
            chain_parent = 0 if d == 1 else tokens.index(greedy[d - 2], 1 + (d - 2) * 2)
            tokens.append(t)
            parents.append(chain_parent)
            depths.append(d)
            other = (t + 1 + int(self.rng.integers(self.V - 1))) % self.V  # a wrong sibling
            tokens.append(other)
            parents.append(chain_parent)
            depths.append(d)
        return TreeDraft(TokenTree(torch.tensor(tokens), torch.tensor(parents), torch.tensor(depths)), 1)


def random_heads(kind, target, n_heads=3, seed=0):
    c = target.config
    heads = (MedusaHeads if kind == "medusa" else HydraHeads)(n_heads, c.n_embd, c.vocab_size)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in heads.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    return heads


@pytest.mark.parametrize("make", ["random", "oracle", "medusa", "hydra"])
def test_greedy_trees_give_the_targets_greedy_tokens(make):
    target = tiny_gpt(3)
    prompt = torch.tensor([[1, 5, 2, 7]])
    V = target.config.vocab_size
    if make == "random":
        drafter = RandomTreeDrafter(V, depth=3)
    elif make == "oracle":
        drafter = OracleTreeDrafter(target, V)
    else:
        drafter = HeadTreeDrafter(random_heads(make, target), [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    expected = generate(target, prompt, 30, greedy=True)
    tokens, record = tree_generate(target, drafter, prompt, 30, greedy=True)
    assert torch.equal(tokens, expected)
    assert sum(a + 1 for a in record.accepted) == 30 and record.target_calls == len(record.accepted)
    if make == "oracle":  # every step accepts the whole chain (but the last, cut to fit 30 tokens)
        assert record.accepted[:-1] == [3] * (len(record.accepted) - 1)


def exact_law(target, prompt, n_new):
    """The target's law of every continuation of ``n_new`` tokens, by the chain rule."""
    V = target.config.vocab_size
    seqs = list(itertools.product(range(V), repeat=n_new))
    x = torch.cat([prompt.expand(len(seqs), -1), torch.tensor(seqs)], 1)
    with torch.no_grad():
        logp = target(x).log_softmax(-1)[:, prompt.shape[1] - 1:-1]  # (S, n_new, V)
    lp = logp.gather(-1, torch.tensor(seqs)[..., None])[..., 0].sum(-1)
    return seqs, lp.exp().double()


def sampled_counts(target, drafter, prompt, n_new, runs, seed):
    V, g = target.config.vocab_size, torch.Generator().manual_seed(seed)
    counts = torch.zeros(V ** n_new, dtype=torch.float64)
    for _ in range(runs):
        out = tree_generate(target, drafter, prompt, n_new, generator=g, stats=False)[0, prompt.shape[1]:]
        counts[sum(int(t) * V ** (n_new - 1 - i) for i, t in enumerate(out))] += 1
    return counts


def _pvalue(counts, law):
    keep = law > 1e-12
    assert counts[~keep].sum() == 0
    return stats.chisquare(counts[keep].numpy(), (counts.sum() * law[keep] / law[keep].sum()).numpy()).pvalue


def _broken_walk(rows, tokens, kids, generator, greedy, q=None):
    """A wrong walk: after rejecting a child it draws from the whole of p again (no residual)."""
    node, path = 0, [0]
    while True:
        p = rows[node] / rows[node].sum()
        for child in kids[node]:
            if td._uniform(generator) < p[tokens[child]]:
                node = child
                path.append(node)
                break
        else:
            cdf = np.cumsum(p)
            return path, int(np.searchsorted(cdf, td._uniform(generator), side="right"))


def test_sampled_trees_follow_the_target_and_a_broken_walk_does_not(monkeypatch):
    target = tiny_gpt(5, vocab_size=4, std=0.3)
    prompt = torch.tensor([[1, 3, 0]])
    seqs, law = exact_law(target, prompt, 3)
    drafter = RandomTreeDrafter(4, depth=2, width=3, seed=1)
    assert _pvalue(sampled_counts(target, drafter, prompt, 3, 3000, seed=0), law) > 1e-3
    drafter = RandomTreeDrafter(4, depth=2, width=3, seed=2, fixed=True)
    assert _pvalue(sampled_counts(target, drafter, prompt, 3, 3000, seed=0), law) > 1e-3
    monkeypatch.setattr(td, "_walk", _broken_walk)
    assert _pvalue(sampled_counts(target, drafter, prompt, 3, 3000, seed=0), law) < 1e-6


def test_walk_tree_greedy_and_checks():
    p = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]])
    tokens, parents = torch.tensor([2, 0, 1]), torch.tensor([-1, 0, 0])
    assert walk_tree(p, tokens, parents, greedy=True) == ([0, 2], 2)  # argmax 1 is child 2, then argmax 2
    with pytest.raises(ValueError, match="parents"):
        walk_tree(p, tokens, torch.tensor([-1, 2, 0]))


@pytest.mark.parametrize("kind", ["medusa", "hydra"])
def test_head_topk_accuracy_counts_ranks(kind):
    target = tiny_gpt(2)
    heads = random_heads(kind, target, n_heads=2)
    x = torch.randint(0, 13, (3, 20), generator=torch.Generator().manual_seed(0))
    acc = head_topk_accuracy(target, heads, x, k=13)
    assert acc.shape == (2, 13) and torch.allclose(acc.sum(-1), torch.ones(2, dtype=acc.dtype))  # every rank once
    with torch.no_grad():  # by hand: depth 1's rank-0 guess at position 0 of row 0
        logits, hidden = target(x, return_hidden=True)
        h = hidden[-1][:1, :1]
        guess = heads(h)[0, 0, 0] if kind == "medusa" else heads(h, x[:1, 1:2, None])[0, 0, 0]
    hit = int(guess.argmax() == logits[0, 1].argmax())
    full = head_topk_accuracy(target, heads, x[:1, :4], k=1)  # n = 4 - 2 = 2 positions
    assert full[0, 0].item() in ({0.0, 0.5} if hit == 0 else {0.5, 1.0})


def test_trees_are_cut_to_fit_the_context():
    """Near the end of the context a big tree keeps only the nodes whose keys fit the cache."""
    target = tiny_gpt(3, block_size=24)
    prompt = torch.tensor([[1, 5, 2, 7]])
    drafter = RandomTreeDrafter(13, depth=3, width=4, seed=0, fixed=True)
    tokens, record = tree_generate(target, drafter, prompt, 20, greedy=True)
    assert torch.equal(tokens, generate(target, prompt, 20, greedy=True))
    assert max(record.scored) > 6 and all(n <= 24 for n in record.scored)


class SampledTreeDrafter(RandomTreeDrafter):
    """A fixed tree shape whose children are drawn from a fixed q per node, without replacement (Gumbel-top-k),
    returned as the tree's probs: the setting of recursive rejection sampling."""

    def __init__(self, vocab_size, q, width=2, depth=2, seed=0):
        super().__init__(vocab_size, depth, width, seed)
        self.q = q  # (V,) the same draft distribution at every node

    def propose_tree(self, seq, options=None, generator=None):
        tokens, parents, depths, frontier = [int(seq[0, -1])], [-1], [0], [0]
        for d in range(1, self.depth + 1):
            nxt = []
            for u in frontier:
                g = -torch.log(-torch.log(torch.rand(self.V, generator=generator)))  # Gumbel noise
                for t in (self.q.log() + g).topk(self.width).indices.tolist():
                    tokens.append(t)
                    parents.append(u)
                    depths.append(d)
                    nxt.append(len(tokens) - 1)
            frontier = nxt
        probs = self.q.expand(len(tokens), -1).clone()
        return TreeDraft(TokenTree(torch.tensor(tokens), torch.tensor(parents), torch.tensor(depths)), 1, probs)


def _no_residual_walk(rows, tokens, kids, generator, greedy, q=None):
    """A wrong walk for drafts from q: after a rejection it keeps p instead of norm(max(0, p - q))."""
    node, path = 0, [0]
    while True:
        left, drafts = rows[node] / rows[node].sum(), q[node] / q[node].sum()
        for child in kids[node]:
            t = tokens[child]
            if td._uniform(generator) < left[t] / drafts[t]:
                node = child
                path.append(node)
                break
            drafts = drafts.copy()
            drafts[t] = 0.0
            drafts /= drafts.sum()
        else:
            cdf = np.cumsum(left)
            return path, int(np.searchsorted(cdf, td._uniform(generator) * cdf[-1], side="right"))


def test_sampled_drafts_with_q_follow_the_target_and_a_walk_without_residual_does_not(monkeypatch):
    target = tiny_gpt(5, vocab_size=4, std=0.3)
    prompt = torch.tensor([[1, 3, 0]])
    seqs, law = exact_law(target, prompt, 3)
    q = torch.tensor([0.85, 0.05, 0.05, 0.05])  # far from p: many rejections
    assert _pvalue(sampled_counts(target, SampledTreeDrafter(4, q, width=3), prompt, 3, 3000, seed=0), law) > 1e-3
    drafter = SampledTreeDrafter(4, q, width=1)  # one child: a wrong residual shows most
    assert _pvalue(sampled_counts(target, drafter, prompt, 3, 3000, seed=0), law) > 1e-3
    monkeypatch.setattr(td, "_walk", _no_residual_walk)
    assert _pvalue(sampled_counts(target, drafter, prompt, 3, 3000, seed=0), law) < 1e-6


@pytest.mark.parametrize("kind", ["medusa", "hydra"])
def test_sampled_head_trees_follow_the_target(kind):
    target = tiny_gpt(5, vocab_size=4, std=0.3)
    prompt = torch.tensor([[1, 3, 0]])
    seqs, law = exact_law(target, prompt, 3)
    drafter = HeadTreeDrafter(random_heads(kind, target, n_heads=2), [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0)])
    assert _pvalue(sampled_counts(target, drafter, prompt, 3, 2000, seed=4), law) > 1e-3
    draft = drafter.propose_tree(prompt, td.SamplingOptions(), torch.Generator().manual_seed(0))
    assert draft.probs is not None and torch.allclose(draft.probs[:3].sum(-1), torch.ones(3))
