"""The book's own checkpoints: ``data/checkpoints/NAME.safetensors`` plus a JSON sidecar.

The sidecar records the model config, the tokenizer, the data checksum, the metrics reached, the
command that trained it and its wall time, so that every committed model can be reproduced.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from arlib.data.cache import REPO_ROOT, atomic_write
from arlib.gpt import GPT, GPTConfig
from arlib.tokenizer import CharTokenizer

CHECKPOINT_DIR = REPO_ROOT / "data" / "checkpoints"


def _paths(name: str, directory: str | Path | None) -> tuple[Path, Path]:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name: expected a checkpoint name such as 'shakespeare-target', got {name!r}")
    root = Path(directory) if directory is not None else CHECKPOINT_DIR
    return root / f"{name}.safetensors", root / f"{name}.json"


SCALE_SUFFIX = ".int8_scale"  # the per-row scale stored beside each int8 matrix


def quantize_state(state: dict) -> dict:
    """int8 storage: every float tensor of 2 or more dimensions becomes int8 rows ``round(w / s)`` with one
    float16 scale per row, ``s = max |w_row| / 127`` (symmetric, per output channel); the rest float16.
    The rounding error of an entry is at most s / 2, about 0.4 % of its row's largest entry."""
    out = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if value.is_floating_point() and value.dim() >= 2:
            rows = value.float().flatten(1)  # (out, in...)
            scale = (rows.abs().amax(1, keepdim=True) / 127).clamp_min(1e-12).half()  # (out, 1) as stored
            out[key] = torch.round(rows / scale.float()).clamp(-127, 127).to(torch.int8).view_as(value).contiguous()
            out[key + SCALE_SUFFIX] = scale.flatten().contiguous()
        else:
            out[key] = (value.half() if value.is_floating_point() else value).contiguous()
    return out


def dequantize_state(tensors: dict) -> dict:
    """The float32 state dict back from :func:`quantize_state`'s (or plain float16) tensors."""
    out = {}
    for key, value in tensors.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(key + SCALE_SUFFIX)
        if scale is not None:
            value = (value.float().flatten(1) * scale.float()[:, None]).view(value.shape)
        out[key] = value.float() if value.is_floating_point() or scale is not None else value
    return out


def load_state(name: str, directory: str | Path | None = None) -> dict:
    """The float32 state dict of checkpoint ``name``, whether stored in float16 or int8."""
    return dequantize_state(load_file(str(_paths(name, directory)[0])))


def save_checkpoint(model: torch.nn.Module, name: str, meta: dict, directory: str | Path | None = None,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write the weights (cast to ``dtype``, or int8 with per-row scales (:func:`quantize_state`) for
    ``torch.int8``; tied tensors stored once) and the sidecar ``meta``."""
    weights_path, meta_path = _paths(name, directory)
    if dtype == torch.int8:
        tensors = quantize_state(model.state_dict())
    else:
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return weights_path


def list_checkpoints(directory: str | Path | None = None) -> list[str]:
    root = Path(directory) if directory is not None else CHECKPOINT_DIR
    return sorted(p.stem for p in root.glob("*.safetensors"))


def load_meta(name: str, directory: str | Path | None = None) -> dict:
    """The JSON sidecar of checkpoint ``name``."""
    weights_path, meta_path = _paths(name, directory)
    if not meta_path.exists():
        known = ", ".join(list_checkpoints(directory)) or "none"
        raise FileNotFoundError(
            f"name: no checkpoint {name!r} in {meta_path.parent} (found: {known}); "
            f"train it with `python -m arlib.recipes {name}`")
    return json.loads(meta_path.read_text())


def load_gpt(name: str, device=None, directory: str | Path | None = None) -> tuple[GPT, CharTokenizer, dict]:
    """Load a GPT checkpoint as float32 in eval mode: ``(model, tokenizer, meta)``."""
    meta = load_meta(name, directory)
    weights_path, _ = _paths(name, directory)
    config = GPTConfig(**meta["config"])
    model = GPT(config)
    state = {k: v.float() for k, v in load_file(str(weights_path)).items()}
    model.load_state_dict(state)
    model.to(device if device is not None else "cpu").eval()
    return model, CharTokenizer(meta["tokenizer"]["vocab"]), meta


def store_int8(model: torch.nn.Module, float_metrics: dict, evaluate) -> dict:
    """Round the model's weights to what int8 storage keeps (in place) and score it again: the sidecar's
    metrics are those of the stored weights, beside the float32 model's (``*_float32``). Chapter 5's
    checkpoints are stored in int8 to keep the repository small; the WER moves by a few hundredths of a
    point at most."""
    model.load_state_dict(dequantize_state(quantize_state(model.state_dict())))
    model.eval()
    with torch.no_grad():
        stored = evaluate(model)
    return {**{k: round(v, 5) for k, v in stored.items()},
            **{f"{k}_float32": round(v, 5) for k, v in float_metrics.items()}}
