"""arlib.serving.memory: the cache's bytes against hand computations, the byte model of a decode step, and
the measured decode-step profile on tiny GPTs."""

import pytest
import torch

from arlib.serving.memory import (
    LLAMA2_7B,
    LLAMA3_8B,
    MISTRAL_7B,
    MISTRAL_7B_MQA,
    ModelShape,
    OneKeyCache,
    StepTiming,
    TimedCache,
    cache_weight_ratio,
    crossover_context,
    decode_step_profile,
    decode_traffic,
    gpt_params,
    kv_bytes_per_token,
    llama_params,
    request_bytes,
    requests_that_fit,
)
from arlib.text.gpt import GPT, GPTConfig, KVCache, kv_cache_bytes

KiB, GiB = 2**10, 2**30


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=50, block_size=64, n_layer=2, n_head=4, n_embd=32) | kw
    return GPT(GPTConfig(**config)).eval()


# --- bytes held: hand computations ----------------------------------------------------------------


def test_llama2_7b_cache_by_hand():
    # 2 (k, v) x 32 layers x 32 heads x 128 dims x 2 bytes = 524288 B = 512 KiB per token; x 4096 = 2 GiB
    assert kv_bytes_per_token(32, 32, 128) == 2 * 32 * 32 * 128 * 2 == 512 * KiB
    assert LLAMA2_7B.kv_bytes_per_token() == 512 * KiB
    assert request_bytes(LLAMA2_7B, 4096) == 2 * GiB
    assert request_bytes(LLAMA2_7B, 1) == 512 * KiB
    assert LLAMA2_7B.kv_bytes_per_token(bytes_per_value=4) == 1024 * KiB  # float32 doubles it


def test_kwon_et_al_opt_13b_figure():
    # PagedAttention sec. 3: OPT-13B, 2 x 5120 (hidden) x 40 layers x 2 B = 800 KB per token
    assert kv_bytes_per_token(40, 40, 128) == 800 * KiB


def test_gqa_and_mqa_shrink_the_cache_by_the_group():
    assert MISTRAL_7B.kv_bytes_per_token() == 128 * KiB == LLAMA3_8B.kv_bytes_per_token()
    assert MISTRAL_7B_MQA.kv_bytes_per_token() == 16 * KiB
    assert (LLAMA2_7B.group, MISTRAL_7B.group, MISTRAL_7B_MQA.group) == (1, 4, 32)
    assert request_bytes(MISTRAL_7B, 8192) == 1 * GiB


def test_parameter_counts_match_the_model_cards():
    # the counts Hugging Face lists for meta-llama/Llama-2-7b-hf, mistralai/Mistral-7B-v0.1 and
    # meta-llama/Meta-Llama-3-8B (6.74B, 7.24B, 8.03B), to the parameter
    assert LLAMA2_7B.n_params == 6_738_415_616
    assert MISTRAL_7B.n_params == 7_241_732_096
    assert LLAMA3_8B.n_params == 8_030_261_248
    # MQA: k and v projections shrink from 4096 x 1024 to 4096 x 128 in each of 32 layers
    assert MISTRAL_7B.n_params - MISTRAL_7B_MQA.n_params == 32 * 2 * 4096 * (1024 - 128)
    assert llama_params(32, 4096, 32, 32, 11008, 32000, tied=True) == LLAMA2_7B.n_params - 32000 * 4096


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 2}, {"n_kv_head": 1, "block_size": 17}])
def test_gpt_params_equals_num_params(kw):
    config = GPTConfig(**(dict(vocab_size=50, block_size=64, n_layer=2, n_head=4, n_embd=32) | kw))
    assert gpt_params(config) == GPT(config).num_params()
    shape = ModelShape.from_config(config)
    assert (shape.n_layer, shape.n_head, shape.n_kv_head, shape.head_dim, shape.context) == \
        (2, 4, config.kv_heads, 8, config.block_size)
    assert shape.kv_bytes_per_token() == kv_cache_bytes(config)["per_token"]  # gpt.py's own count agrees
    cache = GPT(config).new_cache(3)
    cache.length = config.block_size  # stored_bytes counts the positions seen
    assert cache.stored_bytes() == 3 * request_bytes(shape, config.block_size, bytes_per_value=4)


def test_requests_that_fit_in_80_gib_by_hand():
    weights = 2 * 6_738_415_616  # fp16 Llama-2-7B: 13.48 GB
    assert LLAMA2_7B.weight_bytes() == weights
    # (85,899,345,920 - 13,476,831,232) / 2 GiB = 33.7 requests of 4096 tokens
    assert requests_that_fit(LLAMA2_7B, 80 * GiB, 4096) == 33
    # GQA: 512 MiB per 4096-token request, (85,899,345,920 - 14,483,464,192) / 536,870,912 = 133.02
    assert requests_that_fit(MISTRAL_7B, 80 * GiB, 4096) == 133
    assert requests_that_fit(MISTRAL_7B_MQA, 80 * GiB, 4096) == (80 * GiB - 2 * 7_006_851_072) // (64 * 2**20)
    assert requests_that_fit(LLAMA2_7B, 80 * GiB, 4096, weight_bytes=80 * GiB) == 0


