"""Tests of the phase change and the geometry of superposition (Elhage et al. 2022) in
arlib.interp.superposition: the regime classifier on hand-built embeddings, trained n = 2, m = 1 models at the
two ends of the sparsity axis, the exact expected loss of the antipodal configuration, the theoretical phase
diagram, and the dimensionality measures on hand-built embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from arlib.interp.superposition import (
    DEDICATED,
    NOT_REPRESENTED,
    REGIMES,
    SUPERPOSITION,
    PhaseDiagram,
    _antipodal_loss,
    classify_regime,
    dimensions_per_feature,
    feature_dimensionality,
    phase_diagram,
    theoretical_phase_diagram,
)


def pentagon() -> torch.Tensor:
    angles = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5
    return torch.stack([angles.cos(), angles.sin()])  # (2, 5): five unit features in a plane


# --- the regime classifier -------------------------------------------------------------------------------


def test_classifier_on_hand_built_two_in_one():
    W = torch.tensor([[[1.0, 0.0]],    # the extra feature (last) dropped
                      [[0.9, -1.1]],   # an antipodal pair
                      [[0.02, 1.0]]])  # the extra feature has the dimension, the first is (nearly) dropped
    assert classify_regime(W).tolist() == [NOT_REPRESENTED, SUPERPOSITION, DEDICATED]
    assert [REGIMES[i] for i in classify_regime(W).tolist()] == ["not represented", "superposition", "dedicated"]
    assert classify_regime(W, extra=0).tolist() == [DEDICATED, SUPERPOSITION, NOT_REPRESENTED]


def test_classifier_in_two_dimensions_and_at_its_thresholds():
    dedicated = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 3 features in 2 dims: extra orthogonal
    shared = torch.tensor([[1.0, 0.0, -0.7], [0.0, 1.0, -0.7]])  # extra between the two, pointing away
    assert classify_regime(torch.stack([dedicated, shared])).tolist() == [DEDICATED, SUPERPOSITION]
    # the norm threshold: 0.45 is dropped, 0.55 kept; the interference threshold: a partner of norm 0.45
    # on the same line gives 0.2025 (dedicated), one of norm 0.55 gives 0.3025 (superposition)
    W = torch.tensor([[[1.0, 0.45]], [[1.0, 0.55]], [[0.45, -1.0]], [[0.55, -1.0]]])
    assert classify_regime(W).tolist() == [NOT_REPRESENTED, SUPERPOSITION, DEDICATED, SUPERPOSITION]
    with pytest.raises(ValueError, match="extra"):
        classify_regime(W, extra=2)
    with pytest.raises(ValueError, match="W"):
        classify_regime(torch.ones(1, 1))  # one feature: no extra and others


# --- trained models at the two ends of the sparsity axis ---------------------------------------------------


def test_two_in_one_dense_drops_a_feature_and_sparse_makes_an_antipodal_pair():
    """n = 2, m = 1. Dense features: the less important one is dropped (importance 0.7 or 1.4 against 1); at
    equal importance the optimum is degenerate (any unit direction, as in PCA with equal variances), and the
    trained loss is that of dropping one feature, Var(x) = 1/12. Density 0.01, equal importance: both kept,
    with opposite signs."""
    d = phase_diagram([1.0, 0.01], [0.7, 1.0, 1.4], steps=1000, batch_size=512, restarts=3, seed=0)
    assert d.regimes.shape == (3, 2) and d.W.shape == (3, 2, 1, 2) and d.losses.shape == (3, 2)
    assert int(d.regimes[0, 0]) == NOT_REPRESENTED and int(d.regimes[2, 0]) == DEDICATED
    for row, kept in ((0, 0), (2, 1)):
        w = d.W[row, 0, 0].abs()  # (2,): the two features' weights on the one dimension
        assert float(w[kept]) > 0.9 and float(w[1 - kept]) < 0.2  # the dropped one: well under the 0.5 threshold
    assert abs(float(d.losses[1, 0]) - 1 / 12) < 0.005
    sparse = d.W[1, 1, 0]
    assert int(d.regimes[1, 1]) == SUPERPOSITION
    assert float(sparse[0] * sparse[1]) < -0.8 and bool((sparse.abs() > 0.9).all())


# --- the theory ----------------------------------------------------------------------------------------------


def test_antipodal_loss_matches_brute_force_integration():
    """The closed-form pieces of the expected loss against a brute-force midpoint sum over both features."""
    k = 400
    t = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    x1, x2 = torch.meshgrid(t, t, indexing="ij")
    for params, p, r in [((0.1, -0.2, -0.1, 0.05), 0.3, 2.0), ((0.3, 0.1, 0.2, -0.3), 0.05, 0.5),
                         ((0.0, 0.0, 0.0, 0.0), 1.0, 1.0)]:
        u, v, b1, b2 = math.exp(params[0]), math.exp(params[1]), params[2], params[3]

        def loss(a, b, u=u, v=v, b1=b1, b2=b2, r=r):  # a, b: the two features' values (0 when off)
            h = u * a - v * b
            return (a - torch.relu(u * h + b1)) ** 2 + r * (b - torch.relu(-v * h + b2)) ** 2

        zero = torch.zeros_like(x1)
        brute = ((1 - p) ** 2 * loss(zero, zero).mean() + p * (1 - p) * (loss(x1, zero).mean() + loss(zero, x2).mean())
                 + p * p * loss(x1, x2).mean())
        exact = _antipodal_loss(torch.tensor(params, dtype=torch.float64), torch.tensor(p, dtype=torch.float64),
                                torch.tensor(r, dtype=torch.float64), t)
        assert abs(float(exact) - float(brute)) < 1e-4 * max(1.0, float(brute)), (params, p, r)
    # W = [1, -1], b = 0, dense: each output is relu(x_i - x_j); the error is min(x1, x2)^2, mean 1/6 each
    exact = _antipodal_loss(torch.zeros(4, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64),
                            torch.tensor(1.0, dtype=torch.float64), t)
    assert abs(float(exact) - 1 / 3) < 1e-5


def test_theoretical_diagram_has_the_three_phases_where_expected():
    densities = torch.tensor([1.0, 0.3, 0.03, 0.01])
    importances = torch.tensor([0.2, 0.8, 1.25, 5.0])
    regimes, losses = theoretical_phase_diagram(densities, importances)
    assert regimes.shape == (4, 4) and losses.shape == (3, 4, 4)
    # dense: no superposition; the more important feature keeps the dimension
    assert regimes[:, 0].tolist() == [NOT_REPRESENTED, NOT_REPRESENTED, DEDICATED, DEDICATED]
    assert bool((regimes[:, 2:] == SUPERPOSITION).all())  # sparse: superposition at every importance here
    p = densities[None]
    var = p / 3 - p * p / 4
    assert torch.allclose(losses[0], importances[:, None] * var) and torch.allclose(losses[2], var.expand(4, 4))
    # superposition's advantage grows with sparsity
    ratio = losses[1] / torch.minimum(losses[0], losses[2])
    assert bool((ratio[:, 1:].diff(dim=1) < 0).all()) and float(ratio[:, -1].max()) < 0.2
    with pytest.raises(ValueError, match="densities"):
        theoretical_phase_diagram([0.0, 0.5], [1.0])


# --- dimensionality ----------------------------------------------------------------------------------------


def test_dimensionality_of_hand_built_embeddings():
    assert torch.allclose(feature_dimensionality(torch.eye(3)), torch.ones(3))
    antipodal = torch.tensor([[1.0, -1.0]])
    assert torch.allclose(feature_dimensionality(antipodal), torch.full((2,), 0.5))
    assert torch.allclose(feature_dimensionality(pentagon()), torch.full((5,), 0.4, dtype=torch.float64))
    # dimensions per feature, m / ||W||_F^2: 1 orthogonal, 1/2 an antipodal pair, 2/5 a pentagon,
    # and the same numbers for a batch of models; 3 of 5 features kept in 3 dims: 1
    W = torch.zeros(3, 3, 5)
    W[0, :, :3] = torch.eye(3)
    assert torch.allclose(dimensions_per_feature(W[:1]), torch.ones(1))
    assert abs(float(dimensions_per_feature(antipodal)) - 0.5) < 1e-6
    assert abs(float(dimensions_per_feature(pentagon())) - 0.4) < 1e-9
    assert math.isinf(float(dimensions_per_feature(torch.zeros(2, 4))))
    with pytest.raises(ValueError, match="W"):
        dimensions_per_feature(torch.ones(3))


def test_phase_diagram_record_checks_its_shapes():
    ok = dict(densities=torch.ones(2), importances=torch.ones(3), regimes=torch.zeros(3, 2, dtype=torch.long),
              extra_norm=torch.ones(3, 2), interference=torch.ones(3, 2), W=torch.ones(3, 2, 1, 2),
              losses=torch.ones(3, 2))
    PhaseDiagram(**ok)
    with pytest.raises(ValueError, match="regimes"):
        PhaseDiagram(**{**ok, "regimes": torch.zeros(2, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="W"):
        PhaseDiagram(**{**ok, "W": torch.ones(2, 2, 1, 2)})
