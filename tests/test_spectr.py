"""Tests of arlib.decoding.spectr: the LP optimum and its bound, K-SEQ (rho, acceptance, residual, selection) and
recursive rejection sampling, exactly by enumeration and statistically, with broken variants that fail."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from tiny_models import tiny_gpt

from arlib.decoding.spectr import (
    acceptance_upper_bound,
    kseq_acceptance,
    kseq_beta,
    kseq_residual,
    kseq_rho,
    kseq_select,
    optimal_acceptance,
    optimal_acceptance_lp,
    recursive_rejection_select,
    rrs_acceptance,
)


def pair(V, seed, concentration=1.0):
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.full(V, concentration)), rng.dirichlet(np.full(V, concentration))
    return torch.tensor(p), torch.tensor(q)


EDGE = {
    "p = q": (torch.tensor([0.2, 0.3, 0.5, 0.0]), torch.tensor([0.2, 0.3, 0.5, 0.0])),
    "q zero where p not": (torch.tensor([0.1, 0.4, 0.3, 0.2]), torch.tensor([0.0, 0.5, 0.5, 0.0])),
    "p zero where q not": (torch.tensor([0.0, 0.6, 0.4, 0.0]), torch.tensor([0.25, 0.25, 0.25, 0.25])),
    "one-hot q": (torch.tensor([0.1, 0.4, 0.3, 0.2]), torch.tensor([0.0, 0.0, 1.0, 0.0])),
    "random": pair(4, 0),
}


def kseq_law(p, q, k):
    """Exact law of K-SEQ's output by enumerating every tuple of k drafts (float64)."""
    rho = kseq_rho(p, q, k)
    r = kseq_residual(p, q, k, rho)
    a = torch.minimum(torch.ones_like(p), p / (rho * q).clamp_min(1e-300))  # acceptance of each token
    law = torch.zeros_like(p)
    V = len(p)
    for x in itertools.product(range(V), repeat=k):
        w = torch.prod(q[list(x)])
        if w == 0:
            continue
        alive = torch.tensor(1.0, dtype=p.dtype)
        for xi in x:
            law[xi] += w * alive * a[xi]
            alive = alive * (1 - a[xi])
        law += w * alive * r
    return law


@pytest.mark.parametrize("name", list(EDGE))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_kseq_preserves_the_target_exactly(name, k):
    p, q = EDGE[name]
    assert torch.allclose(kseq_law(p.double(), q.double(), k), p.double(), atol=1e-12)


def rrs_law(p, q, k, replacement):
    """Exact law of recursive rejection sampling's output, enumerating draws (with or without replacement)."""
    V = len(p)
    law = torch.zeros_like(p)

    def walk(p_cur, q_cur, weight, depth):
        if depth == k:
            law.add_(weight * p_cur)
            return
        for x in range(V):
            if q_cur[x] == 0:
                continue
            w = weight * q_cur[x]
            a = min(1.0, float(p_cur[x] / q_cur[x]))
            law[x] += w * a
            r = (p_cur - q_cur).clamp_min(0)
            p_next = r / r.sum() if r.sum() > 0 else p_cur
            q_next = q_cur
            if not replacement:
                q_next = q_cur.clone()
                q_next[x] = 0
                q_next = q_next / q_next.sum() if q_next.sum() > 0 else q_cur
            walk(p_next, q_next, w * (1 - a), depth + 1)

    walk(p, q, torch.tensor(1.0, dtype=p.dtype), 0)
    return law


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("name", list(EDGE))
def test_recursive_rejection_preserves_the_target_exactly(name, replacement):
    p, q = EDGE[name]
    assert torch.allclose(rrs_law(p.double(), q.double(), 3, replacement), p.double(), atol=1e-12)


def test_rrs_acceptance_matches_enumeration():
    for seed in range(5):
        p, q = pair(4, seed)
        k = 3
        # acceptance = P(some draft accepted): enumerate with a sentinel for "fell through"
        total = 0.0
        p_cur = p.clone()
        survive = 1.0
        for _ in range(k):
            beta = torch.minimum(p_cur, q).sum().item()
            total += survive * beta
            survive *= 1 - beta
            r = (p_cur - q).clamp_min(0)
            p_cur = r / r.sum() if r.sum() > 0 else p_cur
        assert rrs_acceptance(p, q, k).item() == pytest.approx(total, abs=1e-12)


