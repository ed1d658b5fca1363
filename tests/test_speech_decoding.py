"""arlib.speech.decoding: lexicon-constrained CTC search, the CTC prefix score, joint CTC/attention beam
search and attention rescoring, each checked against a slow or trusted path."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from arlib.speech.ctc import ctc_forward, greedy_decode, prefix_beam_search
from arlib.speech.decoding import (
    CTCPrefixScorer,
    attention_rescore,
    joint_beam_search,
    lexicon_beam_search,
    snap_to_lexicon,
)
from arlib.speech.models import BLANK, EOS, AttentionDecoder, TranscriptVocab


def _random_log_probs(T, C, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, C, generator=g, dtype=torch.float64) * scale).log_softmax(-1)


def _collapse(path):
    out, prev = [], None
    for s in path:
        if s != prev and s != BLANK:
            out.append(s)
        prev = s
    return tuple(out)


def _decoder(seed, vocab_size=9, std=1.0, max_len=12):
    """A tiny decoder with large random weights (far from uniform) whose padding id 0 is improbable: the
    final LayerNorm's bias points along u and the (tied) embedding of id 0 against it."""
    dec = AttentionDecoder(vocab_size, d=16, layers=1, heads=2, ff=32, max_len=max_len).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in dec.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * std)
        u = torch.randn(16, generator=g)
        u /= u.norm()
        dec.ln.bias.copy_(3 * u)
        dec.embed.weight[BLANK] = -5 * u
    memory = torch.randn(1, 7, 16, generator=g)
    return dec, memory, torch.tensor([7])


def _attention_log_prob(dec, memory, lengths, labels):
    """log p_att(labels, EOS | x), one hypothesis at a time."""
    logp = dec(torch.tensor([[EOS] + list(labels)]), memory, lengths).log_softmax(-1)[0]
    return sum(logp[i, t].item() for i, t in enumerate(list(labels) + [EOS]))


# ----------------------------------------------------------------------------------------------- lexicon


def test_snap_to_lexicon_picks_the_nearest_word_and_the_first_of_ties():
    lexicon = ["one", "two", "stop", "go"]
    assert snap_to_lexicon("twu stap", lexicon) == "two stop"
    assert snap_to_lexicon("  two   go ", lexicon) == "two go"  # spaces normalized
    assert snap_to_lexicon("", lexicon) == ""
    assert snap_to_lexicon("ab", ["ac", "ad"]) == "ac" and snap_to_lexicon("ab", ["ad", "ac"]) == "ad"  # ties
    assert snap_to_lexicon("xyzzy", ["a", "xyz"]) == "xyz"


def _spelled(vocab, frames, rest=0.02):
    """Log-probs (T, V): each frame gives its main symbol (a character, "_" for the blank) its share and
    ``rest`` to every other id; a frame may be a dict {symbol: p} to split the mass."""
    rows = []
    for frame in frames:
        row = torch.full((vocab.size,), rest, dtype=torch.float64)
        for sym, p in (frame.items() if isinstance(frame, dict) else [(frame, None)]):
            i = BLANK if sym == "_" else vocab.encode(sym, strict=False)[0]
            row[i] = p if p is not None else 1.0
        rows.append(row / row.sum())
    return torch.stack(rows).log()


def test_lexicon_search_equals_the_unconstrained_search_when_its_best_is_a_word_sequence():
    vocab = TranscriptVocab()
    frames = list("_tt_w_oo_ _s_t_o_p_")
    lp = _spelled(vocab, frames)
    free = prefix_beam_search(lp, beam=8)
    assert vocab.decode(list(free[0][0])) == "two stop"
    best = lexicon_beam_search(lp, vocab, beam=8)[0]
    assert best[0] == free[0][0]
    # Its score is a sum over the paths that stayed in the beam: at most the exact CTC probability, and
    # with fewer rivals it keeps at least as many paths as the unconstrained search did.
    target = torch.tensor([best[0]])
    exact = float(ctc_forward(lp[None], [len(frames)], target, [len(best[0])])[0])
    assert free[0][1] - 1e-9 <= best[1] <= exact + 1e-9
    # Where pruning drops nothing that matters (one label tried per frame), the two searches agree exactly.
    lp = _spelled(vocab, frames, rest=1e-3)
    free, best = prefix_beam_search(lp, beam=8, prune=-5.0)[0], lexicon_beam_search(lp, vocab, beam=8, prune=-5.0)[0]
    assert best[0] == free[0] and best[1] == pytest.approx(free[1], abs=1e-12)


