"""Tests of arlib.decoding.speculative and arlib.decoding.drafters: losslessness (exact and chi-square, with broken
verifiers that must fail), property tests, generation against plain decoding, stats, theory, errors."""

import itertools
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from tiny_models import tiny_gpt

from arlib.decoding.drafters import Draft, Drafter, ModelDrafter, NGramDrafter, SamplingOptions
from arlib.decoding.speculative import (
    _verify_one,
    acceptance_rate,
    expected_tokens,
    optimal_gamma,
    residual,
    speculative_generate,
    speedup,
    verify,
    verify_greedy,
)
from arlib.text.sampling import generate, sample_probs


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dist(V: int, seed: int, zeros=()) -> torch.Tensor:
    """A random distribution (V,) in float64 with the given entries set to zero."""
    p = torch.rand(V, generator=gen(seed), dtype=torch.float64) + 0.05
    p[list(zeros)] = 0
    return p / p.sum()


def one_hot(V: int, i: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), V).double()


V = 6
PAIRS = {  # (p, q): the edge cases of the issue and a few generic pairs
    "random": (dist(V, 0), dist(V, 1)),
    "random-far": (dist(V, 2, zeros=[0, 1]) ** 3 / (dist(V, 2, zeros=[0, 1]) ** 3).sum(), dist(V, 3, zeros=[4])),
    "q-zero-where-p-not": (dist(V, 4), dist(V, 5, zeros=[0, 2])),
    "p-zero-where-q-not": (dist(V, 6, zeros=[1, 3]), dist(V, 7)),
    "p-equals-q": (dist(V, 8), dist(V, 8)),
    "one-hot-p": (one_hot(V, 2), dist(V, 9)),
    "one-hot-q": (dist(V, 10), one_hot(V, 4)),
    "one-hot-both-differ": (one_hot(V, 1), one_hot(V, 5)),
    "disjoint-supports": (dist(V, 11, zeros=[0, 1, 2]), dist(V, 12, zeros=[3, 4, 5])),
}


# --- exact losslessness by enumeration --------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRS)
def test_first_token_law_is_p_exactly(name):
    """Enumerate the draft x ~ q: accept with a(x) = min(1, p(x)/q(x)), else draw from the residual."""
    p, q = PAIRS[name]
    a = torch.where(q > 0, torch.minimum(torch.ones_like(p), p / q), torch.zeros_like(p))  # (V,)
    law = q * a + (q * (1 - a)).sum() * residual(p, q)  # min(p, q) + (1 - beta) * residual
    torch.testing.assert_close(law, p, rtol=0, atol=1e-12)
    torch.testing.assert_close((q * a).sum(), acceptance_rate(p, q), rtol=0, atol=1e-12)


def _block_law(P, Q, s, gamma):
    """Exact law of the tokens one speculative step emits from state s of a Markov chain (rows of
    P and Q are the target's and the draft's next-token distributions), by enumerating the drafts."""
    law = defaultdict(float)
    V = P.shape[0]

    def rec(prev, prefix, prob, i):
        if i == gamma:  # every draft accepted: the bonus token from p
            for y in range(V):
                law[prefix + (y,)] += prob * P[prev, y].item()
            return
        res = residual(P[prev], Q[prev])
        for x in range(V):
            if Q[prev, x] > 0:
                a = min(1.0, (P[prev, x] / Q[prev, x]).item())
                rec(x, prefix + (x,), prob * Q[prev, x].item() * a, i + 1)
                for y in range(V):
                    law[prefix + (y,)] += prob * Q[prev, x].item() * (1 - a) * res[y].item()

    rec(s, (), 1.0, 0)
    return law


