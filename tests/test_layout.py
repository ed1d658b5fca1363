"""The package's layout: parts import only downward, no module imports another's private names, and
the import graph has no cycle.

Layers, lowest first: the shared core (env, train, checkpoints, validate, data), then the parts
text <- decoding <- vision, speech, interp, serving, and on top the modules that join the parts (the loader,
the recipe registry, the exercise checks, the package's __init__).
"""

from __future__ import annotations

import ast
from pathlib import Path

ARLIB = Path(__file__).resolve().parent.parent / "arlib"
PART_RANK = {"core": 0, "text": 1, "decoding": 2, "vision": 3, "speech": 3, "interp": 3, "serving": 3, "top": 4}
TOP = {"arlib", "arlib.recipes", "arlib.loader", "arlib.checks"}  # modules (and packages) that join the parts


def module_name(path: Path) -> str:
    rel = path.relative_to(ARLIB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    if any(module == t or module.startswith(t + ".") for t in TOP - {"arlib"}) or module == "arlib":
        return "top"
    second = module.split(".")[1] if "." in module else ""
    return second if second in PART_RANK else "core"


def imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module imported, names taken, at module level) for every arlib import in ``path``."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("arlib"):
            found.append((node.module, [a.name for a in node.names], id(node) in top_level))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], id(node) in top_level) for a in node.names if a.name.startswith("arlib"))
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ARLIB.rglob("*.py")}


def private_imports() -> list[str]:
    """Every ``from arlib.X import _name`` where X is another module: each one a leak of internals."""
    leaks = []
    for name, path in all_modules().items():
        for module, names, _ in imports(path):
            leaks.extend(f"{name} <- {module}.{n}" for n in names if n.startswith("_") and module != name)
    return leaks


def test_no_private_names_cross_modules():
    assert private_imports() == []


def test_parts_import_only_downward():
    wrong = []
    for name, path in all_modules().items():
        for module, _, _ in imports(path):
            if PART_RANK[part_of(module)] > PART_RANK[part_of(name)]:
                wrong.append(f"{name} ({part_of(name)}) imports {module} ({part_of(module)})")
            elif part_of(module) != part_of(name) and PART_RANK[part_of(module)] == PART_RANK[part_of(name)]:
                wrong.append(f"{name} ({part_of(name)}) imports its sibling part's {module}")
    assert wrong == []


def test_no_import_cycle():
    modules = all_modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in imports(path):
            for target in [module] + [f"{module}.{n}" for n in names]:
                if target in modules and target != name:
                    graph[name].add(target)
    # a package imports its own submodules in __init__ (that is not a cycle); drop package -> child edges
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".") and modules[name].name == "__init__.py")}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checks_catch_a_leak(tmp_path, monkeypatch):
    """The layout checks can fail: a module that takes a private name from another is reported."""
    fake = tmp_path / "arlib"
    (fake / "text").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "text" / "__init__.py").write_text("")
    (fake / "text" / "a.py").write_text("from arlib.text.b import _hidden\n")
    (fake / "text" / "b.py").write_text("_hidden = 1\n")
    monkeypatch.setitem(globals(), "ARLIB", fake)
    assert private_imports() == ["arlib.text.a <- arlib.text.b._hidden"]
    assert part_of("arlib.decoding.c") == "decoding" and part_of("arlib.train") == "core"
    assert part_of("arlib.checks.ch01") == "top" and part_of("arlib.loader") == "top"


def test_the_repository_cites_no_file_outside_it():
    """The book is self-contained: no file names the team's planning notes, which are not in it."""
    root = ARLIB.parent
    outside = ["DESIGN" + ".md", "ALGORITHMS" + ".md", "../" + "shared"]
    tracked = [p for p in root.rglob("*") if p.is_file() and not {".git", ".venv", "_build", "cache"} & set(p.parts)
               and p.suffix in {".py", ".md", ".ipynb", ".toml", ".txt", ".sh", ".json", ".yml", ".cfg", ""}]
    hits = [f"{p.relative_to(root)}: {name}" for p in tracked for name in outside
            if name in p.read_text(errors="ignore")]
    assert hits == []
