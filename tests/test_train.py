"""Tests of the training loop, the LM metrics, checkpoints and the recipes (in a subprocess and under torchrun)."""

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import arlib
from arlib.checkpoints import CheckpointError, list_checkpoints, load_meta, save_checkpoint
from arlib.text.gpt import GPT, GPTConfig
from arlib.text.lm import heldout_nll, next_token_loss, random_windows, token_nll
from arlib.text.recipes import load_gpt
from arlib.train import TrainConfig, lr_at, train

ROOT = Path(__file__).resolve().parents[1]


# --- learning-rate schedule ---------------------------------------------------------------------


def test_lr_schedule_endpoints():
    c = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(1e-4)  # warm-up starts at lr / warmup
    assert lr_at(9, c) == pytest.approx(1e-3)  # ... and reaches lr
    assert lr_at(10, c) == pytest.approx(1e-3)  # cosine starts at lr
    assert lr_at(55, c) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # halfway down
    assert lr_at(100, c) == pytest.approx(1e-4)  # and ends at lr * min_lr_ratio
    assert lr_at(10_000, c) == pytest.approx(1e-4)
    lrs = [lr_at(s, c) for s in range(100)]
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert min(lrs[10:]) > 1e-4  # the floor is reached only after the last step
    assert lr_at(0, TrainConfig(steps=5, lr=0.5, warmup=0)) == 0.5


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("steps", 1.5), ("lr", 0.0), ("lr", -1.0), ("warmup", -1), ("warmup", 2000),
    ("min_lr_ratio", 1.5), ("min_lr_ratio", -0.1), ("clip", 0.0), ("amp", 1), ("amp", "bf16"),
])
def test_train_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


# --- the loop -----------------------------------------------------------------------------------


def tiny_gpt(V=5, block_size=16, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, block_size=block_size, n_layer=1, n_head=2, n_embd=32))


def test_training_lowers_the_loss_on_a_pattern():
    ids = torch.arange(5).repeat(200)  # 0 1 2 3 4 0 1 2 ...
    model = tiny_gpt()
    evals = []
    config = TrainConfig(steps=40, lr=1e-2, warmup=5, eval_every=20, progress=False)
    history = train(model, next_token_loss, lambda step, g: random_windows(ids, 8, 16, g), config,
                    evaluate=lambda m: evals.append(1) or {"nll": heldout_nll(m, ids[:100])})
    assert len(history["loss"]) == 40 and history["step"] == list(range(40))
    assert history["loss"][0] > 1.2  # about log 5 = 1.6 at the start
    assert sum(history["loss"][-5:]) / 5 < 0.1 * history["loss"][0]
    assert [s for s, _ in history["eval"]] == [20, 40] and len(evals) == 2
    assert history["eval"][-1][1]["nll"] < 0.2
    assert history["lr"][4] == pytest.approx(1e-2) and history["world_size"] == 1
    assert not model.training and history["seconds"] > 0


@pytest.mark.parametrize("amp", [False, True])
def test_training_on_a_device_with_fused_adamw_and_bf16_autocast(device, amp):
    """On CUDA the update is one fused AdamW kernel and ``amp=True`` runs the forward pass under bf16
    autocast; elsewhere both are off and ``amp`` is ignored: the CPU's history is the same with or
    without it. The loss falls either way."""
    from arlib.train import _optimizer

    ids = torch.arange(5).repeat(200)
    cuda = device.type == "cuda"
    model = tiny_gpt().to(device)
    config = TrainConfig(steps=30, lr=1e-2, warmup=5, progress=False, amp=amp)
    assert _optimizer(model, config).defaults["fused"] is cuda
    seen = []

    def loss_fn(m, batch):
        seen.append(torch.is_autocast_enabled("cuda"))
        return next_token_loss(m, batch)

    batch = lambda step, g: tuple(t.to(device) for t in random_windows(ids, 8, 16, g))  # noqa: E731
    history = train(model, loss_fn, batch, config)
    assert set(seen) == {amp and cuda}
    assert len(history["loss"]) == 30 and history["loss"][-1] < 0.5 * history["loss"][0]
    if not cuda:
        plain = train(tiny_gpt(), next_token_loss, lambda step, g: random_windows(ids, 8, 16, g),
                      TrainConfig(steps=30, lr=1e-2, warmup=5, progress=False))
        assert history["loss"] == plain["loss"]


def test_train_errors():
    model = tiny_gpt()
    with pytest.raises(TypeError, match="config"):
        train(model, next_token_loss, lambda s, g: None, {"steps": 3})
    nan_loss = lambda m, batch: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(FloatingPointError):
        train(model, nan_loss, lambda s, g: None, TrainConfig(steps=3, warmup=0, progress=False))


def test_random_windows():
    ids = torch.arange(100)
    x, y = random_windows(ids, 4, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10)
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], x[:, :-1] + 1)
    with pytest.raises(ValueError, match="ids"):
        random_windows(torch.arange(10), 2, 10, torch.Generator())


# --- held-out NLL -------------------------------------------------------------------------------


