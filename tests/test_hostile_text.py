"""Hostile inputs for arlib.text: sampling, the GPT, beam search, n-grams, the tokenizer, language-model data,
probes, sample quality, the ablation ladder, Hugging Face export and the text recipes.

Every name in ``COVERED`` is called with bad arguments: wrong types, shapes and dtypes, NaN and inf, negative
or all-zero probabilities, rows with every logit at -inf, ids outside the vocabulary, empty inputs, bools and
strings where numbers belong, and numpy scalars where a number belongs (which must be accepted). Each call
must end in a ValueError/TypeError naming the argument (:func:`hostile.rejects`) or in a result that keeps
its contract (:func:`hostile.valid_or_rejects`). One entry of ``PROBES`` is one bad-input case; the
hypothesis properties at the end add generated cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hostile import rejects, valid_or_rejects
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_gpt

from arlib.text import beam, gpt, hf, ladder, lm, ngram, probes, sample_quality, sampling, tokenizer
from arlib.text import recipes as trec

COVERED = {
    "arlib.text.beam.beam_search", "arlib.text.beam.length_penalty",
    "arlib.text.gpt.Block", "arlib.text.gpt.CausalSelfAttention", "arlib.text.gpt.GPT", "arlib.text.gpt.GPTConfig",
    "arlib.text.gpt.KVCache", "arlib.text.gpt.MLP", "arlib.text.gpt.attention", "arlib.text.gpt.causal_mask",
    "arlib.text.gpt.kv_cache_bytes", "arlib.text.gpt.merge_heads", "arlib.text.gpt.split_heads",
    "arlib.text.hf.from_hf", "arlib.text.hf.hf_config", "arlib.text.hf.load_hf_folder", "arlib.text.hf.to_hf",
    "arlib.text.ladder.LadderSettings", "arlib.text.ladder.LadderTransformer", "arlib.text.ladder.NeuralBigram",
    "arlib.text.ladder.WindowMLP", "arlib.text.ladder.attention_logit_spread", "arlib.text.ladder.block_means",
    "arlib.text.ladder.bootstrap_interval", "arlib.text.ladder.build_rung", "arlib.text.ladder.ladder_results_path",
    "arlib.text.ladder.load_ladder", "arlib.text.ladder.run_ladder",
    "arlib.text.lm.heldout_halves", "arlib.text.lm.heldout_nll", "arlib.text.lm.next_token_loss",
    "arlib.text.lm.random_windows", "arlib.text.lm.token_nll",
    "arlib.text.ngram.NGramModel", "arlib.text.ngram.NotFittedError", "arlib.text.ngram.modified_discounts",
    "arlib.text.probes.group_means", "arlib.text.probes.logistic_probe",
    "arlib.text.recipes.LMRecipe", "arlib.text.recipes.build_gpt", "arlib.text.recipes.load_gpt",
    "arlib.text.recipes.run_lm_recipe",
    "arlib.text.sample_quality.distinct_n", "arlib.text.sample_quality.match_entropy",
    "arlib.text.sample_quality.measure_samples", "arlib.text.sample_quality.real_word_share",
    "arlib.text.sample_quality.repetition", "arlib.text.sample_quality.sampled_entropy",
    "arlib.text.sample_quality.truncated_entropy",
    "arlib.text.sampling.draw", "arlib.text.sampling.entropy", "arlib.text.sampling.generate",
    "arlib.text.sampling.gumbel_noise", "arlib.text.sampling.inverse_cdf_index", "arlib.text.sampling.min_p",
    "arlib.text.sampling.process_logits", "arlib.text.sampling.sample", "arlib.text.sampling.sample_probs",
    "arlib.text.sampling.temperature", "arlib.text.sampling.top_k", "arlib.text.sampling.top_p",
    "arlib.text.tokenizer.CharTokenizer",
}

NAN, INF = float("nan"), float("inf")
V = 13
MODEL = tiny_gpt(0)  # V = 13, block 64, 2 layers, width 16, 2 heads
CONFIG = MODEL.config
LOGITS = torch.randn(3, V, generator=torch.Generator().manual_seed(0))
PROBS = LOGITS.softmax(-1)
IDS = torch.randint(0, V, (200,), generator=torch.Generator().manual_seed(1))
PROMPT = IDS[:5]
NGRAM = ngram.NGramModel(2, V).fit(IDS)
TOK = tokenizer.CharTokenizer("abc")


def with_value(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


def ids_in(vocab: int):
    return lambda t: bool(((t >= 0) & (t < vocab)).all())


def finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, dtype=float))))


def same_nan(src):
    """A processor's contract on NaN or +inf input: the same shape, NaN exactly where the input had NaN."""
    return lambda out: out.shape == src.shape and bool((out.isnan() == src.isnan()).all())


PROBES: list[tuple] = []  # (label, function, args, kwargs, arg, contract or None: must reject)


def probe(label, fn, *args, arg, contract=None, **kwargs):
    PROBES.append((label, fn, args, kwargs, arg, contract))


# --- sampling: processors -------------------------------------------------------------------------------

probe("temperature logits list", sampling.temperature, LOGITS.tolist(), 0.7, arg="logits")
probe("temperature logits 1-D", sampling.temperature, LOGITS[0], 0.7, arg="logits")
probe("temperature logits int", sampling.temperature, LOGITS.long(), 0.7, arg="logits")
probe("temperature logits empty vocab", sampling.temperature, LOGITS[:, :0], 0.7, arg="logits")
probe("temperature t 0", sampling.temperature, LOGITS, 0, arg="temperature")
probe("temperature t negative", sampling.temperature, LOGITS, -1.0, arg="temperature")
probe("temperature t NaN", sampling.temperature, LOGITS, NAN, arg="temperature")
probe("temperature t inf", sampling.temperature, LOGITS, INF, arg="temperature")
probe("temperature t bool", sampling.temperature, LOGITS, True, arg="temperature")
probe("temperature t str", sampling.temperature, LOGITS, "0.7", arg="temperature")
probe("temperature t numpy float", sampling.temperature, LOGITS, np.float32(0.5), arg="temperature",
      contract=lambda out: torch.allclose(out, LOGITS * 2))
