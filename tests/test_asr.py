"""Chapter 5's speech recognition pieces: CTC (loss, decoding, alignment), CIF, the models, WER, inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arlib.speech.audio import spec_augment
from arlib.speech.ctc import ctc_forward, ctc_loss, greedy_decode, prefix_beam_search, token_segments, viterbi_align
from arlib.speech.error_rates import char_error_rate, edit_distance, word_error_rate
from arlib.speech.models import EOS, AttentionDecoder, CTCModel, TranscriptVocab, speech_features
from arlib.speech.paraformer import Paraformer, cif, cif_weights


def _collapse(path, blank=0):
    out, prev = [], None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return tuple(out)


def _exact_label_probs(log_probs: torch.Tensor) -> dict:
    """p(l | x) for every labelling, by enumerating every path (tiny T and C only)."""
    T, C = log_probs.shape
    probs: dict = {}
    for path in itertools.product(range(C), repeat=T):
        p = math.exp(sum(log_probs[t, s].item() for t, s in enumerate(path)))
        key = _collapse(path)
        probs[key] = probs.get(key, 0.0) + p
    return probs


# ----------------------------------------------------------------------------------------------- CTC loss


@pytest.mark.parametrize("seed", range(4))
def test_ctc_loss_matches_torch_in_value_and_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, C = 5, 15, 6
    logits = torch.randn(B, T, C, generator=g, dtype=torch.float64, requires_grad=True)
    # repeated labels (needs a blank between), an empty target, a target that fills the frames exactly
    targets = torch.tensor([[1, 1, 2, 0, 0], [3, 0, 0, 0, 0], [0, 0, 0, 0, 0], [2, 3, 2, 3, 2], [4, 4, 4, 0, 0]])
    target_lengths = torch.tensor([3, 1, 0, 5, 3])
    input_lengths = torch.tensor([15, 9, 4, 5, 15])
    for reduction in ("none", "sum", "mean"):
        ours = ctc_loss(logits.log_softmax(-1), input_lengths, targets, target_lengths, reduction=reduction)
        ref = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets, input_lengths, target_lengths,
                         reduction=reduction)
        assert torch.allclose(ours, ref, atol=1e-10)
    ours = ctc_loss(logits.log_softmax(-1), input_lengths, targets, target_lengths)
    ref = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets, input_lengths, target_lengths)
    g_ours, = torch.autograd.grad(ours, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-10)  # compared through log_softmax (torch's documented contract)


def test_ctc_forward_equals_the_sum_over_paths():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(5, 3, generator=g, dtype=torch.float64).log_softmax(-1)
    exact = _exact_label_probs(lp)
    for label in [(), (1,), (1, 1), (1, 2), (2, 1, 2)]:
        got = ctc_forward(lp[None], [5], torch.tensor([list(label) or [1]]), [len(label)]).exp().item()
        assert got == pytest.approx(exact.get(label, 0.0), rel=1e-9)
    assert sum(exact.values()) == pytest.approx(1.0)


def test_impossible_alignment_is_infinite_or_zeroed():
    lp = torch.randn(1, 3, 4).log_softmax(-1)
    y = torch.tensor([[1, 1, 1]])  # needs 5 frames (two blanks between the repeats)
    assert ctc_loss(lp, [3], y, [3], reduction="none").item() == math.inf
    assert ctc_loss(lp, [3], y, [3], reduction="none", zero_infinity=True).item() == 0.0
    assert F.ctc_loss(lp.transpose(0, 1), y, [3], [3], reduction="none").item() == math.inf


@pytest.mark.parametrize("kwargs, match", [
    (dict(log_probs=torch.zeros(2, 3)), "log_probs"),
    (dict(input_lengths=[0, 3]), "input_lengths"),
    (dict(input_lengths=[9, 3]), "input_lengths"),
    (dict(targets=torch.tensor([[0, 1], [1, 1]])), "targets"),
    (dict(targets=torch.tensor([[7, 1], [1, 1]])), "targets"),
    (dict(target_lengths=[3, 1]), "target_lengths"),
    (dict(blank=5), "blank"),
])
def test_ctc_loss_rejects_bad_input(kwargs, match):
    args = dict(log_probs=torch.full((2, 4, 3), -math.log(3)), input_lengths=[4, 3],
                targets=torch.tensor([[1, 2], [1, 1]]), target_lengths=[2, 1], blank=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ctc_loss(**args)


# ----------------------------------------------------------------------------------------------- decoding


def _posteriors(rows):
    return torch.tensor(rows, dtype=torch.float64).clamp_min(1e-12).log()


def test_greedy_collapses_repeats_and_drops_blanks():
    # frames: a a _ a b b _ _  -> "a a b" (the blank separates the two a's)
    rows = [[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 0]]
    lp = _posteriors(rows)[None]
    assert greedy_decode(lp) == [[1, 1, 2]]
    assert greedy_decode(lp, input_lengths=[3]) == [[1]]
    assert greedy_decode(_posteriors([[1, 0, 0]] * 4)[None]) == [[]]


def test_prefix_beam_search_finds_the_most_probable_labelling():
    # Greedy reads blank, blank ("") but "a" collects more probability over its paths.
    rows = [[0.5, 0.4, 0.1], [0.5, 0.4, 0.1]]
    lp = _posteriors(rows)
    exact = _exact_label_probs(lp)
    best_label = max(exact, key=exact.get)
    assert greedy_decode(lp[None]) == [[]] and best_label == (1,)
    results = prefix_beam_search(lp, beam=16)
    assert results[0][0] == best_label
    for label, score in results:  # every returned score is the exact probability of its labelling
        assert math.exp(score) == pytest.approx(exact[label], rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_prefix_beam_search_with_a_wide_beam_is_exact(seed):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(5, 3, generator=g, dtype=torch.float64) * 2).log_softmax(-1)
    exact = _exact_label_probs(lp)
    results = prefix_beam_search(lp, beam=len(exact), prune=-1e9)
    assert results[0][0] == max(exact, key=exact.get)
    assert sum(math.exp(s) for _, s in results) == pytest.approx(1.0, rel=1e-9)


def test_viterbi_alignment_is_the_best_path_of_the_transcript():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(6, 3, generator=g, dtype=torch.float64).log_softmax(-1)
    target = torch.tensor([1, 1])
    path = viterbi_align(lp, target)
    ext = [0, 1, 0, 1, 0]
    labels = [ext[s] for s in path.tolist()]
    assert _collapse(labels) == (1, 1)
    best = max((p for p in itertools.product(range(3), repeat=6) if _collapse(p) == (1, 1)),
               key=lambda p: sum(lp[t, s].item() for t, s in enumerate(p)))
    assert labels == list(best)
    segments = token_segments(path, 2)
    assert segments[0][1] <= segments[1][0]
    with pytest.raises(ValueError, match="frames"):
        viterbi_align(lp[:2], torch.tensor([1, 1]))


# ----------------------------------------------------------------------------------------------------- CIF


def _cif_loop(hidden, alpha, threshold=1.0):
    """The integrate-and-fire loop, frame by frame (alpha < 1)."""
    tokens, acc, emb = [], 0.0, torch.zeros(hidden.shape[1], dtype=hidden.dtype)
    for h, a in zip(hidden, alpha.tolist()):
        if acc + a < threshold:
            acc, emb = acc + a, emb + a * h
        else:
            part = threshold - acc
            tokens.append(emb + part * h)
            acc, emb = a - part, (a - part) * h
    return torch.stack(tokens) if tokens else torch.zeros(0, hidden.shape[1], dtype=hidden.dtype)


def test_cif_equals_the_loop_and_conserves_the_weight():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 30, 4, generator=g, dtype=torch.float64)
    alpha = torch.rand(2, 30, generator=g, dtype=torch.float64) * 0.6
    counts = torch.floor(alpha.sum(1)).long()
    fired = cif(hidden, alpha, counts)
    for b in range(2):
        loop = _cif_loop(hidden[b], alpha[b])
        assert loop.shape[0] == counts[b]  # fires floor(sum alpha) times
        assert torch.allclose(fired[b, :counts[b]], loop, atol=1e-12)
    w = cif_weights(alpha, torch.full((2,), 30))
    assert torch.allclose(w.sum(2), alpha)  # every frame's weight is shared out completely
    assert torch.allclose(w.sum(1)[:, :int(counts.min())], torch.ones(2, int(counts.min()), dtype=torch.float64))


def test_cif_handles_weights_above_one():
    hidden = torch.eye(3, dtype=torch.float64)[None]  # frames are one-hot: the embedding shows the weights
    fired = cif(hidden, torch.tensor([[2.5, 0.25, 0.25]], dtype=torch.float64), torch.tensor([3]))
    assert torch.allclose(fired[0], torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.5, 0.25, 0.25]], dtype=torch.float64))
    with pytest.raises(ValueError, match="alpha"):
        cif(hidden, torch.tensor([[-0.1, 0.5, 0.5]]), torch.tensor([1]))


# -------------------------------------------------------------------------------------------------- models


def test_models_run_and_the_decoders_agree_with_their_slow_paths():
    torch.manual_seed(0)
    vocab = TranscriptVocab()
    feats, lengths = speech_features([torch.randn(8000) * 0.1, torch.randn(4840) * 0.1])  # 51 and 31 frames
    ctc = CTCModel(vocab.size, d=32, layers=1, heads=2, ff=64).eval()
    log_probs, out_lengths = ctc(feats, lengths)
    assert log_probs.shape == (2, 26, vocab.size) and out_lengths.tolist() == [26, 16]
    # a padded utterance gives the same frames as alone
    alone, _ = ctc(feats[1:, :lengths[1]], lengths[1:])
    assert torch.allclose(alone[0], log_probs[1, :16], atol=1e-5)
    memory = torch.randn(2, 26, 32)
    dec = AttentionDecoder(vocab.size, d=32, layers=2, heads=2, ff=64).eval()
    hyps, steps = dec.greedy(memory, out_lengths, max_len=6)
    # the cached greedy tokens are the argmax of a full (uncached) teacher-forced pass over them
    seq = torch.tensor([[EOS] + hyps[0] + [EOS] * (6 - len(hyps[0]))])[:, :steps]
    full = dec(seq, memory[:1], out_lengths[:1]).argmax(-1)[0].tolist()
    assert full[:len(hyps[0])] == hyps[0]
    beams = dec.beam_search(memory[:1], out_lengths[:1], beam=1, max_len=6)
    assert beams[0][0] == hyps[0]
    y, y_lengths = vocab.batch(["one two", "go"])
    assert dec.loss(memory, out_lengths, y, y_lengths).item() > 0
    para = Paraformer(vocab.size, d=32, layers=1, heads=2, ff=64)
    loss, stats = para.loss(memory, out_lengths, y, y_lengths, glance=0.75, generator=torch.Generator().manual_seed(0))
    assert loss.item() > 0 and 0 < stats["glanced"] <= 1
    decoded = para.eval().decode(memory, out_lengths, num_tokens=torch.tensor([3, 0]))
    assert len(decoded[0]) == 3 and decoded[1] == []


def test_speech_layers_are_the_gpts_and_the_decoder_cache_is_preallocated():
    from arlib.text.gpt import Block, KVCache

    torch.manual_seed(0)
    vocab = TranscriptVocab()
    ctc = CTCModel(vocab.size, d=16, layers=1, heads=2, ff=24)
    dec = AttentionDecoder(vocab.size, d=16, layers=2, heads=2, ff=24, max_len=12).eval()
    assert type(ctc.encoder.blocks[0]) is Block and isinstance(dec.blocks[0], Block)
    memory, lengths = torch.randn(3, 7, 16), torch.tensor([7, 5, 2])
    seq = torch.randint(2, vocab.size, (3, 9))
    full = dec(seq, memory, lengths)  # teacher forcing, no cache
    cache = dec.new_cache(memory)
    assert isinstance(cache, KVCache) and cache.k.shape == (2, 3, 2, 12, 8)  # (L, B, H, max_len, D), fixed
    # a prefix of 4 in one cached call, then one position per call: the full pass's logits
    stepped = torch.cat([dec(seq[:, :4], memory, lengths, cache)]
                        + [dec(seq[:, t:t + 1], memory, lengths, cache) for t in range(4, 9)], dim=1)
    assert cache.length == 9 and cache.k.shape == (2, 3, 2, 12, 8)
    assert torch.allclose(stepped, full, atol=1e-5)
    order = torch.tensor([2, 2, 0])
    cache.reorder(order)  # beam search: each row takes its parent's cache
    longer = torch.cat([seq, seq[:, :1]], dim=1)[order]  # (3, 10)
    assert torch.allclose(dec(longer[:, 9:], memory[order], lengths[order], cache),
                          dec(longer, memory[order], lengths[order])[:, 9:], atol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        dec(seq[:, :3], memory, lengths, cache)
    with pytest.raises(ValueError, match="memory"):
        dec.new_cache(torch.randn(3, 7, 5))
    with pytest.raises(ValueError, match="d: expected a multiple of heads"):
        AttentionDecoder(vocab.size, d=15, heads=2)


def test_cross_attention_on_its_own_stream_is_self_attention_without_a_mask():
    """Cross-attention applies self-attention's parameters to two inputs: given the stream as the memory
    and no mask, it is the self-attention in which every position sees every position."""
    from arlib.speech.models import CrossAttention, layer_config

    torch.manual_seed(0)
    cross = CrossAttention(layer_config(16, 4, 1, 0.0)).eval()
    x = torch.randn(2, 5, 16)
    self_attention = super(CrossAttention, cross).forward  # the GPT's, on the same parameters
    assert torch.allclose(cross(x, cross.keys_values(x)), self_attention(x, mask=True), atol=1e-6)
    mask = torch.tensor([True, True, False, False, False])[None, None, None, :]  # keys 0, 1 only
    assert torch.allclose(cross(x, cross.keys_values(x), mask), cross(x, cross.keys_values(x[:, :2])), atol=1e-6)


def test_beam_search_never_scores_below_greedy():
    torch.manual_seed(1)
    dec = AttentionDecoder(8, d=16, layers=1, heads=2, ff=32).eval()
    memory, lengths = torch.randn(1, 10, 16), torch.tensor([10])
    dec.embed.weight.data[EOS] *= 3  # make ending likely, so that greedy finishes within max_len
    (greedy,), steps = dec.greedy(memory, lengths, max_len=8)
    assert steps == len(greedy) + 1  # greedy ended with EOS

    def score(tokens):
        seq = torch.tensor([[EOS] + tokens])
        logp = dec(seq, memory, lengths).log_softmax(-1)[0]
        return sum(logp[i, t].item() for i, t in enumerate(tokens + [EOS]))

    best = dec.beam_search(memory, lengths, beam=4, max_len=8)[0]
    assert best[1] >= score(greedy) - 1e-4
    assert best[1] == pytest.approx(score(best[0]), abs=1e-4)


# ------------------------------------------------------------------------------------------ WER and inputs


def test_edit_distance_and_error_rates_on_known_cases():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2]) == 2 and edit_distance([1, 2], []) == 2
    refs, hyps = ["one two three", "go"], ["one too three four", "go"]
    assert word_error_rate(refs, hyps) == pytest.approx(2 / 4)  # a substitution and an insertion
    assert word_error_rate(["a b"], ["c d e f"]) == 2.0  # can exceed 1
    assert char_error_rate(["ab"], ["abc"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="references"):
        word_error_rate(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="references"):
        word_error_rate("a b", "a b")


def _all_alignments(ref, hyp):
    """Every (S, D, I) of every alignment of hyp to ref, by recursion: the slow definition."""
    if not ref:
        return {(0, 0, len(hyp))}
    if not hyp:
        return {(0, len(ref), 0)}
    out = {(s + (ref[0] != hyp[0]), d, i) for s, d, i in _all_alignments(ref[1:], hyp[1:])}
    out |= {(s, d + 1, i) for s, d, i in _all_alignments(ref[1:], hyp)}
    out |= {(s, d, i + 1) for s, d, i in _all_alignments(ref, hyp[1:])}
    return out


def test_error_counts_are_a_minimal_alignment():
    from arlib.speech.error_rates import error_counts

    assert error_counts("a b c d".split(), "a x c d e".split()) == (1, 0, 1)
    assert error_counts(["a", "b", "c"], ["a", "c"]) == (0, 1, 0)
    assert error_counts([], ["a", "b"]) == (0, 0, 2) and error_counts(["a"], []) == (0, 1, 0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        ref, hyp = (rng.integers(0, 3, size=rng.integers(0, 6)).tolist() for _ in range(2))
        counts = error_counts(ref, hyp)
        assert sum(counts) == edit_distance(ref, hyp)
        assert counts in _all_alignments(ref, hyp)  # a real alignment, and (by its sum) a minimal one
        s, d, i = counts
        assert d - i == len(ref) - len(hyp)  # deletions remove reference words, insertions add words


def test_word_error_counts_and_bootstrap_intervals():
    from arlib.speech.error_rates import wer_difference, wer_interval, word_error_counts

    refs, hyps = ["one two three", "go stop", "yes no"], ["one three three four", "go", "yes no"]
    counts = word_error_counts(refs, hyps)
    assert counts == {"substitutions": 1, "deletions": 1, "insertions": 1, "words": 7, "wer": 3 / 7}
    assert counts["wer"] == pytest.approx(word_error_rate(refs, hyps))
    rng = np.random.default_rng(1)
    words = ["go", "stop", "left", "right", "up"]
    refs = [" ".join(rng.choice(words, 4)) for _ in range(300)]
    noisy = [" ".join(w if rng.random() > 0.2 else "yes" for w in r.split()) for r in refs]  # ~20 % substituted
    worse = [" ".join(w if rng.random() > 0.3 else "no" for w in n.split()) for n in noisy]
    wer, low, high = wer_interval(refs, noisy)
    assert low < wer < high and high - low < 0.1 and abs(wer - 0.2) < 0.03
    assert wer_interval(refs, noisy, seed=3) != (wer, low, high)  # another resampling, another interval
    diff, dlow, dhigh = wer_difference(refs, worse, noisy)
    assert diff == pytest.approx(word_error_rate(refs, worse) - wer) and 0 < dlow < diff < dhigh
    # paired: narrower than the two systems' own intervals suggest
    assert dhigh - dlow < (high - low) + (wer_interval(refs, worse)[2] - wer_interval(refs, worse)[1])
    same = wer_difference(refs, noisy, noisy)
    assert same == (0.0, 0.0, 0.0)


def test_vocab_round_trip_and_unknown_words():
    vocab = TranscriptVocab()
    ids = vocab.encode("seven thousand")
    assert vocab.decode(ids) == "seven thousand" and min(ids) >= 2
    for bad in ["seven thousandd", "Seven", "one  two", " one"]:
        with pytest.raises(ValueError, match="transcript"):
            vocab.encode(bad)


def test_speech_features_validate_their_input():
    with pytest.raises(ValueError, match="sample_rate"):
        speech_features([torch.zeros(16000)], sample_rate=22050)
    with pytest.raises(ValueError, match=r"waves\[1\]"):
        speech_features([torch.zeros(16000), torch.zeros(0)])
    feats, lengths = speech_features(torch.randn(16000))
    assert feats.shape == (1, 101, 80) and lengths.tolist() == [101]
    assert torch.allclose(feats[0].mean(0), torch.zeros(80), atol=1e-4)


def test_spec_augment_masks_bands_and_spans_only():
    feats = torch.ones(3, 100, 80)
    lengths = torch.tensor([100, 60, 100])
    out = spec_augment(feats, lengths, torch.Generator().manual_seed(0), freq_masks=2, freq_width=10,
                       time_masks=2, time_ratio=0.1)
    assert out.shape == feats.shape and set(out.unique().tolist()) <= {0.0, 1.0}
    masked_channels = (out == 0).all(dim=1).sum(dim=1)  # channels zero over all frames
    assert (masked_channels <= 20).all() and masked_channels.sum() > 0
    with pytest.raises(ValueError, match="feats"):
        spec_augment(torch.ones(100, 80), lengths, torch.Generator())


def test_speech_models_and_decoders_on_a_device_match_the_cpu(device):
    """CTC loss and decoding, the attention decoder (loss, cached greedy, beam search) and Paraformer on the
    device give the CPU's numbers and transcripts (lengths and targets may stay on the CPU)."""
    import copy

    torch.manual_seed(0)
    vocab = TranscriptVocab()
    feats, lengths = speech_features([torch.randn(4840) * 0.1, torch.randn(4000) * 0.1])
    ctc = CTCModel(vocab.size, d=32, layers=1, heads=2, ff=64).eval()
    dec = AttentionDecoder(vocab.size, d=32, layers=1, heads=2, ff=64).eval()
    para = Paraformer(vocab.size, d=32, layers=1, heads=2, ff=64).eval()
    y, y_lengths = vocab.batch(["one two", "go"])

    def run(ctc, dec, para, dev):
        log_probs, out_lengths = ctc(feats.to(dev), lengths.to(dev))
        memory = torch.randn(2, log_probs.shape[1], 32, generator=torch.Generator().manual_seed(1)).to(dev)
        return {"log_probs": log_probs.cpu(), "ctc": ctc_loss(log_probs, out_lengths, y, y_lengths).item(),
                "greedy": greedy_decode(log_probs, out_lengths), "dec_loss": dec.loss(memory, out_lengths, y.to(dev),
                                                                                       y_lengths).item(),
                "dec_greedy": dec.greedy(memory, out_lengths, max_len=5),
                "beam": dec.beam_search(memory[:1], out_lengths[:1], beam=2, max_len=5)[0][0],
                "para": para.decode(memory, out_lengths, num_tokens=torch.tensor([3, 1])),
                "para_loss": para.loss(memory, out_lengths, y.to(dev), y_lengths.to(dev))[0].item()}

    on_cpu = run(ctc, dec, para, torch.device("cpu"))
    on_dev = run(*(copy.deepcopy(m).to(device) for m in (ctc, dec, para)), device)
    torch.testing.assert_close(on_dev.pop("log_probs"), on_cpu.pop("log_probs"), rtol=1e-4, atol=1e-4)
    for key in ("ctc", "dec_loss", "para_loss"):
        assert on_dev.pop(key) == pytest.approx(on_cpu.pop(key), rel=1e-4), key
    assert on_dev == on_cpu


