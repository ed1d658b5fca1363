"""Tests of arlib.text.sampling: logit processors (property tests), the sampler (chi-square), generate."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from arlib.text.gpt import GPT, GPTConfig
from arlib.text.sampling import (
    draw,
    entropy,
    generate,
    min_p,
    process_logits,
    sample,
    sample_probs,
    temperature,
    top_k,
    top_p,
)

# Random logits (B, V) from a seed, a batch, a vocabulary and a scale: continuous, so no ties.
logits_st = st.builds(
    lambda seed, B, V, scale: scale * torch.randn(B, V, generator=torch.Generator().manual_seed(seed)),
    st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 60), st.floats(0.1, 8.0))

TOL = 1e-5


def kept(logits):
    return torch.isfinite(logits)


def assert_distribution(logits):
    p = logits.softmax(-1)
    assert torch.isfinite(p).all() and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(len(p)), rtol=0, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(logits=logits_st, k=st.integers(1, 80))
def test_top_k_keeps_exactly_k(logits, k):
    out = top_k(logits, k)
    assert (kept(out).sum(-1) == min(k, logits.shape[1])).all()
    assert torch.equal(out[kept(out)], logits[kept(out)])  # kept logits untouched
    # every kept logit is >= every dropped one
    lowest_kept = out.masked_fill(~kept(out), math.inf).min(-1).values
    highest_dropped = logits.masked_fill(kept(out), -math.inf).max(-1).values
    assert (lowest_kept >= highest_dropped).all()
    assert_distribution(out)


def test_top_k_keeps_ties():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
    assert kept(top_k(logits, 2)).tolist() == [[True, True, True, False]]


@settings(max_examples=80, deadline=None)
@given(logits=logits_st, p=st.floats(0.01, 1.0))
def test_top_p_keeps_minimal_set_with_mass_p(logits, p):
    out = top_p(logits, p)
    probs = logits.softmax(-1)
    keep = kept(out)
    mass = (probs * keep).sum(-1)
    smallest = probs.masked_fill(~keep, math.inf).min(-1).values
    assert keep.any(-1).all()
    assert (keep[torch.arange(len(logits)), probs.argmax(-1)]).all()  # the top token always stays
    assert (mass >= p - TOL).all()  # reaches p ...
    assert (mass - smallest < p + TOL).all()  # ... and no kept token could go
    highest_dropped = probs.masked_fill(keep, -math.inf).max(-1).values
    assert (smallest >= highest_dropped).all()  # the set is a top set
    assert_distribution(out)


@settings(max_examples=60, deadline=None)
@given(logits=logits_st, p=st.floats(0.0, 1.0))
def test_min_p_rule(logits, p):
    out = min_p(logits, p)
    probs = logits.softmax(-1)
    threshold = p * probs.max(-1, keepdim=True).values
    keep = kept(out)
    assert (probs[keep] >= (threshold.expand_as(probs)[keep]) * (1 - TOL)).all()
    assert (probs[~keep] <= (threshold.expand_as(probs)[~keep]) * (1 + TOL)).all()
    assert keep.any(-1).all()
    assert_distribution(out)


@settings(max_examples=60, deadline=None)
@given(logits=logits_st, p=st.floats(0.0, 1.0), q=st.floats(0.0, 1.0), t=st.floats(0.2, 5.0))
def test_min_p_keeps_the_argmax_and_nests_and_follows_the_temperature(logits, p, q, t):
    lo, hi = sorted((p, q))
    loose, strict = kept(min_p(logits, lo)), kept(min_p(logits, hi))
    assert loose[torch.arange(len(logits)), logits.argmax(-1)].all()  # the top token always stays
    assert (loose | ~strict).all()  # a larger p_min keeps a subset
    # temperature first, then min-p: at temperature t the threshold on the raw logits is t * log p
    hot = kept(process_logits(logits, temperature=t, min_p=hi))
    if hi > 0:
        gap = logits.max(-1, keepdim=True).values - logits  # (B, V) >= 0
        margin = (gap - t * math.log(1 / hi)).abs() > 1e-4  # away from float ties at the threshold
        assert torch.equal(hot[margin], (gap <= t * math.log(1 / hi))[margin])


@settings(max_examples=40, deadline=None)
@given(logits=logits_st, t=st.floats(0.05, 20.0), k=st.integers(1, 10), p=st.floats(0.05, 1.0),
       m=st.floats(0.0, 0.9))
def test_combined_processors_give_a_distribution(logits, t, k, p, m):
    out = process_logits(logits, temperature=t, top_k=k, top_p=p, min_p=m)
    assert kept(out).sum(-1).le(k).all()
    assert_distribution(out)
    draws = sample(logits, torch.Generator().manual_seed(0), temperature=t, top_k=k, top_p=p, min_p=m)
    assert draws.shape == (len(logits),)
    assert kept(out)[torch.arange(len(logits)), draws].all()  # never a filtered token


@settings(max_examples=40, deadline=None)
@given(logits=logits_st, t1=st.floats(0.05, 5.0), t2=st.floats(0.05, 5.0))
def test_temperature_scales_and_orders_entropy(logits, t1, t2):
    torch.testing.assert_close(temperature(logits, t1), logits / t1)
    lo, hi = sorted((t1, t2))
    assert (entropy(temperature(logits, lo)) <= entropy(temperature(logits, hi)) + 1e-4).all()


def test_entropy():
    V = 7
    torch.testing.assert_close(entropy(torch.zeros(2, V)), torch.full((2,), math.log(V)))
    one_hot = torch.full((1, V), -math.inf)
    one_hot[0, 3] = 0.0
    assert entropy(one_hot).item() == 0.0
    logits = torch.randn(5, V, generator=torch.Generator().manual_seed(0))
    expected = stats.entropy(logits.softmax(-1).numpy(), axis=-1)
    np.testing.assert_allclose(entropy(logits).numpy(), expected, rtol=1e-5)
    assert entropy(torch.zeros(2, 3, V)).shape == (2, 3)


def test_greedy_is_argmax_and_reproducible_draws():
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(logits, greedy=True), logits.argmax(-1))
    a = sample(logits, torch.Generator().manual_seed(5))
    b = sample(logits, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    draws = torch.stack([sample(logits, torch.Generator().manual_seed(s)) for s in range(20)])
    assert len(draws.unique()) > 1


def chi_square_pvalue(draws: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of ``draws`` against ``probs`` (tokens of zero mass must not occur)."""
    observed = torch.bincount(draws, minlength=len(probs)).double()
    support = probs > 0
    assert observed[~support].sum() == 0
    probs = probs[support].double() / probs[support].double().sum()
    return stats.chisquare(observed[support].numpy(), probs.numpy() * len(draws)).pvalue


