"""Tests of arlib.serving.eviction (sliding window, StreamingLLM sinks, H2O) and arlib.serving.evaluate
(the quality harness of chapter 7), on tiny random GPTs.

The references are independent of the caches: a full forward under an explicit attention mask (sliding
window, sinks), and for H2O a slow loop that keeps every key, a Python list of kept positions and a dict
of scores per layer, row and head, and evicts one lowest-scored position at a time."""

import math

import pytest
import torch
import torch.nn.functional as F

from arlib.serving.evaluate import METRICS, cache_quality, full_logits, heldout_sequences
from arlib.serving.eviction import (
    HeavyHitterCache,
    SinkCache,
    SlidingWindowCache,
    attention_probs,
    heavy_hitter_keep,
    sink_keep,
    window_keep,
)
from arlib.text.gpt import GPT, GPTConfig, KVCache, attention

VOCAB = 13


def random_gpt(seed: int = 0, n_kv_head: int | None = None, n_head: int = 2, block_size: int = 32) -> GPT:
    """A tiny GPT (2 layers, width 16) with large random weights: attention far from uniform."""
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=block_size, n_layer=2, n_head=n_head, n_embd=16,
                          n_kv_head=n_kv_head))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * 0.5)
    return model.eval()


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def decode_logits(model, x, cache, prefill):
    """Prompt in one call, then one token per call: the logits (B, T, V) of every position."""
    with torch.no_grad():
        parts = [model(x[:, :prefill], cache=cache)]
        parts += [model(x[:, t:t + 1], cache=cache) for t in range(prefill, x.shape[1])]
    return torch.cat(parts, dim=1)


def masked_logits(model, x, mask):
    """The full model's logits (B, T, V) with the causal mask replaced by ``mask`` (T, T): no cache."""
    with torch.no_grad():
        h = model.wte(x) + model.wpe(torch.arange(x.shape[1]))
        for block in model.h:
            h = block(h, None, 0, mask)
        return F.linear(model.ln_f(h), model.wte.weight)


def keep_mask(T, prefill, budget, n_sink=0):
    """Query i sees key j: causally during the prompt; after it, the first n_sink keys, the
    budget - n_sink keys before i, and itself (the cache evicts after each forward)."""
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i) & ((i < prefill) | (j < n_sink) | (j >= i - (budget - n_sink)))


MODELS = [dict(), dict(n_head=4, n_kv_head=2), dict(n_head=4, n_kv_head=1)]  # MHA, GQA, MQA


# --- equal to the full cache when nothing is evicted ---------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda c, b, n: SlidingWindowCache(c, b, n),
    lambda c, b, n: SinkCache(c, b, n, n_sink=4),
    lambda c, b, n: HeavyHitterCache(c, b, n),
    lambda c, b, n: HeavyHitterCache(c, b, n, recent=0),
], ids=["window", "sink", "h2o", "h2o-no-recent"])
@pytest.mark.parametrize("extra", [0, 7])
def test_budget_at_least_T_equals_full_cache(make, extra):
    model, x = random_gpt(), tokens(3, 20)
    full = decode_logits(model, x, model.new_cache(3), prefill=6)
    cache = make(model.config, 3, 20 + extra)
    assert torch.allclose(decode_logits(model, x, cache, prefill=6), full, atol=1e-5)
    assert cache.kept_positions(1).tolist() == [[list(range(20))] * 2] * 3  # nothing evicted


# --- sliding window and sinks: equal to a full forward under an explicit mask --------------------------