def test_lp_at_k1_is_one_minus_tv_and_bounds_hold():
    for seed in range(8):
        p, q = pair(5, seed, concentration=0.5 + seed % 3)
        tv = 0.5 * (p - q).abs().sum().item()
        assert optimal_acceptance_lp(p, q, 1) == pytest.approx(1 - tv, abs=1e-9)
        assert acceptance_upper_bound(p, q, 1) == pytest.approx(1 - tv, abs=1e-9)


@pytest.mark.parametrize("k", [2, 3])
def test_kseq_guarantee_and_ordering_on_random_instances(k):
    """(1 - 1/e) LP <= K-SEQ <= LP <= upper bound, and LP >= recursive rejection and single draft."""
    floor = 1 - math.exp(-1)
    for seed in range(15):
        p, q = pair(4, 100 + seed, concentration=[0.3, 1.0, 3.0][seed % 3])
        lp = optimal_acceptance_lp(p, q, k)
        ks = kseq_acceptance(p, q, k).item()
        assert floor * lp - 1e-9 <= ks <= lp + 1e-7
        assert lp <= acceptance_upper_bound(p, q, k) + 1e-7
        assert rrs_acceptance(p, q, k).item() <= lp + 1e-7
        assert optimal_acceptance_lp(p, q, 1) <= lp + 1e-9


def test_kseq_rho_solves_the_balance_equation():
    p, q = pair(6, 7, concentration=0.4)
    for k in (2, 4, 8):
        rho = kseq_rho(p, q, k)
        beta = kseq_beta(p, q, rho)
        assert 1 <= rho.item() <= k
        assert (1 - (1 - beta) ** k).item() == pytest.approx((rho * beta).item(), abs=1e-9)
        r = kseq_residual(p, q, k, rho)
        assert (r >= 0).all() and r.sum().item() == pytest.approx(1, abs=1e-9)
    # batched over positions
    P = torch.stack([pair(6, s)[0] for s in range(4)])
    Q = torch.stack([pair(6, s)[1] for s in range(4)])
    assert torch.allclose(kseq_rho(P, Q, 3), torch.stack([kseq_rho(P[i], Q[i], 3) for i in range(4)]))


def chi2_pvalue(tokens, p):
    counts = np.bincount(tokens.numpy(), minlength=len(p))
    p = p.numpy()
    assert counts[p == 0].sum() == 0
    keep = p > 0
    return stats.chisquare(counts[keep], counts.sum() * p[keep]).pvalue


def broken_kseq(p, q, drafts, generator):
    """K-SEQ with the single-draft residual norm(max(0, p - q)) instead of its own: biased."""
    first, token = kseq_select(p, q, drafts, generator)
    r = (p - q).clamp_min(0)
    r = r / r.sum(-1, keepdim=True)
    fallback = torch.multinomial(r, 1, generator=generator)[:, 0]
    return first, torch.where(first >= 0, token, fallback)


@pytest.mark.parametrize("select", ["kseq", "rrs", "rrs-without", "broken"])
def test_selection_statistics(select):
    p, q = pair(5, 3, concentration=0.7)
    N, k = 60_000, 3
    g = torch.Generator().manual_seed(0)
    P, Q = p.expand(N, -1), q.expand(N, -1)
    if select == "rrs-without":  # k distinct drafts, drawn without replacement from q
        drafts = torch.multinomial(Q.float(), k, replacement=False, generator=g)
    else:
        drafts = torch.multinomial(Q.float(), k, replacement=True, generator=g)
    fn = {"kseq": kseq_select, "rrs": recursive_rejection_select, "broken": broken_kseq,
          "rrs-without": lambda *a: recursive_rejection_select(*a, replacement=False)}[select]
    first, token = fn(P, Q, drafts, g)
    pvalue = chi2_pvalue(token, p)
    if select == "broken":
        assert pvalue < 1e-6
    else:
        assert pvalue > 1e-3
        if select == "kseq":
            assert (first >= 0).double().mean().item() == pytest.approx(kseq_acceptance(p, q, k).item(), abs=0.01)
        if select == "rrs":
            assert (first >= 0).double().mean().item() == pytest.approx(rrs_acceptance(p, q, k).item(), abs=0.01)


