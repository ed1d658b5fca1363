"""Chapter 1's ablation ladder: from a neural bigram to the GPT, one idea added per rung.

Rungs, each trained with the same optimizer, batch, context and number of steps
(``LADDER_SETTINGS``):

1. ``bigram``: a table of logits ``W[x_t]`` (V x V) trained by gradient descent; its optimum is the
   count table of bigram frequencies.
2. ``window-mlp``: Bengio et al. (2003)'s neural probabilistic language model: the embeddings of the
   previous ``n`` characters, concatenated, through one tanh layer.
3. ``one-head``: causal self-attention with a single head per layer, no MLP, no residual connection.
4. ``heads+mlp``: multi-head attention and a position-wise MLP per layer, still without residuals.
5. ``residual+ln``: residual connections with LayerNorm after each sub-layer, as in the original
   Transformer (Vaswani et al. 2017, "post-LN").
6. ``gpt``: the book's GPT (:class:`arlib.text.gpt.GPT`): LayerNorm before each sub-layer and at the end
   (GPT-2's "pre-LN"), GPT-2's scaled initialization and a tied output matrix.

Rungs 3-6 share depth, width and heads, so each step up the ladder changes one idea. The ladder is the
book's own teaching device; the rungs are standard architectures, credited in their docstrings.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from arlib.text.gpt import GPT, MLP, CausalSelfAttention, GPTConfig
from arlib.validate import MissingFileError, int_at_least, number_in, positive_int, token_ids

RUNGS = ("bigram", "window-mlp", "one-head", "heads+mlp", "residual+ln", "gpt")
# Controls beside the ladder: rungs 3 and 4 with one layer instead of four, which shows that what fails
# without residual connections is depth, not attention.
SIDE_RUNGS = {"one-head, 1 layer": ("one-head", 1), "heads+mlp, 1 layer": ("heads+mlp", 1)}


@dataclass(frozen=True)
class LadderSettings:
    """What every rung shares: the model size of rungs 3-6 and the training budget of all."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 64
    window: int = 8  # the window-MLP's n (characters of context)
    mlp_hidden: int = 256
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "block_size", "window", "mlp_hidden", "steps", "batch_size"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd: expected a multiple of n_head={self.n_head}, got {self.n_embd}")
        number_in(self.lr, "lr", 0, math.inf, bounds="()", expected="a finite learning rate > 0")
        object.__setattr__(self, "warmup", int_at_least(self.warmup, "warmup", 0))  # run_ladder clips it to steps


LADDER_SETTINGS = LadderSettings()


class _Config:
    """The attributes :func:`arlib.text.lm.token_nll` reads from a model's ``config``."""

    def __init__(self, vocab_size: int, block_size: int):
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.block_size = positive_int(block_size, "block_size")


def _check_idx(idx, vocab_size: int, block_size: int | None = None) -> None:
    """The rungs' input: (B, T) token ids in [0, vocab_size), T <= block_size where positions are learned."""
    token_ids(idx, "idx", dim=2, expected="a (batch, time) tensor of torch.long token ids", vocab_size=vocab_size)
    if block_size is not None and idx.shape[1] > block_size:
        raise ValueError(f"idx: {idx.shape[1]} positions exceed the context of {block_size}")


class NeuralBigram(nn.Module):
    """Rung 1: ``logits(x_{t+1} | x_t) = W[x_t]``; W starts at zero (the uniform guess)."""

    def __init__(self, vocab_size: int, block_size: int):
        super().__init__()
        self.config = _Config(vocab_size, block_size)
        self.table = nn.Parameter(torch.zeros(vocab_size, vocab_size))  # (V, V): row = current character

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _check_idx(idx, self.config.vocab_size)
        return self.table[idx]  # (B, T, V)


class WindowMLP(nn.Module):
    """Rung 2: Bengio, Ducharme, Vincent and Jauvin (2003), eq. 1 without the direct connections:
    ``y = b + U tanh(d + H [C(x_{t-n+1}); ...; C(x_t)])``. Positions before the text's start read a
    padding character of their own (index V)."""

    def __init__(self, vocab_size: int, block_size: int, window: int, n_embd: int, hidden: int):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("window", window), ("n_embd", n_embd), ("hidden", hidden)):
            positive_int(value, name)
        self.config = _Config(vocab_size, block_size)
        self.window = window
        self.embed = nn.Embedding(vocab_size + 1, n_embd)  # C, plus the padding character
        self.hidden = nn.Linear(window * n_embd, hidden)  # H, d
        self.out = nn.Linear(hidden, vocab_size)  # U, b

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _check_idx(idx, self.config.vocab_size)  # id V is the padding character: never an input
        B, T = idx.shape
        pad = torch.full((B, self.window - 1), self.config.vocab_size, dtype=idx.dtype, device=idx.device)
        windows = torch.cat([pad, idx], dim=1).unfold(1, self.window, 1)  # (B, T, n): x_{t-n+1} .. x_t
        features = self.embed(windows).flatten(2)  # (B, T, n * n_embd)
        return self.out(torch.tanh(self.hidden(features)))  # (B, T, V)