@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_multi_step_markov_chain_law_is_exact(gamma):
    """The whole algorithm, step after step, enumerated on a 3-state Markov chain: the first K emitted
    tokens have exactly the target chain's law (Leviathan et al. 2023, Theorem 3.5, applied repeatedly)."""
    Vm, K, s0 = 3, 4, 0
    P = torch.stack([dist(Vm, 20), dist(Vm, 21, zeros=[2]), one_hot(Vm, 0)])  # target rows
    Q = torch.stack([dist(Vm, 22, zeros=[0]), dist(Vm, 23), dist(Vm, 24)])  # draft rows
    law, frontier = defaultdict(float), {(): 1.0}
    while frontier:
        new = defaultdict(float)
        for seq, prob in frontier.items():
            for block, b in _block_law(P, Q, seq[-1] if seq else s0, gamma).items():
                out = (seq + block)[:K]
                (law if len(out) == K else new)[out] += prob * b
        frontier = new
    for seq in itertools.product(range(Vm), repeat=K):
        expected, prev = 1.0, s0
        for x in seq:
            expected, prev = expected * P[prev, x].item(), x
        assert abs(law.get(seq, 0.0) - expected) < 1e-12, seq
    assert abs(sum(law.values()) - 1) < 1e-12


# --- statistical losslessness -----------------------------------------------------------------------


def broken_ratio(p, q, x, generator=None):
    """Wrong: accepts with min(1, q/p) instead of min(1, p/q)."""
    px, qx = p[:, 0].gather(-1, x[:, :1]).squeeze(-1), q[:, 0].gather(-1, x[:, :1]).squeeze(-1)
    ok = torch.rand(len(x), generator=generator) * px < qx
    return ok.long(), sample_probs(residual(p[:, 0], q[:, 0]), generator)


def broken_resample(p, q, x, generator=None):
    """Wrong: on rejection draws from p instead of the residual norm(max(0, p - q))."""
    px, qx = p[:, 0].gather(-1, x[:, :1]).squeeze(-1), q[:, 0].gather(-1, x[:, :1]).squeeze(-1)
    ok = torch.rand(len(x), generator=generator) * qx < px
    return ok.long(), sample_probs(p[:, 0], generator)


def first_tokens(verifier, p, q, N, seed, gamma=1):
    """N first emitted tokens of verification with the same (p, q) at every position, drafts x ~ q."""
    g = gen(seed)
    P, Q = p.expand(N, gamma + 1, -1), q.expand(N, gamma, -1)  # (N, gamma+1, V), (N, gamma, V)
    x = torch.multinomial(Q.reshape(-1, p.shape[-1]), 1, generator=g).view(N, gamma)  # (N, gamma)
    n, y = verifier(P, Q, x, g)
    return torch.where(n > 0, x[:, 0], y)


def chisquare_pvalue(tokens, p) -> float:
    counts = torch.bincount(tokens, minlength=len(p)).double()
    support = p > 0
    assert counts[~support].sum() == 0, "drew a token with p = 0"
    if support.sum() == 1:
        return 1.0
    return stats.chisquare(counts[support].numpy(), (len(tokens) * p[support]).numpy()).pvalue


@pytest.mark.parametrize("name", PAIRS)
def test_verify_first_token_chisquare(name):
    p, q = PAIRS[name]
    assert chisquare_pvalue(first_tokens(verify, p, q, 20_000, seed=1, gamma=2), p) > 1e-3


def rowwise_verify_one(p, q, x, generator=None):
    """speculative_generate's single-sequence verification (arlib.decoding.speculative._verify_one), row by row."""
    ks, ys = zip(*(_verify_one(p[b], None if q is None else q[b], x[b], generator) for b in range(len(x))))
    return torch.tensor(ks), torch.cat(ys)


@pytest.mark.parametrize("one_hot_drafts", [False, True])
@pytest.mark.parametrize("name", PAIRS)
def test_single_sequence_fast_path_has_the_same_law(name, one_hot_drafts):
    p, q = PAIRS[name]
    if one_hot_drafts:  # q = None: the drafts are one-hot at x (drawn from q here)
        verifier = lambda P, Q, x, g: rowwise_verify_one(P, None, x, g)  # noqa: E731
    else:
        verifier = rowwise_verify_one
    assert chisquare_pvalue(first_tokens(verifier, p, q, 4_000, seed=3, gamma=2), p) > 1e-3
    k, y = _verify_one(p.expand(3, -1), p.expand(2, -1), p.argmax().repeat(2), gen(0))  # p = q: all accepted
    assert k == 2 and y.shape == (1,) and p[y] > 0


