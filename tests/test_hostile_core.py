"""Hostile inputs for arlib's shared core: validate, env, train, checkpoints, loader and the recipe registry.

Each entry of ``PROBES`` is one bad-input case: it must end in a ValueError/TypeError naming the argument
(:func:`hostile.rejects`) or in a result that keeps its contract (:func:`hostile.valid_or_rejects`).
Documented limitation: ``arlib.recipes.main`` is a command line; bad command-line arguments exit with status 2
as argparse does (``SystemExit``), which :func:`test_main_exits_with_status_2_on_bad_arguments` checks.
"""

from __future__ import annotations

import functools
import math
import tempfile

import numpy as np
import pytest
import torch
from hostile import rejects, valid_or_rejects
from hypothesis import given, settings
from hypothesis import strategies as st

from arlib import checkpoints as ck
from arlib import env, loader, recipes, train, validate

COVERED = {
    "arlib.checkpoints.CheckpointError", "arlib.checkpoints.checkpoint_dir", "arlib.checkpoints.checkpoint_paths",
    "arlib.checkpoints.dequantize_state", "arlib.checkpoints.list_checkpoints", "arlib.checkpoints.load_meta",
    "arlib.checkpoints.load_model", "arlib.checkpoints.load_state", "arlib.checkpoints.provenance",
    "arlib.checkpoints.quantize_state", "arlib.checkpoints.save_checkpoint", "arlib.checkpoints.search_dirs",
    "arlib.checkpoints.sha256_of", "arlib.checkpoints.store_int8",
    "arlib.env.check_timing", "arlib.env.export_figure", "arlib.env.pick_device", "arlib.env.seed_everything",
    "arlib.env.setup",
    "arlib.loader.Loaded", "arlib.loader.load",
    "arlib.recipes.all_recipes", "arlib.recipes.get_recipe", "arlib.recipes.main", "arlib.recipes.run_recipe",
    "arlib.train.LossNotFinite", "arlib.train.Recipe", "arlib.train.TrainConfig", "arlib.train.distributed_context",
    "arlib.train.lr_at", "arlib.train.mean_last_loss", "arlib.train.train",
    "arlib.validate.MissingFileError", "arlib.validate.describe", "arlib.validate.float_tensor",
    "arlib.validate.generator", "arlib.validate.ids_in_vocab", "arlib.validate.int_at_least",
    "arlib.validate.int_in_range", "arlib.validate.is_int", "arlib.validate.is_number", "arlib.validate.number_in",
    "arlib.validate.positive_int", "arlib.validate.probability", "arlib.validate.token_ids",
}

NAN, INF = float("nan"), float("inf")
EMPTY = tempfile.mkdtemp(prefix="arlib-hostile-")  # a folder no probe may write into (each is refused first)
CONFIG = train.TrainConfig(steps=3, warmup=1, progress=False)
MODEL = torch.nn.Linear(2, 1)


def loss_fn(model, batch):
    return model(batch).pow(2).mean()


def lin() -> torch.nn.Module:
    """A fresh model for each training probe (a probe whose loss turns NaN spoils its weights)."""
    return torch.nn.Linear(2, 1)


def get_batch(step, generator):
    return torch.randn(4, 2, generator=generator)


PROBES: list[tuple] = []  # (label, function, args, kwargs, arg, contract or None: must reject)


def probe(label, fn, *args, arg, contract=None, **kwargs):
    PROBES.append((label, fn, args, kwargs, arg, contract))


# --- validate -----------------------------------------------------------------------------------------------

