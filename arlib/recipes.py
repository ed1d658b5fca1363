"""Every recipe that trains a committed checkpoint, in one registry: ``python -m arlib.recipes [NAME]``.

Each part of the package declares its recipes (:class:`arlib.train.Recipe`) in its own ``recipes``
module; this module gathers them. Without a name the command lists them. A recipe is deterministic
for a given device and thread count (fixed seeds, fixed data order) and writes ``NAME.safetensors``
with its JSON sidecar. ``--steps`` shortens a run (tests use a few steps); ``--out`` writes elsewhere.
Under ``torchrun --nproc_per_node N`` the same command trains data-parallel; only rank 0 saves.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from arlib.train import Recipe
from arlib.validate import positive_int

PART_RECIPES = ("arlib.text.recipes", "arlib.decoding.recipes", "arlib.vision.recipes", "arlib.speech.recipes",
                "arlib.interp.recipes")
LM_OPTIONS = ("dropout", "weight_decay", "time_budget")  # the language models' sweep options


def all_recipes() -> dict[str, Recipe]:
    """Every part's recipes by name."""
    found: dict[str, Recipe] = {}
    for module in PART_RECIPES:
        for name, recipe in importlib.import_module(module).RECIPES.items():
            if name in found:
                raise RuntimeError(f"recipe {name!r} is declared twice ({module})")
            found[name] = recipe
    return found


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    recipes = all_recipes()
    if not isinstance(name, str) or name not in recipes:
        raise ValueError(f"name: expected one of {sorted(recipes)}, got {name!r}")
    return recipes[name]


def run_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True, **options):
    """Train recipe ``name`` and save its checkpoint; returns the sidecar (empty off rank 0)."""
    recipe = get_recipe(name)
    if steps is not None:
        positive_int(steps, "steps")
    return recipe.run(name, steps=steps, out=out, progress=progress, **options)


def _summary(meta: dict) -> str:
    metrics = {k: v for k, v in meta["metrics"].items() if not isinstance(v, (list, dict))}
    return f"{meta['name']} ({meta['kind']}): {metrics}, {meta['wall_seconds']} s"


def main(argv=None) -> int:
    """The command line ``python -m arlib.recipes [NAME] [options]``; ``argv`` (a list of strings, default
    ``sys.argv[1:]``). As a command, it answers bad arguments as argparse does: a usage message and exit
    status 2 (``SystemExit``), not an exception."""
    if argv is not None and (isinstance(argv, str) or not isinstance(argv, (list, tuple))
                             or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"argv: expected a list of strings, got {argv!r}")
    recipes = all_recipes()
    parser = argparse.ArgumentParser(prog="python -m arlib.recipes", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="the recipe to run; none: list them")
    parser.add_argument("--steps", type=int, default=None, help="train for this many steps instead")
    parser.add_argument("--out", default=None, help="folder for the checkpoint (default data/checkpoints)")
    parser.add_argument("--eval-chars", type=int, default=None, help="score only this many held-out chars")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--dropout", type=float, default=None, help="language models: override the dropout")
    parser.add_argument("--weight-decay", type=float, default=None, help="language models: override the decay")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="language models: as many steps as fit in this many seconds here")
    args = parser.parse_args(argv)
    if args.name is None:
        for name, recipe in sorted(recipes.items()):
            print(f"{name:28s} {recipe.kind:12s} {recipe.description}")
        return 0
    if args.name not in recipes:
        parser.error(f"unknown recipe {args.name!r}; expected one of {', '.join(sorted(recipes))}")
    options = {k: getattr(args, k) for k in LM_OPTIONS if getattr(args, k) is not None}
    if options and recipes[args.name].kind != "gpt":
        parser.error("--dropout, --weight-decay and --time-budget apply to the language models only")
    meta = run_recipe(args.name, steps=args.steps, out=args.out, progress=not args.no_progress,
                      eval_chars=args.eval_chars, **options)
    if meta:
        print(_summary(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