def test_cache_to_weights_ratio_and_crossover():
    weights = 2 * 6_738_415_616
    assert cache_weight_ratio(LLAMA2_7B, 4096) == pytest.approx(2 * GiB / weights)  # 0.159
    assert cache_weight_ratio(LLAMA2_7B, 4096, batch_size=16) == pytest.approx(32 * GiB / weights)  # 2.55
    ratios = [cache_weight_ratio(LLAMA2_7B, n) for n in (256, 1024, 4096)]
    assert ratios[1] == pytest.approx(4 * ratios[0]) and ratios[2] == pytest.approx(4 * ratios[1])  # linear in n
    assert crossover_context(LLAMA2_7B) == pytest.approx(weights / (512 * KiB))  # 25,705 tokens
    assert crossover_context(LLAMA2_7B, batch_size=16) == pytest.approx(weights / (16 * 512 * KiB))  # 1,607
    n = crossover_context(MISTRAL_7B, batch_size=16)
    assert cache_weight_ratio(MISTRAL_7B, int(n), 16) < 1 <= cache_weight_ratio(MISTRAL_7B, int(n) + 1, 16)


# --- bytes read per decode step ---------------------------------------------------------------------


def test_decode_traffic_by_hand():
    t = decode_traffic(LLAMA2_7B, 4096, batch_size=16)
    assert t.cache_bytes == 16 * 2 * GiB
    assert t.weight_bytes == 2 * 6_738_415_616
    assert t.cache_share == pytest.approx(32 * GiB / (32 * GiB + 2 * 6_738_415_616))  # 0.718
    assert t.attention_flops == 16 * 4 * 32 * 32 * 128 * 4096
    # intensities (FLOPs per byte, fp16): weights 2B/b = B; cache 2 (H / H_kv) / b = the group size
    assert t.weight_intensity == 16
    assert [decode_traffic(s, 4096, b).cache_intensity for s in (LLAMA2_7B, MISTRAL_7B, MISTRAL_7B_MQA)
            for b in (1, 64)] == [1, 1, 4, 4, 32, 32]
    assert decode_traffic(LLAMA2_7B, 4096, 64).weight_intensity == 64
    assert decode_traffic(LLAMA2_7B, 4096, 1, bytes_per_value=4).cache_intensity == 0.5


def test_cache_share_grows_with_context_and_batch_and_shrinks_with_groups():
    shares = [decode_traffic(LLAMA2_7B, n, 8).cache_share for n in (128, 512, 2048, 4096)]
    assert shares == sorted(shares) and shares[0] < 0.1 < 0.5 < shares[-1]
    assert decode_traffic(LLAMA2_7B, 4096, 1).cache_share < decode_traffic(LLAMA2_7B, 4096, 2).cache_share
    assert decode_traffic(MISTRAL_7B_MQA, 4096, 16).cache_share < decode_traffic(MISTRAL_7B, 4096, 16).cache_share \
        < decode_traffic(LLAMA2_7B, 4096, 16).cache_share


# --- the caches the profile uses ------------------------------------------------------------------


def test_timed_cache_is_transparent_and_counts_every_layer():
    model, x = tiny(n_kv_head=2), torch.randint(50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain, timed = model.new_cache(2), TimedCache(model.new_cache(2))
        want = torch.cat([model(x[:, :8], cache=plain), model(x[:, 8:9], cache=plain)], dim=1)
        got = torch.cat([model(x[:, :8], cache=timed), model(x[:, 8:9], cache=timed)], dim=1)
    assert torch.equal(got, want)
    assert timed.calls == 2 * model.config.n_layer and timed.seconds > 0
    assert (timed.length, timed.batch_size, timed.n_layers) == (9, 2, 2)
    assert timed.stored_bytes() == plain.stored_bytes()
    timed.crop(4)
    assert timed.inner.length == 4


def test_one_key_cache_reads_only_the_new_key():
    model = tiny(n_kv_head=2)
    cache, plain = OneKeyCache(model.config, 2), KVCache(model.config, 2)
    cache.length = plain.length = 5
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 1, 8, generator=g)  # (B, H, 1, D)
    k, v = torch.randn(2, 2, 1, 8, generator=g), torch.randn(2, 2, 1, 8, generator=g)  # (B, H_kv, 1, D)
    y = cache.attend(0, q, k, v)
    plain.attend(0, q, k, v)
    assert torch.allclose(y, v.repeat_interleave(2, dim=1), atol=1e-6)  # one key: the output is its value
    assert torch.equal(cache.k, plain.k) and torch.equal(cache.v, plain.v)  # the same write as a real step


# --- the measured profile -------------------------------------------------------------------------


def test_profile_structure_and_positive_times():
    model = tiny()
    rows = decode_step_profile(model, [1, 16, 64], batch_size=2, repeats=5, warmup=1, rounds=1)
    assert [r.context for r in rows] == [1, 16, 64] and all(isinstance(r, StepTiming) for r in rows)
    for r in rows:
        assert r.batch_size == 2
        assert r.step_s > 0 and r.attend_s > 0 and r.one_key_s > 0
        assert r.attend_s < r.step_s  # attention is one part of a step
        assert r.rest_s == pytest.approx(r.step_s - r.attend_s)
        assert 0 < r.attend_share < 1


