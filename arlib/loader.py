"""One loader for every committed checkpoint: ``arlib.load(name)``.

The sidecar's ``kind`` says which part of the package builds the model; that part's ``recipes`` module
maps the kind to a builder. The weights are checked against the sidecar's sha256 before they load.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from arlib.checkpoints import CheckpointError, checkpoint_paths, load_meta, load_model

KIND_PARTS = {  # kind -> the module whose KINDS table builds it
    "gpt": "arlib.text.recipes",
    "draft_heads": "arlib.decoding.recipes", "eagle_head": "arlib.decoding.recipes",
    "vq": "arlib.vision.recipes", "msvq": "arlib.vision.recipes", "raster": "arlib.vision.recipes",
    "var": "arlib.vision.recipes", "classifier": "arlib.vision.recipes", "fsq": "arlib.vision.recipes",
    "maskgit": "arlib.vision.recipes", "hmar": "arlib.vision.recipes",
    "hybrid": "arlib.speech.recipes", "ctc-head": "arlib.speech.recipes", "aed": "arlib.speech.recipes",
    "paraformer": "arlib.speech.recipes", "cass-nat": "arlib.speech.recipes",
    "sae": "arlib.interp.recipes",
}


@dataclass
class Loaded:
    """A checkpoint ready to use: the model (eval mode), its sidecar, and what reads its inputs, where
    it has one (``tokenizer`` for text models, ``vocab`` for speech models)."""

    model: torch.nn.Module
    meta: dict
    tokenizer: Any = None
    vocab: Any = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"model: expected a torch module, got {type(self.model).__name__}")
        for name in ("meta", "extras"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name}: expected a dict, got {type(getattr(self, name)).__name__}")


def load(name: str, device=None, directory: str | Path | None = None, kind: str | None = None) -> Loaded:
    """Load checkpoint ``name`` (see :func:`arlib.checkpoints.list_checkpoints`) as float32 in eval mode.

    ``kind`` (optional) is the kind expected (``"gpt"``, ``"sae"``, ...). Errors name the file: an unknown
    name (with the known ones), a truncated or altered weights file, a git-lfs pointer, a wrong kind.
    """
    if kind is not None and kind not in KIND_PARTS:
        raise ValueError(f"kind: expected one of {sorted(KIND_PARTS)} or None, got {kind!r}")
    meta = load_meta(name, directory)
    if meta["kind"] not in KIND_PARTS:
        raise CheckpointError(f"{checkpoint_paths(name, directory)[1]}: unknown kind {meta['kind']!r}; "
                              f"expected one of {sorted(KIND_PARTS)}")
    build = importlib.import_module(KIND_PARTS[meta["kind"]]).KINDS[meta["kind"]]
    model, meta, extras = load_model(name, build, device, directory, kind)
    return Loaded(model, meta, tokenizer=extras.pop("tokenizer", None), vocab=extras.pop("vocab", None),
                  extras=extras)
