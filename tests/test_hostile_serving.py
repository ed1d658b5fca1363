"""Hostile inputs for arlib.speech, arlib.serving and arlib.checks (issue 23, parts 4 and 5).

Every public function and class of these parts answers a bad argument with a valid result or a
ValueError/TypeError naming the argument (:func:`hostile.rejects`, :func:`hostile.valid_or_rejects`); an
exercise check answers a bad learner's function with a :class:`~arlib.checks.CheckFailed` that explains.
Each probe is one parametrized case, so that the suite counts them.
"""

from __future__ import annotations

import inspect
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hostile import probe_table_tests, public_api, rejects, valid_or_rejects
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_gpt

import arlib.checks
from arlib.checks import core as checks_core
from arlib.checks.core import Check, CheckFailed, as_integer, as_number, as_token_list, is_index_tensor
from arlib.serving import evaluate, eviction, gear, memory, paged, quant, scheduler
from arlib.speech import audio, ctc, error_rates, models, paraformer, recipes
from arlib.text.gpt import GPT, GPTConfig, KVCache

COVERED = {
    # arlib.speech
    "arlib.speech.audio.hz_to_mel", "arlib.speech.audio.mel_to_hz", "arlib.speech.audio.mel_filterbank",
    "arlib.speech.audio.log_mel", "arlib.speech.audio.spec_augment",
    "arlib.speech.ctc.ctc_forward", "arlib.speech.ctc.ctc_loss", "arlib.speech.ctc.greedy_decode",
    "arlib.speech.ctc.interleave_blanks", "arlib.speech.ctc.prefix_beam_search", "arlib.speech.ctc.token_segments",
    "arlib.speech.ctc.viterbi_align",
    "arlib.speech.error_rates.char_error_rate", "arlib.speech.error_rates.edit_distance",
    "arlib.speech.error_rates.word_error_rate", "arlib.speech.error_rates.error_counts",
    "arlib.speech.error_rates.word_error_counts", "arlib.speech.error_rates.wer_interval",
    "arlib.speech.error_rates.wer_difference",
    "arlib.speech.models.AttentionDecoder", "arlib.speech.models.CTCModel", "arlib.speech.models.CTCHead",
    "arlib.speech.models.HybridCTCAttention", "arlib.speech.recipes.bucketed_batch",
    "arlib.speech.models.CrossAttention",
    "arlib.speech.models.DecoderBlock", "arlib.speech.models.DecoderCache", "arlib.speech.models.SpeechEncoder",
    "arlib.speech.models.TranscriptVocab", "arlib.speech.models.layer_config", "arlib.speech.models.padding_mask",
    "arlib.speech.models.sinusoids", "arlib.speech.models.speech_features", "arlib.speech.models.speech_layer",
    "arlib.speech.paraformer.CIFPredictor", "arlib.speech.paraformer.Paraformer", "arlib.speech.paraformer.cif",
    "arlib.speech.paraformer.cif_weights",
    "arlib.speech.recipes.SpeechRecipe", "arlib.speech.recipes.build_from_meta", "arlib.speech.recipes.build_speech",
    "arlib.speech.recipes.encode_all", "arlib.speech.recipes.load_speech", "arlib.speech.recipes.run_speech_recipe",
    # arlib.serving
    "arlib.serving.evaluate.CacheQuality", "arlib.serving.evaluate.cache_quality",
    "arlib.serving.evaluate.full_logits", "arlib.serving.evaluate.heldout_sequences",
    "arlib.serving.eviction.EvictingCache", "arlib.serving.eviction.HeavyHitterCache",
    "arlib.serving.eviction.SinkCache", "arlib.serving.eviction.SlidingWindowCache",
    "arlib.serving.eviction.attention_probs", "arlib.serving.eviction.heavy_hitter_keep",
    "arlib.serving.eviction.sink_keep", "arlib.serving.eviction.window_keep",
    "arlib.serving.gear.GEARCache", "arlib.serving.gear.GEARParts", "arlib.serving.gear.component_bytes",
    "arlib.serving.gear.gear_compress", "arlib.serving.gear.gear_decompress", "arlib.serving.gear.gear_errors",
    "arlib.serving.gear.outlier_mask", "arlib.serving.gear.power_iteration",
    "arlib.serving.memory.DecodeTraffic", "arlib.serving.memory.ModelShape", "arlib.serving.memory.OneKeyCache",
    "arlib.serving.memory.StepTiming", "arlib.serving.memory.TimedCache", "arlib.serving.memory.cache_weight_ratio",
    "arlib.serving.memory.crossover_context", "arlib.serving.memory.decode_step_profile",
    "arlib.serving.memory.decode_traffic", "arlib.serving.memory.gpt_params", "arlib.serving.memory.kv_bytes_per_token",
    "arlib.serving.memory.llama_params", "arlib.serving.memory.request_bytes", "arlib.serving.memory.requests_that_fit",
    "arlib.serving.paged.BlockAllocator", "arlib.serving.paged.OutOfBlocksError", "arlib.serving.paged.PagedKVCache",
    "arlib.serving.paged.blocks_for",
    "arlib.serving.quant.Quantized", "arlib.serving.quant.QuantizedCache", "arlib.serving.quant.capture_kv",
    "arlib.serving.quant.dequantize", "arlib.serving.quant.fake_quantize", "arlib.serving.quant.grouping_axis",
    "arlib.serving.quant.quantize", "arlib.serving.quant.quantize_kv", "arlib.serving.quant.quantized_bits",
    "arlib.serving.quant.relative_error",
    "arlib.serving.scheduler.Request", "arlib.serving.scheduler.make_workload",
    "arlib.serving.scheduler.parallel_sampling_blocks", "arlib.serving.scheduler.reservation",
    "arlib.serving.scheduler.simulate_serving", "arlib.serving.scheduler.speech_lengths",
    # arlib.checks: the machinery, and (below) every exercise check, which test_a_bad_learner_function_fails_clearly
    # runs on the bad learners' functions
    "arlib.checks.core.Check", "arlib.checks.core.CheckFailed", "arlib.checks.core.as_integer",
    "arlib.checks.core.as_number", "arlib.checks.core.as_token_list", "arlib.checks.core.is_index_tensor",
}
EXERCISE_CHECKS = sorted(set(arlib.checks.__all__) - {"CheckFailed"})
COVERED |= {f"{getattr(arlib.checks, name).__module__}.{name}" for name in EXERCISE_CHECKS}


def test_covered_is_exactly_the_public_api_of_these_parts():
    # newer speech modules keep their probes in their own tests/test_hostile_speech_*.py
    elsewhere = ("arlib.speech.decoding.", "arlib.speech.cass_nat.", "arlib.speech.conditions.")
    mine = {n for n in public_api() if n.split(".")[1] in ("speech", "serving", "checks")
            and not n.startswith(elsewhere)}
    assert mine == COVERED, f"missing {sorted(mine - COVERED)}, stale {sorted(COVERED - mine)}"


# --- fixtures ---------------------------------------------------------------------------------------

CONFIG = GPTConfig(vocab_size=13, block_size=64, n_layer=2, n_head=2, n_embd=16)
LOG_PROBS = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0)).log_softmax(-1)  # (B, T, C)
TARGETS, T_LENGTHS = torch.tensor([[1, 2], [3, 3]]), [2, 2]


