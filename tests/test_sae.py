"""Tests of chapter 6's library: the toy model of superposition, data with known features, sparse autoencoders
(ReLU + L1, TopK + AuxK, bias adaptation and GBA), their metrics, and the GPT's residual stream."""

import json
import math

import pytest
import torch
from tiny_models import tiny_gpt

from arlib.interp.sae import (
    SAEConfig,
    SparseAutoencoder,
    dead_and_dense,
    evaluate,
    firing_f1,
    firing_frequencies,
    fraction_recovered,
    jump_activation,
    l0,
    l1_penalty,
    matching_latent,
    max_cosines,
    mmcs,
    normalized_mse,
    reconstruction_loss,
    residual_stream,
    spliced_logits,
    topk_activation,
)
from arlib.interp.sae_train import (
    BiasAdaptation,
    L1Objective,
    TopKObjective,
    bias_adaptation_update,
    collect_activations,
    group_ids,
    group_targets,
    train_sae,
)
from arlib.interp.superposition import (
    SparseMixture,
    ToyModel,
    feature_dimensionality,
    random_directions,
    toy_batch,
    toy_loss,
    train_toy_model,
)
from arlib.train import TrainConfig

# --- superposition --------------------------------------------------------------------------------------


def test_toy_batch_has_the_requested_sparsity_per_instance():
    g = torch.Generator().manual_seed(0)
    x = toy_batch(20000, 10, [1.0, 0.3, 0.05], g, n_instances=3)
    assert x.shape == (20000, 3, 10) and x.min() >= 0 and x.max() <= 1
    present = (x > 0).double().mean(dim=(0, 2))
    assert torch.allclose(present, torch.tensor([1.0, 0.3, 0.05], dtype=torch.float64), atol=0.01)
    assert abs(x[:, 0].mean().item() - 0.5) < 0.01  # U[0, 1] values
    with pytest.raises(ValueError, match="p"):
        toy_batch(4, 10, 1.5, g)
    with pytest.raises(ValueError, match="p"):
        toy_batch(4, 10, [0.5, 0.5], g, n_instances=3)
    with pytest.raises(ValueError, match="batch_size"):
        toy_batch(0, 10, 0.5, g)


def test_toy_model_is_relu_of_wt_w_x_plus_b():
    g = torch.Generator().manual_seed(1)
    model = ToyModel(7, 3, n_instances=2, generator=g)
    with torch.no_grad():
        model.b.normal_(generator=g)
    x = toy_batch(5, 7, 0.5, g, n_instances=2)
    for i in range(2):
        W, b = model.W[i], model.b[i]  # (3, 7), (7,)
        assert torch.allclose(model(x)[:, i], torch.relu(x[:, i] @ W.T @ W + b), atol=1e-6)
    importance = torch.linspace(1, 0.1, 7)
    expected = (importance * (x - model(x)) ** 2).sum(dim=(1, 2)).mean()
    assert torch.allclose(toy_loss(model, x, importance), expected)
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(5, 3, 7))
    with pytest.raises(ValueError, match="importance"):
        toy_loss(model, x, torch.ones(6))


def test_feature_dimensionality_on_hand_made_embeddings():
    orthogonal = torch.eye(3)
    assert torch.allclose(feature_dimensionality(orthogonal), torch.ones(3))
    antipodal = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])  # features 0 and 1 share a line, 2 is ignored
    assert torch.allclose(feature_dimensionality(antipodal), torch.tensor([0.5, 0.5, 0.0]))
    angles = torch.arange(5) * 2 * math.pi / 5  # a pentagon in 2 dimensions: each feature owns 2/5
    pentagon = torch.stack([angles.cos(), angles.sin()])
    assert torch.allclose(feature_dimensionality(pentagon), torch.full((5,), 0.4), atol=1e-6)
    with pytest.raises(ValueError, match="W"):
        feature_dimensionality(torch.ones(3))


def test_toy_model_superposes_features_only_when_they_are_sparse():
    """Elhage et al.: dense features get m orthogonal dimensions, the rest are dropped; sparse features share."""
    importance = 0.8 ** torch.arange(6.0)
    model = train_toy_model(6, 2, [1.0, 0.03], importance, steps=1500, batch_size=256, lr=3e-3, seed=0)
    norms = model.W.detach().norm(dim=1)  # (2, 6)
    dims = feature_dimensionality(model.W.detach())
    assert int((norms[0] > 0.5).sum()) == 2 and torch.all(norms[0, :2] > 0.9)  # the two most important
    assert abs(dims[0].sum().item() - 2) < 0.1
    assert int((norms[1] > 0.5).sum()) > 2  # more features than dimensions
    assert dims[1].sum().item() <= 2 + 1e-4


