"""Hostile inputs for arlib.speech.decoding: every public function and class answers a bad argument with a
valid result or a ValueError/TypeError naming the argument (:func:`hostile.rejects`,
:func:`hostile.valid_or_rejects`). Each probe is one parametrized case, so that the suite counts them."""

from __future__ import annotations

import math

import numpy as np
import torch
from hostile import probe_table_tests, public_api, rejects, valid_or_rejects

from arlib.speech import decoding
from arlib.speech.decoding import (
    CTCPrefixScorer,
    attention_rescore,
    joint_beam_search,
    lexicon_beam_search,
    snap_to_lexicon,
)
from arlib.speech.models import EOS, AttentionDecoder, CTCModel, TranscriptVocab

COVERED = {
    "arlib.speech.decoding.snap_to_lexicon", "arlib.speech.decoding.lexicon_beam_search",
    "arlib.speech.decoding.CTCPrefixScorer", "arlib.speech.decoding.joint_beam_search",
    "arlib.speech.decoding.attention_rescore",
}


def test_covered_is_exactly_the_public_api_of_decoding():
    mine = {n for n in public_api() if n.startswith("arlib.speech.decoding.")}
    assert mine == COVERED, f"missing {sorted(mine - COVERED)}, stale {sorted(COVERED - mine)}"


# --- fixtures ---------------------------------------------------------------------------------------

VOCAB = TranscriptVocab()
WORDS = ["one", "two", "stop", "go"]
V = 9  # the tiny decoder's ids: blank, EOS, 7 labels


def _lp(T, C, seed=0):
    return torch.randn(T, C, generator=torch.Generator().manual_seed(seed)).log_softmax(-1)


CHAR_LP = _lp(12, VOCAB.size)  # (T, C) over the vocab's characters
CTC_LP = _lp(10, V)  # (T, V) for the tiny decoder


def _decoder():
    torch.manual_seed(0)
    return AttentionDecoder(vocab_size=V, d=16, layers=1, heads=2, ff=32, max_len=8).eval()


MEMORY, LENGTHS = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([5])


def _scorer():
    return CTCPrefixScorer(CTC_LP)


def _with_nan(t):
    t = t.clone()
    t[0, 0] = math.nan
    return t


def _with_neg_inf(t):
    t = t.clone()
    t[0, 3] = -math.inf
    return t.log_softmax(-1)


def _lexicon_words_only(out, lexicon=WORDS):
    """The contract of lexicon_beam_search: (ids, log p) pairs best first, each a sequence of lexicon words
    (or, from a beam with no complete word, every word but the last)."""
    if not out or [s for _, s in out] != sorted((s for _, s in out), reverse=True):
        return False
    for ids, score in out:
        words = VOCAB.decode(list(ids)).split(" ")
        if math.isnan(score) or not all(w in lexicon for w in words[:-1]):
            return False
    return True


def _hypotheses(out, V=V):
    """The contract of joint_beam_search: (labels, score) best first, labels in [2, V), no NaN."""
    return bool(out) and all(all(isinstance(c, int) and 2 <= c < V for c in h) and not math.isnan(s)
                             for h, s in out) and [s for _, s in out] == sorted((s for _, s in out), reverse=True)


def _rescored(n):
    return lambda out: len(out) == n and all(not math.isnan(c) and not math.isnan(a) for _, c, _, a in out)


BAD_LOG_PROBS = [  # (id, value, columns): not a (T, C) tensor of log-probabilities with C columns
    ("none", None), ("list", [[0.0]]), ("numpy", np.zeros((3, 4))), ("int", torch.zeros(3, 4, dtype=torch.long)),
    ("1d", torch.zeros(4)), ("3d", torch.zeros(1, 3, 4)), ("empty", torch.zeros(0, 4)), ("logits", torch.ones(3, 4)),
    ("nan", "nan"), ("+inf", "inf"),
]


def _bad_lp(bad, like):
    if isinstance(bad, str) and bad == "nan":
        return _with_nan(like)
    if isinstance(bad, str) and bad == "inf":
        t = like.clone()
        t[0, 0] = math.inf
        return t
    return bad


