"""Tests of arlib.decoding.draft_heads (early exit, Medusa and Hydra drafters), GPT.trunk, the cost measurements of
arlib.decoding.speculative and arlib.env.check_timing."""

import itertools

import pytest
import torch
from scipy import stats
from tiny_models import tiny_gpt

import arlib
from arlib.checkpoints import CheckpointError, save_checkpoint
from arlib.decoding.draft_heads import (
    DraftHeads,
    EarlyExitModel,
    ExitHeads,
    HeadDrafter,
    HydraHeads,
    MedusaHeads,
    distillation_losses,
)
from arlib.decoding.drafters import ModelDrafter, NGramDrafter, SamplingOptions
from arlib.decoding.speculative import draft_cost, speculative_generate, step_costs
from arlib.env import TIMING_NOTICE, check_timing
from arlib.text.gpt import GPT
from arlib.text.sampling import generate

PLAIN = SamplingOptions()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny(seed=0, n_layer=3, vocab_size=11, std=0.5) -> GPT:
    return tiny_gpt(seed, n_layer, vocab_size, block_size=48, std=std)


@pytest.fixture(scope="module")
def target():
    return tiny()


@pytest.fixture(scope="module")
def heads(target):
    h = DraftHeads(target, n_heads=3)
    h.copy_from(target)
    g = gen(1)
    with torch.no_grad():  # perturb every head so that the drafts differ from the target's own
        for w in h.parameters():
            w.add_(torch.randn(w.shape, generator=g) * 0.3)
    return h.eval()


def test_trunk_matches_forward_and_caches_the_first_layers(target):
    x = torch.randint(0, 11, (2, 9), generator=gen(2))
    logits, hidden = target(x, return_hidden=True)
    trunk = target.trunk(x)
    assert len(trunk) == 4 and all(torch.equal(a, b) for a, b in zip(trunk, hidden))
    assert torch.allclose(target.trunk(x, n_layers=1)[-1], hidden[1])
    cache = EarlyExitModel(target, 2, ExitHeads(3, 16, 11)).new_cache(2)  # holds 2 layers
    part = target.trunk(x[:, :5], cache, n_layers=2)[-1]
    rest = target.trunk(x[:, 5:], cache, n_layers=2)[-1]
    assert cache.length == 9
    assert torch.allclose(torch.cat([part, rest], dim=1), hidden[2], atol=1e-5)
    with pytest.raises(ValueError, match="n_layers"):
        target.trunk(x, n_layers=4)
    with pytest.raises(ValueError, match="cache"):
        target.trunk(x, cache, n_layers=3)


def test_heads_start_as_the_targets_logit_lens(target):
    heads = DraftHeads(target, n_heads=2)
    heads.copy_from(target)
    x = torch.randint(0, 11, (1, 7), generator=gen(3))
    logits, hidden = target(x, return_hidden=True)
    with torch.no_grad():
        lens = torch.nn.functional.linear(target.ln_f(hidden[2]), target.wte.weight)  # the logit lens at layer 2
        assert torch.allclose(heads.exits(2, hidden[2]), lens, atol=1e-5)
        # zero-initialized residual blocks: a fresh Medusa head reads h exactly as the target does
        assert torch.allclose(heads.medusa(hidden[-1])[..., 0, :], logits, atol=1e-5)
        following = torch.stack([x, x], dim=-1)  # (1, 7, 2)
        assert torch.allclose(heads.hydra(hidden[-1], following)[..., 1, :], logits, atol=1e-5)


def test_early_exit_model_is_the_truncated_target(target, heads):
    model = EarlyExitModel(target, 2, heads.exits)
    x = torch.randint(0, 11, (1, 8), generator=gen(4))
    with torch.no_grad():
        expected = heads.exits(2, target(x, return_hidden=True)[1][2])
        assert torch.allclose(model(x), expected, atol=1e-5)
    assert all(name.startswith("head.") for name, _ in model.named_parameters())  # the blocks stay the target's
    with pytest.raises(ValueError, match="exit_layer"):
        EarlyExitModel(target, 3, heads.exits)
    with pytest.raises(ValueError, match="exits"):
        EarlyExitModel(target, 1, ExitHeads(2, 16, 11))


@pytest.mark.parametrize("family", ["medusa", "hydra", "exit"])
@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_speculative_with_heads_equals_greedy_decoding(target, heads, family, gamma):
    drafter = ModelDrafter(EarlyExitModel(target, 2, heads.exits)) if family == "exit" \
        else HeadDrafter(getattr(heads, family))
    x = torch.randint(0, 11, (6,), generator=gen(5))
    out, s = speculative_generate(target, drafter, x, 30, gamma, greedy=True)
    assert torch.equal(out, generate(target, x, 30, greedy=True))
    assert max(s.drafted) <= min(gamma, 3 if family != "exit" else gamma)