def test_sparse_mixture_samples_and_validation():
    g = torch.Generator().manual_seed(2)
    mix = SparseMixture.random(40, 8, 0.01, 0.2, g)
    assert mix.features.shape == (40, 8) and torch.allclose(mix.features.norm(dim=1), torch.ones(40), atol=1e-6)
    assert mix.frequencies.min() >= 0.01 and mix.frequencies.max() <= 0.2
    x, h = mix.sample(20000, g)
    assert x.shape == (20000, 8) and h.shape == (20000, 40)
    assert torch.allclose(x, h @ mix.features, atol=1e-5)
    assert torch.allclose((h > 0).float().mean(0), mix.frequencies, atol=0.015)
    assert h[h > 0].min() >= 0.5 and h.max() <= 1.5
    noisy = SparseMixture(mix.features, mix.frequencies, noise=0.1)
    xn, hn = noisy.sample(5000, g)
    assert abs((xn - hn @ mix.features).std().item() - 0.1) < 0.005
    with pytest.raises(ValueError, match="features"):
        SparseMixture(torch.ones(4, 3), torch.full((4,), 0.1))
    with pytest.raises(ValueError, match="frequencies"):
        SparseMixture(random_directions(4, 3, g), torch.full((3,), 0.1))
    with pytest.raises(ValueError, match="frequencies"):
        SparseMixture(random_directions(4, 3, g), torch.zeros(4))
    with pytest.raises(ValueError, match="noise"):
        SparseMixture(random_directions(4, 3, g), 0.1, noise=-1.0)
    with pytest.raises(ValueError, match="p_min"):
        SparseMixture.random(4, 3, 0.2, 0.1, g)


# --- the SAE ----------------------------------------------------------------------------------------------


def test_sae_config_validation():
    with pytest.raises(ValueError, match="activation"):
        SAEConfig(4, 8, "gelu")
    with pytest.raises(ValueError, match="k"):
        SAEConfig(4, 8, "topk")
    with pytest.raises(ValueError, match="k"):
        SAEConfig(4, 8, "topk", k=9)
    with pytest.raises(ValueError, match="k"):
        SAEConfig(4, 8, "relu", k=2)
    with pytest.raises(ValueError, match="n_latents"):
        SAEConfig(4, 0)
    with pytest.raises(TypeError, match="config"):
        SparseAutoencoder({"d_in": 4, "n_latents": 8})
    sae = SparseAutoencoder(SAEConfig(4, 8))
    with pytest.raises(ValueError, match="x"):
        sae(torch.zeros(3, 5))


def test_sae_forward_follows_the_equations():
    g = torch.Generator().manual_seed(3)
    sae = SparseAutoencoder(SAEConfig(5, 12), g)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(generator=g)
    x = torch.randn(7, 5, generator=g)
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    x_hat, got = sae(x)
    assert torch.allclose(got, f, atol=1e-6) and torch.allclose(x_hat, f @ sae.W_dec + sae.b_dec, atol=1e-5)
    assert torch.allclose(reconstruction_loss(x, x_hat), ((x - x_hat) ** 2).sum(1).mean())
    sample = torch.randn(100, 5, generator=g) + 3
    sae.init_decoder_bias(sample)
    assert torch.allclose(sae.b_dec, sample.mean(0))


def test_topk_keeps_exactly_k_latents():
    g = torch.Generator().manual_seed(4)
    pre = torch.randn(50, 30, generator=g)
    for k in (1, 3, 30):
        f = topk_activation(pre, k)
        assert bool(((f != 0).sum(1) <= k).all())
        kth = pre.sort(dim=1, descending=True).values[:, k - 1:k]
        assert torch.equal(f, torch.where(pre >= kth, torch.relu(pre), torch.zeros_like(pre)))
    positive = pre.abs() + 0.1  # all pre-activations positive: exactly k survive
    assert bool(((topk_activation(positive, 5) != 0).sum(1) == 5).all())
    sae = SparseAutoencoder(SAEConfig(6, 40, "topk", k=4, unit_decoder=True), g)
    _, f = sae(torch.randn(200, 6, generator=g))
    assert bool(((f != 0).sum(1) <= 4).all()) and l0(f) > 3  # random init: most rows have 4 positive
    with pytest.raises(ValueError, match="k"):
        topk_activation(pre, 31)
    with pytest.raises(ValueError, match="k"):
        topk_activation(pre, 0)


def test_jump_activation_gates_without_shrinking():
    z = torch.tensor([[0.5, 1.5, -0.2, 2.0]])
    b = torch.tensor([-1.0, -1.0, 0.5, 0.0])
    assert torch.equal(jump_activation(z, b), torch.tensor([[0.0, 1.5, 0.0, 2.0]]))  # a passing value is whole
    with pytest.raises(ValueError, match="bias"):
        jump_activation(z, torch.zeros(3))


