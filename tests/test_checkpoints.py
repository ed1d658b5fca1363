"""The committed checkpoints: loadable, documented by their sidecars, small, and as good as promised."""

import json

import pytest
import torch

import arlib
from arlib.checkpoints import CHECKPOINT_DIR, CheckpointError, list_checkpoints, load_meta, save_checkpoint
from arlib.data import SOURCES
from arlib.recipes import all_recipes
from arlib.text.gpt import GPT, GPTConfig
from arlib.text.recipes import LM_RECIPES, load_gpt

LM_CHECKPOINTS = ["shakespeare-target", "shakespeare-draft"]


def test_checkpoints_together_stay_under_40_mb():
    """The repository's budget for checkpoints (the whole repository stays under 80 MB)."""
    total = sum(p.stat().st_size for p in CHECKPOINT_DIR.glob("*") if p.is_file())
    assert total < 40 * 2**20, f"data/checkpoints holds {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", LM_CHECKPOINTS)
def test_lm_checkpoint_matches_its_recipe_and_sidecar(name):
    assert name in list_checkpoints()
    model, tokenizer, meta = load_gpt(name)
    recipe = LM_RECIPES[name]
    assert meta["config"] == recipe.model.to_dict()
    assert meta["parameters"] == model.num_params()
    assert meta["data"]["sha256"] == SOURCES["shakespeare"].sha256
    assert meta["train"]["steps"] == recipe.train.steps  # the full recipe, not a shortened run
    assert meta["command"] == f"python -m arlib.recipes {name}"
    assert tokenizer.vocab_size == model.config.vocab_size == 84
    assert meta["metrics"]["report_nll_fp16_weights"] == pytest.approx(meta["metrics"]["report_nll"], abs=0.01)
    assert not model.training
    with torch.no_grad():
        logits = model(tokenizer.encode("To be, or not to be")[None])
    assert torch.isfinite(logits).all()


def test_target_and_draft_meet_the_books_requirements():
    """The target beats the best tuned Kneser-Ney n-gram (8-gram, D = 0.9 chosen on the select half: 1.344
    nats/char on the report half) by at least 0.05 nats/char; the draft beats the 3-gram (1.979)."""
    target_meta = json.loads((CHECKPOINT_DIR / "shakespeare-target.json").read_text())
    draft_meta = json.loads((CHECKPOINT_DIR / "shakespeare-draft.json").read_text())
    assert target_meta["parameters"] >= 4_000_000
    assert target_meta["config"]["block_size"] >= 256
    assert target_meta["metrics"]["report_nll"] <= 1.344 - 0.05
    assert draft_meta["metrics"]["report_nll"] < 1.979
    assert draft_meta["parameters"] <= target_meta["parameters"] / 10
    assert draft_meta["metrics"]["report_nll"] > target_meta["metrics"]["report_nll"] + 0.05  # clearly worse
    assert draft_meta["tokenizer"] == target_meta["tokenizer"]
    # the regularization was chosen on the select half, and the chosen run is the sweep's best there
    sweep = [run for run in target_meta["sweep"] if "run" not in run]
    assert min(run["select_nll"] for run in sweep) == target_meta["metrics"]["select_nll"]


def test_int8_storage_round_trips_within_half_a_step(tmp_path):
    """int8 checkpoints: matrices as int8 rows with one scale each, the rest float16; loading gives float32
    within half a quantization step of every entry, and integer buffers unchanged."""
    from arlib.checkpoints import SCALE_SUFFIX, dequantize_state, load_state, quantize_state

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Conv1d(32, 16, 3))
    model.register_buffer("steps", torch.tensor([3, 5]))
    model[0].weight.data[2] = 0.0  # an all-zero row must not divide by zero
    save_checkpoint(model, "tiny-int8", {"kind": "test", "config": {}, "data": {}, "metrics": {}, "command": "test",
                                         "wall_seconds": 0.0, "environment": {}}, tmp_path, dtype=torch.int8)
    stored = quantize_state(model.state_dict())
    assert stored["0.weight"].dtype == torch.int8 and stored["2.weight"].dtype == torch.int8
    assert stored["0.bias"].dtype == torch.float16 and stored["0.weight" + SCALE_SUFFIX].shape == (32,)
    loaded = load_state("tiny-int8", tmp_path)
    assert set(loaded) == set(model.state_dict()) and torch.equal(loaded["steps"], model.steps)
    for key in ("0.weight", "2.weight"):
        w = model.state_dict()[key]
        step = w.flatten(1).abs().amax(1) / 127  # per row
        err = (loaded[key] - w).flatten(1).abs()
        assert (err <= step[:, None] / 2 * 1.01 + 1e-7).all()
    assert torch.equal(loaded["0.weight"][2], torch.zeros(64))
    assert torch.allclose(dequantize_state(stored)["1.weight"], model[1].weight, atol=1e-3)
    assert (tmp_path / "tiny-int8.safetensors").stat().st_size < 0.7 * 2 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["speech-hybrid", "speech-hybrid-nospecaug", "speech-aed-words", "speech-ctc-words",
                                  "speech-paraformer", "speech-paraformer-noglance", "speech-cass-nat"])