def test_lexicon_search_corrects_a_non_word_that_the_unconstrained_search_prefers():
    vocab = TranscriptVocab()
    lp = _spelled(vocab, ["_", "t", "_", "w", "_", {"a": 0.5, "o": 0.4}, "_"])
    assert vocab.decode(list(prefix_beam_search(lp, beam=8)[0][0])) == "twa"
    out = lexicon_beam_search(lp, vocab, beam=8)
    assert vocab.decode(list(out[0][0])) == "two"
    assert out[0][1] < prefix_beam_search(lp, beam=8)[0][1]  # a less probable, but spellable, transcript


@pytest.mark.parametrize("seed", range(3))
def test_lexicon_search_returns_only_sequences_of_lexicon_words(seed):
    vocab = TranscriptVocab()
    lp = _random_log_probs(40, vocab.size, seed, scale=3.0)
    lexicon = ["one", "two", "six", "go", "on", "no"]
    free = {vocab.decode(list(h)) for h, _ in prefix_beam_search(lp, beam=8)}
    assert not free <= {""} | set(lexicon)  # the unconstrained output is not made of these words
    out = lexicon_beam_search(lp, vocab, lexicon, beam=8, prune=-1e9)
    assert out and [s for _, s in out] == sorted((s for _, s in out), reverse=True)
    for ids, score in out:
        text = vocab.decode(list(ids))
        assert text == "" or all(w in lexicon for w in text.split(" ")) and " ".join(text.split()) == text
        assert score <= 0


def test_lexicon_search_keeps_a_complete_hypothesis_alive_when_the_beam_holds_none():
    vocab = TranscriptVocab()
    lp = _spelled(vocab, ["t"], rest=1e-4)  # one frame: "t" is no word, and beam 1 would drop the empty prefix
    out = lexicon_beam_search(lp, vocab, beam=1)
    assert [vocab.decode(list(ids)) for ids, _ in out] == [""]  # the only whole transcript: no words
    lp = _spelled(vocab, list("go") + [" "] + list("tw"), rest=1e-4)  # "go tw": the audio stops mid-word
    texts = [vocab.decode(list(ids)) for ids, _ in lexicon_beam_search(lp, vocab, beam=2)]
    assert texts and all(t == "" or all(w in vocab.words for w in t.split()) for t in texts)
    assert texts[0] == "go"  # the best whole transcript, though "go tw" was more probable


# ---------------------------------------------------------------------------------------- prefix score


@pytest.mark.parametrize("seed", range(3))
def test_prefix_score_with_eos_is_the_ctc_log_likelihood(seed):
    lp = _random_log_probs(12, 6, seed)
    scorer = CTCPrefixScorer(lp)
    for labels in ([2, 3, 4], [2, 2, 5], [5], [], [3, 4, 3, 4, 3, 3]):
        target = torch.tensor([labels + [0]], dtype=torch.long)
        ours = scorer.score(labels + [EOS])
        assert ours == pytest.approx(float(ctc_forward(lp[None], [12], target, [len(labels)])[0]), abs=1e-9)
        ref = -F.ctc_loss(lp[:, None], target, [12], [len(labels)], reduction="sum")
        assert ours == pytest.approx(float(ref), abs=1e-9)


@pytest.mark.parametrize("T", [4, 5])
def test_prefix_score_sums_every_alignment_that_starts_with_the_prefix(T):
    # C = 4: blank, EOS (a column CTC may still put mass on) and two labels; every one of the C^T paths
    lp = _random_log_probs(T, 4, seed=T, scale=1.5)
    scorer = CTCPrefixScorer(lp)
    paths = [(_collapse(p), math.exp(sum(lp[t, s].item() for t, s in enumerate(p))))
             for p in itertools.product(range(4), repeat=T)]
    assert sum(p for _, p in paths) == pytest.approx(1.0)
    for prefix in [(2,), (3,), (2, 2), (2, 3), (3, 2, 3), (2, 2, 2), (2, 3, 2, 3)]:
        exact = sum(p for out, p in paths if out[:len(prefix)] == prefix)  # continuations included
        whole = sum(p for out, p in paths if out == prefix)
        assert math.exp(scorer.score(list(prefix))) == pytest.approx(exact, rel=1e-9, abs=1e-300)
        assert math.exp(scorer.score(list(prefix) + [EOS])) == pytest.approx(whole, rel=1e-9, abs=1e-300)
    assert scorer.score([]) == 0.0