probe("describe anything", validate.describe, object(), arg="-", contract=lambda s: s == "object")
probe("is_int numpy", validate.is_int, np.int64(3), arg="-", contract=lambda r: r is True)
probe("is_int numpy bool", validate.is_int, np.bool_(True), arg="-", contract=lambda r: r is False)
probe("is_number numpy float", validate.is_number, np.float32(0.5), arg="-", contract=lambda r: r is True)
probe("is_number bool", validate.is_number, True, arg="-", contract=lambda r: r is False)
probe("positive_int bool", validate.positive_int, True, "n", arg="n")
probe("positive_int numpy float", validate.positive_int, np.float64(2.0), "n", arg="n")
probe("positive_int numpy int", validate.positive_int, np.int32(2), "n", arg="n", contract=lambda r: type(r) is int)
probe("int_at_least NaN", validate.int_at_least, NAN, "k", 0, arg="k")
probe("int_in_range str", validate.int_in_range, "2", "k", 0, 3, arg="k")
probe("number_in NaN", validate.number_in, NAN, "t", 0, arg="t")
probe("number_in bounds junk", validate.number_in, 0.5, "t", 0, 1, bounds="<>", arg="bounds")
probe("number_in numpy", validate.number_in, np.float32(0.5), "t", 0, 1, arg="t", contract=lambda r: r == 0.5)
probe("probability above 1", validate.probability, 1.5, "p", arg="p")
probe("probability None", validate.probability, None, "p", arg="p")
probe("token_ids float", validate.token_ids, torch.zeros(3), "ids", arg="ids")
probe("token_ids list", validate.token_ids, [1, 2], "ids", arg="ids")
probe("token_ids out of vocab", validate.token_ids, torch.tensor([0, 5]), "ids", vocab_size=5, arg="ids")
probe("ids_in_vocab negative", validate.ids_in_vocab, torch.tensor([-1]), "ids", 5, arg="ids")
probe("ids_in_vocab empty", validate.ids_in_vocab, torch.zeros(0, dtype=torch.long), "ids", 5, arg="ids",
      contract=lambda t: t.numel() == 0)
probe("float_tensor NaN", validate.float_tensor, torch.tensor([NAN]), "x", arg="x")
probe("float_tensor ints", validate.float_tensor, torch.tensor([1]), "x", arg="x")
probe("float_tensor wrong dim", validate.float_tensor, torch.zeros(2), "x", dim=2, arg="x")
probe("generator junk", validate.generator, 3, arg="generator")
probe("generator None not optional", validate.generator, None, optional=False, arg="generator")
probe("MissingFileError is both", validate.MissingFileError, "path: x", arg="-",
      contract=lambda e: isinstance(e, FileNotFoundError) and isinstance(e, ValueError))

# --- env ------------------------------------------------------------------------------------------------------

probe("pick_device tpu", env.pick_device, "tpu", arg="device")
probe("pick_device int", env.pick_device, 0, arg="device")
probe("pick_device cuda:99", env.pick_device, "cuda:99", arg="device")
probe("pick_device bad index", env.pick_device, "cpu:x", arg="device")
probe("pick_device torch.device", env.pick_device, torch.device("cpu"), arg="device",
      contract=lambda d: d.type == "cpu")
probe("seed_everything negative", env.seed_everything, -1, arg="seed")
probe("seed_everything too large", env.seed_everything, 2**64, arg="seed")
probe("seed_everything float", env.seed_everything, 1.0, arg="seed")
probe("seed_everything numpy", env.seed_everything, np.int64(3), arg="seed", contract=lambda r: r is None)
probe("setup threads 0", env.setup, threads=0, style=False, arg="threads")
probe("setup threads str", env.setup, threads="2", style=False, arg="threads")
probe("setup device junk", env.setup, device="gpu", style=False, arg="device")
probe("check_timing tensor of several", env.check_timing, torch.tensor([True, False]), "m", arg="ok")
probe("check_timing message junk", env.check_timing, True, 3, arg="message")
probe("export_figure fig junk", env.export_figure, "fig", "curve", arg="fig")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure()


probe("export_figure name with a dot", lambda: env.export_figure(_figure(), "a.png"), arg="name")
probe("export_figure directory junk", lambda: env.export_figure(_figure(), "curve", 3), arg="directory")

# --- train ----------------------------------------------------------------------------------------------------