def test_decoder_norms_make_the_l1_penalty_scale_invariant():
    """Rescaling a latent (encoder column and bias times c, decoder row over c) changes neither the
    reconstruction nor the decoder-weighted penalty; the plain L1 of f would drop by the factor c."""
    g = torch.Generator().manual_seed(5)
    sae = SparseAutoencoder(SAEConfig(6, 10), g)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.1, 0.1, generator=g)
    x = torch.randn(64, 6, generator=g)
    x_hat, f = sae(x)
    before = l1_penalty(f, sae.decoder)
    c = torch.linspace(0.1, 5.0, 10)
    with torch.no_grad():
        sae.W_enc.mul_(c)
        sae.b_enc.mul_(c)
        sae.W_dec.div_(c[:, None])
    x_hat2, f2 = sae(x)
    assert torch.allclose(x_hat, x_hat2, atol=1e-5)
    assert torch.allclose(l1_penalty(f2, sae.decoder), before, rtol=1e-5)
    assert not torch.allclose(f2.sum(1).mean(), f.sum(1).mean(), rtol=0.05)
    with pytest.raises(ValueError, match="decoder"):
        l1_penalty(f, torch.ones(9, 6))


def test_unit_decoder_rows_stay_unit_norm_whatever_the_weights():
    g = torch.Generator().manual_seed(6)
    sae = SparseAutoencoder(SAEConfig(6, 10, "topk", k=3, unit_decoder=True), g)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.1, 10, 10)[:, None])
    assert torch.allclose(sae.decoder.norm(dim=1), torch.ones(10), atol=1e-6)
    mix = SparseMixture.random(8, 6, 0.1, 0.3, g)
    train_sae(sae, TopKObjective(k_aux=4, dead_after=5), lambda s, gen: mix.sample(64, gen)[0],
              TrainConfig(steps=30, lr=1e-2, warmup=0, progress=False))
    assert torch.allclose(sae.decoder.norm(dim=1), torch.ones(10), atol=1e-5)


def test_auxk_gives_dead_latents_a_gradient():
    g = torch.Generator().manual_seed(7)
    sae = SparseAutoencoder(SAEConfig(4, 40, "topk", k=2, unit_decoder=True), g)
    x = torch.randn(8, 4, generator=g)  # at most 16 of the 40 latents fire
    grads = {}
    for coeff in (0.0, 1.0):
        objective = TopKObjective(k_aux=3, aux_coeff=coeff, dead_after=1)
        objective.prepare(sae)
        objective.silent += 5  # every latent counts as silent for 5 steps
        never = topk_activation(sae.pre_activations(x), 2).eq(0).all(0)  # latents outside every top 2 of this batch
        sae.zero_grad()
        objective(sae, x).backward()
        grads[coeff] = sae.W_enc.grad[:, never].abs().sum().item()
        assert int(objective.silent[~never].max()) == 0 and int(objective.silent[never].min()) == 6
    assert grads[0.0] == 0 and grads[1.0] > 0


def test_objectives_reject_the_wrong_architecture():
    relu, topk = SparseAutoencoder(SAEConfig(4, 8)), SparseAutoencoder(SAEConfig(4, 8, "topk", k=2))
    with pytest.raises(ValueError, match="sae"):
        L1Objective(0.1).prepare(topk)
    with pytest.raises(ValueError, match="sae"):
        TopKObjective().prepare(relu)
    with pytest.raises(ValueError, match="sae"):
        BiasAdaptation(torch.full((8,), 0.1)).prepare(topk)
    with pytest.raises(ValueError, match="targets"):
        BiasAdaptation(torch.full((7,), 0.1)).prepare(relu)
    with pytest.raises(TypeError, match="sae"):
        L1Objective(0.1).prepare(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="l1_coeff"):
        L1Objective(-1.0)
    with pytest.raises(ValueError, match="targets"):
        BiasAdaptation(torch.full((8,), 1.5))
    with pytest.raises(ValueError, match="period"):
        BiasAdaptation(torch.full((8,), 0.1), period=0)
    with pytest.raises(ValueError, match="gamma_plus"):
        BiasAdaptation(torch.full((8,), 0.1), gamma_plus=-1.0)
    with pytest.raises(TypeError, match="config"):
        train_sae(relu, L1Objective(0.1), lambda s, g: torch.zeros(2, 4), {"steps": 3})


# --- bias adaptation --------------------------------------------------------------------------------------


