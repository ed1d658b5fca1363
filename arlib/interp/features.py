"""Looking at an SAE's latents on a GPT: dashboards, a census of simple latents, and a causal intervention.

- :func:`latent_dashboard` (printed by :func:`format_dashboard`): a latent's strongest contexts and contexts at
  several quantiles of its non-zero activations (the text before, the current character), its firing density,
  and its direct logit effect (:func:`logit_effect`): its decoder direction read through the final LayerNorm,
  linearized, and the unembedding W_U, the next characters it promotes and suppresses most. That path skips the
  blocks after the SAE's layer, so it says what the direction means to the output head, not what the later
  blocks make of it; :func:`intervene` measures the latter.
- :func:`classify_latents`: per latent, the share of its firings on its most common current character
  (a single-character latent if above one half) and how far the positions of its firings are from those of
  all positions (total variation distance over bins of positions; a positional latent if above one half).
- :func:`intervene`: clamp (or ablate, value 0) one latent at chosen positions, decode, add the SAE's error
  term so that only the latent's change reaches the GPT, and compare the next-token distributions there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arlib.interp.sae import SparseAutoencoder
from arlib.validate import describe, float_tensor, int_in_range, number_in, positive_int, probability, token_ids


def _gpt(gpt) -> None:
    if not all(hasattr(gpt, a) for a in ("trunk", "config", "h", "ln_f", "wte")):
        raise TypeError(f"gpt: expected an arlib.text.gpt.GPT, got {type(gpt).__name__}")


def _sae(sae) -> SparseAutoencoder:
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae: expected a SparseAutoencoder, got {type(sae).__name__}")
    return sae


def logit_effect(gpt, direction: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The direct effect on the logits (V,) of adding ``direction`` (d,) to the final residual stream:
    ``W_U (gamma * (u - mean(u))) / scale``, the final LayerNorm linearized at a stream of standard deviation
    ``scale`` (its bias and the stream's own contribution cancel in the difference). Later blocks are skipped."""
    _gpt(gpt)
    d = gpt.config.n_embd
    float_tensor(direction, "direction", dim=1, expected=f"a ({d},) floating direction")
    if direction.shape != (d,):
        raise ValueError(f"direction: expected a ({d},) direction, got {tuple(direction.shape)}")
    number_in(scale, "scale", 0, math.inf, bounds="()", expected="a positive standard deviation")
    weight = gpt.ln_f.weight if gpt.ln_f.weight is not None else torch.ones(d)
    u = direction.to(weight)
    with torch.no_grad():
        return gpt.wte.weight @ (weight * (u - u.mean())) / scale


@torch.no_grad()
def _latent_values(sae: SparseAutoencoder, x: torch.Tensor, latent: int, batch: int = 8192) -> torch.Tensor:
    return torch.cat([sae.encode(chunk)[:, latent] for chunk in x.split(batch)]).cpu()


