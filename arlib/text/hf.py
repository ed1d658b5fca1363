"""Conversion between :class:`arlib.text.gpt.GPT` and Hugging Face's ``GPT2LMHeadModel`` (Radford et al. 2019).

Both are the same network with the same parameter names; Hugging Face stores the weights of its
``Conv1D`` layers (``c_attn``, ``c_proj``, ``c_fc``) transposed, as (in, out), where ``nn.Linear``
stores (out, in). Proving that the two give the same logits ties our GPT to the ecosystem's
reference (the test minGPT runs against GPT-2).

GPT-2 has one key/value head per query head. A multi-query model (``n_kv_head=1``, Shazeer 2019)
exports to ``GPTBigCodeForCausalLM`` with ``multi_query=True`` instead: the same GPT-2 blocks with one
key/value head and ``nn.Linear`` layers, its fused ``c_attn`` laid out [q | k | v] as ours. Grouped-query
attention with ``1 < n_kv_head < n_head`` (Ainslie et al. 2023) has no Hugging Face architecture with
GPT-2's learned positions and LayerNorm (the ones with ``num_key_value_heads`` use rotary positions and
RMSNorm), so it is refused with a ``ValueError``.

``transformers`` is only needed here (``pip install transformers``); nothing else in arlib imports it.
"""

from __future__ import annotations

import torch

from arlib.text.gpt import GPT, GPTConfig
from arlib.validate import MissingFileError, number_in

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("arlib.text.hf needs Hugging Face transformers: pip install 'transformers>=4.40' "
                          "(or pip install -e '.[test]')") from exc
    return transformers


def _multi_query(config: GPTConfig) -> bool:
    """Whether ``config`` exports as GPTBigCode (one key/value head shared by several query heads)."""
    if config.kv_heads == config.n_head:
        return False
    if config.kv_heads == 1:
        return True
    raise ValueError(f"config: n_kv_head={config.n_kv_head} (grouped-query attention) has no Hugging Face "
                     f"equivalent with GPT-2's blocks; n_kv_head=None or {config.n_head} exports as GPT-2, "
                     f"n_kv_head=1 as GPTBigCode (multi-query)")


def hf_config(config: GPTConfig):
    """The Hugging Face config of the same architecture: ``GPT2Config``, or ``GPTBigCodeConfig`` with
    ``multi_query=True`` for ``n_kv_head=1``; tanh-GELU, eps 1e-5, scaled attention, tied head, no dropout,
    and no special tokens (a character vocabulary has none)."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config: expected GPTConfig, got {type(config).__name__}")
    if _multi_query(config):
        return _transformers().GPTBigCodeConfig(
            vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, n_inner=4 * config.n_embd, multi_query=True,
            activation_function="gelu_pytorch_tanh", layer_norm_epsilon=1e-5,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True,
            attention_softmax_in_fp32=True, scale_attention_softmax_in_fp32=False,
            tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )
    return _transformers().GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=4 * config.n_embd,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def to_hf(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` with ``model``'s weights (same device and dtype, eval mode), or
    a ``GPTBigCodeForCausalLM`` for a multi-query model (``n_kv_head=1``)."""
    if not isinstance(model, GPT):
        raise TypeError(f"model: expected arlib.text.gpt.GPT, got {type(model).__name__}")
    transformers = _transformers()
    p = model.wte.weight
    conv1d = not _multi_query(model.config)  # GPTBigCode stores nn.Linear weights, as we do
    cls = transformers.GPT2LMHeadModel if conv1d else transformers.GPTBigCodeForCausalLM
    hf = cls(hf_config(model.config)).to(device=p.device, dtype=p.dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        state[f"transformer.{name}"] = tensor.t() if conv1d and name.endswith(_CONV1D) else tensor
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]:
        raise RuntimeError(f"to_hf: weights did not map (missing {missing}, unexpected {unexpected})")
    return hf.eval()


def from_hf(hf_model, dropout: float = 0.0) -> GPT:
    """A :class:`~arlib.text.gpt.GPT` with the weights of a ``GPT2LMHeadModel``, or of a multi-query
    ``GPTBigCodeForCausalLM`` (then ``n_kv_head=1``), on the same device and dtype, in eval mode.

    Rejects variants this GPT does not implement (other activations, untied heads, ...).
    """
    transformers = _transformers()
    if not isinstance(hf_model, (transformers.GPT2LMHeadModel, transformers.GPTBigCodeForCausalLM)):
        raise TypeError(f"hf_model: expected transformers.GPT2LMHeadModel or GPTBigCodeForCausalLM, "
                        f"got {type(hf_model).__name__}")
    number_in(dropout, "dropout", 0, 1, bounds="[)", expected="a probability in [0, 1)")
    conv1d = isinstance(hf_model, transformers.GPT2LMHeadModel)
    c = hf_model.config
    if not conv1d and not c.multi_query:  # its c_attn interleaves q, k, v per head, unlike ours
        raise ValueError("hf_model: a GPTBigCode model must be multi-query (config.multi_query=True)")
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
                       n_embd=c.n_embd, dropout=dropout, n_kv_head=None if conv1d or c.n_head == 1 else 1)
    p = hf_model.transformer.wte.weight
    model = GPT(config).to(device=p.device, dtype=p.dtype)
    hf_state = hf_model.state_dict()
    state = {}
    for name in model.state_dict():
        tensor = hf_state[f"transformer.{name}"]
        state[name] = tensor.t() if conv1d and name.endswith(_CONV1D) else tensor
    model.load_state_dict(state)
    return model.eval()


def load_hf_folder(folder):
    """The model saved by ``save_pretrained`` in the local ``folder`` (eval mode): a ``GPT2LMHeadModel``, or
    the ``GPTBigCodeForCausalLM`` of a multi-query export. Only that folder is read (``local_files_only``):
    a name of a hub model is refused, nothing is downloaded. A folder without a saved model raises
    :class:`~arlib.validate.MissingFileError` (a ``FileNotFoundError`` and a ``ValueError``)."""
    import os
    from pathlib import Path

    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder: expected a path to a folder, got {type(folder).__name__}")
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise MissingFileError(f"folder: {path} holds no saved model (config.json); save one with "
                               f"to_hf(model).save_pretrained(folder)")
    transformers = _transformers()
    model_type = transformers.AutoConfig.from_pretrained(path, local_files_only=True).model_type
    cls = transformers.GPTBigCodeForCausalLM if model_type == "gpt_bigcode" else transformers.GPT2LMHeadModel
    return cls.from_pretrained(path, local_files_only=True).eval()
