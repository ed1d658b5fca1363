"""Token trees: several draft continuations that share their common prefixes, scored in one target pass.

SpecInfer (Miao et al. 2024) merges the drafts of a step into a token tree (a trie: one node per distinct
prefix) and scores every node in a single forward pass with *tree attention*: node i takes the position
of its depth and attends to the cached prefix and to its own ancestors only. The target's output at a
node is then exactly its next-token distribution after that node's path, as if the path had been fed as
a sequence. After verification only the accepted path's keys and values are kept, moved to consecutive
positions (:func:`keep_path`). SpecTr's draft sequences (chapter 3) are verified this way by
``spectr_generate(..., tree=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlib.validate import int_at_least, token_ids

__all__ = ["TokenTree", "build_tree", "tree_mask", "keep_path"]


@dataclass
class TokenTree:
    """``tokens`` (N,) the node tokens (node 0 is the root: the last decided token), ``parents`` (N,) each
    node's parent (-1 for the root; a parent always precedes its children), ``depths`` (N,) the root is 0,
    and ``paths`` (k, g + 1): the node of draft row r after d of its tokens (column 0 is the root), for a
    tree merged from k draft rows by :func:`build_tree`; None for a tree grown node by node
    (:mod:`arlib.decoding.tree_decoding`)."""

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    paths: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.tokens)


def build_tree(root: int, drafts: torch.Tensor) -> TokenTree:
    """Merge k draft rows (k, g) that continue the token ``root`` into a trie: rows with the same first d
    tokens share their first d nodes. N = 1 + the number of distinct prefixes, at most 1 + k g."""
    drafts = token_ids(drafts, "drafts", dim=2)
    int_at_least(root, "root", 0)
    rows = drafts.cpu().tolist()
    tokens, parents, depths = [root], [-1], [0]
    children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    paths = []
    for row in rows:
        node, path = 0, [0]
        for depth, token in enumerate(row, start=1):
            key = (node, token)
            if key not in children:
                children[key] = len(tokens)
                tokens.append(token)
                parents.append(node)
                depths.append(depth)
            node = children[key]
            path.append(node)
        paths.append(path)
    device = drafts.device
    return TokenTree(torch.tensor(tokens, device=device), torch.tensor(parents, device=device),
                     torch.tensor(depths, device=device), torch.tensor(paths, device=device))


def tree_mask(tree: TokenTree, start: int) -> torch.Tensor:
    """The attention mask (N, start + N) bool of a tree after ``start`` cached positions: node i sees
    every cached position and the nodes on its path from the root (itself included)."""
    int_at_least(start, "start", 0)
    N = len(tree)
    parents = tree.parents.tolist()
    ancestors = torch.zeros(N, N, dtype=torch.bool)
    for i, parent in enumerate(parents):  # parents precede children: copy the parent's row, add oneself
        if parent >= 0:
            ancestors[i] = ancestors[parent]
        ancestors[i, i] = True
    prefix = torch.ones(N, start, dtype=torch.bool)
    return torch.cat([prefix, ancestors], 1).to(tree.tokens.device)


def keep_path(cache, start: int, nodes: list[int]) -> None:
    """After a tree pass that wrote node i's keys and values at position ``start + i``, keep the path
    ``nodes`` (node ids from the root, increasing) at positions start, start + 1, ... and forget the rest.
    Works on :class:`arlib.text.gpt.KVCache` (its ``k``/``v`` tensors (L, B, H, T_max, D))."""
    int_at_least(start, "start", 0)
    if not nodes or nodes[0] != 0 or any(b <= a for a, b in zip(nodes, nodes[1:])):
        raise ValueError(f"nodes: expected increasing node ids starting at the root 0, got {nodes!r}")
    if start + nodes[-1] >= cache.length:
        raise ValueError(f"nodes: node {nodes[-1]} is beyond the cache's {cache.length - start} tree positions")
    source = torch.tensor(nodes, device=cache.k.device) + start
    if nodes != list(range(len(nodes))):  # the index_select copies first, so overlapping moves are safe
        cache.k[:, :, :, start:start + len(nodes)] = cache.k.index_select(3, source)
        cache.v[:, :, :, start:start + len(nodes)] = cache.v.index_select(3, source)
    cache.crop(start + len(nodes))
