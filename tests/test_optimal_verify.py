"""The optimal k-draft verifier (Khisti et al.'s canonical decomposition, solved by an LP over multisets):
exact in law, and its acceptance is the LP optimum alpha*_k."""

import numpy as np
import pytest
import torch
from hostile import rejects
from scipy import stats

from arlib.decoding.optimal_verify import optimal_verifier
from arlib.decoding.spectr import kseq_acceptance, optimal_acceptance, optimal_acceptance_lp


def dirichlet(V, concentration, generator):
    return torch.distributions.Dirichlet(torch.full((V,), concentration, dtype=torch.float64)).sample()


def random_pairs(n, seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        V, c = int(rng.integers(2, 7)), float(rng.choice([0.3, 1.0, 3.0]))
        yield dirichlet(V, c, None), dirichlet(V, c, None)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_law_is_the_target_and_acceptance_is_the_lp_optimum(k):
    for p, q in random_pairs(25, seed=k):
        verifier = optimal_verifier(p, q, k)
        assert torch.allclose(verifier.output_law(), p, atol=1e-12)  # enumeration over the multisets
        assert abs(verifier.acceptance - optimal_acceptance_lp(p, q, k)) < 1e-9
        assert verifier.acceptance >= float(kseq_acceptance(p, q, k)) - 1e-9  # never below K-SEQ
        assert abs(verifier.prob.sum() - 1) < 1e-12 and np.allclose(verifier.weights.sum(1), 1)


def test_k2_is_the_closed_form_and_one_draft_is_one_minus_tv():
    for p, q in random_pairs(30, seed=7):
        assert abs(optimal_verifier(p, q, 1).acceptance - float(torch.minimum(p, q).sum())) < 1e-9
        # Khisti et al.'s explicit k = 2 optimum: min over S of p(S) + q(S^c)^2 + 2 q(S) q(S^c) = p(S) + 1 - q(S)^2
        V = p.shape[0]
        subsets = [[t for t in range(V) if mask >> t & 1] for mask in range(2 ** V)]
        closed = min(float(p[s].sum()) + 1 - float(q[s].sum()) ** 2 for s in subsets)
        assert abs(optimal_verifier(p, q, 2).acceptance - closed) < 1e-9


def test_zero_probability_drafts_are_left_out_of_the_lp():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64)
    verifier = optimal_verifier(p, q, 2)
    assert len(verifier.multisets) == 3  # {0,0}, {0,1}, {1,1}
    assert torch.allclose(verifier.output_law(), p, atol=1e-12)
    rejects(verifier.select, torch.tensor([[0, 2]]), arg="drafts")


def _chi_square_p(sample, law):
    counts = np.bincount(sample, minlength=len(law))
    return stats.chisquare(counts, law * counts.sum()).pvalue


def test_sampled_outputs_follow_the_target_and_a_broken_verifier_fails():
    torch.manual_seed(3)
    p = torch.tensor([0.05, 0.45, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.4, 0.1, 0.2, 0.3], dtype=torch.float64)
    verifier = optimal_verifier(p, q, 2)
    generator = torch.Generator().manual_seed(0)
    drafts = torch.multinomial(q, 2 * 40_000, replacement=True, generator=generator).view(-1, 2)
    y, accepted = verifier.select(drafts, generator)
    assert _chi_square_p(y.numpy(), p.numpy()) > 1e-3
    rate = float(accepted.double().mean())
    assert abs(rate - verifier.acceptance) < 4 * (rate * (1 - rate) / len(y)) ** 0.5
    # broken: step 2 tests the selected token against the draft q instead of its own law r
    broken = verifier.__class__(**{**verifier.__dict__, "r": q.clone()})
    y_broken, _ = broken.select(drafts, generator)
    assert _chi_square_p(y_broken.numpy(), p.numpy()) < 1e-6


def test_real_vocabulary_at_k2_reaches_the_optimum():
    torch.manual_seed(11)
    p, q = dirichlet(84, 0.2, None), dirichlet(84, 0.2, None)
    verifier = optimal_verifier(p, q, 2)
    assert abs(verifier.acceptance - float(optimal_acceptance(p, q, 2))) < 1e-7
    assert torch.allclose(verifier.output_law(), p, atol=1e-10)


def test_output_law_sees_a_broken_second_step():
    p = torch.tensor([0.05, 0.45, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.4, 0.1, 0.2, 0.3], dtype=torch.float64)
    verifier = optimal_verifier(p, q, 2)
    broken = verifier.__class__(**{**verifier.__dict__, "r": q.clone()})
    assert (broken.output_law() - p).abs().max() > 0.01
