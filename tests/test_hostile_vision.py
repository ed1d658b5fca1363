"""Hostile inputs for chapter 4's evaluation and added methods: arlib.vision.sample_quality, arlib.vision.fsq,
arlib.vision.maskgit and the tokenizer parts arlib.vision.vq exposes for them. Every bad argument must raise
a ValueError/TypeError naming it."""

from __future__ import annotations

import math

import pytest
import torch
from hostile import rejects
from tiny_models import tiny_gpt

from arlib.vision import fsq as fsq_mod
from arlib.vision import generators as gen
from arlib.vision import hmar as hm
from arlib.vision import lantern as lt
from arlib.vision import maskgit as mg
from arlib.vision import sample_quality as sq
from arlib.vision import vq

COVERED = {
    "arlib.vision.sample_quality.kernel_distance", "arlib.vision.sample_quality.precision_recall",
    "arlib.vision.sample_quality.nearest_distances", "arlib.vision.sample_quality.score_samples",
    "arlib.vision.sample_quality.difference",
    "arlib.vision.fsq.FiniteScalarQuantizer", "arlib.vision.fsq.FSQVAE",
    "arlib.vision.maskgit.MaskGITModel", "arlib.vision.maskgit.decoding_plan",
    "arlib.vision.maskgit.mask_schedule", "arlib.vision.maskgit.maskgit_loss",
    "arlib.vision.maskgit.sample_maskgit",
    "arlib.vision.vq.conv_encoder", "arlib.vision.vq.conv_decoder", "arlib.vision.vq.check_images",
    "arlib.vision.lantern.relaxed_token_law", "arlib.vision.lantern.lantern_speculative",
    "arlib.vision.lantern.sample_raster_lantern",
    "arlib.vision.hmar.hmar_mask", "arlib.vision.hmar.HMARModel", "arlib.vision.hmar.hmar_loss",
    "arlib.vision.hmar.hmar_masked_loss", "arlib.vision.hmar.sample_hmar",
    "arlib.vision.generators.scale_targets",
}

G = torch.Generator().manual_seed(0)
A, B = torch.randn(20, 4, generator=G), torch.randn(15, 4, generator=G)
LABELS = torch.arange(20) % 4


def _nan(t):
    t = t.clone()
    t[0, 0] = math.nan
    return t


