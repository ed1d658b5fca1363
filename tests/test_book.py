"""The book: book.toml is consistent with chapters/, the HTML builds with warnings as errors, and a headless
browser shows it offline (maths typeset by the local MathJax, figures present, no broken internal link).

The build runs once per test session (about a minute) into a temporary folder, so it never touches the
``_build/`` of ``make book``. The browser checks need Debian's ``chromium``; they are skipped only where it is
not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools import book  # noqa: E402

# The book under test: the repository, or another root with a book.toml (to test the tooling itself).
ROOT = Path(os.environ.get("BOOK_TEST_ROOT", REPO)).resolve()

pytestmark = pytest.mark.book

CHAPTER_DIR = re.compile(r"^(\d\d)-[a-z0-9]+(?:-[a-z0-9]+)*$")
CHROMIUM = next(
    (
        p
        for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
        if p and Path(p).exists()
    ),
    None,
)
# Chromium's offline flags, plus a proxy that refuses every connection: a page that needed the network would
# fail to load its assets even on a machine that has one.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=5000",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--hide-scrollbars",
]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


# --------------------------------------------------------------------------------------------- the manifest


@pytest.fixture(scope="module")
def manifest() -> book.Book:
    return book.load_manifest(ROOT)


def chapter_folders() -> list[Path]:
    return sorted(p for p in (ROOT / "chapters").iterdir() if p.is_dir() and CHAPTER_DIR.match(p.name))


def test_manifest_is_valid(manifest):
    assert manifest.title.strip()
    assert manifest.authors
    assert (ROOT / manifest.intro).is_file()
    assert (ROOT / manifest.bibliography).is_file()
    assert manifest.chapters, "book.toml lists no chapter"


def test_every_chapter_folder_is_complete_and_listed(manifest):
    listed = {c.notebook for c in manifest.chapters}
    for folder in chapter_folders():
        notebook = folder / f"{folder.name}.ipynb"
        twin = folder / f"{folder.name}.py"
        rel = notebook.relative_to(ROOT).as_posix()
        assert notebook.is_file(), f"{folder.relative_to(ROOT)}/ has no notebook {notebook.name}"
        assert twin.is_file(), f"{folder.relative_to(ROOT)}/ has no jupytext twin {twin.name} (jupytext --sync)"
        assert rel in listed, f"{rel} is not listed in book.toml; add a [[parts.chapters]] entry for it"


def test_every_listed_chapter_follows_the_layout(manifest):
    numbers = []
    for ch in manifest.chapters:
        path = Path(ch.notebook)
        assert path.parts[0] == "chapters" and len(path.parts) == 3, (
            f"{ch.notebook}: expected chapters/NN-slug/NN-slug.ipynb"
        )
        assert CHAPTER_DIR.match(path.parent.name), f"{ch.notebook}: folder must be named NN-slug"
        assert path.stem == path.parent.name, f"{ch.notebook}: the notebook must be named after its folder"
        assert (ROOT / ch.twin).is_file(), f"{ch.notebook}: jupytext twin {ch.twin} is missing"
        numbers.append(int(ch.number))
    assert numbers == sorted(set(numbers)), f"chapters must be listed once each, in order of their numbers: {numbers}"


def test_titles_and_budgets(manifest):
    for ch in manifest.chapters:
        assert ch.title.strip() and ch.title == ch.title.strip(), f"{ch.notebook}: bad title {ch.title!r}"
        assert 0 < ch.budget_s <= 900, f"{ch.notebook}: budget_s {ch.budget_s} s is not in (0, 900]"


MINIMAL = """
[book]
title = "T"
authors = ["A"]
intro = "intro.md"
bibliography = "refs.bib"

[[parts]]
caption = "P"