def test_group_targets_are_geometric_and_grouped():
    t = group_targets(10, 3, 0.1, 0.001)
    assert t.shape == (10,)
    assert torch.allclose(t.unique().sort(descending=True).values, torch.tensor([0.1, 0.01, 0.001],
                                                                                dtype=torch.float64))
    assert [int((t == v).sum()) for v in (0.1, 0.01, 0.001)] == [4, 3, 3] or \
        sorted(int((t == v).sum()) for v in t.unique()) == [3, 3, 4]
    assert bool((t[:-1] >= t[1:]).all())  # contiguous groups, from the highest target down
    assert torch.equal(group_targets(5, 1, 0.05, 0.001), torch.full((5,), 0.05, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_groups"):
        group_targets(4, 5, 0.1, 0.01)
    with pytest.raises(ValueError, match="p_min"):
        group_targets(4, 2, 0.01, 0.1)


def _buffer(seed=8, N=2000):
    """Pre-activations of 6 neurons in 2 groups: too frequent, in band, nearly dead, and a dead group member."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, 6, generator=g, dtype=torch.float64) * 0.3
    bias = torch.tensor([-0.1, -0.5, -0.9, -0.2, -0.6, -0.95], dtype=torch.float64)
    bias[2] = -(float(z[:, 2].max()) + 0.01)  # neuron 2 never fires
    targets = torch.tensor([0.05, 0.05, 0.05, 0.01, 0.01, 0.01], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    return z + bias, bias, targets, groups


def test_bias_adaptation_update_follows_the_published_rule():
    """Chen et al.'s Algorithm 1: above target -> b - gamma_minus r_max (>= -1); nearly dead -> b + gamma_plus
    times the group's mean r_max over live neurons (<= 0); in between (the target is a ceiling) -> unchanged."""
    pre, bias, targets, groups = _buffer()
    p_hat = (pre > 0).double().mean(0)
    r_max = pre.max(0).values
    new = bias_adaptation_update(bias, pre, targets, groups, gamma_minus=0.1, gamma_plus=0.2, eps=1e-3)
    for j in range(6):
        if p_hat[j] > targets[j]:
            want = max(float(bias[j] - 0.1 * r_max[j]), -1.0)
        elif p_hat[j] < 1e-3:
            live = [i for i in range(6) if groups[i] == groups[j] and p_hat[i] > 0]
            want = min(float(bias[j] + 0.2 * r_max[live].mean()), 0.0)
        else:
            want = float(bias[j])
        assert float(new[j]) == pytest.approx(want, abs=1e-12), j
    assert p_hat[0] > targets[0] and new[0] < bias[0]  # the cases the buffer was built to contain
    assert p_hat[2] == 0 and new[2] > bias[2]
    assert 0 < p_hat[1] <= targets[1] and new[1] == bias[1]  # within its ceiling: left alone


@pytest.mark.parametrize("seed", range(20))
def test_bias_adaptation_update_moves_each_bias_the_right_way(seed):
    """Property: a neuron above its target only ever lowers its bias, a dead one only raises it, a neuron within
    its ceiling keeps it, and the result stays within the clip range [-1, 0]."""
    g = torch.Generator().manual_seed(100 + seed)
    N, M = 500, 12
    z = torch.randn(N, M, generator=g, dtype=torch.float64) * (0.2 + torch.rand(M, generator=g, dtype=torch.float64))
    bias = -torch.rand(M, generator=g, dtype=torch.float64)
    bias[:3] = -5.0  # far below: dead (and outside the range, so the clip at 0 cannot pull them up past it)
    targets = torch.exp(torch.empty(M, dtype=torch.float64).uniform_(-6, -1, generator=g))
    groups = torch.randint(0, 3, (M,), generator=g)
    pre = z + bias
    p_hat = (pre > 0).double().mean(0)
    gm, gp = float(torch.rand(1, generator=g)) + 0.01, float(torch.rand(1, generator=g)) + 0.01
    new = bias_adaptation_update(bias, pre, targets, groups, gm, gp, eps=1e-3)
    above, dead = p_hat > targets, p_hat < 1e-3
    assert bool((new[above] <= bias[above]).all()) and bool((new[above] >= -1).all())
    assert bool((new[dead] >= bias[dead]).all()) and bool((new[dead] <= 0).all())
    assert torch.equal(new[~above & ~dead], bias[~above & ~dead])
    assert bool((new[above] < bias[above]).all() | (bias[above] <= -1).all())  # strictly lowered unless clipped


def test_bias_adaptation_update_rejects_bad_arguments():
    pre, bias, targets, groups = _buffer()
    with pytest.raises(ValueError, match="eps"):
        bias_adaptation_update(bias, pre, targets, groups, 0.1, 0.1, eps=0.05)  # not below every target
    with pytest.raises(ValueError, match="gamma_minus"):
        bias_adaptation_update(bias, pre, targets, groups, 0.0, 0.1, eps=1e-3)
    with pytest.raises(ValueError, match="groups"):
        bias_adaptation_update(bias, pre, targets, groups.double(), 0.1, 0.1, eps=1e-3)
    with pytest.raises(ValueError, match="targets"):
        bias_adaptation_update(bias, pre, targets[:5], groups, 0.1, 0.1, eps=1e-3)
    with pytest.raises(ValueError, match="bias_range"):
        bias_adaptation_update(bias, pre, targets, groups, 0.1, 0.1, eps=1e-3, bias_range=(0.0, -1.0))
    assert torch.equal(group_ids(10, 3), torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2]))


