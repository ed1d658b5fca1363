"""Baselines for an SAE on a GPT's residual stream: other reconstructions of the same activations, spliced into
the GPT exactly like the SAE's, so that "the SAE keeps 99 % of the loss gap" can be read against them.

A reconstruction maps the residual stream h (B, T, d) entering block ``layer`` to a tensor of the same shape:

- :class:`PCABaseline`: the mean plus the projection onto the top ``rank`` principal directions of training
  activations (the best rank-r linear reconstruction in squared error; rank r = L0 is the dense rival of an SAE
  that spends L0 latents per position);
- :class:`PositionBaseline`: the mean activation at each position of the window (what position alone explains);
- :func:`random_sae`: an SAE of the same architecture with random encoder directions (TopK codes of random
  projections), its ``b_dec`` at the data mean and its decoder fit to those codes by least squares;
- :class:`CoordinateBaseline`: the stream's own basis, the residual stream having no neurons of its own: each
  position keeps its ``k`` coordinates farthest from their mean, the others are set to the mean;
- :class:`MLPNeuronBaseline`: the MLP of the block before ``layer`` (whose output writes into this stream)
  keeps only its ``k`` hidden neurons farthest from their mean at each position, the others at their mean.
  Unlike the others it leaves everything but that one MLP's output exact, so it answers an easier question.

:func:`splice_losses` runs the GPT once up to ``layer`` and then once per reconstruction, giving each window's
next-token loss; :func:`loss_recovered` turns them into the fraction of the mean-ablation loss gap recovered and
:func:`bootstrap_recovered` into intervals over windows (paired: one resample of windows for every row).
:func:`compare` does it all and adds the normalized MSE and the number of coordinates used per position.
"""

from __future__ import annotations

import math
from dataclasses import replace as dc_replace

import torch
import torch.nn.functional as F

from arlib.interp.sae import SAEConfig, SparseAutoencoder
from arlib.validate import describe, float_tensor, int_in_range, number_in, positive_int, token_ids
from arlib.validate import generator as check_generator


def _layer(gpt, layer) -> int:
    """``layer`` checked against ``gpt`` (an :class:`arlib.text.gpt.GPT`): an int in [0, n_layer]."""
    if not all(hasattr(gpt, a) for a in ("trunk", "config", "h", "ln_f", "wte")):
        raise TypeError(f"gpt: expected an arlib.text.gpt.GPT, got {type(gpt).__name__}")
    return int_in_range(layer, "layer", 0, gpt.config.n_layer)


def _activations(x, name: str = "x", d: int | None = None) -> torch.Tensor:
    """x (N >= 2, d): finite floating activations."""
    float_tensor(x, name, dim=2, expected="a (N >= 2, d) floating tensor of activations")
    if len(x) < 2 or (d is not None and x.shape[1] != d):
        raise ValueError(f"{name}: expected (N >= 2, {d or 'd'}) activations, got {tuple(x.shape)}")
    return x


def _stream(h, d: int, name: str = "h") -> torch.Tensor:
    if not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.dim() < 1 or h.shape[-1] != d:
        raise ValueError(f"{name}: expected floating activations (..., {d}), got {describe(h)}")
    return h