[[parts.chapters]]
notebook = "chapters/00-x/00-x.ipynb"
title = "X"
budget_s = 60
"""


def _fake_book(tmp_path: Path, text: str = MINIMAL) -> Path:
    (tmp_path / "chapters/00-x").mkdir(parents=True)
    (tmp_path / "chapters/00-x/00-x.ipynb").write_text("{}")
    (tmp_path / "chapters/teach.md").write_text("# Teach\n")
    (tmp_path / "intro.md").write_text("# T\n")
    (tmp_path / "refs.bib").write_text("")
    (tmp_path / "book.toml").write_text(text)
    return tmp_path


def test_manifest_minimal_example(tmp_path):
    b = book.load_manifest(_fake_book(tmp_path))
    assert [c.notebook for c in b.chapters] == ["chapters/00-x/00-x.ipynb"]
    assert b.chapters[0].budget_s == 60 and b.chapters[0].number == "00"
    toc = book.jb_toc(b)
    assert toc["root"] == "intro"
    assert toc["parts"] == [{"caption": "P", "chapters": [{"file": "chapters/00-x/00-x", "title": "X"}]}]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('title = "T"\n', ""), "missing key(s) 'title'"),
        (lambda t: t.replace('title = "X"\n', ""), "missing key(s) 'title'"),
        (lambda t: t.replace("00-x.ipynb", "00-y.ipynb"), "file not found: chapters/00-x/00-y.ipynb"),
        (lambda t: t.replace('intro = "intro.md"', 'intro = "nope.md"'), "file not found: nope.md"),
        (lambda t: t.replace("budget_s = 60", "budget_s = 0"), "budget_s must be a positive number"),
        (lambda t: t.replace("budget_s = 60", "budget_s = -5"), "budget_s must be a positive number"),
        (lambda t: t.replace("budget_s = 60", 'budget_s = "60"'), "budget_s must be a positive number"),
        (lambda t: t.replace("budget_s = 60", "budget = 60"), "unknown key(s) 'budget'"),
        (
            lambda t: t + '\n[[parts.chapters]]\nnotebook = "chapters/00-x/00-x.ipynb"\ntitle = "Y"\n',
            "duplicate notebook",
        ),
        (lambda t: t.split("[[parts]]")[0], "no [[parts]]"),
        (lambda t: t + "\n[oops\n", "not valid TOML"),
    ],
)
def test_manifest_errors_say_what_is_wrong(tmp_path, edit, message):
    root = _fake_book(tmp_path, edit(MINIMAL))
    with pytest.raises(book.ManifestError) as info:
        book.load_manifest(root)
    assert message in str(info.value)


PAGES = '\n[[parts]]\ncaption = "Q"\npages = ["chapters/teach.md"]\n'


def test_a_part_of_pages(tmp_path):
    b = book.load_manifest(_fake_book(tmp_path, MINIMAL + PAGES))
    assert [c.notebook for c in b.chapters] == ["chapters/00-x/00-x.ipynb"]
    assert b.pages == ["chapters/teach.md"]
    assert book.jb_toc(b)["parts"][1] == {"caption": "Q", "chapters": [{"file": "chapters/teach"}]}


@pytest.mark.parametrize(
    "pages, message",
    [
        (PAGES.replace('pages = ["chapters/teach.md"]', ""), "has no [[parts.chapters]] and no pages"),
        (PAGES.replace('"chapters/teach.md"', '"chapters/nope.md"'), "file not found: chapters/nope.md"),
        (PAGES.replace('"chapters/teach.md"', '"chapters/00-x/00-x.ipynb"'), "must be a markdown (.md) file"),
        (PAGES.replace('"chapters/teach.md"', '"chapters/teach.md", "chapters/teach.md"'), "duplicate page"),
        (PAGES.replace('"chapters/teach.md"', '"intro.md"'), "intro 'intro.md' is also listed"),
        (PAGES.replace("pages = [", "pages = []  # ["), "pages must be a non-empty list"),
        (PAGES.replace('pages = ["chapters/teach.md"]', 'pages = "chapters/teach.md"'), "pages must be a non-empty"),
        (PAGES + '\n[[parts.chapters]]\nnotebook = "chapters/00-x/00-x.ipynb"\ntitle = "Y"\n', "has both"),
        (PAGES.replace("pages =", "page ="), "unknown key(s) 'page'"),
    ],
)
def test_page_errors_say_what_is_wrong(tmp_path, pages, message):
    root = _fake_book(tmp_path, MINIMAL + pages)
    with pytest.raises(book.ManifestError) as info:
        book.load_manifest(root)
    assert message in str(info.value)


def test_cli_reports_manifest_errors(tmp_path, capsys):
    root = _fake_book(tmp_path, MINIMAL.replace("budget_s = 60", "budget_s = 0"))
    assert book.main(["check", "--root", str(root)]) == 2
    assert "budget_s must be a positive number" in capsys.readouterr().err


def test_cli_lists_the_notebooks(tmp_path, capsys):
    root = _fake_book(tmp_path)
    assert book.main(["notebooks", "--root", str(root)]) == 0
    assert capsys.readouterr().out.split() == ["chapters/00-x/00-x.ipynb"]


def test_solution_cells_are_folded_only_in_the_parsed_copy():
    cells = [
        {"cell_type": "code", "metadata": {}, "source": ["def f():\n", "    ### BEGIN SOLUTION\n", "    return 1\n"]},
        {"cell_type": "code", "metadata": {}, "source": "arlib.checks.f(f)"},
        {"cell_type": "markdown", "metadata": {}, "source": "### BEGIN SOLUTION is only text here"},
    ]
    source = [json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})]
    app = SimpleNamespace(env=SimpleNamespace(doc2path=lambda docname: Path(f"/book/{docname}.ipynb")))
    book._fold_solutions(app, "chapters/00-x/00-x", source)
    folded = json.loads(source[0])["cells"]
    assert folded[0]["metadata"]["tags"] == ["hide-input"]
    assert folded[0]["metadata"]["mystnb"]["code_prompt_show"] == "Show solution"
    assert folded[1]["metadata"] == {} and folded[2]["metadata"] == {}
    markdown = ["# not a notebook"]
    app = SimpleNamespace(env=SimpleNamespace(doc2path=lambda docname: Path(f"/book/{docname}.md")))
    book._fold_solutions(app, "chapters/intro", markdown)
    assert markdown == ["# not a notebook"]


def test_generated_config_is_offline_and_strict(manifest, tmp_path):
    config_path, toc_path = book.write_config(manifest, tmp_path)
    import yaml

    config = yaml.safe_load(config_path.read_text())
    toc = yaml.safe_load(toc_path.read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True
    assert config["bibtex_bibfiles"] == [manifest.bibliography]
    extensions = config["sphinx"]["config"]["extensions"]
    for ext in (
        "sphinx-mathjax-offline",
        "sphinx_proof",
        "sphinx_exercise",
        "sphinx_togglebutton",
        "sphinxcontrib.bibtex",
        "sphinx.ext.autodoc",
    ):
        assert ext in extensions
    for ext in ("sphinx_thebe", "sphinx.ext.intersphinx"):
        assert ext not in extensions
    assert not any(config["launch_buttons"].get(k) for k in ("binderhub_url", "jupyterhub_url", "colab_url", "thebe"))
    assert not any(
        config["html"].get(k) for k in ("use_repository_button", "use_issues_button", "use_edit_page_button")
    )
    assert toc["root"] == Path(manifest.intro).with_suffix("").as_posix()
    files = [c["file"] for p in toc["parts"] for c in p["chapters"]]
    docnames = [c.docname for c in manifest.chapters] + [Path(p).with_suffix("").as_posix() for p in manifest.pages]
    assert files == docnames


# --------------------------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    """Build the book once (warnings are errors) and return its html/ folder."""
    out = tmp_path_factory.mktemp("book")
    t0 = time.perf_counter()
    try:
        index = book.build(ROOT, path_output=out, quiet=True)
    except book.BuildError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\nbook built in {time.perf_counter() - t0:.0f} s: {index}")
    return index.parent


def page_of(manifest_path: str) -> str:
    """The HTML page (relative to html/) that a source file becomes."""
    return Path(manifest_path).with_suffix(".html").as_posix()


def pages(manifest) -> list[str]:
    """The intro, every chapter and every markdown page, as built HTML pages."""
    return [page_of(manifest.intro)] + [page_of(c.notebook) for c in manifest.chapters] + [
        page_of(p) for p in manifest.pages
    ]


def test_build_succeeds_with_warnings_as_errors(html, manifest):
    assert (html / "index.html").is_file()
    for page in pages(manifest):
        assert (html / page).is_file(), f"{page} was not built"
    redirect = (html / "index.html").read_text()
    assert page_of(manifest.intro) in redirect, "index.html should lead to the intro"


def test_solutions_are_folded_in_the_book(html, manifest):
    for ch in manifest.chapters:
        text = (ROOT / ch.notebook).read_text(encoding="utf-8")
        solutions = sum(book.SOLUTION_BEGIN in "".join(c["source"]) for c in json.loads(text)["cells"])
        folded = (html / page_of(ch.notebook)).read_text().count(">Show solution<")
        assert folded == solutions, f"{ch.notebook}: {solutions} solution cells, {folded} folded in the book"


class _Folded(HTMLParser):
    """Splits a page's text into what is inside a closed ``<details>`` (hidden until clicked) and the rest."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.closed: list[bool] = []  # one entry per open <details>: True while it is folded
        self.hidden: list[str] = []
        self.shown: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "details":
            self.closed.append("open" not in dict(attrs))

    def handle_endtag(self, tag):
        if tag == "details" and self.closed:
            self.closed.pop()

    def handle_data(self, data):
        (self.hidden if any(self.closed) else self.shown).append(data)


