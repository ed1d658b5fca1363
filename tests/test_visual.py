"""Tests of chapter 4's library: quantizers, raster and next-scale models, speculative Jacobi decoding,
LANTERN's proximity sets and the Fréchet distance."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from tiny_models import tiny_gpt

from arlib.text.gpt import KVCache
from arlib.vision.generators import (
    NextScaleModel,
    block_causal_mask,
    cfg_logits,
    next_scale_loss,
    raster_loss,
    raster_model,
    raster_tokens,
    sample_next_scale,
    sample_raster,
)
from arlib.vision.image_metrics import FashionClassifier, frechet_distance, gaussian_frechet
from arlib.vision.jacobi import jacobi_generate, lantern_neighbors, proximity_set, relaxed_target, sample_raster_sjd
from arlib.vision.vq import VQVAE, MultiScaleQuantizer, MultiScaleVQVAE, VectorQuantizer, VQConfig, nearest_code

# --- quantizers -------------------------------------------------------------------------------------


def test_nearest_code_is_the_brute_force_argmin():
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(200, 6, generator=g), torch.randn(17, 6, generator=g)
    assert torch.equal(nearest_code(z, codebook), torch.cdist(z, codebook).argmin(1))
    with pytest.raises(ValueError, match="codebook"):
        nearest_code(z, torch.randn(17, 5))
    with pytest.raises(ValueError, match="z"):
        nearest_code(torch.randn(3, 2, 6), codebook)


def test_straight_through_gradient_and_commitment():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, beta=0.25).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out, indices, loss = vq(z)
    # values: the codes, up to the rounding of z + (e - z)
    assert torch.allclose(out, vq.codebook[indices].permute(0, 3, 1, 2), atol=1e-6)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert torch.allclose(z.grad, weights)  # gradient: straight through
    assert loss.item() == pytest.approx(0.25 * ((z - out) ** 2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="z"):
        vq(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="indices"):
        vq.lookup(torch.tensor([[[9]]]))
    with pytest.raises(ValueError, match="indices"):
        vq.lookup(torch.tensor([[1, 2]]))  # (B, h, w) expected
    assert torch.equal(vq.lookup(torch.tensor([[[1]]]), validate=False), vq.lookup(torch.tensor([[[1]]])))


def test_ema_codes_move_to_cluster_means_and_dead_codes_restart():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    vq = VectorQuantizer(6, 2, decay=0.9).train()
    for step in range(200):
        points = centres[torch.randint(3, (300,), generator=g)] + 0.1 * torch.randn(300, 2, generator=g)
        vq(points[:, :, None, None])
        if step == 0:  # the first call put the codes on data; send one far away, where nothing reaches it
            assert bool(vq.initialized)
            vq.codebook[0] = vq.ema_sum[0] = torch.tensor([100.0, 100.0])
    assert vq.restarts > 0
    distance = torch.cdist(centres, vq.codebook).min(1).values  # every centre has a code on it (codes that
    assert (distance < 0.2).all()  # share a cluster sit at the means of its halves, 0.08 from the centre)
    assert (torch.cdist(vq.codebook, centres).min(1).values < 1).all()  # and no code is left far away
    _, used = vq.usage(vq(centres[:, :, None, None])[1])
    assert used == 3


def test_vqvae_round_trip_and_shapes():
    model = VQVAE(VQConfig(num_codes=32, code_dim=8, width=16)).eval()
    x = torch.rand(3, 1, 28, 28)
    recon, indices, _ = model(x)
    assert recon.shape == x.shape and indices.shape == (3, 7, 7)
    assert torch.equal(model.encode(x), indices)
    assert torch.allclose(model.decode(indices), recon, atol=1e-6)
    assert 0 <= recon.min() and recon.max() <= 1
    with pytest.raises(ValueError, match="x"):
        model(torch.rand(3, 28, 28))


def test_multiscale_quantizer_reconstruction_and_next_scale_inputs():
    torch.manual_seed(2)
    q = MultiScaleQuantizer(16, 4, scales=(1, 2, 3, 5, 7)).eval()
    f = torch.randn(2, 4, 7, 7)
    f_hat, maps, _ = q(f)
    assert [m.shape for m in maps] == [(2, s, s) for s in (1, 2, 3, 5, 7)]
    assert torch.allclose(q.reconstruct(maps), f_hat, atol=1e-5)
    inputs = q.next_scale_inputs(maps)
    assert [x.shape for x in inputs] == [(2, s * s, 4) for s in (2, 3, 5, 7)]
    for k, s in enumerate((2, 3, 5, 7)):  # input k: the reconstruction from maps 1..k+1 at scale s
        partial = q.reconstruct(maps, k + 1)
        expected = partial if s == 7 else torch.nn.functional.interpolate(partial, size=(s, s), mode="area")
        assert torch.allclose(inputs[k], expected.flatten(2).transpose(1, 2), atol=1e-5)
    single = MultiScaleQuantizer(16, 4, scales=(7,))
    with pytest.raises(ValueError, match="scales"):
        MultiScaleQuantizer(16, 4, scales=(3, 2))
    with pytest.raises(ValueError, match="f"):
        single(torch.randn(1, 4, 5, 5))


def test_multiscale_vqvae_decodes_coarse_to_fine():
    model = MultiScaleVQVAE(VQConfig(num_codes=16, code_dim=4, width=16)).eval()
    x = torch.rand(2, 1, 28, 28)
    recon, maps, _ = model(x)
    assert torch.allclose(model.decode(maps), recon, atol=1e-5)
    assert model.decode(maps, upto=2).shape == recon.shape
    assert torch.allclose(model.decode_latent(model.quantizer.reconstruct(maps)), recon, atol=1e-5)
    with pytest.raises(ValueError, match="f_hat"):
        model.decode_latent(torch.zeros(2, 3, 7, 7))
    with pytest.raises(ValueError, match="k"):
        model.quantizer.next_scale_step(model.quantizer.reconstruct(maps), 4, maps[4])


# --- generators -------------------------------------------------------------------------------------


def test_block_causal_mask():
    mask, markov = block_causal_mask((1, 2, 3, 4)), block_causal_mask((1, 2, 3, 4), markov=True)
    assert mask.shape == markov.shape == (30, 30)
    level = [0] + [1] * 4 + [2] * 9 + [3] * 16
    for i, j in itertools.product(range(30), repeat=2):
        assert bool(mask[i, j]) == (level[j] <= level[i])
        assert bool(markov[i, j]) == (level[j] <= level[i] and (level[i] - level[j] <= 1 or level[j] == 0))


def _tiny_next_scale(seed=3, markov=False):
    torch.manual_seed(seed)
    return NextScaleModel(16, 4, scales=(1, 2, 3), n_layer=2, n_head=2, n_embd=16, markov=markov).eval()


@pytest.mark.parametrize("markov", [False, True])
def test_next_scale_model_is_block_causal_and_its_cached_steps_equal_the_forward(markov):
    model = _tiny_next_scale(markov=markov)
    quantizer = MultiScaleQuantizer(16, 4, scales=(1, 2, 3)).eval()
    f = torch.randn(3, 4, 3, 3)
    _, maps, _ = quantizer(f)
    inputs = quantizer.next_scale_inputs(maps)
    labels = torch.tensor([0, 5, 10])
    full = model(labels, inputs)  # (3, 14, 16)
    cache = KVCache(model.config, 3)
    steps = [model.step(labels, None, cache)] + [model.step(None, x, cache) for x in inputs]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    changed = model(labels, [inputs[0], inputs[1] + 1.0])  # block 2 (the 3x3 scale's input) changed
    assert torch.allclose(changed[:, :5], full[:, :5], atol=1e-6) and not torch.allclose(changed[:, 5:], full[:, 5:])
    loss = next_scale_loss(model, labels, maps, inputs)
    assert loss.item() > 0 and math.isfinite(loss.item())
    sampled = sample_next_scale(model, quantizer, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert [m.shape for m in sampled] == [(3, s, s) for s in (1, 2, 3)]
    # the latent the sampler builds as it goes is the reconstruction of the maps it returns
    again, f_hat = sample_next_scale(model, quantizer, labels, cfg_scale=2.0, return_latent=True,
                                     generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(again, sampled))
    assert torch.allclose(f_hat, quantizer.reconstruct(sampled), atol=1e-5)
    with pytest.raises(ValueError, match="quantizer"):
        sample_next_scale(model, MultiScaleQuantizer(16, 4, scales=(1, 3)), labels)
    with pytest.raises(ValueError, match="inputs"):
        model(labels, inputs[:1])


def test_raster_tokens_loss_and_sampling_law():
    torch.manual_seed(4)
    model = raster_model(8, num_classes=3, n_layer=1, n_head=2, n_embd=16).eval()
    grids = torch.randint(8, (5, 7, 7))
    tokens = raster_tokens(grids, torch.tensor([0, 1, 2, 0, 1]), 8, num_classes=3)
    assert tokens.shape == (5, 50) and torch.equal(tokens[:, 0], 8 + torch.tensor([0, 1, 2, 0, 1]))
    dropped = raster_tokens(grids, torch.zeros(5, dtype=torch.long), 8, num_classes=3, drop=1.0)
    assert (dropped[:, 0] == 8 + 3).all()  # every label replaced by the null class
    assert raster_loss(model, tokens, 8).item() > 0
    # the first token of sample_raster follows the guided softmax
    labels = torch.full((20000,), 1)
    grids = sample_raster(model, labels, 8, num_classes=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(torch.tensor([[8 + 1], [8 + 3]]))[:, -1, :8]
    law = cfg_logits(logits[0], logits[1], 2.0).double().softmax(-1)
    counts = torch.bincount(grids[:, 0, 0], minlength=8).double()
    assert stats.chisquare(counts.numpy(), (law * len(labels)).numpy()).pvalue > 1e-3
    with pytest.raises(ValueError, match="labels"):
        sample_raster(model, torch.tensor([4]), 8, num_classes=3)
    with pytest.raises(ValueError, match="grids"):
        raster_tokens(torch.randint(8, (2, 6, 6)), torch.tensor([0, 1]), 8)


def test_cfg_logits():
    cond, uncond = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(cfg_logits(cond, uncond, 1.0), cond)
    assert torch.allclose(cfg_logits(cond, uncond, 0.0), uncond)
    assert torch.allclose(cfg_logits(cond, uncond, 3.0), uncond + 3 * (cond - uncond))
    with pytest.raises(ValueError, match="uncond"):
        cfg_logits(cond, uncond[:2], 2.0)


# --- speculative Jacobi decoding and LANTERN ---------------------------------------------------------


def _exact_law(model, prefix, length, vocab, cfg_scale=1.0):
    """Probability of every continuation (vocab^length,) under sequential sampling of the first vocab logits."""
    conts = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    rows = prefix.shape[0]
    seqs = torch.cat([prefix[:, None].expand(-1, len(conts), -1), conts[None].expand(rows, -1, -1)], 2)
    with torch.no_grad():
        logits = model(seqs.reshape(rows * len(conts), -1)[:, :-1]).view(rows, len(conts), -1, model.config.vocab_size)
    logits = logits[:, :, prefix.shape[1] - 1:, :vocab].double()  # (rows, C, length, vocab)
    if rows == 2:
        logits = cfg_logits(logits[0], logits[1], cfg_scale)[None]
    probs = logits[0].softmax(-1).gather(-1, conts[..., None]).squeeze(-1).prod(-1)
    return probs


def _chi_square(samples, law):
    counts = torch.bincount(samples, minlength=len(law)).double()
    expected = law * len(samples)
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    return stats.chisquare(obs.numpy(), (exp / exp.sum() * len(samples)).numpy()).pvalue


@pytest.mark.parametrize("case", ["plain", "guided", "guided by the last token", "relaxed"])
def test_speculative_jacobi_decoding_samples_the_model(case):
    """delta = 0: the law of every 3-token continuation is the sequential law (guided too). LANTERN with
    a budget that covers everything (delta = 1) accepts every draft, and its law must differ."""
    vocab, length = 3, 3
    model = tiny_gpt(6, n_layer=2, vocab_size=6, block_size=16, std=0.6)
    prefix = {"guided": torch.tensor([[4, 1], [5, 1]]), "guided by the last token": torch.tensor([[1, 4], [1, 5]])}.get(
        case, torch.tensor([[4, 1]]))  # the rows differ in the prefill, or only in the token fed in every pass
    cfg = 1.5 if case.startswith("guided") else 1.0
    relaxed = {"delta": 1.0, "neighbors": torch.arange(vocab).repeat(vocab, 1)} if case == "relaxed" else {}
    law = _exact_law(model, prefix, length, vocab, cfg)
    g = torch.Generator().manual_seed(7)
    codes = torch.tensor([vocab * vocab, vocab, 1])
    samples = torch.tensor([int((jacobi_generate(model, prefix, length, vocab, window=2, cfg_scale=cfg, generator=g,
                                                 **relaxed)[0] * codes).sum()) for _ in range(3000)])
    pvalue = _chi_square(samples, law)
    assert pvalue < 1e-6 if case == "relaxed" else pvalue > 1e-3


def test_jacobi_stats_and_errors():
    model = tiny_gpt(8, n_layer=1, vocab_size=6, block_size=16)
    tokens, info = jacobi_generate(model, torch.tensor([[4, 1]]), 7, 3, window=3,
                                   generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (7,) and int(tokens.max()) < 3
    assert info["passes"] == len(info["accepted"]) and info["passes"] <= 7
    with pytest.raises(ValueError, match="window"):
        jacobi_generate(model, torch.tensor([[4, 1]]), 3, 3, window=0)
    with pytest.raises(ValueError, match="neighbors"):
        jacobi_generate(model, torch.tensor([[4, 1]]), 3, 3, delta=0.1)
    with pytest.raises(ValueError, match="prefix"):
        jacobi_generate(model, torch.tensor([[4, 1]]), 3, 3, cfg_scale=2.0)


def test_lantern_proximity_set_respects_the_budget():
    g = torch.Generator().manual_seed(9)
    codebook = torch.randn(20, 3, generator=g)
    neighbors = lantern_neighbors(codebook, 6)
    assert (neighbors[:, 0] == torch.arange(20)).all()
    distance = torch.cdist(codebook, codebook)
    assert (distance.gather(1, neighbors).diff(dim=1) >= -1e-9).all()  # nearest first
    for trial in range(200):
        p = torch.rand(20, generator=g, dtype=torch.float64) ** 4
        p /= p.sum()
        x, delta = trial % 20, [0.0, 0.01, 0.05, 0.2][trial % 4]
        members = proximity_set(p, x, neighbors, delta)
        extra = float(p[members[1:]].sum())
        assert members[0] == x and extra <= delta + 1e-12
        if len(members) < 6:  # the next neighbour would break the budget: the prefix is the longest
            assert extra + float(p[neighbors[x, len(members)]]) > delta
        tilde = relaxed_target(p, x, members)
        assert float(tilde.sum()) == pytest.approx(1.0) and 0.5 * float((tilde - p).abs().sum()) == pytest.approx(extra)
        from arlib.vision.jacobi import _relax  # the decoding loop's numpy twin gives the same set and target

        tilde_np, members_np = _relax(p.numpy(), x, neighbors[x].numpy(), delta)
        assert np.array_equal(members_np, members.numpy()) and np.allclose(tilde_np, tilde.numpy())
    with pytest.raises(ValueError, match="delta"):
        proximity_set(p, 0, neighbors, 1.5)
    with pytest.raises(ValueError, match="k"):
        lantern_neighbors(codebook, 0)


def test_sample_raster_sjd_with_lantern_runs():
    torch.manual_seed(10)
    model = raster_model(16, num_classes=3, n_layer=1, n_head=2, n_embd=16).eval()
    neighbors = lantern_neighbors(torch.randn(16, 4), 4)
    grid, info = sample_raster_sjd(model, 2, 16, num_classes=3, window=6, cfg_scale=2.0, neighbors=neighbors,
                                   delta=0.2, generator=torch.Generator().manual_seed(0))
    assert grid.shape == (7, 7) and info["passes"] <= 49


# --- the Fréchet distance ----------------------------------------------------------------------------


def test_frechet_distance_against_closed_forms():
    # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    assert gaussian_frechet(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]), torch.tensor([[1.0]])) \
        == pytest.approx(4.0 + 1.0)
    # commuting (diagonal) covariances: sum of the 1-D terms
    va, vb = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    expected = 1.0 + float(((va.sqrt() - vb.sqrt()) ** 2).sum())
    assert gaussian_frechet(torch.zeros(3), torch.diag(va), torch.tensor([1.0, 0, 0]), torch.diag(vb)) \
        == pytest.approx(expected)
    # a rotation of both leaves it unchanged
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    rotated = gaussian_frechet(torch.zeros(3), rotation @ torch.diag(va).double() @ rotation.T,
                               rotation @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               rotation @ torch.diag(vb).double() @ rotation.T)
    assert rotated == pytest.approx(expected, rel=1e-9)
    # samples: the estimate converges to the closed form
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=(20000, 3)) * va.sqrt().numpy())
    b = torch.tensor(rng.normal(size=(20000, 3)) * vb.sqrt().numpy() + np.array([1.0, 0, 0]))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="features_b"):
        frechet_distance(a, b[:, :2])
    with pytest.raises(ValueError, match="cov_b"):
        gaussian_frechet(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(3))


def test_classifier_shapes():
    model = FashionClassifier()
    x = torch.rand(4, 1, 28, 28)
    assert model(x).shape == (4, 10) and model.features(x).shape == (4, 64)
    with pytest.raises(ValueError, match="x"):
        model.features(torch.rand(4, 28, 28))


def test_tokenizers_and_samplers_on_a_device_match_the_cpu(device):
    """The VQ tokenizers encode to the CPU's codes on the device, and the raster, next-scale and Jacobi
    samplers, drawing from a CPU generator, sample the CPU's tokens there."""
    import copy

    torch.manual_seed(6)
    vq, ms = VQVAE(VQConfig(num_codes=32, code_dim=8, width=16)).eval(), _tiny_next_scale()
    quantizer = MultiScaleQuantizer(16, 4, scales=(1, 2, 3)).eval()
    raster = raster_model(8, num_classes=3, n_layer=1, n_head=2, n_embd=16).eval()
    x, labels = torch.rand(2, 1, 28, 28), torch.tensor([0, 2])
    on = {name: copy.deepcopy(m).to(device) for name, m in
          {"vq": vq, "ms": ms, "quantizer": quantizer, "raster": raster}.items()}
    assert torch.equal(on["vq"].encode(x.to(device)).cpu(), vq.encode(x))
    torch.testing.assert_close(on["vq"].decode(vq.encode(x).to(device)).cpu(), vq.decode(vq.encode(x)),
                               rtol=1e-4, atol=1e-4)
    grids = sample_raster(raster, labels, 8, num_classes=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    grids_d = sample_raster(on["raster"], labels.to(device), 8, num_classes=3, cfg_scale=2.0,
                            generator=torch.Generator().manual_seed(1))
    assert grids_d.device.type == device.type and torch.equal(grids_d.cpu(), grids)
    maps, f_hat = sample_next_scale(ms, quantizer, labels, return_latent=True,
                                    generator=torch.Generator().manual_seed(2))
    maps_d, f_hat_d = sample_next_scale(on["ms"], on["quantizer"], labels.to(device), return_latent=True,
                                        generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a.cpu(), b) for a, b in zip(maps_d, maps))
    torch.testing.assert_close(f_hat_d.cpu(), f_hat, rtol=1e-4, atol=1e-4)
    model = tiny_gpt(8, n_layer=1, vocab_size=6, block_size=16)
    tokens, info = jacobi_generate(model, torch.tensor([[4, 1]]), 7, 3, window=3,
                                   generator=torch.Generator().manual_seed(0))
    tokens_d, info_d = jacobi_generate(copy.deepcopy(model).to(device), torch.tensor([[4, 1]], device=device), 7, 3,
                                       window=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens_d.cpu(), tokens) and info_d == info
