"""Build the book: book.toml -> Jupyter Book 1 configuration -> HTML.

    python tools/book.py build     # validate book.toml, write _build/_config.yml and _build/_toc.yml, build _build/html
    python tools/book.py config    # validate and write the configuration only
    python tools/book.py check     # validate book.toml only
    python tools/book.py notebooks # print the chapters' notebooks, one a line (for nbval in `make test`)

The book's root is the repository root: chapters/intro.md is the landing page and each chapter's notebook
is built from its committed outputs (``execute_notebooks: off``). A part lists either chapters (notebooks, with
their twins, titles and time budgets) or markdown pages (``pages = ["chapters/instructors.md"]``), titled by
their first heading. The build runs with warnings as errors (``-W -n --keep-going``) and needs no network:
maths is typeset by a local MathJax copy (sphinx-mathjax-offline), and no launch, repository, analytics or
comment buttons are configured.
"""

from __future__ import annotations

import argparse
import datetime
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "book.toml"
DEFAULT_BUDGET_S = 180.0

BOOK_KEYS = {"title", "authors", "description", "intro", "bibliography", "repository", "copyright", "branch"}
BOOK_REQUIRED = ("title", "authors", "intro", "bibliography")
PART_KEYS = {"caption", "chapters", "pages"}
CHAPTER_KEYS = {"notebook", "title", "budget_s"}
CHAPTER_REQUIRED = ("notebook", "title")

# Paths under the book's root that are never pages of the book (Sphinx also skips hidden folders).
EXCLUDE_PATTERNS = [
    "_build",
    ".venv",
    "venv",
    "data",
    "runs",
    "arlib",
    "tests",
    "tools",
    "benchmarks",
    "figures",
    "student",
    "**.ipynb_checkpoints",
    "**/__pycache__",
    "*.egg-info",
    "README.md",
    "Thumbs.db",
    ".DS_Store",
]


# Sphinx extensions of the book. Jupyter Book's own (jupyter_book, myst_nb, sphinx_external_toc, the theme) plus
# offline maths (the sphinx-mathjax-offline distribution's module name has hyphens), theorems and proofs,
# exercises, folded solutions and citations.
EXTENSIONS = [
    "jupyter_book",
    "myst_nb",
    "sphinx_external_toc",
    "sphinx_book_theme",
    "sphinx_design",
    "sphinx_copybutton",
    "sphinx_togglebutton",
    "sphinx_comments",  # Jupyter Book always sets comments_config; with hypothesis and utterances off it adds nothing
    "sphinx-mathjax-offline",
    "sphinx_proof",
    "sphinx_exercise",
    "sphinxcontrib.bibtex",
    "sphinx.ext.autodoc",  # the arlib reference pages (chapters/reference/), from the docstrings
    "book",  # this file, as a Sphinx extension: folds exercise solutions (see setup() below)
]
# Types of other packages in arlib's signatures (torch.Tensor, pathlib.Path, ...): the reference cannot link them.
REFERENCE_EXTERNAL_TYPES = r"(torch|numpy|scipy|safetensors|pathlib|os|collections|typing)\..+"
TOOLS_DIR = Path(__file__).resolve().parent
SOLUTION_BEGIN = "### BEGIN SOLUTION"


class ManifestError(ValueError):
    """book.toml is missing something or names something that is not there."""


@dataclass(frozen=True)
class Chapter:
    notebook: str  # posix path relative to the book's root, e.g. chapters/01-ar-factorization/01-ar-factorization.ipynb
    title: str
    budget_s: float
    part: str

    @property
    def number(self) -> str:
        """The chapter's two-digit number, taken from its folder name (``01-ar-factorization`` -> ``01``)."""
        return Path(self.notebook).parent.name.split("-", 1)[0]

    @property
    def twin(self) -> str:
        """The jupytext py:percent twin that sits beside the notebook."""
        return str(Path(self.notebook).with_suffix(".py").as_posix())

    @property
    def docname(self) -> str:
        return str(Path(self.notebook).with_suffix("").as_posix())


@dataclass(frozen=True)
class Part:
    caption: str
    chapters: list[Chapter]
    pages: list[str] = field(default_factory=list)  # markdown pages (posix paths), for a part without chapters


