"""Chapter 1's ablation ladder (arlib.text.ladder): each rung's model, the bootstrap, the committed results."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from arlib.text.ladder import (
    LADDER_SETTINGS,
    RUNGS,
    SIDE_RUNGS,
    LadderSettings,
    NeuralBigram,
    WindowMLP,
    attention_logit_spread,
    block_means,
    bootstrap_interval,
    build_rung,
    load_ladder,
    run_ladder,
)

SMALL = LadderSettings(n_layer=2, n_head=2, n_embd=16, block_size=16, window=3, mlp_hidden=32, steps=5, batch_size=4)


@pytest.mark.parametrize("rung", RUNGS)
def test_every_rung_maps_ids_to_logits_causally(rung):
    torch.manual_seed(0)
    model = build_rung(rung, 11, SMALL).eval()
    x = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 12, 11)
        changed = x.clone()
        changed[:, 7:] = (changed[:, 7:] + 1) % 11  # alter the future of position 6
        assert torch.allclose(model(changed)[:, :7], logits[:, :7], atol=1e-6)  # no rung looks ahead


def test_the_bigram_reads_one_character_and_the_window_mlp_n():
    x = torch.randint(0, 9, (1, 10))
    bigram = NeuralBigram(9, 16)
    with torch.no_grad():
        bigram.table.normal_()
    assert torch.equal(bigram(x)[0, 4], bigram.table[x[0, 4]])
    mlp = WindowMLP(9, 16, window=3, n_embd=4, hidden=8).eval()
    changed = x.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 9  # x_5 is outside the window of t = 8 (x_6, x_7, x_8) ...
    with torch.no_grad():
        assert torch.allclose(mlp(changed)[0, 8], mlp(x)[0, 8])
        assert not torch.allclose(mlp(changed)[0, 7], mlp(x)[0, 7])  # ... and inside the window of t = 7


def test_rungs_three_to_six_share_their_size_and_add_one_idea_each():
    params = {r: sum(p.numel() for p in build_rung(r, 84).parameters()) for r in RUNGS}
    assert params["one-head"] < params["heads+mlp"]  # the MLPs
    assert 0 < params["residual+ln"] - params["heads+mlp"] <= 4 * LADDER_SETTINGS.n_layer * LADDER_SETTINGS.n_embd
    assert abs(params["gpt"] / params["residual+ln"] - 1) < 0.05  # the GPT ties its output matrix


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rung"):
        build_rung("lstm", 10)
    with pytest.raises(ValueError, match="vocab_size"):
        build_rung("gpt", 0)
    with pytest.raises(ValueError, match="d_head"):
        attention_logit_spread(0)
    with pytest.raises(ValueError, match="blocks_b"):
        bootstrap_interval([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="values"):
        block_means(torch.ones(10), block=20)


def test_scaling_by_sqrt_d_head_keeps_the_logits_unit_variance():
    for d in (8, 128):
        spread = attention_logit_spread(d, trials=4000)
        assert abs(spread["raw_variance"] / d - 1) < 0.08 and abs(spread["scaled_variance"] - 1) < 0.08
    assert attention_logit_spread(256)["raw_max_weight"] > 0.8 > 0.2 > attention_logit_spread(256)["scaled_max_weight"]


def test_bootstrap_interval_covers_the_mean_and_narrows_with_data():
    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(30, generator=g) + 1, torch.randn(3000, generator=g) + 1
    mean, lo, hi = bootstrap_interval(small)
    assert lo < mean < hi and lo < 1 < hi
    _, lo_l, hi_l = bootstrap_interval(large)
    assert hi_l - lo_l < (hi - lo) / 5  # about sqrt(100) = 10 times narrower
    diff, lo_d, hi_d = bootstrap_interval(large + 0.5, large)  # a paired shift is known exactly
    assert abs(diff - 0.5) < 1e-6 and hi_d - lo_d < 1e-6
    assert block_means(torch.arange(10.0), block=5) == [2.0, 7.0]


@pytest.mark.slow
def test_run_ladder_writes_results_that_load(tmp_path):
    out = tmp_path / "ladder.json"
    results = run_ladder(str(out), seeds=(0,), steps=3, eval_chars=4000, progress=False, settings=SMALL)
    loaded = load_ladder(out)
    assert loaded["rungs"].keys() == set(RUNGS) | set(SIDE_RUNGS) and loaded["settings"]["steps"] == 3
    for runs in loaded["rungs"].values():
        assert runs[0]["report_nll"] > 0 and len(runs[0]["report_blocks"]) == 4
    assert results["command"].endswith("--steps 3")


def test_the_committed_ladder_is_the_full_recipe():
    results = load_ladder()
    assert results["settings"] == asdict(LADDER_SETTINGS) and len(results["seeds"]) >= 3
    assert results["data"]["report_chars"] > 200_000
    assert set(results["rungs"]) == set(RUNGS) | set(SIDE_RUNGS)
    for rung, runs in results["rungs"].items():
        assert len(runs) == len(results["seeds"]) and all(len(r["report_blocks"]) >= 200 for r in runs)
        assert all(len(r["curve_per_100_steps"]) == LADDER_SETTINGS.steps // 100 for r in runs), rung