def squeeze(text: str) -> str:
    return " ".join(text.split())


def solution_blocks(notebook: Path) -> list[str]:
    """The code between BEGIN and END SOLUTION of every solution cell, one string per block, whitespace squeezed."""
    blocks = []
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        source = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
        for block in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", source, flags=re.S):
            blocks.append(squeeze(block))
    return blocks


def assert_solutions_folded(page_text: str, notebook: Path, where: str) -> None:
    folded = _Folded()
    folded.feed(page_text)
    hidden, shown = squeeze("".join(folded.hidden)), squeeze("".join(folded.shown))
    blocks = solution_blocks(notebook)
    assert blocks, f"{notebook.name} has no solution"
    for block in blocks:
        assert block in hidden, f"{where}: solution not inside a closed toggle:\n{block[:300]}"
        assert block not in shown, f"{where}: solution visible without opening a toggle:\n{block[:300]}"


def test_solution_code_is_hidden_until_opened(html, manifest):
    with_exercises = [ch for ch in manifest.chapters if solution_blocks(ROOT / ch.notebook)]
    assert with_exercises, "no chapter has exercises"
    for ch in with_exercises:
        page = page_of(ch.notebook)
        assert_solutions_folded((html / page).read_text(), ROOT / ch.notebook, page)


class _Tags(HTMLParser):
    """Collects tags with their attributes, and every id/name anchor of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = {k: (v or "") for k, v in attrs}
        self.tags.append((tag, attrs))
        for key in ("id", "name"):
            if attrs.get(key):
                self.anchors.add(attrs[key])

    handle_startendtag = handle_starttag


def parse(text: str) -> _Tags:
    p = _Tags()
    p.feed(text)
    return p


def is_external(url: str) -> bool:
    return url.startswith("//") or bool(urlsplit(url).scheme and urlsplit(url).scheme not in ("file",))


def test_no_asset_is_loaded_from_the_network(html):
    """No <script>, stylesheet, image, frame or media source outside the built folder (links may point anywhere)."""
    offenders = []
    for page in sorted(html.rglob("*.html")):
        for tag, attrs in parse(page.read_text(errors="replace")).tags:
            urls = []
            if tag in ("script", "img", "iframe", "source", "video", "audio", "embed", "input"):
                urls.append(attrs.get("src", ""))
            if tag == "link" and attrs.get("rel", "") != "canonical":
                urls.append(attrs.get("href", ""))
            if tag == "object":
                urls.append(attrs.get("data", ""))
            offenders += [f"{page.relative_to(html)}: <{tag}> {u}" for u in urls if u and is_external(u)]
    for css in sorted(html.rglob("*.css")):
        text = css.read_text(errors="replace")
        for url in re.findall(r"url\(\s*['\"]?((?:https?:)?//[^'\")]+)", text) + re.findall(
            r"@import\s+(?:url\()?\s*['\"]((?:https?:)?//[^'\"]+)", text
        ):
            offenders.append(f"{css.relative_to(html)}: {url}")
    assert not offenders, "assets loaded from the network:\n" + "\n".join(offenders)


def test_mathjax_is_local(html, manifest):
    for page in pages(manifest):
        text = (html / page).read_text()
        scripts = [a.get("src", "") for t, a in parse(text).tags if t == "script"]
        mathjax = [s for s in scripts if "mathjax" in s.lower() or "tex-" in s.lower()]
        if MATH_SOURCE.search(text) or page == page_of(manifest.intro):  # Sphinx loads MathJax where there is maths
            assert mathjax, f"{page} loads no MathJax"
        for src in mathjax:
            assert not is_external(src), f"{page} loads MathJax from {src}"
            target = (html / page).parent / unquote(urlsplit(src).path)
            assert target.is_file(), f"{page}: MathJax script {src} is not in the build"


def _resolve(html: Path, page: Path, url: str) -> tuple[Path, str]:
    parts = urlsplit(url)
    target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def check_links(html: Path, page: Path, text: str) -> list[str]:
    """Every internal href resolves to a file in html/, and every #fragment to an anchor of its page."""
    problems = []
    anchors: dict[Path, set[str]] = {page: parse(text).anchors}
    for tag, attrs in parse(text).tags:
        url = (
            attrs.get("href")
            if tag in ("a", "area", "link")
            else attrs.get("src")
            if tag in ("img", "script")
            else None
        )
        if not url or is_external(url) or url.startswith(("data:", "mailto:", "javascript:")):
            continue
        target, fragment = _resolve(html, page, url)
        where = f"{page.relative_to(html)}: <{tag}> {url}"
        if not target.is_file():
            problems.append(f"{where} -> missing file")
            continue
        if html.resolve() not in target.resolve().parents:
            problems.append(f"{where} -> outside the built book")
            continue
        if fragment and target.suffix == ".html":
            if target not in anchors:
                anchors[target] = parse(target.read_text(errors="replace")).anchors
            if fragment not in anchors[target]:
                problems.append(f"{where} -> no anchor #{fragment}")
    return problems