probe("TrainConfig steps 0", train.TrainConfig, steps=0, arg="steps")
probe("TrainConfig lr str", train.TrainConfig, lr="1e-3", arg="lr")
probe("TrainConfig lr inf", train.TrainConfig, lr=INF, arg="lr")
probe("TrainConfig lr NaN", train.TrainConfig, lr=NAN, arg="lr")
probe("TrainConfig warmup float", train.TrainConfig, steps=10, warmup=1.5, arg="warmup")
probe("TrainConfig warmup past steps", train.TrainConfig, steps=10, warmup=11, arg="warmup")
probe("TrainConfig min_lr_ratio str", train.TrainConfig, min_lr_ratio="0.1", arg="min_lr_ratio")
probe("TrainConfig clip 0", train.TrainConfig, clip=0.0, arg="clip")
probe("TrainConfig weight_decay NaN", train.TrainConfig, weight_decay=NAN, arg="weight_decay")
probe("TrainConfig betas junk", train.TrainConfig, betas=(0.9,), arg="betas")
probe("TrainConfig betas 1", train.TrainConfig, betas=(0.9, 1.0), arg="betas")
probe("TrainConfig eval_every negative", train.TrainConfig, eval_every=-5, arg="eval_every")
probe("TrainConfig seed junk", train.TrainConfig, seed="0", arg="seed")
probe("TrainConfig amp int", train.TrainConfig, amp=1, arg="amp")
probe("TrainConfig numpy numbers", train.TrainConfig, steps=np.int64(10), lr=np.float32(1e-3), warmup=np.int32(2),
      arg="steps", contract=lambda c: type(c.steps) is int and type(c.warmup) is int)
probe("Recipe train junk", train.Recipe, "n", "gpt", None, "train", lambda *a, **k: {}, "d", arg="train")
probe("Recipe run junk", train.Recipe, "n", "gpt", None, CONFIG, "run", "d", arg="run")
probe("Recipe name empty", train.Recipe, "", "gpt", None, CONFIG, lambda *a, **k: {}, "d", arg="name")
probe("lr_at step negative", train.lr_at, -3, CONFIG, arg="step")
probe("lr_at config junk", train.lr_at, 0, {"lr": 1.0}, arg="config")
probe("lr_at numpy step", train.lr_at, np.int64(1), CONFIG, arg="step", contract=lambda v: 0 < v <= CONFIG.lr)
probe("mean_last_loss n 0", train.mean_last_loss, {"loss": [1.0, 2.0]}, 0, arg="n")
probe("mean_last_loss history junk", train.mean_last_loss, [1.0, 2.0], arg="history")
probe("mean_last_loss empty", train.mean_last_loss, {"loss": []}, arg="history")
probe("train config junk", train.train, lin(), loss_fn, get_batch, {"steps": 3}, arg="config")
probe("train model junk", train.train, "model", loss_fn, get_batch, CONFIG, arg="model")
probe("train model without parameters", train.train, torch.nn.ReLU(), loss_fn, get_batch, CONFIG, arg="model")
probe("train loss_fn junk", train.train, lin(), "loss", get_batch, CONFIG, arg="loss_fn")
probe("train get_batch junk", train.train, lin(), loss_fn, None, CONFIG, arg="get_batch")
probe("train evaluate junk", train.train, lin(), loss_fn, get_batch, CONFIG, 3, arg="evaluate")
probe("train loss not a scalar", train.train, lin(), lambda m, b: m(b), get_batch, CONFIG, arg="loss_fn")
probe("train loss NaN", train.train, lin(), lambda m, b: m(b).sum() * NAN, get_batch, CONFIG, arg="loss_fn")
probe("train evaluate returns junk", train.train, lin(), loss_fn, get_batch, CONFIG, lambda m: 0.5, arg="evaluate")
probe("LossNotFinite is both", train.LossNotFinite, "loss_fn: x", arg="-",
      contract=lambda e: isinstance(e, FloatingPointError) and isinstance(e, ValueError))


def _world_size_junk():
    import os

    before = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "two"
    try:
        return train.distributed_context()
    finally:
        if before is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = before


probe("distributed_context WORLD_SIZE junk", _world_size_junk, arg="WORLD_SIZE")
probe("distributed_context single process", train.distributed_context, arg="-", contract=lambda r: r == (0, 1))

# --- checkpoints ----------------------------------------------------------------------------------------------