CASES = [
    ("kid 1-D", sq.kernel_distance, (A[:, 0], B), {}, "features_a"),
    ("kid one row", sq.kernel_distance, (A[:1], B), {}, "features_a"),
    ("kid widths", sq.kernel_distance, (A, B[:, :3]), {}, "features_b"),
    ("kid NaN", sq.kernel_distance, (A, _nan(B)), {}, "features_b"),
    ("kid bool", sq.kernel_distance, (A > 0, B), {}, "features_a"),
    ("kid list", sq.kernel_distance, (A.tolist(), B), {}, "features_a"),
    ("pr k zero", sq.precision_recall, (A, B), {"k": 0}, "k"),
    ("pr k float", sq.precision_recall, (A, B), {"k": 2.5}, "k"),
    ("pr too few rows", sq.precision_recall, (A[:3], B), {"k": 3}, "real"),
    ("pr fake too few", sq.precision_recall, (A, B[:2]), {}, "fake"),
    ("pr inf", sq.precision_recall, (A, B * math.inf), {}, "fake"),
    ("nearest widths", sq.nearest_distances, (A, B[:, :2]), {}, "bank"),
    ("nearest empty", sq.nearest_distances, (A[:0], B), {}, "queries"),
    ("nearest chunk", sq.nearest_distances, (A, B), {"chunk": 0}, "chunk"),
    ("score predictions float", sq.score_samples, (A, LABELS.float(), LABELS, B), {}, "predictions"),
    ("score labels short", sq.score_samples, (A, LABELS, LABELS[:5], B), {}, "labels"),
    ("score reference widths", sq.score_samples, (A, LABELS, LABELS, B[:, :2]), {}, "reference"),
    ("score boots", sq.score_samples, (A, LABELS, LABELS, B), {"boots": 1}, "boots"),
    ("score seed", sq.score_samples, (A, LABELS, LABELS, B), {"seed": -1}, "seed"),
    ("score NaN", sq.score_samples, (_nan(A), LABELS, LABELS, B), {}, "features"),
    ("difference name", sq.difference, ({}, {}, "fid"), {}, "name"),
    ("difference not scores", sq.difference, ({}, {}, "kid"), {}, "scores_a"),
    ("difference level", sq.difference, ({}, {}, "kid"), {"level": 1.0}, "level"),
    ("fsq levels empty", fsq_mod.FiniteScalarQuantizer, ((),), {}, "levels"),
    ("fsq level 2", fsq_mod.FiniteScalarQuantizer, ((2, 5),), {}, "levels"),
    ("fsq level float", fsq_mod.FiniteScalarQuantizer, ((5.0, 5),), {}, "levels"),
    ("fsq levels str", fsq_mod.FiniteScalarQuantizer, ("865",), {}, "levels"),
    ("fsqvae code_dim", fsq_mod.FSQVAE, ((8, 6, 5),), {"code_dim": 0}, "code_dim"),
    ("fsqvae width odd", fsq_mod.FSQVAE, ((8, 6, 5),), {"width": 7}, "width"),
    ("schedule above 1", mg.mask_schedule, (1.5,), {}, "ratio"),
    ("schedule NaN", mg.mask_schedule, (math.nan,), {}, "ratio"),
    ("schedule tensor negative", mg.mask_schedule, (torch.tensor([-0.1]),), {}, "ratio"),
    ("schedule tensor long", mg.mask_schedule, (torch.tensor([0]),), {}, "ratio"),
    ("maskgit codes", mg.MaskGITModel, (0,), {}, "num_codes"),
    ("maskgit classes", mg.MaskGITModel, (8,), {"num_classes": 0}, "num_classes"),
    ("encoder no config", vq.conv_encoder, (None,), {}, "config"),
    ("decoder dict config", vq.conv_decoder, ({"width": 8},), {}, "config"),
    ("images 3-D", vq.check_images, (torch.rand(2, 28, 28),), {}, "x"),
    ("targets not a list", gen.scale_targets, (torch.zeros(2, 1, 1, dtype=torch.long), (1,), 8), {}, "maps"),
    ("targets wrong scale", gen.scale_targets, ([torch.zeros(2, 2, 2, dtype=torch.long)], (1,), 8), {}, "maps"),
    ("targets code too big", gen.scale_targets, ([torch.full((2, 1, 1), 8)], (1,), 8), {}, "maps"),
    ("images long", vq.check_images, (torch.zeros(2, 1, 28, 28, dtype=torch.long),), {}, "x"),
]


@pytest.mark.parametrize("label, fn, args, kwargs, arg", CASES, ids=[c[0] for c in CASES])
def test_hostile_case(label, fn, args, kwargs, arg):
    rejects(fn, *args, arg=arg, **kwargs)


def test_quantizer_and_autoencoder_inputs_are_named():
    quantizer = fsq_mod.FiniteScalarQuantizer((5, 5))
    rejects(quantizer, torch.randn(1, 3, 2, 2), arg="z")  # 3 channels for 2 levels
    rejects(quantizer, torch.randn(1, 2, 2), arg="z")
    rejects(quantizer, torch.full((1, 2, 2, 2), math.nan), arg="z")
    rejects(quantizer.indices_to_codes, torch.tensor([25]), arg="indices")
    rejects(quantizer.indices_to_codes, torch.tensor([0.0]), arg="indices")
    rejects(quantizer.usage, torch.tensor([], dtype=torch.long), arg="indices")
    model = fsq_mod.FSQVAE((5, 5), code_dim=4, width=4)
    rejects(model, torch.rand(1, 1, 14, 14), arg="x")
    rejects(model.decode, torch.zeros(1, 6, 6, dtype=torch.long), arg="indices")
    rejects(model.decode, torch.full((1, 7, 7), 25), arg="indices")