probe("temperature NaN logits pass through", sampling.temperature, with_value(LOGITS, (0, 1), NAN), 0.5,
      arg="logits", contract=same_nan(with_value(LOGITS, (0, 1), NAN)))
probe("top_k k 0", sampling.top_k, LOGITS, 0, arg="top_k")
probe("top_k k float", sampling.top_k, LOGITS, 2.0, arg="top_k")
probe("top_k k bool", sampling.top_k, LOGITS, True, arg="top_k")
probe("top_k k numpy int", sampling.top_k, LOGITS, np.int64(2), arg="top_k",
      contract=lambda out: bool((out.isfinite().sum(-1) == 2).all()))
probe("top_k logits 3-D", sampling.top_k, LOGITS[None], 2, arg="logits")
probe("top_k NaN logits pass through", sampling.top_k, with_value(LOGITS, (1, 2), NAN), 3, arg="logits",
      contract=same_nan(with_value(LOGITS, (1, 2), NAN)))
probe("top_p p 0", sampling.top_p, LOGITS, 0.0, arg="top_p")
probe("top_p p above 1", sampling.top_p, LOGITS, 1.5, arg="top_p")
probe("top_p p NaN", sampling.top_p, LOGITS, NAN, arg="top_p")
probe("top_p p None", sampling.top_p, LOGITS, None, arg="top_p")
probe("top_p p numpy", sampling.top_p, LOGITS, np.float64(0.9), arg="top_p",
      contract=lambda out: bool(out.isfinite().any(-1).all()))
probe("top_p logits bool", sampling.top_p, LOGITS > 0, 0.9, arg="logits")
probe("min_p p negative", sampling.min_p, LOGITS, -0.1, arg="min_p")
probe("min_p p above 1", sampling.min_p, LOGITS, 1.1, arg="min_p")
probe("min_p p NaN", sampling.min_p, LOGITS, NAN, arg="min_p")
probe("min_p p str", sampling.min_p, LOGITS, "0.1", arg="min_p")
probe("min_p p numpy", sampling.min_p, LOGITS, np.float32(0.1), arg="min_p",
      contract=lambda out: bool(out.isfinite().any(-1).all()))
probe("process_logits logits tuple", sampling.process_logits, (1.0, 2.0), arg="logits")
probe("process_logits temperature None", sampling.process_logits, LOGITS, None, arg="temperature")
probe("process_logits top_k negative", sampling.process_logits, LOGITS, top_k=-2, arg="top_k")
probe("process_logits top_p bool", sampling.process_logits, LOGITS, top_p=True, arg="top_p")
probe("process_logits min_p inf", sampling.process_logits, LOGITS, min_p=INF, arg="min_p")
probe("process_logits numpy options", sampling.process_logits, LOGITS, np.float32(0.8), np.int64(5),
      np.float64(0.95), np.float32(0.01), arg="temperature", contract=lambda out: out.shape == LOGITS.shape)

# --- sampling: samplers ---------------------------------------------------------------------------------

probe("sample_probs negative entry", sampling.sample_probs, torch.tensor([[0.5, -0.2, 0.7]]), arg="probs")
probe("sample_probs NaN", sampling.sample_probs, with_value(PROBS, (0, 0), NAN), arg="probs")
probe("sample_probs inf", sampling.sample_probs, with_value(PROBS, (1, 0), INF), arg="probs")
probe("sample_probs row of zeros", sampling.sample_probs, with_value(PROBS, 2, 0.0), arg="probs")
probe("sample_probs ints", sampling.sample_probs, torch.tensor([[1, 2, 3]]), arg="probs")
probe("sample_probs 1-D", sampling.sample_probs, PROBS[0], arg="probs")
probe("sample_probs list", sampling.sample_probs, [[0.5, 0.5]], arg="probs")
probe("sample_probs generator junk", sampling.sample_probs, PROBS, "seed", arg="generator")
probe("sample_probs unnormalized", sampling.sample_probs, PROBS * 7, arg="probs", contract=ids_in(V))
probe("sample_probs empty batch", sampling.sample_probs, PROBS[:0], arg="probs",
      contract=lambda t: t.shape == (0,))
probe("draw all -inf row", sampling.draw, with_value(LOGITS, 1, -INF), arg="logits")
probe("draw NaN", sampling.draw, with_value(LOGITS, (0, 3), NAN), arg="logits")
probe("draw +inf", sampling.draw, with_value(LOGITS, (2, 3), INF), arg="logits")
probe("draw 0-D", sampling.draw, torch.tensor(1.0), arg="logits")
probe("draw ints", sampling.draw, LOGITS.long(), arg="logits")
probe("draw generator junk", sampling.draw, LOGITS, 3, arg="generator")
probe("draw 3-D batch", sampling.draw, LOGITS.view(3, 1, V), arg="logits", contract=lambda t: t.shape == (3, 1))
probe("draw some -inf", sampling.draw, with_value(LOGITS, (0, slice(0, 12)), -INF), arg="logits",
      contract=lambda t: int(t[0]) == 12)
