"""Hostile inputs for token-tree speculative decoding (arlib.decoding.tree_decoding)."""

import torch
from hostile import rejects
from tiny_models import tiny_gpt

from arlib.decoding.draft_heads import MedusaHeads
from arlib.decoding.tree import TokenTree
from arlib.decoding.tree_decoding import (
    HeadTreeDrafter,
    TreeDraft,
    TreeDrafter,
    TreeShape,
    best_choices,
    chain_choices,
    head_topk_accuracy,
    sparse_tree,
    tree_generate,
    walk_tree,
)

COVERED = {"arlib.decoding.tree_decoding.TreeDraft", "arlib.decoding.tree_decoding.TreeDrafter",
           "arlib.decoding.tree_decoding.TreeShape", "arlib.decoding.tree_decoding.sparse_tree",
           "arlib.decoding.tree_decoding.chain_choices", "arlib.decoding.tree_decoding.best_choices",
           "arlib.decoding.tree_decoding.walk_tree", "arlib.decoding.tree_decoding.HeadTreeDrafter",
           "arlib.decoding.tree_decoding.tree_generate", "arlib.decoding.tree_decoding.head_topk_accuracy",
           "arlib.decoding.drafters.check_prompt"}


class BadDrafter(TreeDrafter):
    """Proposes the tree it was given, whatever the sequence."""

    def __init__(self, tree):
        self.tree = tree

    def propose_tree(self, seq, options=None, generator=None):
        return self.tree


def test_bad_shapes_are_named():
    rejects(sparse_tree, "0", arg="choices")
    rejects(sparse_tree, [(0,), (-1,)], arg="choices")
    rejects(sparse_tree, [(0,), (0,)], arg="choices")
    rejects(sparse_tree, [()], arg="choices")
    rejects(sparse_tree, [(0, 0)], arg="choices")
    rejects(chain_choices, 0, arg="depth")
    rejects(best_choices, torch.tensor([0.5, 0.2]), 3, arg="accuracy")
    rejects(best_choices, torch.tensor([[0.5, 1.2]]), 3, arg="accuracy")
    rejects(best_choices, torch.tensor([[0.5, float("nan")]]), 3, arg="accuracy")
    rejects(best_choices, torch.tensor([[0.5, 0.2]]), 0, arg="n_nodes")
    assert isinstance(sparse_tree([(0,)]), TreeShape) and len(sparse_tree([(0,)])) == 2


def test_bad_walks_are_named():
    p, tokens, parents = torch.tensor([[0.5, 0.5], [0.2, 0.8]]), torch.tensor([0, 1]), torch.tensor([-1, 0])
    rejects(walk_tree, p[0], tokens, parents, arg="p")
    rejects(walk_tree, -p, tokens, parents, arg="p")
    rejects(walk_tree, p * float("nan"), tokens, parents, arg="p")
    rejects(walk_tree, p, torch.tensor([0, 2]), parents, arg="tokens")
    rejects(walk_tree, p, torch.tensor([0.0, 1.0]), parents, arg="tokens")
    rejects(walk_tree, p, tokens, torch.tensor([0, 0]), arg="parents")
    rejects(walk_tree, p, tokens, torch.tensor([-1, 1]), arg="parents")
    rejects(walk_tree, p, tokens, parents, generator="seed", arg="generator")
    rejects(walk_tree, p, tokens, parents, q=p[:1], arg="q")
    rejects(walk_tree, p, tokens, parents, q=-p, arg="q")
    rejects(walk_tree, p, tokens, parents, q=torch.tensor([[1.0, 0.0], [0.5, 0.5]]), arg="q")  # q = 0 at a child
    rejects(walk_tree, p, tokens, parents, q=torch.tensor([[float("nan"), 1.0], [0.5, 0.5]]), arg="q")
    assert walk_tree(p, tokens, parents, q=torch.tensor([[0.5, 0.5], [0.0, 0.0]]))[0][0] == 0  # leaf rows unused


