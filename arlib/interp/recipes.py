"""The recipe for chapter 6's checkpoint: a sparse autoencoder on the residual stream of the committed
``shakespeare-target`` GPT, ``python -m arlib.recipes shakespeare-sae``.

The activations entering block ``layer`` (the middle of the six) are collected once, over random windows of
Shakespeare's training split, stored in float16, and the SAE trains on random batches of them. The sidecar
records the reconstruction on held-out text (normalized MSE, L0, dead and dense latents) and the GPT's
next-character loss on held-out text with the SAE's reconstruction in place of its activations, beside the
clean loss and the loss with the activations replaced by their mean.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F

from arlib.checkpoints import dequantize_state, load_model, provenance, quantize_state, save_checkpoint
from arlib.data import SOURCES, shakespeare
from arlib.env import pick_device, seed_everything
from arlib.interp.sae import SAEConfig, SparseAutoencoder, evaluate, residual_stream, spliced_logits
from arlib.interp.sae_train import TopKObjective, collect_activations, train_sae
from arlib.text.recipes import load_gpt
from arlib.train import Recipe, TrainConfig, mean_last_loss
from arlib.validate import float_tensor, positive_int, token_ids

SAE_RECIPES: dict[str, dict] = {
    "shakespeare-sae": dict(
        target="shakespeare-target", layer=3, windows=2048, batch_size=1024,
        sae=SAEConfig(d_in=256, n_latents=1024, activation="topk", k=32, unit_decoder=True),
        objective=dict(k_aux=512, aux_coeff=1 / 32, dead_after=500),
        train=TrainConfig(steps=4000, lr=1e-3, warmup=200, min_lr_ratio=0.05, weight_decay=0.0, eval_every=1000),
        description="TopK SAE (1024 latents, k = 32) on the residual stream entering block 3 of shakespeare-target "
                    "(chapter 6), stored in int8",
    ),
}
EVAL_WINDOWS = 64  # held-out windows of 256 characters for the sidecar's metrics


def build_sae(meta: dict) -> tuple[SparseAutoencoder, dict]:
    """An empty SAE of the sidecar's config (``meta["layer"]`` says which residual stream it reads)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError("meta: expected an SAE sidecar whose 'config' holds the SAEConfig's fields")
    return SparseAutoencoder(SAEConfig(**meta["config"])), {}


KINDS = {"sae": build_sae}


def load_sae(name: str = "shakespeare-sae", device=None, directory=None) -> tuple[SparseAutoencoder, dict]:
    """An SAE checkpoint as float32 in eval mode: ``(sae, meta)`` (readers use :func:`arlib.load`)."""
    sae, meta, _ = load_model(name, build_sae, device, directory, kind="sae")
    return sae, meta


@torch.no_grad()
def gpt_losses(gpt, sae, layer: int, windows: torch.Tensor, mean: torch.Tensor) -> dict:
    """Next-token loss (nats) of ``gpt`` on ``windows`` (B, T + 1): clean, with the SAE's reconstruction spliced in
    at ``layer``, and with the activations there replaced by ``mean`` (d,); plus the fraction of the mean-ablation
    loss gap that the SAE recovers."""
    if not all(hasattr(gpt, a) for a in ("trunk", "config")):
        raise TypeError(f"gpt: expected an arlib.text.gpt.GPT, got {type(gpt).__name__}")
    d = gpt.config.n_embd
    if not isinstance(sae, SparseAutoencoder) or sae.config.d_in != d:
        raise ValueError(f"sae: expected a SparseAutoencoder of d_in = {d} (the GPT's width), got "
                         f"{sae.config.d_in if isinstance(sae, SparseAutoencoder) else type(sae).__name__}")
    token_ids(windows, "windows", dim=2, vocab_size=gpt.config.vocab_size,
              expected="a (B, T + 1 >= 2) torch.long tensor of token ids")
    if windows.shape[1] < 2:
        raise ValueError(f"windows: expected at least 2 tokens per window (inputs and targets), got {windows.shape[1]}")
    float_tensor(mean, "mean", dim=1, expected=f"a ({d},) floating mean activation")
    if mean.shape != (d,):
        raise ValueError(f"mean: expected a ({d},) mean activation, got {tuple(mean.shape)}")
    x, y = windows[:, :-1], windows[:, 1:]

    def nll(logits):
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()

    clean = nll(gpt(x))
    spliced = nll(spliced_logits(gpt, x, layer, lambda h: sae(h)[0]))
    ablated = nll(spliced_logits(gpt, x, layer, lambda h: mean.expand_as(h)))
    return {"clean_nll": clean, "sae_nll": spliced, "mean_ablated_nll": ablated,
            "loss_increase": spliced - clean, "loss_recovered": (ablated - spliced) / (ablated - clean)}


