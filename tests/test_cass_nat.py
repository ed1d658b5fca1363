"""CASS-NAT (arlib.speech.cass_nat): alignments -> segments, the trigger mask, the TAE extractor, training
with Viterbi or sampled alignments, and decoding."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from arlib.speech.cass_nat import CassNAT, ctc_segments, esa_segments, forced_segments, viterbi_segments
from arlib.speech.ctc import greedy_decode, token_segments, viterbi_align
from arlib.speech.models import EOS

V = 8  # 0 blank/padding, 1 EOS, units 2..7


def peaked(path: list[int], C: int = V, peak: float = 6.0) -> torch.Tensor:
    """Log-probabilities (T, C) whose best path is ``path``."""
    scores = torch.zeros(len(path), C)
    scores[torch.arange(len(path)), torch.tensor(path)] = peak
    return scores.log_softmax(-1)


def model(seed: int = 0, **kw) -> CassNAT:
    torch.manual_seed(seed)
    return CassNAT(V, **{"d": 16, "layers": 1, "heads": 2, "ff": 32, "dropout": 0.0, **kw}).eval()


def eos_targets(targets: list[list[int]]) -> torch.Tensor:
    """Targets + EOS, padded with -100: what the decoder's positions are trained on."""
    N = max(map(len, targets)) + 1
    return torch.tensor([row + [EOS] + [-100] * (N - 1 - len(row)) for row in targets])


# --------------------------------------------------------------------------------------------- segments


def test_ctc_segments_of_a_hand_built_path():
    # frames:  0  1  2  3  4  5  6  7  8  9  10 11
    path = [0, 3, 3, 0, 4, 0, 3, 0, 3, 5, 5, 0]
    tokens, segments = ctc_segments(peaked(path))
    # a run is one token ("3 3"); a label repeated across a blank is two ("3 _ 3"); neighbours "3 5" are two
    assert tokens == [3, 4, 3, 3, 5]
    # token u: from the frame after the previous trigger (first frame) to its own trigger, inclusive
    assert segments == [(0, 2), (2, 5), (5, 7), (7, 9), (9, 10)]
    assert ctc_segments(peaked(path), length=6) == ([3, 4], [(0, 2), (2, 5)])  # frames past length ignored
    assert ctc_segments(peaked([0, 0, 0])) == ([], [])
    assert ctc_segments(peaked(path) * 3 + 1) == (tokens, segments)  # argmax only: logits do too


def test_viterbi_segments_follow_the_forced_alignment_not_the_best_path():
    # The best path says "3 5"; forced to "3 4", the 4 sits at frame 4, where it costs least.
    probs = torch.tensor([[.9, .02, .02, .02, .02, .02],
                          [.05, .01, .01, .9, .02, .01],
                          [.9, .02, .02, .02, .02, .02],
                          [.35, .0, .0, .0, .05, .6],
                          [.7, .0, .0, .0, .3, .0],
                          [.9, .02, .02, .02, .02, .02]]) + 1e-4
    lp = (probs / probs.sum(-1, keepdim=True)).log()
    assert ctc_segments(lp) == ([3, 5], [(0, 2), (2, 4)])
    assert viterbi_segments(lp, [3, 4]) == [(0, 2), (2, 5)]
    # the triggers are the first frames of ctc.viterbi_align's runs, for any target
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        lp = torch.randn(15, V, generator=g).mul(3).log_softmax(-1)
        target = torch.randint(2, V, (4,), generator=g)
        firsts = [s for s, _ in token_segments(viterbi_align(lp, target), 4)]
        assert [e - 1 for _, e in viterbi_segments(lp, target)] == firsts
    assert viterbi_segments(lp, []) == []