probe("sample greedy NaN", sampling.sample, with_value(LOGITS, (0, 0), NAN), greedy=True, arg="logits")
probe("sample greedy all -inf row", sampling.sample, with_value(LOGITS, 0, -INF), greedy=True, arg="logits")
probe("sample NaN", sampling.sample, with_value(LOGITS, (0, 0), NAN), arg="logits")
probe("sample +inf", sampling.sample, with_value(LOGITS, (0, 0), INF), arg="logits")
probe("sample all -inf row", sampling.sample, with_value(LOGITS, 2, -INF), arg="logits")
probe("sample top_k 0", sampling.sample, LOGITS, top_k=0, arg="top_k")
probe("sample generator junk", sampling.sample, LOGITS, generator=object(), arg="generator")
probe("sample numpy temperature", sampling.sample, LOGITS, temperature=np.float32(0.7), arg="temperature",
      contract=ids_in(V))
probe("entropy NaN", sampling.entropy, with_value(LOGITS, (0, 0), NAN), arg="logits")
probe("entropy +inf", sampling.entropy, with_value(LOGITS, (0, 0), INF), arg="logits")
probe("entropy all -inf row", sampling.entropy, with_value(LOGITS, 0, -INF), arg="logits")
probe("entropy list", sampling.entropy, [0.0, 1.0], arg="logits")
probe("entropy some -inf", sampling.entropy, with_value(LOGITS, (0, slice(0, 6)), -INF), arg="logits",
      contract=lambda h: bool((h >= 0).all() and h.isfinite().all()))
probe("gumbel_noise negative shape", sampling.gumbel_noise, (2, -1), arg="shape")
probe("gumbel_noise float shape", sampling.gumbel_noise, (2.5,), arg="shape")
probe("gumbel_noise str shape", sampling.gumbel_noise, "3", arg="shape")
probe("gumbel_noise generator junk", sampling.gumbel_noise, (2,), "g", arg="generator")
probe("gumbel_noise numpy shape", sampling.gumbel_noise, (np.int64(2), 3), arg="shape",
      contract=lambda t: t.shape == (2, 3) and bool(t.isfinite().all()))
probe("inverse_cdf_index zeros", sampling.inverse_cdf_index, np.zeros(4), 0.5, arg="weights")
probe("inverse_cdf_index NaN", sampling.inverse_cdf_index, np.array([0.2, NAN, 0.3]), 0.5, arg="weights")
probe("inverse_cdf_index inf", sampling.inverse_cdf_index, np.array([0.2, INF, 0.3]), 0.5, arg="weights")
probe("inverse_cdf_index negative", sampling.inverse_cdf_index, np.array([0.5, -0.2, 0.7]), 0.1, arg="weights")
probe("inverse_cdf_index empty", sampling.inverse_cdf_index, np.zeros(0), 0.5, arg="weights")
probe("inverse_cdf_index 2-D", sampling.inverse_cdf_index, np.ones((2, 2)), 0.5, arg="weights")
probe("inverse_cdf_index strings", sampling.inverse_cdf_index, ["a", "b"], 0.5, arg="weights")
probe("inverse_cdf_index u NaN", sampling.inverse_cdf_index, np.ones(3), NAN, arg="u")
probe("inverse_cdf_index u 1", sampling.inverse_cdf_index, np.ones(3), 1.0, arg="u")
probe("inverse_cdf_index u negative", sampling.inverse_cdf_index, np.ones(3), -0.1, arg="u")
probe("inverse_cdf_index list weights", sampling.inverse_cdf_index, [0.0, 1.0, 0.0], 0.3, arg="weights",
      contract=lambda i: i == 1)

# --- sampling: generate ---------------------------------------------------------------------------------

NAN_MODEL = tiny_gpt(0)
with torch.no_grad():
    NAN_MODEL.ln_f.weight.fill_(NAN)

probe("generate model junk", sampling.generate, "gpt", PROMPT, 3, arg="model")
probe("generate prompt float", sampling.generate, MODEL, PROMPT.float(), 3, arg="prompt")
probe("generate prompt out of vocab", sampling.generate, MODEL, torch.tensor([1, V]), 3, arg="prompt")
probe("generate prompt empty", sampling.generate, MODEL, PROMPT[:0], 3, arg="prompt")
probe("generate prompt 3-D", sampling.generate, MODEL, PROMPT[None, None], 3, arg="prompt")
probe("generate max_new_tokens negative", sampling.generate, MODEL, PROMPT, -1, arg="max_new_tokens")
probe("generate max_new_tokens float", sampling.generate, MODEL, PROMPT, 2.0, arg="max_new_tokens")
probe("generate past the context", sampling.generate, MODEL, PROMPT, 64, arg="max_new_tokens")
probe("generate generator junk", sampling.generate, MODEL, PROMPT, 3, generator=0, arg="generator")
probe("generate temperature 0", sampling.generate, MODEL, PROMPT, 3, temperature=0.0, arg="temperature")
probe("generate top_p NaN", sampling.generate, MODEL, PROMPT, 3, top_p=NAN, arg="top_p")
probe("generate NaN model", sampling.generate, NAN_MODEL, PROMPT, 3, arg="model")
probe("generate NaN model greedy", sampling.generate, NAN_MODEL, PROMPT, 3, greedy=True, arg="model")
probe("generate numpy counts", sampling.generate, MODEL, PROMPT, np.int64(3), temperature=np.float32(0.8),
      arg="max_new_tokens", contract=lambda t: t.shape == (8,) and ids_in(V)(t))

# --- gpt --------------------------------------------------------------------------------------------------