class LadderTransformer(nn.Module):
    """Rungs 3-5: token and position embeddings, ``n_layer`` layers of causal self-attention (the GPT's
    own :class:`~arlib.text.gpt.CausalSelfAttention`), then a linear read-out.

    ``mlp`` adds the GPT's position-wise MLP after each attention; ``residual`` adds each sub-layer's
    output to its input and normalizes the sum (post-LN, Vaswani et al. 2017, sec. 3.1:
    ``LayerNorm(x + Sublayer(x))``); without it each sub-layer replaces its input.
    """

    def __init__(self, config: GPTConfig, mlp: bool, residual: bool):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config: expected GPTConfig, got {type(config).__name__}")
        self.config, self.use_mlp, self.residual = config, bool(mlp), bool(residual)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.attn = nn.ModuleList(CausalSelfAttention(config) for _ in range(config.n_layer))
        self.mlp = nn.ModuleList(MLP(config) for _ in range(config.n_layer)) if mlp else None
        n_norms = 2 * config.n_layer if residual else 0
        self.norms = nn.ModuleList(nn.LayerNorm(config.n_embd) for _ in range(n_norms))
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _check_idx(idx, self.config.vocab_size, self.config.block_size)
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, d)
        for i, attn in enumerate(self.attn):
            sublayers = [attn] + ([self.mlp[i]] if self.use_mlp else [])
            for j, layer in enumerate(sublayers):
                x = self.norms[2 * i + j](x + layer(x)) if self.residual else layer(x)
        return self.head(x)  # (B, T, V)


def build_rung(rung: str, vocab_size: int, settings: LadderSettings = LADDER_SETTINGS) -> nn.Module:
    """The untrained model of ``rung`` (one of ``RUNGS`` or ``SIDE_RUNGS``) for a vocabulary of
    ``vocab_size``."""
    if not isinstance(rung, str):
        raise ValueError(f"rung: expected one of {', '.join(RUNGS + tuple(SIDE_RUNGS))}, got {rung!r}")
    if not isinstance(settings, LadderSettings):
        raise TypeError(f"settings: expected LadderSettings, got {type(settings).__name__}")
    if rung in SIDE_RUNGS:
        rung, layers = SIDE_RUNGS[rung]
        settings = replace(settings, n_layer=layers)
    if rung not in RUNGS:
        raise ValueError(f"rung: expected one of {', '.join(RUNGS + tuple(SIDE_RUNGS))}, got {rung!r}")
    positive_int(vocab_size, "vocab_size")
    s = settings
    if rung == "bigram":
        return NeuralBigram(vocab_size, s.block_size)
    if rung == "window-mlp":
        return WindowMLP(vocab_size, s.block_size, s.window, s.n_embd // 2, s.mlp_hidden)
    heads = 1 if rung == "one-head" else s.n_head
    config = GPTConfig(vocab_size=vocab_size, block_size=s.block_size, n_layer=s.n_layer, n_head=heads,
                       n_embd=s.n_embd, dropout=0.0)
    if rung == "gpt":
        return GPT(config)
    return LadderTransformer(config, mlp=rung != "one-head", residual=rung == "residual+ln")


def attention_logit_spread(d_head: int, n_keys: int = 64, trials: int = 2000, seed: int = 0) -> dict:
    """Why attention divides by sqrt(d_head) (Vaswani et al. 2017, sec. 3.2.1), measured: for queries and
    keys with independent unit-variance entries, ``q . k`` has variance ``d_head``; scaled by
    ``1/sqrt(d_head)`` it has variance 1 whatever the width. Returns the measured variances of the raw and
    scaled logits and the mean largest softmax weight over ``n_keys`` keys with and without the scaling
    (near 1 means the softmax saturated on one key and passes almost no gradient to the others)."""
    positive_int(d_head, "d_head")
    positive_int(n_keys, "n_keys")
    positive_int(trials, "trials")
    g = torch.Generator().manual_seed(int_at_least(seed, "seed", 0))
    q = torch.randn(trials, 1, d_head, generator=g, dtype=torch.float64)
    k = torch.randn(trials, n_keys, d_head, generator=g, dtype=torch.float64)
    raw = (q * k).sum(-1)  # (trials, n_keys)
    scaled = raw / math.sqrt(d_head)
    return {
        "raw_variance": raw.var().item(),
        "scaled_variance": scaled.var().item(),
        "raw_max_weight": F.softmax(raw, -1).max(-1).values.mean().item(),
        "scaled_max_weight": F.softmax(scaled, -1).max(-1).values.mean().item(),
    }


def block_means(values: torch.Tensor, block: int = 1000) -> list[float]:
    """Means of consecutive blocks of ``block`` values (the last partial block dropped): the units a
    block bootstrap resamples, since neighbouring characters' losses are correlated."""
    block = positive_int(block, "block")
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"values: expected a 1-D tensor of per-token values, got {type(values).__name__}")
    n = len(values) // block
    if n == 0:
        raise ValueError(f"values: expected at least block={block} values, got {len(values)}")
    return values[: n * block].double().view(n, block).mean(1).tolist()