@dataclass(frozen=True)
class Book:
    root: Path
    title: str
    authors: list[str]
    description: str
    intro: str
    bibliography: str
    repository: str
    copyright: str
    branch: str
    parts: list[Part] = field(default_factory=list)

    @property
    def chapters(self) -> list[Chapter]:
        return [c for p in self.parts for c in p.chapters]

    @property
    def pages(self) -> list[str]:
        """The markdown pages listed in parts (the intro not included)."""
        return [page for p in self.parts for page in p.pages]


def _need(table: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in table]
    if missing:
        raise ManifestError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")


def _no_unknown(table: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ManifestError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _nonempty_str(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def _existing_file(root: Path, rel, where: str) -> str:
    rel = _nonempty_str(rel, where)
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ManifestError(f"{where} must be a path relative to the book's root ({root}), got {rel!r}")
    if not (root / rel).is_file():
        raise ManifestError(f"{where}: file not found: {rel} (looked in {root})")
    return Path(rel).as_posix()


def load_manifest(root: Path | str = ROOT, manifest: Path | str | None = None) -> Book:
    """Read and validate book.toml; raise ManifestError with a message that says what to fix."""
    root = Path(root).resolve()
    path = Path(manifest) if manifest is not None else root / MANIFEST
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path.name} is not valid TOML: {exc}") from exc

    _no_unknown(data, {"book", "parts"}, path.name)
    if not isinstance(data.get("book"), dict):
        raise ManifestError(f"{path.name}: missing table [book]")
    meta = data["book"]
    _need(meta, BOOK_REQUIRED, "[book]")
    _no_unknown(meta, BOOK_KEYS, "[book]")
    authors = meta["authors"]
    if isinstance(authors, str):
        authors = [authors]
    if not isinstance(authors, list) or not authors:
        raise ManifestError(f"[book] authors must be a non-empty list of strings, got {authors!r}")
    authors = [_nonempty_str(a, "[book] authors entry") for a in authors]
    intro = _existing_file(root, meta["intro"], "[book] intro")
    if Path(intro).suffix not in (".md", ".ipynb"):
        raise ManifestError(f"[book] intro must be a .md or .ipynb file, got {intro!r}")
    bibliography = _existing_file(root, meta["bibliography"], "[book] bibliography")
    repository = meta.get("repository", "")
    if repository and not (isinstance(repository, str) and repository.startswith(("https://", "http://"))):
        raise ManifestError(f"[book] repository must be an http(s) URL, got {repository!r}")

    parts_raw = data.get("parts")
    if not isinstance(parts_raw, list) or not parts_raw:
        raise ManifestError(f"{path.name}: no [[parts]]; add at least one part with a caption and chapters")
    parts: list[Part] = []
    seen: dict[str, str] = {}
    for i, part in enumerate(parts_raw, 1):
        where = f"[[parts]] #{i}"
        _need(part, ("caption",), where)
        _no_unknown(part, PART_KEYS, where)
        caption = _nonempty_str(part["caption"], f"{where} caption")
        if "chapters" in part and "pages" in part:
            raise ManifestError(
                f"{where} ({caption!r}) has both [[parts.chapters]] and pages; put the pages in a part of their own"
            )
        if "pages" in part:
            pages_raw = part["pages"]
            if not isinstance(pages_raw, list) or not pages_raw:
                raise ManifestError(f"{where} ({caption!r}) pages must be a non-empty list of .md files")
            pages = []
            for j, page in enumerate(pages_raw, 1):
                pwhere = f"{where} ({caption!r}) page #{j}"
                page = _existing_file(root, page, pwhere)
                if Path(page).suffix != ".md":
                    raise ManifestError(f"{pwhere} must be a markdown (.md) file, got {page!r}")
                if page in seen:
                    raise ManifestError(f"duplicate page {page!r}: listed in {seen[page]} and in {pwhere}")
                seen[page] = pwhere
                pages.append(page)
            parts.append(Part(caption=caption, chapters=[], pages=pages))
            continue
        if "chapters" not in part:
            raise ManifestError(
                f"{where} ({caption!r}) has no [[parts.chapters]] and no pages; give it chapters (notebooks) "
                'or pages = ["some/page.md"]'
            )
        chapters_raw = part["chapters"]
        if not isinstance(chapters_raw, list) or not chapters_raw:
            raise ManifestError(f"{where} ({caption!r}) has no [[parts.chapters]]")
        chapters = []
        for j, ch in enumerate(chapters_raw, 1):
            cwhere = f"{where} ({caption!r}) chapter #{j}"
            _need(ch, CHAPTER_REQUIRED, cwhere)
            _no_unknown(ch, CHAPTER_KEYS, cwhere)
            notebook = _existing_file(root, ch["notebook"], f"{cwhere} notebook")
            if Path(notebook).suffix != ".ipynb":
                raise ManifestError(f"{cwhere} notebook must be an .ipynb file, got {notebook!r}")
            if notebook in seen:
                raise ManifestError(f"duplicate notebook {notebook!r}: listed in {seen[notebook]} and in {cwhere}")
            seen[notebook] = cwhere
            title = _nonempty_str(ch["title"], f"{cwhere} title")
            budget = ch.get("budget_s", DEFAULT_BUDGET_S)
            if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget < math.inf:
                raise ManifestError(
                    f"{cwhere} ({notebook}): budget_s must be a positive number of seconds, got {budget!r}"
                )
            chapters.append(Chapter(notebook=notebook, title=title, budget_s=float(budget), part=caption))
        parts.append(Part(caption=caption, chapters=chapters))
    if intro in seen:
        raise ManifestError(f"[book] intro {intro!r} is also listed in {seen[intro]}")

    return Book(
        root=root,
        title=_nonempty_str(meta["title"], "[book] title"),
        authors=authors,
        description=str(meta.get("description", "")).strip(),
        intro=intro,
        bibliography=bibliography,
        repository=repository or "",
        copyright=str(meta.get("copyright", datetime.date.today().year)),
        branch=str(meta.get("branch", "main")),
        parts=parts,
    )


def jb_config(book: Book) -> dict:
    """The Jupyter Book 1 ``_config.yml`` for this book, as a dict."""
    return {
        "title": book.title,
        "author": ", ".join(book.authors),
        "copyright": book.copyright,
        "logo": "",
        "exclude_patterns": EXCLUDE_PATTERNS,
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "off"},
        "parse": {
            "myst_enable_extensions": [
                "amsmath",
                "colon_fence",
                "deflist",
                "dollarmath",
                "html_image",
                "linkify",
                "substitution",
                "tasklist",
            ],
            "myst_url_schemes": ["mailto", "http", "https"],
        },
        "html": {
            "favicon": "",
            "use_edit_page_button": False,
            "use_repository_button": False,
            "use_issues_button": False,
            "use_multitoc_numbering": False,
            "home_page_in_navbar": True,
            "baseurl": "",
            "extra_footer": "",
            "announcement": "",
            "analytics": {"google_analytics_id": "", "plausible_analytics_domain": ""},
        },
        "launch_buttons": {
            "notebook_interface": "jupyterlab",
            "binderhub_url": "",
            "jupyterhub_url": "",
            "thebe": False,
            "colab_url": "",
            "deepnote_url": "",
        },
        "repository": {"url": book.repository, "path_to_book": "", "branch": book.branch},
        "latex": {"latex_engine": "xelatex"},
        "bibtex_bibfiles": [book.bibliography],
        "sphinx": {
            "local_extensions": {"book": str(TOOLS_DIR)},
            "recursive_update": True,
            "config": {
                # The full extension list, replacing Jupyter Book's default: it leaves out sphinx_thebe (live
                # kernels from a CDN and mybinder.org) and sphinx.ext.intersphinx (inventories fetched over the
                # network), neither of which works offline. Jupyter Book's ``sphinx.extra_extensions`` would be
                # overridden by this list, so the book's extensions (autodoc for the reference) are all in it.
                "extensions": EXTENSIONS,
                "html_title": book.title,
                "autodoc_member_order": "bysource",
                "autodoc_typehints": "signature",
                # Offline there is no intersphinx inventory, so types from torch, numpy and the standard library
                # cannot link; references to arlib's own objects must still resolve (-n).
                "nitpick_ignore_regex": [["py:.*", REFERENCE_EXTERNAL_TYPES]],
                "html_show_sourcelink": False,
                "html_last_updated_fmt": None,
                "bibtex_reference_style": "author_year",
                "bibtex_default_style": "plain",
                # Each page ends with its own bibliography (``:filter: docname in docnames``), so a paper cited
                # on two pages is listed on both: sphinxcontrib-bibtex resolves a citation to the bibliography on
                # its own page first, which makes these two cross-page warnings harmless. Duplicates within one
                # page (bibtex.duplicate_local_citation) and unknown keys still fail the build.
                "suppress_warnings": ["myst.domains", "bibtex.duplicate_citation", "bibtex.duplicate_label"],
                # widget state would pull require.js and the widget manager from a CDN
                "nb_ipywidgets_js": {},
                "nb_merge_streams": True,
                "myst_heading_anchors": 3,
                "html_theme_options": {
                    "search_bar_text": "Search this book...",
                    "use_download_button": True,
                    "use_fullscreen_button": True,
                    "show_toc_level": 2,
                },
            },
        },
    }