def test_bias_adaptation_keeps_every_group_below_its_ceiling():
    """With the weights frozen, repeated updates bring every neuron's frequency to at most its group's target
    (the targets are ceilings), and none stays dead; the history records the measured frequencies."""
    g = torch.Generator().manual_seed(10)
    mix = SparseMixture.random(16, 8, 0.05, 0.2, g, noise=0.2)  # noise: no point mass at x = 0
    scale = float(mix.sample(4000, g)[0].norm(dim=1).mean())
    sae = SparseAutoencoder(SAEConfig(8, 24, "jump", unit_decoder=True), g)
    targets = group_targets(24, 3, 0.2, 0.02)
    objective = BiasAdaptation(targets, group_ids(24, 3), period=8, gamma_minus=0.05, gamma_plus=0.05, eps=1e-3)
    objective.prepare(sae)
    assert not sae.b_enc.requires_grad and float(sae.b_enc.abs().max()) == 0
    with torch.no_grad():
        for _ in range(8 * 60):
            objective(sae, mix.sample(512, g)[0] / scale)
        _, f = sae(mix.sample(20000, g)[0] / scale)
    freq = firing_frequencies(f)
    assert len(objective.history) == 60
    first, last = objective.history[0], objective.history[-1]
    assert first["above_target"] > 12 and last["above_target"] <= 2, (first, last)
    tolerance = 4 * (targets * (1 - targets) / 4096).sqrt()  # one buffer's sampling noise
    assert bool((freq < targets + tolerance).all()), (freq, targets)
    assert bool((freq > 0).all())  # no neuron left dead
    assert bool((sae.b_enc >= -1).all() and (sae.b_enc <= 0).all())


def test_bias_adaptation_options():
    sae = SparseAutoencoder(SAEConfig(4, 6, "relu"), torch.Generator().manual_seed(1))
    sae.init_decoder_bias(torch.randn(50, 4))
    mean = sae.b_dec.detach().clone()
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
    objective = BiasAdaptation(group_targets(6, 1, 0.1, 0.1), unit_encoder=True, fixed_decoder_bias=True)
    objective.prepare(sae)
    assert not sae.b_dec.requires_grad
    objective(sae, torch.randn(8, 4)).backward()
    assert torch.allclose(sae.W_enc.norm(dim=0), torch.ones(6)) and torch.equal(sae.b_dec, mean)
    with pytest.raises(ValueError, match="sae"):
        BiasAdaptation(group_targets(6, 1, 0.1, 0.1)).prepare(SparseAutoencoder(SAEConfig(4, 6, "topk", k=2)))
    with pytest.raises(ValueError, match="unit_encoder"):
        BiasAdaptation(group_targets(6, 1, 0.1, 0.1), unit_encoder=1)


# --- recovery on an easy synthetic case ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def easy():
    g = torch.Generator().manual_seed(11)
    mix = SparseMixture.random(24, 16, 0.03, 0.1, g)
    return mix, mix.sample(4000, torch.Generator().manual_seed(12))[0]


@pytest.mark.parametrize("method", ["l1", "topk", "ba", "gba"])
def test_every_method_recovers_the_features_of_an_easy_mixture(easy, method):
    mix, x_test = easy
    M = 48
    config, objective = {
        "l1": (SAEConfig(16, M), L1Objective(0.3)),
        "topk": (SAEConfig(16, M, "topk", k=3, unit_decoder=True), TopKObjective(k_aux=8, dead_after=50)),
        "ba": (SAEConfig(16, M, "jump", unit_decoder=True), BiasAdaptation(group_targets(M, 1, 0.03, 0.03))),
        "gba": (SAEConfig(16, M, "jump", unit_decoder=True), BiasAdaptation(group_targets(M, 4, 0.06, 0.015))),
    }[method]
    sae = SparseAutoencoder(config, torch.Generator().manual_seed(13))
    sae.init_decoder_bias(x_test)
    before = evaluate(sae, x_test, mix.features)
    train_sae(sae, objective, lambda s, gen: mix.sample(256, gen)[0],
              TrainConfig(steps=600, lr=3e-3, warmup=50, progress=False))
    after = evaluate(sae, x_test, mix.features)
    assert before["mmcs"] < 0.8 and after["mmcs"] > 0.95, after
    assert after["recovered"] >= 0.9 and after["nmse"] < 0.5, after