def _kv(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _model():
    return tiny_gpt(0)


def _decoder():
    torch.manual_seed(0)
    return models.AttentionDecoder(vocab_size=9, d=16, layers=1, heads=2, ff=32, max_len=8).eval()


def _paraformer():
    torch.manual_seed(0)
    return paraformer.Paraformer(vocab_size=9, d=16, layers=1, heads=2, ff=32).eval()


def _ctc_model():
    torch.manual_seed(0)
    return models.CTCModel(vocab_size=5, n_mels=8, d=16, layers=1, heads=2, ff=32).eval()


def _shape():
    return memory.LLAMA2_7B


def _quantized():
    return quant.quantize(_kv(1, 2, 4, 8), 4, -1, 4)


def _parts():
    return gear.gear_compress(_kv(1, 2, 8, 4), 4, 1, 0.1)


def _quality():
    z = torch.zeros(2, 3, dtype=torch.float64)
    return evaluate.CacheQuality(z, z, z + 1, z + 1, 10.0, 4)


def _requests():
    return [scheduler.Request(0, 10, 5), scheduler.Request(1, 20, 8)]


def _allocator():
    alloc = paged.BlockAllocator(2)
    alloc.allocate()
    return alloc


def _paged():
    return paged.PagedKVCache(CONFIG, 1, 8, 4)


def _exhaust():
    alloc = paged.BlockAllocator(1)
    alloc.allocate()
    alloc.allocate()


def _cif_weights_check(out):
    return isinstance(out, torch.Tensor) and torch.isfinite(out).all()


def _qkv():
    """q, k, v of one new position for a cache of CONFIG (2 heads of 8 channels) and batch 1."""
    return _kv(1, 2, 1, 8), _kv(1, 2, 1, 8, seed=1), _kv(1, 2, 1, 8, seed=2)


CACHES = {
    "PagedKVCache": _paged,
    "SlidingWindowCache": lambda: eviction.SlidingWindowCache(CONFIG, 1, 4),
    "SinkCache": lambda: eviction.SinkCache(CONFIG, 1, 4, n_sink=1),
    "HeavyHitterCache": lambda: eviction.HeavyHitterCache(CONFIG, 1, 4),
    "QuantizedCache": lambda: quant.QuantizedCache(CONFIG, 1, 4, group_size=4, residual=8),
    "GEARCache": lambda: gear.GEARCache(CONFIG, 1),
    "TimedCache": lambda: memory.TimedCache(_paged()),  # its inner cache checks (OneKeyCache does not: timing)
}


# Each probe: (id, callable that asserts). The callables use hostile's rejects / valid_or_rejects.
PROBES = [
    # --- speech.audio ---
    ("hz_to_mel-nan", lambda: rejects(audio.hz_to_mel, float("nan"), arg="f")),
    ("hz_to_mel-negative", lambda: rejects(audio.hz_to_mel, torch.tensor([-1.0]), arg="f")),
    ("hz_to_mel-string", lambda: rejects(audio.hz_to_mel, "100", arg="f")),
    ("hz_to_mel-numpy-float", lambda: valid_or_rejects(audio.hz_to_mel, np.float32(700.0), arg="f",
                                                       contract=lambda m: abs(float(m) - 781.17) < 0.1)),
    ("mel_to_hz-nan", lambda: rejects(audio.mel_to_hz, torch.tensor([1.0, float("nan")]), arg="m")),
    ("mel_to_hz-negative", lambda: rejects(audio.mel_to_hz, -10.0, arg="m")),
    ("mel_to_hz-complex", lambda: rejects(audio.mel_to_hz, torch.tensor([1j]), arg="m")),
    ("mel_filterbank-zero-mels", lambda: rejects(audio.mel_filterbank, 0, 400, 16000, arg="n_mels")),
    ("mel_filterbank-float-fft", lambda: rejects(audio.mel_filterbank, 10, 400.5, 16000, arg="n_fft")),
    ("mel_filterbank-string-fmin", lambda: rejects(audio.mel_filterbank, 10, 400, 16000, "0", arg="f_min")),
    ("mel_filterbank-nan-fmax", lambda: rejects(audio.mel_filterbank, 10, 400, 16000, 0.0, math.nan, arg="f_max")),
    ("mel_filterbank-inverted", lambda: rejects(audio.mel_filterbank, 10, 400, 16000, 5000.0, 100.0, arg="f_min")),
    ("log_mel-int-wave", lambda: rejects(audio.log_mel, torch.zeros(800, dtype=torch.long), arg="wave")),
    ("log_mel-3d-wave", lambda: rejects(audio.log_mel, torch.zeros(1, 1, 800), arg="wave")),
    ("log_mel-nan-wave", lambda: rejects(audio.log_mel, torch.full((800,), math.nan), arg="wave")),
    ("log_mel-short-wave", lambda: rejects(audio.log_mel, torch.zeros(100), arg="wave")),
    ("log_mel-zero-hop", lambda: rejects(audio.log_mel, torch.zeros(800), hop=0, arg="hop")),
    ("log_mel-negative-eps", lambda: rejects(audio.log_mel, torch.zeros(800), eps=-1.0, arg="eps")),
    ("log_mel-zero-mels", lambda: rejects(audio.log_mel, torch.zeros(800), n_mels=0, arg="n_mels")),
    ("spec_augment-2d", lambda: rejects(audio.spec_augment, torch.zeros(4, 5), torch.tensor([4]),
                                        torch.Generator(), arg="feats")),
    ("spec_augment-long-lengths", lambda: rejects(audio.spec_augment, torch.zeros(1, 4, 12), torch.tensor([9]),
                                                  torch.Generator(), arg="lengths")),
    ("spec_augment-list-lengths", lambda: rejects(audio.spec_augment, torch.zeros(1, 4, 12), [4],
                                                  torch.Generator(), arg="lengths")),
    ("spec_augment-no-generator", lambda: rejects(audio.spec_augment, torch.zeros(1, 4, 12), torch.tensor([4]), 0,
                                                  arg="generator")),
    ("spec_augment-negative-masks", lambda: rejects(audio.spec_augment, torch.zeros(1, 4, 12), torch.tensor([4]),
                                                    torch.Generator(), freq_masks=-1, arg="freq_masks")),
    ("spec_augment-nan-ratio", lambda: rejects(audio.spec_augment, torch.zeros(1, 4, 12), torch.tensor([4]),
                                               torch.Generator(), time_ratio=math.nan, arg="time_ratio")),
    # --- speech.ctc ---
    ("ctc_loss-raw-logits", lambda: rejects(ctc.ctc_loss, LOG_PROBS * 3 + 2, [6, 6], TARGETS, T_LENGTHS,
                                            arg="log_probs")),
    ("ctc_loss-blank-C", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 6], TARGETS, T_LENGTHS, blank=4, arg="blank")),
    ("ctc_loss-blank-float", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 6], TARGETS, T_LENGTHS, blank=0.5,
                                             arg="blank")),
    ("ctc_loss-fractional-lengths", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 5.5], TARGETS, T_LENGTHS,
                                                    arg="input_lengths")),
    ("ctc_loss-float-tensor-lengths", lambda: rejects(ctc.ctc_loss, LOG_PROBS, torch.tensor([6.0, 5.5]), TARGETS,
                                                      T_LENGTHS, arg="input_lengths")),
    ("ctc_loss-long-lengths", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 7], TARGETS, T_LENGTHS,
                                              arg="input_lengths")),
    ("ctc_loss-fractional-target-lengths", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 6], TARGETS, [2, 1.5],
                                                           arg="target_lengths")),
    ("ctc_loss-float-targets", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 6], TARGETS.float() + 0.5, T_LENGTHS,
                                               arg="targets")),
    ("ctc_loss-list-targets", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 6], [[1, 2], [3, 3]], T_LENGTHS,
                                              arg="targets")),
    ("ctc_loss-nan", lambda: rejects(ctc.ctc_loss, LOG_PROBS.masked_fill(LOG_PROBS < -2, math.nan), [6, 6], TARGETS,
                                     T_LENGTHS, arg="log_probs")),
    ("ctc_loss-reduction", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 6], TARGETS, T_LENGTHS, reduction="avg",
                                           arg="reduction")),
    ("ctc_loss-zero-infinity-str", lambda: rejects(ctc.ctc_loss, LOG_PROBS, [6, 6], TARGETS, T_LENGTHS,
                                                   zero_infinity="yes", arg="zero_infinity")),
    ("ctc_forward-int-log-probs", lambda: rejects(ctc.ctc_forward, LOG_PROBS.long(), [6, 6], TARGETS, T_LENGTHS,
                                                  arg="log_probs")),
    ("ctc_forward-no-frames", lambda: rejects(ctc.ctc_forward, LOG_PROBS[:, :0], [1, 1], TARGETS, T_LENGTHS,
                                              arg="input_lengths")),
    ("ctc_forward-lengths-count", lambda: rejects(ctc.ctc_forward, LOG_PROBS, [6], TARGETS, T_LENGTHS,
                                                  arg="input_lengths")),
    ("greedy_decode-2d", lambda: rejects(ctc.greedy_decode, LOG_PROBS[0], arg="log_probs")),
    ("greedy_decode-long-lengths", lambda: rejects(ctc.greedy_decode, LOG_PROBS, [6, 9], arg="input_lengths")),
    ("greedy_decode-fractional-lengths", lambda: rejects(ctc.greedy_decode, LOG_PROBS, [6, 2.5],
                                                         arg="input_lengths")),
    ("greedy_decode-blank", lambda: rejects(ctc.greedy_decode, LOG_PROBS, blank=7, arg="blank")),
    ("greedy_decode-nan", lambda: rejects(ctc.greedy_decode, torch.full((1, 3, 4), math.nan), arg="log_probs")),
    ("prefix_beam_search-raw-logits", lambda: rejects(ctc.prefix_beam_search, LOG_PROBS[0] + 5, arg="log_probs")),
    ("prefix_beam_search-blank-C", lambda: rejects(ctc.prefix_beam_search, LOG_PROBS[0], blank=4, arg="blank")),
    ("prefix_beam_search-zero-beam", lambda: rejects(ctc.prefix_beam_search, LOG_PROBS[0], beam=0, arg="beam")),
    ("prefix_beam_search-nan-prune", lambda: rejects(ctc.prefix_beam_search, LOG_PROBS[0], prune=math.nan,
                                                     arg="prune")),
    ("prefix_beam_search-3d", lambda: rejects(ctc.prefix_beam_search, LOG_PROBS, arg="log_probs")),
    ("prefix_beam_search-no-frames", lambda: valid_or_rejects(ctc.prefix_beam_search, LOG_PROBS[0, :0], arg="log_probs",
                                                              contract=lambda r: r == [((), 0.0)])),
    ("interleave_blanks-1d", lambda: rejects(ctc.interleave_blanks, torch.tensor([1, 2]), arg="targets")),
    ("interleave_blanks-float", lambda: rejects(ctc.interleave_blanks, torch.ones(1, 2), arg="targets")),
    ("interleave_blanks-negative-blank", lambda: rejects(ctc.interleave_blanks, TARGETS, -1, arg="blank")),
    ("viterbi_align-raw-logits", lambda: rejects(ctc.viterbi_align, LOG_PROBS[0] + 1, torch.tensor([1, 2]),
                                                 arg="log_probs")),
    ("viterbi_align-2d-target", lambda: rejects(ctc.viterbi_align, LOG_PROBS[0], TARGETS, arg="target")),
    ("viterbi_align-float-target", lambda: rejects(ctc.viterbi_align, LOG_PROBS[0], [1.5, 2], arg="target")),
    ("viterbi_align-blank", lambda: rejects(ctc.viterbi_align, LOG_PROBS[0], [1, 2], blank=9, arg="blank")),
    ("viterbi_align-too-short", lambda: rejects(ctc.viterbi_align, LOG_PROBS[0, :2], [1, 2, 3], arg="log_probs")),
    ("token_segments-list", lambda: rejects(ctc.token_segments, [0, 1, 2], 1, arg="path")),
    ("token_segments-float-count", lambda: rejects(ctc.token_segments, torch.tensor([0, 1, 2]), 1.5,
                                                   arg="num_tokens")),
    ("token_segments-missing-token", lambda: rejects(ctc.token_segments, torch.tensor([0, 1, 2]), 2, arg="path")),
    # --- speech.error_rates ---
    ("edit_distance-int", lambda: rejects(error_rates.edit_distance, 5, "abc", arg="reference")),
    ("edit_distance-none", lambda: rejects(error_rates.edit_distance, "abc", None, arg="hypothesis")),
    ("edit_distance-empty", lambda: valid_or_rejects(error_rates.edit_distance, "", "abc", arg="reference",
                                                     contract=lambda d: d == 3)),
    ("edit_distance-2d-tensor", lambda: rejects(error_rates.edit_distance, torch.zeros(2, 2), [1], arg="reference")),
    ("edit_distance-1d-tensors", lambda: valid_or_rejects(error_rates.edit_distance, torch.tensor([1, 2, 3]),
                                                          torch.tensor([1, 3]), arg="reference",
                                                          contract=lambda d: d == 1 and type(d) is int)),
    ("word_error_rate-ints", lambda: rejects(error_rates.word_error_rate, [1, 2], ["a", "b"], arg="references")),
    ("word_error_rate-string", lambda: rejects(error_rates.word_error_rate, "a b", "a b", arg="references")),
    ("word_error_rate-unequal", lambda: rejects(error_rates.word_error_rate, ["a"], ["a", "b"], arg="references")),
    ("char_error_rate-none-item", lambda: rejects(error_rates.char_error_rate, ["ab"], [None], arg="hypotheses")),
    ("char_error_rate-empty-refs", lambda: rejects(error_rates.char_error_rate, [""], ["x"], arg="references")),
    ("error_counts-int", lambda: rejects(error_rates.error_counts, 5, ["a"], arg="reference")),
    ("error_counts-2d", lambda: rejects(error_rates.error_counts, ["a"], torch.zeros(2, 2), arg="hypothesis")),
    ("word_error_counts-string", lambda: rejects(error_rates.word_error_counts, "a b", "a b", arg="references")),
    ("word_error_counts-empty-refs", lambda: rejects(error_rates.word_error_counts, [""], ["x"], arg="references")),
    ("wer_interval-boots-0", lambda: rejects(error_rates.wer_interval, ["a"], ["a"], boots=0, arg="boots")),
    ("wer_interval-level-1", lambda: rejects(error_rates.wer_interval, ["a"], ["a"], level=1.0, arg="level")),
    ("wer_interval-unequal", lambda: rejects(error_rates.wer_interval, ["a"], ["a", "b"], arg="references")),
    ("wer_difference-none", lambda: rejects(error_rates.wer_difference, ["a"], ["a"], [None], arg="hypotheses")),
    ("wer_difference-level", lambda: rejects(error_rates.wer_difference, ["a"], ["a"], ["a"], level=0, arg="level")),
    # --- speech.models ---
    ("CTCHead-vocab", lambda: rejects(models.CTCHead, 0, arg="vocab_size")),
    ("CTCHead-memory", lambda: rejects(models.CTCHead(5, d=16, heads=2, ff=32), torch.zeros(1, 3, 8),
                                       torch.tensor([3]), arg="memory")),
    ("CTCHead-lengths", lambda: rejects(models.CTCHead(5, d=16, heads=2, ff=32), torch.zeros(1, 3, 16),
                                        torch.tensor([4]), arg="memory_lengths")),
    ("HybridCTCAttention-weight", lambda: rejects(models.HybridCTCAttention, 5, ctc_weight=1.5, arg="ctc_weight")),
    ("HybridCTCAttention-feats", lambda: rejects(models.HybridCTCAttention(5, d=16, heads=2, ff=32, layers=1).losses,
                                                 torch.zeros(1, 8, 3), torch.tensor([8]), torch.tensor([[2]]),
                                                 torch.tensor([1]), arg="feats")),
    ("TranscriptVocab-unit", lambda: rejects(models.TranscriptVocab, unit="phone", arg="unit")),
    ("TranscriptVocab-words-int", lambda: rejects(models.TranscriptVocab, 5, arg="words")),
    ("TranscriptVocab-words-string", lambda: rejects(models.TranscriptVocab, "yes", arg="words")),
    ("TranscriptVocab-encode-int", lambda: rejects(models.TranscriptVocab().encode, 5, arg="transcript")),
    ("TranscriptVocab-encode-unknown", lambda: rejects(models.TranscriptVocab().encode, "zebra", arg="transcript")),
    ("TranscriptVocab-encode-strict", lambda: rejects(models.TranscriptVocab().encode, "yes", strict="no",
                                                      arg="strict")),
    ("TranscriptVocab-decode-out-of-range", lambda: rejects(models.TranscriptVocab().decode, [2, 999], arg="ids")),
    ("TranscriptVocab-decode-float", lambda: rejects(models.TranscriptVocab().decode, [2.5], arg="ids")),
    ("TranscriptVocab-batch-string", lambda: rejects(models.TranscriptVocab().batch, "two", arg="transcripts")),
    ("speech_features-empty", lambda: rejects(models.speech_features, [], arg="waves")),
    ("speech_features-int", lambda: rejects(models.speech_features, 5, arg="waves")),
    ("speech_features-nan", lambda: rejects(models.speech_features, [torch.full((800,), math.nan)], arg="waves")),
    ("speech_features-short", lambda: rejects(models.speech_features, [torch.zeros(10)], arg="waves")),
    ("speech_features-rate", lambda: rejects(models.speech_features, [torch.zeros(800)], 8000, arg="sample_rate")),
    ("padding_mask-list", lambda: rejects(models.padding_mask, [1, 2], 3, arg="lengths")),
    ("padding_mask-long", lambda: rejects(models.padding_mask, torch.tensor([5]), 3, arg="lengths")),
    ("padding_mask-negative-T", lambda: rejects(models.padding_mask, torch.tensor([1]), -1, arg="T")),
    ("padding_mask-float", lambda: rejects(models.padding_mask, torch.tensor([1.5]), 3, arg="lengths")),
    ("sinusoids-odd", lambda: rejects(models.sinusoids, 4, 7, arg="d")),
    ("sinusoids-negative", lambda: rejects(models.sinusoids, -1, 8, arg="T")),
    ("sinusoids-float", lambda: rejects(models.sinusoids, 2.5, 8, arg="T")),
    ("layer_config-zero-heads", lambda: rejects(models.layer_config, 16, 0, 1, 0.0, arg="heads")),
    ("layer_config-zero-layers", lambda: rejects(models.layer_config, 16, 2, 0, 0.0, arg="layers")),
    ("layer_config-dropout", lambda: rejects(models.layer_config, 16, 2, 1, 1.5, arg="dropout")),
    ("layer_config-indivisible", lambda: rejects(models.layer_config, 15, 2, 1, 0.0, arg="d")),
    ("speech_layer-not-block", lambda: rejects(models.speech_layer, torch.nn.Linear(2, 2), arg="block")),
    ("CrossAttention-config", lambda: rejects(models.CrossAttention, {"n_embd": 16}, arg="config")),
    ("CrossAttention-gqa", lambda: rejects(models.CrossAttention, GPTConfig(5, 4, 1, 2, 16, n_kv_head=1),
                                           arg="config")),
    ("DecoderBlock-config", lambda: rejects(models.DecoderBlock, None, arg="config")),
    ("DecoderBlock-approximate", lambda: rejects(models.DecoderBlock, models.layer_config(16, 2, 1, 0.0),
                                                 approximate="sigmoid", arg="approximate")),
    ("SpeechEncoder-mels", lambda: rejects(models.SpeechEncoder, n_mels=0, arg="n_mels")),
    ("SpeechEncoder-heads", lambda: rejects(models.SpeechEncoder, d=15, heads=2, arg="d")),
    ("SpeechEncoder-forward-lengths", lambda: rejects(_ctc_model().encoder, torch.zeros(1, 4, 8), torch.tensor([9]),
                                                      arg="lengths")),
    ("SpeechEncoder-forward-feats", lambda: rejects(_ctc_model().encoder, torch.zeros(1, 4, 3), torch.tensor([4]),
                                                    arg="feats")),
    ("SpeechEncoder-negative-d", lambda: rejects(models.SpeechEncoder, d=-1, arg="d")),
    ("SpeechEncoder-tensor-d", lambda: rejects(models.SpeechEncoder, d=torch.zeros(2), arg="d")),
    ("AttentionDecoder-negative-d", lambda: rejects(models.AttentionDecoder, 9, d=-2, arg="d")),
    ("AttentionDecoder-float-max-len", lambda: rejects(models.AttentionDecoder, 9, max_len=8.0, arg="max_len")),
    ("AttentionDecoder-none-max-len", lambda: rejects(models.AttentionDecoder, 9, max_len=None, arg="max_len")),
    ("Paraformer-heads", lambda: rejects(paraformer.Paraformer, 9, d=16, heads=3, arg="d")),
    ("CTCModel-vocab", lambda: rejects(models.CTCModel, 0, arg="vocab_size")),
    ("CTCModel-forward-lengths", lambda: rejects(_ctc_model(), torch.zeros(1, 4, 8), [2.5], arg="lengths")),
    ("DecoderCache-decoder", lambda: rejects(models.DecoderCache, "decoder", torch.zeros(1, 3, 16), arg="decoder")),
    ("DecoderCache-memory", lambda: rejects(models.DecoderCache, _decoder(), torch.zeros(1, 3, 5), arg="memory")),
    ("AttentionDecoder-vocab", lambda: rejects(models.AttentionDecoder, 1, arg="vocab_size")),
    ("AttentionDecoder-max-len", lambda: rejects(models.AttentionDecoder, 9, max_len=0, arg="max_len")),
    ("AttentionDecoder-tokens-out-of-vocab", lambda: rejects(_decoder(), torch.tensor([[1, 99]]),
                                                             torch.zeros(1, 3, 16), torch.tensor([3]), arg="tokens")),
    ("AttentionDecoder-tokens-float", lambda: rejects(_decoder(), torch.ones(1, 2), torch.zeros(1, 3, 16),
                                                      torch.tensor([3]), arg="tokens")),
    ("AttentionDecoder-memory-lengths", lambda: rejects(_decoder(), torch.tensor([[1]]), torch.zeros(1, 3, 16),
                                                        torch.tensor([4]), arg="memory_lengths")),
    ("AttentionDecoder-greedy-max-len", lambda: rejects(_decoder().greedy, torch.zeros(1, 3, 16), torch.tensor([3]),
                                                        max_len=99, arg="max_len")),
    ("AttentionDecoder-beam-zero", lambda: rejects(_decoder().beam_search, torch.zeros(1, 3, 16), torch.tensor([3]),
                                                   beam=0, arg="beam")),
    ("AttentionDecoder-loss-target-lengths", lambda: rejects(
        _decoder().loss, torch.zeros(1, 3, 16), torch.tensor([3]), torch.tensor([[2, 3]]), torch.tensor([5]),
        arg="target_lengths")),
    ("DecoderCache-reorder", lambda: rejects(_decoder().new_cache(torch.zeros(2, 3, 16)).reorder, torch.tensor([0, 5]),
                                             arg="order")),
    # --- speech.paraformer ---
    ("cif-alpha-nan", lambda: rejects(paraformer.cif, torch.zeros(1, 3, 4), torch.full((1, 3), math.nan), [1],
                                      arg="alpha")),
    ("cif-alpha-negative", lambda: rejects(paraformer.cif, torch.zeros(1, 3, 4), -torch.ones(1, 3), [1],
                                           arg="alpha")),
    ("cif-hidden-list", lambda: rejects(paraformer.cif, [[0.0]], torch.ones(1, 3), [1], arg="hidden")),
    ("cif-negative-count", lambda: rejects(paraformer.cif, torch.zeros(1, 3, 4), torch.ones(1, 3), [-1],
                                           arg="num_tokens")),
    ("cif-fractional-count", lambda: rejects(paraformer.cif, torch.zeros(1, 3, 4), torch.ones(1, 3), [1.5],
                                             arg="num_tokens")),
    ("cif_weights-1d", lambda: rejects(paraformer.cif_weights, torch.ones(3), torch.tensor([1]), arg="alpha")),
    ("cif_weights-count-shape", lambda: rejects(paraformer.cif_weights, torch.ones(2, 3), torch.tensor([1]),
                                                arg="num_tokens")),
    ("cif_weights-zero-tokens", lambda: valid_or_rejects(paraformer.cif_weights, torch.ones(2, 3),
                                                         torch.tensor([0, 0]), arg="num_tokens",
                                                         contract=_cif_weights_check)),
    ("CIFPredictor-even-kernel", lambda: rejects(paraformer.CIFPredictor, 8, 4, arg="kernel")),
    ("CIFPredictor-zero-d", lambda: rejects(paraformer.CIFPredictor, 0, arg="d")),
    ("CIFPredictor-forward-lengths", lambda: rejects(paraformer.CIFPredictor(4), torch.zeros(1, 3, 4),
                                                     torch.tensor([7]), arg="lengths")),
    ("Paraformer-tail", lambda: rejects(paraformer.Paraformer, 9, tail=math.nan, arg="tail")),
    ("Paraformer-token-count-nan", lambda: rejects(_paraformer().token_count, torch.full((1, 3), math.nan),
                                                   arg="alpha")),
    ("Paraformer-vocab", lambda: rejects(paraformer.Paraformer, 0, arg="vocab_size")),
    ("Paraformer-decode-negative-count", lambda: rejects(_paraformer().decode, torch.zeros(1, 3, 16),
                                                         torch.tensor([3]), [-2], arg="num_tokens")),
    ("Paraformer-decode-empty-batch", lambda: rejects(_paraformer().decode, torch.zeros(0, 3, 16),
                                                      torch.zeros(0, dtype=torch.long), arg="memory")),
    ("Paraformer-decode-memory", lambda: rejects(_paraformer().decode, torch.zeros(3, 16), torch.tensor([3]),
                                                 arg="memory")),
    ("Paraformer-loss-glance", lambda: rejects(_paraformer().loss, torch.zeros(1, 3, 16), torch.tensor([3]),
                                               torch.tensor([[2]]), torch.tensor([1]), glance=-1.0, arg="glance")),
    ("Paraformer-loss-targets", lambda: rejects(_paraformer().loss, torch.zeros(1, 3, 16), torch.tensor([3]),
                                                torch.tensor([[99]]), torch.tensor([1]), arg="targets")),
    # --- speech.recipes ---
    ("run_speech_recipe-unknown", lambda: "speech-hybrid" in rejects(recipes.run_speech_recipe, "speech-nope",
                                                                  arg="name")),
    ("run_speech_recipe-steps", lambda: rejects(recipes.run_speech_recipe, "speech-hybrid", steps=-1, arg="steps")),
    ("run_speech_recipe-n-train", lambda: rejects(recipes.run_speech_recipe, "speech-hybrid", n_train=0,
                                                  arg="n_train")),
    ("run_speech_recipe-list", lambda: rejects(recipes.run_speech_recipe, ["speech-hybrid"], arg="name")),
    ("load_speech-unknown", lambda: "speech-aed-words" in rejects(recipes.load_speech, "nope", arg="name")),
    ("build_speech-kind", lambda: rejects(recipes.build_speech, "rnn", {}, arg="kind")),
    ("build_speech-config", lambda: rejects(recipes.build_speech, "hybrid", [5], arg="config")),
    ("build_speech-old-kind", lambda: rejects(recipes.build_speech, "ctc", {}, arg="kind")),
    ("bucketed_batch-empty", lambda: rejects(recipes.bucketed_batch, [], 4, torch.Generator(), arg="order")),
    ("bucketed_batch-size", lambda: rejects(recipes.bucketed_batch, [0, 1], 0, torch.Generator(), arg="batch_size")),
    ("bucketed_batch-generator", lambda: rejects(recipes.bucketed_batch, [0, 1], 1, 3, arg="generator")),
    ("bucketed_batch-small", lambda: valid_or_rejects(recipes.bucketed_batch, [2, 0, 1], 8, torch.Generator(),
                                                      arg="order", contract=lambda b: b == [2, 0, 1])),
    ("build_from_meta-empty", lambda: rejects(recipes.build_from_meta, {}, arg="meta")),
    ("build_from_meta-kind", lambda: rejects(recipes.build_from_meta, {"kind": "x", "config": {}, "unit": "char"},
                                             arg="kind")),
    ("encode_all-model", lambda: rejects(recipes.encode_all, _decoder(), [torch.zeros(4, 8)], "cpu", arg="model")),
    ("encode_all-feats", lambda: rejects(recipes.encode_all, _ctc_model(), [torch.zeros(4, 3)], "cpu", arg="feats")),
    ("encode_all-batch", lambda: rejects(recipes.encode_all, _ctc_model(), [torch.zeros(4, 8)], "cpu", 0,
                                         arg="batch")),
    ("SpeechRecipe-kind", lambda: rejects(recipes.SpeechRecipe, "rnn", recipes.TrainConfig(), 8, "", {},
                                          arg="kind")),
    ("SpeechRecipe-batch", lambda: rejects(recipes.SpeechRecipe, "hybrid", recipes.TrainConfig(), 0, "", {},
                                           arg="batch_size")),
    ("SpeechRecipe-glance", lambda: rejects(recipes.SpeechRecipe, "hybrid", recipes.TrainConfig(), 8, "", {},
                                            glance=2.0, arg="glance")),
    # --- serving.memory ---
    ("kv_bytes_per_token-zero", lambda: rejects(memory.kv_bytes_per_token, 0, 8, 128, arg="n_layer")),
    ("kv_bytes_per_token-float-bytes", lambda: rejects(memory.kv_bytes_per_token, 2, 8, 128, 2.5,
                                                       arg="bytes_per_value")),
    ("kv_bytes_per_token-numpy", lambda: valid_or_rejects(memory.kv_bytes_per_token, np.int64(2), 8, 128,
                                                          arg="n_layer", contract=lambda b: b == 2 * 2 * 8 * 128 * 2)),
    ("gpt_params-dict", lambda: rejects(memory.gpt_params, {"n_embd": 16}, arg="config")),
    ("llama_params-indivisible", lambda: rejects(memory.llama_params, 2, 100, 3, 1, 10, 10, arg="d_model")),
    ("llama_params-tied", lambda: rejects(memory.llama_params, 2, 96, 3, 1, 10, 10, tied="yes", arg="tied")),
    ("ModelShape-kv-heads", lambda: rejects(memory.ModelShape, "m", 2, 8, 3, 64, 128, 1000, arg="n_kv_head")),
    ("ModelShape-name", lambda: rejects(memory.ModelShape, 5, 2, 8, 2, 64, 128, 1000, arg="name")),
    ("ModelShape-from-config", lambda: rejects(memory.ModelShape.from_config, "cfg", arg="config")),
    ("request_bytes-context", lambda: rejects(memory.request_bytes, _shape(), 10 ** 6, arg="context")),
    ("request_bytes-shape", lambda: rejects(memory.request_bytes, "7B", 10, arg="shape")),
    ("requests_that_fit-memory", lambda: rejects(memory.requests_that_fit, _shape(), 0, 10, arg="memory_bytes")),
    ("requests_that_fit-weights", lambda: rejects(memory.requests_that_fit, _shape(), 10 ** 12, 10,
                                                  weight_bytes=-1, arg="weight_bytes")),
    ("cache_weight_ratio-batch", lambda: rejects(memory.cache_weight_ratio, _shape(), 10, 0, arg="batch_size")),
    ("cache_weight_ratio-no-weights", lambda: rejects(memory.cache_weight_ratio, _shape(), 10, weight_bytes=0,
                                                      arg="weight_bytes")),
    ("crossover_context-batch", lambda: rejects(memory.crossover_context, _shape(), -1, arg="batch_size")),
    ("decode_traffic-context", lambda: rejects(memory.decode_traffic, _shape(), 0, arg="context")),
    ("decode_traffic-no-weights", lambda: valid_or_rejects(
        lambda: memory.decode_traffic(_shape(), 16, weight_bytes=0).weight_intensity, arg="weight_bytes",
        contract=lambda x: x == math.inf)),
    ("DecodeTraffic-zeros", lambda: rejects(memory.DecodeTraffic, 0, 0, 0, 0, 0, 0, arg="context")),
    ("DecodeTraffic-no-cache", lambda: rejects(memory.DecodeTraffic, 1, 1, 10, 0, 1, 1, arg="cache_bytes")),
    ("StepTiming-zero-step", lambda: rejects(memory.StepTiming, 4, 1, 0.0, 0.0, 0.0, arg="step_s")),
    ("StepTiming-nan", lambda: rejects(memory.StepTiming, 4, 1, 1.0, math.nan, 0.0, arg="attend_s")),
    ("TimedCache-inner", lambda: rejects(memory.TimedCache, "cache", arg="inner")),
    ("OneKeyCache-batch", lambda: rejects(memory.OneKeyCache, CONFIG, 0, arg="batch_size")),
    ("decode_step_profile-model", lambda: rejects(memory.decode_step_profile, "gpt", [4], arg="model")),
    ("decode_step_profile-contexts", lambda: rejects(memory.decode_step_profile, _model(), [], arg="context_lengths")),
    ("decode_step_profile-too-long", lambda: rejects(memory.decode_step_profile, _model(), [999],
                                                     arg="context_lengths")),
    ("decode_step_profile-repeats", lambda: rejects(memory.decode_step_profile, _model(), [4], repeats=0,
                                                    arg="repeats")),
    ("decode_step_profile-new-cache", lambda: rejects(memory.decode_step_profile, _model(), [4], repeats=1,
                                                      new_cache=5, arg="new_cache")),
    ("decode_step_profile-prompt", lambda: rejects(memory.decode_step_profile, _model(), [4], repeats=1,
                                                   prompt=torch.zeros(1, 4), arg="prompt")),
    # --- serving.paged ---
    ("blocks_for-zero-block", lambda: rejects(paged.blocks_for, 10, 0, arg="block_size")),
    ("blocks_for-negative", lambda: rejects(paged.blocks_for, -1, 4, arg="n_positions")),
    ("blocks_for-float", lambda: rejects(paged.blocks_for, 2.5, 4, arg="n_positions")),
    ("BlockAllocator-zero", lambda: rejects(paged.BlockAllocator, 0, arg="n_blocks")),
    ("BlockAllocator-free-out-of-range", lambda: rejects(_allocator().free, 5, arg="block")),
    ("BlockAllocator-double-free", lambda: rejects(paged.BlockAllocator(2).free, 0, arg="block")),
    ("BlockAllocator-share-float", lambda: rejects(_allocator().share, 0.0, arg="block")),
    ("BlockAllocator-refcount-negative", lambda: rejects(_allocator().refcount, -1, arg="block")),
    ("OutOfBlocksError-when-exhausted", lambda: pytest.raises(paged.OutOfBlocksError, _exhaust)),
    ("PagedKVCache-blocks", lambda: rejects(paged.PagedKVCache, CONFIG, 1, 0, arg="n_blocks")),
    ("PagedKVCache-block-size", lambda: rejects(paged.PagedKVCache, CONFIG, 1, 4, 0, arg="block_size")),
    ("PagedKVCache-config", lambda: rejects(paged.PagedKVCache, "cfg", 1, 4, arg="config")),
    ("PagedKVCache-crop", lambda: rejects(_paged().crop, 3, arg="length")),
    ("PagedKVCache-fork", lambda: rejects(_paged().fork, 4, arg="src_row")),
    ("PagedKVCache-block-table", lambda: rejects(_paged().block_table, 1, arg="row")),
    ("PagedKVCache-remove-only-row", lambda: rejects(_paged().remove_row, 0, arg="row")),
    ("PagedKVCache-advance-negative", lambda: rejects(_paged().advance, -3, arg="T")),
    # --- every cache's attend: the layer and the shapes of q, k, v ---
    *[(f"{name}-attend-layer", lambda make=make: rejects(make().attend, 7, *_qkv(), arg="layer"))
      for name, make in CACHES.items()],
    *[(f"{name}-attend-k-shape", lambda make=make: rejects(make().attend, 0, _qkv()[0], _kv(1, 1, 1, 3), _qkv()[2],
                                                           arg="k"))
      for name, make in CACHES.items()],
    *[(f"{name}-attend-q-batch", lambda make=make: rejects(make().attend, 0, _kv(3, 2, 1, 8), *_qkv()[1:], arg="q"))
      for name, make in CACHES.items()],
    *[(f"{name}-device", lambda cls=cls: rejects(cls, CONFIG, 1, 4, device="nowhere", arg="device"))
      for name, cls in (("PagedKVCache", paged.PagedKVCache), ("SinkCache", eviction.SinkCache),
                        ("QuantizedCache", quant.QuantizedCache))],
    *[(f"{name}-dtype", lambda make=make: rejects(make, arg="dtype"))
      for name, make in (("SlidingWindowCache", lambda: eviction.SlidingWindowCache(CONFIG, 1, 4, dtype=torch.long)),
                         ("GEARCache", lambda: gear.GEARCache(CONFIG, 1, dtype="float")),
                         ("OneKeyCache", lambda: memory.OneKeyCache(CONFIG, 1, dtype=3)),
                         ("HeavyHitterCache", lambda: eviction.HeavyHitterCache(CONFIG, 1, 4, dtype=None)))],
    ("OneKeyCache-config", lambda: rejects(memory.OneKeyCache, {"n_layer": 2}, 1, arg="config")),
    ("quantize-empty", lambda: rejects(quant.quantize, torch.zeros(0, 4), 4, -1, 2, arg="x")),
    # --- serving.quant ---
    ("quantize-bits-9", lambda: rejects(quant.quantize, _kv(4, 8), 9, -1, 4, arg="bits")),
    ("quantize-bits-0", lambda: rejects(quant.quantize, _kv(4, 8), 0, -1, 4, arg="bits")),
    ("quantize-int", lambda: rejects(quant.quantize, torch.ones(4, 8, dtype=torch.long), 4, -1, 4, arg="x")),
    ("quantize-nan", lambda: rejects(quant.quantize, torch.full((4, 8), math.nan), 4, -1, 4, arg="x")),
    ("quantize-axis", lambda: rejects(quant.quantize, _kv(4, 8), 4, 2, 4, arg="axis")),
    ("quantize-group", lambda: rejects(quant.quantize, _kv(4, 8), 4, -1, 3, arg="group_size")),
    ("quantize-exclude", lambda: rejects(quant.quantize, _kv(4, 8), 4, -1, 4, torch.zeros(4, 8), arg="exclude")),
    ("dequantize-tensor", lambda: rejects(quant.dequantize, _kv(4, 8), arg="q")),
    ("Quantized-bits", lambda: rejects(quant.Quantized, torch.zeros(4, 8, dtype=torch.uint8), torch.zeros(4, 2),
                                       torch.zeros(4, 2), 12, 1, 4, arg="bits")),
    ("Quantized-scale-shape", lambda: rejects(quant.Quantized, torch.zeros(4, 8, dtype=torch.uint8),
                                              torch.zeros(4, 3), torch.zeros(4, 2), 4, 1, 4, arg="scale")),
    ("Quantized-codes-float", lambda: rejects(quant.Quantized, torch.zeros(4, 8), torch.zeros(4, 2),
                                              torch.zeros(4, 2), 4, 1, 4, arg="codes")),
    ("grouping_axis-name", lambda: rejects(quant.grouping_axis, "row", arg="grouping")),
    ("quantize_kv-3d", lambda: rejects(quant.quantize_kv, _kv(2, 4, 8), 4, "token", 4, arg="x")),
    ("fake_quantize-bits-str", lambda: rejects(quant.fake_quantize, _kv(1, 2, 4, 8), "4", "token", 4, arg="bits")),
    ("quantized_bits-negative", lambda: rejects(quant.quantized_bits, -1, 4, 1, arg="n")),
    ("quantized_bits-bits", lambda: rejects(quant.quantized_bits, 16, 0, 1, arg="bits")),
    ("quantized_bits-groups", lambda: rejects(quant.quantized_bits, 16, 4, -2, arg="n_groups")),
    ("relative_error-shape", lambda: rejects(quant.relative_error, _kv(4, 8), _kv(8, 4), arg="approx")),
    ("relative_error-nan", lambda: rejects(quant.relative_error, _kv(4, 8), torch.full((4, 8), math.nan),
                                           arg="approx")),
    ("relative_error-inf-x", lambda: rejects(quant.relative_error, torch.full((2,), math.inf), torch.zeros(2),
                                             arg="x")),
    ("capture_kv-model", lambda: rejects(quant.capture_kv, "gpt", torch.zeros(1, 4, dtype=torch.long), arg="model")),
    ("capture_kv-out-of-vocab", lambda: rejects(quant.capture_kv, _model(), torch.tensor([[1, 99]]), arg="idx")),
    ("capture_kv-float", lambda: rejects(quant.capture_kv, _model(), torch.zeros(1, 4), arg="idx")),
    ("capture_kv-too-long", lambda: rejects(quant.capture_kv, _model(), torch.zeros(1, 65, dtype=torch.long),
                                            arg="idx")),
    ("QuantizedCache-bits", lambda: rejects(quant.QuantizedCache, CONFIG, 1, 9, arg="bits")),
    ("QuantizedCache-residual", lambda: rejects(quant.QuantizedCache, CONFIG, 1, 4, group_size=4, residual=6,
                                                arg="residual")),
    ("QuantizedCache-grouping", lambda: rejects(quant.QuantizedCache, CONFIG, 1, 4, key_grouping="row",
                                                arg="key_grouping")),
    ("QuantizedCache-crop", lambda: rejects(quant.QuantizedCache(CONFIG, 1, 4, group_size=4, residual=8).crop, 5,
                                            arg="length")),
    # --- serving.eviction ---
    ("window_keep-budget", lambda: rejects(eviction.window_keep, 5, 0, arg="budget")),
    ("window_keep-negative", lambda: rejects(eviction.window_keep, -1, 3, arg="n")),
    ("sink_keep-sinks", lambda: rejects(eviction.sink_keep, 10, 4, 5, arg="n_sink")),
    ("heavy_hitter_keep-int", lambda: rejects(eviction.heavy_hitter_keep, torch.ones(5, dtype=torch.long), 3, 1,
                                              arg="scores")),
    ("heavy_hitter_keep-recent", lambda: rejects(eviction.heavy_hitter_keep, torch.ones(5), 3, 4, arg="recent")),
    ("attention_probs-q", lambda: rejects(eviction.attention_probs, _kv(2, 3, 4), _kv(1, 2, 3, 4), True, arg="q")),
    ("attention_probs-k", lambda: rejects(eviction.attention_probs, _kv(1, 2, 3, 4), _kv(1, 3, 3, 4), True, arg="k")),
    ("attention_probs-visible-false", lambda: rejects(eviction.attention_probs, _kv(1, 2, 3, 4), _kv(1, 2, 5, 4),
                                                      False, arg="visible")),
    ("attention_probs-visible-int", lambda: rejects(eviction.attention_probs, _kv(1, 2, 3, 4), _kv(1, 2, 5, 4),
                                                    torch.ones(3, 5, dtype=torch.long), arg="visible")),
    ("attention_probs-visible-shape", lambda: rejects(eviction.attention_probs, _kv(1, 2, 3, 4), _kv(1, 2, 5, 4),
                                                      torch.ones(3, 4, dtype=torch.bool), arg="visible")),
    ("EvictingCache-budget", lambda: rejects(eviction.EvictingCache, CONFIG, 1, 0, arg="budget")),
    ("EvictingCache-crop", lambda: rejects(eviction.SlidingWindowCache(CONFIG, 1, 4).crop, 2, arg="length")),
    ("SlidingWindowCache-batch", lambda: rejects(eviction.SlidingWindowCache, CONFIG, 0, 4, arg="batch_size")),
    ("SlidingWindowCache-kept-layer", lambda: rejects(eviction.SlidingWindowCache(CONFIG, 1, 4).kept_positions, 5,
                                                      arg="layer")),
    ("SinkCache-sinks", lambda: rejects(eviction.SinkCache, CONFIG, 1, 4, n_sink=5, arg="n_sink")),
    ("HeavyHitterCache-recent", lambda: rejects(eviction.HeavyHitterCache, CONFIG, 1, 4, recent=-1, arg="recent")),
    ("HeavyHitterCache-config", lambda: rejects(eviction.HeavyHitterCache, None, 1, 4, arg="config")),
    # --- serving.gear ---
    ("outlier_mask-fraction", lambda: rejects(gear.outlier_mask, _kv(1, 2, 8, 4), 1.0, "token", arg="fraction")),
    ("outlier_mask-nan", lambda: rejects(gear.outlier_mask, _kv(1, 2, 8, 4), math.nan, "token", arg="fraction")),
    ("outlier_mask-grouping", lambda: rejects(gear.outlier_mask, _kv(1, 2, 8, 4), 0.1, "row", arg="grouping")),
    ("power_iteration-rank", lambda: rejects(gear.power_iteration, _kv(4, 3), 4, arg="rank")),
    ("power_iteration-nan", lambda: rejects(gear.power_iteration, torch.full((4, 3), math.nan), 1, arg="r")),
    ("power_iteration-generator", lambda: rejects(gear.power_iteration, _kv(4, 3), 1, generator=0, arg="generator")),
    ("power_iteration-iterations", lambda: rejects(gear.power_iteration, _kv(4, 3), 1, 0, arg="iterations")),
    ("gear_compress-bits", lambda: rejects(gear.gear_compress, _kv(1, 2, 8, 4), 0, 1, 0.1, arg="bits")),
    ("gear_compress-rank", lambda: rejects(gear.gear_compress, _kv(1, 2, 8, 4), 4, -1, 0.1, arg="rank")),
    ("gear_compress-inf", lambda: rejects(gear.gear_compress, torch.full((1, 1, 4, 4), math.inf), 4, 1, 0.1,
                                          arg="x")),
    ("gear_compress-group", lambda: rejects(gear.gear_compress, _kv(1, 2, 8, 4), 4, 1, 0.1, group_size=3,
                                            arg="group_size")),
    ("gear_decompress-tensor", lambda: rejects(gear.gear_decompress, _kv(1, 2, 8, 4), arg="parts")),
    ("component_bytes-dict", lambda: rejects(gear.component_bytes, {}, arg="parts")),
    ("gear_errors-fraction", lambda: rejects(gear.gear_errors, _kv(1, 2, 8, 4), 4, 1, -0.1, arg="outlier_fraction")),
    ("GEARParts-index", lambda: rejects(gear.GEARParts, _quantized(), torch.tensor([9999]), torch.tensor([1.0]),
                                        _kv(1, 2, 4, 1), _kv(1, 2, 8, 1), arg="outlier_index")),
    ("GEARParts-left", lambda: rejects(gear.GEARParts, _parts().quantized, torch.zeros(0, dtype=torch.long),
                                       torch.zeros(0), _kv(1, 2, 5, 1), _kv(1, 2, 4, 1), arg="left")),
    ("GEARCache-buffer", lambda: rejects(gear.GEARCache, CONFIG, 1, buffer=0, arg="buffer")),
    ("GEARCache-prefill", lambda: rejects(gear.GEARCache, CONFIG, 1, compress_prefill="yes", arg="compress_prefill")),
    ("GEARCache-group", lambda: rejects(gear.GEARCache, CONFIG, 1, group_size=3, arg="group_size")),
    ("GEARCache-crop", lambda: rejects(gear.GEARCache(CONFIG, 1).crop, 4, arg="length")),
    # --- serving.evaluate ---
    ("full_logits-out-of-vocab", lambda: rejects(evaluate.full_logits, _model(), torch.tensor([[1, 99]]),
                                                 arg="tokens")),
    ("full_logits-float", lambda: rejects(evaluate.full_logits, _model(), torch.zeros(1, 3), arg="tokens")),
    ("full_logits-model", lambda: rejects(evaluate.full_logits, "gpt", torch.zeros(1, 3, dtype=torch.long),
                                          arg="model")),
    ("cache_quality-prefill", lambda: rejects(evaluate.cache_quality, _model(), torch.zeros(1, 8, dtype=torch.long),
                                              lambda m, b: m.new_cache(b), prefill=7, arg="prefill")),
    ("cache_quality-make-cache", lambda: rejects(evaluate.cache_quality, _model(),
                                                 torch.zeros(1, 8, dtype=torch.long), 5, prefill=2,
                                                 arg="make_cache")),
    ("cache_quality-wrong-cache", lambda: rejects(evaluate.cache_quality, _model(),
                                                  torch.zeros(1, 8, dtype=torch.long), lambda m, b: m.new_cache(b + 1),
                                                  prefill=2, arg="make_cache")),
    ("cache_quality-reference", lambda: rejects(evaluate.cache_quality, _model(), torch.zeros(1, 8, dtype=torch.long),
                                                lambda m, b: m.new_cache(b), prefill=2,
                                                reference_logits=torch.zeros(1, 8, 5), arg="reference_logits")),
    ("heldout_sequences-tokenizer", lambda: rejects(evaluate.heldout_sequences, "tok", arg="tokenizer")),
    ("heldout_sequences-n", lambda: rejects(evaluate.heldout_sequences, models.TranscriptVocab(), 0, arg="n")),
    ("CacheQuality-shapes", lambda: rejects(evaluate.CacheQuality, torch.zeros(2, 3), torch.zeros(2, 4),
                                            torch.zeros(2, 3), torch.zeros(2, 3), 1.0, 4, arg="nll_full")),
    ("CacheQuality-prefill", lambda: rejects(evaluate.CacheQuality, *([torch.zeros(2, 3)] * 4), 1.0, 0,
                                             arg="prefill")),
    ("CacheQuality-metric", lambda: rejects(_quality().per_sequence, "loss", arg="metric")),
    ("CacheQuality-draws", lambda: rejects(_quality().interval, draws=0, arg="draws")),
    # --- serving.scheduler ---
    ("Request-arrival", lambda: rejects(scheduler.Request, -1, 10, 5, arg="arrival")),
    ("Request-prompt", lambda: rejects(scheduler.Request, 0, 0, 5, arg="prompt_len")),
    ("speech_lengths-bytes", lambda: rejects(scheduler.speech_lengths, b"ROMEO.\nhi", arg="text")),
    ("make_workload-lengths", lambda: rejects(scheduler.make_workload, [10, -1], 5, 1.0, arg="lengths")),
    ("make_workload-rate", lambda: rejects(scheduler.make_workload, [10, 20, 30], 5, math.nan, arg="rate")),
    ("make_workload-seed", lambda: rejects(scheduler.make_workload, [10, 20, 30], 3, 1.0, seed=[1], arg="seed")),
    ("make_workload-nothing-fits", lambda: rejects(scheduler.make_workload, [300, 300], 5, 1.0, arg="lengths")),
    ("reservation-request", lambda: rejects(scheduler.reservation, (0, 10, 5), "pow2", 256, arg="request")),
    ("reservation-reserve", lambda: rejects(scheduler.reservation, _requests()[0], "min", 256, arg="reserve")),
    ("reservation-max-len", lambda: rejects(scheduler.reservation, _requests()[0], "max", 0, arg="max_len")),
    ("simulate_serving-policy", lambda: rejects(scheduler.simulate_serving, _requests(), 1000, "lru", arg="policy")),
    ("simulate_serving-capacity", lambda: rejects(scheduler.simulate_serving, _requests(), 8, "paged",
                                                  arg="capacity_tokens")),
    ("simulate_serving-empty", lambda: rejects(scheduler.simulate_serving, [], 1000, "paged", arg="requests")),
    ("simulate_serving-block", lambda: rejects(scheduler.simulate_serving, _requests(), 1000, "paged", 0,
                                               arg="block_size")),
    ("parallel_sampling_blocks-lens", lambda: rejects(scheduler.parallel_sampling_blocks, 10, [], arg="output_lens")),
    ("parallel_sampling_blocks-share", lambda: rejects(scheduler.parallel_sampling_blocks, 10, [3], share="no",
                                                       arg="share")),
    ("parallel_sampling_blocks-prompt", lambda: rejects(scheduler.parallel_sampling_blocks, 0, [3],
                                                        arg="prompt_len")),
    # --- checks.core ---
    ("Check-exercise", lambda: rejects(Check, 1.1, "perplexity", arg="exercise")),
    ("Check-title", lambda: rejects(Check, "1.1", None, arg="title")),
    ("as_number-bool", lambda: as_number(True) is None or pytest.fail("as_number(True) should be None")),
    ("as_number-numpy", lambda: as_number(np.float32(1.5)) == 1.5 or pytest.fail("np.float32 refused")),
    ("as_number-fraction", lambda: as_number(Fraction(1, 2)) == 0.5 or pytest.fail("Fraction refused")),
    ("as_number-string", lambda: as_number("1.5") is None or pytest.fail("a string accepted")),
    ("as_number-complex-tensor", lambda: as_number(torch.tensor([1j])) is None or pytest.fail("complex accepted")),
    ("as_integer-float", lambda: as_integer(2.0) is None or pytest.fail("a float accepted")),
    ("as_integer-numpy", lambda: as_integer(np.int64(3)) == 3 or pytest.fail("np.int64 refused")),
    ("as_integer-bool-tensor", lambda: as_integer(torch.tensor(True)) is None or pytest.fail("a bool accepted")),
    ("as_token_list-floats", lambda: as_token_list([1, 2.5]) is None or pytest.fail("floats accepted")),
    ("as_token_list-2d", lambda: as_token_list(torch.zeros(2, 2, dtype=torch.long)) is None
     or pytest.fail("a 2-D tensor accepted")),
    ("is_index_tensor-list", lambda: is_index_tensor([1, 2]) is False or pytest.fail("a list accepted")),
    ("is_index_tensor-bool", lambda: is_index_tensor(torch.tensor([True])) is False or pytest.fail("bools accepted")),
    ("CheckFailed-is-an-assertion", lambda: issubclass(CheckFailed, AssertionError) or pytest.fail("not an assert")),
]