def jb_toc(book: Book) -> dict:
    """The Jupyter Book 1 ``_toc.yml`` (jb-book format): the intro as root, one caption per part.

    A chapter's entry carries its title from book.toml; a markdown page takes its title from its first heading.
    """
    return {
        "format": "jb-book",
        "root": str(Path(book.intro).with_suffix("").as_posix()),
        "parts": [
            {
                "caption": part.caption,
                "chapters": [{"file": ch.docname, "title": ch.title} for ch in part.chapters]
                + [{"file": Path(page).with_suffix("").as_posix()} for page in part.pages],
            }
            for part in book.parts
        ],
    }


def write_config(book: Book, build_dir: Path) -> tuple[Path, Path]:
    """Write ``_config.yml`` and ``_toc.yml`` into build_dir; return their paths."""
    import yaml

    build_dir.mkdir(parents=True, exist_ok=True)
    header = f"# Written by tools/book.py from {MANIFEST}; do not edit: edit {MANIFEST} or tools/book.py.\n"
    config_path, toc_path = build_dir / "_config.yml", build_dir / "_toc.yml"
    for path, data in ((config_path, jb_config(book)), (toc_path, jb_toc(book))):
        text = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
        path.write_text(text, encoding="utf-8")
    return config_path, toc_path


def jupyter_book_command(book: Book, path_output: Path, config: Path, toc: Path, fresh: bool = True) -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "jupyter_book.cli.main"]
    cmd += [
        "build",
        str(book.root),
        "--builder",
        "html",
        "--config",
        str(config),
        "--toc",
        str(toc),
        "--path-output",
        str(path_output),
        "-W",
        "-n",
        "--keep-going",
    ]
    if fresh:
        cmd += ["--all"]
    return cmd