# --- metrics --------------------------------------------------------------------------------------------


def test_reconstruction_and_sparsity_metrics_on_hand_made_cases():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    assert normalized_mse(x, x) == 0
    assert normalized_mse(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)
    assert normalized_mse(x, x + 1) == pytest.approx(6 / ((x - x.mean(0)) ** 2).sum().item())
    f = torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 3.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.1, 0.0, 0.0]])
    assert l0(f) == pytest.approx(1.25)
    assert torch.allclose(firing_frequencies(f), torch.tensor([0.25, 1.0, 0.0, 0.0], dtype=torch.float64))
    assert dead_and_dense(firing_frequencies(f), dense_above=0.5) == (2, 1)
    with pytest.raises(ValueError, match="x"):
        normalized_mse(x, x[:2])
    with pytest.raises(ValueError, match="f"):
        l0(torch.ones(3))
    with pytest.raises(ValueError, match="dense_above"):
        dead_and_dense(firing_frequencies(f), dense_above=1.0)


def test_recovery_metrics_on_hand_made_cases():
    truth = torch.eye(3)
    assert mmcs(truth, truth) == pytest.approx(1.0)
    shuffled = 2.5 * truth[[2, 0, 1]]  # order and scale do not matter
    assert mmcs(truth, shuffled) == pytest.approx(1.0) and fraction_recovered(truth, shuffled) == 1.0
    assert mmcs(truth[:1], -truth[:1]) == pytest.approx(-1.0)  # a flipped direction is no match
    learned = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])  # feature 0 exact; 1 and 2 at cos 1/sqrt(2)
    assert torch.allclose(max_cosines(truth, learned), torch.tensor([1.0, 0.5 ** 0.5, 0.5 ** 0.5], dtype=torch.float64))
    assert mmcs(truth, learned) == pytest.approx((1 + 2 * 0.5 ** 0.5) / 3)
    assert fraction_recovered(truth, learned) == pytest.approx(1 / 3)
    assert fraction_recovered(truth, learned, threshold=0.7) == 1.0
    extra = torch.cat([learned, torch.randn(50, 3, generator=torch.Generator().manual_seed(0))])
    assert mmcs(truth, extra) >= mmcs(truth, learned)  # more candidates never lower the max
    with pytest.raises(ValueError, match="true_features"):
        mmcs(truth, torch.ones(2, 4))
    with pytest.raises(ValueError, match="threshold"):
        fraction_recovered(truth, learned, threshold=2.0)


# --- the GPT's residual stream ---------------------------------------------------------------------------


def test_residual_stream_and_splicing_match_the_gpt():
    gpt = tiny_gpt(0, n_layer=3)
    idx = torch.randint(0, 13, (2, 20), generator=torch.Generator().manual_seed(14))
    logits, hidden = gpt(idx, return_hidden=True)
    for layer in range(4):
        assert torch.allclose(residual_stream(gpt, idx, layer), hidden[layer], atol=1e-5)
        assert torch.allclose(spliced_logits(gpt, idx, layer, lambda x: x), logits, atol=1e-4)
    zeroed = spliced_logits(gpt, idx, 1, torch.zeros_like)
    assert not torch.allclose(zeroed, logits, atol=1e-2)
    with pytest.raises(ValueError, match="layer"):
        residual_stream(gpt, idx, 4)