def _algorithm_2(lp, prefix, c, blank=0):
    """Watanabe et al.'s recursion frame by frame (probabilities, float64): (gamma^n, gamma^b, psi) of
    prefix + c for frames t = 0..T, the slow path that the closed form must equal."""
    y = lp.exp()
    T = len(y)
    gn, gb = torch.zeros(T + 1, dtype=torch.float64), torch.zeros(T + 1, dtype=torch.float64)
    gb[0] = 1.0
    for t in range(1, T + 1):
        gb[t] = gb[t - 1] * y[t - 1, blank]  # the empty prefix: blanks only
    for k, label in enumerate(list(prefix) + [c]):
        last = prefix[k - 1] if k else None
        phi = gb + (gn if label != last else 0)
        hn, hb, psi = torch.zeros(T + 1, dtype=torch.float64), torch.zeros(T + 1, dtype=torch.float64), 0.0
        for t in range(1, T + 1):
            hn[t] = (hn[t - 1] + phi[t - 1]) * y[t - 1, label]
            hb[t] = (hb[t - 1] + hn[t - 1]) * y[t - 1, blank]
            psi += float(phi[t - 1] * y[t - 1, label])
        gn, gb = hn, hb
    return gn, gb, psi


def test_extend_scores_every_hypothesis_and_candidate_like_the_frame_by_frame_recursion():
    lp = _random_log_probs(9, 6, seed=4)
    scorer = CTCPrefixScorer(lp)
    prefixes = [(), (2,), (3, 3), (4, 2)]
    states = []
    for prefix in prefixes:  # each prefix's state, grown one label at a time
        r, last = scorer.initial_state(), EOS
        for c in prefix:
            _, r = scorer.extend(r, torch.tensor([last]), torch.tensor([[c]]))
            r, last = r[..., 0], c
        states.append(r)
    state = torch.cat(states, dim=2)  # (T + 1, 2, 4)
    last = torch.tensor([p[-1] if p else EOS for p in prefixes])
    candidates = torch.tensor([[2, 3, 5, EOS]] * 4)  # a repeat of each prefix's last label included
    psi, new = scorer.extend(state, last, candidates)
    assert psi.shape == (4, 4) and new.shape == (10, 2, 4, 4)
    for b, prefix in enumerate(prefixes):
        for k, c in enumerate(candidates[b].tolist()):
            if c == EOS:
                assert psi[b, k].item() == pytest.approx(scorer.score(list(prefix) + [EOS]), abs=1e-9)
                continue
            gn, gb, ref = _algorithm_2(lp, prefix, c)
            assert psi[b, k].exp().item() == pytest.approx(ref, rel=1e-9)
            assert torch.allclose(new[:, 0, b, k].exp(), gn, rtol=1e-9, atol=1e-300)
            assert torch.allclose(new[:, 1, b, k].exp(), gb, rtol=1e-9, atol=1e-300)


def test_a_prefix_longer_than_the_frames_scores_minus_infinity():
    scorer = CTCPrefixScorer(_random_log_probs(3, 5, seed=0))
    assert scorer.score([2, 3, 4]) > -math.inf
    assert scorer.score([2, 3, 4, 2]) == -math.inf and scorer.score([2, 2, 2]) == -math.inf  # repeats need blanks
    assert scorer.score([2, 3, 4, 2, EOS]) == -math.inf


# ---------------------------------------------------------------------------------------- joint search


@pytest.mark.parametrize("seed,std", [(0, 0.5), (7, 0.5), (2, 1.0), (5, 1.0)])
def test_joint_search_without_ctc_is_the_attention_beam_search(seed, std):
    dec, memory, lengths = _decoder(seed, std=std)
    ctc = _random_log_probs(20, 9, seed)
    ref = dec.beam_search(memory, lengths, beam=4)
    assert len(ref) > 1 and not any(BLANK in h for h, _ in ref)
    ours = joint_beam_search(dec, memory, lengths, ctc, beam=4, ctc_weight=0.0, pre_beam=8)
    assert [h for h, _ in ours] == [h for h, _ in ref]
    assert [s for _, s in ours] == pytest.approx([s for _, s in ref], abs=1e-5)
    assert joint_beam_search(dec, memory, lengths, ctc, beam=4, ctc_weight=0.0)[0][0] == ref[0][0]


