"""The chapters read well in JupyterLab (``make lab``): jupyterlab-myst renders their MyST (citations, maths,
equation and theorem references, theorems and proofs), their diagrams load, and the book's settings override
(``tools/lab/overrides.json``) keeps JupyterLab's first-run "official Jupyter news" prompt away.

JupyterLab renders markdown in the browser, after its scripts have fetched the notebook from the server, which
``chromium --dump-dom`` cannot wait for; so the test drives headless Debian chromium through its DevTools protocol,
with websocket-client (which jupyter_server depends on anyway). JupyterLab runs with ``make lab``'s own arguments
(``LAB_ARGS`` in the Makefile) on a temporary copy of one chapter laid out as in the repository, on a free port with
a token, with its user settings, workspaces and runtime files in the temporary folder: nothing is written into the
checkout or the user's ``~/.jupyter``. The browser checks are skipped only where chromium is not installed (CI
installs it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and Path(p).exists()), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

NEWS_PROMPT = "official Jupyter news"  # from JupyterLab's "Would you like to get notified about official Jupyter news?"
NEWS_JS = f"document.body.textContent.includes({json.dumps(NEWS_PROMPT)})"
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
XREF = re.compile(r"\{(?:eq|prf:ref|numref|ref)\}`([^`]+)`")
PROOF_DIRECTIVE = re.compile(r"^```+\{prf:[a-z]+\}", re.MULTILINE)
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
RAW_MYST = re.compile(r"\{(?:cite|eq|math|prf:[a-z]+|numref|ref|bibliography)(?::[a-z]+)?\}")


# --------------------------------------------------------------------------------------------- the chapter


def markdown_of(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def pick_chapter() -> Path:
    """The first chapter whose prose uses citations, equation references and a theorem or proof directive: the
    MyST that plain JupyterLab shows raw."""
    notebooks = sorted(REPO.glob("chapters/[0-9][0-9]-*/[0-9][0-9]-*.ipynb"))
    assert notebooks, "no chapter notebooks under chapters/"
    for nb in notebooks:
        text = "\n".join(markdown_of(nb))
        if CITE.search(text) and XREF.search(text) and PROOF_DIRECTIVE.search(text):
            return nb
    pytest.fail("no chapter uses {cite}, {eq}/{prf:ref} and a {prf:...} directive together")


def expected_myst(notebook: Path) -> SimpleNamespace:
    """What the chapter's markdown asks MyST to render, read from its source."""
    text = "\n".join(markdown_of(notebook))
    keys = {k.strip() for group in CITE.findall(text) for k in group.split(",")}
    # A reference is `label` or `text <label>`.
    labels = {(re.search(r"<([^>]+)>", r) or re.match(r"(.*)", r)).group(1).strip() for r in XREF.findall(text)}
    return SimpleNamespace(
        markdown_cells=len(markdown_of(notebook)),
        cite_keys=keys,
        labels=labels,
        proofs=len(PROOF_DIRECTIVE.findall(text)),
        images=[m for m in IMAGE.findall(text) if "://" not in m],
    )


def lab_args() -> list[str]:
    """``make lab``'s arguments, from the Makefile, so that the test serves the chapters the way readers get them."""
    makefile = (REPO / "Makefile").read_text()
    m = re.search(r"^LAB_ARGS\s*:?=\s*(.+)$", makefile, re.MULTILINE)
    assert m, "the Makefile defines no LAB_ARGS"
    assert re.search(r"^lab:.*\n\t.*jupyter lab \$\(LAB_ARGS\)", makefile, re.MULTILINE), "make lab ignores LAB_ARGS"
    return shlex.split(m.group(1))


def settings_dir(args: list[str]) -> str:
    found = [a.split("=", 1)[1] for a in args if a.startswith("--LabApp.app_settings_dir=")]
    assert found, "make lab does not point JupyterLab to the book's settings (--LabApp.app_settings_dir)"
    return found[0]


