"""Tests of the baselines of an SAE on a GPT (arlib.interp.baselines) and of the tools that look at its latents
(arlib.interp.features), on the tiny random GPTs of tests/tiny_models.py."""

import pytest
import torch
from tiny_models import tiny_gpt

from arlib.interp.baselines import (
    CoordinateBaseline,
    MLPNeuronBaseline,
    PCABaseline,
    PositionBaseline,
    bootstrap_recovered,
    compare,
    loss_recovered,
    random_sae,
    splice_losses,
)
from arlib.interp.features import classify_latents, format_dashboard, intervene, latent_dashboard, logit_effect
from arlib.interp.sae import SAEConfig, SparseAutoencoder, normalized_mse, residual_stream, spliced_logits

VOCAB = "abcdefghijklm"  # the tiny GPT's 13 tokens


@pytest.fixture(scope="module")
def setup():
    gpt = tiny_gpt(0)  # width 16, 2 layers, block 64
    ids = torch.randint(0, 13, (6, 33), generator=torch.Generator().manual_seed(0))
    h = residual_stream(gpt, ids[:, :-1], 1)  # (6, 32, 16)
    sae = SparseAutoencoder(SAEConfig(16, 40, "topk", k=4), torch.Generator().manual_seed(1))
    sae.init_decoder_bias(h.reshape(-1, 16))
    return gpt, ids, h, sae


def correlated(n=500, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + torch.randn(d, generator=g)


# --- baselines --------------------------------------------------------------------------------------------


def test_pca_at_full_rank_reconstructs_exactly():
    x = correlated()
    pca = PCABaseline(x, 8)
    assert torch.allclose(pca.reconstruct(x), x, atol=1e-4)
    assert pca.explained_variance_ratio == pytest.approx(1.0)
    assert torch.allclose(pca.components @ pca.components.T, torch.eye(8), atol=1e-5)


def test_pca_nmse_is_one_minus_the_explained_variance_and_falls_with_rank():
    x = correlated().double()
    nmse = []
    for rank in (1, 3, 6):
        pca = PCABaseline(x, rank)
        nmse.append(normalized_mse(x, pca.reconstruct(x)))
        assert nmse[-1] == pytest.approx(1 - pca.explained_variance_ratio, abs=1e-9)
    assert nmse[0] > nmse[1] > nmse[2] > 0
    # the best rank-r reconstruction: no other rank-3 projection (here, onto 3 coordinates) does better
    centred = x - x.mean(0)
    assert nmse[1] <= normalized_mse(x, x.mean(0) + centred * (torch.arange(8) < 3)) + 1e-12


def test_position_baseline_is_exact_on_a_function_of_position():
    pattern = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))  # (T, d)
    x = pattern.expand(7, 32, 5).clone()  # seven windows, activations a pure function of the position
    base = PositionBaseline(x)
    assert torch.equal(base(x), x)
    flat, positions = x.reshape(-1, 5), torch.arange(32).repeat(7)
    assert torch.equal(base.reconstruct(flat, positions), flat)
    assert torch.equal(base(x[:, :10]), x[:, :10])  # shorter windows read the first positions
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(PositionBaseline(noisy).means, noisy.mean(0))


def test_coordinate_baseline_keeps_the_k_coordinates_farthest_from_the_mean():
    x = torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])  # mean (1, 1, 1)
    base = CoordinateBaseline(x, 1)
    out = base(torch.tensor([[1.5, -3.0, 1.0]]))
    assert torch.equal(out, torch.tensor([[1.0, -3.0, 1.0]]))
    assert torch.allclose(CoordinateBaseline(x, 3)(x), x)


def test_mlp_neuron_baseline_with_every_neuron_is_the_gpt(setup):
    gpt, ids, h, _ = setup
    full = MLPNeuronBaseline(gpt, 1, 64, ids[:, :-1])  # width 16: 64 hidden neurons
    assert torch.allclose(full.splice(h, ids[:, :-1]), h, atol=1e-5)
    sparse = MLPNeuronBaseline(gpt, 1, 2, ids[:, :-1]).splice(h, ids[:, :-1])
    assert sparse.shape == h.shape and not torch.allclose(sparse, h, atol=1e-3)