@pytest.mark.parametrize("broken", [broken_ratio, broken_resample])
@pytest.mark.parametrize("name", ["random-far", "q-zero-where-p-not", "p-zero-where-q-not"])
def test_broken_verifiers_fail_the_same_test(broken, name):
    p, q = PAIRS[name]
    assert chisquare_pvalue(first_tokens(verify, p, q, 20_000, seed=2), p) > 1e-3
    tokens = first_tokens(broken, p, q, 20_000, seed=2)
    counts = torch.bincount(tokens, minlength=len(p)).double()
    if counts[p == 0].sum() > 0:  # emitting a token the target never emits is failure enough
        return
    assert chisquare_pvalue(tokens, p) < 1e-6


@pytest.mark.parametrize("x0", [0, 1, 2, 4])
def test_one_hot_drafts_are_lossless(x0):
    """q = None (n-gram drafts): accept x0 with p(x0), else draw from p without x0: the law is p."""
    p = dist(V, 30, zeros=[1])
    p = one_hot(V, 4) if x0 == 4 else p
    N, g = 20_000, gen(3)
    n, y = verify(p.expand(N, 2, -1), None, torch.full((N, 1), x0), g)
    assert chisquare_pvalue(torch.where(n > 0, x0, y), p) > 1e-3
    n2, y2 = verify(p.expand(N, 2, -1), one_hot(V, x0).expand(N, 1, -1), torch.full((N, 1), x0), gen(3))
    assert torch.equal(n, n2) and torch.equal(y, y2)  # the same as passing q one-hot


def test_next_token_law_at_every_position():
    """Given n accepted, the next token follows residual(p_n, q_n), or p_(gamma+1) after all gamma;
    and position i accepts with probability beta_i = sum min(p_i, q_i)."""
    gamma, N = 3, 40_000
    p = torch.stack([dist(V, 40 + i, zeros=[i]) for i in range(gamma + 1)])  # (gamma+1, V)
    q = torch.stack([dist(V, 50 + i, zeros=[5 - i]) for i in range(gamma)])  # (gamma, V)
    q[0] = p[0] ** 0.5 / (p[0] ** 0.5).sum()  # close to p: most rows get past position 0
    g = gen(4)
    x = torch.stack([torch.multinomial(q[i], N, replacement=True, generator=g) for i in range(gamma)], dim=1)
    n, y = verify(p.expand(N, -1, -1), q.expand(N, -1, -1), x, g)
    for i in range(gamma + 1):
        rows = n == i
        law = p[gamma] if i == gamma else residual(p[i], q[i])
        assert chisquare_pvalue(y[rows], law) > 1e-3
        if i < gamma:  # among rows that reached position i, the fraction accepted there
            reached = n >= i
            beta, m = acceptance_rate(p[i], q[i]).item(), reached.sum().item()
            rate = (n[reached] > i).double().mean().item()
            assert abs(rate - beta) < 5 * (beta * (1 - beta) / m) ** 0.5 + 1e-9


# --- properties (hypothesis) ------------------------------------------------------------------------


@st.composite
def verify_inputs(draw):
    seed, B, G, V = draw(st.integers(0, 2**31 - 1)), draw(st.integers(1, 4)), draw(st.integers(1, 5)), \
        draw(st.integers(1, 12))
    g = gen(seed)

    def random_probs(*shape):
        w = torch.rand(*shape, V, generator=g, dtype=torch.float64) ** 3  # peaked
        w = w * (torch.rand(*shape, V, generator=g) > draw(st.floats(0, 0.8)))  # random zeros
        w[..., 0] += (w.sum(-1) == 0)  # keep each row non-empty
        return w / w.sum(-1, keepdim=True)

    p, q = random_probs(B, G + 1), random_probs(B, G)
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).view(B, G)
    return p, q, x, seed