probe("GPTConfig vocab 0", gpt.GPTConfig, 0, arg="vocab_size")
probe("GPTConfig vocab float", gpt.GPTConfig, 13.0, arg="vocab_size")
probe("GPTConfig n_embd not a multiple", gpt.GPTConfig, V, n_embd=10, n_head=4, arg="n_embd")
probe("GPTConfig dropout 1", gpt.GPTConfig, V, dropout=1.0, arg="dropout")
probe("GPTConfig dropout NaN", gpt.GPTConfig, V, dropout=NAN, arg="dropout")
probe("GPTConfig dropout str", gpt.GPTConfig, V, dropout="0.1", arg="dropout")
probe("GPTConfig n_kv_head not a divisor", gpt.GPTConfig, V, n_head=8, n_kv_head=3, arg="n_kv_head")
probe("GPTConfig numpy sizes", gpt.GPTConfig, np.int64(V), block_size=np.int32(16), n_layer=1, n_head=2,
      n_embd=8, arg="vocab_size", contract=lambda c: type(c.vocab_size) is int and type(c.block_size) is int)
probe("kv_cache_bytes config junk", gpt.kv_cache_bytes, {"n_layer": 2}, arg="config")
probe("kv_cache_bytes bytes 0", gpt.kv_cache_bytes, CONFIG, 0, arg="bytes_per_value")
probe("KVCache config junk", gpt.KVCache, "config", 1, arg="config")
probe("KVCache batch 0", gpt.KVCache, CONFIG, 0, arg="batch_size")
probe("KVCache crop float", lambda: gpt.KVCache(CONFIG, 1).crop(0.5), arg="length")
probe("KVCache crop past length", lambda: gpt.KVCache(CONFIG, 1).crop(3), arg="length")
probe("causal_mask T negative", gpt.causal_mask, -1, 0, arg="T")
probe("causal_mask start float", gpt.causal_mask, 2, 1.5, arg="start")
probe("split_heads x 2-D", gpt.split_heads, torch.zeros(4, 8), 2, arg="x")
probe("split_heads n_head not a divisor", gpt.split_heads, torch.zeros(1, 4, 8), 3, arg="n_head")
probe("split_heads n_head 0", gpt.split_heads, torch.zeros(1, 4, 8), 0, arg="n_head")
probe("merge_heads y 3-D", gpt.merge_heads, torch.zeros(1, 4, 8), arg="y")
Q = torch.randn(1, 2, 4, 8)
probe("attention q 3-D", gpt.attention, Q[0], Q, Q, arg="q")
probe("attention k wrong head size", gpt.attention, Q, Q[..., :4], Q, arg="k")
probe("attention v shape differs from k", gpt.attention, Q, Q, Q[:, :, :3], arg="v")
probe("attention heads not a multiple", gpt.attention, torch.randn(1, 3, 4, 8), Q, Q, arg="k")
probe("attention dropout 1", gpt.attention, Q, Q, Q, dropout=1.0, arg="dropout")
probe("attention mask junk", gpt.attention, Q, Q, Q, "causal", arg="mask")
probe("CausalSelfAttention config junk", gpt.CausalSelfAttention, None, arg="config")
probe("CausalSelfAttention x wrong width", lambda: gpt.CausalSelfAttention(CONFIG)(torch.zeros(1, 3, 8)), arg="x")
probe("MLP config junk", gpt.MLP, "config", arg="config")
probe("MLP hidden 0", gpt.MLP, CONFIG, 0, arg="hidden")
probe("MLP approximate junk", gpt.MLP, CONFIG, approximate="erf", arg="approximate")
probe("Block config junk", gpt.Block, 3, arg="config")
probe("GPT config dict", gpt.GPT, {"vocab_size": V}, arg="config")
probe("GPT idx float", MODEL, torch.zeros(1, 3), arg="idx")
probe("GPT idx out of vocab", MODEL, torch.tensor([[0, V]]), arg="idx")
probe("GPT idx negative", MODEL, torch.tensor([[0, -1]]), arg="idx")
probe("GPT idx past the context", MODEL, torch.zeros(1, 65, dtype=torch.long), arg="idx")
probe("GPT idx on another device", MODEL, torch.zeros(1, 3, dtype=torch.long, device="meta"), arg="idx")
probe("GPT cache junk", MODEL, PROMPT[None], cache="cache", arg="cache")
probe("GPT cache wrong batch", MODEL, PROMPT[None], cache=MODEL.new_cache(2), arg="cache")
probe("GPT trunk n_layers too many", MODEL.trunk, PROMPT[None], n_layers=3, arg="n_layers")
probe("GPT new_cache batch 0", MODEL.new_cache, 0, arg="batch_size")

# --- beam -----------------------------------------------------------------------------------------------

probe("length_penalty alpha NaN", beam.length_penalty, torch.tensor([1.0, 2.0]), NAN, arg="alpha")
probe("length_penalty alpha str", beam.length_penalty, torch.tensor([1.0]), "1", arg="alpha")
probe("length_penalty negative length", beam.length_penalty, torch.tensor([-7.0]), 0.5, arg="length")
probe("length_penalty length str", beam.length_penalty, "3", 0.5, arg="length")
probe("length_penalty numbers", beam.length_penalty, 3, np.float32(0.5), arg="length",
      contract=lambda v: math.isclose(float(v), (8 / 6) ** 0.5, rel_tol=1e-6))
probe("beam_search model junk", beam.beam_search, None, PROMPT, 2, 2, arg="model")
probe("beam_search prompt out of vocab", beam.beam_search, MODEL, torch.tensor([V]), 2, 2, arg="prompt")
probe("beam_search prompt batch 2", beam.beam_search, MODEL, PROMPT.view(1, 5).expand(2, 5), 2, 2, arg="prompt")
probe("beam_search width 0", beam.beam_search, MODEL, PROMPT, 2, 0, arg="width")
probe("beam_search n_new float", beam.beam_search, MODEL, PROMPT, 2.0, 2, arg="n_new")
probe("beam_search eos out of vocab", beam.beam_search, MODEL, PROMPT, 2, 2, eos=V, arg="eos")
probe("beam_search alpha NaN", beam.beam_search, MODEL, PROMPT, 2, 2, alpha=NAN, arg="alpha")
probe("beam_search past the context", beam.beam_search, MODEL, PROMPT, 60, 2, arg="n_new")
probe("beam_search numpy counts", beam.beam_search, MODEL, PROMPT, np.int64(2), np.int32(3), arg="n_new",
      contract=lambda r: r[0].shape == (3, 7) and ids_in(V)(r[0]))

