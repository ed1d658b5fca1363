"""Keep the best of a regularization sweep of a language-model recipe: the run with the lowest NLL on the
"select" half of the held-out text. ``python tools/pick_lm.py NAME RUN_DIR [RUN_DIR ...]`` copies that
run's checkpoint into data/checkpoints and records every run of the sweep in its sidecar."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from arlib.checkpoints import CHECKPOINT_DIR


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    name, runs = argv[0], [Path(d) for d in argv[1:]]
    sidecars = [(d, json.loads((d / f"{name}.json").read_text())) for d in runs if (d / f"{name}.json").exists()]
    if not sidecars:
        raise SystemExit(f"RUN_DIR: no {name}.json in any of {[str(d) for d in runs]}")
    sweep = [{"dropout": m["config"]["dropout"], "weight_decay": m["train"]["weight_decay"],
              "steps": m["train"]["steps"], "early_stopped_at": m["train"]["early_stopped_at"],
              "select_nll": m["metrics"]["select_nll"], "report_nll": m["metrics"]["report_nll"],
              "curve": m["metrics"]["curve"]} for _, m in sidecars]
    best_dir, best = min(sidecars, key=lambda dm: dm[1]["metrics"]["select_nll"])
    best["sweep"] = sweep
    shutil.copyfile(best_dir / f"{name}.safetensors", CHECKPOINT_DIR / f"{name}.safetensors")
    (CHECKPOINT_DIR / f"{name}.json").write_text(json.dumps(best, indent=2) + "\n")
    for run in sweep:
        print(f"{name}: dropout {run['dropout']}, select {run['select_nll']}, report {run['report_nll']}, "
              f"stopped at {run['early_stopped_at']} of {run['steps']}")
    print(f"{name}: kept dropout {best['config']['dropout']} from {best_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