@settings(max_examples=80, deadline=None)
@given(verify_inputs())
def test_verify_properties(inputs):
    p, q, x, seed = inputs
    B, G = x.shape
    n, y = verify(p, q, x, gen(seed))
    assert n.shape == (B,) and y.shape == (B,) and n.dtype == y.dtype == torch.long
    assert ((n >= 0) & (n <= G)).all() and ((y >= 0) & (y < p.shape[-1])).all()
    rows = torch.arange(B)
    assert (p[rows, n, y] > 0).all()  # the next token is possible under the target
    for i in range(G):  # accepted drafts are possible under the target
        assert (p[rows, i, x[:, i]][n > i] > 0).all()
    n_same, _ = verify(p, p[:, :G], p[:, :G].argmax(-1), gen(seed))
    assert (n_same == G).all()  # p == q: every draft is accepted


@settings(max_examples=30, deadline=None, derandomize=True)
@given(verify_inputs())
def test_acceptance_probability_is_beta(inputs):
    """Over x ~ q, P(accept position 0) = beta = sum min(p, q): exactly, and empirically with verify."""
    p, q, _, seed = inputs
    p0, q0 = p[0, 0], q[0, 0]
    a = torch.where(q0 > 0, (p0 / q0).clamp(max=1), torch.zeros_like(p0))
    beta = acceptance_rate(p0, q0).item()
    assert abs((q0 * a).sum().item() - beta) < 1e-12
    N, g = 4000, gen(seed)
    x = torch.multinomial(q0, N, replacement=True, generator=g)[:, None]  # (N, 1)
    n, _ = verify(p[:1, :2].expand(N, -1, -1), q[:1, :1].expand(N, -1, -1), x, g)
    assert abs(n.double().mean().item() - beta) < 5 * (beta * (1 - beta) / N) ** 0.5 + 1e-3


def test_verify_greedy():
    target = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 2, 3, 4]])
    draft = torch.tensor([[1, 2, 3], [1, 9, 3], [1, 2, 3]])
    n, y = verify_greedy(target, draft)
    assert n.tolist() == [3, 1, 0] and y.tolist() == [4, 2, 5]


def test_verify_is_reproducible_and_guards_zero_residual():
    p, q = PAIRS["random"]
    P, Q = p.expand(50, 3, -1), q.expand(50, 2, -1)
    x = torch.multinomial(Q.reshape(-1, V), 1, generator=gen(0)).view(50, 2)
    assert all(torch.equal(a, b) for a, b in zip(verify(P, Q, x, gen(1)), verify(P, Q, x, gen(1))))
    torch.testing.assert_close(residual(p, p), p)  # no residual mass: falls back to p
    assert (residual(p, q) >= 0).all() and abs(residual(p, q).sum() - 1) < 1e-12


# --- generation ---------------------------------------------------------------------------------------


tiny = tiny_gpt


@pytest.fixture(scope="module")
def pair():
    return tiny(0), tiny(1, n_layer=1)


def prompt(T=5, seed=0, V=13):
    return torch.randint(0, V, (T,), generator=gen(seed))


PLAIN = SamplingOptions()


class Recorder(Drafter):
    """Wraps a drafter and records every (seq, draft)."""

    def __init__(self, inner):
        self.inner, self.log = inner, []

    def propose(self, seq, gamma, options=PLAIN, generator=None):
        draft = self.inner.propose(seq, gamma, options, generator)
        self.log.append((seq.clone(), draft))
        return draft

    def accept(self, n):
        self.inner.accept(n)

    def reset(self):
        self.inner.reset()


@pytest.mark.parametrize("gamma", [1, 4, 7])
@pytest.mark.parametrize("which", ["draft", "self", "ngram"])
def test_greedy_speculative_equals_greedy_decoding(pair, gamma, which):
    target, draft = pair
    drafter = {"draft": ModelDrafter(draft), "self": ModelDrafter(target), "ngram": NGramDrafter()}[which]
    x = prompt()
    out, s = speculative_generate(target, drafter, x, 40, gamma, greedy=True)
    assert torch.equal(out, generate(target, x, 40, greedy=True))
    if which == "self":
        assert s.accepted == s.drafted  # the target drafting for itself: everything accepted


