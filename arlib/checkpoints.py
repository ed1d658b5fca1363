"""The book's own checkpoints: ``NAME.safetensors`` and its JSON sidecar ``NAME.json``.

Sidecar schema (version 1); every committed checkpoint has these keys, and recipes may add more:

- ``schema``: 1; ``name``: the checkpoint's name; ``kind``: which class :func:`arlib.load` builds
  (``gpt``, ``draft_heads``, ``eagle_head``, ``vq``, ``msvq``, ``raster``, ``var``, ``classifier``, ``ctc``, ``aed``,
  ``paraformer``, ``sae``); ``config``: that class's settings; ``description``;
- ``sha256``: of the weights file, checked at every load; ``stored_dtype``: float16 or int8;
- ``data``: the sources trained on, with their checksums; ``metrics``: what the model reached;
- ``command``: the command that trains it; ``wall_seconds``; ``environment`` (torch, device, threads).

Weights are read with safetensors only: nothing is unpickled. Checkpoints are looked up in
:func:`checkpoint_dir` (``$ARLIB_HOME/checkpoints`` when ``ARLIB_HOME`` is set, else the checkout's
``data/checkpoints``, else a per-user folder), then, in a package installed by ``pip install .``, in the
copies the wheel carries (``PACKAGED_DIR``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from arlib.data.cache import REPO_ROOT, atomic_write, in_checkout, user_dir
from arlib.validate import MissingFileError, is_number, positive_int

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema", "name", "kind", "config", "sha256", "stored_dtype", "data", "metrics", "command",
                 "wall_seconds", "environment")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, truncated, a git-lfs pointer, altered, or of another kind.
    The message names the file."""


# The committed checkpoints inside an installed wheel (pyproject maps data/checkpoints there); a checkout has
# no such folder and reads data/checkpoints itself.
PACKAGED_DIR = Path(__file__).resolve().parent / "_checkpoints"


def _directory(directory, name: str = "directory") -> None:
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path to a folder or None, got {type(directory).__name__}")


def _device(device) -> torch.device:
    """``device`` (None: cpu) as a torch.device, or ``ValueError`` naming it."""
    try:
        return torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from None


def _state_dict(state, name: str) -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise TypeError(f"{name}: expected a state dict (str -> torch.Tensor), got {type(state).__name__}")


def checkpoint_dir() -> Path:
    """Where checkpoints are written and looked up first: ``$ARLIB_HOME/checkpoints`` if set, else
    ``data/checkpoints`` in the checkout, else ``~/.local/share/arlib/checkpoints`` (``$XDG_DATA_HOME/arlib``)
    for an installed package, whose shipped copies (``PACKAGED_DIR``) are read when a name is not here."""
    home = os.environ.get("ARLIB_HOME")
    if home:
        return Path(home) / "checkpoints"
    return REPO_ROOT / "data" / "checkpoints" if in_checkout() else user_dir("data") / "checkpoints"


CHECKPOINT_DIR = REPO_ROOT / "data" / "checkpoints"  # the checkout's copy, for tools and tests run in the checkout


def search_dirs() -> list[Path]:
    """The folders a checkpoint name is looked up in, in order: :func:`checkpoint_dir`, then the installed
    wheel's copies (when there are any), so a checkpoint trained or copied by the user wins over the shipped one."""
    dirs = [checkpoint_dir()]
    if PACKAGED_DIR.is_dir() and PACKAGED_DIR != dirs[0]:
        dirs.append(PACKAGED_DIR)
    return dirs