# --- lm ---------------------------------------------------------------------------------------------------

G = torch.Generator().manual_seed(0)
probe("random_windows ids float", lm.random_windows, IDS.float(), 2, 8, G, arg="ids")
probe("random_windows ids 2-D", lm.random_windows, IDS[None], 2, 8, G, arg="ids")
probe("random_windows too short", lm.random_windows, IDS[:8], 2, 8, G, arg="ids")
probe("random_windows batch 0", lm.random_windows, IDS, 0, 8, G, arg="batch_size")
probe("random_windows block negative", lm.random_windows, IDS, 2, -1, G, arg="block_size")
probe("random_windows generator junk", lm.random_windows, IDS, 2, 8, 5, arg="generator")
probe("heldout_halves one id", lm.heldout_halves, IDS[:1], arg="val_ids")
probe("heldout_halves list", lm.heldout_halves, [1, 2, 3], arg="val_ids")
probe("heldout_halves float", lm.heldout_halves, IDS.float(), arg="val_ids")
probe("next_token_loss batch not a pair", lm.next_token_loss, MODEL, IDS[None, :8], arg="batch")
probe("next_token_loss shapes differ", lm.next_token_loss, MODEL, (IDS[None, :8], IDS[None, :7]), arg="batch")
probe("next_token_loss targets out of vocab", lm.next_token_loss, MODEL,
      (IDS[None, :4], torch.tensor([[0, 1, V, 2]])), arg="batch")
probe("token_nll ids float", lm.token_nll, MODEL, IDS.float(), arg="ids")
probe("token_nll ids out of vocab", lm.token_nll, MODEL, torch.tensor([0, 1, V]), arg="ids")
probe("token_nll stride 0", lm.token_nll, MODEL, IDS, 0, arg="stride")
probe("token_nll stride past the context", lm.token_nll, MODEL, IDS, 65, arg="stride")
probe("token_nll batch 0", lm.token_nll, MODEL, IDS, None, 0, arg="batch_size")
probe("token_nll model junk", lm.token_nll, "model", IDS, arg="model")
probe("heldout_nll one id", lm.heldout_nll, MODEL, IDS[:1], arg="ids")
probe("heldout_nll numpy stride", lm.heldout_nll, MODEL, IDS, np.int64(16), arg="stride",
      contract=lambda v: math.isfinite(v) and v > 0)

# --- tokenizer --------------------------------------------------------------------------------------------

probe("CharTokenizer empty", tokenizer.CharTokenizer, "", arg="vocab")
probe("CharTokenizer repeats", tokenizer.CharTokenizer, "aba", arg="vocab")
probe("CharTokenizer list", tokenizer.CharTokenizer, ["a", "b"], arg="vocab")
probe("CharTokenizer from_text empty", tokenizer.CharTokenizer.from_text, "", arg="text")
probe("encode bytes", TOK.encode, b"ab", arg="text")
probe("encode unknown character", TOK.encode, "abz", arg="text")
probe("decode out of range", TOK.decode, [0, 3], arg="ids")
probe("decode negative", TOK.decode, torch.tensor([0, -1]), arg="ids")
probe("decode fractional", TOK.decode, [0, 1.5], arg="ids")
probe("decode float tensor", TOK.decode, torch.tensor([0.0, 1.0]), arg="ids")
probe("decode strings", TOK.decode, ["a"], arg="ids")
probe("decode None", TOK.decode, None, arg="ids")
probe("decode 2-D array", TOK.decode, np.zeros((2, 2), dtype=np.int64), arg="ids")
probe("decode bools", TOK.decode, [True, False], arg="ids")
probe("decode numpy ids", TOK.decode, np.array([2, 0, 1]), arg="ids", contract=lambda s: s == "cab")

# --- ngram ------------------------------------------------------------------------------------------------

probe("NGramModel order 0", ngram.NGramModel, 0, V, arg="order")
probe("NGramModel order too large", ngram.NGramModel, 40, 1000, arg="order")
probe("NGramModel smoothing junk", ngram.NGramModel, 2, V, "witten_bell", arg="smoothing")
probe("NGramModel smoothing list", ngram.NGramModel, 2, V, ["add_k"], arg="smoothing")
probe("NGramModel k 0", ngram.NGramModel, 2, V, "add_k", 0.0, arg="k")
probe("NGramModel k inf", ngram.NGramModel, 2, V, "add_k", INF, arg="k")
probe("NGramModel discount NaN", ngram.NGramModel, 2, V, "kneser_ney", 1.0, NAN, arg="discount")
probe("NGramModel numpy sizes", ngram.NGramModel, np.int64(3), np.int64(V), arg="order",
      contract=lambda m: type(m.order) is int and type(m.vocab_size) is int)
probe("NGramModel fit out of vocab", ngram.NGramModel(2, V).fit, torch.tensor([0, V]), arg="ids")
probe("NGramModel fit empty", ngram.NGramModel(2, V).fit, IDS[:0], arg="ids")
probe("NGramModel fit float", ngram.NGramModel(2, V).fit, IDS.float(), arg="ids")
probe("NGramModel probs before fit", ngram.NGramModel(2, V).probs, PROMPT, arg="fit")
probe("NotFittedError is a ValueError and a RuntimeError", ngram.NotFittedError, "x", arg="-",
      contract=lambda e: isinstance(e, ValueError) and isinstance(e, RuntimeError))