@torch.no_grad()
def test_random_sae_fits_its_decoder_by_least_squares(setup):
    _, _, h, sae = setup
    x = h.reshape(-1, 16)
    fitted = random_sae(sae.config, x, torch.Generator().manual_seed(5), ridge=0.0)
    unfit = random_sae(sae.config, x, torch.Generator().manual_seed(5), fit_decoder=False)
    assert torch.allclose(fitted.b_dec, x.mean(0)) and torch.allclose(unfit.b_dec, x.mean(0))
    assert torch.equal(fitted.W_enc, unfit.W_enc)  # the same random codes
    assert not fitted.config.unit_decoder and unfit.config == sae.config
    f = fitted.encode(x)
    assert normalized_mse(x, fitted(x)[0]) < normalized_mse(x, unfit(x)[0])
    # least squares: the residual is orthogonal to every code
    assert (f.T @ (x - fitted(x)[0])).abs().max() < 1e-3 * x.abs().max() * len(x)


def test_splice_losses_match_the_gpt_and_spliced_logits(setup):
    gpt, ids, _, sae = setup
    x, y = ids[:, :-1], ids[:, 1:]
    losses = splice_losses(gpt, 1, ids, {"sae": sae, "identity": lambda s: s}, batch_size=4)
    clean = torch.nn.functional.cross_entropy(gpt(x).transpose(1, 2), y, reduction="none").double().mean(1)
    spliced = torch.nn.functional.cross_entropy(spliced_logits(gpt, x, 1, lambda s: sae(s)[0]).transpose(1, 2), y,
                                                reduction="none").double().mean(1)
    assert torch.allclose(losses["clean"], clean, atol=1e-5) and torch.allclose(losses["identity"], clean, atol=1e-5)
    assert torch.allclose(losses["sae"], spliced, atol=1e-5)


def test_loss_recovered_and_its_bootstrap_on_hand_made_losses():
    losses = {"clean": torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64),
              "mean": torch.tensor([3.0, 3.0, 4.0], dtype=torch.float64),
              "a": torch.tensor([1.5, 1.5, 2.5], dtype=torch.float64),  # recovers (6 - 1.5) / 6 = 0.75 on each
              "b": torch.tensor([3.0, 3.0, 4.0], dtype=torch.float64)}
    assert loss_recovered(losses, "a") == pytest.approx(0.75) and loss_recovered(losses, "b") == 0
    boot = bootstrap_recovered(losses, ["a", "b"], n_boot=200, generator=torch.Generator().manual_seed(0))
    assert boot["a"] == pytest.approx((0.75, 0.75, 0.75)) and boot[("diff", "a", "b")] == pytest.approx((0.75,) * 3)


@torch.no_grad()
def test_compare_rows(setup):
    gpt, ids, h, sae = setup
    x = h.reshape(-1, 16)
    res = compare(gpt, 1, ids, {"sae": sae, "pca16": PCABaseline(x, 16), "pca2": PCABaseline(x, 2)}, x.mean(0),
                  n_boot=100, generator=torch.Generator().manual_seed(0), batch_size=4)
    rows = res["rows"]
    assert rows["pca16"]["nmse"] < 1e-8 and rows["pca16"]["recovered"] == pytest.approx(1.0, abs=1e-4)
    assert rows["pca2"]["nmse"] == pytest.approx(1 - PCABaseline(x, 2).explained_variance_ratio, abs=1e-4)
    assert rows["sae"]["nmse"] == pytest.approx(normalized_mse(x, sae(x)[0]), rel=1e-4)
    assert rows["sae"]["size"] == pytest.approx(4.0) and rows["pca2"]["size"] == 2
    low, high = rows["sae"]["interval"]
    assert low <= rows["sae"]["recovered"] <= high


# --- features ---------------------------------------------------------------------------------------------