def test_model_drafter_rolls_back_its_cache(pair):
    """Every proposal equals what the draft model gives from scratch on the same sequence."""
    target, draft = pair
    rec = Recorder(ModelDrafter(draft))
    speculative_generate(target, rec, prompt(), 30, 3, greedy=True)
    for seq, d in rec.log:
        g = d.tokens.shape[1]
        assert torch.equal(d.tokens, generate(draft, seq, g, greedy=True)[:, seq.shape[1]:])
    rec = Recorder(ModelDrafter(draft, temperature=0.8))  # sampled: the recorded q must be the model's
    speculative_generate(target, rec, prompt(seed=1), 30, 3, generator=gen(0), top_k=6)
    for seq, d in rec.log:
        L = seq.shape[1]
        if d.tokens.shape[1] == 0:  # the last step asks for no drafts
            continue
        full = torch.cat([seq, d.tokens[:, :-1]], dim=1)
        q = SamplingOptions(temperature=0.8, top_k=6).probs(draft(full)[:, L - 1:])
        torch.testing.assert_close(d.probs, q, rtol=0, atol=1e-5)
    assert rec.inner.cache.length <= 5 + 30


def test_model_drafter_cache_bookkeeping(pair):
    _, draft = pair
    greedy, d = SamplingOptions(greedy=True), ModelDrafter(draft)
    seq = prompt()[None]  # (1, 5)
    first = d.propose(seq, 4, greedy)
    assert first.calls == 4 and first.probs is None and d.cache.length == 5 + 3  # x_4 is never fed
    d.accept(1)
    assert d.cache.length == 6
    # a sequence that left what the cache holds (no accept call): the drafter crops to the common prefix
    other = torch.cat([seq[:, :3], (seq[:, 3:] + 1) % 13, first.tokens[:, :2]], dim=1)  # (1, 7)
    again = d.propose(other, 3, PLAIN, gen(0))  # sampled: compare q with the model's from scratch
    with torch.no_grad():
        q = draft(torch.cat([other, again.tokens[:, :-1]], dim=1))[:, 6:].softmax(-1)  # (1, 3, V)
    torch.testing.assert_close(again.probs, q, rtol=0, atol=1e-5)
    d.reset()
    assert d.cache is None


def test_sampled_with_target_as_draft_accepts_everything(pair):
    target, _ = pair
    for options in ({}, {"temperature": 0.7, "top_p": 0.9}):
        out, s = speculative_generate(target, ModelDrafter(target), prompt(), 50, 4, generator=gen(5), **options)
        assert s.accepted == s.drafted and out.shape == (55,)
        assert min(s.betas) > 1 - 1e-5


@pytest.mark.parametrize("which", ["draft", "ngram"])
def test_speculative_generate_law_end_to_end(which):
    """Chi-square of whole 3-token continuations against the target's processed law, enumerated."""
    Vs, options = 4, {"temperature": 0.8, "top_k": 3}
    target, draft = tiny(2, vocab_size=Vs, std=0.3), tiny(3, n_layer=1, vocab_size=Vs, std=0.3)
    x = torch.tensor([1, 2, 1])
    conts = torch.tensor(list(itertools.product(range(Vs), repeat=3)))  # (64, 3)
    seqs = torch.cat([x.expand(len(conts), -1), conts], dim=1)  # (64, 6)
    with torch.no_grad():
        probs = SamplingOptions(**options).probs(target(seqs[:, :-1]))[:, 2:]  # (64, 3, V)
    law = probs.gather(-1, conts[..., None]).squeeze(-1).prod(-1).double()  # (64,)
    N, g = 2000, gen(6)
    drafter = ModelDrafter(draft) if which == "draft" else NGramDrafter(max_n=1)
    counts = torch.zeros(len(conts), dtype=torch.float64)
    for _ in range(N):
        out = speculative_generate(target, drafter, x, 3, 2, generator=g, stats=False, **options)
        counts[(out[3:] * torch.tensor([Vs * Vs, Vs, 1])).sum()] += 1
    assert counts[law == 0].sum() == 0
    big, rare = law * N >= 5, (law * N < 5) & (law > 0)  # merge the rare cells into one
    obs = torch.cat([counts[big], counts[rare].sum()[None]])
    exp = torch.cat([law[big], law[rare].sum()[None]]) * N
    keep = exp > 0
    assert stats.chisquare(obs[keep].numpy(), (exp[keep] / exp[keep].sum() * N).numpy()).pvalue > 1e-3


