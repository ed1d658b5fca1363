"""Hostile inputs for the EAGLE drafter (arlib.decoding.eagle) and its recipe (arlib.decoding.recipes)."""

import torch
from hostile import rejects
from tiny_models import tiny_gpt

import arlib.decoding.recipes as drec
from arlib.decoding.eagle import EagleDrafter, EagleHead, eagle_acceptance, eagle_losses
from arlib.text.gpt import GPTConfig

COVERED = {"arlib.decoding.eagle.EagleHead", "arlib.decoding.eagle.eagle_losses",
           "arlib.decoding.eagle.eagle_acceptance", "arlib.decoding.eagle.EagleDrafter",
           "arlib.decoding.recipes.build_eagle_head", "arlib.decoding.recipes.run_eagle_recipe",
           "arlib.decoding.recipes.target_features", "arlib.decoding.recipes.load_eagle_head"}

V = 13


def _head():
    target = tiny_gpt(0, vocab_size=V)
    return target, EagleHead(target).eval()


def test_bad_heads_are_named():
    target, head = _head()
    rejects(EagleHead, "gpt", arg="target")
    rejects(EagleHead(GPTConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=16)).attach, "gpt", arg="target")
    other = tiny_gpt(0, vocab_size=V + 1)
    rejects(EagleHead(target.config).attach, other, arg="target")
    rejects(EagleHead(target.config).logits, torch.randn(2, 16), arg="target")  # not attached
    f, x = torch.randn(1, 5, 16), torch.randint(0, V, (1, 5))
    rejects(head, f[..., :8], x, arg="features")
    rejects(head, f.long(), x, arg="features")
    rejects(head, f, x[:, :4], arg="tokens")
    rejects(head, f, x.float(), arg="tokens")
    rejects(head, f, x, torch.arange(4), arg="positions")
    rejects(head, f, x, cache="cache", arg="cache")
    rejects(head, f, x, cache=head.new_cache(1, 3), arg="cache")  # 5 pairs do not fit 3
    rejects(head, f, x, cache=head.new_cache(2), arg="cache")  # batch 2 for batch 1
    rejects(head, f, x, cache=head.new_cache(1), mask=torch.ones(5, 4, dtype=torch.bool), arg="mask")
    rejects(head.new_cache, 1, 0, arg="length")


def test_bad_losses_and_acceptance_are_named():
    _, head = _head()
    x = torch.randint(0, V, (2, 10))
    rejects(eagle_losses, "head", x, arg="head")
    rejects(eagle_losses, EagleHead(head.target_config), x, arg="target")
    rejects(eagle_losses, head, x[:, :1], arg="x")
    rejects(eagle_losses, head, x + V, arg="x")
    rejects(eagle_losses, head, x.float(), arg="x")
    rejects(eagle_losses, head, torch.randint(0, V, (1, 65)), arg="x")  # beyond the context of 64
    rejects(eagle_losses, head, x, torch.randn(2, 9, 16), arg="features")
    rejects(eagle_losses, head, x, noise=-0.1, arg="noise")
    rejects(eagle_losses, head, x, w_cls=float("nan"), arg="w_cls")
    rejects(eagle_losses, head, x, generator="seed", arg="generator")
    rejects(eagle_acceptance, head, x, depth=0, arg="depth")
    rejects(eagle_acceptance, head, x, depth=9, arg="depth")
    rejects(eagle_acceptance, head, x, ranks=0, arg="ranks")
    rejects(eagle_acceptance, head, x, ranks=V + 1, arg="ranks")
    rejects(eagle_acceptance, head, x, torch.randn(2, 10, 8), arg="features")


def test_bad_drafters_are_named():
    target, head = _head()
    rejects(EagleDrafter, "head", arg="head")
    rejects(EagleDrafter, EagleHead(target.config), arg="target")
    rejects(EagleDrafter, head, [(1, 0)], arg="choices")  # no parent (1,)
    rejects(EagleDrafter, head, [(V,)], arg="choices")  # a rank beyond the vocabulary
    rejects(EagleDrafter, head, [(0,)], dynamic=True, arg="choices")
    rejects(EagleDrafter, head, dynamic="yes", arg="dynamic")
    rejects(EagleDrafter, head, dynamic=True, top_k=V + 1, arg="top_k")
    rejects(EagleDrafter, head, dynamic=True, top_k=0, arg="top_k")
    rejects(EagleDrafter, head, depth=0, arg="depth")
    rejects(EagleDrafter, head, dynamic=True, n_nodes=0, arg="n_nodes")
    drafter = EagleDrafter(head)
    rejects(drafter.observe, torch.randn(1, 3, 8), torch.randint(0, V, (1, 3)), arg="states")
    rejects(drafter.observe, torch.randn(1, 0, 16), torch.randint(0, V, (1, 0)), arg="states")
    rejects(drafter.observe, torch.randn(1, 3, 16), torch.randint(0, V, (1, 2)), arg="tokens")
    rejects(drafter.observe, torch.randn(1, 3, 16), torch.full((1, 3), V), arg="tokens")
    rejects(drafter.observe, torch.randn(1, 65, 16), torch.zeros(1, 65, dtype=torch.long), arg="states")
    rejects(drafter.propose_tree, torch.tensor([1, 2]), arg="seq")
    rejects(drafter.propose_tree, torch.tensor([[1, 2]]), "greedy", arg="options")
    rejects(drafter.propose_tree, torch.tensor([[1, 2]]), generator=3, arg="generator")
    drafter.observe(torch.randn(1, 3, 16), torch.randint(0, V, (1, 3)))
    rejects(drafter.propose_tree, torch.tensor([[1, 2]]), arg="seq")  # 3 pairs seen: a sequence of 4


def test_bad_eagle_recipe_arguments_are_named(tmp_path):
    rejects(drec.build_eagle_head, {}, arg="meta")
    rejects(drec.build_eagle_head, "shakespeare-eagle", arg="meta")
    rejects(drec.run_eagle_recipe, "no-such-recipe", arg="name")
    rejects(drec.run_eagle_recipe, "shakespeare-eagle", steps=0, arg="steps")
    rejects(drec.run_eagle_recipe, "shakespeare-eagle", steps=2, eval_chars=-5, arg="eval_chars")
    target = tiny_gpt(0, vocab_size=V)
    rejects(drec.target_features, "gpt", torch.zeros(1, 4, dtype=torch.long), arg="target")
    rejects(drec.target_features, target, torch.zeros(4, dtype=torch.long), arg="windows")
    rejects(drec.target_features, target, torch.zeros(1, 4, dtype=torch.long), 0, arg="batch")
    rejects(drec.load_eagle_head, "gpt", arg="target")
    rejects(drec.load_eagle_head, target, "no-such-checkpoint", tmp_path, arg="name")