def run_sae_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                   eval_chars: int | None = None, windows: int | None = None) -> dict:
    """Train SAE recipe ``name`` on the frozen target GPT and save it; returns the sidecar metadata."""
    if name not in SAE_RECIPES:
        raise ValueError(f"name: expected one of {sorted(SAE_RECIPES)}, got {name!r}")
    if steps is not None:
        positive_int(steps, "steps")
    recipe = SAE_RECIPES[name]
    config = recipe["train"]
    if steps:
        config = replace(config, steps=steps, warmup=min(config.warmup, steps), eval_every=0)
    config = replace(config, progress=progress)
    seed_everything(config.seed)
    device = pick_device()
    gpt, tokenizer, target_meta = load_gpt(recipe["target"], device=device)
    for p in gpt.parameters():
        p.requires_grad_(False)
    layer, block = recipe["layer"], gpt.config.block_size
    corpus = shakespeare()
    train_ids, val_ids = tokenizer.encode(corpus.train), tokenizer.encode(corpus.val)
    t0 = time.time()
    n_windows = windows or recipe["windows"]
    acts = collect_activations(gpt, train_ids, layer, n_windows, torch.Generator().manual_seed(config.seed + 1))
    acts = acts.half()  # (n_windows * block, d): float16 halves the memory; batches return to float32
    n_eval = max(1, (eval_chars or EVAL_WINDOWS * block) // block)
    starts = torch.randint(0, len(val_ids) - block - 1, (n_eval,), generator=torch.Generator().manual_seed(2))
    val_windows = val_ids[starts[:, None] + torch.arange(block + 1)].to(device)  # (n_eval, T + 1)
    val_acts = residual_stream(gpt, val_windows[:, :-1], layer).reshape(-1, gpt.config.n_embd)
    mean = acts[: 200_000].float().mean(0)
    sae = SparseAutoencoder(recipe["sae"], torch.Generator().manual_seed(config.seed)).to(device)
    sae.init_decoder_bias(acts[: 200_000].float())
    objective = TopKObjective(**recipe["objective"])
    batch = recipe["batch_size"]

    def get_batch(step, generator):
        return acts[torch.randint(len(acts), (batch,), generator=generator).to(acts.device)].float()

    def evaluate_fn(model):
        return {k: v for k, v in evaluate(model, val_acts).items() if k in ("nmse", "l0")}

    history = train_sae(sae, objective, get_batch, config, evaluate_fn)
    sae.eval()
    float_nmse = evaluate(sae, val_acts)["nmse"]
    # The checkpoint is stored in int8 (arlib.checkpoints.quantize_state): every metric is the stored SAE's.
    sae.load_state_dict(dequantize_state(quantize_state(sae.state_dict())))
    metrics = evaluate(sae, val_acts)
    metrics.update(gpt_losses(gpt, sae, layer, val_windows, mean))
    metrics["nmse_float32"] = float_nmse
    meta = {
        "name": name,
        "kind": "sae",
        "description": recipe["description"],
        "config": recipe["sae"].to_dict(),
        "layer": layer,
        "parameters": sum(p.numel() for p in sae.parameters()),
        "target": {"name": recipe["target"], "config": gpt.config.to_dict(),
                   "report_nll": target_meta["metrics"]["report_nll"]},
        "tokenizer": {"kind": "char", "vocab": tokenizer.vocab},
        "data": {"source": "shakespeare", "sha256": SOURCES["shakespeare"].sha256,
                 "train_activations": len(acts), "train_windows": n_windows,
                 "val_positions_scored": int(val_acts.shape[0])},
        "objective": {"kind": "topk+auxk", **recipe["objective"]},
        "train": {**asdict(config), "batch_size": batch, "final_train_loss_avg50": mean_last_loss(history)},
        "metrics": {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()},
        "eval_history": history["eval"],
        **provenance(name, steps, t0, device, stored_dtype="int8"),
    }
    save_checkpoint(sae, name, meta, directory=out, dtype=torch.int8)
    return meta


RECIPES = {name: Recipe(name, "sae", r["sae"], r["train"], run_sae_recipe, r["description"])
           for name, r in SAE_RECIPES.items()}
