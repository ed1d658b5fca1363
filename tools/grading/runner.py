"""The grader's subprocess: run a learner's solution cells with the references trapped, write the raw outputs.

    python tools/grading/runner.py JOB_DIR

``JOB_DIR/job.json`` names the setup cell, the learner's solution cells, the references to trap and, per
exercise, the functions to call; ``JOB_DIR/inputs.npz`` holds the held-out inputs' arrays. The runner writes
``JOB_DIR/outputs.json`` and ``JOB_DIR/outputs.npz`` (arrays only, read back with ``allow_pickle=False``).
It judges nothing: the grader compares the outputs with the references in its own process, so whatever the
learner's code patches here cannot touch the verdict.

This file is run as a script and imports nothing from ``tools/`` on purpose: the grading specs, which hold
reference code, must stay out of the learner's reach (the audit hook below refuses to open them).
"""

from __future__ import annotations

import json
import linecache
import os
import signal
import sys
import traceback
import types
from pathlib import Path

import numpy as np

TRAP_MESSAGE = ("{name} is a reference implementation of what exercise {exercise} asks you to write yourself; "
                "the grader replaced it by this trap. Write the function without calling it.")


class ReferenceTrap(RuntimeError):
    """Raised by a reference implementation that the learner's code called while being graded."""


# ------------------------------------------------------------------------------------------------ the codec
# Shared with the grader (tools/grading/core.py imports these two functions): plain JSON plus named arrays.


def encode(value, arrays: dict, limit: int = 10_000, inputs: bool = False):
    """A JSON-able description of ``value``; tensors and arrays go to ``arrays`` under a fresh key.

    With ``inputs`` (the grader encoding cases) a ``{"gpt": ...}`` model description and a ``{"schedule": ...}``
    mask schedule's description pass as they are.
    """
    import torch

    if isinstance(value, torch.Tensor):
        key = f"a{len(arrays)}"
        t = value.detach().cpu()
        if t.is_complex() or t.dtype in (torch.bfloat16, torch.float16):
            t = t.to(torch.complex128 if t.is_complex() else torch.float32)
        arrays[key] = t.numpy()
        return {"tensor": key, "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"type": "numpy object array"}
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"array": key}
    if isinstance(value, (bool, np.bool_)):
        return {"bool": bool(value)}
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if len(value) > limit:
            return {"type": f"{type(value).__name__} of {len(value)} items"}
        return {"list" if isinstance(value, list) else "tuple": [encode(v, arrays, limit, inputs) for v in value]}
    if inputs and isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("gpt", "schedule"):
        return value  # a model's or a schedule's description (inputs only), built by build_gpt / build_schedule
    return {"type": type(value).__name__}