def test_the_token_segments_and_the_eos_position_partition_the_frames():
    from arlib.speech.cass_nat import _listed, _trigger_mask

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        T = int(torch.randint(3, 20, (1,), generator=g))
        length = int(torch.randint(1, T + 1, (1,), generator=g))
        lp = torch.randn(T, V, generator=g).mul(4).log_softmax(-1)
        tokens, segs = ctc_segments(lp, length)
        sampled = esa_segments(lp, length, generator=g)[1]
        forced = viterbi_segments(lp, tokens, length) if tokens else []
        for s in (segs, sampled, forced):
            # in order, without gap or overlap, from frame 0
            assert all(a < b for a, b in s) and [a for a, _ in s] == ([0] + [b for _, b in s])[:len(s)]
            assert all(b <= length for _, b in s)
            mask, valid = _trigger_mask(*_listed([s], torch.tensor([length]), 64), torch.tensor([length]), T, 0)
            frames = mask[0, :len(s) + 1].long()  # (U+1, T)
            tail = s[-1][1] if s else 0
            # every real frame is read by exactly one position (the last frame also by EOS if nothing is left)
            expected = torch.ones(length, dtype=torch.long)
            if tail == length:
                expected[-1] = 2
            assert frames[:, :length].sum(0).tolist() == expected.tolist(), trial
            assert frames[:, length:].sum() == 0 and valid[0].all()
            assert frames[len(s), :length].nonzero().flatten().tolist() == list(range(min(tail, length - 1), length))


def test_esa_keeps_confident_frames_and_draws_the_others_from_the_top_two():
    # frame 0 is sure (0.95 >= 0.9): the blank; frame 1: blank or 1; frame 2: 2 or 3, half each
    lp = torch.tensor([[.95, .03, .01, .01], [.5, .45, .03, .02], [.02, .03, .55, .4]]).log()
    g = torch.Generator().manual_seed(0)
    frame1, frame2 = [], []
    for _ in range(400):
        tokens, segs = esa_segments(lp, generator=g)
        labels = {e - 1: tok for tok, (_, e) in zip(tokens, segs)}  # trigger frame -> label
        assert set(labels) <= {1, 2} and 2 in labels
        frame1.append(labels.get(1, 0))
        frame2.append(labels[2])
    assert set(frame1) == {0, 1} and abs(frame1.count(1) / 400 - 0.5) < 0.08
    assert set(frame2) == {2, 3} and abs(frame2.count(2) / 400 - 0.5) < 0.08
    assert esa_segments(lp, threshold=0.0) == ctc_segments(lp)  # nothing is below 0: the best path


def test_forced_segments_is_viterbi_segments_row_by_row():
    g = torch.Generator().manual_seed(2)
    lp = torch.randn(3, 12, V, generator=g).mul(3).log_softmax(-1)
    lp[2, 9:] = 0.0  # padding past the length need not be log-probabilities
    targets, target_lengths = torch.tensor([[2, 3, 3], [4, 0, 0], [5, 6, 0]]), torch.tensor([3, 1, 2])
    out = forced_segments(lp, torch.tensor([12, 7, 9]), targets, target_lengths)
    assert out == [viterbi_segments(lp[0], [2, 3, 3]), viterbi_segments(lp[1], [4], 7),
                   viterbi_segments(lp[2], [5, 6], 9)]
    with pytest.raises(ValueError, match="targets"):  # "3 3" needs a blank between: 3 frames
        forced_segments(lp, torch.tensor([2, 7, 9]), targets, target_lengths)


# ----------------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("expand", [0, 1])
def test_a_token_embedding_reads_only_its_segment(expand):
    net = model(expand=expand)
    g = torch.Generator().manual_seed(0)
    memory, lengths = torch.randn(1, 12, 16, generator=g), torch.tensor([10])
    segments = [[(0, 3), (3, 4), (4, 8)]]  # EOS position: frames 8, 9
    base = net.acoustic_embeddings(memory, lengths, segments)[0]  # (4, d)
    spans = [(0, 3), (3, 4), (4, 8), (8, 10)]
    for u, (a, b) in enumerate(spans):
        a, b = max(0, a - expand), min(10, b + expand)
        outside = memory.clone()
        outside[0, :a] += 5.0
        outside[0, b:] += 5.0  # frames past the length too
        assert torch.allclose(net.acoustic_embeddings(outside, lengths, segments)[0, u], base[u], atol=1e-5), u
        inside = memory.clone()
        inside[0, a:b] += 5.0
        assert not torch.allclose(net.acoustic_embeddings(inside, lengths, segments)[0, u], base[u], atol=1e-3), u
        edge = memory.clone()
        edge[0, b - 1] += 5.0  # the segment's last frame counts (the trigger, or the widened edge)
        assert not torch.allclose(net.acoustic_embeddings(edge, lengths, segments)[0, u], base[u], atol=1e-3), u