def test_head_drafter_reads_the_state_that_produced_the_last_token(target, heads):
    """The hidden state handed over after each step is the target's h at the second-to-last position."""
    seen = []

    class Spy(HeadDrafter):
        def propose(self, seq, gamma, options=PLAIN, generator=None):
            seen.append((seq.clone(), None if self.h is None else self.h.clone()))
            return super().propose(seq, gamma, options, generator)

    x = torch.randint(0, 11, (5,), generator=gen(6))
    speculative_generate(target, Spy(heads.hydra), x, 20, 3, generator=gen(7))
    for seq, h in seen:
        with torch.no_grad():
            expected = target(seq[:, :-1], return_hidden=True)[1][-1][:, -1]
        assert torch.allclose(h, expected, atol=1e-4)


def test_one_token_prompt_starts_with_a_plain_step(target, heads):
    out, s = speculative_generate(target, HeadDrafter(heads.medusa), torch.tensor([3]), 10, 3, greedy=True)
    assert s.drafted[0] == 0 and torch.equal(out, generate(target, torch.tensor([3]), 10, greedy=True))


@pytest.mark.parametrize("family", ["medusa", "hydra"])
def test_speculative_with_heads_is_lossless(family):
    """Chi-square of whole 3-token continuations against the target's law, enumerated."""
    Vs = 4
    target = tiny(8, n_layer=2, vocab_size=Vs, std=0.4)
    heads = DraftHeads(target, n_heads=2)
    g = gen(9)
    with torch.no_grad():
        for w in heads.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * 0.4)
    x = torch.tensor([1, 2, 0])
    conts = torch.tensor(list(itertools.product(range(Vs), repeat=3)))  # (64, 3)
    with torch.no_grad():
        probs = target(torch.cat([x.expand(len(conts), -1), conts], dim=1)[:, :-1])[:, 2:].softmax(-1)
    law = probs.gather(-1, conts[..., None]).squeeze(-1).prod(-1).double()  # (64,)
    N, drafter, g = 1500, HeadDrafter(getattr(heads, family)), gen(10)
    counts = torch.zeros(len(conts), dtype=torch.float64)
    for _ in range(N):
        out = speculative_generate(target, drafter, x, 3, 2, generator=g, stats=False)
        counts[(out[3:] * torch.tensor([Vs * Vs, Vs, 1])).sum()] += 1
    big = law * N >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([law[big], law[~big].sum()[None]]) * N
    assert stats.chisquare(obs.numpy(), (exp / exp.sum() * N).numpy()).pvalue > 1e-3