def test_stats_are_consistent(pair):
    target, draft = pair
    for drafter in (ModelDrafter(draft), NGramDrafter()):
        out, s = speculative_generate(target, drafter, prompt(), 37, 4, generator=gen(7))
        assert s.new_tokens == 37 == sum(s.accepted) + s.steps
        assert s.target_calls == s.steps and s.wall_time > 0
        assert 0 < s.draft_time + s.target_time < s.wall_time
        assert all(0 <= a <= d <= 4 for a, d in zip(s.accepted, s.drafted))
        assert len(s.betas) == sum(min(a + 1, d) for a, d in zip(s.accepted, s.drafted))
        assert s.tokens_per_call == pytest.approx(37 / s.steps)
        assert s.mean_accepted == pytest.approx(sum(s.accepted) / s.steps)
        assert 0 <= s.acceptance_rate <= 1
        assert s.draft_calls == (sum(s.drafted) if isinstance(drafter, ModelDrafter) else 0)
    out, s = speculative_generate(target, ModelDrafter(draft), prompt(), 0, 4)
    assert torch.equal(out, prompt()) and s.steps == 0 and s.tokens_per_call == 0


def test_drafts_capped_by_the_draft_context(pair):
    """A draft with a shorter context proposes fewer, then no tokens: plain target steps take over."""
    target, _ = pair
    short = tiny(4, n_layer=1, block_size=12)
    x = prompt()
    out, s = speculative_generate(target, ModelDrafter(short), x, 40, 4, greedy=True)
    assert torch.equal(out, generate(target, x, 40, greedy=True))
    assert s.drafted[-1] == 0 and s.drafted[0] == 4


def test_ngram_drafter():
    d = NGramDrafter(max_n=2)
    seq = torch.tensor([[5, 1, 2, 3, 4, 1, 2]])
    assert d.propose(seq, 3).tokens.tolist() == [[3, 4, 1]]  # after the earlier "1 2"
    assert d.propose(torch.tensor([[7, 7, 7]]), 4).tokens.tolist() == [[7, 7, 7, 7]]  # a loop goes on
    assert d.propose(torch.tensor([[1, 2, 3]]), 4).tokens.shape == (1, 0)  # no match: nothing
    assert d.propose(torch.tensor([[1]]), 4).tokens.shape == (1, 0)
    draft = d.propose(seq, 2)
    assert draft.probs is None and draft.calls == 0


def test_verify_on_device_of_inputs_and_float32():
    p, q = PAIRS["random"]
    n, y = verify(p.float().expand(3, 2, -1), q.float().expand(3, 1, -1), torch.tensor([[0], [1], [2]]), gen(0))
    assert n.shape == (3,) and y.dtype == torch.long


# --- theory -------------------------------------------------------------------------------------------