def test_hybrid_loss_is_the_weighted_sum_of_ctc_and_attention_and_trains_both_heads():
    """Watanabe et al. 2017, eq. 33: L = w L_ctc + (1 - w) L_att, over one shared encoder."""
    from arlib.speech.models import HybridCTCAttention

    torch.manual_seed(0)
    model = HybridCTCAttention(8, d=16, layers=1, heads=2, ff=32, ctc_weight=0.3).eval()
    feats, lengths = torch.randn(2, 20, 80), torch.tensor([20, 14])
    y, y_lengths = torch.tensor([[2, 3, 4], [5, 6, 0]]), torch.tensor([3, 2])
    total, ctc, att = model.losses(feats, lengths, y, y_lengths)
    assert torch.allclose(total, 0.3 * ctc + 0.7 * att)
    log_probs, out_lengths = model.ctc(feats, lengths)
    expected = F.ctc_loss(log_probs.transpose(0, 1), y, out_lengths, y_lengths)
    assert torch.allclose(ctc, expected)
    hidden, hl = model.encoder(feats, lengths)
    assert torch.allclose(att, model.decoder.loss(hidden, hl, y, y_lengths))
    total.backward()  # both heads and the shared encoder get a gradient
    assert model.ctc.head.weight.grad.abs().sum() > 0 and model.decoder.embed.weight.grad.abs().sum() > 0
    assert model.encoder.blocks[0].mlp.c_fc.weight.grad.abs().sum() > 0


