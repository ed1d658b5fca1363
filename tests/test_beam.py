"""Beam search (arlib.text.beam) and the decoding-sweep measures (arlib.text.sample_quality)."""

from __future__ import annotations

import itertools

import pytest
import torch

from arlib.text.beam import beam_search
from arlib.text.gpt import GPT, GPTConfig
from arlib.text.sample_quality import distinct_n, match_entropy, real_word_share, repetition, truncated_entropy
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


def test_beam_search_rejects_bad_input(peaky):
    with pytest.raises(ValueError, match="width"):
        beam_search(peaky, torch.tensor([0]), 2, width=0)
    with pytest.raises(ValueError, match="n_new"):
        beam_search(peaky, torch.tensor([0]), 16, width=2)
    with pytest.raises(ValueError, match="prompt"):
        beam_search(peaky, torch.zeros(2, 3, dtype=torch.long), 2, width=2)


def test_text_measures():
    assert real_word_share(["xx the king is dead yy"], {"the", "king", "dead"}) == 0.75  # "is" is not known
    assert distinct_n(["abab"], 2) == 2 / 3 and distinct_n(["abcd", "abcd"], 4) == 0.5
    assert repetition("abcabcabc", 3) == 4 / 7 and repetition("abcdefg", 3) == 0
    with pytest.raises(TypeError, match="texts"):
        distinct_n("a string", 2)
    with pytest.raises(ValueError, match="text"):
        repetition("ab", 3)


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