class PCABaseline:
    """Mean plus the top ``rank`` principal directions of activations x (N, d): ``reconstruct`` projects
    onto them. ``components`` (rank, d) are orthonormal rows; ``explained_variance_ratio`` is their share of
    the total variance of x, so the normalized MSE on x itself is ``1 - explained_variance_ratio``."""

    def __init__(self, x: torch.Tensor, rank: int):
        _activations(x)
        d = x.shape[1]
        self.rank = int_in_range(rank, "rank", 1, d, expected=f"an int in [1, d={d}]")
        x64 = x.double()
        self.mean = x64.mean(0)
        centred = x64 - self.mean
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(x))  # ascending
        order = eigenvalues.flip(0).clamp_min(0)
        self.components = eigenvectors.flip(1)[:, :rank].T.contiguous()  # (rank, d)
        self.explained_variance_ratio = float(order[:rank].sum() / order.sum().clamp_min(1e-30))
        self.size = self.rank
        self.mean, self.components = self.mean.to(x.dtype), self.components.to(x.dtype)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d): the mean plus the projection of x - mean onto the components."""
        _stream(x, self.mean.shape[0], "x")
        mean, comp = self.mean.to(x), self.components.to(x)
        return mean + ((x - mean) @ comp.T) @ comp

    __call__ = reconstruct


class PositionBaseline:
    """The mean activation at each position of the window, fit on activations x (n_windows, T, d) of whole
    windows: ``reconstruct(x, positions)`` returns the mean of each row's position, whatever x holds."""

    def __init__(self, x: torch.Tensor):
        float_tensor(x, "x", dim=3, expected="a (n_windows >= 1, T, d) floating tensor of activations per window")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x: expected at least one window of at least one position, got {tuple(x.shape)}")
        self.means = x.double().mean(0).to(x.dtype)  # (T, d)
        self.size = 0  # no coordinate of the input is read, only its position

    def reconstruct(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, d) with ``positions`` (N,) in [0, T), or x (B, T', d) (T' <= T; positions 0 .. T'-1)."""
        T, d = self.means.shape
        _stream(x, d, "x")
        if positions is None:
            if x.dim() != 3 or x.shape[1] > T:
                raise ValueError(f"x: without positions, expected windows (B, T' <= {T}, {d}), got {describe(x)}")
            return self.means[: x.shape[1]].to(x).expand_as(x).clone()
        token_ids(positions, "positions", dim=1, expected="a (N,) torch.long tensor of positions")
        if x.dim() != 2 or positions.shape[0] != x.shape[0]:
            raise ValueError(f"positions: expected one position per row of x (N, d) = {tuple(x.shape)}, "
                             f"got {tuple(positions.shape)}")
        if positions.numel() and (positions.min() < 0 or positions.max() >= T):
            raise ValueError(f"positions: expected positions in [0, {T})")
        return self.means.to(x)[positions.to(x.device)]

    __call__ = reconstruct


class CoordinateBaseline:
    """The stream's own basis: at each position keep the ``k`` coordinates of x farthest (in absolute value)
    from their mean over training activations x (N, d); set the other d - k to that mean."""

    def __init__(self, x: torch.Tensor, k: int):
        _activations(x)
        self.k = int_in_range(k, "k", 1, x.shape[1], expected=f"an int in [1, d={x.shape[1]}]")
        self.mean = x.double().mean(0).to(x.dtype)
        self.size = self.k

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d)."""
        _stream(x, self.mean.shape[0], "x")
        centred = x - self.mean.to(x)
        keep = centred.abs().topk(self.k, dim=-1).indices
        return self.mean.to(x) + torch.zeros_like(x).scatter(-1, keep, centred.gather(-1, keep))

    __call__ = reconstruct


class MLPNeuronBaseline:
    """The MLP of block ``layer - 1`` of ``gpt`` keeps, at each position, its ``k`` hidden neurons (after the
    GELU) farthest from their mean over ``ids`` (B, T) of training text; the others are set to that mean. The
    residual stream entering block ``layer`` is recomputed with it (everything else exact): ``splice(h, idx)``."""

    def __init__(self, gpt, layer: int, k: int, ids: torch.Tensor):
        layer = _layer(gpt, layer)
        if layer == 0:
            raise ValueError("layer: expected a layer >= 1 (the stream entering block 0 has no MLP before it)")
        self.gpt, self.layer = gpt, layer
        self.mlp = gpt.h[layer - 1].mlp
        hidden = self.mlp.c_fc.out_features
        self.k = int_in_range(k, "k", 1, hidden, expected=f"an int in [1, hidden={hidden}]")
        token_ids(ids, "ids", dim=2, vocab_size=gpt.config.vocab_size, expected="a (B, T) torch.long tensor of ids")
        with torch.no_grad():
            self.mean = self._hidden(self._before_mlp(ids)).reshape(-1, hidden).double().mean(0).float()
        self.size = self.k

    def _before_mlp(self, idx):
        """(the stream after block layer - 1's attention, its input to the MLP after ln_2)."""
        block = self.gpt.h[self.layer - 1]
        x = self.gpt.trunk(idx, n_layers=self.layer - 1)[-1]
        x = x + block.attn(block.ln_1(x))
        return x, block.ln_2(x)

    def _hidden(self, pair):
        return F.gelu(self.mlp.c_fc(pair[1]), approximate=self.mlp.approximate)

    @torch.no_grad()
    def splice(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The stream (B, T, d) entering block ``layer`` with the sparsified MLP; ``h`` is only checked."""
        token_ids(idx, "idx", dim=2, vocab_size=self.gpt.config.vocab_size)
        _stream(h, self.gpt.config.n_embd)
        if h.shape[:2] != idx.shape:
            raise ValueError(f"idx: expected the (B, T) = {tuple(h.shape[:2])} ids of h, got {tuple(idx.shape)}")
        pair = self._before_mlp(idx)
        a = self._hidden(pair)
        mean = self.mean.to(a)
        centred = a - mean
        keep = centred.abs().topk(self.k, dim=-1).indices
        a = mean + torch.zeros_like(a).scatter(-1, keep, centred.gather(-1, keep))
        return pair[0] + self.mlp.c_proj(a)


@torch.no_grad()
def random_sae(config: SAEConfig, x: torch.Tensor, generator: torch.Generator, fit_decoder: bool = True,
               ridge: float = 1e-4) -> SparseAutoencoder:
    """An SAE of ``config`` with random weights (the initialization of
    :class:`arlib.interp.sae.SparseAutoencoder`: random unit directions, encoder = decoder transposed,
    ``b_enc`` = 0), with ``b_dec`` set to the mean of x (N, d).

    With ``fit_decoder`` (the fair choice, and the default) the decoder is then fit by least squares to the
    random codes of x (ridge ``ridge`` times the mean diagonal of the codes' Gram matrix), and the returned SAE
    has ``unit_decoder=False`` (a unit-norm constraint would undo the fit). The codes stay random: this measures
    what a dictionary gets from a sparse code that learned nothing about the data."""
    if not isinstance(config, SAEConfig):
        raise TypeError(f"config: expected SAEConfig, got {type(config).__name__}")
    _activations(x, d=config.d_in)
    check_generator(generator, optional=False)
    if not isinstance(fit_decoder, bool):
        raise ValueError(f"fit_decoder: expected a bool, got {fit_decoder!r}")
    number_in(ridge, "ridge", 0, math.inf, bounds="[)", expected="a finite number >= 0")
    sae = SparseAutoencoder(dc_replace(config, unit_decoder=False) if fit_decoder else config, generator)
    sae.init_decoder_bias(x)
    if fit_decoder:
        M = config.n_latents
        gram = torch.zeros(M, M, dtype=torch.float64)
        cross = torch.zeros(M, config.d_in, dtype=torch.float64)
        for chunk in x.split(8192):
            centred = chunk.double() - sae.b_dec.double()
            if config.activation == "topk":  # sparse codes: accumulate the k x k outer products of each row
                top = sae.pre_activations(chunk.float()).topk(config.k, dim=-1)
                v, i = top.values.relu().double(), top.indices
                pairs = (i[:, :, None] * M + i[:, None, :]).reshape(-1)
                gram += torch.bincount(pairs, weights=(v[:, :, None] * v[:, None, :]).reshape(-1),
                                       minlength=M * M).reshape(M, M)
                cross.index_add_(0, i.reshape(-1), (v[:, :, None] * centred[:, None, :]).reshape(-1, config.d_in))
            else:
                f = sae.encode(chunk.float()).double()
                gram += f.T @ f
                cross += f.T @ centred
        gram += torch.eye(M, dtype=torch.float64) * (ridge * float(gram.diagonal().mean()) + 1e-12)
        sae.W_dec.copy_(torch.linalg.solve(gram, cross).to(sae.W_dec))
    return sae.eval()


# --- splicing ---------------------------------------------------------------------------------------------


def _apply(model, h: torch.Tensor, idx: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(model, SparseAutoencoder):
        out = model(h)[0]
    elif hasattr(model, "splice"):
        out = model.splice(h, idx)
    elif callable(model):
        out = model(h)
    else:
        raise TypeError(f"reconstructions: {name!r} is not an SAE, a baseline or a function of the stream, "
                        f"got {type(model).__name__}")
    if not isinstance(out, torch.Tensor) or out.shape != h.shape:
        raise ValueError(f"reconstructions: {name!r} must return the stream's shape {tuple(h.shape)}, got "
                         f"{describe(out)}")
    return out


def _check_windows(gpt, windows) -> None:
    token_ids(windows, "windows", dim=2, vocab_size=gpt.config.vocab_size,
              expected="a (B, T + 1 >= 2) torch.long tensor of token ids")
    if windows.shape[1] < 2 or windows.shape[0] == 0:
        raise ValueError(f"windows: expected at least one window of at least 2 tokens, got {tuple(windows.shape)}")


def _check_reconstructions(reconstructions) -> dict:
    if not isinstance(reconstructions, dict) or not reconstructions \
            or not all(isinstance(k, str) for k in reconstructions):
        raise ValueError(f"reconstructions: expected a non-empty dict name -> reconstruction, got "
                         f"{describe(reconstructions)}")
    if "clean" in reconstructions:
        raise ValueError("reconstructions: 'clean' is reserved for the unmodified GPT")
    return reconstructions


def _splice_pass(gpt, layer: int, windows: torch.Tensor, reconstructions: dict, batch_size: int,
                 stats: dict | None = None) -> dict:
    """Per-window losses; with ``stats`` also accumulates, per name, the squared error of the reconstruction
    and (under "") the sums needed for the variance of the stream."""
    out = {name: [] for name in ("clean", *reconstructions)}
    for chunk in windows.split(batch_size):
        x, y = chunk[:, :-1], chunk[:, 1:]
        h = gpt.trunk(x, n_layers=layer)[-1]

        def nll(stream, y=y):
            for block in gpt.h[layer:]:
                stream = block(stream)
            logits = F.linear(gpt.ln_f(stream), gpt.wte.weight)
            return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").double().mean(1)

        out["clean"].append(nll(h))
        if stats is not None:
            flat = h.reshape(-1, h.shape[-1]).double()
            n, s, ss = stats.get("", (0, 0.0, 0.0))
            stats[""] = (n + len(flat), s + flat.sum(0), ss + float(flat.pow(2).sum()))
        for name, model in reconstructions.items():
            h_hat = _apply(model, h, x, name)
            if stats is not None:
                sse, l0_sum = stats.get(name, (0.0, 0.0))
                sse += float((h.double() - h_hat.double()).pow(2).sum())
                if isinstance(model, SparseAutoencoder):
                    l0_sum += float((model.encode(h) != 0).sum())
                stats[name] = (sse, l0_sum)
            out[name].append(nll(h_hat))
    return {name: torch.cat(v).cpu() for name, v in out.items()}


@torch.no_grad()
def splice_losses(gpt, layer: int, windows: torch.Tensor, reconstructions: dict, batch_size: int = 16) -> dict:
    """Each window's mean next-token loss (nats), as a (B,) float64 tensor per entry: ``"clean"`` for the GPT,
    and one per ``reconstructions`` (name -> an SAE, a baseline of this module, or a function h -> h_hat of the
    stream (B, T, d)) with the stream entering block ``layer`` replaced by that reconstruction, as
    :func:`arlib.interp.sae.spliced_logits` does; windows (B, T + 1). The stream is computed once per batch."""
    layer = _layer(gpt, layer)
    _check_windows(gpt, windows)
    _check_reconstructions(reconstructions)
    positive_int(batch_size, "batch_size")
    return _splice_pass(gpt, layer, windows, reconstructions, batch_size)


def _check_losses(losses, names) -> None:
    if not isinstance(losses, dict) or "clean" not in losses:
        raise ValueError("losses: expected splice_losses' dict of per-window losses (with 'clean')")
    for name in names:
        if name not in losses:
            raise ValueError(f"losses: no entry {name!r}; it has {sorted(losses)}")
        float_tensor(losses[name], "losses", dim=1, expected="(B,) per-window losses")
        if losses[name].shape != losses["clean"].shape:
            raise ValueError(f"losses: {name!r} has {tuple(losses[name].shape)} windows, 'clean' "
                             f"{tuple(losses['clean'].shape)}")


def loss_recovered(losses: dict, name: str, ablated: str = "mean") -> float:
    """``(L_ablated - L_name) / (L_ablated - L_clean)`` over all windows of :func:`splice_losses`' ``losses``:
    1 when the reconstruction costs nothing, 0 when it is as bad as the ablation."""
    _check_losses(losses, ["clean", name, ablated])
    clean, spliced, abl = losses["clean"].sum(), losses[name].sum(), losses[ablated].sum()
    return float((abl - spliced) / (abl - clean))


def bootstrap_recovered(losses: dict, names: list, ablated: str = "mean", n_boot: int = 2000,
                        generator: torch.Generator | None = None, level: float = 0.95) -> dict:
    """Percentile bootstrap over windows of :func:`loss_recovered` for each of ``names``, paired: every
    resample draws one set of windows for all of them. Returns ``{name: (point, low, high)}`` and, under
    ``("diff", a, b)`` for each pair, the interval of ``recovered(a) - recovered(b)``."""
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"names: expected a non-empty list of entries of losses, got {describe(names)}")
    _check_losses(losses, ["clean", ablated, *names])
    positive_int(n_boot, "n_boot")
    check_generator(generator)
    number_in(level, "level", 0, 1, bounds="()", expected="a probability in (0, 1)")
    B = losses["clean"].shape[0]
    rows = torch.randint(0, B, (n_boot, B), generator=generator)
    clean, abl = losses["clean"][rows].sum(1), losses[ablated][rows].sum(1)
    boot = {n: (abl - losses[n][rows].sum(1)) / (abl - clean) for n in names}
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)

    def interval(samples, point):
        low, high = samples.quantile(q).tolist()
        return point, low, high

    out = {n: interval(boot[n], loss_recovered(losses, n, ablated)) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[("diff", a, b)] = interval(boot[a] - boot[b], out[a][0] - out[b][0])
    return out


@torch.no_grad()
def compare(gpt, layer: int, windows: torch.Tensor, reconstructions: dict, mean: torch.Tensor,
            n_boot: int = 2000, generator: torch.Generator | None = None, batch_size: int = 16) -> dict:
    """One row per reconstruction on held-out ``windows`` (B, T + 1), like the SAE's row of chapter 6:
    ``nmse`` of the stream entering block ``layer`` (over all positions of the windows), ``size`` (the measured
    L0 for an SAE, else the baseline's ``size``: its rank, its k, 0 for position), ``nll``, and ``recovered``,
    the fraction of the loss gap of the mean ablation (``mean`` (d,)) recovered, with its paired bootstrap
    ``interval`` over windows. Also returns ``clean_nll``, ``mean_ablated_nll``, ``"losses"``
    (:func:`splice_losses`) and ``"bootstrap"`` (:func:`bootstrap_recovered`, with the differences)."""
    layer = _layer(gpt, layer)
    _check_windows(gpt, windows)
    _check_reconstructions(reconstructions)
    positive_int(batch_size, "batch_size")
    d = gpt.config.n_embd
    float_tensor(mean, "mean", dim=1, expected=f"a ({d},) floating mean activation")
    if mean.shape != (d,):
        raise ValueError(f"mean: expected a ({d},) mean activation, got {tuple(mean.shape)}")
    if "mean" in reconstructions:
        raise ValueError("reconstructions: 'mean' is reserved for the mean ablation")
    stats: dict = {}
    losses = _splice_pass(gpt, layer, windows, {"mean": lambda s: mean.to(s).expand_as(s), **reconstructions},
                          batch_size, stats)
    n, s, ss = stats[""]
    variance = ss - float(s.pow(2).sum()) / n  # sum over positions of ||h - mean(h)||^2
    boot = bootstrap_recovered(losses, list(reconstructions), "mean", n_boot, generator)
    rows = {}
    for name, model in reconstructions.items():
        sse, l0_sum = stats[name]
        size = l0_sum / n if isinstance(model, SparseAutoencoder) else getattr(model, "size", math.nan)
        point, low, high = boot[name]
        rows[name] = {"nmse": sse / max(variance, 1e-30), "size": size, "nll": float(losses[name].mean()),
                      "recovered": point, "interval": (low, high)}
    return {"rows": rows, "clean_nll": float(losses["clean"].mean()), "mean_ablated_nll": float(losses["mean"].mean()),
            "losses": losses, "bootstrap": boot}
