"""Recipes for chapter 4's checkpoints, all trained on Fashion-MNIST's training split and scored on its
test split: ``python -m arlib.recipes NAME`` with NAME one of

- ``fashion-vq``: the VQ-VAE tokenizer (7x7 grid of 256 codes) of the raster model;
- ``fashion-msvq``: VAR's multi-scale tokenizer (maps of 1, 4, 9, 25, 49 tokens, 256 codes);
- ``fashion-raster``: the class-conditional raster GPT over ``fashion-vq`` tokens;
- ``fashion-var``: the class-conditional next-scale transformer over ``fashion-msvq`` maps;
- ``fashion-var-markov``: the same with the book's earlier Markovian mask (each scale sees itself, the previous
  scale and the class token; HMAR's own mask is ``fashion-hmar``'s);
- ``fashion-fsq``: finite scalar quantization (levels 8, 6, 5: 240 codes, no codebook) with the VQ-VAE's
  encoder and decoder, for the tokenizer comparison;
- ``fashion-raster-draft``: a small raster GPT (1 layer, width 64) over ``fashion-vq`` tokens, the drafter of
  LANTERN's speculative decoding;
- ``fashion-hmar``: HMAR as published (block-diagonal attention, then its masked-prediction branch), over
  ``fashion-msvq`` maps;
- ``fashion-maskgit``: MaskGIT's bidirectional transformer over ``fashion-vq`` tokens;
- ``fashion-classifier``: the CNN whose accuracy and features score every generator.

The generators need their tokenizer's checkpoint first (the recipe says so if it is missing).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from arlib.checkpoints import checkpoint_paths, load_model, provenance, save_checkpoint
from arlib.data import SOURCES, fashion_mnist
from arlib.env import pick_device, seed_everything
from arlib.train import Recipe, TrainConfig, distributed_context, mean_last_loss, train
from arlib.validate import describe, positive_int
from arlib.vision.fsq import FSQVAE
from arlib.vision.generators import NextScaleModel, next_scale_loss, raster_loss, raster_model, raster_tokens
from arlib.vision.hmar import HMARModel, hmar_loss, hmar_masked_loss
from arlib.vision.image_metrics import FashionClassifier
from arlib.vision.maskgit import MaskGITModel, maskgit_loss
from arlib.vision.vq import VQVAE, MultiScaleVQVAE, VQConfig

_KIND_NAMES = ("vq", "msvq", "fsq", "raster", "var", "hmar", "maskgit", "classifier")


@dataclass(frozen=True)
class VisualRecipe:
    kind: str  # one of _KIND_NAMES
    train: TrainConfig
    batch_size: int
    description: str
    model: dict  # constructor arguments (sizes)
    finetune: TrainConfig | None = None  # a second stage (HMAR's mask branch)

    def __post_init__(self):
        if self.kind not in _KIND_NAMES:
            raise ValueError(f"kind: expected one of {list(_KIND_NAMES)}, got {self.kind!r}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train: expected a TrainConfig, got {type(self.train).__name__}")
        positive_int(self.batch_size, "batch_size")
        if not isinstance(self.model, dict):
            raise TypeError(f"model: expected a dict of constructor arguments, got {type(self.model).__name__}")
        if self.finetune is not None and not isinstance(self.finetune, TrainConfig):
            raise TypeError(f"finetune: expected a TrainConfig or None, got {type(self.finetune).__name__}")


VISUAL_RECIPES: dict[str, VisualRecipe] = {
    "fashion-vq": VisualRecipe("vq", TrainConfig(steps=3000, lr=2e-3, warmup=100, weight_decay=0.0), 128,
                               "VQ-VAE tokenizer: 28x28 -> 7x7 tokens of 256 codes", {"num_codes": 256}),
    "fashion-msvq": VisualRecipe("msvq", TrainConfig(steps=3000, lr=2e-3, warmup=100, weight_decay=0.0), 128,
                                 "VAR multi-scale tokenizer: maps 1, 2, 3, 5, 7 of 256 codes", {"num_codes": 256}),
    "fashion-fsq": VisualRecipe("fsq", TrainConfig(steps=3000, lr=2e-3, warmup=100, weight_decay=0.0), 128,
                                "FSQ tokenizer: 28x28 -> 7x7 tokens, levels (8, 6, 5) = 240 codes",
                                {"levels": [8, 6, 5]}),
    "fashion-raster": VisualRecipe("raster", TrainConfig(steps=4000, lr=2e-3, warmup=200), 64,
                                   "raster-order class-conditional GPT over fashion-vq tokens",
                                   {"n_layer": 4, "n_head": 4, "n_embd": 128}),
    "fashion-var": VisualRecipe("var", TrainConfig(steps=4000, lr=2e-3, warmup=200), 64,
                                "next-scale class-conditional transformer over fashion-msvq maps",
                                {"n_layer": 4, "n_head": 4, "n_embd": 128}),
    "fashion-var-markov": VisualRecipe("var", TrainConfig(steps=4000, lr=2e-3, warmup=200), 64,
                                       "next-scale transformer with Markovian attention (HMAR), fashion-msvq maps",
                                       {"n_layer": 4, "n_head": 4, "n_embd": 128, "markov": True}),
    "fashion-raster-draft": VisualRecipe("raster", TrainConfig(steps=2000, lr=3e-3, warmup=100), 64,
                                         "small raster GPT over fashion-vq tokens: LANTERN's drafter",
                                         {"n_layer": 1, "n_head": 2, "n_embd": 64}),
    "fashion-hmar": VisualRecipe("hmar", TrainConfig(steps=4000, lr=2e-3, warmup=200), 64,
                                 "HMAR: block-diagonal next-scale transformer and its masked-prediction branch",
                                 {"n_layer": 4, "n_head": 4, "n_embd": 128, "mask_layers": 2},
                                 finetune=TrainConfig(steps=1500, lr=1e-3, warmup=100)),
    "fashion-maskgit": VisualRecipe("maskgit", TrainConfig(steps=4000, lr=2e-3, warmup=200), 64,
                                    "MaskGIT class-conditional bidirectional transformer over fashion-vq tokens",
                                    {"n_layer": 4, "n_head": 4, "n_embd": 128}),
    "fashion-classifier": VisualRecipe("classifier", TrainConfig(steps=1500, lr=2e-3, warmup=100), 128,
                                       "CNN classifier for class consistency and Frechet distances", {}),
}
TOKENIZER_OF = {"raster": "fashion-vq", "var": "fashion-msvq", "hmar": "fashion-msvq", "maskgit": "fashion-vq"}


def images_as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"images: expected uint8 images (N, 28, 28) as Fashion-MNIST stores them, "
                         f"got {describe(images)}")
    return images[:, None].float() / 255.0


def load_visual(name: str, device=None, directory=None):
    """One of chapter 4's checkpoints as float32 in eval mode: ``(model, meta)`` (the recipes use it for a
    generator's tokenizer; readers use :func:`arlib.load`)."""
    model, meta, _ = load_model(name, _build_from_meta, device, directory)
    return model, meta