def build(
    root: Path | str = ROOT,
    path_output: Path | str | None = None,
    fresh: bool = True,
    quiet: bool = False,
) -> Path:
    """Build the HTML book and return the path of its index.html.

    Jupyter Book writes to ``<path_output>/_build/html``; by default path_output is the book's root, so the
    book lands in ``_build/html`` and the generated configuration in ``_build/``. With ``fresh`` the old
    HTML and doctrees are removed first, so every page is rebuilt and every warning is seen again.
    """
    book = load_manifest(root)
    out = Path(path_output).resolve() if path_output is not None else book.root
    build_dir = out / "_build"
    config, toc = write_config(book, build_dir)
    if fresh:
        for sub in ("html", ".doctrees", "jupyter_execute"):
            shutil.rmtree(build_dir / sub, ignore_errors=True)
    cmd = jupyter_book_command(book, out, config, toc, fresh=fresh)
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=book.root, text=True, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT
    )
    seconds = time.perf_counter() - t0
    index = build_dir / "html" / "index.html"
    if proc.returncode != 0 or not index.is_file():
        detail = ""
        if quiet and proc.stdout:
            problems = [line for line in proc.stdout.splitlines() if "WARNING" in line or "ERROR" in line]
            detail = "\n".join(["warnings and errors:", *problems, "", "end of the log:", proc.stdout[-6000:]])
        raise BuildError(
            f"jupyter-book build failed (exit {proc.returncode}) after {seconds:.0f} s; warnings count as errors "
            f"(-W -n).\ncommand: {' '.join(cmd)}\n{detail}"
        )
    if not quiet:
        print(f"built {len(book.chapters)} chapter(s) in {seconds:.0f} s")
    return index


