"""The glossary module's rules: how entries are read, where a term matches, and what --fix writes. No processes."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from servelab.course import glossary as gl

DEFINITION = "A definition long enough to count as one, with a reason why it matters when serving a model."


def _entry(anchor: str, heading: str, also: str = "") -> str:
    meta = f"**Also:** {also} · **Taught in:** 05" if also else "**Taught in:** 05"
    return f'<a id="{anchor}"></a>\n\n## {heading}\n\n{meta}\n\n{DEFINITION}\n'


ENTRIES = [
    ("for-pending", "`for:` (pending)", "pending, `for`, `for:`"),
    ("kv-cache", "KV cache", ""),
    ("max-num-seqs", "max-num-seqs", "`--max-num-seqs`"),
    ("prefix-caching", "Prefix caching", "prefix cache"),
    ("quantization", "Quantization", "quantized"),
    ("quantization-level", "Quantization level", "Q4_1"),
    ("slot-llama-server", "Slot (llama-server)", "parallel slot"),
    ("ttft", "TTFT", "time to first token"),
]
INDEX = "## Terms by topic\n\n" + ", ".join(f"[{h}](#{a})" for a, h, _ in ENTRIES) + "\n\n"
TEXT = "# Glossary\n\n" + INDEX + "\n".join(_entry(*e) for e in ENTRIES)
TERMS = tuple(gl.parse_glossary(TEXT))


def _anchors(markdown: str) -> list[tuple[str, str, bool]]:
    """(anchor, matched text, already linked) for each occurrence the scanner finds, in order."""
    return [(o.anchor, o.text, o.linked) for o in gl.scan_markdown(markdown, TERMS).occurrences]


# ---- Reading the glossary ----


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("TTFT", "ttft"),
        ("E2E latency", "e2e-latency"),
        ("`for:` (pending)", "for-pending"),
        ("`rate()`", "rate"),
        ("OpenAI-compatible API", "openai-compatible-api"),
        ("Slot (llama-server)", "slot-llama-server"),
        ("Cost per million tokens", "cost-per-million-tokens"),
    ],
)
def test_anchor_is_githubs(heading: str, anchor: str) -> None:
    assert gl.github_anchor(heading) == anchor


def test_entries_are_read_with_their_spellings() -> None:
    terms = {t.anchor: t for t in TERMS}
    assert list(terms) == [a for a, _, _ in ENTRIES]  # the index heading has no anchor: not a term
    assert terms["ttft"].aliases == ("TTFT", "time to first token")
    assert terms["for-pending"].aliases == ("pending",)  # a heading with code is no spelling itself
    assert terms["for-pending"].code_aliases == ("for", "for:")
    assert terms["slot-llama-server"].aliases == ("parallel slot",)  # nor is one with a parenthesis
    assert terms["ttft"].definition == DEFINITION
    assert terms["ttft"].taught_in == "05"


def test_the_test_glossary_is_a_valid_one() -> None:
    assert gl.glossary_problems(TEXT) == []


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        (TEXT.replace('<a id="ttft">', '<a id="TTFT">'), "not the heading's 'ttft'"),
        (TEXT.replace("**Also:** prefix cache", "**Also:** KV cache"), "a spelling of both"),
        (TEXT.replace(f"time to first token · **Taught in:** 05\n\n{DEFINITION}", "time to first token"), "TTFT: no"),
        (TEXT.replace("[TTFT](#ttft)", "TTFT"), "missing from the index"),
        (TEXT + "\nSee [nothing](#no-such-term).\n", "#no-such-term: no such term"),
        (TEXT + _entry("a-first", "A first"), "alphabetical"),
    ],
)
def test_glossary_problems_are_named(broken: str, problem: str) -> None:
    assert any(problem in p for p in gl.glossary_problems(broken)), gl.glossary_problems(broken)


# ---- Where a term matches ----


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("TTFT rises under load.", [("ttft", "TTFT")]),
        ("Our TTFTs and our ttft.", [("ttft", "TTFTs"), ("ttft", "ttft")]),  # plural, any case
        ("The Time To First Token.", [("ttft", "Time To First Token")]),
        ("The KV-cache fills.", [("kv-cache", "KV-cache")]),  # hyphen and space are one
        ("Runs with `--max-num-seqs` set.", [("max-num-seqs", "`--max-num-seqs`")]),  # exact code span
        ("A `for` and a `for:`.", [("for-pending", "`for`"), ("for-pending", "`for:`")]),
        ("The quantization levels and quantized weights.", [("quantization-level", "quantization levels"),
                                                              ("quantization", "quantized")]),  # longest wins
        ("| a | b |\n|---|---|\n| TTFT | x |", [("ttft", "TTFT")]),  # a table's body, not its header
        ("It costs $5 and TTFT $6.", [("ttft", "TTFT")]),  # two prices are not math
        ("Both [the TTFT](../docs/glossary.md#ttft) and TTFT.", [("ttft", "the TTFT"), ("ttft", "TTFT")]),
    ],
)  # fmt: skip
def test_a_term_matches_as_a_whole_word_in_prose(markdown: str, expected: list[tuple[str, str]]) -> None:
    assert [(a, t) for a, t, _ in _anchors(markdown)] == expected


@pytest.mark.parametrize(
    "markdown",
    [
        "## TTFT under load",  # a heading
        "PTTFT and TTFTX are other words.",  # inside a word
        "A non-pending state, a pending-review queue.",  # a hyphenated compound
        "Read hpa.yaml and kv.cache.",  # a file name
        "The `TTFT` column and `--max-num-seqs=4`.",  # code that is not exactly a code spelling
        "```\nTTFT = 1\n```",  # fenced code
        "[slow TTFT](https://example.org/ttft) and https://example.org/TTFT",  # links and URLs
        'The seed says "TTFT is 1 s" and “TTFT falls”.',  # quotations stay verbatim
        "| TTFT | E2E |\n|---|---|\n| 1 | 2 |",  # a table's header row
        "**Time:** about 5 minutes of TTFT.",  # the opening's time line
        "Math $x_{TTFT}$ and $$TTFT^2$$.",  # math
        "A figure [source: data/ttft.yaml].",  # the numbers test's marker
        '<span title="TTFT">x</span> <!-- TTFT -->',  # HTML
        "One slot of a parallel run; a Slot (llama-server).",  # neither is a spelling
    ],
)
def test_nothing_matches_where_a_link_cannot_go(markdown: str) -> None:
    assert [a for a, _, linked in _anchors(markdown) if not linked] == []


def test_a_glossary_link_counts_as_an_occurrence_of_its_term() -> None:
    scan = gl.scan_markdown("[first token](../docs/glossary.md#ttft), then TTFT.", TERMS)
    assert [(o.anchor, o.linked) for o in scan.occurrences] == [("ttft", True), ("ttft", False)]
    assert [(link.path, link.anchor) for link in scan.links] == [("../docs/glossary.md", "ttft")]


def test_apply_edits_works_from_the_end() -> None:
    assert gl.apply_edits("a TTFT and KV cache", [(2, 6, "[TTFT](g#ttft)"), (11, 19, "[KV cache](g#kv-cache)")]) == (
        "a [TTFT](g#ttft) and [KV cache](g#kv-cache)"
    )


# ---- Checking and fixing a notebook ----


def _repo(tmp_path: Path, cells: list[str], where: str = "notebooks/n.ipynb") -> tuple[Path, Path]:
    glossary = tmp_path / "docs" / "glossary.md"
    glossary.parent.mkdir(parents=True)
    glossary.write_text(TEXT, encoding="utf-8")
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    book = nbformat.v4.new_notebook()
    book.cells = [
        nbformat.v4.new_code_cell(source) if source.startswith("code:") else nbformat.v4.new_markdown_cell(source)
        for source in cells
    ]
    nbformat.write(book, path)
    return path, glossary


def _sources(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells]


def test_fix_links_each_term_once_at_its_first_use_and_is_then_clean(tmp_path: Path) -> None:
    path, glossary = _repo(
        tmp_path,
        [
            "# 05 · TTFT\n\n**Time:** TTFT minutes.\n\nWatch TTFT and the KV cache.",
            "code: ttft = 'TTFT'",
            "TTFT again, and the time to first token; the KV-cache too.",
        ],
    )
    kinds = [p.kind for p in gl.check_notebook(path, TERMS, glossary)]
    assert kinds == ["not linked on first use", "not linked on first use"]
    result = gl.fix_notebook(path, TERMS, glossary)
    assert (result.inserted, result.unlinked, result.left) == (2, 0, [])
    first, code, later = _sources(path)
    assert first.endswith("Watch [TTFT](../docs/glossary.md#ttft) and the [KV cache](../docs/glossary.md#kv-cache).")
    assert first.startswith("# 05 · TTFT\n\n**Time:** TTFT minutes.")  # heading and time line untouched
    assert code == "code: ttft = 'TTFT'" and "glossary" not in later
    assert gl.check_notebook(path, TERMS, glossary) == []
    assert gl.fix_notebook(path, TERMS, glossary).inserted == 0


def test_fix_moves_a_late_link_to_the_first_use_and_corrects_paths(tmp_path: Path) -> None:
    path, glossary = _repo(
        tmp_path,
        [
            "First TTFT, then [TTFT](../docs/glossary.md#ttft).",
            "A [KV cache](docs/glossary.md#kv-cache) and [gone](../docs/glossary.md#no-such-term).",
        ],
        where="labs/deep/lab.ipynb",
    )
    result = gl.fix_notebook(path, TERMS, glossary)
    assert (result.inserted, result.unlinked, result.repathed) == (1, 1, 1)
    assert [p.kind for p in result.left] == ["no such term"]  # a person chooses the term
    first, second = _sources(path)
    assert first == "First [TTFT](../../docs/glossary.md#ttft), then TTFT."
    assert second.startswith("A [KV cache](../../docs/glossary.md#kv-cache) and [gone](")
    assert [p.kind for p in gl.check_notebook(path, TERMS, glossary)] == ["no such term"]


def test_notebook_paths_are_the_notebooks_and_every_lab(tmp_path: Path) -> None:
    for rel in ("notebooks/01_a.ipynb", "labs/lab01_b.ipynb", "labs/extra/lab10_c.ipynb", "docs/x.ipynb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    found = [p.relative_to(tmp_path).as_posix() for p in gl.notebook_paths(tmp_path)]
    assert found == ["labs/extra/lab10_c.ipynb", "labs/lab01_b.ipynb", "notebooks/01_a.ipynb"]