def _build_from_meta(meta: dict):
    return _build(meta["kind"], meta["config"]), {}


def _build(kind: str, config: dict):
    if kind == "vq":
        return VQVAE(VQConfig(**{**config, "scales": tuple(config["scales"])}))
    if kind == "msvq":
        return MultiScaleVQVAE(VQConfig(**{**config, "scales": tuple(config["scales"])}))
    if kind == "fsq":
        return FSQVAE(**{**config, "levels": tuple(config["levels"])})
    if kind == "raster":
        return raster_model(**config)
    if kind == "maskgit":
        return MaskGITModel(**config)
    if kind == "hmar":
        return HMARModel(**{**config, "scales": tuple(config["scales"])})
    if kind == "var":
        return NextScaleModel(**{**config, "scales": tuple(config["scales"])})
    return FashionClassifier(**config)


def _batches(n: int, batch_size: int):
    def get(step, generator):
        return torch.randint(n, (batch_size,), generator=generator)
    return get


@torch.no_grad()
def _encode_all(tokenizer, images: torch.Tensor, batch: int = 1000):
    out = [tokenizer.encode(images_as_float(images[i:i + batch])) for i in range(0, len(images), batch)]
    if isinstance(out[0], list):  # multi-scale: a list of maps per batch
        return [torch.cat([o[k] for o in out]) for k in range(len(out[0]))]
    return torch.cat(out)