test_probe, test_probe_ids_are_unique, _ = probe_table_tests(PROBES, set())  # its names are probed by module


# --- hypothesis: random bad numbers ----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 0), st.booleans(),
                 st.text(max_size=3), st.none()))
def test_blocks_for_refuses_every_bad_block_size(block_size):
    rejects(paged.blocks_for, 10, block_size, arg="block_size")


@settings(max_examples=20, deadline=None)
@given(st.floats(-1e3, 1e3, allow_nan=False).filter(lambda s: abs(s) > 0.01))
def test_ctc_loss_refuses_rows_that_are_not_log_probabilities(shift):
    rejects(ctc.ctc_loss, LOG_PROBS + shift, [6, 6], TARGETS, T_LENGTHS, arg="log_probs")


@settings(max_examples=20, deadline=None)
@given(st.lists(st.one_of(st.integers(-3, 9), st.floats(0, 6).filter(lambda x: x != int(x))), min_size=2,
                max_size=2))
def test_greedy_decode_takes_lengths_in_range_or_names_them(lengths):
    valid_or_rejects(ctc.greedy_decode, LOG_PROBS, lengths, arg="input_lengths",
                     contract=lambda out: len(out) == 2 and all(len(row) <= n for row, n in zip(out, lengths)))


@settings(max_examples=20, deadline=None)
@given(st.integers(-2, 12))
def test_quantize_takes_only_the_supported_bits(bits):
    valid_or_rejects(quant.quantize, _kv(4, 8), bits, -1, 4, arg="bits",
                     contract=lambda q: 1 <= bits <= 8 and int(q.codes.max()) <= 2 ** bits - 1)


