"""The course book (`make book`), built from the notebooks this run executed and read in a real browser.

This lane runs after tests/notebooks (tests/conftest.py orders the lanes unit, live, notebooks, publish; the
first test below fails if that order breaks): the book is made from the executed copies papermill left under
artifacts/notebooks/, and when one is missing the tests fail, saying to run `make test`, rather than skip.

The book is built into a temporary folder, served on loopback by a thread (stopped at the end), and opened in
headless Chromium (Debian's `chromium`; `make os-tools` installs it as root on Debian). Each page is loaded
inside a small probe page that reads the loaded document (title, plots with their decoded size, tables) into
its own DOM, which `--dump-dom` prints; the same call writes a screenshot to artifacts/book-screenshots/.
Every link of every built page must reach a file of the book, and no page may load anything from the web.
A notebook's diagrams (``servelab.course.diagrams.show``) are SVG images of its page, which the browser draws.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from servelab.course import book, diagrams
from servelab.errors import ServelabError

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SCREENSHOTS = ROOT / "artifacts" / "book-screenshots"
CHROMIUM = os.environ.get("SERVELAB_CHROMIUM", "/usr/bin/chromium")
# The brief's flags: no sandbox (root in CI), no GPU, and nothing that reaches out to the network by itself.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
WINDOW = (1280, 1000)
BROWSER_TIMEOUT_S = 90
PLOT_PAGE = "notebooks/07_autoscaling_cost"  # matplotlib figures and a diagram, no engine: cheap to re-run alone
TABLE_PAGE = "notebooks/09_claims_ledger"  # the ledger's tables


# --- the book, its server, the browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> book.Built:
    try:
        return book.build(tmp_path_factory.mktemp("book"))
    except ServelabError as err:
        pytest.fail(str(err), pytrace=False)


class _Handler(SimpleHTTPRequestHandler):
    """Serves files quietly and records each request's path and status on the server."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.seen.append((unquote(urlsplit(self.path).path), int(code)))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def served(built: book.Built) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    """The build folder on a loopback port: the book under /html/, the probe pages at the top."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(built.html.parent)))
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the book's HTTP server thread did not stop"


@pytest.fixture(scope="module")
def browser() -> str:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        pytest.fail(
            f"headless Chromium not found at {CHROMIUM}: run `make os-tools` as root on Debian (apt-get install "
            "chromium), or point SERVELAB_CHROMIUM at a Chromium or Chrome binary",
            pytrace=False,
        )
    return CHROMIUM


def _chromium(binary: str, url: str, screenshot: Path) -> str:
    """Load ``url`` once in a fresh profile: the DOM after load (stdout) and a screenshot of the window."""
    profile = tempfile.mkdtemp(prefix="servelab-chromium-")
    cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
    cmd += [f"--screenshot={screenshot}", "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish loading {url} within {BROWSER_TIMEOUT_S} s")
    finally:
        with contextlib.suppress(ProcessLookupError):  # helpers of the browser (crash handler) that outlived it
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, f"chromium exited {proc.returncode} on {url}: {err[-2000:]}"
    return out


# The probe: the page in a same-origin iframe the size of the window; once it has loaded (images included),
# what a reader would see is written into <pre id="probe">, and the view scrolls to the first element that
# matches a CSS selector, if one is given (a plot, a table).
PROBE = """<!doctype html><meta charset="utf-8"><title>probe</title><link rel="icon" href="data:,">
<style>html,body{margin:0;overflow:hidden}iframe{border:0;width:100vw;height:100vh;display:block}
#probe{position:absolute;left:-100000px}</style>
<pre id="probe">the page did not load</pre>
<iframe id="page" src="PAGE"></iframe>
<script>
const frame = document.getElementById("page");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument;
  const images = [...doc.querySelectorAll(".cell_output img")];
  const first = SCROLL && doc.querySelector(SCROLL);
  if (first) first.scrollIntoView({block: "center"});
  document.getElementById("probe").textContent = JSON.stringify({
    title: doc.title,
    h1: (doc.querySelector("h1") || {textContent: ""}).textContent,
    outputs: doc.querySelectorAll(".cell_output").length,
    images: images.map(i => ({src: i.src, width: i.naturalWidth, height: i.naturalHeight, complete: i.complete})),
    tables: [...doc.querySelectorAll(".cell_output table")].map(t => t.rows.length),
    links: [...doc.querySelectorAll("a[href]")].map(a => a.href),
  });
});
</script>
"""