# --------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wait_until(probe, seconds: float, what: str, log: Path | None = None, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            value = probe()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} did not come up within {seconds:.0f} s\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, and whatever it spawned in that session. JupyterLab shuts
    its kernels down first thing on SIGTERM, but may then sit for long on a build check it had started."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab, started as ``make lab`` starts it, on a copy of one chapter, its diagrams and the book's
    settings; its user folders are temporary too."""
    chapter = pick_chapter()
    expected = expected_myst(chapter)
    args = lab_args()
    root = tmp_path_factory.mktemp("lab")
    book, home = root / "book", root / "home"
    rel = chapter.relative_to(REPO)
    (book / rel).parent.mkdir(parents=True)
    shutil.copy2(chapter, book / rel)
    for src in expected.images:  # the diagrams, at the same place relative to the chapter
        image = (chapter.parent / src).resolve()
        assert image.is_file(), f"{rel} shows {src}, which does not exist"
        (book / image.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, book / image.relative_to(REPO))
    settings = settings_dir(args)
    shutil.copytree(REPO / settings, book / settings)
    # Windowing 'none' attaches every cell at once, so the whole chapter renders in seconds (the default attaches
    # cells in idle time, which takes a minute on a busy 2-core machine). A test-only user setting: it changes
    # when cells render, not how.
    user = home / "user-settings"
    (user / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (user / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"})
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(user),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    port, token = free_port(), os.urandom(12).hex()
    cmd = [sys.executable, "-m", "jupyterlab", *args, "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    log = root / "jupyterlab.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=book, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: get_json(f"{base}/api/status?token={token}"), 60, "JupyterLab", log, server)
        yield SimpleNamespace(base=base, token=token, chapter=rel, expected=expected, user_settings=user, log=log)
    finally:
        stop(server)


def test_make_lab_serves_the_repository_with_the_books_settings():
    args = lab_args()
    assert "--ServerApp.root_dir=." in args, "the diagrams under figures/ are outside a root of chapters/"
    overrides = json.loads((REPO / settings_dir(args) / "overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"


def test_jupyterlab_reads_the_books_settings_override(lab):
    got = get_json(f"{lab.base}/lab/api/settings/@jupyterlab/apputils-extension:notification?token={lab.token}")
    # An override replaces the schema's default; the (empty) user settings keep it.
    assert got["schema"]["properties"]["fetchNews"]["default"] == "false", "the override was not applied"
    assert "fetchNews" not in got["settings"]


# --------------------------------------------------------------------------------------------- in a browser


class DevTools:
    """Just enough of Chrome's DevTools protocol: send a command, wait for its answer, skip the events."""

    def __init__(self, url: str):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        """The JSON value of a JS expression in the page, or None while the page has none (it is loading)."""
        try:
            result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        except RuntimeError:
            return None
        return None if "exceptionDetails" in result else result["result"].get("value")

    def close(self):
        self.ws.close()


@pytest.fixture(scope="module")
def browser(lab):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    port = free_port()
    profile = lab.log.parent / "chromium-profile"
    log = lab.log.parent / "chromium.log"
    # A proxy that refuses every connection: the lab must not need the network (loopback bypasses it).
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--proxy-server=http://127.0.0.1:9",
           f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1280,1600",
           "about:blank"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    devtools = None
    try:
        pages = wait_until(
            lambda: [t for t in get_json(f"http://127.0.0.1:{port}/json/list") if t["type"] == "page"],
            30, "chromium's DevTools", log, proc,
        )
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        stop(proc)


# What the notebook shows: the rendered markdown cells of the open notebook (their text without KaTeX's copy of
# the LaTeX source), the citations (an unresolved one shows its key), in-page references and their text, proofs,
# KaTeX output and errors, the images with whether they loaded, and whether the news prompt is on screen.
STATE_JS = r"""(() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const cells = [...panel.querySelectorAll('.jp-MarkdownCell .myst')];
  const textOf = el => {
    const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    let s = '', n;
    while ((n = walk.nextNode())) if (!n.parentElement.closest('.katex')) s += n.data;
    return s;
  };
  const within = sel => cells.flatMap(c => [...c.querySelectorAll(sel)]);
  return {
    rendered: cells.length,
    text: cells.map(textOf).join('\n'),
    cites: within('cite, [title="Citation Not Found"]').map(e => e.textContent.trim()),
    refs: within('a[href^="#"]:not([title])').map(a => [decodeURIComponent(a.getAttribute('href').slice(1)),
                                                         a.textContent.trim()]),
    proofs: within('.myst-proof').length,
    katex: within('.katex').length,
    katexErrors: within('.katex-error').map(e => e.textContent),
    images: within('img').map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
    news: NEWS_JS,
  };
})()""".replace("NEWS_JS", NEWS_JS)