@pytest.mark.parametrize("t", [1.0, 0.7])
def test_sample_matches_softmax_chi_square(t):
    """Draws at temperature t follow softmax(logits / t); a slightly wrong distribution is rejected."""
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0])
    n = 40_000
    draws = sample(logits.expand(n, -1), torch.Generator().manual_seed(123), temperature=t)
    assert chi_square_pvalue(draws, (logits / t).softmax(-1)) > 1e-3
    wrong = (logits / t + torch.tensor([0.1, 0, 0, 0, 0, 0])).softmax(-1)  # about 1 % mass moved
    assert chi_square_pvalue(draws, wrong) < 1e-6


def test_sample_top_p_renormalises():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 30_000
    draws = sample(logits.expand(n, -1), torch.Generator().manual_seed(7), top_p=0.8)
    filtered = top_p(logits[None], 0.8)[0].softmax(-1)
    assert set(draws.unique().tolist()) == set(torch.nonzero(filtered).flatten().tolist())
    assert chi_square_pvalue(draws, filtered) > 1e-3


def test_sample_probs_never_draws_zero_mass():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).expand(5000, -1)
    draws = sample_probs(probs, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}
    with pytest.raises(ValueError, match="probs"):
        sample_probs(torch.zeros(2, 3))


def test_draw_follows_softmax_for_any_leading_shape_and_skips_minus_inf():
    logits = torch.tensor([1.0, 0.5, -float("inf"), -0.5, 2.0])
    draws = draw(logits.expand(400, 100, -1), torch.Generator().manual_seed(5))  # (400, 100) ids
    assert draws.shape == (400, 100) and draws.dtype == torch.long
    assert chi_square_pvalue(draws.flatten(), logits.softmax(-1)) > 1e-3
    wrong = (logits + torch.tensor([0.1, 0, 0, 0, 0])).softmax(-1)
    assert chi_square_pvalue(draws.flatten(), wrong) < 1e-6
    for bad in (torch.tensor(1.0), torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="logits"):
            draw(bad)


@pytest.mark.parametrize("call, name", [
    (lambda x: temperature(x, 0.0), "temperature"), (lambda x: temperature(x, -1.0), "temperature"),
    (lambda x: temperature(x, math.nan), "temperature"), (lambda x: temperature(x, True), "temperature"),
    (lambda x: top_k(x, 0), "top_k"), (lambda x: top_k(x, 2.5), "top_k"),
    (lambda x: top_p(x, 0.0), "top_p"), (lambda x: top_p(x, 1.5), "top_p"),
    (lambda x: min_p(x, -0.1), "min_p"), (lambda x: min_p(x, 1.1), "min_p"),
    (lambda x: top_k(x[0], 2), "logits"), (lambda x: top_k(x.long(), 2), "logits"),
    (lambda x: sample(x, temperature=0.0), "temperature"),
])
def test_processor_errors(call, name):
    with pytest.raises(ValueError, match=name):
        call(torch.randn(2, 5))


def test_processor_type_error():
    with pytest.raises(TypeError, match="logits"):
        top_k([[1.0, 2.0]], 1)


# --- generate -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=17, block_size=24, n_layer=2, n_head=2, n_embd=16)).eval()


def prompt(B=3, T=4, seed=1):
    return torch.randint(0, 17, (B, T), generator=torch.Generator().manual_seed(seed))