def run_visual_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                      **_ignored) -> dict | None:
    """Train chapter 4's checkpoint ``name`` (one of ``VISUAL_RECIPES``) and save it; returns the sidecar."""
    if name not in VISUAL_RECIPES:
        raise ValueError(f"name: expected one of {sorted(VISUAL_RECIPES)}, got {name!r}")
    if steps is not None:
        positive_int(steps, "steps")
    recipe = VISUAL_RECIPES[name]
    rank, _ = distributed_context()
    device = pick_device()
    seed_everything(0)
    config = recipe.train if steps is None else TrainConfig(**{**asdict(recipe.train), "steps": steps,
                                                                "warmup": min(recipe.train.warmup, steps)})
    config = TrainConfig(**{**asdict(config), "progress": progress})
    train_images, train_labels = fashion_mnist("train")
    test_images, test_labels = fashion_mnist("test")
    t0 = time.time()
    kind = recipe.kind
    if kind in ("vq", "msvq", "fsq"):
        model_config = dict(recipe.model) if kind == "fsq" else VQConfig(**recipe.model).to_dict()
        model = _build(kind, model_config).to(device)
        x_train, x_test = images_as_float(train_images).to(device), images_as_float(test_images[:2000]).to(device)

        def loss_fn(net, idx):
            recon, _, commit = net(x_train[idx])
            return F.mse_loss(recon, x_train[idx]) + commit

        def evaluate(net):
            recon, codes, _ = net(x_test)
            codes = torch.cat([c.flatten() for c in codes]) if isinstance(codes, list) else codes
            quantizer = net.quantizer.vq if kind == "msvq" else net.quantizer
            perplexity, used = quantizer.usage(codes)
            return {"test_mse": F.mse_loss(recon, x_test).item(), "code_perplexity": perplexity, "codes_used": used}
    elif kind == "classifier":
        model_config = {}
        model = _build(kind, model_config).to(device)
        x_train, y_train = images_as_float(train_images).to(device), train_labels.to(device)
        x_test, y_test = images_as_float(test_images).to(device), test_labels.to(device)

        def loss_fn(net, idx):
            return F.cross_entropy(net(x_train[idx]), y_train[idx])

        def evaluate(net):
            return {"test_accuracy": (net(x_test).argmax(-1) == y_test).float().mean().item()}
    else:
        tokenizer_name = TOKENIZER_OF[kind]
        # the tokenizer from the same folder when it is there (a test's temporary folder), else the committed one
        here = out is not None and checkpoint_paths(tokenizer_name, out)[0].exists()
        tokenizer, tokenizer_meta = load_visual(tokenizer_name, device, out if here else None)
        vq_config = tokenizer_meta["config"]
        codes_train = _encode_all(tokenizer, train_images.to(device))
        codes_test = _encode_all(tokenizer, test_images[:2000].to(device))
        y_train, y_test = train_labels.to(device), test_labels[:2000].to(device)
        K = vq_config["num_codes"]
        if kind == "raster":
            model_config = {"num_codes": K, **recipe.model}
            model = _build(kind, model_config).to(device)

            drop_generator = torch.Generator(device=device).manual_seed(1)  # the class dropout's own stream

            def loss_fn(net, idx):
                return raster_loss(net, raster_tokens(codes_train[idx], y_train[idx], K, drop=0.1,
                                                      generator=drop_generator), K)

            def evaluate(net):
                return {"test_nll": raster_loss(net, raster_tokens(codes_test, y_test, K), K).item()}
        elif kind == "maskgit":
            model_config = {"num_codes": K, **recipe.model}
            model = _build(kind, model_config).to(device)
            stream = torch.Generator(device=device).manual_seed(1)  # masks and class dropout

            def loss_fn(net, idx):
                labels = y_train[idx]
                drop = torch.rand(labels.shape, generator=stream, device=device) < 0.1
                return maskgit_loss(net, codes_train[idx], torch.where(drop, torch.full_like(labels, 10), labels),
                                    stream)

            def evaluate(net):  # the same masks at every evaluation: one fixed stream
                return {"test_masked_nll": maskgit_loss(net, codes_test, y_test,
                                                        torch.Generator(device=device).manual_seed(2)).item()}
        else:
            model_config = {"num_codes": K, "code_dim": vq_config["code_dim"], "scales": list(vq_config["scales"]),
                            **recipe.model}
            model = _build(kind, model_config).to(device)
            if kind == "hmar":
                model.start_next_scale_branch()  # the mask branch waits for the second stage
            quantizer = tokenizer.quantizer

            def var_loss(net, maps, labels):
                with torch.no_grad():
                    inputs = quantizer.next_scale_inputs(maps)
                return (hmar_loss if kind == "hmar" else next_scale_loss)(net, labels, maps, inputs)

            drop_generator = torch.Generator().manual_seed(1)  # the class dropout's own stream

            def loss_fn(net, idx):
                labels = y_train[idx]
                drop = torch.rand(labels.shape, generator=drop_generator) < 0.1
                labels = torch.where(drop.to(labels.device), torch.full_like(labels, 10), labels)
                return var_loss(net, [m[idx] for m in codes_train], labels)

            def evaluate(net):
                return {"test_nll": var_loss(net, codes_test, y_test).item()}
        model_config = {**model_config, "tokenizer": tokenizer_name}
    n_train = len(train_images)
    history = train(model, loss_fn, _batches(n_train, recipe.batch_size), config, evaluate)
    finetune = None
    if recipe.finetune is not None:  # HMAR's second stage: the mask branch alone
        finetune = recipe.finetune if steps is None else TrainConfig(**{**asdict(recipe.finetune), "steps": steps,
                                                                       "warmup": min(recipe.finetune.warmup, steps)})
        finetune = TrainConfig(**{**asdict(finetune), "progress": progress})
        model.start_mask_branch()
        mask_stream = torch.Generator().manual_seed(3)  # the masked positions' own stream
        codebook = quantizer.vq.codebook

        def masked_loss(net, maps, labels, generator):
            with torch.no_grad():
                inputs = quantizer.next_scale_inputs(maps)
            return hmar_masked_loss(net, labels, maps, inputs, codebook, generator)

        def finetune_loss(net, idx):
            return masked_loss(net, [m[idx] for m in codes_train], y_train[idx], mask_stream)

        def finetune_eval(net):
            return {**evaluate(net), "test_masked_nll": masked_loss(net, codes_test, y_test,
                                                                    torch.Generator().manual_seed(4)).item()}
        stage_two = train(model, finetune_loss, _batches(n_train, recipe.batch_size), finetune, finetune_eval)
        model.requires_grad_(True)
    if rank != 0:
        return None
    metrics = {k: round(v, 5) for k, v in (stage_two if finetune else history)["eval"][-1][1].items()}
    meta = {"name": name, "kind": kind, "description": recipe.description,
            "config": {k: v for k, v in model_config.items() if k != "tokenizer"},
            "tokenizer": model_config.get("tokenizer"), "parameters": sum(p.numel() for p in model.parameters()),
            "train": {**asdict(config), "batch_size": recipe.batch_size, "final_train_loss": mean_last_loss(history),
                      "seconds": round(history["seconds"], 1)},
            "metrics": metrics, "eval_history": history["eval"],
            **({"finetune": {**asdict(finetune), "final_train_loss": mean_last_loss(stage_two),
                             "seconds": round(stage_two["seconds"], 1),
                             "eval_history": stage_two["eval"]}} if finetune else {}),
            "data": {key: SOURCES[key].sha256 for key in SOURCES if key.startswith("fashion-mnist")},
            **provenance(name, steps, t0, device)}
    if kind in ("vq", "msvq"):
        quantizer = model.quantizer if kind == "vq" else model.quantizer.vq
        meta["metrics"]["codes_restarted"] = int(quantizer.restarts)
    save_checkpoint(model, name, meta, out)
    return meta


KINDS = {kind: _build_from_meta for kind in _KIND_NAMES}
RECIPES = {name: Recipe(name, r.kind, r.model, r.train, run_visual_recipe, r.description)
           for name, r in VISUAL_RECIPES.items()}