def test_theory_sanity_values():
    assert expected_tokens(0.8, 4) == pytest.approx(3.3616)
    assert speedup(0.8, 4, 0.05) == pytest.approx(2.8013, abs=1e-4)
    assert optimal_gamma(0.8, 0.05) == 8 and speedup(0.8, 8, 0.05) == pytest.approx(3.0921, abs=1e-4)
    assert expected_tokens(1.0, 4) == 5 and expected_tokens(0.0, 4) == 1 and expected_tokens(0.5, 0) == 1
    v = lambda g: 1 + 0.1 * g  # a verify pass that costs more with more positions
    assert speedup(0.8, 4, 0.05, verify_cost=v) == pytest.approx(3.3616 / 1.6)
    assert speedup(0.8, 4, 0.05, verify_cost=1.4) == pytest.approx(3.3616 / 1.6)
    assert optimal_gamma(0.8, 0.05, verify_cost=v) < 8
    assert optimal_gamma(1.0, 0.0, max_gamma=12) == 12 and optimal_gamma(0.1, 0.5) == 1


def test_theory_monotone_and_vectorized():
    alphas = torch.linspace(0, 1, 21).numpy()
    e = expected_tokens(alphas, 5)
    assert e.shape == (21,) and (e[1:] > e[:-1]).all() and e[-1] == 6
    gammas = list(range(0, 20))
    assert all(a < b for a, b in zip(expected_tokens(0.7, gammas)[:-1], expected_tokens(0.7, gammas)[1:]))
    cs = [0.0, 0.01, 0.1, 0.5, 1.0]
    s = [speedup(0.8, 4, c) for c in cs]
    assert all(a > b for a, b in zip(s, s[1:])) and s[-1] < 1  # a draft as slow as the target never pays


def test_acceptance_rate_is_one_minus_tv():
    g = gen(8)
    p = torch.rand(2, 3, 7, generator=g).softmax(-1)
    q = torch.rand(2, 3, 7, generator=g).softmax(-1)
    beta = acceptance_rate(p, q)
    assert beta.shape == (2, 3)
    torch.testing.assert_close(beta, 1 - 0.5 * (p - q).abs().sum(-1))
    torch.testing.assert_close(acceptance_rate(p, p), torch.ones(2, 3))


# --- errors ---------------------------------------------------------------------------------------------


def _ok():
    p, q = PAIRS["random"]
    return p.expand(2, 3, -1).clone(), q.expand(2, 2, -1).clone(), torch.tensor([[0, 1], [2, 3]])


def _bad(**change):
    p, q, x = _ok()
    args = {"p": p, "q": q, "draft_tokens": x}
    for key, f in change.items():
        args[key] = f(args[key])
    return args


@pytest.mark.parametrize("args, name", [
    (_bad(p=lambda p: p * 1.1), "p"),
    (_bad(q=lambda q: q * 0.9), "q"),
    (_bad(p=lambda p: p + torch.where(torch.arange(V) == 0, -p[0, 0, 0] - 0.01, (p[0, 0, 0] + 0.01) / (V - 1))),
     ">= 0"),  # a negative entry in rows that still sum to 1
    (_bad(p=lambda p: p.masked_fill(torch.arange(V) == 0, float("nan"))), "p"),
    (_bad(p=lambda p: p[:, :2]), "p"),  # gamma + 1 positions expected
    (_bad(q=lambda q: q[:1]), "q"),  # batch mismatch
    (_bad(q=lambda q: torch.cat([q, torch.zeros(2, 2, 1, dtype=q.dtype)], -1)), "vocabulary mismatch"),
    (_bad(draft_tokens=lambda x: x[:, :0]), "gamma"),
    (_bad(draft_tokens=lambda x: x.float()), "draft_tokens"),
    (_bad(draft_tokens=lambda x: x + 10), "draft_tokens"),
    (_bad(q=lambda q: q.masked_fill(torch.arange(V) == 0, 0) / q.masked_fill(torch.arange(V) == 0, 0).sum(-1,
          keepdim=True)), "cannot have been drawn"),
])
def test_verify_errors(args, name):
    with pytest.raises(ValueError, match=name):
        verify(**args)