PROBES = [
    # --- snap_to_lexicon ---
    *[(f"snap_to_lexicon-transcript-{name}", lambda bad=bad: rejects(snap_to_lexicon, bad, WORDS, arg="transcript"))
      for name, bad in [("none", None), ("int", 3), ("bytes", b"two"), ("list", ["two"])]],
    *[(f"snap_to_lexicon-lexicon-{name}", lambda bad=bad: rejects(snap_to_lexicon, "two", bad, arg="lexicon"))
      for name, bad in [("none", None), ("str", "one two"), ("empty", []), ("set", {"one", "two"}),
                        ("spaced", ["one two"]), ("blank-word", ["", "one"]), ("int-word", [1, "one"]),
                        ("dict", {"one": 1}), ("tab", ["on\te"])]],
    ("snap_to_lexicon-empty-transcript", lambda: valid_or_rejects(snap_to_lexicon, "", WORDS, arg="transcript",
                                                                  contract=lambda out: out == "")),
    ("snap_to_lexicon-tuple-lexicon", lambda: valid_or_rejects(snap_to_lexicon, "twu", tuple(WORDS), arg="lexicon",
                                                               contract=lambda out: out == "two")),
    # --- lexicon_beam_search ---
    *[(f"lexicon_beam_search-log_probs-{name}",
       lambda bad=bad: rejects(lexicon_beam_search, _bad_lp(bad, CHAR_LP), VOCAB, arg="log_probs"))
      for name, bad in BAD_LOG_PROBS],
    ("lexicon_beam_search-log_probs-columns", lambda: rejects(lexicon_beam_search, _lp(5, 7), VOCAB,
                                                              arg="log_probs")),
    ("lexicon_beam_search-log_probs-neg-inf", lambda: valid_or_rejects(
        lexicon_beam_search, _with_neg_inf(CHAR_LP), VOCAB, WORDS, arg="log_probs", contract=_lexicon_words_only)),
    ("lexicon_beam_search-log_probs-float64", lambda: valid_or_rejects(
        lexicon_beam_search, CHAR_LP.double(), VOCAB, WORDS, arg="log_probs", contract=_lexicon_words_only)),
    *[(f"lexicon_beam_search-vocab-{name}", lambda bad=bad: rejects(lexicon_beam_search, CHAR_LP, bad, arg="vocab"))
      for name, bad in [("none", None), ("word-units", TranscriptVocab(unit="word")), ("str", "abc"),
                        ("list", list(VOCAB.chars))]],
    *[(f"lexicon_beam_search-lexicon-{name}",
       lambda bad=bad: rejects(lexicon_beam_search, CHAR_LP, VOCAB, bad, arg="lexicon"))
      for name, bad in [("str", "two"), ("empty", []), ("spaced", ["two stop"]), ("unknown-char", ["tw0"]),
                        ("blank-word", [""]), ("none-word", [None]), ("set", {"two"})]],
    *[(f"lexicon_beam_search-beam-{name}",
       lambda bad=bad: rejects(lexicon_beam_search, CHAR_LP, VOCAB, WORDS, bad, arg="beam"))
      for name, bad in [("zero", 0), ("negative", -1), ("float", 2.5), ("bool", True), ("str", "8"), ("none", None)]],
    *[(f"lexicon_beam_search-prune-{name}",
       lambda bad=bad: rejects(lexicon_beam_search, CHAR_LP, VOCAB, WORDS, 4, bad, arg="prune"))
      for name, bad in [("nan", math.nan), ("str", "-12"), ("none", None), ("bool", False)]],
    ("lexicon_beam_search-prune-inf", lambda: valid_or_rejects(
        lexicon_beam_search, CHAR_LP, VOCAB, WORDS, 4, math.inf, arg="prune",
        contract=lambda out: out == [((), out[0][1])])),  # only blanks are tried: the empty transcript
    ("lexicon_beam_search-one-frame", lambda: valid_or_rejects(
        lexicon_beam_search, CHAR_LP[:1], VOCAB, WORDS, arg="log_probs", contract=_lexicon_words_only)),
    ("lexicon_beam_search-numpy-beam", lambda: valid_or_rejects(
        lexicon_beam_search, CHAR_LP, VOCAB, WORDS, np.int64(3), arg="beam", contract=_lexicon_words_only)),
    # --- CTCPrefixScorer ---
    *[(f"CTCPrefixScorer-log_probs-{name}", lambda bad=bad: rejects(CTCPrefixScorer, _bad_lp(bad, CTC_LP),
                                                                    arg="log_probs"))
      for name, bad in BAD_LOG_PROBS],
    ("CTCPrefixScorer-one-column", lambda: rejects(CTCPrefixScorer, torch.zeros(3, 1), arg="log_probs")),
    *[(f"CTCPrefixScorer-blank-{name}", lambda bad=bad: rejects(CTCPrefixScorer, CTC_LP, bad, arg="blank"))
      for name, bad in [("negative", -1), ("too-big", V), ("float", 0.0), ("none", None)]],
    *[(f"CTCPrefixScorer-eos-{name}", lambda bad=bad: rejects(CTCPrefixScorer, CTC_LP, 0, bad, arg="eos"))
      for name, bad in [("blank", 0), ("too-big", V), ("str", "1"), ("bool", True)]],
    ("CTCPrefixScorer-neg-inf", lambda: valid_or_rejects(
        lambda: _scorer_of(_with_neg_inf(CTC_LP)).score([3, 4, EOS]), arg="log_probs",
        contract=lambda s: not math.isnan(s) and s <= 0)),
    ("CTCPrefixScorer-initial_state", lambda: valid_or_rejects(
        lambda: _scorer().initial_state(), arg="state",
        contract=lambda r: r.shape == (11, 2, 1) and r[0, 1, 0] == 0 and (r[:, 0] == -math.inf).all())),
    *[(f"CTCPrefixScorer-extend-state-{name}",
       lambda bad=bad: rejects(_scorer().extend, bad, torch.tensor([EOS]), torch.tensor([[2]]), arg="state"))
      for name, bad in [("none", None), ("float32", torch.zeros(11, 2, 1)), ("short", torch.zeros(5, 2, 1).double()),
                        ("2d", torch.zeros(11, 2).double()), ("nan", torch.full((11, 2, 1), math.nan).double()),
                        ("positive", torch.ones(11, 2, 1).double())]],
    *[(f"CTCPrefixScorer-extend-last-{name}",
       lambda bad=bad: rejects(_scorer().extend, _scorer().initial_state(), bad, torch.tensor([[2]]), arg="last"))
      for name, bad in [("none", None), ("list", [EOS]), ("float", torch.tensor([1.0])), ("2d", torch.tensor([[1]])),
                        ("batch", torch.tensor([1, 1]))]],
    *[(f"CTCPrefixScorer-extend-candidates-{name}",
       lambda bad=bad: rejects(_scorer().extend, _scorer().initial_state(), torch.tensor([EOS]), bad,
                               arg="candidates"))
      for name, bad in [("none", None), ("blank", torch.tensor([[0]])), ("too-big", torch.tensor([[V]])),
                        ("negative", torch.tensor([[-1]])), ("float", torch.tensor([[2.0]])),
                        ("1d", torch.tensor([2])), ("batch", torch.tensor([[2], [3]])),
                        ("bool", torch.tensor([[True]]))]],
    ("CTCPrefixScorer-extend-no-candidates", lambda: valid_or_rejects(
        _scorer().extend, _scorer().initial_state(), torch.tensor([EOS]), torch.zeros(1, 0, dtype=torch.long),
        arg="candidates", contract=lambda out: out[0].shape == (1, 0))),
    *[(f"CTCPrefixScorer-score-{name}", lambda bad=bad: rejects(_scorer().score, bad, arg="labels"))
      for name, bad in [("none", None), ("str", "23"), ("blank", [2, 0]), ("eos-inside", [2, EOS, 3]),
                        ("too-big", [V]), ("float", [2.0]), ("bool", [True]), ("2d-tensor", torch.tensor([[2]])),
                        ("float-tensor", torch.tensor([2.0]))]],
    ("CTCPrefixScorer-score-tensor", lambda: valid_or_rejects(
        _scorer().score, torch.tensor([2, 3]), arg="labels", contract=lambda s: s == _scorer().score([2, 3]))),
    ("CTCPrefixScorer-score-too-long", lambda: valid_or_rejects(
        _scorer().score, [2, 3] * 6, arg="labels", contract=lambda s: s == -math.inf)),
    # --- joint_beam_search ---
    *[(f"joint_beam_search-decoder-{name}",
       lambda bad=bad: rejects(joint_beam_search, bad, MEMORY, LENGTHS, CTC_LP, arg="decoder"))
      for name, bad in [("none", None), ("ctc-model", CTCModel(V, n_mels=8, d=16, layers=1, heads=2, ff=32)),
                        ("module", torch.nn.Linear(2, 2))]],
    ("joint_beam_search-decoder-max_len-1", lambda: rejects(
        joint_beam_search, AttentionDecoder(V, d=16, layers=1, heads=2, ff=32, max_len=1), MEMORY, LENGTHS, CTC_LP,
        arg="decoder")),
    *[(f"joint_beam_search-memory-{name}",
       lambda bad=bad: rejects(joint_beam_search, _decoder(), bad, LENGTHS, CTC_LP, arg="memory"))
      for name, bad in [("none", None), ("batch-2", torch.zeros(2, 5, 16)), ("width", torch.zeros(1, 5, 8)),
                        ("int", torch.zeros(1, 5, 16, dtype=torch.long)), ("2d", torch.zeros(5, 16)),
                        ("nan", torch.full((1, 5, 16), math.nan)), ("float64", MEMORY.double())]],
    *[(f"joint_beam_search-memory_lengths-{name}",
       lambda bad=bad: rejects(joint_beam_search, _decoder(), MEMORY, bad, CTC_LP, arg="memory_lengths"))
      for name, bad in [("zero", [0]), ("too-long", [6]), ("float", [2.5]), ("two", [5, 5]), ("none", None)]],
    *[(f"joint_beam_search-ctc_log_probs-{name}",
       lambda bad=bad: rejects(joint_beam_search, _decoder(), MEMORY, LENGTHS, _bad_lp(bad, CTC_LP),
                               arg="ctc_log_probs"))
      for name, bad in BAD_LOG_PROBS],
    ("joint_beam_search-ctc_log_probs-columns", lambda: rejects(
        joint_beam_search, _decoder(), MEMORY, LENGTHS, _lp(10, V + 1), arg="ctc_log_probs")),
    *[(f"joint_beam_search-beam-{name}",
       lambda bad=bad: rejects(joint_beam_search, _decoder(), MEMORY, LENGTHS, CTC_LP, bad, arg="beam"))
      for name, bad in [("zero", 0), ("negative", -2), ("float", 4.0), ("bool", True), ("none", None)]],
    *[(f"joint_beam_search-ctc_weight-{name}",
       lambda bad=bad: rejects(joint_beam_search, _decoder(), MEMORY, LENGTHS, CTC_LP, 2, bad, arg="ctc_weight"))
      for name, bad in [("negative", -0.1), ("above-one", 1.5), ("nan", math.nan), ("str", "0.3"), ("bool", True),
                        ("none", None), ("inf", math.inf)]],
    *[(f"joint_beam_search-max_len-{name}",
       lambda bad=bad: rejects(joint_beam_search, _decoder(), MEMORY, LENGTHS, CTC_LP, 2, 0.3, bad, arg="max_len"))
      for name, bad in [("zero", 0), ("too-long", 8), ("float", 3.0), ("str", "3")]],
    *[(f"joint_beam_search-pre_beam-{name}",
       lambda bad=bad: rejects(joint_beam_search, _decoder(), MEMORY, LENGTHS, CTC_LP, 2, 0.3, None, bad,
                               arg="pre_beam"))
      for name, bad in [("zero", 0), ("vocab", V), ("float", 2.0), ("negative", -1)]],
    *[(f"joint_beam_search-valid-{name}",
       lambda kw=kw: valid_or_rejects(joint_beam_search, _decoder(), MEMORY, LENGTHS, CTC_LP, arg="beam",
                                      contract=_hypotheses, **kw))
      for name, kw in [("beam-1", dict(beam=1)), ("pre_beam-1", dict(pre_beam=1)), ("ctc-only", dict(ctc_weight=1)),
                       ("attention-only", dict(ctc_weight=0)), ("max_len-1", dict(max_len=1)),
                       ("wide-beam", dict(beam=20)), ("numpy-weight", dict(ctc_weight=np.float32(0.5)))]],
    ("joint_beam_search-one-frame", lambda: valid_or_rejects(
        joint_beam_search, _decoder(), MEMORY, LENGTHS, CTC_LP[:1], arg="ctc_log_probs",
        contract=lambda out: _hypotheses(out) and all(len(h) <= 1 for h, _ in out))),
    ("joint_beam_search-neg-inf", lambda: valid_or_rejects(
        joint_beam_search, _decoder(), MEMORY, LENGTHS, _with_neg_inf(CTC_LP), arg="ctc_log_probs",
        contract=_hypotheses)),
    # --- attention_rescore ---
    *[(f"attention_rescore-decoder-{name}",
       lambda bad=bad: rejects(attention_rescore, bad, MEMORY, LENGTHS, [((2,), -1.0)], arg="decoder"))
      for name, bad in [("none", None), ("str", "decoder")]],
    *[(f"attention_rescore-memory-{name}",
       lambda bad=bad: rejects(attention_rescore, _decoder(), bad, LENGTHS, [((2,), -1.0)], arg="memory"))
      for name, bad in [("batch-2", torch.zeros(2, 5, 16)), ("nan", torch.full((1, 5, 16), math.nan)),
                        ("list", [[0.0] * 16]), ("float16", MEMORY.half())]],
    ("attention_rescore-memory_lengths", lambda: rejects(attention_rescore, _decoder(), MEMORY, [9], [((2,), -1.0)],
                                                         arg="memory_lengths")),
    *[(f"attention_rescore-nbest-{name}",
       lambda bad=bad: rejects(attention_rescore, _decoder(), MEMORY, LENGTHS, bad, arg="nbest"))
      for name, bad in [("none", None), ("empty", []), ("str", "23"), ("dict", {(2,): -1.0}),
                        ("no-score", [((2, 3),)]), ("blank", [((0, 2), -1.0)]), ("eos", [((2, EOS), -1.0)]),
                        ("too-big", [((V,), -1.0)]), ("float-id", [((2.5,), -1.0)]), ("str-score", [((2,), "x")]),
                        ("nan-score", [((2,), math.nan)]), ("positive-score", [((2,), 1.0)]),
                        ("too-long", [((2,) * 8, -1.0)]), ("bare-ids", [(2, 3)]), ("none-ids", [(None, -1.0)]),
                        ("2d-tensor", [(torch.tensor([[2]]), -1.0)]), ("bool-score", [((2,), True)])]],
    *[(f"attention_rescore-ctc_weight-{name}",
       lambda bad=bad: rejects(attention_rescore, _decoder(), MEMORY, LENGTHS, [((2,), -1.0)], bad, arg="ctc_weight"))
      for name, bad in [("negative", -1), ("above-one", 2), ("nan", math.nan), ("str", "0.5")]],
    ("attention_rescore-neg-inf-ctc", lambda: valid_or_rejects(
        attention_rescore, _decoder(), MEMORY, LENGTHS, [((2,), -math.inf), ((3,), -1.0)], 0.0, arg="nbest",
        contract=_rescored(2))),
    ("attention_rescore-longest", lambda: valid_or_rejects(
        attention_rescore, _decoder(), MEMORY, LENGTHS, [((2,) * 7, -1.0), ((), -2.0)], arg="nbest",
        contract=_rescored(2))),
    ("attention_rescore-tensor-ids", lambda: valid_or_rejects(
        attention_rescore, _decoder(), MEMORY, LENGTHS, [(torch.tensor([2, 3]), -1.0)], arg="nbest",
        contract=lambda out: out[0][0] == (2, 3))),
    ("attention_rescore-numpy-ids", lambda: valid_or_rejects(
        attention_rescore, _decoder(), MEMORY, LENGTHS, [([np.int64(2)], np.float32(-1.0))], arg="nbest",
        contract=_rescored(1))),
]


def _scorer_of(lp):
    return CTCPrefixScorer(lp)


test_probe, test_probe_ids_are_unique, test_every_covered_name_is_probed = probe_table_tests(PROBES, COVERED)


def test_all_lists_exactly_the_covered_names():
    assert set(decoding.__all__) == {name.rsplit(".", 1)[1] for name in COVERED}


def test_inputs_are_never_modified():
    lp, char_lp, memory = CTC_LP.clone(), CHAR_LP.clone(), MEMORY.clone()
    joint_beam_search(_decoder(), MEMORY, LENGTHS, CTC_LP, beam=2)
    attention_rescore(_decoder(), MEMORY, LENGTHS, [((2,), -1.0)])
    lexicon_beam_search(CHAR_LP, VOCAB, WORDS)
    scorer = _scorer()
    state = scorer.initial_state()
    before = state.clone()
    scorer.extend(state, torch.tensor([EOS]), torch.tensor([[2, 3]]))
    assert torch.equal(lp, CTC_LP) and torch.equal(char_lp, CHAR_LP) and torch.equal(memory, MEMORY)
    assert torch.equal(state, before)
