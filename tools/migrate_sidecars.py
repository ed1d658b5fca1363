"""Bring sidecars written before schema 1 up to it: ``python tools/migrate_sidecars.py [DIR]``.

Adds ``schema``, ``kind`` (from the recipe registry), ``sha256`` of the weights, and for draft heads a
``config``; leaves every other key as it was. A sidecar already at schema 1 is only re-hashed if its
``sha256`` is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from arlib.checkpoints import CHECKPOINT_DIR, SCHEMA_VERSION, sha256_of
from arlib.recipes import all_recipes


def migrate(directory: Path) -> list[str]:
    recipes = all_recipes()
    done = []
    for meta_path in sorted(directory.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        name = meta_path.stem
        weights = meta_path.with_suffix(".safetensors")
        if name not in recipes:
            raise SystemExit(f"{meta_path}: no recipe named {name!r}; cannot tell its kind")
        kind = recipes[name].kind
        if kind == "draft_heads" and "config" not in meta:
            meta["config"] = {"n_heads": meta["n_heads"], "target": meta["target"]["config"]}
        head = {"schema": SCHEMA_VERSION, "name": name, "kind": kind}
        meta = {**head, **{k: v for k, v in meta.items() if k not in head}}
        meta["sha256"] = sha256_of(weights)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        done.append(name)
    return done


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else CHECKPOINT_DIR
    print("migrated:", ", ".join(migrate(folder)))