def test_errors():
    p, q = pair(4, 0)
    with pytest.raises(ValueError, match="k"):
        kseq_rho(p, q, 0)
    with pytest.raises(ValueError, match="q"):
        kseq_acceptance(p, torch.tensor([0.5, 0.5]), 2)
    with pytest.raises(ValueError, match="sum to 1"):
        optimal_acceptance_lp(p * 2, q, 2)
    with pytest.raises(ValueError, match=">= 0"):
        acceptance_upper_bound(torch.tensor([1.5, -0.5]), torch.tensor([0.5, 0.5]), 2)
    with pytest.raises(ValueError, match="drafts"):
        kseq_select(p[None], q[None], torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match="drafts"):
        recursive_rejection_select(p[None], q[None], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="too large"):
        optimal_acceptance_lp(torch.full((84,), 1 / 84), torch.full((84,), 1 / 84), 4)


def tiny_pair_model(seed, n_layer, V=4, std=0.4):
    return tiny_gpt(seed, n_layer, vocab_size=V, block_size=32, std=std)


@pytest.mark.parametrize("select", ["kseq", "rrs", "broken"])
def test_spectr_generate_law_end_to_end(select, monkeypatch):
    """Chi-square of whole 3-token continuations against the target's law, enumerated; a rule that
    always takes the first draft (the draft's law) must fail it."""
    import arlib.decoding.spectr

    if select == "broken":
        monkeypatch.setitem(arlib.decoding.spectr._PICKS, "kseq", lambda p, q, tokens, u: (0, int(tokens[0]), 1.0))
    Vs = 4
    target, draft = tiny_pair_model(2, 2), tiny_pair_model(3, 1)
    x = torch.tensor([1, 2, 1])
    conts = torch.tensor(list(itertools.product(range(Vs), repeat=3)))  # (64, 3)
    with torch.no_grad():
        probs = target(torch.cat([x.expand(len(conts), -1), conts], dim=1)[:, :-1])[:, 2:].softmax(-1)
    law = probs.gather(-1, conts[..., None]).squeeze(-1).prod(-1).double()  # (64,)
    from arlib.decoding.spectr import spectr_generate

    N, g = 1500, torch.Generator().manual_seed(4)
    counts = torch.zeros(len(conts), dtype=torch.float64)
    for _ in range(N):
        out = spectr_generate(target, draft, x, 3, k=3, gamma=2, generator=g, stats=False,
                              select="kseq" if select == "broken" else select)
        counts[(out[3:] * torch.tensor([Vs * Vs, Vs, 1])).sum()] += 1
    big = law * N >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([law[big], law[~big].sum()[None]]) * N
    pvalue = stats.chisquare(obs.numpy(), (exp / exp.sum() * N).numpy()).pvalue
    assert pvalue < 1e-6 if select == "broken" else pvalue > 1e-3