def checkpoint_paths(name: str, directory: str | Path | None = None) -> tuple[Path, Path]:
    """(weights, sidecar) paths of checkpoint ``name`` in ``directory`` (default: the first of
    :func:`search_dirs` that holds its sidecar, else :func:`checkpoint_dir`)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ValueError(f"name: expected a checkpoint name such as 'shakespeare-target', got {name!r}")
    _directory(directory)
    if directory is not None:
        root = Path(directory)
    else:
        dirs = search_dirs()
        root = next((d for d in dirs if (d / f"{name}.json").is_file()), dirs[0])
    return root / f"{name}.safetensors", root / f"{name}.json"


def sha256_of(path: Path) -> str:
    """The sha256 of the file at ``path`` (hex); a missing file raises :class:`~arlib.validate.MissingFileError`."""
    if not isinstance(path, (str, os.PathLike)):  # an int would open a file descriptor
        raise TypeError(f"path: expected a path to a file, got {type(path).__name__}")
    if not Path(path).is_file():
        raise MissingFileError(f"path: no file at {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SCALE_SUFFIX = ".int8_scale"  # the per-row scale stored beside each int8 matrix


def quantize_state(state: dict) -> dict:
    """int8 storage: every float tensor of 2 or more dimensions becomes int8 rows ``round(w / s)`` with one
    float16 scale per row, ``s = max |w_row| / 127`` (symmetric, per output channel); the rest float16.
    The rounding error of an entry is at most s / 2, about 0.4 % of its row's largest entry."""
    _state_dict(state, "state")
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
    _state_dict(tensors, "tensors")
    for key, scale in tensors.items():
        if key.endswith(SCALE_SUFFIX):
            value = tensors.get(key.removesuffix(SCALE_SUFFIX))
            if value is None or value.dim() < 1 or scale.shape != (value.shape[0],):
                raise ValueError(f"tensors: the scale {key!r} does not match a matrix of as many rows")
    out = {}
    for key, value in tensors.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(key + SCALE_SUFFIX)
        if scale is not None:
            value = (value.float().flatten(1) * scale.float()[:, None]).view(value.shape)
        out[key] = value.float() if value.is_floating_point() or scale is not None else value
    return out


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def save_checkpoint(model: torch.nn.Module, name: str, meta: dict, directory: str | Path | None = None,
                    dtype: torch.dtype = torch.float16) -> Path | None:
    """Write the weights (cast to ``dtype``, or int8 with per-row scales (:func:`quantize_state`) for
    ``torch.int8``) and the sidecar ``meta``, completed with the schema version and the weights'
    sha256. ``meta`` must give at least ``kind`` and ``config``. Under ``torchrun`` only rank 0 writes
    (the others return None). ``directory`` defaults to :func:`checkpoint_dir`."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch module, got {type(model).__name__}")
    if not isinstance(meta, dict):
        raise TypeError(f"meta: expected a dict (the sidecar), got {type(meta).__name__}")
    for key in ("kind", "config"):
        if key not in meta:
            raise ValueError(f"meta: expected a {key!r} entry (the sidecar schema needs it)")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.int8):
        raise ValueError(f"dtype: expected torch.float16, bfloat16, float32 or int8, got {dtype!r}")
    checkpoint_paths(name, directory)  # checks the name and the folder before anything is written
    if not _is_rank_zero():
        return None
    weights_path, meta_path = checkpoint_paths(name, directory if directory is not None else checkpoint_dir())
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    if dtype == torch.int8:
        tensors = quantize_state(model.state_dict())
    else:
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    full = {"schema": SCHEMA_VERSION, "name": name, **meta, "sha256": sha256_of(weights_path)}
    full.setdefault("stored_dtype", "int8" if dtype == torch.int8 else str(dtype).removeprefix("torch."))
    atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(full, indent=2) + "\n"))
    return weights_path


def list_checkpoints(directory: str | Path | None = None) -> list[str]:
    """The names of the checkpoints in ``directory`` (default: in any of :func:`search_dirs`), sorted."""
    _directory(directory)
    roots = [Path(directory)] if directory is not None else search_dirs()
    return sorted({p.stem for root in roots for p in root.glob("*.json")})


def load_meta(name: str, directory: str | Path | None = None) -> dict:
    """The JSON sidecar of checkpoint ``name``, checked against the schema."""
    weights_path, meta_path = checkpoint_paths(name, directory)
    if not meta_path.exists():
        known = ", ".join(list_checkpoints(directory)) or "none"
        raise CheckpointError(
            f"name: no checkpoint {name!r} in {meta_path.parent} (known: {known}); "
            f"train it with `python -m arlib.recipes {name}`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_path}: not a JSON sidecar ({err})") from None
    missing = [k for k in REQUIRED_KEYS if k not in meta] if isinstance(meta, dict) else list(REQUIRED_KEYS)
    if missing:
        raise CheckpointError(f"{meta_path}: sidecar lacks {missing} (schema {SCHEMA_VERSION})")
    if meta["schema"] != SCHEMA_VERSION:
        raise CheckpointError(f"{meta_path}: sidecar schema {meta['schema']!r}, this arlib reads {SCHEMA_VERSION}")
    return meta


_LFS_POINTER = b"version https://git-lfs"


def load_state(name: str, directory: str | Path | None = None, meta: dict | None = None) -> dict:
    """The float32 state dict of checkpoint ``name`` (stored in float16 or int8), after checking that the
    weights file is the one its sidecar describes (sha256). Every error names the file."""
    meta = load_meta(name, directory) if meta is None else meta
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise ValueError("meta: expected the checkpoint's sidecar, a dict with its 'sha256'")
    weights_path, _ = checkpoint_paths(name, directory)
    if not weights_path.exists():
        raise CheckpointError(f"{weights_path}: weights file missing (the sidecar is there)")
    with open(weights_path, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if head == _LFS_POINTER:
        raise CheckpointError(f"{weights_path}: a git-lfs pointer, not the weights; run `git lfs pull`")
    digest = sha256_of(weights_path)
    if digest != meta["sha256"]:
        raise CheckpointError(f"{weights_path}: sha256 {digest[:12]}... differs from the sidecar's "
                              f"{meta['sha256'][:12]}... (a truncated, altered or mismatched file)")
    try:
        return dequantize_state(load_file(str(weights_path)))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({err})") from None


def provenance(name: str, steps: int | None, t0: float, device, stored_dtype: str = "float16") -> dict:
    """The sidecar fields that say how a checkpoint was made: dtype, command, wall time, environment."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a checkpoint name, got {name!r}")
    if steps is not None:
        positive_int(steps, "steps")
    if not is_number(t0):
        raise ValueError(f"t0: expected a time.time() value, got {t0!r}")
    device = _device(device)
    if stored_dtype not in ("float16", "bfloat16", "float32", "int8"):
        raise ValueError(f"stored_dtype: expected 'float16', 'bfloat16', 'float32' or 'int8', got {stored_dtype!r}")
    return {
        "stored_dtype": stored_dtype,
        "command": f"python -m arlib.recipes {name}" + (f" --steps {steps}" if steps else ""),
        "wall_seconds": round(time.time() - t0, 1),
        "environment": {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                        "machine": platform.machine(), "trained_on": time.strftime("%Y-%m-%d"),
                        **({"gpu": torch.cuda.get_device_name(device)} if torch.device(device).type == "cuda" else {})},
    }