class ContextFree(torch.nn.Module):
    """Logits depend on the current token only, so any window gives each target the same loss."""

    def __init__(self, V, block_size):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.table = torch.nn.Embedding(V, V)

    def forward(self, idx):
        return self.table(idx)  # (B, T, V)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 120), block_size=st.integers(1, 16), stride_frac=st.floats(0.01, 1.0),
       batch_size=st.integers(1, 5))
def test_heldout_nll_scores_every_token_once(n, block_size, stride_frac, batch_size):
    torch.manual_seed(n)
    model = ContextFree(7, block_size)
    ids = torch.randint(0, 7, (n,))
    stride = max(1, round(stride_frac * block_size))
    expected = F.cross_entropy(model(ids[:-1]), ids[1:]).item()
    got = heldout_nll(model, ids, stride=stride, batch_size=batch_size)
    assert got == pytest.approx(expected, rel=1e-5)
    per_token = token_nll(model, ids, stride=stride, batch_size=batch_size)  # each target at its own index
    direct = F.cross_entropy(model(ids[:-1]), ids[1:], reduction="none")
    assert per_token.shape == (n - 1,) and torch.allclose(per_token, direct.detach(), atol=1e-5)


def test_heldout_nll_equals_cross_entropy_in_one_window():
    model = tiny_gpt(V=7, block_size=16).eval()
    ids = torch.randint(0, 7, (17,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = F.cross_entropy(model(ids[None, :-1])[0], ids[1:]).item()
    assert heldout_nll(model, ids) == pytest.approx(expected, rel=1e-6)
    model.train()
    heldout_nll(model, ids)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="ids"):
        heldout_nll(model, ids[:1])
    with pytest.raises(ValueError, match="stride"):
        heldout_nll(model, ids, stride=17)


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model = tiny_gpt(V=4, block_size=8)
    meta = {"kind": "gpt", "config": model.config.to_dict(), "tokenizer": {"kind": "char", "vocab": "abcd"},
            "metrics": {"x": 1}, "data": {}, "command": "test", "wall_seconds": 0.0, "environment": {}}
    path = save_checkpoint(model, "tiny", meta, directory=tmp_path)
    assert path.exists() and list_checkpoints(tmp_path) == ["tiny"]
    loaded, tok, meta2 = load_gpt("tiny", directory=tmp_path)
    assert {k: meta2[k] for k in meta} == meta and tok.vocab == "abcd" and not loaded.training
    assert meta2["schema"] == 1 and meta2["stored_dtype"] == "float16" and len(meta2["sha256"]) == 64
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.half().float()), name
    x = torch.randint(0, 4, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=1e-2)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="arlib.recipes"):
        load_gpt("no-such-model", directory=tmp_path)
    with pytest.raises(ValueError, match="name"):
        load_meta("a/b", directory=tmp_path)
    with pytest.raises(ValueError, match="name"):
        load_meta("", directory=tmp_path)


# --- recipes end to end -------------------------------------------------------------------------


def _need_shakespeare():
    from arlib.data import DataUnavailableError, shakespeare

    try:
        shakespeare()
    except DataUnavailableError as exc:  # pragma: no cover
        pytest.skip(str(exc))


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    model, tok, meta = load_gpt("shakespeare-draft", directory=tmp_path)
    assert model.config.n_layer == 2 and tok.vocab_size == 84
    assert meta["train"]["steps"] == 2 and math.isfinite(meta["metrics"]["report_nll"])
    assert 3.0 < meta["metrics"]["report_nll"] < 5.0  # near log 84 = 4.43 after two steps
    return meta


RECIPE_ARGS = ["shakespeare-draft", "--steps", "2", "--eval-chars", "600", "--no-progress"]


@pytest.mark.slow
def test_recipe_runs_end_to_end(tmp_path):
    _need_shakespeare()
    meta = _run([sys.executable, "-m", "arlib.recipes", *RECIPE_ARGS, "--out", str(tmp_path)], tmp_path)
    assert meta["train"]["world_size"] == 1


@pytest.mark.slow
def test_recipe_runs_under_torchrun(tmp_path):
    _need_shakespeare()
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():  # pragma: no cover
        pytest.skip("torchrun not found beside the Python interpreter")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "arlib.recipes", *RECIPE_ARGS,
           "--out", str(tmp_path)]
    meta = _run(cmd, tmp_path)
    assert meta["train"]["world_size"] == 2


def test_recipe_rejects_unknown_names():
    from arlib.recipes import main
    from arlib.text.recipes import RECIPES, run_lm_recipe

    assert {"shakespeare-target", "shakespeare-draft"} <= set(RECIPES)
    with pytest.raises(ValueError, match="name"):
        run_lm_recipe("no-such-recipe")
    with pytest.raises(SystemExit):
        main(["no-such-recipe"])


