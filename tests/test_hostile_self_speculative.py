"""Hostile inputs for LayerSkip's self-speculative decoding (arlib.decoding.speculative) and for the dynamic
draft length of the chain decoder (speculative_generate's ``schedule``, ModelDrafter's ``confidence_stop``)."""

import numpy as np
import pytest
import torch
from hostile import rejects
from tiny_models import tiny_gpt

from arlib.decoding.draft_heads import EarlyExitModel, ExitHeads
from arlib.decoding.drafters import ModelDrafter
from arlib.decoding.speculative import layerskip_generate, speculative_generate

COVERED = {"arlib.decoding.speculative.layerskip_generate"}

TARGET = tiny_gpt(0, n_layer=3, vocab_size=13, block_size=32)
EXITS = ExitHeads(3, 16, 13)
PROMPT = torch.tensor([1, 2, 3])


def run(*args, **kwargs):
    """layerskip_generate with good defaults; positional overrides in order (target, exits, exit_layer, prompt,
    max_new_tokens, gamma)."""
    good = [TARGET, EXITS, 2, PROMPT, 4, 2]
    good[:len(args)] = args
    return layerskip_generate(*good, **kwargs)


def test_the_good_call_runs():
    out, s = run()
    assert out.shape == (7,) and s.new_tokens == 4


def test_bad_targets_and_exits_are_named():
    rejects(run, "gpt", arg="target")
    rejects(run, EarlyExitModel(TARGET, 2, EXITS), arg="target")
    rejects(run, TARGET, None, arg="exits")
    rejects(run, TARGET, EXITS.heads[1], arg="exits")
    rejects(run, TARGET, ExitHeads(4, 16, 13), arg="exits")  # heads for a 4-layer model
    rejects(run, TARGET, ExitHeads(3, 8, 13), arg="exits")  # another width
    rejects(run, TARGET, ExitHeads(3, 16, 12), arg="exits")  # another vocabulary


@pytest.mark.parametrize("exit_layer", [0, 3, -1, 1.5, True, "2", None])
def test_bad_exit_layers_are_named(exit_layer):
    rejects(run, TARGET, EXITS, exit_layer, arg="exit_layer")


def test_numpy_exit_layer_is_accepted():
    out, _ = run(TARGET, EXITS, np.int64(1))
    assert out.shape == (7,)


@pytest.mark.parametrize("prompt", [PROMPT.float(), PROMPT[:0], torch.tensor([1, 13]), torch.tensor([-1, 2]),
                                    torch.stack([PROMPT, PROMPT]), [1, 2, 3], PROMPT[None, None]])
def test_bad_prompts_are_named(prompt):
    rejects(run, TARGET, EXITS, 2, prompt, arg="prompt")


def test_bad_lengths_are_named():
    rejects(run, TARGET, EXITS, 2, PROMPT, -1, arg="max_new_tokens")
    rejects(run, TARGET, EXITS, 2, PROMPT, 2.0, arg="max_new_tokens")
    rejects(run, TARGET, EXITS, 2, PROMPT, 30, arg="max_new_tokens")  # 3 + 30 > the context of 32
    for gamma in (0, -2, 1.0, True, None):
        rejects(run, TARGET, EXITS, 2, PROMPT, 4, gamma, arg="gamma")


def test_bad_options_are_named():
    rejects(run, generator="seed", arg="generator")
    rejects(run, temperature=0, arg="temperature")
    rejects(run, temperature=float("nan"), arg="temperature")
    rejects(run, top_k=0, arg="top_k")
    rejects(run, top_p=1.5, arg="top_p")
    rejects(run, min_p=-0.1, arg="min_p")
    rejects(run, greedy="yes", arg="greedy")
    for schedule in ("adaptive", None, "", ["fixed"], np.array(["fixed", "heuristic"])):
        rejects(run, schedule=schedule, arg="schedule")


def test_new_keywords_of_the_chain_decoder_are_named():
    drafter = ModelDrafter(tiny_gpt(1, n_layer=1, vocab_size=13, block_size=32))
    for schedule in ("Heuristic", 1, None, ("fixed",)):
        rejects(speculative_generate, TARGET, drafter, PROMPT, 4, 2, schedule=schedule, arg="schedule")
    for threshold in (-0.1, 1.5, float("nan"), "0.4", True, torch.tensor(0.4)):
        rejects(ModelDrafter, TARGET, confidence_stop=threshold, arg="confidence_stop")
    rejects(ModelDrafter, TARGET, confidence=0.4, arg="overrides")  # a misspelt keyword is an unknown override