def test_ctc_head_ignores_padding_frames():
    from arlib.speech.models import CTCHead

    torch.manual_seed(0)
    head = CTCHead(6, d=16, layers=1, heads=2, ff=32).eval()
    memory = torch.randn(1, 9, 16)
    short, _ = head(memory[:, :6], torch.tensor([6]))
    padded = torch.cat([memory[:, :6], torch.randn(1, 3, 16) * 100], dim=1)
    long, lengths = head(padded, torch.tensor([6]))
    assert torch.allclose(short, long[:, :6], atol=1e-5) and lengths.tolist() == [6]
    assert torch.allclose(long.exp().sum(-1), torch.ones(1, 9), atol=1e-5)


def test_bucketed_batches_hold_similar_lengths_and_cover_every_utterance():
    from arlib.speech.recipes import bucketed_batch

    lengths = torch.randint(10, 500, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    order = sorted(range(300), key=lambda i: lengths[i])
    g = torch.Generator().manual_seed(1)
    batches = [bucketed_batch(order, 16, g) for _ in range(400)]
    assert all(len(b) == 16 and len(set(b)) == 16 for b in batches)
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    random = np.mean([np.ptp([lengths[i] for i in torch.randperm(300, generator=g)[:16].tolist()])
                      for _ in range(400)])
    assert spread < random / 5  # far less padding than a random batch
    assert len({i for b in batches for i in b}) > 0.95 * 300  # every utterance is seen