def test_generate_greedy_cache_equals_no_cache(model):
    x = prompt()
    a = generate(model, x, 20, greedy=True)
    b = generate(model, x, 20, greedy=True, use_cache=False)
    assert a.shape == (3, 24) and torch.equal(a[:, :4], x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("options", [{}, {"temperature": 0.8, "top_k": 5}, {"top_p": 0.9, "min_p": 0.05}])
def test_generate_sampled_cache_equals_no_cache(model, options):
    x = prompt()
    a = generate(model, x, 20, generator=torch.Generator().manual_seed(3), **options)
    b = generate(model, x, 20, generator=torch.Generator().manual_seed(3), use_cache=False, **options)
    assert torch.equal(a, b)
    c = generate(model, x, 20, generator=torch.Generator().manual_seed(4), **options)
    assert not torch.equal(a, c)


def test_generate_rows_are_independent(model):
    x = prompt(B=3)
    batch = generate(model, x, 10, greedy=True)
    for i in range(3):
        assert torch.equal(generate(model, x[i], 10, greedy=True), batch[i])


def test_generate_one_d_prompt_zero_tokens_and_mode(model):
    x = prompt(B=1)[0]
    out = generate(model, x, 5, greedy=True)
    assert out.shape == (9,)
    assert torch.equal(generate(model, x, 0), x)
    model.train()
    generate(model, x, 2)
    assert model.training
    model.eval()


def test_generate_sliding_window_without_cache(model):
    x = prompt(B=2, T=10)
    out = generate(model, x, 30, greedy=True, use_cache=False)  # 40 > block_size 24
    assert out.shape == (2, 40)
    # the token at position 30 saw only the last 24 tokens
    assert torch.equal(out[:, 30], model(out[:, 6:30])[:, -1].argmax(-1))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, x, 15, greedy=True)  # 25 > 24 with the cache


@pytest.mark.parametrize("kwargs, name", [
    ({"prompt": torch.zeros(2, 3)}, "prompt"), ({"prompt": torch.zeros(1, 0, dtype=torch.long)}, "prompt"),
    ({"prompt": torch.zeros(1, 1, 1, dtype=torch.long)}, "prompt"), ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"max_new_tokens": 2.0}, "max_new_tokens"), ({"temperature": 0}, "temperature"), ({"top_p": 2}, "top_p"),
])
def test_generate_errors(model, kwargs, name):
    args = {"prompt": prompt(), "max_new_tokens": 3, **kwargs}
    p, n = args.pop("prompt"), args.pop("max_new_tokens")
    with pytest.raises(ValueError, match=name):
        generate(model, p, n, **args)


@pytest.mark.parametrize("options", [{"greedy": True}, {}, {"top_p": 0.9, "min_p": 0.05}])
def test_generate_on_a_device_draws_the_cpu_tokens(model, device, options):
    """The uniforms come from the generator's device: with a CPU generator a run on the device draws the
    tokens of the CPU run, with or without the cache; a generator on the device works as well."""
    import copy

    x = prompt()
    expected = generate(model, x, 12, generator=torch.Generator().manual_seed(3), **options)
    on = copy.deepcopy(model).to(device)
    for use_cache in (True, False):
        out = generate(on, x.to(device), 12, use_cache=use_cache, generator=torch.Generator().manual_seed(3),
                       **options)
        assert out.device.type == device.type and torch.equal(out.cpu(), expected)
    own = generate(on, x.to(device), 12, generator=torch.Generator(device=device).manual_seed(3), **options)
    assert own.shape == expected.shape and torch.equal(own[:, :4].cpu(), x)


def test_generate_checks_the_prompt_once_and_the_masses_after_the_loop(model):
    """The steps skip the range check and the mass check (host syncs); the prompt is checked up front and
    the masses of every step once at the end, so bad input and a broken model still raise."""
    import copy

    with pytest.raises(ValueError, match="prompt: token ids must lie in"):
        generate(model, torch.tensor([[3, 17]]), 2)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.ln_f.weight.fill_(math.nan)  # every logit NaN: no row has positive mass
    for use_cache in (True, False):
        with pytest.raises(ValueError, match="model: its logits at new token 0 are NaN"):
            generate(broken, prompt(), 3, use_cache=use_cache, generator=torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match="model: its logits at new token 0 are NaN"):  # greedy too
            generate(broken, prompt(), 3, use_cache=use_cache, greedy=True)


def test_inverse_cdf_index_follows_the_weights_and_skips_zeros():
    import numpy as np

    from arlib.text.sampling import inverse_cdf_index

    weights = np.array([0.0, 2.0, 0.0, 1.0, 1.0, 0.0])  # unnormalized, zeros inside and at the end
    grid = (np.arange(10_000) + 0.5) / 10_000  # uniforms spread evenly over [0, 1)
    counts = np.bincount([inverse_cdf_index(weights, u) for u in grid], minlength=6)
    assert np.allclose(counts / len(grid), weights / weights.sum(), atol=1e-3)
    assert inverse_cdf_index(weights, 0.0) == 1 and inverse_cdf_index(weights, 1.0 - 1e-16) == 4