def test_collect_activations_takes_every_position_of_random_windows():
    gpt = tiny_gpt(1, n_layer=2)
    ids = torch.randint(0, 13, (500,), generator=torch.Generator().manual_seed(15))
    acts = collect_activations(gpt, ids, 1, n_windows=5, generator=torch.Generator().manual_seed(16), window=32,
                               batch_size=2)
    assert acts.shape == (5 * 32, 16)
    starts = torch.randint(0, 500 - 32, (5,), generator=torch.Generator().manual_seed(16))
    expected = residual_stream(gpt, ids[starts[:, None] + torch.arange(32)], 1).reshape(-1, 16)
    assert torch.allclose(acts, expected, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        collect_activations(gpt, ids, 1, 2, torch.Generator(), window=65)
    with pytest.raises(ValueError, match="ids"):
        collect_activations(gpt, ids[None], 1, 2, torch.Generator())


def test_firing_f1_and_matching_latent_on_a_hand_made_case():
    f = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 2.0], [1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    mask = torch.tensor([True, False, True, False])
    # latent 0 fires exactly on the pattern; 1 everywhere (precision 1/2); 2 never; 3 once, off the pattern
    assert torch.allclose(firing_f1(f, mask), torch.tensor([1.0, 2 * 2 / (4 + 2), 0.0, 0.0], dtype=torch.float64))
    assert matching_latent(f, mask) == (0, 1.0)
    assert matching_latent(f, mask.long())[0] == 0
    with pytest.raises(ValueError, match="mask"):
        firing_f1(f, mask[:3])


# --- the committed checkpoint and its recipe --------------------------------------------------------------


def test_committed_sae_checkpoint_is_small_documented_and_good():
    from arlib.checkpoints import CHECKPOINT_DIR
    from arlib.data import SOURCES
    from arlib.interp.recipes import SAE_RECIPES, load_sae

    path = CHECKPOINT_DIR / "shakespeare-sae.safetensors"
    assert path.stat().st_size < 0.75 * 2**20, f"{path.stat().st_size / 2**20:.2f} MB"
    sae, meta = load_sae("shakespeare-sae")
    recipe = SAE_RECIPES["shakespeare-sae"]
    assert meta["config"] == recipe["sae"].to_dict() and meta["layer"] == recipe["layer"]
    assert meta["train"]["steps"] == recipe["train"].steps  # the full recipe, not a shortened run
    assert meta["command"] == "python -m arlib.recipes shakespeare-sae" and meta["stored_dtype"] == "int8"
    assert meta["data"]["sha256"] == SOURCES["shakespeare"].sha256 and meta["wall_seconds"] > 0
    assert meta["parameters"] == sum(p.numel() for p in sae.parameters())
    m = meta["metrics"]
    # measured on the GPU-trained target: NMSE 0.027, +0.011 nats, 99.7 % of the loss gap kept
    assert m["nmse"] < 0.04 and m["l0"] <= sae.config.k and 0 < m["loss_increase"] < 0.05
    assert abs(m["nmse_float32"] - m["nmse"]) < 2e-3  # int8 storage loses little (the metrics are the stored SAE's)
    assert not sae.training and torch.allclose(sae.decoder.norm(dim=1), torch.ones(sae.config.n_latents), atol=1e-2)


@pytest.mark.slow
def test_sae_recipe_runs_and_its_checkpoint_loads(tmp_path):
    """`python -m arlib.recipes shakespeare-sae`, shortened: 3 steps on 4 windows, saved and loaded back."""
    from arlib.interp.recipes import load_sae, run_sae_recipe

    meta = run_sae_recipe("shakespeare-sae", steps=3, out=str(tmp_path), progress=False, eval_chars=512, windows=4)
    assert meta["command"] == "python -m arlib.recipes shakespeare-sae --steps 3" and meta["train"]["steps"] == 3
    assert meta["data"]["train_activations"] == 4 * 256 and meta["data"]["val_positions_scored"] == 512
    assert set(meta["metrics"]) >= {"nmse", "l0", "dead", "dense", "clean_nll", "sae_nll", "loss_increase"}
    sae, loaded = load_sae("shakespeare-sae", directory=tmp_path)
    # the sidecar is the recipe's meta completed by the saver with the schema version and the weights' hash
    from arlib.checkpoints import SCHEMA_VERSION, sha256_of
    assert loaded["schema"] == SCHEMA_VERSION
    assert loaded["sha256"] == sha256_of(tmp_path / "shakespeare-sae.safetensors")
    assert {k: v for k, v in loaded.items() if k not in ("schema", "sha256")} == json.loads(json.dumps(meta))
    assert sae.config.k == 32
    assert (tmp_path / "shakespeare-sae.safetensors").stat().st_size < 0.75 * 2**20


def test_sae_on_a_device_matches_the_cpu(device):
    """A TopK SAE on the device encodes and reconstructs as on the CPU, trains there (its batches made on
    the device), keeps its unit decoder rows, and splices into a GPT on the device with the CPU's logits."""
    import copy

    g = torch.Generator().manual_seed(6)
    sae = SparseAutoencoder(SAEConfig(16, 24, "topk", k=3, unit_decoder=True), g)
    gpt = tiny_gpt(2, n_layer=2, vocab_size=11, block_size=16)
    on_sae, on_gpt = copy.deepcopy(sae).to(device), copy.deepcopy(gpt).to(device)
    x = torch.randn(40, 16, generator=g)
    x_hat, f = sae(x)
    x_hat_d, f_d = on_sae(x.to(device))
    torch.testing.assert_close(f_d.cpu(), f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x_hat_d.cpu(), x_hat, rtol=1e-4, atol=1e-5)
    idx = torch.randint(0, 11, (2, 16), generator=g)
    spliced = spliced_logits(gpt, idx, 1, lambda h: sae(h)[0])
    spliced_d = spliced_logits(on_gpt, idx.to(device), 1, lambda h: on_sae(h)[0])
    torch.testing.assert_close(spliced_d.cpu(), spliced, rtol=1e-4, atol=1e-4)
    acts = collect_activations(on_gpt, torch.randint(0, 11, (64,), generator=g), 1, 4, torch.Generator().manual_seed(0))
    assert acts.device.type == device.type and acts.shape == (64, 16)
    history = train_sae(on_sae, TopKObjective(k_aux=4, dead_after=5), lambda s, gen: acts,
                        TrainConfig(steps=8, lr=1e-2, warmup=0, progress=False))
    assert len(history["loss"]) == 8 and history["loss"][-1] < history["loss"][0]
    norms = on_sae.decoder.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)