def test_bad_drafters_and_generation_are_named():
    target = tiny_gpt(0)
    V, d = target.config.vocab_size, target.config.n_embd
    rejects(HeadTreeDrafter, "heads", [(0,)], arg="heads")
    heads = MedusaHeads(2, d, V)
    rejects(HeadTreeDrafter, heads, [(0,), (0, 0), (0, 0, 0)], arg="choices")  # deeper than the heads
    rejects(HeadTreeDrafter, heads, [(V,)], arg="choices")
    drafter = HeadTreeDrafter(heads, [(0,), (1,)])
    rejects(drafter.observe, torch.zeros(1, d), torch.zeros(1, 1, dtype=torch.long), arg="states")
    rejects(drafter.propose_tree, torch.tensor([1, 2]), arg="seq")
    prompt = torch.tensor([[1, 2, 3]])
    rejects(tree_generate, "target", drafter, prompt, 4, arg="target")
    rejects(tree_generate, target, heads, prompt, 4, arg="drafter")
    rejects(tree_generate, target, drafter, prompt.float(), 4, arg="prompt")
    rejects(tree_generate, target, drafter, torch.tensor([[1, V]]), 4, arg="prompt")
    rejects(tree_generate, target, drafter, prompt, -1, arg="max_new_tokens")
    rejects(tree_generate, target, drafter, prompt, 1000, arg="max_new_tokens")
    rejects(tree_generate, target, drafter, prompt, 4, temperature=0.0, arg="temperature")
    rejects(tree_generate, target, drafter, prompt, 4, generator=3, arg="generator")
    root = torch.tensor([3])
    wrong_root = TreeDraft(TokenTree(torch.tensor([4, 1]), torch.tensor([-1, 0]), torch.tensor([0, 1])))
    twins = TreeDraft(TokenTree(torch.tensor([3, 1, 1]), torch.tensor([-1, 0, 0]), torch.tensor([0, 1, 1])))
    out_of_vocab = TreeDraft(TokenTree(torch.tensor([3, V]), torch.tensor([-1, 0]), torch.tensor([0, 1])))
    bad_depth = TreeDraft(TokenTree(torch.tensor([3, 1]), torch.tensor([-1, 0]), torch.tensor([0, 2])))
    for bad in (wrong_root, twins, out_of_vocab, bad_depth, "tree"):
        rejects(tree_generate, target, BadDrafter(bad), prompt, 4, arg="drafter")
    assert tree_generate(target, BadDrafter(TreeDraft(TokenTree(root, torch.tensor([-1]), torch.tensor([0])))),
                         prompt, 4, stats=False).shape == (1, 7)  # a root-only tree: plain decoding


def test_bad_accuracy_inputs_are_named():
    target = tiny_gpt(0)
    heads = MedusaHeads(2, target.config.n_embd, target.config.vocab_size)
    x = torch.randint(0, 13, (2, 10))
    rejects(head_topk_accuracy, "target", heads, x, arg="target")
    rejects(head_topk_accuracy, target, "heads", x, arg="heads")
    rejects(head_topk_accuracy, target, heads, x[:, :3], arg="x")
    rejects(head_topk_accuracy, target, heads, x.float(), arg="x")
    rejects(head_topk_accuracy, target, heads, x + 13, arg="x")
    rejects(head_topk_accuracy, target, heads, x, k=0, arg="k")


def test_bad_prompts_are_named():
    from arlib.decoding.drafters import check_prompt

    config = tiny_gpt(0).config
    rejects(check_prompt, torch.tensor([[1, 2]]), 3, "config", arg="config")
    rejects(check_prompt, torch.zeros(2, 3, dtype=torch.long), 3, config, arg="prompt")
    rejects(check_prompt, torch.tensor([], dtype=torch.long), 3, config, arg="prompt")
    rejects(check_prompt, torch.tensor([1, 2]), -1, config, arg="max_new_tokens")
    rejects(check_prompt, torch.tensor([1, 2]), config.block_size, config, arg="max_new_tokens")
    rejects(check_prompt, torch.tensor([1, config.vocab_size]), 3, config, arg="prompt")
    assert check_prompt(torch.tensor([[1, 2]]), 3, config) == 2