STATE = {"w": torch.randn(3, 4), "b": torch.randn(3)}
probe("checkpoint_dir", ck.checkpoint_dir, arg="-", contract=lambda p: p.name == "checkpoints")
probe("search_dirs", ck.search_dirs, arg="-", contract=lambda d: len(d) >= 1)
probe("checkpoint_paths name with a slash", ck.checkpoint_paths, "../x", arg="name")
probe("checkpoint_paths name int", ck.checkpoint_paths, 3, arg="name")
probe("checkpoint_paths directory int", ck.checkpoint_paths, "x", 3, arg="directory")
probe("sha256_of missing", ck.sha256_of, "/nonexistent/file", arg="path")
probe("sha256_of int", ck.sha256_of, 0, arg="path")
probe("quantize_state junk", ck.quantize_state, [torch.zeros(2)], arg="state")
probe("quantize_state non-tensor value", ck.quantize_state, {"w": [1.0]}, arg="state")
probe("dequantize_state junk", ck.dequantize_state, "tensors", arg="tensors")
probe("dequantize_state scale mismatch", ck.dequantize_state,
      {"w": torch.zeros(3, 4, dtype=torch.int8), "w" + ck.SCALE_SUFFIX: torch.ones(2)}, arg="tensors")
probe("quantize round trip", lambda: ck.dequantize_state(ck.quantize_state(STATE)), arg="-",
      contract=lambda s: all(torch.allclose(s[k], STATE[k], atol=0.02) for k in STATE))
probe("save_checkpoint model junk", ck.save_checkpoint, "m", "x", {"kind": "gpt", "config": {}}, EMPTY,
      arg="model")
probe("save_checkpoint meta junk", ck.save_checkpoint, MODEL, "x", "meta", EMPTY, arg="meta")
probe("save_checkpoint meta without kind", ck.save_checkpoint, MODEL, "x", {"config": {}}, EMPTY,
      arg="meta")
probe("save_checkpoint dtype junk", ck.save_checkpoint, MODEL, "x", {"kind": "k", "config": {}}, EMPTY,
      torch.int64, arg="dtype")
probe("save_checkpoint name junk", ck.save_checkpoint, MODEL, "a/b", {"kind": "k", "config": {}}, EMPTY,
      arg="name")
probe("list_checkpoints directory junk", ck.list_checkpoints, 3.5, arg="directory")
probe("list_checkpoints empty folder", ck.list_checkpoints, EMPTY, arg="-", contract=lambda r: r == [])
probe("list_checkpoints missing folder", ck.list_checkpoints, EMPTY + "/missing", arg="-", contract=lambda r: r == [])
probe("load_meta unknown", ck.load_meta, "no-such-model", arg="name")
probe("load_meta name None", ck.load_meta, None, arg="name")
probe("load_state meta junk", ck.load_state, "shakespeare-draft", meta={"kind": "gpt"}, arg="meta")
probe("load_state unknown", ck.load_state, "no-such-model", arg="name")
probe("provenance device junk", ck.provenance, "x", None, 0.0, "gpu", arg="device")
probe("provenance t0 junk", ck.provenance, "x", None, "now", "cpu", arg="t0")
probe("provenance steps 0", ck.provenance, "x", 0, 0.0, "cpu", arg="steps")
probe("provenance stored_dtype junk", ck.provenance, "x", None, 0.0, "cpu", "int4", arg="stored_dtype")
probe("provenance name junk", ck.provenance, None, None, 0.0, "cpu", arg="name")
probe("store_int8 model junk", ck.store_int8, "m", {}, lambda m: {}, arg="model")
probe("store_int8 metrics junk", ck.store_int8, torch.nn.Linear(2, 2), {"wer": "low"}, lambda m: {},
      arg="float_metrics")
probe("store_int8 evaluate junk", ck.store_int8, torch.nn.Linear(2, 2), {}, None, arg="evaluate")
probe("store_int8 evaluate returns junk", ck.store_int8, torch.nn.Linear(2, 2), {}, lambda m: 0.5, arg="evaluate")
probe("load_model build junk", ck.load_model, "shakespeare-draft", "build", arg="build")
probe("load_model build returns junk", ck.load_model, "shakespeare-draft", lambda meta: "model", arg="build")
probe("load_model device junk", ck.load_model, "shakespeare-draft", lambda meta: (MODEL, {}), "gpu", arg="device")
probe("load_model wrong kind", ck.load_model, "shakespeare-draft", lambda meta: (MODEL, {}), kind="sae",
      arg="shakespeare-draft")