def decode(value, arrays):
    """The inverse of :func:`encode`: tensors come back as tensors, tuples as tuples."""
    import torch

    if isinstance(value, list):
        return [decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        return torch.from_numpy(np.array(arrays[value["tensor"]]))
    if "array" in value:
        return np.array(arrays[value["array"]])
    if "bool" in value:
        return value["bool"]
    if "list" in value:
        return [decode(v, arrays) for v in value["list"]]
    if "tuple" in value:
        return tuple(decode(v, arrays) for v in value["tuple"])
    return value


def build_gpt(description: dict):
    """The small random GPT an input describes: the same weights in the grader and in the runner."""
    import torch

    from arlib.text.gpt import GPT, GPTConfig

    seed, config = description["seed"], dict(description["config"])
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return GPT(GPTConfig(**config)).eval()
    finally:
        torch.random.set_rng_state(state)


def build_schedule(description: dict):
    """The mask schedule an input describes (4.5): ``{"kind": "cosine"}``, or ``{"kind": "power", "a": a}`` for
    r -> 1 - r ** a, or ``{"kind": "constant", "value": v}``; a callable on a float r in [0, 1]."""
    import math

    kind = description["kind"]
    if kind == "cosine":
        return lambda r: math.cos(math.pi / 2 * r)
    if kind == "power":
        return lambda r, a=float(description["a"]): 1 - r ** a
    if kind == "constant":
        return lambda r, v=float(description["value"]): v
    raise ValueError(f"unknown schedule {kind!r}")


# ------------------------------------------------------------------------------------------------ the traps


def _resolve(dotted: str):
    """The object a dotted name such as ``arlib.text.ngram.NGramModel.probs`` names, and its module."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        obj = module
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj, module
    raise ValueError(f"cannot resolve {dotted!r}")


def _trap_code(name: str, exercise: str, freevars: tuple[str, ...]) -> types.CodeType:
    """A code object that raises ReferenceTrap, with the given free variables (a closure's cells must match).

    The trapped function keeps its own globals, so the code finds the exception in ``builtins`` (a learner who
    deletes it gets a NameError instead: the call fails either way).
    """
    import builtins

    builtins.__arlib_reference_trap__ = ReferenceTrap
    message = TRAP_MESSAGE.format(name=name, exercise=exercise)
    body = f"        raise __arlib_reference_trap__({message!r})\n"
    if freevars:
        body = "        " + ", ".join(freevars) + "\n" + body
    source = ("def __outer__():\n" + "".join(f"    {v} = None\n" for v in freevars)
              + "    def __trapped__(*args, **kwargs):\n" + body + "    return __trapped__\n")
    namespace: dict = {}
    exec(compile(source, f"<trap for {name}>", "exec"), namespace)
    code = namespace["__outer__"]().__code__
    if len(code.co_freevars) != len(freevars):
        raise RuntimeError(f"cannot build a trap for {name} with free variables {freevars}")
    return code.replace(co_freevars=freevars) if code.co_freevars != freevars else code


def _functions_of(obj) -> list[types.FunctionType]:
    """Every Python function behind ``obj``: itself, what it wraps (``__wrapped__``), a method's function."""
    found, seen = [], set()
    todo = [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (staticmethod, classmethod)):
            todo.append(item.__func__)
        elif isinstance(item, property):
            todo += [f for f in (item.fget, item.fset, item.fdel) if f is not None]
        elif isinstance(item, types.MethodType):
            todo.append(item.__func__)
        elif isinstance(item, types.FunctionType):
            found.append(item)
        wrapped = getattr(item, "__wrapped__", None)
        if wrapped is not None:
            todo.append(wrapped)
    return found


def install_traps(traps: dict[str, str]) -> list[str]:
    """Replace every reference named in ``traps`` (dotted name -> exercise) by a trap; return their files.

    A Python function keeps its identity and gets the trap's ``__code__``, so every alias (a ``from ... import``
    in the setup cell, another module's reference, a copy made with ``types.FunctionType``) is trapped too, and
    so is everything that wraps it (``functools.wraps``). A class is trapped by its methods, given as
    ``Class.method``. A builtin (e.g. ``torch.ctc_loss``) cannot change its code: it is replaced by a trap
    function under every name that holds it in every loaded module.
    """
    files = []
    for dotted, exercise in traps.items():
        obj, module = _resolve(dotted)
        functions = _functions_of(obj)
        if functions:
            for fn in functions:
                fn.__code__ = _trap_code(dotted, exercise, fn.__code__.co_freevars)
        else:
            trap = types.FunctionType(_trap_code(dotted, exercise, ()), {}, dotted)
            for mod in list(sys.modules.values()):
                for attr, held in list(getattr(mod, "__dict__", {}).items()):
                    if held is obj:
                        setattr(mod, attr, trap)
        if getattr(module, "__file__", None):
            files.append(module.__file__)
        if getattr(obj, "__module__", None) in sys.modules and getattr(sys.modules[obj.__module__], "__file__", None):
            files.append(sys.modules[obj.__module__].__file__)
    linecache.clearcache()  # no copy of a reference's source stays in memory
    return files


def trap_whole_modules(prefix: str, exercise: str = "any") -> list[str]:
    """Trap every function defined in the loaded modules under ``prefix`` (the book's checks: their helpers
    compute reference answers); return their files."""
    files = []
    for name, mod in list(sys.modules.items()):
        if not (name == prefix or name.startswith(prefix + ".")) or not getattr(mod, "__file__", None):
            continue
        files.append(mod.__file__)
        for obj in list(vars(mod).values()):
            members = list(vars(obj).values()) if isinstance(obj, type) and obj.__module__ == name else [obj]
            for member in members:
                for fn in _functions_of(member):
                    if fn.__module__ == name:
                        fn.__code__ = _trap_code(f"{name}.{fn.__name__}", exercise, fn.__code__.co_freevars)
    return files


def guard(blocked_files: list[str], blocked_dirs: list[str], allowed_dirs: list[str]) -> None:
    """An audit hook (it cannot be removed) that refuses what would get round the traps.

    It refuses to open the trapped modules' sources and byte code (so ``importlib.reload``, a second import
    under another name, ``inspect.getsource`` and reading the file fail), anything under ``blocked_dirs``
    (the book: notebooks with their solutions, the grading specs, the checks) unless it lies under
    ``allowed_dirs``, starting other processes (a fresh interpreter would have no traps) and the network.
    """
    stems = set()
    for f in blocked_files:
        path = Path(os.path.realpath(f))
        stems.add(str(path.with_suffix("")))
        stems.add(str(path.parent / "__pycache__" / path.stem))
    tails = {"/".join(Path(s).parts[-3:]) for s in stems}  # copies of the package elsewhere (build/lib/...)
    blocked = tuple(os.path.realpath(d) + os.sep for d in blocked_dirs)
    allowed = tuple(os.path.realpath(d) + os.sep for d in allowed_dirs)
    refused = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
               "os.symlink", "os.link", "pty.spawn", "socket.connect", "socket.getaddrinfo"}

    def hook(event, args):
        if event in refused:
            raise PermissionError(f"the grader does not let graded code call {event}")
        if event != "open" or not args or isinstance(args[0], int):
            return
        try:
            path = os.path.realpath(os.fsdecode(args[0]))
        except (TypeError, ValueError):
            return
        base = path.rsplit(".", 2)[0] if "__pycache__" in path else os.path.splitext(path)[0]
        if base in stems or "/".join(Path(base).parts[-3:]) in tails:
            raise PermissionError(f"the grader does not let graded code read {path}: it holds a reference")
        if path.startswith(blocked) and not path.startswith(allowed):
            raise PermissionError(f"the grader does not let graded code read {path}")

    sys.addaudithook(hook)


# ------------------------------------------------------------------------------------------------ running


def _describe_error(exc: BaseException) -> dict:
    kind = "not yet implemented" if isinstance(exc, NotImplementedError) else "error"
    return {"error": type(exc).__name__, "message": str(exc)[:500], "kind": kind}


def call_case(kind: str, fns: list, args: list, kwargs: dict):
    """One call of the learner's function(s) the way a spec asks for it."""
    import torch

    if kind == "call":
        return fns[0](*args, **kwargs)
    if kind == "grad":  # the last argument is the gradient sent back through the first output
        *inputs, upstream = args
        z = inputs[0].clone().requires_grad_(True)
        out = fns[0](z, *inputs[1:], **kwargs)
        first = out[0] if isinstance(out, (tuple, list)) and out else None
        grad = None
        if isinstance(first, torch.Tensor) and first.requires_grad:
            (grad,) = torch.autograd.grad(first, z, upstream.to(first.dtype), allow_unused=True)
        return [out, grad]
    if kind == "forward_count":  # a model as the first argument: the value and the number of forward calls
        model = build_gpt(args[0]["gpt"])
        calls = []
        hook = model.register_forward_hook(lambda module, inputs, output: calls.append(1))
        try:
            value = fns[0](model, *args[1:], **kwargs)
        finally:
            hook.remove()
        return [value, len(calls)]
    if kind == "schedule":  # (steps, n_tokens, a schedule's description): the schedule is a callable (4.5)
        steps, n_tokens, description = args
        return fns[0](steps, n_tokens, build_schedule(description["schedule"]), **kwargs)
    raise ValueError(f"unknown call kind {kind!r}")


class OutOfTime(TimeoutError):
    """An exercise's calls took longer than the grader allows one exercise."""


def _out_of_time(signum, frame):
    raise OutOfTime("the exercise ran out of time (an endless loop?)")


def main(job_dir: str) -> int:
    job_dir = Path(job_dir).resolve()
    job = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    with np.load(job_dir / "inputs.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    outputs_json, outputs_npz = job_dir / "outputs.json", job_dir / "outputs.npz"
    namespace = {"__name__": "__main__"}
    exec(compile(job["setup"], "<setup cell>", "exec"), namespace)  # the book's own first code cell
    import arlib  # noqa: F401  (the setup cell imported it; the traps need it loaded)

    files = install_traps(job["traps"])
    files += trap_whole_modules("arlib.checks")
    guard(files, job["blocked_dirs"], job["allowed_dirs"])
    sys.stdout.flush()
    signal.signal(signal.SIGALRM, _out_of_time)
    results, out_arrays = {}, {}
    for ex in job["exercises"]:
        number = ex["number"]
        signal.alarm(job.get("seconds_per_exercise", 120))  # an endless loop fails its exercise, not the rest
        try:
            exec(compile(ex["source"], f"<solution of exercise {number}>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001  (the learner's cell: report, do not stop)
            if isinstance(exc, KeyboardInterrupt):
                raise
            results[number] = {"cell_error": _describe_error(exc)}
            signal.alarm(0)
            continue
        fns = [namespace.get(name) for name in ex["functions"]]
        missing = [n for n, f in zip(ex["functions"], fns) if not callable(f)]
        if missing:
            results[number] = {"missing": missing}
            signal.alarm(0)
            continue
        got = []
        for case in ex["cases"]:
            fn_index = case.get("fn", 0)
            try:
                args = decode(case["args"], arrays)
                kwargs = {k: decode(v, arrays) for k, v in case.get("kwargs", {}).items()}
                value = call_case(case.get("kind", "call"), fns[fn_index:] + fns[:fn_index], args, kwargs)
                got.append({"value": encode(value, out_arrays)})
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt):
                    raise
                got.append(_describe_error(exc))
                if isinstance(exc, (NotImplementedError, OutOfTime)):
                    break  # a stub, or the exercise's time is spent: its other cases are not tried
        signal.alarm(0)
        results[number] = {"cases": got}
    np.savez(outputs_npz, **out_arrays)
    outputs_json.write_text(json.dumps(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception:  # the setup cell or the runner itself: the grader reports it
        traceback.print_exc()
        sys.exit(3)