def store_int8(model: torch.nn.Module, float_metrics: dict, evaluate) -> dict:
    """Round the model's weights to what int8 storage keeps (in place) and score it again: the sidecar's
    metrics are those of the stored weights, beside the float32 model's (``*_float32``). Chapter 5's
    checkpoints are stored in int8 to keep the repository small; the WER moves by a few hundredths of a
    point at most."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch module, got {type(model).__name__}")
    if not isinstance(float_metrics, dict) or not all(is_number(v) for v in float_metrics.values()):
        raise ValueError("float_metrics: expected a dict of numbers (the float32 model's metrics)")
    if not callable(evaluate):
        raise TypeError(f"evaluate: expected a function of the model, got {type(evaluate).__name__}")
    model.load_state_dict(dequantize_state(quantize_state(model.state_dict())))
    model.eval()
    with torch.no_grad():
        stored = evaluate(model)
    if not isinstance(stored, dict) or not all(is_number(v) for v in stored.values()):
        raise ValueError(f"evaluate: expected a dict of numbers, got {type(stored).__name__}")
    return {**{k: round(v, 5) for k, v in stored.items()},
            **{f"{k}_float32": round(v, 5) for k, v in float_metrics.items()}}


def load_model(name: str, build, device=None, directory: str | Path | None = None, kind: str | None = None):
    """Build and fill the model of checkpoint ``name``: ``build(meta)`` returns ``(model, extras)`` (an
    empty model of the sidecar's config and a dict such as ``{"tokenizer": ...}``); the weights are
    checked (:func:`load_state`) and loaded; the model comes back in eval mode on ``device``.
    ``kind``, if given, must be the sidecar's. Returns ``(model, meta, extras)``."""
    if not callable(build):
        raise TypeError(f"build: expected a function build(meta) -> (model, extras), got {type(build).__name__}")
    if kind is not None and not isinstance(kind, str):
        raise ValueError(f"kind: expected a kind such as 'gpt', got {kind!r}")
    device = _device(device)
    meta = load_meta(name, directory)
    weights_path, meta_path = checkpoint_paths(name, directory)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"{meta_path}: a {meta['kind']!r} checkpoint, expected {kind!r}")
    built = build(meta)
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], torch.nn.Module)
            and isinstance(built[1], dict)):
        raise TypeError(f"build: expected it to return (model, extras dict), got {type(built).__name__}")
    model, extras = built
    try:
        model.load_state_dict(load_state(name, directory, meta))
    except RuntimeError as err:
        raise CheckpointError(f"{weights_path}: weights do not fit a {meta['kind']} of the sidecar's config "
                              f"({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), meta, extras
