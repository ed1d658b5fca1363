"""Tests of arlib.text.gpt: shapes, causality, the KV cache, hidden states and input checks."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arlib.text.gpt import GPT, GPTConfig, KVCache

V = 13


def tiny(block_size=16, n_layer=2, n_head=2, n_embd=16, seed=0, dropout=0.0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          dropout=dropout))
    return model.eval()


def ids(B, T, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_params():
    model = tiny()
    logits = model(ids(3, 7))
    assert logits.shape == (3, 7, V) and logits.dtype == torch.float32
    d, L = 16, 2
    per_block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = V * d + 16 * d + L * per_block + 2 * d  # tied head adds nothing
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - 16 * d


def test_hidden_states():
    model = tiny(n_layer=3)
    x = ids(2, 5)
    logits, hidden = model(x, return_hidden=True)
    assert len(hidden) == 4 and all(h.shape == (2, 5, 16) for h in hidden)
    assert torch.allclose(hidden[0], model.wte(x) + model.wpe(torch.arange(5)))
    assert torch.allclose(logits, model.ln_f(hidden[-1]) @ model.wte.weight.T, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(T=st.integers(2, 16), pos=st.data())
def test_causality(T, pos):
    """Changing token j changes no logit before position j."""
    model = tiny()
    x = ids(2, T)
    j = pos.draw(st.integers(0, T - 1))
    y = x.clone()
    y[:, j] = (y[:, j] + 1) % V
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, j], b[:, j])


def test_cache_prefill_then_steps_equals_full_forward(device):
    model = tiny()
    x = ids(3, 12)
    on_cpu = model(x)
    model, x = model.to(device), x.to(device)
    full = model(x)
    cache = model.new_cache(3)
    assert cache.k.device.type == device.type
    parts = [model(x[:, :5], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(5, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.cpu(), on_cpu, rtol=1e-4, atol=1e-4)  # the device computes the CPU's logits


def test_cache_chunk_continuation_and_crop(device):
    """Speculative verification: feed a chunk of gamma+1 tokens after the cache, then roll back."""
    model = tiny().to(device)
    x = ids(2, 14).to(device)
    cache = model.new_cache(2)
    model(x[:, :6], cache=cache)
    chunk = model(x[:, 6:11], cache=cache)  # 5 positions at once, on top of 6 cached
    torch.testing.assert_close(chunk, model(x[:, :11])[:, 6:], rtol=1e-5, atol=1e-5)
    cache.crop(8)  # reject the last 3: continue from position 8 with other tokens
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 3) % V
    cont = model(y[:, 8:14], cache=cache)
    torch.testing.assert_close(cont, model(y)[:, 8:], rtol=1e-5, atol=1e-5)
    assert cache.length == 14


def test_cache_errors():
    model = tiny(block_size=8)
    cache = model.new_cache(2)
    model(ids(2, 6), cache=cache)
    with pytest.raises(ValueError, match="idx"):
        model(ids(2, 3), cache=cache)  # 9 > 8 positions
    with pytest.raises(ValueError, match="cache"):
        model(ids(3, 1), cache=cache)  # wrong batch
    with pytest.raises(ValueError, match="length"):
        cache.crop(7)
    with pytest.raises(ValueError, match="length"):
        cache.crop(-1)
    with pytest.raises(ValueError, match="batch_size"):
        KVCache(model.config, 0)
    cache.crop(0)
    assert cache.length == 0


def test_bad_inputs():
    model = tiny(block_size=8)
    with pytest.raises(ValueError, match="idx"):
        model(ids(2, 3).float())
    with pytest.raises(ValueError, match="idx"):
        model(ids(2, 3).int())
    with pytest.raises(ValueError, match="idx"):
        model(torch.arange(3))  # 1-D
    with pytest.raises(ValueError, match="idx"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match="idx"):
        model(ids(1, 9))  # longer than the context
    with pytest.raises(ValueError, match="idx"):
        model(torch.tensor([[0, V]]))
    with pytest.raises(ValueError, match="idx"):
        model(torch.tensor([[-1, 0]]))
    x = ids(2, 3)  # validate=False skips only the range check (a host sync on accelerators)
    assert torch.equal(model(x, validate=False), model(x))
    with pytest.raises(ValueError, match="idx"):
        model(ids(2, 3).int(), validate=False)
    with pytest.raises(TypeError, match="config"):
        GPT({"vocab_size": V})


@pytest.mark.parametrize("field, value", [
    ("vocab_size", 0), ("vocab_size", 2.0), ("block_size", -1), ("n_layer", True), ("n_head", 0),
    ("n_embd", 0), ("n_embd", 30), ("dropout", 1.0), ("dropout", -0.1),
])
def test_bad_config(field, value):
    kwargs = dict(vocab_size=V, block_size=8, n_layer=1, n_head=4, n_embd=16, dropout=0.0)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        GPTConfig(**kwargs)


def test_dropout_only_in_training():
    model = tiny(dropout=0.5)
    x = ids(2, 8)
    torch.testing.assert_close(model(x), model(x))  # eval: deterministic
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_untrained_loss_near_uniform():
    model = tiny()
    x = ids(4, 16)
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    assert abs(loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.1


# --------------------------------------------------------------------- grouped-query and multi-query attention


def test_n_kv_head_none_or_n_head_is_the_same_multi_head_model():
    from arlib.text.gpt import kv_cache_bytes

    base = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=16)
    same = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=16, n_kv_head=4)
    torch.manual_seed(0)
    a = GPT(base).eval()
    b = GPT(same).eval()
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 13, (2, 9))
    assert torch.equal(a(x), b(x))
    assert "n_kv_head" not in base.to_dict() and GPTConfig(**base.to_dict()) == base  # old sidecars load
    assert kv_cache_bytes(base) == kv_cache_bytes(same) == {"per_token": 2 * 2 * 4 * 4 * 2,
                                                             "per_sequence": 2 * 2 * 4 * 4 * 2 * 16}


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_grouped_query_attention_caches_fewer_heads_and_decodes_the_same(n_kv_head):
    from arlib.text.gpt import kv_cache_bytes
    from arlib.text.sampling import generate

    config = GPTConfig(vocab_size=13, block_size=24, n_layer=2, n_head=4, n_embd=16, n_kv_head=n_kv_head)
    torch.manual_seed(1)
    model = GPT(config).eval()
    assert model.h[0].attn.c_attn.weight.shape == (16 + 2 * n_kv_head * 4, 16)
    cache = model.new_cache(2)
    assert cache.k.shape == (2, 2, n_kv_head, 24, 4)  # (L, B, H_kv, T_max, D)
    x = torch.randint(0, 13, (2, 12))
    with torch.no_grad():
        full = model(x)
        step = torch.cat([model(x[:, :5], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(5, 12)], 1)
    assert torch.allclose(full, step, atol=1e-5)  # cached decoding equals the full pass
    prompt = x[:1, :4]
    cached, uncached = (generate(model, prompt, 10, greedy=True, use_cache=c) for c in (True, False))
    assert torch.equal(cached, uncached)
    assert kv_cache_bytes(config)["per_token"] * (4 // n_kv_head) == kv_cache_bytes(
        GPTConfig(vocab_size=13, block_size=24, n_layer=2, n_head=4, n_embd=16))["per_token"]


def test_grouped_query_attention_equals_multi_head_with_shared_keys():
    """A GQA model is an MHA model whose key/value weights are copied across each group of heads."""
    gqa_config = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=4, n_embd=16, n_kv_head=2)
    mha_config = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=4, n_embd=16)
    torch.manual_seed(2)
    gqa, mha = GPT(gqa_config).eval(), GPT(mha_config).eval()
    state = gqa.state_dict()
    for name in ("weight", "bias"):
        w = state[f"h.0.attn.c_attn.{name}"]
        q, k, v = w.split([16, 8, 8])
        widen = lambda t: t.reshape(2, 4, *t.shape[1:]).repeat_interleave(2, 0).reshape(16, *t.shape[1:])  # noqa: E731
        state[f"h.0.attn.c_attn.{name}"] = torch.cat([q, widen(k), widen(v)])
    mha.load_state_dict(state)
    x = torch.randint(0, 11, (3, 10))
    with torch.no_grad():
        assert torch.allclose(gqa(x), mha(x), atol=1e-5)


def test_n_kv_head_must_divide_n_head():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(vocab_size=5, n_head=4, n_embd=16, n_kv_head=3)
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(vocab_size=5, n_head=4, n_embd=16, n_kv_head=0)


def test_heads_split_and_merge_as_channel_slices():
    from arlib.text.gpt import merge_heads, split_heads

    x = torch.arange(2 * 3 * 12.0).view(2, 3, 12)  # (B, T, H * D) with H = 4, D = 3
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 3)
    assert torch.equal(heads[1, 2, 0], x[1, 0, 6:9])  # head 2 of position 0: channels 6..8
    assert torch.equal(merge_heads(heads), x)


def test_mlp_width_and_gelu_are_options_and_checked():
    from arlib.text.gpt import MLP, Block

    config = GPTConfig(vocab_size=5, n_head=2, n_embd=8)
    torch.manual_seed(0)
    exact = Block(config, hidden=12, approximate="none").mlp
    assert exact.c_fc.weight.shape == (12, 8) and exact.c_proj.weight.shape == (8, 12)
    x = torch.randn(3, 8)
    assert torch.equal(exact(x), exact.c_proj(torch.nn.GELU()(exact.c_fc(x))))  # the erf form
    assert MLP(config).c_fc.weight.shape == (32, 8)  # GPT-2's 4 d by default
    with pytest.raises(ValueError, match="hidden"):
        MLP(config, hidden=0)
    with pytest.raises(ValueError, match="approximate"):
        MLP(config, approximate="erf")


def test_stored_bytes_counts_full_precision_numbers_as_told():
    """A cache counts its numbers at the tensors' size, or at bytes_per_number (chapter 7 counts 16 bits)."""
    config = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_embd=16)
    model = GPT(config).eval()
    cache = model.new_cache(3)
    with torch.no_grad():
        model(torch.zeros(3, 5, dtype=torch.long), cache=cache)
    assert cache.stored_bytes() == 2 * 2 * 3 * 4 * 5 * 4 * 4  # K and V, layers, rows, heads, positions, D, float32
    cache.bytes_per_number = 2
    assert cache.stored_bytes() == 2 * 2 * 3 * 4 * 5 * 4 * 2
