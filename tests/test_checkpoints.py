"""The committed checkpoints: loadable, documented by their sidecars, small, and as good as promised."""

import json

import pytest
import torch

from arlib.checkpoints import CHECKPOINT_DIR, list_checkpoints, load_gpt
from arlib.data import SOURCES
from arlib.recipes import RECIPES

LM_CHECKPOINTS = ["shakespeare-target", "shakespeare-draft"]


def test_checkpoints_together_stay_under_30_mb():
    total = sum(p.stat().st_size for p in CHECKPOINT_DIR.glob("*") if p.is_file())
    assert total < 30 * 2**20, f"data/checkpoints holds {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", LM_CHECKPOINTS)
def test_lm_checkpoint_matches_its_recipe_and_sidecar(name):
    assert name in list_checkpoints()
    model, tokenizer, meta = load_gpt(name)
    recipe = RECIPES[name]
    assert meta["config"] == recipe.model.to_dict()
    assert meta["parameters"] == model.num_params()
    assert meta["data"]["sha256"] == SOURCES["shakespeare"].sha256
    assert meta["train"]["steps"] == recipe.train.steps  # the full recipe, not a shortened run
    assert meta["command"] == f"python -m arlib.recipes {name}"
    assert tokenizer.vocab_size == model.config.vocab_size == 84
    assert meta["metrics"]["val_nll_fp16_weights"] == pytest.approx(meta["metrics"]["val_nll"], abs=0.01)
    assert not model.training
    with torch.no_grad():
        logits = model(tokenizer.encode("To be, or not to be")[None])
    assert torch.isfinite(logits).all()


def test_target_and_draft_meet_the_books_requirements():
    target_meta = json.loads((CHECKPOINT_DIR / "shakespeare-target.json").read_text())
    draft_meta = json.loads((CHECKPOINT_DIR / "shakespeare-draft.json").read_text())
    assert target_meta["parameters"] >= 4_000_000
    assert target_meta["config"]["block_size"] >= 256
    assert target_meta["metrics"]["val_nll"] <= 1.70
    assert draft_meta["parameters"] <= target_meta["parameters"] / 10
    assert draft_meta["metrics"]["val_nll"] > target_meta["metrics"]["val_nll"] + 0.05  # clearly worse
    assert draft_meta["tokenizer"] == target_meta["tokenizer"]
