"""Hostile inputs for arlib.speech.cass_nat: every public function and class answers a bad argument with a
valid result or a ValueError/TypeError naming the argument (:func:`hostile.rejects`,
:func:`hostile.valid_or_rejects`). Each probe is one parametrized case, so that the suite counts them."""

from __future__ import annotations

import math

import numpy as np
import torch
from hostile import probe_table_tests, public_api, rejects, valid_or_rejects

from arlib.speech.cass_nat import CassNAT, ctc_segments, esa_segments, forced_segments, viterbi_segments

COVERED = {
    "arlib.speech.cass_nat.CassNAT", "arlib.speech.cass_nat.ctc_segments", "arlib.speech.cass_nat.esa_segments",
    "arlib.speech.cass_nat.forced_segments", "arlib.speech.cass_nat.viterbi_segments",
}


def test_covered_is_exactly_the_public_api_of_cass_nat():
    mine = {n for n in public_api() if n.startswith("arlib.speech.cass_nat.")}
    assert mine == COVERED, f"missing {sorted(mine - COVERED)}, stale {sorted(COVERED - mine)}"


# --- fixtures ---------------------------------------------------------------------------------------

V = 9  # blank, EOS, 7 units
LP = torch.randn(8, V, generator=torch.Generator().manual_seed(0)).mul(3).log_softmax(-1)  # (T, C)
BATCH_LP = torch.randn(2, 8, V, generator=torch.Generator().manual_seed(1)).mul(3).log_softmax(-1)  # (B, T, C)
MEMORY, LENGTHS = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([8, 5])
Y, Y_LENGTHS = torch.tensor([[2, 3], [4, 0]]), torch.tensor([2, 1])
SEGMENTS = [[(0, 3), (3, 6)], [(0, 2)]]


def _net():
    torch.manual_seed(0)
    return CassNAT(V, d=16, layers=1, heads=2, ff=32).eval()


def _segments_ok(out):
    tokens, segments = out
    return len(tokens) == len(segments) and all(isinstance(t, int) for t in tokens) \
        and all(0 <= a < b for a, b in segments)


def _token_lists(B):
    return lambda out: len(out) == B and all(isinstance(t, int) for row in out for t in row)