# --- comparing methods -------------------------------------------------------------------------------------


def test_latent_matches_counts_duplicates_and_unmatched():
    from arlib.interp.compare import latent_matches

    truth = torch.eye(4, 6)  # (4, 6)
    mix = (truth[0] + truth[1]) / 2 ** 0.5  # a mixture: cosine 0.707 with two features
    noise = torch.tensor([0.0, 0, 0, 0, 1.0, 0])  # orthogonal to every feature
    decoder = torch.stack([truth[0], 2 * truth[0], truth[2], mix, noise, truth[3]])  # (6, 6)
    live = torch.tensor([True, True, True, True, True, False])
    m = latent_matches(truth, decoder, live)
    assert m["matched"] == 3 and m["features_found"] == 2 and m["duplicates"] == 1
    assert m["unmatched"] == 1  # the noise direction; the mixture's 0.707 is neither matched nor unmatched
    assert torch.allclose(m["best"], torch.tensor([1, 1, 1, 2 ** -0.5, 0], dtype=torch.float64))


def test_cross_seed_consistency_on_hand_made_dictionaries():
    from arlib.interp.compare import cross_seed_consistency

    a = torch.eye(4)
    b = torch.stack([torch.eye(4)[0], torch.eye(4)[1], (torch.eye(4)[2] + torch.eye(4)[3]) / 2 ** 0.5,
                     -torch.eye(4)[3]])
    live = torch.ones(4, dtype=torch.bool)
    c = cross_seed_consistency([a, b], [live, live])
    # a -> b: rows 0, 1 found (cos 1), rows 2, 3 best 0.707: 1/2; b -> a: rows 0, 1 found, row 2 0.707, row 3 0: 1/2
    assert c["pairs"] == 2 and c["shared_fraction"] == pytest.approx(0.5)
    assert c["mean_best_cosine"] == pytest.approx(((2 + 2 * 2 ** -0.5) / 4 + (2 + 2 ** -0.5 + 0) / 4) / 2)
    assert cross_seed_consistency([a, a], [live, live])["shared_fraction"] == 1.0


def test_fit_method_trains_every_method_at_its_knob():
    from arlib.interp.compare import METHODS, fit_method, summarize

    g = torch.Generator().manual_seed(11)
    mix = SparseMixture.random(24, 16, 0.03, 0.1, g)
    x = mix.sample(2000, torch.Generator().manual_seed(12))[0]
    knobs = {"L1": 0.3, "TopK": 3, "JumpReLU": 0.01, "BA": 0.05, "GBA": 0.1}
    config = TrainConfig(steps=60, lr=3e-3, warmup=10, progress=False)
    for name, knob in knobs.items():
        sae, objective = fit_method(name, knob, 16, 48, lambda s, gen: mix.sample(256, gen)[0], x, config, seed=1)
        r = summarize(sae, x, mix.features)
        assert sae.config.activation == {"L1": "relu", "TopK": "topk", "JumpReLU": "jumprelu"}.get(name, "jump")
        assert 0 < r["l0"] <= 48 and r["nmse"] < 2 and {"duplicates", "unmatched"} <= set(r), (name, r)
        assert (name in ("BA", "GBA")) == hasattr(objective, "history")
    sae2, _ = fit_method("TopK", 3, 16, 48, lambda s, gen: mix.sample(256, gen)[0], x, config, seed=1)
    sae3, _ = fit_method("TopK", 3, 16, 48, lambda s, gen: mix.sample(256, gen)[0], x, config, seed=2)
    assert torch.equal(sae2.W_dec, fit_method("TopK", 3, 16, 48, lambda s, gen: mix.sample(256, gen)[0], x, config,
                                              seed=1)[0].W_dec)  # seeded
    assert not torch.equal(sae2.W_dec, sae3.W_dec)
    assert set(METHODS) == set(knobs)