def bootstrap_interval(blocks_a, blocks_b=None, draws: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval of the mean of ``blocks_a`` (or of the paired difference a - b when
    ``blocks_b`` is given): block means resampled with replacement ``draws`` times. Block means must be
    finite numbers."""
    a = _block_means(blocks_a, "blocks_a")
    if blocks_b is not None:
        b = _block_means(blocks_b, "blocks_b")
        if b.shape != a.shape:
            raise ValueError(f"blocks_b: expected {tuple(a.shape)} block means like blocks_a, got {tuple(b.shape)}")
        a = a - b
    if a.dim() != 1 or len(a) < 2:
        raise ValueError("blocks_a: expected a 1-D sequence of at least 2 block means")
    positive_int(draws, "draws")
    number_in(level, "level", 0, 1, bounds="()")
    g = torch.Generator().manual_seed(int_at_least(seed, "seed", 0))
    picks = torch.randint(0, len(a), (draws, len(a)), generator=g)
    means = a[picks].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return a.mean().item(), lo.item(), hi.item()


def _block_means(values, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name}: expected a 1-D sequence of block means (numbers)") from None
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return t


def run_ladder(out: str, seeds=(0,), steps: int | None = None, eval_chars: int | None = None,
               progress: bool = True, settings: LadderSettings = LADDER_SETTINGS, rungs=None) -> dict:
    """Train every rung of the ladder with each seed and write the results as JSON to ``out``.

    Per rung and seed: parameters, the training curve (mean loss per 100 steps), NLL on the select and
    report halves of the held-out text (:func:`arlib.text.lm.heldout_halves`), and the report half's
    per-token losses as means of 1000-character blocks for paired bootstrap intervals. ``steps`` and
    ``eval_chars`` shorten the run (tests). ``rungs`` (default: the ladder and its side rungs) trains only
    those; the results of other rungs already in ``out`` with the same settings and seeds are kept."""
    import json
    import time
    from dataclasses import asdict
    from pathlib import Path

    from arlib.data import SOURCES, shakespeare
    from arlib.env import pick_device, seed_everything
    from arlib.text.lm import heldout_halves, next_token_loss, random_windows, token_nll
    from arlib.text.tokenizer import CharTokenizer
    from arlib.train import TrainConfig, train

    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a path to a JSON file, got {type(out).__name__}")
    if not isinstance(settings, LadderSettings):
        raise TypeError(f"settings: expected LadderSettings, got {type(settings).__name__}")
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds: expected a sequence of ints >= 0, got {type(seeds).__name__}")
    seeds = tuple(int_at_least(s, "seeds", 0, expected="ints >= 0") for s in seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    if eval_chars is not None:
        positive_int(eval_chars, "eval_chars")
    rungs = RUNGS + tuple(SIDE_RUNGS) if rungs is None else tuple(rungs)
    for rung in rungs:
        if rung not in RUNGS and rung not in SIDE_RUNGS:
            raise ValueError(f"rungs: unknown rung {rung!r}; expected some of {RUNGS + tuple(SIDE_RUNGS)}")
    if steps is not None:
        steps = positive_int(steps, "steps")
        settings = replace(settings, steps=steps, warmup=min(settings.warmup, steps))
    corpus = shakespeare()
    tokenizer = CharTokenizer.from_text(corpus.text)
    train_ids, val_ids = tokenizer.encode(corpus.train), tokenizer.encode(corpus.val)
    select_ids, report_ids = heldout_halves(val_ids)
    if eval_chars:
        select_ids, report_ids = select_ids[:eval_chars], report_ids[:eval_chars]
    device = pick_device()
    block = min(1000, (len(report_ids) - 1) // 4)  # at least 4 blocks of scored characters
    results = {"settings": asdict(settings), "seeds": list(seeds), "rungs": {}, "block_chars": block,
               "data": {"source": "shakespeare", "sha256": SOURCES["shakespeare"].sha256,
                        "select_chars": len(select_ids), "report_chars": len(report_ids)}}
    path = Path(out)
    if path.is_file():  # keep what an earlier run of the same recipe trained
        earlier = json.loads(path.read_text())
        if earlier.get("settings") == results["settings"] and earlier.get("seeds") == results["seeds"]:
            results["rungs"].update(earlier["rungs"])
    t0 = time.time()
    for rung in rungs:
        runs = []
        for seed in seeds:
            seed_everything(seed)
            model = build_rung(rung, tokenizer.vocab_size, settings).to(device)
            # a lookup table takes large steps safely: its logits must travel ~10 nats from zero
            lr = 0.05 if rung == "bigram" else settings.lr
            config = TrainConfig(steps=settings.steps, lr=lr, warmup=settings.warmup, min_lr_ratio=0.1,
                                 weight_decay=0.0 if rung == "bigram" else 0.1, betas=(0.9, 0.99), seed=seed,
                                 progress=progress)

            def get_batch(step, generator, _bs=settings.batch_size, _t=settings.block_size):
                return random_windows(train_ids, _bs, _t, generator, device)

            history = train(model, next_token_loss, get_batch, config)
            losses = torch.tensor(history["loss"])
            n = len(losses) // 100 * 100
            curve = losses[:n].view(-1, 100).mean(1).tolist() if n else [losses.mean().item()]
            report = token_nll(model, report_ids)
            runs.append({"seed": seed, "parameters": sum(p.numel() for p in model.parameters()),
                         "seconds": round(history["seconds"], 1),
                         "curve_per_100_steps": [round(v, 4) for v in curve],
                         "select_nll": round(token_nll(model, select_ids).double().mean().item(), 4),
                         "report_nll": round(report.double().mean().item(), 4),
                         "report_blocks": [round(v, 5) for v in block_means(report, block)]})
            if progress:
                print(f"{rung:12s} seed {seed}: report NLL {runs[-1]['report_nll']:.4f} "
                      f"({runs[-1]['parameters']:,} parameters, {history['seconds']:.0f} s)", flush=True)
        results["rungs"][rung] = runs
    results["environment"] = {"torch": torch.__version__, "device": device.type, "threads": torch.get_num_threads(),
                              "wall_seconds": round(time.time() - t0, 1), "trained_on": time.strftime("%Y-%m-%d")}
    results["command"] = "python -m arlib.text.ladder" + (f" --steps {steps}" if steps else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def ladder_results_path():
    """Where the ladder results are written and read first: ``results/shakespeare-ladder.json`` beside the
    checkpoints' folder (so ``$ARLIB_HOME`` moves both; ``data/results`` in the checkout)."""
    from arlib.checkpoints import checkpoint_dir

    return checkpoint_dir().parent / "results" / "shakespeare-ladder.json"


def _readable_results_path():
    """:func:`ladder_results_path`, else the committed copy an installed wheel carries in ``arlib/_results``."""
    from arlib.checkpoints import PACKAGED_DIR

    path, packaged = ladder_results_path(), PACKAGED_DIR.parent / "_results" / "shakespeare-ladder.json"
    return packaged if not path.is_file() and packaged.is_file() else path


def load_ladder(path=None) -> dict:
    """The ladder's results as :func:`run_ladder` wrote them (default: :func:`ladder_results_path`, else the
    installed wheel's copy)."""
    import json
    from pathlib import Path

    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a path to the results' JSON file, got {type(path).__name__}")
    path = Path(path) if path is not None else _readable_results_path()
    if not path.is_file():
        raise MissingFileError(f"path: no ladder results at {path} (run `python -m arlib.text.ladder --out {path}`)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"path: {path} is not a JSON file of ladder results ({err})") from None
    missing = [r for r in RUNGS if r not in results.get("rungs", {})] if isinstance(results, dict) else list(RUNGS)
    if missing:
        raise ValueError(f"{path}: results lack the rungs {missing}")
    return results


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train chapter 1's ablation ladder and write its results.")
    parser.add_argument("--out", default=str(ladder_results_path()))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rungs", nargs="+", default=None, help="train only these rungs (default: all)")
    args = parser.parse_args()
    run_ladder(args.out, seeds=tuple(args.seeds), steps=args.steps, rungs=args.rungs)