# Each probe: (id, callable that asserts). The callables use hostile's rejects / valid_or_rejects.
PROBES = [
    # --- ctc_segments ---
    ("ctc_segments-list", lambda: rejects(ctc_segments, [[0.0, 1.0]], arg="log_probs")),
    ("ctc_segments-3d", lambda: rejects(ctc_segments, BATCH_LP, arg="log_probs")),
    ("ctc_segments-int", lambda: rejects(ctc_segments, torch.zeros(4, 3, dtype=torch.long), arg="log_probs")),
    ("ctc_segments-one-class", lambda: rejects(ctc_segments, torch.zeros(4, 1), arg="log_probs")),
    ("ctc_segments-nan", lambda: rejects(ctc_segments, torch.full((4, 3), math.nan), arg="log_probs")),
    ("ctc_segments-long-length", lambda: rejects(ctc_segments, LP, 9, arg="length")),
    ("ctc_segments-float-length", lambda: rejects(ctc_segments, LP, 3.5, arg="length")),
    ("ctc_segments-bool-length", lambda: rejects(ctc_segments, LP, True, arg="length")),
    ("ctc_segments-numpy-length", lambda: valid_or_rejects(ctc_segments, LP, np.int64(5), arg="length",
                                                           contract=_segments_ok)),
    ("ctc_segments-zero-frames", lambda: valid_or_rejects(ctc_segments, LP[:0], arg="log_probs",
                                                          contract=lambda out: out == ([], []))),
    ("ctc_segments-logits", lambda: valid_or_rejects(ctc_segments, LP * 5 + 2, arg="log_probs",
                                                     contract=_segments_ok)),
    # --- esa_segments ---
    ("esa_segments-raw-logits", lambda: rejects(esa_segments, LP + 1, arg="log_probs")),
    ("esa_segments-threshold-nan", lambda: rejects(esa_segments, LP, threshold=math.nan, arg="threshold")),
    ("esa_segments-threshold-above-1", lambda: rejects(esa_segments, LP, threshold=1.5, arg="threshold")),
    ("esa_segments-generator-seed", lambda: rejects(esa_segments, LP, generator=0, arg="generator")),
    ("esa_segments-negative-length", lambda: rejects(esa_segments, LP, -1, arg="length")),
    ("esa_segments-padding-rows", lambda: valid_or_rejects(esa_segments, torch.cat([LP[:4], torch.zeros(3, V)]), 4,
                                                           arg="log_probs", contract=_segments_ok)),
    # --- viterbi_segments ---
    ("viterbi_segments-raw-logits", lambda: rejects(viterbi_segments, LP * 2, [2, 3], arg="log_probs")),
    ("viterbi_segments-blank-target", lambda: rejects(viterbi_segments, LP, [0, 3], arg="target")),
    ("viterbi_segments-big-label", lambda: rejects(viterbi_segments, LP, [2, V], arg="target")),
    ("viterbi_segments-float-target", lambda: rejects(viterbi_segments, LP, [2.0, 3.0], arg="target")),
    ("viterbi_segments-2d-target", lambda: rejects(viterbi_segments, LP, torch.tensor([[2, 3]]), arg="target")),
    ("viterbi_segments-string-target", lambda: rejects(viterbi_segments, LP, "23", arg="target")),
    ("viterbi_segments-too-short", lambda: rejects(viterbi_segments, LP, [2, 2, 2], 4, arg="target")),
    ("viterbi_segments-length-float", lambda: rejects(viterbi_segments, LP, [2], 2.0, arg="length")),
    ("viterbi_segments-empty", lambda: valid_or_rejects(viterbi_segments, LP, [], arg="target",
                                                        contract=lambda out: out == [])),
    # --- forced_segments ---
    ("forced_segments-2d", lambda: rejects(forced_segments, LP, [8], Y[:1], [2], arg="log_probs")),
    ("forced_segments-lengths-long", lambda: rejects(forced_segments, BATCH_LP, [9, 8], Y, Y_LENGTHS, arg="lengths")),
    ("forced_segments-lengths-count", lambda: rejects(forced_segments, BATCH_LP, [8], Y, Y_LENGTHS, arg="lengths")),
    ("forced_segments-targets-float", lambda: rejects(forced_segments, BATCH_LP, [8, 8], Y.float(), Y_LENGTHS,
                                                      arg="targets")),
    ("forced_segments-targets-rows", lambda: rejects(forced_segments, BATCH_LP, [8, 8], Y[:1], Y_LENGTHS,
                                                     arg="targets")),
    ("forced_segments-target-lengths", lambda: rejects(forced_segments, BATCH_LP, [8, 8], Y, [3, 1],
                                                       arg="target_lengths")),
    ("forced_segments-blank-in-target", lambda: rejects(forced_segments, BATCH_LP, [8, 8], Y, [2, 2], arg="targets")),
    ("forced_segments-too-short", lambda: rejects(forced_segments, BATCH_LP, [1, 8], Y, Y_LENGTHS, arg="targets")),
    ("forced_segments-padding-rows", lambda: valid_or_rejects(
        forced_segments, torch.cat([BATCH_LP[:, :5], torch.zeros(2, 3, V)], dim=1), [5, 5], Y, Y_LENGTHS,
        arg="log_probs", contract=lambda out: [len(s) for s in out] == [2, 1])),
    # --- CassNAT: construction ---
    ("CassNAT-vocab", lambda: rejects(CassNAT, 1, arg="vocab_size")),
    ("CassNAT-heads", lambda: rejects(CassNAT, V, d=16, heads=3, arg="d")),
    ("CassNAT-odd-d", lambda: rejects(CassNAT, V, d=15, heads=3, arg="d")),
    ("CassNAT-ff", lambda: rejects(CassNAT, V, ff=0, arg="ff")),
    ("CassNAT-max-len", lambda: rejects(CassNAT, V, max_len=0, arg="max_len")),
    ("CassNAT-expand-negative", lambda: rejects(CassNAT, V, expand=-1, arg="expand")),
    ("CassNAT-expand-float", lambda: rejects(CassNAT, V, expand=1.0, arg="expand")),
    ("CassNAT-dropout", lambda: rejects(CassNAT, V, dropout=1.0, arg="dropout")),
    # --- CassNAT: forward, acoustic_embeddings, decode_with_segments ---
    ("CassNAT-forward-memory-width", lambda: rejects(_net(), torch.zeros(2, 8, 15), LENGTHS, SEGMENTS, arg="memory")),
    ("CassNAT-forward-empty-batch", lambda: rejects(_net(), torch.zeros(0, 8, 16), [], [], arg="memory")),
    ("CassNAT-forward-zero-length", lambda: rejects(_net(), MEMORY, [8, 0], SEGMENTS, arg="memory_lengths")),
    ("CassNAT-forward-segments-count", lambda: rejects(_net(), MEMORY, LENGTHS, SEGMENTS[:1], arg="segments")),
    ("CassNAT-forward-segments-tensor", lambda: rejects(_net(), MEMORY, LENGTHS, torch.zeros(2, 1, 2),
                                                        arg="segments")),
    ("CassNAT-forward-segment-past-length", lambda: rejects(_net(), MEMORY, LENGTHS, [[(0, 3)], [(0, 6)]],
                                                            arg="segments")),
    ("CassNAT-forward-segment-empty", lambda: rejects(_net(), MEMORY, LENGTHS, [[(3, 3)], []], arg="segments")),
    ("CassNAT-forward-segments-overlap", lambda: rejects(_net(), MEMORY, LENGTHS, [[(0, 4), (3, 6)], []],
                                                         arg="segments")),
    ("CassNAT-forward-segment-float", lambda: rejects(_net(), MEMORY, LENGTHS, [[(0.0, 3.0)], []], arg="segments")),
    ("CassNAT-forward-segment-triple", lambda: rejects(_net(), MEMORY, LENGTHS, [[(0, 2, 3)], []], arg="segments")),
    ("CassNAT-forward-too-many", lambda: rejects(CassNAT(V, d=16, heads=2, max_len=2), MEMORY, LENGTHS,
                                                 [[(0, 1), (1, 2)], []], arg="segments")),
    ("CassNAT-forward-numpy-ints", lambda: valid_or_rejects(
        _net(), MEMORY, LENGTHS, [[(np.int64(0), np.int64(3))], []], arg="segments",
        contract=lambda out: out.shape == (2, 2, V) and bool(torch.isfinite(out).all()))),
    ("CassNAT-forward-no-tokens", lambda: valid_or_rejects(
        _net(), MEMORY, LENGTHS, [[], []], arg="segments",
        contract=lambda out: out.shape == (2, 1, V) and bool(torch.isfinite(out).all()))),
    ("CassNAT-embeddings-segments", lambda: rejects(_net().acoustic_embeddings, MEMORY, LENGTHS, "0-3",
                                                    arg="segments")),
    ("CassNAT-embeddings-lengths", lambda: rejects(_net().acoustic_embeddings, MEMORY, [8.0, 5.0], SEGMENTS,
                                                   arg="memory_lengths")),
    ("CassNAT-decode-with-segments-row", lambda: rejects(_net().decode_with_segments, MEMORY, LENGTHS,
                                                         [(0, 3), (3, 6)], arg="segments")),
    ("CassNAT-decode-with-segments-ok", lambda: valid_or_rejects(_net().decode_with_segments, MEMORY, LENGTHS,
                                                                 SEGMENTS, arg="segments",
                                                                 contract=lambda out: list(map(len, out)) == [2, 1])),
    # --- CassNAT: loss ---
    ("CassNAT-loss-no-alignment", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, arg="ctc_log_probs")),
    ("CassNAT-loss-sample-needs-ctc", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, segments=SEGMENTS,
                                                      sample=0.5, arg="ctc_log_probs")),
    ("CassNAT-loss-ctc-frames", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, BATCH_LP[:, :6],
                                                arg="ctc_log_probs")),
    ("CassNAT-loss-ctc-logits", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, BATCH_LP * 2,
                                                arg="ctc_log_probs")),
    ("CassNAT-loss-sample-nan", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, BATCH_LP,
                                                sample=math.nan, arg="sample")),
    ("CassNAT-loss-sample-bool", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, BATCH_LP,
                                                 sample=True, arg="sample")),
    ("CassNAT-loss-threshold", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, BATCH_LP,
                                               threshold=-0.1, arg="threshold")),
    ("CassNAT-loss-generator", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, BATCH_LP, sample=0.5,
                                               generator=123, arg="generator")),
    ("CassNAT-loss-targets-float", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y.float(), Y_LENGTHS, BATCH_LP,
                                                   arg="targets")),
    ("CassNAT-loss-eos-in-targets", lambda: rejects(_net().loss, MEMORY, LENGTHS, torch.tensor([[2, 1], [4, 0]]),
                                                    Y_LENGTHS, BATCH_LP, arg="targets")),
    ("CassNAT-loss-big-id", lambda: rejects(_net().loss, MEMORY, LENGTHS, torch.tensor([[2, V], [4, 0]]), Y_LENGTHS,
                                            BATCH_LP, arg="targets")),
    ("CassNAT-loss-target-lengths", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, [3, 1], BATCH_LP,
                                                    arg="target_lengths")),
    ("CassNAT-loss-segments-mismatch", lambda: rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS,
                                                       segments=[[(0, 3)], [(0, 2)]], arg="segments")),
    ("CassNAT-loss-too-short", lambda: rejects(_net().loss, MEMORY, [8, 1], torch.tensor([[2, 3], [4, 4]]), [2, 2],
                                               BATCH_LP, arg="targets")),
    ("CassNAT-loss-finite", lambda: valid_or_rejects(_net().loss, MEMORY, LENGTHS, Y, Y_LENGTHS, BATCH_LP, sample=1.0,
                                                     generator=torch.Generator().manual_seed(0), arg="sample",
                                                     contract=lambda out: bool(torch.isfinite(out)))),
    ("CassNAT-loss-empty-targets", lambda: valid_or_rejects(_net().loss, MEMORY, LENGTHS, Y[:, :0], [0, 0], BATCH_LP,
                                                            arg="targets",
                                                            contract=lambda out: bool(torch.isfinite(out)))),
    # --- CassNAT: decode ---
    ("CassNAT-decode-ctc-missing", lambda: rejects(_net().decode, MEMORY, LENGTHS, None, arg="ctc_log_probs")),
    ("CassNAT-decode-ctc-batch", lambda: rejects(_net().decode, MEMORY, LENGTHS, BATCH_LP[:1], arg="ctc_log_probs")),
    ("CassNAT-decode-ctc-nan", lambda: rejects(_net().decode, MEMORY, LENGTHS, torch.full((2, 8, V), math.nan),
                                               arg="ctc_log_probs")),
    ("CassNAT-decode-ctc-int", lambda: rejects(_net().decode, MEMORY, LENGTHS, torch.zeros(2, 8, V, dtype=torch.long),
                                               arg="ctc_log_probs")),
    ("CassNAT-decode-too-many", lambda: rejects(CassNAT(V, d=16, heads=2, max_len=2).decode, MEMORY, LENGTHS,
                                                torch.eye(V)[[2, 0, 3, 0, 4, 0, 5, 0]].expand(2, 8, V).log_softmax(-1),
                                                arg="ctc_log_probs")),
    ("CassNAT-decode-memory-list", lambda: rejects(_net().decode, MEMORY.tolist(), LENGTHS, BATCH_LP, arg="memory")),
    ("CassNAT-decode-logits", lambda: valid_or_rejects(_net().decode, MEMORY, LENGTHS, BATCH_LP * 4 + 1,
                                                       arg="ctc_log_probs", contract=_token_lists(2))),
    ("CassNAT-decode-all-blank", lambda: valid_or_rejects(_net().decode, MEMORY, LENGTHS,
                                                          torch.eye(V)[[0] * 8].expand(2, 8, V).log_softmax(-1),
                                                          arg="ctc_log_probs",
                                                          contract=lambda out: out == [[], []])),
]


test_probe, test_probe_ids_are_unique, test_every_covered_name_is_probed = probe_table_tests(PROBES, COVERED)
