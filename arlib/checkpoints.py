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


def save_checkpoint(model: torch.nn.Module, name: str, meta: dict, directory: str | Path | None = None,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write the weights (cast to ``dtype``; tied tensors stored once) and the sidecar ``meta``."""
    weights_path, meta_path = _paths(name, directory)
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