@pytest.mark.slow
def test_heads_recipe_runs_and_its_checkpoint_loads(tmp_path):
    """`python -m arlib.recipes shakespeare-heads`, shortened: distills every head family from the committed
    target, records provenance, and loads back onto the target."""
    _need_shakespeare()
    from arlib.decoding.recipes import run_heads_recipe

    meta = run_heads_recipe("shakespeare-heads", steps=2, out=str(tmp_path), progress=False, eval_chars=2048)
    assert meta["command"] == "python -m arlib.recipes shakespeare-heads --steps 2" and meta["train"]["steps"] == 2
    betas = meta["metrics"]["teacher_forced_beta"]
    assert {k: len(v) for k, v in betas.items()} == {"exit": 5, "medusa": 6, "hydra": 6}
    assert meta["stored_dtype"] == "float16" and meta["wall_seconds"] > 0
    heads = arlib.load("shakespeare-heads", directory=tmp_path).model
    assert heads.n_heads == 6 and meta["kind"] == "draft_heads"
    assert meta["train"]["self_distillation"]["continuations"] == 16  # 2 steps x 8 rows of the target's own text


def test_own_continuations_are_the_targets_greedy_and_sampled_text():
    """Self-distillation windows: prompts from the text, continued by the target (first half greedy)."""
    from arlib.decoding.recipes import own_continuations
    from arlib.text.gpt import GPT, GPTConfig
    from arlib.text.sampling import generate

    torch.manual_seed(0)
    target = GPT(GPTConfig(vocab_size=11, block_size=24, n_layer=1, n_head=2, n_embd=16)).eval()
    ids = torch.randint(0, 11, (500,), generator=torch.Generator().manual_seed(1))
    own = own_continuations(target, ids, 6, 5, torch.Generator().manual_seed(2), batch=2)
    assert own.shape == (6, 24)
    text = ids.tolist()
    for row in own:  # every prompt is a window of the text
        prompt = row[:5].tolist()
        assert any(text[i:i + 5] == prompt for i in range(len(text) - 4))
    with torch.no_grad():
        greedy = generate(target, own[:, :5], 19, greedy=True)
    assert torch.equal(own[:3], greedy[:3])  # exactly the first half greedy, though batches hold 2 rows
    assert not any(torch.equal(own[i], greedy[i]) for i in range(3, 6))  # the second half sampled


@pytest.mark.slow
def test_visual_recipes_run_in_order_and_their_checkpoints_load(tmp_path):
    """Chapter 4's recipes, shortened to 2 steps each, in dependency order (each generator finds its
    tokenizer in the same folder); every checkpoint loads back and records its provenance."""
    from arlib.vision.recipes import VISUAL_RECIPES, load_visual, run_visual_recipe

    names = ("fashion-vq", "fashion-msvq", "fashion-fsq", "fashion-classifier", "fashion-raster", "fashion-var",
             "fashion-var-markov", "fashion-maskgit", "fashion-raster-draft", "fashion-hmar")
    for name in names:
        meta = run_visual_recipe(name, steps=2, out=str(tmp_path), progress=False)
        assert meta["command"] == f"python -m arlib.recipes {name} --steps 2" and meta["train"]["steps"] == 2
        assert meta["data"] and all(len(sha) == 64 for sha in meta["data"].values())
        model, loaded = load_visual(name, directory=tmp_path)
        assert loaded["parameters"] == sum(p.numel() for p in model.parameters())
        if name == "fashion-var-markov":
            assert loaded["tokenizer"] == "fashion-msvq" and "test_nll" in loaded["metrics"]
            assert loaded["config"]["markov"] is True
        if name == "fashion-maskgit":
            assert loaded["tokenizer"] == "fashion-vq" and "test_masked_nll" in loaded["metrics"]
    assert loaded["tokenizer"] == "fashion-msvq" and loaded["finetune"]["steps"] == 2  # HMAR's second stage
    assert {"test_nll", "test_masked_nll"} <= set(loaded["metrics"])
    assert set(VISUAL_RECIPES) == set(names)


@pytest.mark.slow
def test_speech_recipes_run_in_order_and_their_checkpoints_load(tmp_path):
    """Chapter 5's recipes, shortened to 2 steps on 40 training utterances: the decoders find the encoder
    in the same folder, every checkpoint loads back and records its data and provenance."""
    from arlib.speech.recipes import SPEECH_RECIPES, load_speech, run_speech_recipe

    names = ("speech-hybrid", "speech-hybrid-nospecaug", "speech-aed-words", "speech-ctc-words", "speech-paraformer",
             "speech-paraformer-noglance", "speech-cass-nat")
    for name in names:
        meta = run_speech_recipe(name, steps=2, out=str(tmp_path), progress=False, n_train=40, n_dev=20)
        assert meta["command"] == f"python -m arlib.recipes {name} --steps 2" and meta["train"]["steps"] == 2
        assert meta["data"]["train"]["n"] == 40 and meta["data"]["dev"]["n"] == 20 and meta["data"]["espeak_ng"]
        assert meta["train"]["batches"] == "length-bucketed" and "test" not in meta["data"]  # choices use dev only
        model, loaded = load_speech(name, directory=tmp_path)
        assert loaded["parameters"] == sum(p.numel() for p in model.parameters())
        assert 0 <= loaded["metrics"]["dev_wer"] and loaded["stored_dtype"] == "int8"
    assert set(SPEECH_RECIPES) == set(names) and loaded["encoder"] == "speech-hybrid"
    with pytest.raises(ValueError, match="name"):
        load_speech("speech-nothing")