def test_oracle_and_best_path_decoding_overfit_a_toy_task():
    """Three utterances, a few hundred steps: the decoder learns them on the Viterbi segments, and decodes
    them without error both on the oracle segments and on the CTC best path's."""
    paths = [[0, 2, 0, 0, 3, 3, 0, 4, 0, 0, 0, 0],
             [5, 0, 5, 0, 0, 6, 0, 0, 0, 0, 0, 0],
             [0, 0, 7, 7, 0, 2, 0, 3, 0, 4, 0, 0]]
    lengths = torch.tensor([12, 8, 11])
    targets = [[2, 3, 4], [5, 5, 6], [7, 2, 3, 4]]
    ctc = torch.stack([peaked(p) for p in paths])
    y = torch.tensor([t + [0] * (4 - len(t)) for t in targets])
    y_lengths = torch.tensor(list(map(len, targets)))
    memory = torch.randn(3, 12, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = CassNAT(V, d=32, layers=1, heads=2, ff=64, dropout=0.0)
    oracle = forced_segments(ctc, lengths, y, y_lengths)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(100):
        loss = net.loss(memory, lengths, y, y_lengths, segments=oracle)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    assert loss.item() < 0.05
    assert net.decode_with_segments(memory, lengths, oracle) == targets
    assert net.decode(memory, lengths, ctc) == targets


def test_sampling_with_probability_zero_is_the_viterbi_segmentation():
    net = model()
    g = torch.Generator().manual_seed(0)
    memory, lengths = torch.randn(2, 8, 16, generator=g), torch.tensor([8, 6])
    # utterance 0: best path "3 5" for "3 4" (the right count, a substitution); utterance 1: "6 2 4" for "2 4"
    blank = [.9, 0, 0, 0, 0, 0, 0, 0]
    probs0 = torch.tensor([blank, [.05, 0, 0, .9, 0, 0, 0, 0], blank, [.35, 0, 0, 0, .05, .6, 0, 0],
                           [.7, 0, 0, 0, .3, 0, 0, 0], blank, blank, blank])
    probs1 = torch.tensor([[.35, 0, 0, 0, 0, 0, .6, 0], [.05, 0, .9, 0, 0, 0, 0, 0], blank,
                           [.05, 0, 0, 0, .9, 0, 0, 0], blank, blank, blank, blank])
    ctc = torch.stack([p + 1e-3 for p in (probs0, probs1)])
    ctc = (ctc / ctc.sum(-1, keepdim=True)).log()
    y, y_lengths = torch.tensor([[3, 4], [2, 4]]), torch.tensor([2, 2])
    viterbi = forced_segments(ctc, lengths, y, y_lengths)
    best = [ctc_segments(ctc[0])[1], ctc_segments(ctc[1], 6)[1]]
    assert viterbi[0] != best[0] and len(best[0]) == 2 and len(best[1]) == 3
    assert viterbi[1] == [(0, 2), (2, 4)] and best[1][:2] == [(0, 1), (1, 2)]

    def ce(segments):
        return F.cross_entropy(net(memory, lengths, segments).flatten(0, 1), eos_targets([[3, 4], [2, 4]]).flatten(),
                               ignore_index=-100)

    plain = net.loss(memory, lengths, y, y_lengths, ctc)
    assert torch.allclose(plain, ce(viterbi))
    assert torch.allclose(net.loss(memory, lengths, y, y_lengths, ctc, sample=0.0, generator=g), plain)
    assert torch.allclose(net.loss(memory, lengths, y, y_lengths, segments=viterbi), plain)
    # sample = 1 with threshold 0 (ESA = the best path): utterance 0 takes the best path's segments, utterance 1
    # keeps its Viterbi segments (the best path has a token too many)
    sampled = net.loss(memory, lengths, y, y_lengths, ctc, sample=1.0, threshold=0.0, generator=g)
    assert torch.allclose(sampled, ce([best[0], viterbi[1]]))
    assert not torch.allclose(sampled, plain)
    # sample = 0.3 on 300 copies of utterance 0: the loss is the mix of the two segmentations' losses, with
    # the share of sampled utterances as its weight
    n = 300
    many = [x[:1].expand(n, *x.shape[1:]) for x in (memory, lengths, y, y_lengths, ctc)]
    on_best, on_viterbi = (net.loss(*many[:4], segments=[s] * n) for s in (best[0], viterbi[0]))
    mixed = net.loss(*many, sample=0.3, threshold=0.0, generator=g)
    share = ((mixed - on_viterbi) / (on_best - on_viterbi)).item()
    assert abs(share - 0.3) < 0.08 and abs(share * n - round(share * n)) < 0.05


def test_decode_emits_as_many_tokens_as_the_ctc_best_path():
    net = model(1)
    g = torch.Generator().manual_seed(1)
    ctc = torch.randn(4, 15, V, generator=g).mul(3).log_softmax(-1)
    lengths = torch.tensor([15, 9, 4, 1])
    memory = torch.randn(4, 15, 16, generator=g)
    out = net.decode(memory, lengths, ctc)
    assert [len(row) for row in out] == [len(row) for row in greedy_decode(ctc, lengths)]
    assert all(0 <= t < V for row in out for t in row)


def test_a_batch_decodes_as_its_utterances_one_at_a_time():
    net = model(2, layers=2, expand=1)
    g = torch.Generator().manual_seed(2)
    ctc = torch.randn(3, 14, V, generator=g).mul(3).log_softmax(-1)
    lengths = torch.tensor([14, 6, 10])
    memory = torch.randn(3, 14, 16, generator=g)
    memory[1, 6:] = 1e3  # padding must not leak
    together = net.decode(memory, lengths, ctc)
    alone = [net.decode(memory[b:b + 1, :L], lengths[b:b + 1], ctc[b:b + 1, :L])[0]
             for b, L in enumerate(lengths.tolist())]
    assert together == alone
    segments = [ctc_segments(ctc[b], int(lengths[b]))[1] for b in range(3)]
    logits = net(memory, lengths, segments)
    for b, L in enumerate(lengths.tolist()):
        one = net(memory[b:b + 1, :L], lengths[b:b + 1], segments[b:b + 1])[0]
        assert torch.allclose(logits[b, :len(segments[b]) + 1], one, atol=1e-5)


def test_on_a_device_cass_nat_gives_the_cpus_numbers(device):
    net = model(3)
    g = torch.Generator().manual_seed(3)
    ctc = torch.randn(2, 10, V, generator=g).mul(3).log_softmax(-1)
    memory, lengths = torch.randn(2, 10, 16, generator=g), torch.tensor([10, 7])
    y, y_lengths = torch.tensor([[2, 3], [4, 0]]), torch.tensor([2, 1])

    def run(net, dev):
        args = (memory.to(dev), lengths.to(dev))
        return {"decode": net.decode(*args, ctc.to(dev)),
                "loss": net.loss(*args, y.to(dev), y_lengths, ctc.to(dev), sample=0.5,
                                 generator=torch.Generator().manual_seed(0)).item()}

    on_cpu, on_dev = run(net, "cpu"), run(copy.deepcopy(net).to(device), device)
    assert on_dev.pop("loss") == pytest.approx(on_cpu.pop("loss"), rel=1e-4)
    assert on_dev == on_cpu