def test_spectr_generate_stats_and_errors():
    from arlib.decoding.spectr import spectr_generate

    target, draft = tiny_pair_model(5, 2, V=6), tiny_pair_model(6, 1, V=6)
    x = torch.tensor([0, 3, 2, 5])
    out, s = spectr_generate(target, draft, x, 20, k=4, gamma=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (24,) and torch.equal(out[:4], x)
    assert sum(s.accepted) + s.steps == 20 and s.target_calls == s.steps
    assert all(0 <= a <= d for a, d in zip(s.accepted, s.drafted))
    # with the target as its own draft every draft is accepted
    out, s = spectr_generate(target, target, x, 12, k=2, gamma=3, generator=torch.Generator().manual_seed(1))
    assert s.accepted == s.drafted
    with pytest.raises(ValueError, match="k"):
        spectr_generate(target, draft, x, 5, k=0, gamma=2)
    with pytest.raises(ValueError, match="gamma"):
        spectr_generate(target, draft, x, 5, k=2, gamma=0)
    with pytest.raises(ValueError, match="select"):
        spectr_generate(target, draft, x, 5, k=2, gamma=2, select="best")
    with pytest.raises(ValueError, match="draft"):
        spectr_generate(target, tiny_pair_model(7, 1, V=5), x, 5, k=2, gamma=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        spectr_generate(target, draft, x, 40, k=2, gamma=2)


def test_exact_rho_matches_bisection():
    """The decoding loop's segment solve of rho equals kseq_rho's bisection, edge cases included."""
    from arlib.decoding.spectr import _kseq_rho_exact, kseq_rho_exact

    gen = torch.Generator().manual_seed(11)
    cases = []
    for V in (2, 5, 65):
        for _ in range(60):
            p = torch.rand(V, generator=gen, dtype=torch.float64) ** 3
            q = torch.rand(V, generator=gen, dtype=torch.float64) ** 3
            p[torch.rand(V, generator=gen) < 0.2] = 0
            q[torch.rand(V, generator=gen) < 0.2] = 0
            p[0] += 1e-3
            q[-1] += 1e-3
            cases.append((p / p.sum(), q / q.sum()))
    u = torch.tensor([0.5, 0.5, 0, 0], dtype=torch.float64)
    cases += [(u, u), (u, u.flip(0)), (torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), u)]
    for p, q in cases:
        for k in (1, 2, 3, 8):
            exact = _kseq_rho_exact(p.numpy(), q.numpy(), k)
            assert exact == pytest.approx(float(kseq_rho(p, q, k)), abs=1e-9)
            assert kseq_rho_exact(p, q, k) == exact
    with pytest.raises(ValueError, match="one distribution"):
        kseq_rho_exact(u[None], u[None], 2)
    with pytest.raises(ValueError, match="k"):
        kseq_rho_exact(u, u, 0)


@pytest.mark.parametrize("select", ["kseq", "rrs"])
def test_loop_rules_accept_at_their_stated_probability(select):
    """The decoding loop's one-position rules: the returned acceptance probability is the exact one
    (kseq_acceptance / rrs_acceptance), the accepted fraction matches it, and the output has law p."""
    from arlib.decoding.spectr import _PICKS

    p, q = pair(6, 21)
    k, n = 3, 40_000
    rng = np.random.default_rng(5)
    drafts = rng.choice(6, size=(n, k), p=q.numpy())
    u = rng.random((n, k + 1))
    results = [_PICKS[select](p.numpy(), q.numpy(), drafts[j], u[j]) for j in range(n)]
    exact = float(kseq_acceptance(p, q, k) if select == "kseq" else rrs_acceptance(p, q, k))
    assert results[0][2] == pytest.approx(exact, abs=1e-9)
    accepted = np.mean([r[0] >= 0 for r in results])
    assert abs(accepted - exact) < 5 * math.sqrt(exact * (1 - exact) / n)
    counts = np.bincount([r[1] for r in results], minlength=6)
    assert stats.chisquare(counts, p.numpy() * n).pvalue > 1e-3


def test_spectr_generate_law_with_sampling_options():
    """Temperature and top-k define the target's law (the processed distribution); a ModelDrafter with its
    own temperature proposes the drafts. Chi-square of the 2-token continuations against that law."""
    from arlib.decoding.drafters import ModelDrafter
    from arlib.decoding.spectr import spectr_generate
    from arlib.text.sampling import process_logits

    Vs = 4
    target, draft = tiny_pair_model(2, 2), tiny_pair_model(3, 1)
    x = torch.tensor([1, 2, 1])
    conts = torch.tensor(list(itertools.product(range(Vs), repeat=2)))  # (16, 2)
    with torch.no_grad():
        logits = target(torch.cat([x.expand(len(conts), -1), conts], dim=1)[:, :-1])[:, 2:]  # (16, 2, V)
        probs = process_logits(logits.reshape(-1, Vs), 0.7, 3, None, None).softmax(-1).view(len(conts), 2, Vs)
    law = probs.gather(-1, conts[..., None]).squeeze(-1).prod(-1).double()  # (16,)
    N, g = 1500, torch.Generator().manual_seed(8)
    counts = torch.zeros(len(conts), dtype=torch.float64)
    drafter = ModelDrafter(draft, temperature=1.3)
    for _ in range(N):
        out = spectr_generate(target, drafter, x, 2, k=3, gamma=2, generator=g, stats=False, temperature=0.7,
                              top_k=3)
        counts[out[3] * Vs + out[4]] += 1
    assert counts[law == 0].sum() == 0  # top-k removed tokens never appear
    big, small = law * N >= 5, (law > 0) & (law * N < 5)
    obs = torch.cat([counts[big], counts[small].sum()[None]]) if small.any() else counts[big]
    exp = (torch.cat([law[big], law[small].sum()[None]]) if small.any() else law[big]) * N
    assert stats.chisquare(obs.numpy(), (exp / exp.sum() * N).numpy()).pvalue > 1e-3
    with pytest.raises(TypeError, match="drafter"):
        spectr_generate(target, "draft", x, 2, k=2, gamma=2)


def test_optimal_acceptance_is_the_lp_and_the_subset_minimum():
    """The O(V log V) sorted-prefix formula equals the subset enumeration and the LP, ties and zeros included."""
    rng = np.random.default_rng(13)
    for trial in range(150):
        V, k = int(rng.integers(2, 8)), int(rng.integers(1, 6))
        p, q = pair(V, trial, concentration=float(rng.choice([0.2, 1.0, 4.0])))
        if trial % 3 == 0:  # zeros on either side, and tied ratios
            p[0], q[1] = 0.0, 0.0
            if V > 2:
                q[2] = p[2] * q.sum() / p.sum()
            p, q = p / p.sum(), q / q.sum()
        fast = float(optimal_acceptance(p, q, k))
        assert fast == pytest.approx(acceptance_upper_bound(p, q, k), abs=1e-12)
        if V ** k <= 3000:
            assert fast == pytest.approx(optimal_acceptance_lp(p, q, k), abs=1e-8)
    for name, (p, q) in EDGE.items():
        p, q = p.double(), q.double()
        for k in (1, 2, 3):
            assert float(optimal_acceptance(p, q, k)) == pytest.approx(optimal_acceptance_lp(p, q, k), abs=1e-8), name
    batch = torch.stack([torch.stack(pair(6, s)) for s in range(5)])  # (5, 2, 6)
    got = optimal_acceptance(batch[:, 0], batch[:, 1], 3)
    assert got.shape == (5,) and torch.allclose(got, torch.stack([optimal_acceptance(*b, 3) for b in batch]))
    assert float(optimal_acceptance(*pair(5, 1), 1)) == pytest.approx(float(torch.minimum(*pair(5, 1)).sum()))
    with pytest.raises(ValueError, match="k"):
        optimal_acceptance(*pair(3, 0), 0)


def test_spectr_on_a_device_matches_the_cpu(device):
    """With the uniforms and the Gumbel noise from a CPU generator, SpecTr decoding on the device decides what
    the CPU does (the verification runs on the host, in numpy, on copies of the device's probabilities);
    the batched selection rules keep their tensors on the device and draw the CPU's tokens too."""
    import copy

    from arlib.decoding.spectr import spectr_generate

    target, draft = tiny_pair_model(5, 2, V=6), tiny_pair_model(6, 1, V=6)
    x = torch.tensor([0, 3, 2, 5])
    on_target, on_draft = copy.deepcopy(target).to(device), copy.deepcopy(draft).to(device)
    for select in ("kseq", "rrs"):
        out, s = spectr_generate(target, draft, x, 16, k=3, gamma=3, select=select,
                                 generator=torch.Generator().manual_seed(0))
        out_d, s_d = spectr_generate(on_target, on_draft, x.to(device), 16, k=3, gamma=3, select=select,
                                     generator=torch.Generator().manual_seed(0))
        assert out_d.device.type == device.type and torch.equal(out_d.cpu(), out)
        assert s_d.accepted == s.accepted and np.allclose(s_d.betas, s.betas, atol=1e-5)
        own = spectr_generate(on_target, on_draft, x, 8, k=2, gamma=2, select=select, stats=False,
                              generator=torch.Generator(device=device).manual_seed(0))  # a prompt on the CPU
        assert own.shape == (12,) and torch.equal(own[:4].cpu(), x)
    with pytest.raises(ValueError, match="prompt: token ids must lie in"):
        spectr_generate(on_target, on_draft, torch.tensor([0, 6], device=device), 4, k=2, gamma=2)
    p, q = pair(9, 0)
    P, Q = p.expand(5, -1), q.expand(5, -1)
    drafts = torch.randint(0, 9, (5, 3), generator=torch.Generator().manual_seed(1))
    for rule in (kseq_select, recursive_rejection_select):
        first, token = rule(P, Q, drafts, torch.Generator().manual_seed(2))
        first_d, token_d = rule(P.to(device), Q.to(device), drafts.to(device), torch.Generator().manual_seed(2))
        assert token_d.device.type == device.type
        assert torch.equal(first_d.cpu(), first) and torch.equal(token_d.cpu(), token)
    torch.testing.assert_close(rrs_acceptance(P.to(device), Q.to(device), 3).cpu(), rrs_acceptance(P, Q, 3))
    torch.testing.assert_close(kseq_acceptance(P.to(device), Q.to(device), 3).cpu(), kseq_acceptance(P, Q, 3))
    assert acceptance_upper_bound(p.to(device), q.to(device), 2) == pytest.approx(acceptance_upper_bound(p, q, 2))
    assert optimal_acceptance_lp(p[:4].to(device) / p[:4].sum(), q[:4].to(device) / q[:4].sum(), 2) \
        == pytest.approx(optimal_acceptance_lp(p[:4] / p[:4].sum(), q[:4] / q[:4].sum(), 2))