def _context(text: str, t: int, block: int, width: int, value: float) -> tuple[str, str, float]:
    start = max(t - width, (t // block) * block)  # the text before t within its window
    return text[start:t], text[t], value


def latent_dashboard(sae, gpt, x: torch.Tensor | None, text: str, latent: int, block: int, vocab, n_top: int = 8,
                     quantiles=(0.1, 0.5, 0.9), per_quantile: int = 3, width: int = 30, scale: float = 1.0,
                     activations: torch.Tensor | None = None) -> dict:
    """What latent ``latent`` of ``sae`` does on activations x (N, d) of the positions of ``text`` (N characters,
    windows of ``block`` positions, x[i] the stream at text[i]): ``density`` (the fraction of positions it fires
    on), ``top`` (its ``n_top`` largest activations as (text before, current character, value)), ``quantiles``
    (q -> ``per_quantile`` contexts whose activation is nearest the q-quantile of its non-zero activations),
    and ``promoted`` / ``suppressed``: the 5 next tokens (as ``vocab`` spells them) whose logits its decoder
    direction raises / lowers most (:func:`logit_effect` with ``scale``). ``activations`` (N,), the latent's
    activations if already known (from stored sparse codes), saves encoding x, which may then be None."""
    sae = _sae(sae)
    _gpt(gpt)
    if activations is None:
        float_tensor(x, "x", dim=2, expected=f"a (N, {sae.config.d_in}) floating tensor of activations")
        if x.shape[1] != sae.config.d_in or len(x) == 0:
            raise ValueError(f"x: expected (N >= 1, {sae.config.d_in}) activations, got {tuple(x.shape)}")
        n = len(x)
    else:
        float_tensor(activations, "activations", dim=1, expected="a (N,) floating tensor of the latent's activations")
        if len(activations) == 0 or bool((activations < 0).any()):
            raise ValueError("activations: expected N >= 1 non-negative activations of the latent")
        n = len(activations)
    if not isinstance(text, str) or len(text) != n:
        raise ValueError(f"text: expected a str of one character per position ({n}), got {describe(text)}")
    int_in_range(latent, "latent", 0, sae.config.n_latents - 1)
    positive_int(block, "block")
    if not isinstance(vocab, (str, list, tuple)) or len(vocab) != gpt.config.vocab_size:
        raise ValueError(f"vocab: expected the {gpt.config.vocab_size} tokens' spellings, got {describe(vocab)}")
    for name, value in (("n_top", n_top), ("per_quantile", per_quantile), ("width", width)):
        positive_int(value, name)
    if not isinstance(quantiles, (list, tuple)) or not quantiles:
        raise ValueError(f"quantiles: expected a non-empty list of quantiles in [0, 1], got {describe(quantiles)}")
    for q in quantiles:
        probability(q, "quantiles")
    values = _latent_values(sae, x, latent) if activations is None else activations.detach().cpu()
    fired = values > 0
    out = {"latent": latent, "density": float(fired.double().mean()), "n_fired": int(fired.sum()),
           "top": [], "quantiles": {}}
    if out["n_fired"]:
        top = values.topk(min(n_top, out["n_fired"]))
        out["top"] = [_context(text, t, block, width, v) for t, v in zip(top.indices.tolist(), top.values.tolist())]
        where = fired.nonzero().squeeze(1)
        live = values[where].double()
        for q in quantiles:
            target = float(live.quantile(q))
            near = (live - target).abs().topk(min(per_quantile, len(live)), largest=False).indices
            out["quantiles"][q] = [_context(text, int(where[i]), block, width, float(live[i])) for i in near.tolist()]
    effect = logit_effect(gpt, sae.decoder[latent].detach(), scale).cpu()
    up, down = effect.topk(5), (-effect).topk(5)
    out["promoted"] = [(vocab[i], float(v)) for i, v in zip(up.indices.tolist(), up.values.tolist())]
    out["suppressed"] = [(vocab[i], -float(v)) for i, v in zip(down.indices.tolist(), down.values.tolist())]
    return out


def _show(s: str) -> str:
    return s.replace("\n", "⏎")


def format_dashboard(dashboard: dict, width: int = 30) -> str:
    """:func:`latent_dashboard`'s dict as lines of text (newlines shown as ⏎, the current character in [ ])."""
    needed = ("latent", "density", "top", "quantiles", "promoted", "suppressed")
    if not isinstance(dashboard, dict) or any(k not in dashboard for k in needed):
        raise ValueError(f"dashboard: expected latent_dashboard's dict (keys {needed}), got {describe(dashboard)}")
    positive_int(width, "width")

    def line(ctx):
        before, ch, v = ctx
        return f"  {_show(before)[-width:]:>{width}}[{_show(ch)}]  {v:6.2f}"

    out = [f"latent {dashboard['latent']}: fires on {100 * dashboard['density']:.2f} % of positions",
           "  promoted: " + " ".join(f"{_show(c)!r} {v:+.2f}" for c, v in dashboard["promoted"]),
           "  suppressed: " + " ".join(f"{_show(c)!r} {v:+.2f}" for c, v in dashboard["suppressed"]),
           "  strongest:"]
    out += [line(c) for c in dashboard["top"]]
    for q, contexts in dashboard["quantiles"].items():
        out.append(f"  near the {q:.0%} quantile of its activations:")
        out += [line(c) for c in contexts]
    return "\n".join(out)


def classify_latents(indices: torch.Tensor, values: torch.Tensor, chars: torch.Tensor, positions: torch.Tensor,
                     n_latents: int, n_positions: int, bin_width: int = 16, min_firings: int = 50,
                     single_above: float = 0.5, positional_above: float = 0.5) -> dict:
    """A census of latents from their sparse codes: ``indices``, ``values`` (N, k) (the latents kept at each of N
    positions and their activations; a value of 0 is not a firing), ``chars`` (N,) the current token's id and
    ``positions`` (N,) the position in the window, in [0, n_positions).

    Per latent (tensors of shape (n_latents,)): ``n_fired``; ``top_char`` and ``top_char_share`` (the share of its
    firings on its most common current token); ``position_tv``, the total variation distance between the
    distribution of its firings over bins of ``bin_width`` positions and that of all N positions (0: blind to
    position; 1: it fires only in bins where few positions are); ``classified`` (at least ``min_firings``
    firings, below which both statistics are noise); ``single_char`` (classified and share > ``single_above``)
    and ``positional`` (classified and ``position_tv`` > ``positional_above``). Also the shares of single-character
    and positional latents among the classified ones, and the number classified."""
    token_ids(indices, "indices", dim=2, expected="a (N, k) torch.long tensor of latent indices")
    n_latents = positive_int(n_latents, "n_latents")
    n_positions = positive_int(n_positions, "n_positions")
    N = indices.shape[0]
    if N == 0 or indices.shape[1] == 0:
        raise ValueError(f"indices: expected at least one position and one kept latent, got {tuple(indices.shape)}")
    if indices.min() < 0 or indices.max() >= n_latents:
        raise ValueError(f"indices: expected latent indices in [0, n_latents={n_latents})")
    float_tensor(values, "values", dim=2, expected=f"a {tuple(indices.shape)} floating tensor of activations")
    if values.shape != indices.shape or bool((values < 0).any()):
        raise ValueError(f"values: expected non-negative activations of the shape of indices {tuple(indices.shape)}")
    token_ids(chars, "chars", dim=1, rows=N, expected=f"a ({N},) torch.long tensor of token ids")
    if chars.min() < 0:
        raise ValueError("chars: expected non-negative token ids")
    token_ids(positions, "positions", dim=1, rows=N, expected=f"a ({N},) torch.long tensor of positions")
    if positions.min() < 0 or positions.max() >= n_positions:
        raise ValueError(f"positions: expected positions in [0, n_positions={n_positions})")
    positive_int(bin_width, "bin_width")
    positive_int(min_firings, "min_firings")
    probability(single_above, "single_above")
    probability(positional_above, "positional_above")
    indices, values, chars, positions = indices.cpu(), values.cpu(), chars.cpu(), positions.cpu()
    fired = values > 0
    lat = indices[fired]  # (F,) one entry per firing
    row = torch.arange(N)[:, None].expand_as(indices)[fired]
    n_fired = torch.bincount(lat, minlength=n_latents)
    V = int(chars.max()) + 1
    by_char = torch.bincount(lat * V + chars[row], minlength=n_latents * V).reshape(n_latents, V)
    top = by_char.max(1)
    share = top.values.double() / n_fired.clamp_min(1)
    n_bins = -(-n_positions // bin_width)
    bins = positions // bin_width
    base = torch.bincount(bins, minlength=n_bins).double() / N  # (n_bins,) where positions are
    by_bin = torch.bincount(lat * n_bins + bins[row], minlength=n_latents * n_bins).reshape(n_latents, n_bins)
    dist = by_bin.double() / n_fired.clamp_min(1)[:, None]
    tv = 0.5 * (dist - base).abs().sum(1)
    classified = n_fired >= min_firings
    single = classified & (share > single_above)
    positional = classified & (tv > positional_above)
    n_classified = int(classified.sum())
    return {"n_fired": n_fired, "top_char": top.indices, "top_char_share": share, "position_tv": tv,
            "classified": classified, "single_char": single, "positional": positional, "n_classified": n_classified,
            "single_char_share": float(single.sum()) / max(n_classified, 1),
            "positional_share": float(positional.sum()) / max(n_classified, 1)}


@torch.no_grad()
def intervene(gpt, sae, layer: int, idx: torch.Tensor, latent: int, mask: torch.Tensor, value: float = 0.0) -> dict:
    """Set latent ``latent`` of ``sae`` to ``value`` (0: ablate it) at the positions ``mask`` (B, T) of the
    stream entering block ``layer`` of ``gpt`` on ids ``idx`` (B, T); elsewhere nothing changes. The stream is
    replaced by ``decode(f') + (x - decode(f))``, the edited reconstruction plus the SAE's error term, so only
    the latent's change reaches the later blocks. Returns, at the masked positions (P = mask.sum()): ``before``
    and ``after`` next-token distributions (P, V), ``kl`` (P,) KL(before || after) in nats, ``change`` (V,) the
    mean change of each token's probability, and ``old`` (P,) the latent's activation there before the edit."""
    _gpt(gpt)
    sae = _sae(sae)
    layer = int_in_range(layer, "layer", 0, gpt.config.n_layer)
    if sae.config.d_in != gpt.config.n_embd:
        raise ValueError(f"sae: expected d_in = {gpt.config.n_embd} (the GPT's width), got {sae.config.d_in}")
    token_ids(idx, "idx", dim=2, vocab_size=gpt.config.vocab_size, expected="a (B, T) torch.long tensor of ids")
    int_in_range(latent, "latent", 0, sae.config.n_latents - 1)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != idx.shape:
        raise ValueError(f"mask: expected a bool tensor of the shape of idx {tuple(idx.shape)}, got {describe(mask)}")
    if not bool(mask.any()):
        raise ValueError("mask: expected at least one position to edit")
    number_in(value, "value", -math.inf, math.inf, bounds="()", expected="a finite activation")
    h = gpt.trunk(idx, n_layers=layer)[-1]  # (B, T, d)
    f = sae.encode(h)
    error = h - sae.decode(f)
    mask = mask.to(h.device)
    old = f[..., latent][mask].cpu()
    f_new = f.clone()
    f_new[..., latent] = torch.where(mask, torch.full_like(f[..., latent], float(value)), f[..., latent])

    def probs(stream):
        for block in gpt.h[layer:]:
            stream = block(stream)
        return F.linear(gpt.ln_f(stream), gpt.wte.weight)[mask].double().softmax(-1).cpu()

    before = probs(sae.decode(f) + error)
    after = probs(sae.decode(f_new) + error)
    kl = (before * (before.clamp_min(1e-300).log() - after.clamp_min(1e-300).log())).sum(-1).clamp_min(0)
    return {"before": before, "after": after, "kl": kl, "change": (after - before).mean(0), "old": old}