probe("NGramModel probs context 3-D", NGRAM.probs, PROMPT[None, None], arg="context")
probe("NGramModel probs context out of vocab", NGRAM.probs, torch.tensor([V]), arg="context")
probe("NGramModel token_nll one id", NGRAM.token_nll, IDS[:1], arg="ids")
probe("NGramModel count_ranks m 3", NGRAM.count_ranks, 3, arg="m")
probe("NGramModel sample n negative", NGRAM.sample, -1, arg="n")
probe("NGramModel sample generator junk", NGRAM.sample, 3, "g", arg="generator")
probe("NGramModel sample prompt out of vocab", NGRAM.sample, 3, None, torch.tensor([V]), arg="prompt")
probe("NGramModel sample prompt float", NGRAM.sample, 3, None, torch.tensor([0.0]), arg="prompt")
probe("modified_discounts negative counts", ngram.modified_discounts, np.array([-1, 2, 3]), arg="counts")
probe("modified_discounts strings", ngram.modified_discounts, ["a", "b"], arg="counts")
probe("modified_discounts fractional", ngram.modified_discounts, np.array([1.5, 2.0]), arg="counts")

# --- probes -----------------------------------------------------------------------------------------------

FEATS = torch.randn(40, 3, generator=torch.Generator().manual_seed(2))
LABELS = torch.arange(40) % 2
FIT, TEST = torch.arange(30), torch.arange(30, 40)
probe("logistic_probe features NaN", probes.logistic_probe, with_value(FEATS, (0, 0), NAN), LABELS, FIT, TEST, 2,
      arg="features")
probe("logistic_probe features int", probes.logistic_probe, FEATS.long(), LABELS, FIT, TEST, 2, arg="features")
probe("logistic_probe labels float", probes.logistic_probe, FEATS, LABELS.float(), FIT, TEST, 2, arg="labels")
probe("logistic_probe labels out of range", probes.logistic_probe, FEATS, LABELS + 1, FIT, TEST, 2, arg="labels")
probe("logistic_probe fit_rows out of range", probes.logistic_probe, FEATS, LABELS, FIT + 20, TEST, 2,
      arg="fit_rows")
probe("logistic_probe test_rows float", probes.logistic_probe, FEATS, LABELS, FIT, TEST.float(), 2, arg="test_rows")
probe("logistic_probe too few rows", probes.logistic_probe, FEATS, LABELS, FIT[:5], TEST, 2, arg="fit_rows")
probe("logistic_probe l2_grid empty", probes.logistic_probe, FEATS, LABELS, FIT, TEST, 2, (), arg="l2_grid")
probe("logistic_probe l2_grid negative", probes.logistic_probe, FEATS, LABELS, FIT, TEST, 2, (-1.0,), arg="l2_grid")
probe("logistic_probe max_iter 0", probes.logistic_probe, FEATS, LABELS, FIT, TEST, 2, max_iter=0, arg="max_iter")
probe("logistic_probe seed junk", probes.logistic_probe, FEATS, LABELS, FIT, TEST, 2, seed="0", arg="seed")
probe("group_means values list", probes.group_means, [1.0, 2.0], torch.tensor([0, 1]), arg="values")
probe("group_means groups float", probes.group_means, torch.ones(2), torch.tensor([0.0, 1.0]), arg="groups")
probe("group_means shapes differ", probes.group_means, torch.ones(3), torch.tensor([0, 1]), arg="values")

# --- sample_quality ---------------------------------------------------------------------------------------

WORDS = {"the", "king", "and"}
probe("real_word_share texts str", sample_quality.real_word_share, "the king", WORDS, arg="texts")
probe("real_word_share texts None", sample_quality.real_word_share, None, WORDS, arg="texts")
probe("real_word_share known_words None", sample_quality.real_word_share, ["a the king and b"], None,
      arg="known_words")
probe("real_word_share known_words str", sample_quality.real_word_share, ["a the king and b"], "the king",
      arg="known_words")
probe("real_word_share no words", sample_quality.real_word_share, ["a b"], WORDS, arg="texts")
probe("real_word_share generator", sample_quality.real_word_share, (t for t in ["a the king b"]), WORDS,
      arg="texts", contract=lambda v: v == 1.0)
probe("distinct_n n 0", sample_quality.distinct_n, ["abc"], 0, arg="n")
probe("distinct_n texts ints", sample_quality.distinct_n, [1, 2], arg="texts")
probe("distinct_n too short", sample_quality.distinct_n, ["ab"], 5, arg="texts")
probe("repetition text list", sample_quality.repetition, ["abc"], arg="text")
probe("repetition n float", sample_quality.repetition, "abcabc", 2.0, arg="n")
probe("measure_samples empty", sample_quality.measure_samples, [], WORDS, arg="texts")
probe("measure_samples n_repeat 0", sample_quality.measure_samples, ["a the king and b " * 3], WORDS, 5, 0,
      arg="n_repeat")
SEQ = IDS[:12].view(2, 6)
probe("sampled_entropy model junk", sample_quality.sampled_entropy, "m", SEQ, 3, arg="model")
probe("sampled_entropy sequences float", sample_quality.sampled_entropy, MODEL, SEQ.float(), 3, arg="sequences")
probe("sampled_entropy sequences out of vocab", sample_quality.sampled_entropy, MODEL, SEQ + V, 3, arg="sequences")
probe("sampled_entropy prompt_length 0", sample_quality.sampled_entropy, MODEL, SEQ, 0, arg="prompt_length")
probe("sampled_entropy temperature 0", sample_quality.sampled_entropy, MODEL, SEQ, 3, 0.0, arg="temperature")
probe("truncated_entropy method junk", sample_quality.truncated_entropy, LOGITS, "top_z", 3, arg="method")
probe("truncated_entropy value junk", sample_quality.truncated_entropy, LOGITS, "top_k", 0, arg="top_k")
probe("truncated_entropy logits NaN", sample_quality.truncated_entropy, with_value(LOGITS, (0, 0), NAN), "top_k", 3,
      arg="logits")
