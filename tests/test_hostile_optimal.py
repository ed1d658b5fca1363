"""Hostile inputs for the optimal k-draft verifier (arlib.decoding.optimal_verify)."""

import torch
from hostile import rejects

from arlib.decoding.optimal_verify import optimal_verifier

COVERED = {"arlib.decoding.optimal_verify.optimal_verifier", "arlib.decoding.optimal_verify.OptimalVerifier"}


def dirichlet(V):
    return torch.distributions.Dirichlet(torch.ones(V, dtype=torch.float64)).sample()


def test_bad_inputs_are_named():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    rejects(optimal_verifier, p, p, 0, arg="k")
    rejects(optimal_verifier, p, torch.tensor([0.9, 0.3], dtype=torch.float64), 2, arg="q")
    rejects(optimal_verifier, torch.tensor([-0.5, 1.5], dtype=torch.float64), p, 2, arg="p")
    rejects(optimal_verifier, p[None].repeat(2, 1), p[None].repeat(2, 1), 2, arg="p")
    rejects(optimal_verifier, dirichlet(200), dirichlet(200), 4, arg="k")
    verifier = optimal_verifier(p, p, 2)
    rejects(verifier.select, torch.tensor([[0, 1, 1]]), arg="drafts")
    rejects(verifier.select, torch.tensor([[0, 5]]), arg="drafts")
    rejects(verifier.select, torch.tensor([0.0, 1.0]), arg="drafts")