# --- arlib.checks: bad learners' functions ----------------------------------------------------------


def _arity(name: str) -> int:
    return len(inspect.signature(getattr(arlib.checks, name)).parameters)


BAD_LEARNERS = {
    "not-callable": 42,
    "no-parameters": lambda: 0.5,
    "a-string": lambda *args: "nonsense",
    "a-list": lambda *args: [[1.0, 2.0], [3.0]],
    "wrong-shape": lambda *args: torch.zeros(3, 1, 2),
    "nan": lambda *args: float("nan"),
    "none": lambda *args: None,
}


def _fails_clearly(check, *fns):
    """A bad learner's function must make the check raise CheckFailed naming the exercise, not crash."""
    with pytest.raises(CheckFailed) as info:
        check(*fns)
    message = str(info.value)
    assert message.startswith("Exercise "), message
    return message


@pytest.mark.parametrize("name", EXERCISE_CHECKS)
@pytest.mark.parametrize("bad", sorted(BAD_LEARNERS))
def test_a_bad_learner_function_fails_clearly(name, bad, capsys):
    _fails_clearly(getattr(arlib.checks, name), *([BAD_LEARNERS[bad]] * _arity(name)))
    assert "cases pass" not in capsys.readouterr().out


def test_a_wrong_signature_is_named_as_such():
    message = _fails_clearly(arlib.checks.perplexity, lambda a, b, c: 1.0)
    assert "cannot be called" in message and "parameters" in message


def test_a_learner_result_the_check_cannot_use_is_explained():
    message = _fails_clearly(arlib.checks.frame_signal, lambda wave, frame, hop: {"frames": 1})
    assert "expected" in message and "got" in message and "hint" in message
    assert checks_core.CheckFailed is CheckFailed


def test_a_check_given_a_numpy_float_accepts_it():
    arlib.checks.unigram_entropy(lambda text: np.float32(_entropy(text)))


def _entropy(text):
    counts = torch.tensor([text.count(c) for c in set(text)], dtype=torch.float64)
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum())


def test_a_kv_cache_from_the_book_is_still_accepted():
    assert isinstance(memory.TimedCache(KVCache(CONFIG, 1)).inner, KVCache)
    assert isinstance(_model(), GPT)