probe("load_model weights do not fit", ck.load_model, "shakespeare-draft", lambda meta: (MODEL, {}),
      arg="shakespeare-draft")
probe("CheckpointError is a ValueError", ck.CheckpointError, "x", arg="-", contract=lambda e: isinstance(e, ValueError))

# --- loader ---------------------------------------------------------------------------------------------------

probe("load unknown", loader.load, "no-such-model", arg="name")
probe("load name list", loader.load, ["shakespeare-draft"], arg="name")
probe("load kind junk", loader.load, "shakespeare-draft", kind="transformer", arg="kind")
probe("load wrong kind", loader.load, "shakespeare-draft", kind="sae", arg="shakespeare-draft")
probe("load device junk", loader.load, "shakespeare-draft", "gpu", arg="device")
probe("load directory junk", loader.load, "shakespeare-draft", None, 7, arg="directory")
probe("Loaded model junk", loader.Loaded, "model", {}, arg="model")
probe("Loaded meta junk", loader.Loaded, MODEL, None, arg="meta")

# --- recipes --------------------------------------------------------------------------------------------------

probe("all_recipes", recipes.all_recipes, arg="-", contract=lambda r: "shakespeare-target" in r)
probe("get_recipe unknown", recipes.get_recipe, "no-such-recipe", arg="name")
probe("get_recipe list", recipes.get_recipe, ["shakespeare-draft"], arg="name")
probe("run_recipe unknown", recipes.run_recipe, "no-such-recipe", arg="name")
probe("run_recipe steps 0", recipes.run_recipe, "shakespeare-draft", 0, arg="steps")
probe("run_recipe steps float", recipes.run_recipe, "shakespeare-draft", 2.5, arg="steps")
probe("main argv str", recipes.main, "shakespeare-draft", arg="argv")
probe("main argv ints", recipes.main, [1, 2], arg="argv")


@pytest.mark.parametrize("label, fn, args, kwargs, arg, contract", PROBES, ids=[p[0] for p in PROBES])
def test_probe(label, fn, args, kwargs, arg, contract):
    """A probe without a contract must be refused; one with a contract may also answer within it."""
    check = rejects if contract is None else functools.partial(valid_or_rejects, contract=contract)
    check(fn, *args, arg=arg, **kwargs)


def test_probe_labels_are_unique():
    assert len({p[0] for p in PROBES}) == len(PROBES)


@pytest.mark.parametrize("argv", [["no-such-recipe"], ["shakespeare-sae", "--dropout", "0.1"], ["--steps", "x"]])
def test_main_exits_with_status_2_on_bad_arguments(argv, capsys):
    """The documented limitation: a command line answers bad arguments with argparse's usage and status 2."""
    with pytest.raises(SystemExit) as info:
        recipes.main(argv)
    assert info.value.code == 2


# --- generated cases ----------------------------------------------------------------------------------------------

hostile = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.booleans(), st.none(),
                    st.text(max_size=2), st.just(np.float32(0.5)), st.just(np.int64(2)))


@settings(max_examples=25, deadline=None)
@given(hostile, hostile, hostile, hostile)
def test_train_config_on_hostile_numbers(lr, warmup, clip, weight_decay):
    try:
        config = train.TrainConfig(steps=5, lr=lr, warmup=warmup, clip=clip, weight_decay=weight_decay)
    except (ValueError, TypeError) as exc:
        assert any(n in str(exc) for n in ("lr", "warmup", "clip", "weight_decay")), str(exc)
    else:
        assert all(math.isfinite(train.lr_at(s, config)) and train.lr_at(s, config) > 0 for s in range(5))


@settings(max_examples=25, deadline=None)
@given(hostile)
def test_validators_on_hostile_values(value):
    for fn, args in ((validate.positive_int, ()), (validate.int_at_least, (0,)), (validate.int_in_range, (0, 3)),
                     (validate.number_in, (0, 1)), (validate.probability, ())):
        result = valid_or_rejects(fn, value, "x", *args, arg="x", contract=lambda r: validate.is_number(r))
        if result is not None:
            assert not math.isnan(result)