def test_joint_search_with_only_ctc_follows_a_peaked_ctc_distribution():
    dec, memory, lengths = _decoder(5)
    path = [0, 3, 3, 0, 5, 0, 0, 4, 4, 0, 4, 6, 0]
    lp = torch.full((len(path), 9), 0.02)
    lp[torch.arange(len(path)), torch.tensor(path)] = 1.0
    lp = (lp / lp.sum(-1, keepdim=True)).log()
    greedy = greedy_decode(lp[None])[0]
    assert greedy == [3, 5, 4, 4, 6] and dec.beam_search(memory, lengths, beam=4)[0][0] != greedy
    best, score = joint_beam_search(dec, memory, lengths, lp, beam=4, ctc_weight=1.0)[0]
    assert best == greedy
    assert score == pytest.approx(CTCPrefixScorer(lp).score(greedy + [EOS]), abs=1e-9)


@pytest.mark.parametrize("ctc_weight", [0.3, 0.7])
def test_joint_search_scores_are_the_weighted_sum_of_both_heads(ctc_weight):
    dec, memory, lengths = _decoder(0)
    lp = _random_log_probs(10, 9, seed=1, scale=2.0)
    out = joint_beam_search(dec, memory, lengths, lp, beam=3, ctc_weight=ctc_weight)
    scorer = CTCPrefixScorer(lp)
    assert [s for _, s in out] == sorted((s for _, s in out), reverse=True)
    for labels, score in out:
        expected = ctc_weight * scorer.score(labels + [EOS]) + \
            (1 - ctc_weight) * _attention_log_prob(dec, memory, lengths, labels)
        assert score == pytest.approx(expected, abs=1e-4)


def test_joint_search_never_outputs_more_labels_than_ctc_has_frames():
    dec, memory, lengths = _decoder(1, max_len=20)
    lp = _random_log_probs(3, 9, seed=2)
    for labels, score in joint_beam_search(dec, memory, lengths, lp, beam=4, ctc_weight=0.5):
        assert len(labels) <= 3 and score > -math.inf


# ------------------------------------------------------------------------------------------ rescoring


def test_attention_rescore_matches_one_hypothesis_at_a_time_and_mixes_the_scores():
    dec, memory, lengths = _decoder(0)
    nbest = [((2, 3, 4), -1.0), ((5,), -1.5), ((), -2.0), ((3, 3, 7, 8, 2, 6), -4.0)]
    att = {ids: _attention_log_prob(dec, memory, lengths, ids) for ids, _ in nbest}
    ctc = dict(nbest)
    out = attention_rescore(dec, memory, lengths, nbest, ctc_weight=0.0)  # one batched pass
    assert sorted(ids for ids, *_ in out) == sorted(ctc)
    for ids, combined, c, a in out:
        assert a == pytest.approx(att[ids], abs=1e-4) and combined == pytest.approx(a, abs=1e-9)
        assert c == ctc[ids]
    assert [ids for ids, *_ in out] == sorted(att, key=lambda i: -att[i]) != [ids for ids, _ in nbest]
    kept = attention_rescore(dec, memory, lengths, nbest, ctc_weight=1.0)
    assert [ids for ids, *_ in kept] == [ids for ids, _ in nbest]  # CTC's order
    half = attention_rescore(dec, memory, lengths, nbest, ctc_weight=0.5)
    for ids, combined, *_ in half:
        assert combined == pytest.approx(0.5 * ctc[ids] + 0.5 * att[ids], abs=1e-4)
    assert [row[1] for row in half] == sorted((row[1] for row in half), reverse=True)


def test_attention_rescore_handles_a_single_empty_hypothesis():
    dec, memory, lengths = _decoder(3)
    (ids, combined, c, a), = attention_rescore(dec, memory, lengths, [((), -0.5)], ctc_weight=0.25)
    assert ids == () and a == pytest.approx(_attention_log_prob(dec, memory, lengths, []), abs=1e-5)
    assert combined == pytest.approx(0.25 * -0.5 + 0.75 * a, abs=1e-9)
