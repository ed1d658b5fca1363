"""Beam search (arlib.text.beam) and the decoding-sweep measures (arlib.text.sample_quality)."""

from __future__ import annotations

import itertools

import pytest
import torch

from arlib.text.beam import beam_search, length_penalty
from arlib.text.gpt import GPT, GPTConfig
from arlib.text.sample_quality import (
    distinct_n,
    match_entropy,
    measure_samples,
    real_word_share,
    repetition,
    sampled_entropy,
    truncated_entropy,
)
from arlib.text.sampling import generate


@pytest.fixture(scope="module")
def peaky():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=3, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1)  # large weights: sharp, position-dependent distributions
    return model


def sequence_log_prob(model, prompt, continuation):
    x = torch.cat([prompt, torch.tensor(continuation)])[None]
    logp = torch.log_softmax(model(x[:, :-1]).double(), -1)[0, len(prompt) - 1:]
    return logp.gather(-1, x[0, len(prompt):, None]).sum().item()


@pytest.mark.parametrize("prompt", [[0, 1], [2], [1, 1, 0, 2]])
def test_full_width_beam_search_is_exhaustive(peaky, prompt):
    prompt = torch.tensor(prompt)
    scored = {c: sequence_log_prob(peaky, prompt, c) for c in itertools.product(range(3), repeat=3)}
    sequences, scores = beam_search(peaky, prompt, 3, width=27)
    ranked = sorted(scored, key=scored.get, reverse=True)
    assert [tuple(s[len(prompt):].tolist()) for s in sequences] == ranked  # every sequence, best first
    assert torch.allclose(scores, torch.tensor([scored[c] for c in ranked], dtype=torch.float64), atol=1e-5)


def test_width_one_is_greedy_and_a_wider_beam_finds_at_least_as_likely_here(peaky):
    prompt = torch.tensor([0, 2, 1])
    greedy = generate(peaky, prompt[None], 8, greedy=True)
    one, one_score = beam_search(peaky, prompt, 8, width=1)
    assert torch.equal(one, greedy)
    four, four_score = beam_search(peaky, prompt, 8, width=4)
    assert four_score[0] >= one_score[0] - 1e-6 and torch.all(four_score[:-1] >= four_score[1:])
    assert len({tuple(s.tolist()) for s in four}) == 4  # distinct hypotheses


def hypotheses(prompt, n_new, V, eos):
    """Every continuation beam search can return: ended at its first eos, or n_new tokens long."""
    for n in range(1, n_new + 1):
        for c in itertools.product(range(V), repeat=n):
            if eos not in c[:-1] and (n == n_new or c[-1] == eos):
                yield c


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_with_an_end_token_and_length_penalty_is_exhaustive_at_full_width(peaky, alpha):
    prompt, n_new, eos = torch.tensor([1, 0]), 4, 2
    scored = {c: sequence_log_prob(peaky, prompt, c) for c in hypotheses(prompt, n_new, 3, eos)}
    penalised = {c: s / length_penalty(torch.tensor(len(c), dtype=torch.float64), alpha).item()
                 for c, s in scored.items()}
    ranked = sorted(penalised, key=penalised.get, reverse=True)
    assert (ranked == sorted(scored, key=scored.get, reverse=True)) == (alpha == 0)  # the penalty reorders here
    sequences, log_probs = beam_search(peaky, prompt, n_new, width=len(scored) + 5, eos=eos, alpha=alpha)
    assert len(sequences) == len(scored) == 1 + 2 + 4 + 8 * 3  # fewer rows than the width: all there are
    found = []
    for row in sequences[:, len(prompt):].tolist():
        n = row.index(eos) + 1 if eos in row else n_new
        assert row[n:] == [eos] * (n_new - n)  # a finished hypothesis is padded with eos
        found.append(tuple(row[:n]))
    assert found == ranked  # every hypothesis, ranked by log P / lp (Wu et al. 2016, eq. 14)
    assert torch.allclose(log_probs, torch.tensor([scored[c] for c in ranked], dtype=torch.float64), atol=1e-5)