@pytest.mark.parametrize("config", MODELS, ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("budget,prefill", [(4, 10), (6, 3), (1, 5), (5, 5)])
def test_sliding_window_equals_banded_mask(config, budget, prefill):
    model, x = random_gpt(2, **config), tokens(2, 24)
    cache = SlidingWindowCache(model.config, 2, budget)
    got = decode_logits(model, x, cache, prefill)
    want = masked_logits(model, x, keep_mask(24, prefill, budget))
    assert torch.allclose(got, want, atol=1e-5)
    assert cache.kept_positions(0)[0, 0].tolist() == list(range(24 - budget, 24))
    assert (want - masked_logits(model, x, None)).abs().max() > 1e-3  # the window does change the logits


@pytest.mark.parametrize("config", MODELS, ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("budget,n_sink,prefill", [(6, 2, 10), (8, 4, 3), (4, 4, 6), (5, 0, 7)])
def test_sink_cache_equals_sinks_plus_window_mask(config, budget, n_sink, prefill):
    model, x = random_gpt(3, **config), tokens(2, 24, seed=4)
    cache = SinkCache(model.config, 2, budget, n_sink=n_sink)
    got = decode_logits(model, x, cache, prefill)
    assert torch.allclose(got, masked_logits(model, x, keep_mask(24, prefill, budget, n_sink)), atol=1e-5)
    assert cache.kept_positions(1)[1, 0].tolist() == list(range(n_sink)) + list(range(24 - budget + n_sink, 24))


def test_sink_cache_without_sinks_is_the_sliding_window():
    model, x = random_gpt(), tokens(2, 20)
    a = decode_logits(model, x, SinkCache(model.config, 2, 5, n_sink=0), 4)
    b = decode_logits(model, x, SlidingWindowCache(model.config, 2, 5), 4)
    assert torch.equal(a, b)


# --- H2O: the same positions as a slow, explicit reference ---------------------------------------------


def schedule(prefill, T):
    """The positions of each forward: the prompt in one call, then one token per call."""
    return [list(range(prefill))] + [[t] for t in range(prefill, T)]


def h2o_reference(model, x, prefill, budget, recent, forwards=None):
    """Slow H2O: all keys kept in full arrays; per layer, row and key/value head a list of kept positions
    and a dict of accumulated scores (attention summed over queries and the heads of the group); after
    each forward, evict the lowest-scored non-recent position until ``budget`` remain. ``forwards``
    (default :func:`schedule`) lists the positions of each forward."""
    cfg = model.config
    B, T = x.shape
    H, H_kv, C = cfg.n_head, cfg.kv_heads, cfg.n_embd
    D, g = C // H, H // H_kv
    K = torch.zeros(cfg.n_layer, B, H_kv, T, D)
    V = torch.zeros_like(K)
    kept = [[[[] for _ in range(H_kv)] for _ in range(B)] for _ in range(cfg.n_layer)]
    score = [[[{} for _ in range(H_kv)] for _ in range(B)] for _ in range(cfg.n_layer)]
    out = []
    with torch.no_grad():
        for pos in forwards or schedule(prefill, T):
            h = model.wte(x[:, pos]) + model.wpe(torch.tensor(pos))
            for layer, block in enumerate(model.h):
                attn = block.attn
                q, k, v = attn.c_attn(block.ln_1(h)).split([C, H_kv * D, H_kv * D], dim=2)
                q = q.view(B, len(pos), H, D).transpose(1, 2)
                K[layer][:, :, pos] = k.view(B, len(pos), H_kv, D).transpose(1, 2)
                V[layer][:, :, pos] = v.view(B, len(pos), H_kv, D).transpose(1, 2)
                y = torch.zeros(B, H, len(pos), D)
                for b in range(B):
                    for kh in range(H_kv):
                        old, s = kept[layer][b][kh], score[layer][b][kh]
                        for qh in range(kh * g, (kh + 1) * g):
                            for i in range(len(pos)):
                                keys = old + pos[:i + 1]
                                w = (K[layer, b, kh, keys] @ q[b, qh, i] / math.sqrt(D)).softmax(0)
                                y[b, qh, i] = w @ V[layer, b, kh, keys]
                                for key, wk in zip(keys, w.tolist()):
                                    s[key] = s.get(key, 0.0) + wk
                        old.extend(pos)
                        while len(old) > budget:
                            drop = min(old[:len(old) - recent], key=s.get)  # the last `recent` stay
                            old.remove(drop)
                            del s[drop]
                h = h + attn.c_proj(y.transpose(1, 2).reshape(B, len(pos), C))
                h = h + block.mlp(block.ln_2(h))
            out.append(F.linear(model.ln_f(h), model.wte.weight))
    return torch.cat(out, dim=1), kept


@pytest.mark.parametrize("config", MODELS, ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("budget,recent,prefill", [(6, 3, 10), (5, 0, 3), (4, None, 4), (7, 2, 12)])
def test_heavy_hitters_keep_what_the_slow_reference_keeps(config, budget, recent, prefill):
    model, x = random_gpt(5, **config), tokens(2, 20, seed=6)
    cache = HeavyHitterCache(model.config, 2, budget, recent=recent)
    got = decode_logits(model, x, cache, prefill)
    want, kept = h2o_reference(model, x, prefill, budget, budget // 2 if recent is None else recent)
    for layer in range(2):
        assert cache.kept_positions(layer).tolist() == kept[layer]
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("recent", [2, 6], ids=["h2o", "window"])
def test_forwards_of_several_tokens_after_eviction_match_the_reference(recent):
    """Chunks after the prompt (as speculative verification sends them): the chunk attends to the kept
    keys and causally to itself, then evicts. With recent == budget H2O is the sliding window."""
    model, x = random_gpt(11, n_head=4, n_kv_head=2), tokens(2, 22, seed=3)
    forwards = [list(range(8)), [8, 9, 10], [11], list(range(12, 17)), [17], [18, 19, 20, 21]]
    make = HeavyHitterCache if recent == 2 else lambda c, b, n, recent: SlidingWindowCache(c, b, n)
    cache = make(model.config, 2, 6, recent=recent)
    with torch.no_grad():
        got = torch.cat([model(x[:, pos], cache=cache) for pos in forwards], dim=1)
    want, kept = h2o_reference(model, x, None, 6, recent, forwards)
    assert torch.allclose(got, want, atol=1e-5)
    assert cache.kept_positions(1).tolist() == kept[1]


def test_heavy_hitters_differ_per_head_and_row_and_rows_evict_alone():
    """Each row of a batch keeps its own positions: the batch equals every row decoded alone."""
    model, x = random_gpt(7), tokens(3, 24, seed=8)
    batch = HeavyHitterCache(model.config, 3, 6)
    together = decode_logits(model, x, batch, 8)
    kept = batch.kept_positions(1)  # (B, H_kv, 6)
    for b in range(3):
        alone = HeavyHitterCache(model.config, 1, 6)
        assert torch.allclose(decode_logits(model, x[b:b + 1], alone, 8), together[b:b + 1], atol=1e-5)
        assert torch.equal(alone.kept_positions(1)[0], kept[b])
    distinct = {tuple(kept[b, h].tolist()) for b in range(3) for h in range(2)}
    assert len(distinct) > 1  # the policy does depend on the row and head


def test_h2o_with_only_recent_positions_is_the_sliding_window():
    model, x = random_gpt(), tokens(2, 20)
    a = decode_logits(model, x, HeavyHitterCache(model.config, 2, 5, recent=5), 4)
    b = decode_logits(model, x, SlidingWindowCache(model.config, 2, 5), 4)
    assert torch.allclose(a, b, atol=1e-5)


def test_attention_probs_match_sdpa():
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    visible = torch.rand(2, 4, 3, 7) < 0.7
    visible[..., 0] = True  # every query sees a key
    probs = attention_probs(q, k, visible)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 3)) and (probs[~visible] == 0).all()
    assert torch.allclose(probs @ v.repeat_interleave(2, dim=1), attention(q, k, v, visible), atol=1e-6)


def test_keep_rules():
    assert window_keep(7, 3).tolist() == [4, 5, 6] and window_keep(2, 3).tolist() == [0, 1]
    assert sink_keep(9, 5, 2).tolist() == [0, 1, 6, 7, 8] and sink_keep(4, 5, 2).tolist() == [0, 1, 2, 3]
    scores = torch.tensor([[5.0, 0.1, 3.0, 0.2, 4.0, 0.0, 0.0]])
    assert heavy_hitter_keep(scores, 4, 2).tolist() == [[0, 4, 5, 6]]  # top 2 of the first 5, then the last 2
    assert heavy_hitter_keep(scores, 3, 0).tolist() == [[0, 2, 4]]
    assert heavy_hitter_keep(scores, 9, 2).tolist() == [list(range(7))]


# --- memory -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", MODELS, ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("cls", [SlidingWindowCache, SinkCache, HeavyHitterCache])
def test_stored_bytes_count_only_the_kept_positions(config, cls):
    model, x = random_gpt(**config), tokens(2, 16)
    cache, c = cls(model.config, 2, 6), model.config
    per_position = 2 * c.n_layer * 2 * c.kv_heads * (c.n_embd // c.n_head) * 4  # K and V, 2 rows, float32
    model(x[:, :4], cache=cache)
    assert cache.stored_bytes() == 4 * per_position
    model(x[:, 4:10], cache=cache)
    assert cache.stored_bytes() == 6 * per_position and cache.length == 10
    plain = model.new_cache(2)
    model(x[:, :10], cache=plain)
    assert plain.stored_bytes() == 10 * per_position


# --- errors -------------------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    c = random_gpt().config
    with pytest.raises(ValueError, match="budget: expected a positive int"):
        SlidingWindowCache(c, 2, 0)
    with pytest.raises(ValueError, match="budget"):
        SinkCache(c, 2, 4.0)
    with pytest.raises(ValueError, match="batch_size"):
        SlidingWindowCache(c, 0, 4)
    with pytest.raises(ValueError, match="config: expected a GPTConfig"):
        SlidingWindowCache({"n_layer": 2}, 2, 4)
    with pytest.raises(ValueError, match=r"n_sink: expected an int in \[0, budget=4\]"):
        SinkCache(c, 2, 4, n_sink=5)
    with pytest.raises(ValueError, match=r"recent: expected None or an int in \[0, budget=4\]"):
        HeavyHitterCache(c, 2, 4, recent=-1)
    with pytest.raises(ValueError, match="layer"):
        SlidingWindowCache(c, 2, 4).kept_positions(2)
    with pytest.raises(ValueError, match="scores"):
        heavy_hitter_keep([1.0, 2.0], 1, 0)
    with pytest.raises(ValueError, match="n_sink"):
        sink_keep(5, 3, 4)
    with pytest.raises(ValueError, match="k: expected a tensor"):
        attention_probs(torch.zeros(1, 4, 2, 8), torch.zeros(1, 3, 5, 8), True)  # 3 heads do not divide 4


def test_crop_cannot_restore_evicted_positions():
    model = random_gpt()
    cache = SinkCache(model.config, 1, 4, n_sink=1)
    model(tokens(1, 9), cache=cache)
    cache.crop(9)  # the current length: nothing to undo
    with pytest.raises(ValueError, match="cannot roll back from 9 to 7"):
        cache.crop(7)


# --- the harness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", MODELS[:2], ids=["mha", "gqa"])
def test_harness_plain_cache_costs_nothing(config):
    model, x = random_gpt(**config), tokens(4, 30)
    q = cache_quality(model, x, lambda m, b: m.new_cache(b), prefill=8)
    assert q.nll.shape == q.nll_full.shape == q.agree.shape == q.accept.shape == (4, 30 - 8 - 1)
    assert abs(q.nll_increase) < 1e-5 and q.agreement == 1.0 and abs(q.acceptance - 1) < 1e-5
    c = model.config
    assert q.bytes_per_position == 2 * c.n_layer * c.kv_heads * (c.n_embd // c.n_head) * 4
    assert q.mean_nll_full > 1.0  # the tiny random model is far from certain: the zero is not trivial


def test_harness_columns_match_an_independent_computation():
    """Column j predicts token prefill + j + 1 from a query at prefill + j, under the window's mask."""
    model, x, prefill, budget = random_gpt(9), tokens(3, 26, seed=2), 7, 5
    q = cache_quality(model, x, lambda m, b: SlidingWindowCache(m.config, b, budget), prefill=prefill)
    windowed = masked_logits(model, x, keep_mask(26, prefill, budget))[:, prefill:-1].double()
    full = masked_logits(model, x, None)[:, prefill:-1].double()
    targets = x[:, prefill + 1:]
    nll = F.cross_entropy(windowed.transpose(1, 2), targets, reduction="none")
    assert torch.allclose(q.nll, nll, atol=1e-5)
    assert torch.allclose(q.nll_full, F.cross_entropy(full.transpose(1, 2), targets, reduction="none"), atol=1e-5)
    tv = 0.5 * (windowed.softmax(-1) - full.softmax(-1)).abs().sum(-1)
    assert torch.allclose(q.accept, 1 - tv, atol=1e-6)
    assert torch.equal(q.agree, (windowed.argmax(-1) == full.argmax(-1)).double())
    assert (q.nll - q.nll_full).abs().max() > 0.01 and q.acceptance < 0.99  # the window changes q here
    assert q.bytes_per_position == pytest.approx(2 * 2 * 2 * 8 * 4 * budget / 25)  # 5 of 25 positions kept


def test_harness_reference_logits_and_interval():
    model, x = random_gpt(), tokens(5, 24)
    make = lambda m, b: HeavyHitterCache(m.config, b, 4)
    a = cache_quality(model, x, make, prefill=6)
    b = cache_quality(model, x, make, prefill=6, reference_logits=full_logits(model, x))
    assert torch.equal(a.nll, b.nll) and torch.equal(a.accept, b.accept)
    mean, lo, hi = a.interval("nll_increase", draws=500)
    assert mean == pytest.approx(a.nll_increase) and lo <= mean <= hi and lo < hi
    for metric in METRICS:
        assert a.per_sequence(metric).shape == (5,)
    assert set(a.summary()) == {"nll", "nll_full", "nll_increase", "agreement", "acceptance", "bytes_per_position"}


def test_harness_bad_arguments():
    model, x = random_gpt(), tokens(2, 20)
    plain = lambda m, b: m.new_cache(b)
    with pytest.raises(ValueError, match=r"prefill: expected an int in \[1, T - 2 = 18\]"):
        cache_quality(model, x, plain, prefill=19)
    with pytest.raises(ValueError, match="prefill"):
        cache_quality(model, x, plain, prefill=0)
    with pytest.raises(ValueError, match="tokens: expected a"):
        cache_quality(model, x.float(), plain)
    with pytest.raises(ValueError, match=r"tokens: token ids must lie in \[0, 13\)"):
        cache_quality(model, x + VOCAB, plain, prefill=4, reference_logits=full_logits(model, x))
    with pytest.raises(ValueError, match="tokens: expected a length"):
        cache_quality(model, tokens(1, 40), plain)  # past the block size 32
    with pytest.raises(ValueError, match="reference_logits: expected a tensor"):
        cache_quality(model, x, plain, prefill=4, reference_logits=torch.zeros(2, 19, VOCAB))
    with pytest.raises(ValueError, match="make_cache: expected an empty KVCache for batch 2"):
        cache_quality(model, x, lambda m, b: KVCache(m.config, 3), prefill=4)
    with pytest.raises(ValueError, match="make_cache: expected a callable"):
        cache_quality(model, x, "window", prefill=4)
    with pytest.raises(ValueError, match="metric: expected one of"):
        cache_quality(model, x, plain, prefill=4).interval("perplexity")
    with pytest.raises(ValueError, match="model: expected eval mode"):
        cache_quality(model.train(), x, plain, prefill=4)


def test_heldout_sequences_are_distinct_windows_of_the_report_half():
    from arlib.data import shakespeare
    from arlib.text.tokenizer import CharTokenizer

    corpus = shakespeare()
    tokenizer = CharTokenizer.from_text(corpus.text)
    seqs = heldout_sequences(tokenizer, n=4, length=64)
    assert seqs.shape == (4, 64) and seqs.dtype == torch.long
    val = corpus.val
    for row in seqs:
        assert val.find(tokenizer.decode(row), len(val) // 2 - 64) >= 0
    assert len({tuple(r.tolist()) for r in seqs}) == 4
    with pytest.raises(ValueError, match="n: 100000 sequences"):
        heldout_sequences(tokenizer, n=100000, length=64)
