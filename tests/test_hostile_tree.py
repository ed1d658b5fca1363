"""Hostile inputs for token trees (arlib.decoding.tree) and the GPT's tree pass."""

import torch
from hostile import rejects
from tiny_models import tiny_gpt

from arlib.decoding.spectr import spectr_generate
from arlib.decoding.tree import build_tree, keep_path, tree_mask

COVERED = {"arlib.decoding.tree.TokenTree", "arlib.decoding.tree.build_tree", "arlib.decoding.tree.tree_mask",
           "arlib.decoding.tree.keep_path"}


def test_bad_trees_are_named():
    rejects(build_tree, 0, torch.tensor([1, 2]), arg="drafts")
    rejects(build_tree, 0, torch.tensor([[1.0, 2.0]]), arg="drafts")
    rejects(build_tree, -1, torch.tensor([[1, 2]]), arg="root")
    tree = build_tree(0, torch.tensor([[1, 2], [1, 3]]))
    rejects(tree_mask, tree, -2, arg="start")
    model = tiny_gpt(0, vocab_size=13)
    cache = model.new_cache(1)
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    rejects(keep_path, cache, 0, [1, 2], arg="nodes")
    rejects(keep_path, cache, 0, [0, 2, 1], arg="nodes")
    rejects(keep_path, cache, 1, [0, 5], arg="nodes")
    rejects(keep_path, cache, -1, [0], arg="start")


def test_bad_tree_passes_are_named():
    model = tiny_gpt(0, vocab_size=13)
    cache = model.new_cache(1)
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    tree = build_tree(3, torch.tensor([[1, 2], [1, 3]]))
    ok_mask, ok_pos = tree_mask(tree, 3), 3 + tree.depths
    rejects(model, tree.tokens[None], tree=(ok_pos, ok_mask), arg="tree")  # no cache
    rejects(model, tree.tokens[None], cache=cache, tree=(ok_pos.float(), ok_mask), arg="tree")
    rejects(model, tree.tokens[None], cache=cache, tree=(ok_pos, ok_mask[:, 1:]), arg="tree")
    rejects(model, tree.tokens[None], cache=cache, tree=(ok_pos - 3, ok_mask), arg="tree")
    rejects(model, tree.tokens[None], cache=cache, tree=ok_pos, arg="tree")
    rejects(spectr_generate, model, model, torch.tensor([1, 2]), 4, 2, 2, tree="yes", arg="tree")