def test_distillation_reduces_the_losses(target):
    heads = DraftHeads(target, n_heads=2)
    heads.copy_from(target)
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    x = torch.randint(0, 11, (4, 24), generator=gen(11))
    first = {k: v.item() for k, v in distillation_losses(target, heads.exits, heads.medusa, heads.hydra, x).items()}
    before = heads.acceptance(target, x)
    for _ in range(60):
        loss = sum(heads.losses(target, x).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = {k: v.item() for k, v in heads.losses(target, x).items()}
    after = heads.acceptance(target, x)
    assert all(last[k] < first[k] for k in first)
    assert sum(after["hydra"]) > sum(before["hydra"]) and sum(after["medusa"]) > sum(before["medusa"])
    assert all(p.grad is None for p in target.parameters())  # the target stays frozen
    with pytest.raises(ValueError, match="too short"):
        heads.losses(target, x[:, :3])


def test_save_and_load_heads(tmp_path, target, heads):
    meta = {"kind": "draft_heads", "config": {"n_heads": 3, "target": target.config.to_dict()},
            "data": {}, "metrics": {}, "command": "test", "wall_seconds": 0.0, "environment": {}}
    save_checkpoint(heads, "tiny-heads", meta, directory=tmp_path)
    loaded = arlib.load("tiny-heads", directory=tmp_path).model
    for (name, a), (_, b) in zip(heads.state_dict().items(), loaded.state_dict().items()):
        assert torch.allclose(a.half().float(), b), name
    meta["config"]["target"] = tiny(n_layer=2).config.to_dict()  # heads for another target do not fit
    save_checkpoint(heads, "tiny-heads", meta, directory=tmp_path)
    with pytest.raises(CheckpointError, match="tiny-heads.safetensors"):
        arlib.load("tiny-heads", directory=tmp_path)


def test_head_errors(target, heads):
    with pytest.raises(TypeError, match="heads"):
        HeadDrafter(heads.exits)
    with pytest.raises(TypeError, match="target"):
        DraftHeads("not a model")
    with pytest.raises(ValueError, match="n_heads"):
        MedusaHeads(0, 16, 11)
    with pytest.raises(ValueError, match="n_heads"):
        HydraHeads(2.5, 16, 11)
    with pytest.raises(ValueError, match="exit_layer"):
        heads.exits(0, torch.zeros(1, 16))
    with pytest.raises(ValueError, match="seq"):
        HeadDrafter(heads.hydra).propose(torch.zeros(3, dtype=torch.long), 2)


@pytest.mark.parametrize("which", ["model", "hydra", "ngram"])
def test_cost_measurements(target, heads, which):
    drafter = {"model": ModelDrafter(tiny(12, n_layer=1)), "hydra": HeadDrafter(heads.hydra),
               "ngram": NGramDrafter()}[which]
    prefix = torch.randint(0, 11, (1, 12), generator=gen(13))
    costs = step_costs(target, drafter, prefix, 3, repeats=3, rounds=1)
    assert set(costs) == {"draft", "score", "verify"} and all(v > 0 for v in costs.values())
    assert draft_cost(drafter, target, prefix, 3, repeats=3, rounds=1) > 0
    # the measurements leave a reusable drafter: generation afterwards is still greedy decoding
    out = speculative_generate(target, drafter, prefix[0], 10, 3, greedy=True, stats=False)
    assert torch.equal(out, generate(target, prefix[0], 10, greedy=True))
    with pytest.raises(ValueError, match="prefix"):
        step_costs(target, drafter, prefix[0], 3)
    with pytest.raises(ValueError, match="gamma"):
        step_costs(target, drafter, prefix, 0)
    with pytest.raises(TypeError, match="drafter"):
        draft_cost("drafter", target, prefix, 3)


def test_check_timing(monkeypatch, capsys):
    check_timing(True, "fine")
    monkeypatch.delenv("ARLIB_TIMING_ASSERTS", raising=False)
    with pytest.raises(AssertionError, match="too slow"):
        check_timing(False, "too slow")
    monkeypatch.setenv("ARLIB_TIMING_ASSERTS", "0")
    check_timing(False, "too slow")
    assert TIMING_NOTICE in capsys.readouterr().out


def test_hydra_drafting_tables_give_the_same_heads(target, heads):
    """The rearranged first layer used for drafting equals the concatenated one, and is recomputed
    when a weight changes."""
    h = torch.randn(1, 16, generator=gen(14))
    xs = torch.tensor([3, 7, 1, 9])
    w_h, b, tables = heads.hydra.drafting_tables()
    for k in range(3):
        embedded = [heads.hydra.embed(xs[j:j + 1]) for j in range(k + 1)]
        expected = heads.hydra.blocks[k].inp(torch.cat([h, *embedded], dim=-1))
        fast = h @ w_h[k * 16:(k + 1) * 16].T + b[k] + sum(tables[j][k - j, xs[j]] for j in range(k + 1))
        assert torch.allclose(fast, expected, atol=1e-5)
    copy = DraftHeads(target, n_heads=3)
    copy.load_state_dict(heads.state_dict())
    before = copy.hydra.drafting_tables()[1].clone()
    with torch.no_grad():
        copy.hydra.blocks[0].inp.bias.add_(1.0)
    assert torch.allclose(copy.hydra.drafting_tables()[1][0], before[0] + 1.0)


def test_head_drafters_on_a_device_match_the_cpu(target, heads, device):
    """Early exit, Medusa and Hydra on the device draw the CPU's drafts from a CPU generator (Hydra's table
    lookups without reading the token back), so speculative sampling gives the same tokens; the
    distillation losses are the CPU's."""
    import copy

    on_target, on_heads = copy.deepcopy(target).to(device), copy.deepcopy(heads).to(device)
    x = torch.tensor([1, 4, 2, 7])

    def drafters(t, h):
        return {"exit": ModelDrafter(EarlyExitModel(t, 1, h.exits)), "medusa": HeadDrafter(h.medusa),
                "hydra": HeadDrafter(h.hydra)}

    on_cpu, on_dev = drafters(target, heads), drafters(on_target, on_heads)
    for family in on_cpu:
        out, s = speculative_generate(target, on_cpu[family], x, 20, 3, generator=gen(0))
        out_d, s_d = speculative_generate(on_target, on_dev[family], x.to(device), 20, 3, generator=gen(0))
        assert out_d.device.type == device.type and torch.equal(out_d.cpu(), out), family
        assert s_d.accepted == s.accepted, family
    windows = torch.randint(0, 11, (2, 16), generator=gen(3))
    losses = distillation_losses(target, heads.exits, heads.medusa, heads.hydra, windows)
    losses_d = distillation_losses(on_target, on_heads.exits, on_heads.medusa, on_heads.hydra, windows.to(device))
    for name, value in losses.items():
        assert losses_d[name].item() == pytest.approx(value.item(), rel=1e-4), name