def test_profile_takes_a_prompt_and_a_cache_factory():
    model = tiny()
    built = []

    def new_cache(m, b):
        built.append(b)
        return m.new_cache(b)

    prompt = torch.randint(50, (3, 20))
    rows = decode_step_profile(model, [20, 5], batch_size=3, repeats=2, warmup=0, rounds=1, prompt=prompt,
                               new_cache=new_cache)
    assert [r.context for r in rows] == [20, 5]
    assert built == [3] * 4  # a plain and a timed cache per context


def test_cache_share_grows_with_context_on_a_tiny_model_with_a_long_context():
    # one layer of width 128, one head: the weights are small, so at 1024 positions x 16 sequences the
    # reads of the cache (8 MiB of keys and values) dominate the step; at 16 positions they are negligible
    model = tiny(vocab_size=32, block_size=1024, n_layer=1, n_head=1, n_embd=128)
    short, long = decode_step_profile(model, [16, 1024], batch_size=16, repeats=7, warmup=2, rounds=1)
    assert long.attend_share > short.attend_share + 0.2, (short, long)
    assert long.growth_share > 0.4 and long.growth_share > short.growth_share + 0.3, (short, long)


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    ((0, 32, 128), "n_layer: expected a positive int, got 0"),
    ((32, 32, 128, 0), "bytes_per_value: expected a positive int, got 0"),
    ((32, 2.0, 128), "n_kv_head: expected a positive int, got 2.0"),
    ((32, 32, True), "head_dim: expected a positive int, got True"),
])
def test_kv_bytes_per_token_errors(args, message):
    with pytest.raises(ValueError, match=message):
        kv_bytes_per_token(*args)


def test_shape_and_memory_errors():
    with pytest.raises(ValueError, match="n_kv_head: expected a divisor of n_head=32, got 5"):
        ModelShape("x", 32, 32, 5, 128, 4096, 10)
    with pytest.raises(ValueError, match="context: expected a positive int, got 0"):
        ModelShape("x", 32, 32, 8, 128, 0, 10)
    with pytest.raises(ValueError, match="config: expected a GPTConfig"):
        ModelShape.from_config({"n_layer": 2})
    with pytest.raises(ValueError, match=r"context: expected an int in \[1, 4096\], got 4097"):
        request_bytes(LLAMA2_7B, 4097)
    with pytest.raises(ValueError, match="shape: expected a ModelShape, got str"):
        request_bytes("Llama-2-7B", 10)
    with pytest.raises(ValueError, match="memory_bytes: expected at least the weights' 13,476,831,232 bytes"):
        requests_that_fit(LLAMA2_7B, 8 * GiB, 4096)
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        cache_weight_ratio(LLAMA2_7B, 10, batch_size=0)
    with pytest.raises(ValueError, match="weight_bytes: expected an int >= 0, got -1"):
        decode_traffic(LLAMA2_7B, 10, weight_bytes=-1)
    with pytest.raises(ValueError, match="n_kv_head: expected a divisor of n_head=32, got 3"):
        llama_params(32, 4096, 32, 3, 11008, 32000)
    with pytest.raises(ValueError, match="inner: expected a KVCache, got dict"):
        TimedCache({})


@pytest.mark.parametrize("kwargs, message", [
    (dict(context_lengths=[0, 8]), r"context_lengths: expected a non-empty list of ints in \[1, 64\]"),
    (dict(context_lengths=[65]), r"context_lengths: expected a non-empty list of ints in \[1, 64\]"),
    (dict(context_lengths=[]), "context_lengths: expected a non-empty list"),
    (dict(context_lengths="16"), "context_lengths: expected a non-empty list"),
    (dict(batch_size=0), "batch_size: expected a positive int, got 0"),
    (dict(repeats=0), "repeats: expected a positive int, got 0"),
    (dict(warmup=-1), "warmup: expected an int >= 0, got -1"),
    (dict(prompt=torch.zeros(2, 20, dtype=torch.long)), r"prompt: expected a \(1, >= 16\) torch.long tensor"),
    (dict(prompt=torch.zeros(1, 10, dtype=torch.long)), "prompt: expected at least 16 tokens per row"),
    (dict(prompt=torch.full((1, 20), 50)), r"prompt: token ids must lie in \[0, 50\)"),
    (dict(new_cache=lambda m, b: None), "new_cache: expected a callable returning a KVCache, got NoneType"),
])
def test_profile_errors(kwargs, message):
    args = dict(context_lengths=[16], batch_size=1, repeats=1) | kwargs
    with pytest.raises(ValueError, match=message):
        decode_step_profile(tiny(), **args)


def test_profile_rejects_a_non_gpt():
    with pytest.raises(ValueError, match="model: expected an arlib.text.gpt.GPT, got Linear"):
        decode_step_profile(torch.nn.Linear(2, 2), [4])