def test_maskgit_inputs_are_named():
    torch.manual_seed(0)
    model = mg.MaskGITModel(6, num_classes=3, n_layer=1, n_head=2, n_embd=16)
    labels = torch.tensor([0, 1])
    tokens = torch.zeros(2, 49, dtype=torch.long)
    rejects(model, labels, tokens[:, :48], arg="tokens")
    rejects(model, labels, tokens + 7, arg="tokens")  # 6 is [MASK], 7 is nothing
    rejects(model, labels[:1], tokens, arg="tokens")
    rejects(model, labels + 3, tokens, arg="labels")  # class 4 of 3 (3 is the null class)
    grids = torch.zeros(2, 7, 7, dtype=torch.long)
    rejects(mg.maskgit_loss, "model", grids, labels, arg="model")
    rejects(mg.maskgit_loss, model, grids + 6, labels, arg="grids")  # [MASK] is not a code
    rejects(mg.maskgit_loss, model, grids[:, :6], labels, arg="grids")
    rejects(mg.maskgit_loss, model, grids, labels, generator="0", arg="generator")
    rejects(mg.sample_maskgit, model, labels, steps=0, arg="steps")
    rejects(mg.sample_maskgit, model, labels, cfg_scale=math.inf, arg="cfg_scale")
    rejects(mg.sample_maskgit, model, labels, choice_temperature=-1, arg="choice_temperature")
    rejects(mg.sample_maskgit, model, labels, temperature=0, arg="temperature")
    rejects(mg.sample_maskgit, model, labels.float(), arg="labels")
    rejects(mg.sample_maskgit, torch.nn.Linear(2, 2), labels, arg="model")
    for plan in ([49], [1] * 7 + [43], [50, -1] + [0] * 6, [True] * 8, [6.0] * 7 + [7.0], "cosine", [1] * 7 + [41]):
        rejects(mg.sample_maskgit, model, labels, steps=8, plan=plan, arg="plan")
    rejects(mg.decoding_plan, 0, 49, arg="steps")
    rejects(mg.decoding_plan, 8, 0, arg="n_tokens")
    rejects(mg.decoding_plan, 8, 49, "cosine", arg="schedule")
    rejects(mg.decoding_plan, 8, 49, lambda r: math.nan, arg="schedule")
    rejects(mg.decoding_plan, 8, 49, lambda r: "half", arg="schedule")
    rejects(mg.decoding_plan, 8, 49, lambda r: torch.ones(2), arg="schedule")


