"""Conversion between :class:`arlib.text.gpt.GPT` and Hugging Face's ``GPT2LMHeadModel`` (Radford et al. 2019).

Both are the same network with the same parameter names; Hugging Face stores the weights of its
``Conv1D`` layers (``c_attn``, ``c_proj``, ``c_fc``) transposed, as (in, out), where ``nn.Linear``
stores (out, in). Proving that the two give the same logits ties our GPT to the ecosystem's
reference (the test minGPT runs against GPT-2).

``transformers`` is only needed here (``pip install transformers``); nothing else in arlib imports it.
"""

from __future__ import annotations

import torch

from arlib.text.gpt import GPT, GPTConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("arlib.text.hf needs Hugging Face transformers: pip install 'transformers>=4.40' "
                          "(or pip install -e '.[test]')") from exc
    return transformers


def hf_config(config: GPTConfig):
    """The ``GPT2Config`` of the same architecture: tanh-GELU, eps 1e-5, scaled attention, tied head,
    no dropout, and no special tokens (a character vocabulary has none)."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config: expected GPTConfig, got {type(config).__name__}")
    if config.kv_heads != config.n_head:  # GPT-2's attention has one key/value head per query head
        raise ValueError(f"config: n_kv_head={config.n_kv_head} (grouped-query attention) has no GPT-2 "
                         f"equivalent; only n_kv_head=None or n_head={config.n_head} exports")
    return _transformers().GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=4 * config.n_embd,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def to_hf(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` with ``model``'s weights (same device and dtype, eval mode)."""
    if not isinstance(model, GPT):
        raise TypeError(f"model: expected arlib.text.gpt.GPT, got {type(model).__name__}")
    transformers = _transformers()
    p = model.wte.weight
    hf = transformers.GPT2LMHeadModel(hf_config(model.config)).to(device=p.device, dtype=p.dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        state[f"transformer.{name}"] = tensor.t() if name.endswith(_CONV1D) else tensor
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]:
        raise RuntimeError(f"to_hf: weights did not map (missing {missing}, unexpected {unexpected})")
    return hf.eval()


def from_hf(hf_model, dropout: float = 0.0) -> GPT:
    """A :class:`GPT` with the weights of a ``GPT2LMHeadModel`` (same device and dtype, eval mode).

    Rejects GPT-2 variants this GPT does not implement (other activations, untied heads, ...).
    """
    transformers = _transformers()
    if not isinstance(hf_model, transformers.GPT2LMHeadModel):
        raise TypeError(f"hf_model: expected transformers.GPT2LMHeadModel, got {type(hf_model).__name__}")
    c = hf_model.config
    expected = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "layer_norm_epsilon": (1e-5,),
                "n_inner": (None, 4 * c.n_embd), "scale_attn_weights": (True,),
                "scale_attn_by_inverse_layer_idx": (False,), "add_cross_attention": (False,)}
    for field, allowed in expected.items():
        if getattr(c, field, allowed[0]) not in allowed:
            raise ValueError(f"hf_model: config.{field} must be one of {allowed}, got {getattr(c, field)!r}")
    if hf_model.lm_head.weight.data_ptr() != hf_model.transformer.wte.weight.data_ptr() and not torch.equal(
            hf_model.lm_head.weight, hf_model.transformer.wte.weight):
        raise ValueError("hf_model: the output head must be tied to the token embedding (tie_word_embeddings)")
    config = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                       n_embd=c.n_embd, dropout=dropout)
    p = hf_model.transformer.wte.weight
    model = GPT(config).to(device=p.device, dtype=p.dtype)
    hf_state = hf_model.state_dict()
    state = {}
    for name in model.state_dict():
        tensor = hf_state[f"transformer.{name}"]
        state[name] = tensor.t() if name.endswith(_CONV1D) else tensor
    model.load_state_dict(state)
    return model.eval()


def load_hf_folder(folder):
    """The ``GPT2LMHeadModel`` saved by ``save_pretrained`` in the local ``folder`` (eval mode). Only that
    folder is read (``local_files_only``): a name of a hub model is refused, nothing is downloaded."""
    from pathlib import Path

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"folder: {path} holds no saved model (config.json); save one with "
                                f"to_hf(model).save_pretrained(folder)")
    return _transformers().GPT2LMHeadModel.from_pretrained(path, local_files_only=True).eval()