def test_internal_links_resolve_in_the_built_html(html):
    problems = []
    for page in sorted(html.rglob("*.html")):
        if page.relative_to(html).parts[0] in ("_static", "_sources"):  # theme templates, not pages
            continue
        problems += check_links(html, page.resolve(), page.read_text(errors="replace"))
    assert not problems, "broken internal links:\n" + "\n".join(problems[:50])


def test_images_exist_and_decode(html, manifest):
    from PIL import Image

    seen = 0
    for page in pages(manifest):
        for tag, attrs in parse((html / page).read_text()).tags:
            src = attrs.get("src", "")
            if tag != "img" or not src or src.startswith("data:"):
                continue
            target, _ = _resolve(html, (html / page).resolve(), src)
            assert target.is_file(), f"{page}: image {src} is missing"
            if target.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".webp"):
                with Image.open(target) as im:
                    im.load()
                    assert min(im.size) > 1, f"{page}: image {src} is empty"
                    lo, hi = im.convert("L").getextrema()
                    assert hi > lo, f"{page}: image {src} is blank"
            seen += 1
    if manifest.chapters:
        assert seen, "no chapter shows a figure"


REFERENCE_OBJECTS = {  # the reference pages, in book order, with one object each must document
    "core": "arlib.load",
    "text": "arlib.text.gpt.GPT",
    "decoding": "arlib.decoding.speculative.speculative_generate",
    "vision": "arlib.vision.vq.VQVAE",
    "speech": "arlib.speech.paraformer.Paraformer",
    "interp": "arlib.interp.sae.SparseAutoencoder",
    "serving": "arlib.serving.paged.PagedKVCache",
}
TORCH_DOCSTRINGS = ("Base class for all neural network modules", "Define the computation performed at every call")