def settled(state, expected) -> bool:
    """Every markdown cell rendered, the notebook-wide pass (numbering, references) done, the images loaded."""
    if not state or state["rendered"] < expected.markdown_cells:
        return False
    resolved = {label for label, text in state["refs"] if re.search(r"\d", text)}
    return expected.labels <= resolved and all(ok for _, ok in state["images"])


@pytest.fixture(scope="module")
def opened(lab, browser):
    """The chapter opened in JupyterLab, once everything in it has rendered (or 45 s have passed)."""
    t0 = time.monotonic()
    browser.call("Page.navigate", url=f"{lab.base}/lab/tree/{lab.chapter.as_posix()}?token={lab.token}")
    deadline = time.monotonic() + 45
    state = None
    while time.monotonic() < deadline:
        state = browser.evaluate(STATE_JS)
        if settled(state, lab.expected):
            break
        time.sleep(0.25)
    assert state, f"JupyterLab did not open {lab.chapter}:\n{lab.log.read_text(errors='replace')[-3000:]}"
    # JupyterLab asks its news question as soon as the app has restored, before the notebook renders (about 1.5 s
    # before, here); a second more leaves it time to show up if it were going to.
    time.sleep(1.0)
    state = browser.evaluate(STATE_JS)
    state["seconds"] = time.monotonic() - t0
    return state


@needs_chromium
def test_every_markdown_cell_is_rendered_by_myst(opened, lab):
    assert opened["rendered"] == lab.expected.markdown_cells, (
        f"{opened['rendered']} of {lab.expected.markdown_cells} markdown cells rendered by jupyterlab-myst "
        f"in {opened['seconds']:.0f} s"
    )
    raw = sorted(set(RAW_MYST.findall(opened["text"])))
    assert not raw, f"raw MyST in the rendered chapter: {raw}"


@needs_chromium
def test_citations_are_rendered_not_raw(opened, lab):
    assert "{cite" not in opened["text"]
    # jupyterlab-myst does not read references.bib: a citation shows its key, marked as not found.
    missing = sorted(lab.expected.cite_keys - set(opened["cites"]))
    assert not missing, f"citations not rendered: {missing} (rendered: {sorted(set(opened['cites']))[:10]})"


@needs_chromium
def test_maths_equation_and_theorem_references_and_proofs_render(opened, lab):
    assert opened["katex"] > 0 and not opened["katexErrors"], opened["katexErrors"][:5]
    numbered = {label: text for label, text in opened["refs"] if re.search(r"\d", text)}
    unresolved = sorted(lab.expected.labels - set(numbered))
    assert not unresolved, f"references not resolved to a number: {unresolved}"
    assert opened["proofs"] == lab.expected.proofs, "theorem and proof directives not rendered as MyST proofs"


@needs_chromium
def test_the_chapters_diagrams_load(opened, lab):
    assert len(opened["images"]) >= len(lab.expected.images)
    broken = [src for src, ok in opened["images"] if not ok]
    assert not broken, f"images that did not load: {broken}"


@needs_chromium
def test_no_news_prompt_while_the_check_would_see_one(opened, lab, browser):
    assert not opened["news"], "JupyterLab asks about Jupyter news: the book's settings override was not applied"
    # The check itself: a user setting that asks again (it wins over the override) brings the prompt back.
    own = lab.user_settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text(json.dumps({"fetchNews": "none"}))
    try:
        browser.call("Page.reload", ignoreCache=True)
        deadline, news = time.monotonic() + 30, False
        while time.monotonic() < deadline and not news:
            time.sleep(0.25)
            news = bool(browser.evaluate(NEWS_JS))
        assert news, "with fetchNews 'none' the news prompt did not appear: the check above cannot see it"
    finally:
        own.unlink()