def _look(binary: str, base: str, built: book.Built, page: str, *, scroll: str = "") -> dict[str, Any]:
    """Open a page of the book through the probe (scrolled to ``scroll``, a CSS selector); save its screenshot;
    return what the probe read."""
    name = Path(page).name
    probe = built.html.parent / f"probe-{name}.html"
    probe.write_text(PROBE.replace("PAGE", f"html/{page}.html").replace("SCROLL", json.dumps(scroll)))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{name}.png"
    shot.unlink(missing_ok=True)
    dom = _chromium(binary, f"{base}/{probe.name}", shot)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"no probe in the DOM of {page}: {dom[:500]}"
    text = html.unescape(found.group(1))
    assert text.startswith("{"), f"{page}: {text}"
    return json.loads(text)


def _looks_like_a_page(png: Path) -> None:
    """A real screenshot: the window's size, not tiny, many colours, no one colour covering the view."""
    assert png.is_file() and png.stat().st_size > 20_000, f"{png}: missing or too small"
    with Image.open(png) as img:
        assert img.size == WINDOW, f"{png}: {img.size}"
        colours = img.convert("RGB").getcolors(maxcolors=WINDOW[0] * WINDOW[1])
    assert colours is not None and len(colours) >= 64, f"{png}: {len(colours or [])} colours"
    assert max(count for count, _ in colours) < 0.9 * WINDOW[0] * WINDOW[1], f"{png}: nearly one colour"


def _heading(executed: Path) -> str:
    """A notebook's title: the first markdown heading of its executed copy."""
    for cell in json.loads(executed.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return re.sub(r"[`*]", "", line[2:]).strip()
    raise AssertionError(f"{executed} has no title")


# --- tests -------------------------------------------------------------------------------------------------


def test_the_book_lane_runs_after_the_notebooks(request: pytest.FixtureRequest) -> None:
    """The book shows this run's executed notebooks only if the notebook lane ran first."""
    (conftest,) = [
        p
        for p in request.config.pluginmanager.get_plugins()
        if getattr(p, "__file__", None) == str(TESTS / "conftest.py")
    ]
    assert conftest.LANES["publish"] > conftest.LANES["notebooks"]
    items = request.session.items
    here = items.index(request.node)
    late = [item.nodeid for item in items[here:] if conftest._lane(item) == "notebooks"]
    assert not late, f"notebook tests ordered after the book: {late[:3]}"


def test_the_book_is_made_of_the_executed_notebooks(built: book.Built) -> None:
    assert runpy.run_path(str(ROOT / "book" / "conf.py"))["nb_execution_mode"] == "off"  # it never runs a notebook
    pages = {page.rel: page for part in built.parts for page in part.pages}
    expected = sorted(p.relative_to(ROOT) for p in [*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("labs/*.ipynb")])
    assert sorted(rel for rel in pages if rel.suffix == ".ipynb") == expected
    assert [part.caption for part in built.parts][:2] == ["Notebooks", "Labs"]
    src = built.html.parent / "src"
    for rel in expected:
        page = pages[rel]
        assert page.source == book.executed_copy(rel, ROOT)
        assert (src / rel).read_bytes() == page.source.read_bytes(), f"{rel}: the staged page is not the executed copy"
        built_html = (built.html / rel.with_suffix(".html")).read_text()
        assert built_html.count('class="cell_output') >= 1, f"{rel}: its page shows no output"
    for rel in ("docs/facilitator-guide.md", "docs/claims-ledger.md"):
        assert (built.html / Path(rel).with_suffix(".html")).is_file()
    assert built.warnings == [], "Sphinx warned:\n" + "\n".join(built.warnings)
    if built.stale:  # a page shows an earlier version of its notebook: the copy is older than the notebook
        warnings.warn(f"executed copies older than their notebooks (run `make test`): {built.stale}", stacklevel=1)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v for k, v in attrs if v is not None}
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "a" and "name" in values:
            self.ids.add(values["name"])
        self.refs += [(tag, k, values[k]) for k in ("href", "src") if k in values]


def test_every_link_of_the_book_reaches_a_file_of_it(built: book.Built) -> None:
    """Every href and src of every page is a file of the book (and an anchor of it exists); nothing is loaded
    from outside, so the book reads offline."""
    pages: dict[Path, _Refs] = {}
    for path in built.html.rglob("*.html"):
        if path.relative_to(built.html).parts[0] == "_static":  # the theme's Jinja macros, copied as static files
            continue
        pages[path] = parser = _Refs()
        parser.feed(path.read_text())
    assert len(pages) >= len([p for part in built.parts for p in part.pages]) + 1  # + index (and search, genindex)
    broken, anchors, outside = [], [], []
    for path, parser in pages.items():
        where = path.relative_to(built.html)
        for tag, attribute, value in parser.refs:
            url = urlsplit(value)
            if url.scheme or value.startswith("//"):
                if tag != "a":
                    outside.append(f"{where}: <{tag} {attribute}={value}>")
                continue
            target = (path.parent / unquote(url.path)).resolve() if url.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or not target.is_relative_to(built.html.resolve()):
                broken.append(f"{where}: {value}")
            elif url.fragment and target in pages and url.fragment not in pages[target].ids:
                anchors.append(f"{where}: {value}")
    total = sum(len(p.refs) for p in pages.values())
    assert total > 10 * len(pages)
    assert not broken, f"{len(broken)} broken links: {broken[:20]}"
    assert not anchors, f"{len(anchors)} links to anchors that do not exist: {anchors[:20]}"
    assert not outside, f"pages load from the web: {outside[:20]}"