def test_speech_checkpoints_match_their_recipes(name):
    """Chapter 5's checkpoints: the full recipe, stored in int8 at a small cost in WER, loadable."""
    from arlib.speech.recipes import SPEECH_RECIPES, load_speech

    model, meta = load_speech(name)
    recipe = SPEECH_RECIPES[name]
    assert meta["train"]["steps"] == recipe.train.steps and meta["command"] == f"python -m arlib.recipes {name}"
    assert meta["stored_dtype"] == "int8" and meta["parameters"] == sum(p.numel() for p in model.parameters())
    assert meta["unit"] == recipe.unit and meta["glance"] == recipe.glance
    assert meta["metrics"]["dev_wer"] <= meta["metrics"]["dev_wer_float32"] + 0.01
    assert meta["data"]["train"]["n"] == 6000 and meta["data"]["dev"]["n"] == 400 and "test" not in meta["data"]
    assert not model.training


# --- one loader: every checkpoint, and clear errors for broken ones ------------------------------------


@pytest.mark.parametrize("name", list_checkpoints())
def test_every_committed_checkpoint_loads_through_arlib_load(name):
    loaded = arlib.load(name)
    recipe = all_recipes()[name]
    assert loaded.meta["schema"] == 1 and loaded.meta["kind"] == recipe.kind and loaded.meta["name"] == name
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    if recipe.kind == "gpt":
        assert loaded.tokenizer.vocab_size == loaded.model.config.vocab_size
    if recipe.kind in ("ctc", "aed", "paraformer"):
        assert loaded.vocab is not None


def _tiny(tmp_path, name="tiny"):
    model = GPT(GPTConfig(vocab_size=4, block_size=8, n_layer=1, n_head=2, n_embd=8))
    meta = {"kind": "gpt", "config": model.config.to_dict(), "tokenizer": {"kind": "char", "vocab": "abcd"},
            "data": {}, "metrics": {}, "command": "test", "wall_seconds": 0.0, "environment": {}}
    weights = save_checkpoint(model, name, meta, directory=tmp_path)
    return model, weights


def test_a_flipped_byte_is_caught_and_the_file_named(tmp_path):
    _, weights = _tiny(tmp_path)
    arlib.load("tiny", directory=tmp_path)  # intact: loads
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors.*sha256"):
        arlib.load("tiny", directory=tmp_path)


def test_a_truncated_file_and_a_git_lfs_pointer_are_named(tmp_path):
    _, weights = _tiny(tmp_path)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors"):
        arlib.load("tiny", directory=tmp_path)
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 9\n")
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: a git-lfs pointer"):
        arlib.load("tiny", directory=tmp_path)


def test_wrong_kind_unknown_name_and_bad_sidecars(tmp_path):
    _tiny(tmp_path)
    with pytest.raises(CheckpointError, match=r"tiny\.json: a 'gpt' checkpoint, expected 'sae'"):
        arlib.load("tiny", directory=tmp_path, kind="sae")
    with pytest.raises(CheckpointError, match=r"no checkpoint 'nope'.*known: tiny"):
        arlib.load("nope", directory=tmp_path)
    sidecar = tmp_path / "tiny.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "kind": "teapot"}))
    with pytest.raises(CheckpointError, match=r"tiny\.json: unknown kind 'teapot'"):
        arlib.load("tiny", directory=tmp_path)
    sidecar.write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    with pytest.raises(CheckpointError, match=r"tiny\.json: sidecar lacks \['sha256'\]"):
        load_meta("tiny", directory=tmp_path)
    sidecar.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tiny\.json: not a JSON sidecar"):
        arlib.load("tiny", directory=tmp_path)
    sidecar.write_text(json.dumps({**meta, "config": {**meta["config"], "n_embd": 16}}))
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: weights do not fit a gpt"):
        arlib.load("tiny", directory=tmp_path)


def test_arlib_home_relocates_the_checkpoints(tmp_path, monkeypatch):
    model, _ = _tiny(tmp_path / "checkpoints")
    monkeypatch.setenv("ARLIB_HOME", str(tmp_path))
    assert list_checkpoints() == ["tiny"]
    loaded = arlib.load("tiny")
    assert torch.equal(loaded.model.wte.weight, model.wte.weight.half().float())


def test_save_checkpoint_needs_kind_and_config_and_only_rank_zero_writes(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(model, "x", {"config": {}}, directory=tmp_path)
    monkeypatch.setenv("RANK", "1")
    assert save_checkpoint(model, "x", {"kind": "gpt", "config": {}}, directory=tmp_path) is None
    assert list(tmp_path.iterdir()) == []