def reference_modules() -> dict[str, list[str]]:
    """The modules each reference page must show: a sub-package's page its package and every module in it, the
    core page all the others (the exercises' checks through ``arlib.checks``, which re-exports them)."""
    import pkgutil

    import arlib

    found = {page: [] for page in REFERENCE_OBJECTS}
    for name in ["arlib"] + [m.name for m in pkgutil.walk_packages(arlib.__path__, "arlib.")]:
        parts = name.split(".")
        if parts[-1].startswith("_") or (parts[:2] == ["arlib", "checks"] and len(parts) > 2):
            continue
        found[parts[1] if len(parts) > 1 and parts[1] in found else "core"].append(name)
    return found


def docstring_opening(dotted: str, words: int = 3) -> str:
    """The first words of an object's docstring as the page shows them (roles and backquotes dropped)."""
    import importlib
    import inspect

    module, _, name = dotted.rpartition(".")
    doc = inspect.getdoc(getattr(importlib.import_module(module), name)) or ""
    return " ".join(re.sub(r":\w+:|`|~", "", doc).split()[:words])


def test_the_manifest_has_an_arlib_reference_part(manifest):
    part = next((p for p in manifest.parts if p.caption == "arlib reference"), None)
    assert part is not None, "book.toml has no part 'arlib reference'"
    assert not part.chapters and part.pages == [f"chapters/reference/{page}.md" for page in REFERENCE_OBJECTS]


