"""arlib's GPT equals Hugging Face's GPT-2 on the same weights: logits, hidden states and generation."""

import pytest
import torch

from arlib.text.gpt import GPT, GPTConfig
from arlib.text.hf import from_hf, to_hf
from arlib.text.sampling import generate

transformers = pytest.importorskip("transformers")

V = 19


@pytest.fixture(scope="module")
def model():
    """A small GPT with every parameter random and O(1), so that a mapping error cannot hide."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def ids(B=3, T=20, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_same_logits_both_ways(model):
    hf = to_hf(model)
    assert isinstance(hf, transformers.GPT2LMHeadModel) and not hf.training
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    x = ids()
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ours.abs().max() > 1  # not trivially small
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    back = from_hf(hf)
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours, rtol=0, atol=0)


def test_from_hf_of_a_fresh_hf_model():
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=24, n_layer=2, n_head=3,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    ours = from_hf(hf)
    assert ours.config.block_size == 16 and ours.config.n_head == 3
    x = ids(T=16)
    with torch.no_grad():
        out = hf(x, output_hidden_states=True)
        logits, hidden = ours(x, return_hidden=True)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-5)
    # HF's hidden states: the embeddings, then each block's output (the last one after ln_f)
    for a, b in zip(out.hidden_states[:-1], hidden[:-1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.hidden_states[-1], ours.ln_f(hidden[-1]), rtol=0, atol=1e-5)


def test_greedy_generation_agrees_with_hf(model):
    hf = to_hf(model)
    x = ids(T=6)
    ours = generate(model, x, 12, greedy=True)
    with torch.no_grad():
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                             use_cache=True, pad_token_id=0)
    assert torch.equal(ours, theirs)
    assert torch.equal(generate(model, x, 12, greedy=True, use_cache=False), theirs)


def test_errors():
    with pytest.raises(TypeError, match="model"):
        to_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="hf_model"):
        from_hf(GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)))
    base = dict(vocab_size=V, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="activation_function"):
        from_hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(**base, activation_function="relu")))
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        from_hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(**base, layer_norm_epsilon=1e-6)))
    untied = transformers.GPT2LMHeadModel(transformers.GPT2Config(**base, tie_word_embeddings=False))
    with torch.no_grad():
        untied.lm_head.weight.add_(1.0)
    with pytest.raises(ValueError, match="tie"):
        from_hf(untied)


def test_grouped_query_attention_has_no_hf_equivalent():
    model = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=4, n_embd=16, n_kv_head=2))
    with pytest.raises(ValueError, match="n_kv_head=2"):
        to_hf(model)


@pytest.fixture(scope="module")
def mqa():
    """A multi-query GPT (4 query heads, 1 key/value head), every parameter random and O(1)."""
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32, n_kv_head=1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def test_multi_query_exports_to_gpt_bigcode_with_the_same_logits_both_ways(mqa):
    hf = to_hf(mqa)
    assert isinstance(hf, transformers.GPTBigCodeForCausalLM) and hf.config.multi_query
    assert hf.transformer.h[0].attn.c_attn.weight.shape == (32 + 2 * 8, 32)  # one key/value head of 8
    x = ids()
    with torch.no_grad():
        ours, theirs = mqa(x), hf(x).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
        back = from_hf(hf)
        assert back.config == mqa.config and back.config.n_kv_head == 1
        assert torch.equal(back(x), ours)
    generated = generate(mqa, x[:, :6], 12, greedy=True)  # our KV cache holds one head per layer
    with torch.no_grad():
        theirs = hf.generate(x[:, :6], attention_mask=torch.ones_like(x[:, :6]), max_new_tokens=12,
                             do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(generated, theirs)


def test_a_gpt_bigcode_that_is_not_multi_query_is_refused():
    config = transformers.GPTBigCodeConfig(vocab_size=V, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                           multi_query=False)
    with pytest.raises(ValueError, match="multi_query"):
        from_hf(transformers.GPTBigCodeForCausalLM(config))


def test_a_saved_export_reloads_from_its_folder_only(tmp_path):
    from arlib.text.gpt import GPT, GPTConfig
    from arlib.text.hf import load_hf_folder, to_hf

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8)).eval()
    to_hf(model).save_pretrained(tmp_path)
    x = torch.randint(0, 7, (2, 8))
    with torch.no_grad():
        assert torch.allclose(load_hf_folder(tmp_path)(x).logits, model(x), atol=1e-5)
    mqa = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8, n_kv_head=1)).eval()
    to_hf(mqa).save_pretrained(tmp_path / "mqa")
    with torch.no_grad():
        reloaded = load_hf_folder(tmp_path / "mqa")
        assert isinstance(reloaded, transformers.GPTBigCodeForCausalLM)
        assert torch.allclose(reloaded(x).logits, mqa(x), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="folder"):
        load_hf_folder(tmp_path / "missing")


@pytest.mark.parametrize("t, k, p_min", [(1.0, None, 0.1), (2.0, None, 0.1), (0.5, 8, 0.05), (3.0, 12, 0.3)])
def test_temperature_then_min_p_as_hugging_face_does(t, k, p_min):
    """The min-p paper's reference implementation is Hugging Face's MinPLogitsWarper, which generate()
    runs after TemperatureLogitsWarper and TopKLogitsWarper: process_logits keeps the same tokens."""
    from arlib.text.sampling import process_logits

    logits = 3 * torch.randn(16, 50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    warpers = [transformers.TemperatureLogitsWarper(t)] + ([transformers.TopKLogitsWarper(k)] if k else [])
    theirs = logits
    for warper in [*warpers, transformers.MinPLogitsWarper(p_min)]:
        theirs = warper(None, theirs)
    ours = process_logits(logits, temperature=t, top_k=k, min_p=p_min)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.isfinite(ours).sum() < torch.isfinite(process_logits(logits, temperature=t, top_k=k)).sum()