def test_lantern_inputs_are_named():
    V = 6
    target, drafter = tiny_gpt(0, vocab_size=V), tiny_gpt(1, vocab_size=V, n_layer=1)
    table = torch.stack([torch.roll(torch.arange(V), -i) for i in range(V)])  # (V, V), each code first
    p = torch.full((V,), 1 / V, dtype=torch.float64)
    rejects(lt.relaxed_token_law, p, 0, table, 1.5, 2, arg="delta")
    rejects(lt.relaxed_token_law, p, 0, table, 0.1, 0, arg="k")
    rejects(lt.relaxed_token_law, p, 0, table[:, :3], 0.1, 2, arg="neighbors")  # needs k + 2 columns
    rejects(lt.relaxed_token_law, p * 2, 0, table, 0.1, 2, arg="p")
    rejects(lt.relaxed_token_law, p, V, table, 0.1, 2, arg="x")
    prefix = torch.tensor([[1]])
    rejects(lt.lantern_speculative, "gpt", drafter, prefix, 3, V, arg="target")
    rejects(lt.lantern_speculative, target, tiny_gpt(2, vocab_size=V + 1), prefix, 3, V, arg="drafter")
    rejects(lt.lantern_speculative, target, drafter, prefix, -1, V, arg="length")
    rejects(lt.lantern_speculative, target, drafter, prefix, 3, V + 1, arg="vocab")
    rejects(lt.lantern_speculative, target, drafter, prefix, 3, V, 0, arg="gamma")
    rejects(lt.lantern_speculative, target, drafter, prefix, 3, V, delta=0.1, arg="neighbors")
    rejects(lt.lantern_speculative, target, drafter, prefix, 3, V, delta=0.1, neighbors=table[:, :2], arg="neighbors")
    rejects(lt.lantern_speculative, target, drafter, prefix, 3, V, cfg_scale=2.0, arg="prefix")  # one row
    rejects(lt.lantern_speculative, target, drafter, prefix + V, 3, V, arg="prefix")
    rejects(lt.lantern_speculative, target, drafter, prefix, 64, V, arg="length")  # past the context
    rejects(lt.lantern_speculative, target, drafter, prefix, 3, V, generator="g", arg="generator")
    rejects(lt.sample_raster_lantern, target, drafter, 0, 3, 3, arg="num_codes")  # 3 + 3 + 1 != 6
    rejects(lt.sample_raster_lantern, target, drafter, 4, 2, 3, arg="label")
    rejects(lt.sample_raster_lantern, "gpt", drafter, 0, 2, 3, arg="target")


def test_hmar_inputs_are_named():
    rejects(hm.hmar_mask, (), arg="scales")
    rejects(hm.hmar_mask, (1, 0), arg="scales")
    rejects(hm.HMARModel, 8, 3, (1, 2), n_layer=2, mask_layers=3, arg="mask_layers")
    rejects(hm.HMARModel, 0, 3, (1, 2), arg="num_codes")
    torch.manual_seed(0)
    model = hm.HMARModel(8, 3, (1, 2), num_classes=2, n_layer=2, n_head=2, n_embd=16, mask_layers=1)
    labels = torch.tensor([0, 1])
    inputs = [torch.randn(2, 4, 3)]
    rejects(model, labels, [torch.randn(2, 4, 2)], arg="inputs")
    rejects(model, labels, inputs * 2, arg="inputs")
    rejects(model, labels + 2, inputs, arg="labels")
    maps = [torch.zeros(2, 1, 1, dtype=torch.long), torch.zeros(2, 2, 2, dtype=torch.long)]
    rejects(hm.hmar_loss, "model", labels, maps, inputs, arg="model")
    rejects(hm.hmar_loss, model, labels, maps[:1], inputs, arg="maps")
    rejects(hm.hmar_loss, model, labels, [maps[0], maps[1] + 8], inputs, arg="maps")
    rejects(hm.hmar_masked_loss, model, labels, maps, inputs, torch.randn(8, 2), arg="codebook")
    rejects(hm.hmar_masked_loss, model, labels, maps, inputs, torch.randn(8, 3), generator=1, arg="generator")
    from arlib.vision.vq import MultiScaleQuantizer

    quantizer = MultiScaleQuantizer(8, 3, (1, 2))
    rejects(hm.sample_hmar, model, "q", labels, arg="quantizer")
    rejects(hm.sample_hmar, model, MultiScaleQuantizer(8, 3, (1, 3)), labels, arg="quantizer")
    rejects(hm.sample_hmar, model, quantizer, labels, schedule=((1,), (2, 1)), arg="schedule")
    rejects(hm.sample_hmar, model, quantizer, labels, schedule=((1,), (4, 0)), arg="schedule")
    rejects(hm.sample_hmar, model, quantizer, labels, cfg_scale=math.nan, arg="cfg_scale")
    rejects(hm.sample_hmar, model, quantizer, labels, temperature=-1, arg="temperature")