_SVG_TITLE = re.compile(r"<title>(.*?)</title>")  # the first in an SVG from dot: its graph's name, the diagram's


def test_a_page_shows_the_diagrams_its_notebook_draws(built: book.Built) -> None:
    """Each `diagrams.show(...)` of a notebook is an SVG image on its page: the executed copy carries the
    drawing (image/svg+xml), and myst-nb writes it out as a file of the book."""
    drawn: set[str] = set()
    for page in [page for part in built.parts for page in part.pages if page.executed]:
        names = diagrams.shown_in(ROOT / page.rel)
        if not names:
            continue
        path = built.html / page.rel.with_suffix(".html")
        parser = _Refs()
        parser.feed(path.read_text())
        images = [value for tag, _, value in parser.refs if tag == "img"]
        svgs = [(path.parent / unquote(value)).resolve() for value in images if value.endswith(".svg")]
        titles = {found.group(1) for svg in svgs if (found := _SVG_TITLE.search(svg.read_text()))}
        stale = " (its executed copy is older than the notebook: run `make test`)" * (str(page.rel) in built.stale)
        assert set(names) <= titles, f"{page.rel}: no SVG of {sorted(set(names) - titles)} on its page{stale}"
        drawn |= set(names)
    assert drawn == set(diagrams.names()), f"diagrams no page shows: {sorted(set(diagrams.names()) - drawn)}"


def test_the_pages_in_a_real_browser(built: book.Built, served: tuple[str, ThreadingHTTPServer], browser: str) -> None:
    base, server = served
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()

    index = _look(browser, base, built, "index")
    assert index["title"].startswith("LLM Serving Lab") and index["h1"].startswith("LLM Serving Lab")
    linked = {urlsplit(link).path for link in index["links"]}
    for part in built.parts:
        for page in part.pages:
            assert f"/html/{page.rel.with_suffix('.html')}" in linked, f"the index does not link to {page.rel}"
    assert index["tables"] == [] and index["outputs"] == 0  # the map is markdown, not a cell's output

    plot = _look(browser, base, built, PLOT_PAGE, scroll='.cell_output img[src$=".png"]')  # a plot, not the diagram
    heading = _heading(book.executed_copy(Path(f"{PLOT_PAGE}.ipynb"), ROOT))
    assert plot["title"].startswith(heading) and plot["h1"].startswith(heading)
    svgs = [image for image in plot["images"] if urlsplit(image["src"]).path.endswith(".svg")]
    assert plot["outputs"] >= 5 and len(plot["images"]) > len(svgs), f"{PLOT_PAGE}: no plot"
    assert len(svgs) == len(diagrams.shown_in(ROOT / f"{PLOT_PAGE}.ipynb")), f"{PLOT_PAGE}: {len(svgs)} diagrams"
    for image in plot["images"]:  # a diagram too: its natural size is what the browser made of the SVG
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, image
        file = built.html.parent / unquote(urlsplit(image["src"]).path).lstrip("/")
        assert (urlsplit(image["src"]).path, 200) in server.seen, f"the browser did not fetch {image['src']}"
        if image in svgs:
            continue
        assert file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(file) as img:
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 24) or []) > 2, f"{file}: a blank figure"

    table = _look(browser, base, built, TABLE_PAGE, scroll=".cell_output table")
    heading = _heading(book.executed_copy(Path(f"{TABLE_PAGE}.ipynb"), ROOT))
    assert table["title"].startswith(heading) and table["h1"].startswith(heading)
    assert table["tables"] and max(table["tables"]) >= 5, f"{TABLE_PAGE}: tables of {table['tables']} rows"

    failed = sorted({(path, status) for path, status in server.seen if status >= 400})
    assert not failed, f"requests the book's pages made that failed: {failed[:20]}"
    for name in ("index", Path(PLOT_PAGE).name, Path(TABLE_PAGE).name):
        _looks_like_a_page(SCREENSHOTS / f"{name}.png")