probe("match_entropy logits list", sample_quality.match_entropy, LOGITS.tolist(), "top_k", 1.0, arg="logits")
probe("match_entropy method junk", sample_quality.match_entropy, LOGITS, "beam", 1.0, arg="method")
probe("match_entropy target NaN", sample_quality.match_entropy, LOGITS, "top_p", NAN, arg="target")
probe("match_entropy target out of reach", sample_quality.match_entropy, LOGITS, "top_p", 50.0, arg="target")
probe("match_entropy temperature 0", sample_quality.match_entropy, LOGITS, "top_p", 1.0, 0.0, arg="temperature")
probe("match_entropy iterations 0", sample_quality.match_entropy, LOGITS, "top_p", 1.0, 1.0, 0, arg="iterations")

# --- ladder -----------------------------------------------------------------------------------------------

probe("LadderSettings steps 0", ladder.LadderSettings, steps=0, arg="steps")
probe("LadderSettings lr negative", ladder.LadderSettings, lr=-1.0, arg="lr")
probe("LadderSettings lr NaN", ladder.LadderSettings, lr=NAN, arg="lr")
probe("LadderSettings warmup negative", ladder.LadderSettings, warmup=-1, arg="warmup")
probe("LadderSettings warmup float", ladder.LadderSettings, warmup=1.5, arg="warmup")
probe("LadderSettings n_embd not a multiple", ladder.LadderSettings, n_embd=30, n_head=4, arg="n_embd")
probe("NeuralBigram vocab 0", ladder.NeuralBigram, 0, 8, arg="vocab_size")
probe("NeuralBigram block float", ladder.NeuralBigram, V, 8.5, arg="block_size")
probe("NeuralBigram idx out of vocab", ladder.NeuralBigram(V, 8), torch.tensor([[0, V]]), arg="idx")
probe("NeuralBigram idx float", ladder.NeuralBigram(V, 8), torch.zeros(1, 2), arg="idx")
probe("WindowMLP window 0", ladder.WindowMLP, V, 8, 0, 4, 8, arg="window")
probe("WindowMLP idx reads the padding id", ladder.WindowMLP(V, 8, 3, 4, 8), torch.tensor([[0, V]]), arg="idx")
probe("WindowMLP idx 1-D", ladder.WindowMLP(V, 8, 3, 4, 8), torch.tensor([0, 1]), arg="idx")
SMALL = gpt.GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=8)
probe("LadderTransformer config junk", ladder.LadderTransformer, "c", True, True, arg="config")
probe("LadderTransformer idx past the context", ladder.LadderTransformer(SMALL, True, True),
      torch.zeros(1, 9, dtype=torch.long), arg="idx")
probe("LadderTransformer idx out of vocab", ladder.LadderTransformer(SMALL, True, True), torch.tensor([[V]]),
      arg="idx")
probe("build_rung junk", ladder.build_rung, "trigram", V, arg="rung")
probe("build_rung list", ladder.build_rung, ["gpt"], V, arg="rung")
probe("build_rung vocab 0", ladder.build_rung, "gpt", 0, arg="vocab_size")
probe("build_rung settings junk", ladder.build_rung, "gpt", V, {"n_layer": 1}, arg="settings")
probe("attention_logit_spread d_head 0", ladder.attention_logit_spread, 0, arg="d_head")
probe("attention_logit_spread seed junk", ladder.attention_logit_spread, 4, 8, 10, "s", arg="seed")
probe("block_means values list", ladder.block_means, [1.0] * 10, 5, arg="values")
probe("block_means too few", ladder.block_means, torch.ones(3), 5, arg="values")
probe("block_means block 0", ladder.block_means, torch.ones(3), 0, arg="block")
probe("bootstrap_interval one block", ladder.bootstrap_interval, [1.0], arg="blocks_a")
probe("bootstrap_interval NaN", ladder.bootstrap_interval, [1.0, NAN, 2.0], arg="blocks_a")
probe("bootstrap_interval strings", ladder.bootstrap_interval, ["a", "b"], arg="blocks_a")
probe("bootstrap_interval b shape", ladder.bootstrap_interval, [1.0, 2.0], [1.0], arg="blocks_b")
probe("bootstrap_interval level 1", ladder.bootstrap_interval, [1.0, 2.0], level=1.0, arg="level")
probe("bootstrap_interval level str", ladder.bootstrap_interval, [1.0, 2.0], level="0.9", arg="level")
probe("bootstrap_interval draws 0", ladder.bootstrap_interval, [1.0, 2.0], draws=0, arg="draws")
probe("run_ladder rungs junk", ladder.run_ladder, "/nonexistent/x.json", rungs=["trigram"], arg="rungs")
probe("run_ladder seeds junk", ladder.run_ladder, "/nonexistent/x.json", seeds=(-1,), arg="seeds")
probe("run_ladder steps 0", ladder.run_ladder, "/nonexistent/x.json", steps=0, arg="steps")
probe("run_ladder settings junk", ladder.run_ladder, "/nonexistent/x.json", settings="s", arg="settings")
probe("run_ladder out junk", ladder.run_ladder, 3, arg="out")
probe("ladder_results_path", ladder.ladder_results_path, arg="-",
      contract=lambda p: p.name == "shakespeare-ladder.json")
probe("load_ladder missing", ladder.load_ladder, "/nonexistent/ladder.json", arg="path")
probe("load_ladder path int", ladder.load_ladder, 3, arg="path")

# --- hf ---------------------------------------------------------------------------------------------------

