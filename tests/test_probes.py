"""Linear probes (arlib.text.probes)."""

from __future__ import annotations

import pytest
import torch

from arlib.text.probes import group_means, logistic_probe


def test_a_logistic_probe_reads_a_linearly_coded_label_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2000,), generator=g)
    centers = torch.randn(4, 6, generator=g) * 3
    informative = centers[labels] + torch.randn(2000, 6, generator=g)
    noise = torch.randn(2000, 6, generator=g)
    fit, test = torch.arange(1500), torch.arange(1500, 2000)
    good = logistic_probe(informative, labels, fit, test, 4)
    bad = logistic_probe(noise, labels, fit, test, 4)
    assert good["accuracy"] > 0.9 and good["nll"] < 0.3
    assert bad["accuracy"] < 0.35 and abs(bad["nll"] - torch.log(torch.tensor(4.0)).item()) < 0.05  # chance
    assert len(good["nll_rows"]) == 500 and abs(good["nll_rows"].mean().item() - good["nll"]) < 1e-12


def test_group_means_and_bad_input():
    assert group_means(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([7, 2, 7])).tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="labels"):
        logistic_probe(torch.zeros(20, 2), torch.full((20,), 5), torch.arange(15), torch.arange(15, 20), 4)
    with pytest.raises(ValueError, match="features"):
        logistic_probe(torch.zeros(20), torch.zeros(20, dtype=torch.long), torch.arange(15), torch.arange(15, 20), 2)