def test_reference_pages_document_every_module(html):
    import html as html_lib
    import importlib

    for page, modules in reference_modules().items():
        text = (html / "chapters" / "reference" / f"{page}.html").read_text()
        documented = re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', text)
        for module in modules:
            assert f'id="module-{module}"' in text, f"reference page {page}.md does not show {module}"
            if not hasattr(importlib.import_module(module), "__path__"):  # a module, not a package: its members
                assert any(d.startswith(module + ".") for d in documented), f"{page}: nothing of {module}"
        if page != "core":
            assert all(d.startswith(f"arlib.{page}.") for d in documented), f"{page}: objects of another part"
        assert not any(s in text for s in TORCH_DOCSTRINGS), f"{page}: a docstring inherited from torch"
        obj = REFERENCE_OBJECTS[page]
        at = text.find(f'id="{obj}"')
        assert at >= 0, f"reference page {page}: {obj} is not documented"
        entry = text[at:text.find('<dt class="sig', at + 1)]  # the object's signature and its own docstring
        shown = " ".join(html_lib.unescape(re.sub(r"<[^>]+>", "", entry)).split())
        assert docstring_opening(obj) in shown, f"{page}: {obj} is shown without its docstring"


def test_the_landing_page_links_to_the_reference(html, manifest):
    landing = (html / page_of(manifest.intro)).read_text()
    assert 'href="reference/core.html"' in landing


# --------------------------------------------------------------------------------------------- in a browser


def chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def dump_dom(url: str, tmp_path: Path) -> str:
    proc = chromium(["--dump-dom", url], tmp_path)
    assert proc.returncode == 0, f"chromium failed on {url}:\n{proc.stderr[-3000:]}"
    assert "<html" in proc.stdout.lower(), f"chromium dumped no DOM for {url}:\n{proc.stderr[-3000:]}"
    return proc.stdout


MATH_SOURCE = re.compile(r'class="math notranslate nohighlight"')


@pytest.fixture(scope="module")
def doms(html, manifest, tmp_path_factory) -> dict[str, str]:
    """The DOM of index.html and of every page of the book after Chromium ran its scripts."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("chromium")
    return {page: dump_dom((html / page).resolve().as_uri(), tmp) for page in ["index.html", *pages(manifest)]}


@needs_chromium
def test_index_opens_the_intro(doms, manifest):
    dom = doms["index.html"]
    assert manifest.title in dom
    assert "mjx-container" in dom, "index.html did not lead to the (typeset) intro"


@needs_chromium
def test_maths_is_typeset_offline(doms, html, manifest):
    with_maths = 0
    for page in pages(manifest):
        expected = len(MATH_SOURCE.findall((html / page).read_text()))
        if not expected:
            continue
        with_maths += 1
        dom = doms[page]
        typeset = dom.count("<mjx-container")
        assert typeset >= expected, f"{page}: {typeset} of {expected} formulas typeset by MathJax"
        assert "<mjx-merror" not in dom, f"{page}: MathJax reports a TeX error"
        assert 'jax="CHTML"' in dom
    assert with_maths, "no page of the book has maths"


@needs_chromium
def test_links_and_images_resolve_in_the_browser(doms, html, manifest):
    problems = []
    for page in pages(manifest):
        problems += check_links(html, (html / page).resolve(), doms[page])
    assert not problems, "broken links in the rendered pages:\n" + "\n".join(problems[:50])


@needs_chromium
def test_solutions_stay_folded_in_the_browser(doms, manifest):
    for ch in manifest.chapters:
        if solution_blocks(ROOT / ch.notebook):
            page = page_of(ch.notebook)
            assert_solutions_folded(doms[page], ROOT / ch.notebook, f"{page} (in Chromium)")


@needs_chromium
def test_the_instructor_page_shows_the_exercise_table(doms, manifest):
    instructors = [p for p in manifest.pages if p.endswith("instructors.md")]
    assert instructors, "book.toml lists no instructor page"
    dom = doms[page_of(instructors[0])]
    assert "<table" in dom, f"{instructors[0]}: no table rendered"
    for ch in manifest.chapters:
        assert ch.title in dom, f"the instructor page does not list {ch.title!r}"


@needs_chromium
def test_screenshot_of_a_chapter_is_not_blank(html, manifest, tmp_path):
    from PIL import Image, ImageStat

    page = pages(manifest)[1] if manifest.chapters else pages(manifest)[0]
    shot = tmp_path / "page.png"
    proc = chromium([f"--screenshot={shot}", "--window-size=1280,2400", (html / page).resolve().as_uri()], tmp_path)
    assert proc.returncode == 0 and shot.is_file(), f"no screenshot of {page}:\n{proc.stderr[-3000:]}"
    with Image.open(shot) as im:
        grey = im.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 10, f"the screenshot of {page} is blank"
        assert len(grey.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20