probe("hf_config junk", hf.hf_config, {"vocab_size": 3}, arg="config")
probe("hf_config grouped-query", hf.hf_config, gpt.GPTConfig(V, n_head=4, n_embd=16, n_kv_head=2), arg="config")
probe("to_hf junk", hf.to_hf, "gpt", arg="model")
probe("from_hf junk", hf.from_hf, MODEL, arg="hf_model")
probe("from_hf dropout 1", hf.from_hf, hf.to_hf(tiny_gpt(0, n_layer=1)), 1.0, arg="dropout")
probe("load_hf_folder missing", hf.load_hf_folder, "/nonexistent/folder", arg="folder")
probe("load_hf_folder int", hf.load_hf_folder, 3, arg="folder")

# --- text recipes -----------------------------------------------------------------------------------------

probe("LMRecipe model junk", trec.LMRecipe, "m", trec.LM_RECIPES["shakespeare-draft"].train, 64, "d", arg="model")
probe("LMRecipe batch 0", trec.LMRecipe, CONFIG, trec.LM_RECIPES["shakespeare-draft"].train, 0, "d", arg="batch_size")
probe("build_gpt meta junk", trec.build_gpt, "meta", arg="meta")
probe("build_gpt non-GPT config", trec.build_gpt, {"config": {"d_model": 3}, "tokenizer": {"vocab": "ab"}},
      arg="meta")
probe("build_gpt no tokenizer", trec.build_gpt, {"config": CONFIG.to_dict()}, arg="meta")
probe("load_gpt non-GPT checkpoint", trec.load_gpt, "shakespeare-sae", arg="shakespeare-sae")
probe("load_gpt unknown", trec.load_gpt, "no-such-model", arg="name")
probe("load_gpt name int", trec.load_gpt, 3, arg="name")
probe("load_gpt device junk", trec.load_gpt, "shakespeare-draft", "gpu", arg="device")
probe("run_lm_recipe unknown", trec.run_lm_recipe, "shakespeare-huge", arg="name")
probe("run_lm_recipe name list", trec.run_lm_recipe, ["shakespeare-draft"], arg="name")
probe("run_lm_recipe steps 0", trec.run_lm_recipe, "shakespeare-draft", 0, arg="steps")
probe("run_lm_recipe dropout 1", trec.run_lm_recipe, "shakespeare-draft", dropout=1.0, arg="dropout")
probe("run_lm_recipe weight_decay negative", trec.run_lm_recipe, "shakespeare-draft", weight_decay=-1.0,
      arg="weight_decay")
probe("run_lm_recipe time_budget negative", trec.run_lm_recipe, "shakespeare-draft", time_budget=-5.0,
      arg="time_budget")
probe("run_lm_recipe eval_chars 0", trec.run_lm_recipe, "shakespeare-draft", eval_chars=0, arg="eval_chars")


@pytest.mark.parametrize("label, fn, args, kwargs, arg, contract", PROBES, ids=[p[0] for p in PROBES])
def test_probe(label, fn, args, kwargs, arg, contract):
    if contract is None:
        rejects(fn, *args, arg=arg, **kwargs)
    else:
        valid_or_rejects(fn, *args, arg=arg, contract=contract, **kwargs)


def test_probe_labels_are_unique():
    assert len(PROBES) >= 250 and len({p[0] for p in PROBES}) == len(PROBES)


# --- generated cases ----------------------------------------------------------------------------------------

hostile_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.booleans(),
                            st.none(), st.text(max_size=2))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2, max_size=6))
def test_samplers_on_hostile_rows(row):
    logits = torch.tensor([row])
    V_ = len(row)
    for fn in (sampling.sample, sampling.draw):
        valid_or_rejects(fn, logits, arg="logits", contract=ids_in(V_))
    valid_or_rejects(sampling.sample, logits, greedy=True, arg="logits", contract=ids_in(V_))
    valid_or_rejects(sampling.entropy, logits, arg="logits",
                     contract=lambda h: bool(h.isfinite().all() and (h >= 0).all()))
    probs = logits.abs() if bool(logits.isfinite().all()) else logits
    valid_or_rejects(sampling.sample_probs, probs, arg="probs", contract=lambda t: bool(probs[0, t[0]] > 0))
    weights = np.array(row, dtype=np.float64)
    valid_or_rejects(sampling.inverse_cdf_index, weights, 0.5, arg="weights",
                     contract=lambda i: 0 <= i < V_ and weights[i] > 0)


@settings(max_examples=25, deadline=None)
@given(hostile_numbers, hostile_numbers, hostile_numbers, hostile_numbers)
def test_processors_on_hostile_options(t, k, p, m):
    try:
        out = sampling.process_logits(LOGITS, t, k, p, m)
    except (ValueError, TypeError) as exc:
        assert any(name in str(exc) for name in ("temperature", "top_k", "top_p", "min_p")), str(exc)
    else:
        assert out.shape == LOGITS.shape and bool(out.isfinite().any(-1).all())


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.integers(-3, 5), st.floats(allow_nan=True), st.booleans(), st.text(max_size=1)),
                max_size=4))
def test_decode_on_hostile_ids(ids):
    valid_or_rejects(TOK.decode, ids, arg="ids", contract=lambda s: isinstance(s, str) and len(s) == len(ids))


@settings(max_examples=25, deadline=None)
@given(hostile_numbers, hostile_numbers)
def test_ngram_settings_on_hostile_numbers(k, discount):
    for smoothing, value, name in (("add_k", k, "k"), ("kneser_ney", discount, "discount")):
        try:
            model = ngram.NGramModel(2, V, smoothing, **{name: value}).fit(IDS)
        except (ValueError, TypeError) as exc:
            assert name in str(exc), str(exc)
        else:
            p = model.probs(PROMPT)
            assert bool(p.isfinite().all()) and abs(float(p.sum()) - 1) < 1e-9