def test_a_larger_length_penalty_never_prefers_a_shorter_best_hypothesis(peaky):
    """With -log P > 0, a longer hypothesis that beats a shorter one at some alpha beats it at every
    larger alpha, so the best hypothesis's length cannot fall as alpha grows."""
    prompt, eos = torch.tensor([0, 1, 1]), 0
    lengths = []
    for alpha in (0.0, 0.5, 1.0, 2.0, 4.0):
        best = beam_search(peaky, prompt, 6, width=8, eos=eos, alpha=alpha)[0][0, len(prompt):].tolist()
        lengths.append(best.index(eos) + 1 if eos in best else 6)
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]  # here it grows from 1 to 6
    assert length_penalty(torch.tensor(7.0), 0.5).item() == pytest.approx(2**0.5)  # ((5 + 7) / 6) ** 0.5


def test_beam_search_rejects_bad_input(peaky):
    with pytest.raises(ValueError, match="width"):
        beam_search(peaky, torch.tensor([0]), 2, width=0)
    with pytest.raises(ValueError, match="n_new"):
        beam_search(peaky, torch.tensor([0]), 16, width=2)
    with pytest.raises(ValueError, match="prompt"):
        beam_search(peaky, torch.zeros(2, 3, dtype=torch.long), 2, width=2)
    with pytest.raises(ValueError, match="eos"):
        beam_search(peaky, torch.tensor([0]), 2, width=2, eos=3)
    with pytest.raises(ValueError, match="alpha"):
        beam_search(peaky, torch.tensor([0]), 2, width=2, eos=1, alpha=-0.5)


def test_text_measures():
    assert real_word_share(["xx the king is dead yy"], {"the", "king", "dead"}) == 0.75  # "is" is not known
    assert distinct_n(["abab"], 2) == 2 / 3 and distinct_n(["abcd", "abcd"], 4) == 0.5
    assert repetition("abcabcabc", 3) == 4 / 7 and repetition("abcdefg", 3) == 0
    with pytest.raises(TypeError, match="texts"):
        distinct_n("a string", 2)
    with pytest.raises(ValueError, match="text"):
        repetition("ab", 3)


def test_measure_samples_is_one_row_of_the_three_measures():
    texts = ["xx the king is dead yy", "abcabcabcabc"]
    row = measure_samples(texts, {"the", "king", "dead"}, n_distinct=3, n_repeat=3)
    assert row == {"real_words": real_word_share(texts, {"the", "king", "dead"}), "distinct": distinct_n(texts, 3),
                   "repetition": (repetition(texts[0], 3) + repetition(texts[1], 3)) / 2}
    assert row["repetition"] > 0.3 and row["real_words"] == 0.75


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.7, top_k=2), dict(temperature=1.5, min_p=0.2),
                                     dict(top_p=0.8), dict(greedy=True)])
def test_sampled_entropy_is_the_entropy_of_each_steps_sampling_distribution(peaky, options):
    from arlib.text.sampling import entropy, process_logits

    out = generate(peaky, torch.tensor([[0, 2, 1], [1, 1, 0]]), 6, generator=torch.Generator().manual_seed(0),
                   **options)
    got = sampled_entropy(peaky, out, 3, **options)
    assert got.shape == (2, 6)
    if options.get("greedy"):
        assert not got.any()
        return
    with torch.no_grad():  # step by step, as generate() saw them
        steps = [entropy(process_logits(peaky(out[:, :t])[:, -1], **options)) for t in range(3, 9)]
    torch.testing.assert_close(got, torch.stack(steps, 1), atol=1e-5, rtol=0)
    assert (got > 0).any()
    with pytest.raises(ValueError, match="prompt_length"):
        sampled_entropy(peaky, out, 9)


def test_match_entropy_hits_the_target_for_each_method():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    full = truncated_entropy(logits, "top_p", 1.0)
    for method in ("top_k", "top_p", "min_p"):
        value = match_entropy(logits, method, 0.6 * full, temperature=1.0)
        tolerance = 0.15 if method == "top_k" else 0.05  # k is an integer; p moves the entropy in steps too
        assert abs(truncated_entropy(logits, method, value) - 0.6 * full) < tolerance * full, method
    hot = match_entropy(logits, "min_p", 0.6 * full, temperature=2.0)
    assert hot > match_entropy(logits, "min_p", 0.6 * full)  # a flatter distribution needs a stricter p_min
    with pytest.raises(ValueError, match="target"):
        match_entropy(logits, "top_p", 10 * full)
    with pytest.raises(ValueError, match="method"):
        match_entropy(logits, "typical", 1.0)