def test_other_errors(pair):
    target, draft = pair
    x = prompt()
    for kwargs, name in [({"gamma": 0}, "gamma"), ({"max_new_tokens": 60}, "max_new_tokens"),
                         ({"prompt": x.expand(2, -1)}, "prompt"), ({"prompt": x.float()}, "prompt"),
                         ({"max_new_tokens": -1}, "max_new_tokens"), ({"temperature": 0.0}, "temperature")]:
        args = {"prompt": x, "max_new_tokens": 5, "gamma": 2, **kwargs}
        with pytest.raises(ValueError, match=name):
            speculative_generate(target, ModelDrafter(draft), args.pop("prompt"), args.pop("max_new_tokens"),
                                 args.pop("gamma"), **args)
    with pytest.raises(TypeError, match="drafter"):
        speculative_generate(target, draft, x, 5, 2)
    with pytest.raises(ValueError, match="drafter: .*vocabulary"):
        speculative_generate(target, ModelDrafter(tiny(5, n_layer=1, vocab_size=7)), torch.tensor([1, 2]), 5, 2)

    class Greedy(Drafter):  # proposes more than asked
        def propose(self, seq, gamma, options=PLAIN, generator=None):
            return Draft(seq.new_zeros(1, gamma + 1), None)

    with pytest.raises(ValueError, match="drafter"):
        speculative_generate(target, Greedy(), x, 5, 2)
    with pytest.raises(ValueError, match="target_tokens"):
        verify_greedy(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="overrides"):
        ModelDrafter(draft, beam=3)
    with pytest.raises(ValueError, match="temperature"):
        ModelDrafter(draft, temperature=0)
    for kwargs, name in [({"max_n": 0}, "max_n"), ({"max_n": 2, "min_n": 3}, "min_n")]:
        with pytest.raises(ValueError, match=name):
            NGramDrafter(**kwargs)
    for call, name in [(lambda: expected_tokens(1.2, 3), "alpha"), (lambda: expected_tokens(0.5, -1), "gamma"),
                       (lambda: expected_tokens(0.5, 2.5), "gamma"), (lambda: speedup(0.5, 2, -0.1), "c"),
                       (lambda: speedup(0.5, 2, 0.1, verify_cost=0), "verify_cost"),
                       (lambda: optimal_gamma(0.5, 0.1, max_gamma=0), "max_gamma"),
                       (lambda: acceptance_rate(torch.ones(3) / 3, torch.ones(4) / 4), "q"),
                       (lambda: NGramDrafter().propose(torch.tensor([1, 2]), 2), "seq")]:
        with pytest.raises(ValueError, match=name):
            call()


@pytest.mark.parametrize("which", ["draft", "ngram"])
def test_speculative_on_a_device_matches_the_cpu(pair, device, which):
    """Models on the device, uniforms and Gumbel noise from a CPU generator: speculative sampling accepts and
    draws what it does on the CPU (same tokens, same acceptances, same betas); greedy decoding equals
    greedy generation there; a generator on the device works too; a bad prompt is refused up front."""
    import copy

    target, draft = pair
    on_target, on_draft = copy.deepcopy(target).to(device), copy.deepcopy(draft).to(device)
    make = {"draft": ModelDrafter, "ngram": lambda model: NGramDrafter()}[which]
    x = prompt()
    out, s = speculative_generate(target, make(draft), x, 24, 3, generator=gen(0), top_k=8)
    out_d, s_d = speculative_generate(on_target, make(on_draft), x.to(device), 24, 3, generator=gen(0), top_k=8)
    assert out_d.device.type == device.type and torch.equal(out_d.cpu(), out)
    assert s_d.accepted == s.accepted and s_d.betas == pytest.approx(s.betas, abs=1e-5)
    greedy = speculative_generate(on_target, make(on_draft), x.to(device), 24, 3, greedy=True, stats=False)
    assert torch.equal(greedy, generate(on_target, x.to(device), 24, greedy=True))
    own = speculative_generate(on_target, make(on_draft), x.to(device), 12, 3, stats=False,
                               generator=torch.Generator(device=device).manual_seed(0))
    assert own.shape == (17,) and torch.equal(own[:5].cpu(), x)
    with pytest.raises(ValueError, match="prompt: token ids must lie in"):
        speculative_generate(on_target, make(on_draft), torch.tensor([1, 13], device=device), 4, 2)