class BuildError(RuntimeError):
    """jupyter-book exited with an error or warnings."""


def _fold_solutions(app, docname: str, source: list[str]) -> None:
    """Sphinx ``source-read`` hook: fold the input of every exercise solution cell in a notebook.

    A solution cell holds nbgrader's ``### BEGIN SOLUTION`` marker (the classroom format). The committed notebook
    stays as it is; only the copy Sphinx parses gets myst-nb's ``hide-input`` tag, so the book shows a
    "Show solution" toggle in place of the code, and its outputs (if any) below.
    """
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    import json

    nb = json.loads(source[0])
    changed = False
    for cell in nb.get("cells", []):
        text = cell.get("source", "")
        text = "".join(text) if isinstance(text, list) else text
        if cell.get("cell_type") != "code" or SOLUTION_BEGIN not in text:
            continue
        meta = cell.setdefault("metadata", {})
        tags = meta.setdefault("tags", [])
        if "hide-input" not in tags:
            tags.append("hide-input")
        meta.setdefault("mystnb", {}).update(code_prompt_show="Show solution", code_prompt_hide="Hide solution")
        changed = True
    if changed:
        source[0] = json.dumps(nb, ensure_ascii=False)


def _skip_foreign_docstrings(app, what: str, name: str, obj, skip: bool, options) -> bool | None:
    """Sphinx ``autodoc-skip-member`` hook: leave out of the reference an arlib class or method that has no
    docstring of its own and would show one inherited from outside arlib (torch's generic text for an
    ``nn.Module`` or its ``forward``). A docstring inherited from an arlib base (a drafter's ``reset``) is kept.
    """
    if skip or getattr(obj, "__doc__", None):
        return None
    if isinstance(obj, type):
        owner, attribute = obj, None
    elif what == "class" and callable(obj):
        owner, attribute = sys.modules.get(getattr(obj, "__module__", None) or ""), name
        for part in getattr(obj, "__qualname__", "").split(".")[:-1]:
            owner = getattr(owner, part, None)
    else:
        return None
    if not isinstance(owner, type) or not owner.__module__.startswith("arlib"):
        return None
    for base in owner.__mro__[1:]:
        if getattr(base if attribute is None else getattr(base, attribute, None), "__doc__", None):
            return None if base.__module__.startswith("arlib") else True
    return None


def setup(app):
    """Sphinx entry point (loaded as the local extension ``book``)."""
    app.connect("source-read", _fold_solutions)
    app.setup_extension("sphinx.ext.autodoc")  # the reference pages; its event must exist before connecting
    app.connect("autodoc-skip-member", _skip_foreign_docstrings)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/book.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "config", "check", "notebooks"], help="what to do")
    parser.add_argument("--root", default=str(ROOT), help="the book's root (holds book.toml); default: the repository")
    parser.add_argument(
        "--path-output",
        default=None,
        help="write into <PATH_OUTPUT>/_build (default: the book's root, i.e. _build/ in the repository)",
    )
    parser.add_argument(
        "--incremental", action="store_true", help="reuse the previous build's doctrees (faster, may hide warnings)"
    )
    args = parser.parse_args(argv)
    try:
        book = load_manifest(args.root)
        if args.command == "notebooks":
            print("\n".join(ch.notebook for ch in book.chapters))
            return 0
        if args.command == "check":
            counts = f"{len(book.parts)} part(s), {len(book.chapters)} chapter(s), {len(book.pages)} page(s)"
            print(f"{MANIFEST} OK: {counts}")
            return 0
        if args.command == "config":
            out = Path(args.path_output).resolve() if args.path_output else book.root
            for path in write_config(book, out / "_build"):
                print(path)
            return 0
        index = build(args.root, args.path_output, fresh=not args.incremental)
    except ManifestError as exc:
        print(f"error: {MANIFEST}: {exc}", file=sys.stderr)
        return 2
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