def test_logit_effect_is_w_u_of_the_centred_direction_through_the_gain(setup):
    gpt = setup[0]
    u = torch.randn(16, generator=torch.Generator().manual_seed(0))
    effect = logit_effect(gpt, u, scale=2.0)
    assert torch.allclose(effect, gpt.wte.weight @ (gpt.ln_f.weight * (u - u.mean())) / 2, atol=1e-5)
    assert torch.allclose(logit_effect(gpt, u + 3.0), logit_effect(gpt, u), atol=1e-4)  # LayerNorm centres


def test_latent_dashboard_contexts_and_format(setup):
    gpt, ids, h, sae = setup
    x = h.reshape(-1, 16)
    text = "".join(VOCAB[i] for i in ids[:, :-1].reshape(-1).tolist())
    values = sae.encode(x).detach()
    j = int((values > 0).sum(0).argmax())  # a latent that fires
    dash = latent_dashboard(sae, gpt, x, text, j, 32, VOCAB, n_top=3, quantiles=(0.0, 1.0), per_quantile=1, width=5)
    assert dash["density"] == pytest.approx(float((values[:, j] > 0).double().mean()))
    best = int(values[:, j].argmax())
    before = text[max(best - 5, best // 32 * 32):best]
    assert dash["top"][0] == (before, text[best], pytest.approx(float(values[best, j])))
    assert dash["quantiles"][1.0][0][2] == pytest.approx(float(values[:, j].max()))
    live = values[:, j][values[:, j] > 0]
    assert dash["quantiles"][0.0][0][2] == pytest.approx(float(live.min()))
    assert [c for c, _ in dash["promoted"]][0] == VOCAB[int(logit_effect(gpt, sae.decoder[j].detach()).argmax())]
    assert f"latent {j}:" in format_dashboard(dash)
    again = latent_dashboard(sae, gpt, None, text, j, 32, VOCAB, n_top=3, quantiles=(0.0, 1.0), per_quantile=1,
                             width=5, activations=values[:, j])
    assert again == dash


def test_classify_latents_on_hand_made_codes():
    N = 400
    chars = torch.arange(N) % 4
    positions = torch.arange(N) % 100
    indices = torch.zeros(N, 3, dtype=torch.long)
    values = torch.zeros(N, 3)
    indices[:, 0], values[:, 0] = 0, (chars == 2).float()  # latent 0: fires exactly on character 2
    indices[:, 1], values[:, 1] = 1, (positions < 10).float() * 2  # latent 1: fires on positions 0-9
    idle = torch.arange(N) % 2 == 0  # latent 2 fires on every other position, blind to character and position
    indices[:, 2], values[:, 2] = 2, idle.float()
    out = classify_latents(indices, values, chars, positions, 4, 100, bin_width=10, min_firings=20)
    assert out["top_char_share"][0] == 1 and out["single_char"].tolist()[:2] == [True, False]
    assert out["position_tv"][1] == pytest.approx(0.9) and out["positional"].tolist() == [False, True, False, False]
    assert out["position_tv"][2] < 0.1 and out["top_char_share"][2] == 0.5
    assert out["classified"].tolist() == [True, True, True, False] and out["n_classified"] == 3
    assert out["single_char_share"] == pytest.approx(1 / 3) and out["positional_share"] == pytest.approx(1 / 3)


@torch.no_grad()
def test_intervention_that_changes_nothing_has_kl_zero(setup):
    gpt, ids, h, sae = setup
    f = sae.encode(h)
    j = int((f > 0).sum((0, 1)).argmax())
    mask = f[..., j] > 0  # where latent j fires ...
    same = intervene(gpt, sae, 1, ids[:, :-1], j, mask & (f[..., j] == f[..., j].amax()), float(f[..., j].amax()))
    assert same["kl"].max() < 1e-9 and same["change"].abs().max() < 1e-9
    clean = torch.softmax(gpt(ids[:, :-1]).double(), -1)[mask]
    ablated = intervene(gpt, sae, 1, ids[:, :-1], j, mask, 0.0)  # ... ablate it
    assert torch.allclose(ablated["before"], clean, atol=1e-4)  # the error term makes "before" the clean GPT
    assert torch.allclose(ablated["old"], f[..., j][mask])
    assert ablated["kl"].max() > 1e-4
    assert torch.allclose(ablated["after"].sum(-1), torch.ones(int(mask.sum()), dtype=torch.float64))
