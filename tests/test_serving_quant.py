"""Quantized KV caches (arlib.serving.quant: the group quantizer and KIVI) and GEAR (arlib.serving.gear)."""

import math

import pytest
import torch

from arlib.serving.gear import (
    GEARCache,
    component_bytes,
    gear_compress,
    gear_decompress,
    gear_errors,
    outlier_mask,
    power_iteration,
)
from arlib.serving.quant import (
    QuantizedCache,
    capture_kv,
    dequantize,
    fake_quantize,
    grouping_axis,
    quantize,
    quantize_kv,
    relative_error,
)
from arlib.text.gpt import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=13, block_size=64, n_layer=2, n_head=2, n_embd=32)  # head_dim 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CONFIG).eval()
    with torch.no_grad():  # larger weights than GPT-2's init: attention far from uniform, errors visible
        for name, p in m.named_parameters():
            if name.endswith("c_attn.weight"):
                p.mul_(10)
    return m


def tokens(T, B=2, seed=1):
    return torch.randint(0, CONFIG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def run(model, cache, idx, prefill):
    """Logits of idx fed as a prefill of ``prefill`` tokens, then one token at a time."""
    out = [model(idx[:, :prefill], cache=cache)]
    out += [model(idx[:, t:t + 1], cache=cache) for t in range(prefill, idx.shape[1])]
    return torch.cat(out, dim=1)


def step_of(q, x):
    """Every entry's quantization step (x's shape)."""
    return q.scale.repeat_interleave(q.group_size, dim=q.axis).expand_as(x)


# --- the quantizer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("grouping", ["token", "channel"])
def test_error_within_half_a_step_on_random_input(bits, grouping):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 3, 32, 16, generator=g) * torch.logspace(-2, 2, 16)  # channels of very different scales
    q = quantize_kv(x, bits, grouping, 8)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2 ** bits - 1
    err = (x - dequantize(q)).abs()
    assert (err <= step_of(q, x) / 2 + 1e-6 * x.abs().amax()).all()
    assert err.max() > 0  # not trivially exact: the bound is what is tested


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_error_bound_on_adversarial_groups(bits):
    x = torch.randn(1, 1, 16, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[..., :8, 0] = 3.25  # a constant group (per channel, tokens 0..7 of channel 0)
    x[0, 0, 12, 5] = 1e4  # an outlier in the group of tokens 8..15 of channel 5
    q = quantize(x, bits, axis=-2, group_size=8)
    deq = dequantize(q)
    assert q.scale[0, 0, 0, 0] == 0 and torch.equal(deq[..., :8, 0], x[..., :8, 0])  # constant: exact
    step = step_of(q, x)
    assert step[0, 0, 12, 5] == pytest.approx((1e4 - x[0, 0, 8:, 5].min().item()) / (2 ** bits - 1))
    assert ((x - deq).abs() <= step / 2 + 1e-12 * 1e4).all()
    assert deq[0, 0, 12, 5] == pytest.approx(1e4, rel=1e-12)  # the group's max is a grid point


def test_groupings_take_statistics_over_the_right_entries():
    x = torch.randn(2, 2, 12, 8, generator=torch.Generator().manual_seed(3))
    per_token = quantize_kv(x, 4, "token", 4)  # groups of 4 channels of one token
    assert per_token.zero.shape == (2, 2, 12, 2)
    assert torch.equal(per_token.zero, x.reshape(2, 2, 12, 2, 4).amin(-1))
    per_channel = quantize_kv(x, 4, "channel", 3)  # groups of 3 tokens of one channel
    assert per_channel.zero.shape == (2, 2, 4, 8)
    assert torch.equal(per_channel.zero, x.reshape(2, 2, 4, 3, 8).amin(3))
    hi = x.reshape(2, 2, 4, 3, 8).amax(3)
    assert torch.allclose(per_channel.scale, (hi - per_channel.zero) / 15)
    assert grouping_axis("token") == -1 and grouping_axis("channel") == -2


def test_stored_bytes_by_hand():
    x = torch.randn(2, 4, 64, 32)  # 16384 entries
    q = quantize_kv(x, 2, "channel", 32)  # 2 * 4 * 2 * 32 = 512 groups
    assert q.stored_bytes() == 16384 * 2 // 8 + 512 * 2 * 2 == 6144
    q = quantize_kv(x, 4, "token", 16)  # 2 * 4 * 64 * 2 = 1024 groups
    assert q.stored_bytes() == 16384 * 4 // 8 + 1024 * 4 == 12288


def test_keys_with_outlier_channels_want_per_channel_quantization():
    """KIVI's observation on keys built like theirs: a few channels with a large fixed offset."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 64, 16, generator=g)
    k[..., [3, 11]] += 20.0  # outlier channels
    per_channel = relative_error(k, fake_quantize(k, 2, "channel", 32))
    per_token = relative_error(k, fake_quantize(k, 2, "token", 16))
    assert per_channel < 0.5 * per_token


def test_quantizer_rejects_bad_arguments():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="bits: expected an int in \\[1, 8\\]"):
        quantize(x, 9, -1, 8)
    with pytest.raises(ValueError, match="group_size: expected a divisor of the length 8"):
        quantize(x, 4, -1, 3)
    with pytest.raises(ValueError, match="axis: expected an int in \\[-4, 3\\]"):
        quantize(x, 4, 4, 8)
    with pytest.raises(ValueError, match="x: expected a floating-point tensor"):
        quantize(torch.ones(4, dtype=torch.long), 4, 0, 4)
    with pytest.raises(ValueError, match="exclude: expected a bool tensor of shape"):
        quantize(x, 4, -1, 8, exclude=torch.zeros(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="grouping: expected one of"):
        quantize_kv(x, 4, "head", 8)
    with pytest.raises(ValueError, match="x: expected a \\(batch, heads, time, head_dim\\) tensor"):
        quantize_kv(x[0], 4, "token", 8)
    with pytest.raises(ValueError, match="q: expected a Quantized"):
        dequantize(x)


# --- KIVI's cache -----------------------------------------------------------------------------------


def test_residual_covering_everything_is_the_plain_cache(model):
    idx = tokens(40)
    plain = run(model, model.new_cache(2), idx, 17)
    kivi = run(model, QuantizedCache(CONFIG, 2, bits=2, group_size=16, residual=64), idx, 17)
    assert torch.equal(kivi, plain)


def test_eight_bits_is_close_to_the_plain_cache(model):
    idx = tokens(48)
    plain = run(model, model.new_cache(2), idx, 20)
    cache = QuantizedCache(CONFIG, 2, bits=8, group_size=8, residual=8)
    kivi = run(model, cache, idx, 20)
    assert cache.n_quantized == {"key": 48, "value": 40}
    assert (kivi - plain).abs().max() < 2e-2
    two_bits = run(model, QuantizedCache(CONFIG, 2, bits=2, group_size=8, residual=8), idx, 20)
    assert (two_bits - plain).abs().max() > 10 * (kivi - plain).abs().max()  # the test can see an error


def test_cache_follows_kivi_flush_rules_against_a_simulation(model):
    """Layer 0's keys do not depend on the cache: compare what the cache holds with KIVI's rules applied
    by hand to the exact keys and values."""
    idx, R, G = tokens(45), 16, 8
    k, v = capture_kv(model, idx)  # (L, B, H, T, D)
    cache = QuantizedCache(CONFIG, 2, bits=2, group_size=G, residual=R)
    with torch.no_grad():
        model(idx[:, :21], cache=cache)
        assert cache.n_quantized == {"key": 16, "value": 5}  # keys: 21 - 21 % 16; values: all but the last 16
        for t in range(21, 45):
            model(idx[:, t:t + 1], cache=cache)
            assert cache.n_quantized == {"key": (t + 1) // R * R, "value": t + 1 - R}
    nk, nv = cache.n_quantized["key"], cache.n_quantized["value"]  # 32, 29
    want_k = torch.cat([fake_quantize(k[0, :, :, :nk], 2, "channel", G), k[0, :, :, nk:]], dim=2)
    want_v = torch.cat([fake_quantize(v[0, :, :, :nv], 2, "token", G), v[0, :, :, nv:]], dim=2)
    assert torch.allclose(cache.k[0, :, :, :45], want_k, atol=1e-5)
    assert torch.allclose(cache.v[0, :, :, :45], want_v, atol=1e-5)
    assert not torch.allclose(want_k, k[0], atol=1e-3)  # the quantization is visible


def test_swapped_groupings_are_selectable(model):
    idx = tokens(30)
    cache = QuantizedCache(CONFIG, 2, bits=4, key_grouping="token", value_grouping="channel", group_size=8,
                           residual=8)
    run(model, cache, idx, 10)
    assert cache.n_quantized == {"key": 22, "value": 24}  # keys leave one by one, values in blocks of 8


def test_cache_stored_bytes_by_hand(model):
    B, L, H, D, G, R = 2, 2, 2, 16, 8, 16
    cache = QuantizedCache(CONFIG, B, bits=2, group_size=G, residual=R)
    run(model, cache, tokens(37), 21)
    nk, nv = 32, 21  # keys: floor(37 / 16) * 16; values: 37 - 16
    key = nk * D * 2 / 8 + (nk // G) * D * 4 + (37 - nk) * D * 4  # codes, fp16 scale+min, fp32 residual
    value = nv * D * 2 / 8 + nv * (D // G) * 4 + (37 - nv) * D * 4
    assert cache.stored_bytes() == math.ceil(L * B * H * (key + value))
    assert cache.stored_bytes() < model.new_cache(B).k[..., :37, :].numel() * 4 * 2 / 2


def test_crop_inside_the_residual_only(model):
    """Keys and values both quantized in blocks: rolling back inside the residual restores the state exactly."""
    idx = tokens(30)
    cache = QuantizedCache(CONFIG, 2, bits=4, value_grouping="channel", group_size=8, residual=16)
    full = run(model, cache, idx, 20)
    assert cache.n_quantized == {"key": 16, "value": 16}
    cache.crop(25)
    with torch.no_grad():
        again = model(idx[:, 25:30], cache=cache)
    assert torch.allclose(again, full[:, 25:30], atol=1e-5)
    with pytest.raises(ValueError, match="length: expected an int in \\[16, 30\\].*already quantized"):
        cache.crop(10)


def test_quantized_cache_rejects_bad_arguments():
    with pytest.raises(ValueError, match="residual: expected a positive multiple of group_size=8"):
        QuantizedCache(CONFIG, 1, bits=2, group_size=8, residual=12)
    with pytest.raises(ValueError, match="group_size: expected a divisor of the head dimension 16"):
        QuantizedCache(CONFIG, 1, bits=2, group_size=12, residual=24)
    with pytest.raises(ValueError, match="key_grouping: expected one of"):
        QuantizedCache(CONFIG, 1, bits=2, key_grouping="block")
    with pytest.raises(ValueError, match="bits: expected an int in \\[1, 8\\]"):
        QuantizedCache(CONFIG, 1, bits=0, group_size=8, residual=8)
    with pytest.raises(ValueError, match="config: expected a GPTConfig"):
        QuantizedCache({}, 1, bits=2)


# --- GEAR -------------------------------------------------------------------------------------------


def planted(seed=0, outliers=True, rank=2):
    """(2, 2, 64, 16): noise + a rank-2 structure per head + a few large outliers."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(2, 2, 64, 16, generator=g)
    x += torch.randn(2, 2, 64, rank, generator=g) @ torch.randn(2, 2, rank, 16, generator=g)
    if outliers:
        flat = x.view(-1)
        where = torch.randperm(flat.numel(), generator=g)[:40]
        flat[where] = 25.0 * torch.sign(torch.randn(40, generator=g))
    return x


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("grouping", ["token", "channel"])
def test_each_component_lowers_the_error_on_planted_data(bits, grouping):
    e = gear_errors(planted(), bits, rank=4, outlier_fraction=0.1, grouping=grouping)
    assert e["quant+outliers"] < e["quant"] and e["quant+lowrank"] < e["quant"]
    assert e["gear"] < e["quant+outliers"] and e["gear"] < e["quant+lowrank"]


@pytest.mark.parametrize("seed", range(3))
def test_lowrank_correction_never_increases_the_error(seed):
    """L = A A^T R is an orthogonal projection of the residual: a proven bound, on any input."""
    x = torch.randn(1, 2, 24, 8, generator=torch.Generator().manual_seed(seed)) ** 3
    for fraction in (0.0, 0.2):
        parts = gear_compress(x, 2, rank=3, outlier_fraction=fraction, iterations=1, seed=seed)
        assert relative_error(x, gear_decompress(parts)) <= relative_error(x, parts.backbone()) + 1e-12


def test_lowrank_recovers_a_planted_lowrank_residual_exactly():
    """Each token holds grid points (min 0 and max 15 at channels 0 and 7, 0..14 elsewhere) plus a rank-1
    term under half a step that is 0 on channels 0 and 7: 4-bit per-token quantization returns the grid,
    so its residual is exactly the rank-1 term, and GEAR-L with rank 1 restores x."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 15, (1, 2, 20, 8), generator=g).double()
    codes[..., 0], codes[..., 7] = 0.0, 15.0
    u, w = torch.rand(1, 2, 20, 1, generator=g).double(), torch.rand(1, 2, 1, 8, generator=g).double()
    w[..., 0] = w[..., 7] = 0.0
    x = codes + 0.45 * u * w
    e = gear_errors(x, 4, rank=1, outlier_fraction=0.0, grouping="token")
    assert e["quant"] > 1e-3 and e["quant+lowrank"] < 1e-10


def test_power_iteration_matches_the_truncated_svd():
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(3, 40, 8, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(3, 12, 8, generator=g, dtype=torch.float64)).Q
    s = torch.tensor([10.0, 8, 6, 5, 1, 0.5, 0.2, 0.1], dtype=torch.float64)
    r = u * s @ v.mT  # (3, 40, 12), singular values s
    left, right = power_iteration(r, 4, iterations=30, generator=g)
    U, S, Vh = torch.linalg.svd(r, full_matrices=False)
    svd = U[..., :4] * S[..., None, :4] @ Vh[..., :4, :]
    assert torch.allclose(left @ right.mT, svd, atol=1e-9)
    assert torch.allclose(left.mT @ left, torch.eye(4, dtype=torch.float64).expand(3, 4, 4), atol=1e-12)
    one, once = power_iteration(svd, 4, iterations=1, generator=g)  # rank 4 exactly: one step suffices
    assert torch.allclose(one @ once.mT, svd, atol=1e-9)


def test_outlier_mask_takes_the_extremes_of_each_row():
    x = torch.randn(1, 2, 50, 4, generator=torch.Generator().manual_seed(0))
    m = outlier_mask(x, 0.1, "channel")  # each channel's 2 largest and 2 smallest of 50 tokens
    assert (m.sum(2) == 4).all()
    top = x.topk(2, dim=2).indices
    assert m.gather(2, top).all() and m.gather(2, x.topk(2, dim=2, largest=False).indices).all()
    m = outlier_mask(x, 0.25, "token")  # each token: 1 largest and 1 smallest over both heads' 8 channels
    assert (m.sum((1, 3)) == 2).all()
    rows = x.transpose(1, 2).reshape(1, 50, 8)
    assert m.transpose(1, 2).reshape(1, 50, 8).gather(2, rows.argmax(2, keepdim=True)).all()
    assert not outlier_mask(x, 0.02, "token").any()  # floor(0.01 * 8) = 0 per row


def test_component_bytes_by_hand():
    x = torch.randn(1, 2, 40, 8, generator=torch.Generator().manual_seed(0))
    parts = gear_compress(x, 4, rank=3, outlier_fraction=0.25, grouping="token", group_size=8)
    b = component_bytes(parts)
    assert b["quant"] == 640 * 4 // 8 + 80 * 2 * 2  # 640 codes, 80 groups (a head's 8 channels of a token)
    assert b["outliers"] == 40 * 2 * 2 * (2 + 4)  # 40 tokens x (2 largest + 2 smallest of 16) x (fp16 + int32)
    assert b["lowrank"] == 2 * (40 + 8) * 3 * 2  # per head A (40, 3) and B (8, 3) in fp16
    assert b["total"] == b["quant"] + b["outliers"] + b["lowrank"]
    k = gear_compress(x, 2, rank=3, outlier_fraction=0.1, grouping="channel")  # one group per channel of 40
    assert component_bytes(k)["quant"] == 640 * 2 // 8 + 16 * 4
    assert component_bytes(k)["outliers"] == 16 * 2 * 2 * 6  # 16 channels x (2 + 2 of 40 tokens)


def test_gear_rejects_bad_arguments():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="x: expected a floating-point \\(batch, heads, time, head_dim\\)"):
        gear_compress(x[0], 4, 2, 0.1)
    with pytest.raises(ValueError, match="fraction: expected a number in \\[0, 1\\)"):
        gear_compress(x, 4, 2, 1.0)
    with pytest.raises(ValueError, match="rank: expected an int >= 0"):
        gear_compress(x, 4, -1, 0.1)
    with pytest.raises(ValueError, match="rank: expected an int in \\[0, 8\\]"):
        power_iteration(x, 9)
    with pytest.raises(ValueError, match="buffer: expected a positive int"):
        GEARCache(CONFIG, 1, buffer=0)
    with pytest.raises(ValueError, match="group_size: expected a divisor of the head dimension 16"):
        GEARCache(CONFIG, 1, group_size=5)
    with pytest.raises(ValueError, match="outlier_fraction: expected a number in \\[0, 1\\)"):
        GEARCache(CONFIG, 1, outlier_fraction=-0.1)


# --- GEAR's cache -----------------------------------------------------------------------------------


def test_gear_buffer_covering_everything_is_the_plain_cache(model):
    idx = tokens(40)
    plain = run(model, model.new_cache(2), idx, 17)
    gear = run(model, GEARCache(CONFIG, 2, bits=2, buffer=64, compress_prefill=False), idx, 17)
    assert torch.equal(gear, plain)


def test_gear_eight_bits_is_close_to_the_plain_cache(model):
    idx = tokens(48)
    plain = run(model, model.new_cache(2), idx, 20)
    cache = GEARCache(CONFIG, 2, bits=8, rank=2, buffer=8)
    gear = run(model, cache, idx, 20)
    assert cache.n_compressed == 44  # the prefill, then 3 buffers of 8
    assert (gear - plain).abs().max() < 2e-2
    two_bits = run(model, GEARCache(CONFIG, 2, bits=2, rank=0, outlier_fraction=0.0, buffer=8), idx, 20)
    assert (two_bits - plain).abs().max() > 10 * (gear - plain).abs().max()


def test_gear_cache_compresses_prefill_then_buffers_against_a_simulation(model):
    idx = tokens(40)
    k, v = capture_kv(model, idx)  # layer 0 does not depend on the cache
    cache = GEARCache(CONFIG, 2, bits=2, rank=2, outlier_fraction=0.1, buffer=6)
    steps = []
    with torch.no_grad():
        model(idx[:, :15], cache=cache)
        for t in range(15, 40):
            steps.append(cache.n_compressed)
            model(idx[:, t:t + 1], cache=cache)
    assert steps == [15] * 6 + [21] * 6 + [27] * 6 + [33] * 6 + [39]
    assert cache.n_compressed == 39 and cache.length == 40
    for lo, hi in [(0, 15), (15, 21), (21, 27), (27, 33), (33, 39)]:
        want_k = gear_decompress(gear_compress(k[0, :, :, lo:hi], 2, 2, 0.1, "channel", hi - lo, 3, lo))
        want_v = gear_decompress(gear_compress(v[0, :, :, lo:hi], 2, 2, 0.1, "token", 16, 3, lo))
        assert torch.allclose(cache.k[0, :, :, lo:hi], want_k, atol=1e-5)
        assert torch.allclose(cache.v[0, :, :, lo:hi], want_v, atol=1e-5)
    assert torch.allclose(cache.k[0, :, :, 39], k[0, :, :, 39], atol=1e-6)  # the buffer: full precision


def test_gear_cache_stored_bytes_by_hand(model):
    B, L, H, D, bits, r, s, nb = 2, 2, 2, 16, 4, 3, 0.1, 8
    cache = GEARCache(CONFIG, B, bits=bits, rank=r, outlier_fraction=s, buffer=nb)
    run(model, cache, tokens(37), 20)  # chunks: the prefill (20), then 8 and 8; 1 token in the buffer

    def chunk(n):  # bytes of one layer's keys and values for a chunk of n tokens
        keys = (B * H * n * D * bits // 8 + B * H * D * 4  # codes; fp16 scale+min per channel
                + B * H * D * 2 * int(s / 2 * n) * 6  # per channel: largest and smallest of n tokens
                + B * H * (n + D) * min(r, n, D) * 2)  # factors
        values = (B * H * n * D * bits // 8 + B * H * n * 4  # one group per head and token
                  + B * n * 2 * int(s / 2 * H * D) * 6  # per token: over all heads' channels
                  + B * H * (n + D) * min(r, n, D) * 2)
        return keys + values

    assert cache.stored_bytes() == L * (chunk(20) + 2 * chunk(8)) + 2 * L * B * H * 1 * D * 4


def test_gear_crop_inside_the_buffer_only(model):
    cache = GEARCache(CONFIG, 2, buffer=8)
    run(model, cache, tokens(26), 12)
    assert cache.n_compressed == 20
    cache.crop(22)
    assert cache.length == 22
    with pytest.raises(ValueError, match="length: expected an int in \\[20, 22\\].*compressed"):
        cache.crop(19)


def test_trained_target_keys_want_per_channel_quantization():
    """KIVI's observation on the book's trained target (held-out Shakespeare): in every layer, 2-bit keys
    quantized per channel (groups of 32 tokens) lose less than per token (groups of 32 channels, a head)."""
    import arlib
    from arlib.serving.evaluate import heldout_sequences

    loaded = arlib.load("shakespeare-target")
    k, _ = capture_kv(loaded.model, heldout_sequences(loaded.tokenizer, n=2, length=256))  # (L, B, H, T, D)
    for layer_keys in k:
        per_channel = relative_error(layer_keys, fake_quantize(layer_keys, 2, "channel", 32))
        per_token = relative_error(layer_keys, fake_quantize(layer_keys, 2, "token", 32))
        assert per_channel < per_token
