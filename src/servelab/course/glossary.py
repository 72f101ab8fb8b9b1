"""The course glossary (``docs/glossary.md``) and the links to it that every notebook and lab carries.

Why: the notebooks use a hundred terms of the trade (TTFT, PagedAttention, a ``for:``, an HPA), and a
learner who meets one undefined stops reading. Each term is defined once, in the glossary, and each
notebook links it where the term first appears in its text, once: a definition one click away, without
a page of links. Kept by hand, such links rot within a week: a new paragraph uses a term before its
link, an anchor is renamed, a lab is added without any. This module makes them checkable and fixable:

- :func:`parse_glossary` reads the glossary into :class:`Term` objects: each ``##`` heading with an
  explicit ``<a id="...">`` anchor on the line above it, and its ``**Also:**`` spellings;
- :func:`check_notebook` reports, for one notebook, the terms whose first use is not a link, terms linked
  more than once, and glossary links whose path or anchor is wrong;
- :func:`fix_notebook` inserts the missing first-use links (through nbformat, markdown cells only),
  removes repeated ones and corrects a link's relative path; ``servelab course glossary [--fix]``
  runs both over every notebook and lab.

The matching rules, which the unit tests pin down: a term matches as a whole word (never inside a word or
a hyphenated compound), ignoring case, with an optional plural ``s``; hyphens and spaces inside a term are
interchangeable ("KV-cache" is "KV cache"). An ``**Also:**`` item in backticks matches an inline code
span with exactly that content. Nothing is matched in headings, fenced or inline code (except those exact
code spans), existing links, URLs, HTML, math, quotations (the seed is quoted verbatim, and
``tests/unit/test_markdown_numbers.py`` checks the quote), ``[source: ...]`` markers, table header rows,
or the opening's time line (the facilitator guide parses it). When two terms overlap ("prefix cache"
and "KV cache" never do, "quantization level" and "quantization" do), the longer spelling wins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import nbformat

from servelab.paths import repo_root

GLOSSARY = Path("docs") / "glossary.md"
FIX_COMMAND = "servelab course glossary --fix"
TIME_LINES = ("**Time:**", "**Learner time:**", "**Machine time:**")
"""Openings' time lines: the facilitator guide parses them, so no link goes there."""

_ANCHOR_LINE = re.compile(r'^<a id="([^"]+)"></a>\s*$')
_HEADING = re.compile(r"^##\s+(.+?)\s*#*\s*$")
_ALSO = re.compile(r"\*\*Also:\*\*\s*(.*?)\s*(?:·|$)")
_TAUGHT = re.compile(r"\*\*Taught in:\*\*\s*(.*)$")

_FENCE = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.MULTILINE | re.DOTALL)
_ATX_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]|$)")
_TABLE_SEPARATOR = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(
    r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"  # [text], one level of nested brackets
    r"\(\s*(<[^>\n]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+\"[^\"\n]*\")?\s*\)"  # (url "title")
)
_OTHER_PROTECTED = (
    re.compile(r"<!--.*?-->", re.DOTALL),  # HTML comments
    re.compile(r"<https?://[^>\s]+>"),  # autolinks
    re.compile(r"https?://[^\s)\]>]+"),  # bare URLs
    re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>\n]*)?/?>"),  # HTML tags
    re.compile(r"\[source:[^\]\n]*\]"),  # the numbers test's source markers
    re.compile(r"\$\$.*?\$\$", re.DOTALL),  # display math
    re.compile(r"\$(?=[^\s$])[^$\n]*?(?<=[^\s$])\$(?!\d)"),  # inline math, pandoc's rule ($5 and $6 is not math)
    re.compile(r"\"[^\"\n]*\""),  # quotations
    re.compile(r"“[^”\n]*”"),
)
_MASK = "\0"


@dataclass(frozen=True)
class Term:
    """One glossary entry: its heading, anchor, spellings and definition.

    ``aliases`` are the prose spellings (the heading's text first, unless it holds code or a parenthesis,
    as in "Slot (llama-server)"), matched as whole
    words ignoring case; ``code_aliases`` match an inline code span exactly (```--max-num-seqs```).
    """

    name: str
    anchor: str
    aliases: tuple[str, ...]
    code_aliases: tuple[str, ...]
    definition: str
    taught_in: str

    def link(self, text: str, glossary_url: str) -> str:
        """``text`` as a Markdown link to this term's entry."""
        return f"[{text}]({glossary_url}#{self.anchor})"


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and MyST's ``myst_heading_anchors``) gives a heading: lowercase, HTML and code
    marks dropped, punctuation other than ``-`` and ``_`` removed, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _split_also(text: str) -> list[str]:
    """The comma-separated items of an ``**Also:**`` line, commas inside backticks kept."""
    items, current, in_code = [], "", False
    for char in text:
        if char == "`":
            in_code = not in_code
        if char == "," and not in_code:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    return [item for item in items if item]


def parse_glossary(text: str) -> list[Term]:
    """Every term of the glossary's Markdown, in file order.

    A term is a ``## Heading`` whose previous non-blank line is ``<a id="anchor"></a>``; headings without
    one (the index) are not terms. Its body runs to the next anchor line or ``##`` heading: a line with
    ``**Also:** a, b, `code` · **Taught in:** ...`` (the Also part optional), then the definition.
    """
    lines = text.splitlines()
    terms: list[Term] = []
    anchor: str | None = None
    i = 0
    while i < len(lines):
        found, heading = _ANCHOR_LINE.match(lines[i]), _HEADING.match(lines[i])
        i += 1
        if found:
            anchor = found.group(1)
        elif heading and anchor is not None:
            start = i
            while i < len(lines) and not _ANCHOR_LINE.match(lines[i]) and not _HEADING.match(lines[i]):
                i += 1
            terms.append(_term(heading.group(1), anchor, lines[start:i]))
            anchor = None
        elif heading or lines[i - 1].strip():
            anchor = None
    return terms


def _term(heading: str, anchor: str, body: Sequence[str]) -> Term:
    """One entry from its heading, anchor and the lines under the heading."""
    meta_at = next((n for n, line in enumerate(body) if line.startswith(("**Also:**", "**Taught in:**"))), None)
    meta = body[meta_at] if meta_at is not None else ""
    also = _ALSO.match(meta)
    taught = _TAUGHT.search(meta)
    items = _split_also(also.group(1)) if also else []
    aliases = [heading] if not re.search(r"[`()]", heading) else []
    aliases += [item for item in items if not item.startswith("`")]
    code = tuple(item.strip("`") for item in items if item.startswith("`") and item.endswith("`"))
    definition = "\n".join(line for n, line in enumerate(body) if n != meta_at).strip()
    return Term(heading, anchor, tuple(dict.fromkeys(aliases)), code, definition, taught.group(1) if taught else "")


def glossary_path(root: Path | None = None) -> Path:
    """The glossary file of the checkout (or of ``root``)."""
    return (root or repo_root()) / GLOSSARY


@cache
def _load(path: Path, mtime_ns: int) -> tuple[Term, ...]:
    return tuple(parse_glossary(path.read_text(encoding="utf-8")))


def load_terms(path: Path | None = None) -> tuple[Term, ...]:
    """The terms of the glossary at ``path`` (default: the checkout's), re-read when the file changes."""
    path = (path or glossary_path()).resolve()
    return _load(path, path.stat().st_mtime_ns)


def glossary_problems(text: str, root: Path | None = None) -> list[str]:
    """What is wrong with the glossary itself: an anchor that is not its heading's GitHub anchor, a term
    without a definition or a "Taught in", a spelling two terms claim, a broken link inside the file, a term
    missing from the index, or entries out of alphabetical order."""
    terms = parse_glossary(text)
    problems: list[str] = []
    anchors = [t.anchor for t in terms]
    for term in terms:
        if term.anchor != github_anchor(term.name):
            problems.append(f"{term.name}: anchor {term.anchor!r} is not the heading's {github_anchor(term.name)!r}")
        if len(re.findall(r"[.!?](?:\s|$)", term.definition)) < 1 or len(term.definition) < 80:
            problems.append(f"{term.name}: no definition (a few sentences under the heading)")
        if not term.taught_in:
            problems.append(f"{term.name}: no '**Taught in:**' (which notebook teaches it)")
    if len(set(anchors)) != len(anchors):
        problems.append(f"anchors used twice: {sorted({a for a in anchors if anchors.count(a) > 1})}")
    if anchors != sorted(anchors):
        problems.append("terms are not in alphabetical order of their anchors")
    owners: dict[str, str] = {}
    for term in terms:
        for spelling in [_normal(a) for a in term.aliases] + [f"`{c}`" for c in term.code_aliases]:
            if spelling in owners and owners[spelling] != term.anchor:
                problems.append(f"{spelling!r} is a spelling of both {owners[spelling]} and {term.anchor}")
            owners[spelling] = term.anchor
    base = (root or repo_root()) / GLOSSARY.parent
    for match in _LINK.finditer(text):
        url = match.group(2).strip("<>")
        target, _, fragment = url.partition("#")
        if target.startswith(("http://", "https://")):
            continue
        if target and not (base / target).exists():
            problems.append(f"link to {url!r}: no such file")
        if not target and fragment and fragment not in anchors:
            problems.append(f"link to #{fragment}: no such term")
    index = re.split(r"^<a id=", text, maxsplit=1, flags=re.MULTILINE)[0]
    missing = [a for a in anchors if f"(#{a})" not in index]
    if missing:
        problems.append(f"terms missing from the index: {missing}")
    return problems


def _normal(alias: str) -> str:
    return re.sub(r"[\s-]+", " ", alias.strip().lower())


# ---- Matching terms in a notebook's markdown ----


@dataclass(frozen=True)
class Occurrence:
    """A term met in a markdown cell: as plain text (``linked=False``) or as a glossary link to it."""

    cell: int
    start: int
    end: int
    anchor: str
    text: str
    linked: bool
    code: bool = False


@dataclass(frozen=True)
class GlossaryLink:
    """A link to the glossary found in a markdown cell, with its target as written."""

    cell: int
    start: int
    end: int
    text: str
    path: str
    anchor: str


@dataclass
class CellScan:
    """One cell's terms and glossary links, in source order."""

    occurrences: list[Occurrence] = field(default_factory=list)
    links: list[GlossaryLink] = field(default_factory=list)


def _alias_pattern(alias: str) -> re.Pattern[str]:
    """A whole-word, case-insensitive pattern: spaces and hyphens interchangeable, an optional plural s."""
    words = [re.escape(w) for w in re.split(r"[ \t-]+", alias.strip()) if w]
    body = r"(?:[ \t]*-[ \t]*|[ \t]+)".join(words)
    return re.compile(rf"(?<![\w\-.{_MASK}]){body}s?(?!\w)(?!-\w)(?!\.\w)", re.IGNORECASE)


@cache
def _patterns(terms: tuple[Term, ...]) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Every prose spelling's pattern with its term's anchor, longest spelling first."""
    spellings = [(alias, t.anchor) for t in terms for alias in t.aliases]
    spellings.sort(key=lambda pair: -len(pair[0]))
    return tuple((_alias_pattern(alias), anchor) for alias, anchor in spellings)


def _mask(chars: list[str], start: int, end: int) -> None:
    for i in range(start, end):
        if chars[i] != "\n":
            chars[i] = _MASK


def _protect_lines(source: str, chars: list[str]) -> None:
    """Mask headings, the openings' time lines and table header rows (the line above a |---| row)."""
    lines = source.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    for i, line in enumerate(lines):
        header_row = (
            i + 1 < len(lines) and "|" in line and "|" in lines[i + 1] and bool(_TABLE_SEPARATOR.match(lines[i + 1]))
        )
        if _ATX_HEADING.match(line) or line.lstrip().startswith(TIME_LINES) or header_row:
            _mask(chars, offsets[i], offsets[i] + len(line))


def scan_markdown(source: str, terms: Sequence[Term], cell: int = 0, glossary_name: str = GLOSSARY.name) -> CellScan:
    """The terms (plain and linked) and the glossary links of one markdown cell, in source order.

    Plain occurrences are searched only where a link may go (see the module's docstring); a link whose
    target file is named ``glossary_name`` is a glossary link, and counts as an occurrence of the term its
    anchor names.
    """
    terms = tuple(terms)
    by_anchor = {t.anchor: t for t in terms}
    chars = list(source)
    code_hits: list[Occurrence] = []
    links: list[GlossaryLink] = []
    for match in _FENCE.finditer(source):
        _mask(chars, match.start(), match.end())
    _protect_lines(source, chars)
    masked = "".join(chars)
    for match in _CODE_SPAN.finditer(masked):
        content = source[match.start(2) : match.end(2)].strip()
        for term in terms:
            if content in term.code_aliases:
                code_hits.append(Occurrence(cell, match.start(), match.end(), term.anchor, match.group(), False, True))
                break
        _mask(chars, match.start(), match.end())
    masked = "".join(chars)
    link_spans = []
    for match in _LINK.finditer(masked):
        url = source[match.start(2) : match.end(2)].strip("<>")
        target, _, anchor = url.partition("#")
        if Path(target).name == glossary_name and anchor:
            text = source[match.start(1) : match.end(1)]
            links.append(GlossaryLink(cell, match.start(), match.end(), text, target, anchor))
        link_spans.append((match.start(), match.end()))
        _mask(chars, match.start(), match.end())
    code_hits = [h for h in code_hits if not any(start <= h.start < end for start, end in link_spans)]
    masked = "".join(chars)
    for pattern in _OTHER_PROTECTED:
        for match in pattern.finditer(masked):
            _mask(chars, match.start(), match.end())
        masked = "".join(chars)
    prose: list[Occurrence] = []
    for pattern, anchor in _patterns(terms):
        for match in pattern.finditer(masked):
            prose.append(Occurrence(cell, match.start(), match.end(), anchor, match.group(), False))
            _mask(chars, match.start(), match.end())
        masked = "".join(chars)
    linked = [
        Occurrence(cell, link.start, link.end, link.anchor, link.text, True)
        for link in links
        if link.anchor in by_anchor
    ]
    occurrences = sorted([*prose, *code_hits, *linked], key=lambda o: o.start)
    return CellScan(occurrences, links)


# ---- Checking and fixing a notebook ----

Kind = Literal["not linked on first use", "linked again", "no such term", "wrong path"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a notebook's glossary links, where it is and what the term is."""

    path: Path
    cell: int
    kind: Kind
    anchor: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.name} cell {self.cell}: {self.kind}: {self.text!r} (#{self.anchor})"


def _glossary_url(notebook: Path, glossary: Path) -> str:
    """The glossary's path relative to the notebook's folder, as a Markdown link writes it."""
    return Path(os.path.relpath(glossary.resolve(), notebook.resolve().parent)).as_posix()


def scan_notebook(
    path: Path, terms: Sequence[Term] | None = None, glossary: Path | None = None
) -> tuple[list[Problem], dict[int, list[tuple[int, int, str]]]]:
    """What is wrong with one notebook's glossary links, and the edits that fix what can be fixed.

    The edits are ``{cell: [(start, end, replacement), ...]}``: a link around each term's first use, plain
    text for a term's repeated links, the right relative path for a link that points elsewhere. A link to
    an anchor the glossary does not have is reported and left alone: a person must choose the term.
    """
    glossary = glossary or glossary_path()
    terms = tuple(terms if terms is not None else load_terms(glossary))
    by_anchor = {t.anchor: t for t in terms}
    url = _glossary_url(path, glossary)
    book = nbformat.read(path, as_version=4)
    problems: list[Problem] = []
    edits: dict[int, dict[tuple[int, int], str]] = {}
    seen: set[str] = set()
    for index, cell in enumerate(book.cells):
        if cell.cell_type != "markdown":
            continue
        scan = scan_markdown(cell.source, terms, index, glossary.name)
        cell_edits = edits.setdefault(index, {})
        repeated: set[tuple[int, int]] = set()
        for occ in scan.occurrences:
            if occ.anchor in seen:
                if occ.linked:  # a repeated link becomes its text (so its path does not matter)
                    problems.append(Problem(path, index, "linked again", occ.anchor, occ.text))
                    cell_edits[occ.start, occ.end] = occ.text
                    repeated.add((occ.start, occ.end))
                continue
            seen.add(occ.anchor)
            if not occ.linked:
                problems.append(Problem(path, index, "not linked on first use", occ.anchor, occ.text))
                cell_edits[occ.start, occ.end] = by_anchor[occ.anchor].link(occ.text, url)
        for link in scan.links:
            if link.anchor not in by_anchor:
                problems.append(Problem(path, index, "no such term", link.anchor, link.text))
            elif link.path != url and (link.start, link.end) not in repeated:
                problems.append(Problem(path, index, "wrong path", link.anchor, link.text))
                cell_edits[link.start, link.end] = by_anchor[link.anchor].link(link.text, url)
    return problems, {i: [(a, b, r) for (a, b), r in e.items()] for i, e in edits.items() if e}


def check_notebook(path: Path, terms: Sequence[Term] | None = None, glossary: Path | None = None) -> list[Problem]:
    """Every glossary problem of one notebook or lab (empty when each term is linked on first use only)."""
    return scan_notebook(path, terms, glossary)[0]


def apply_edits(source: str, edits: Iterable[tuple[int, int, str]]) -> str:
    """``source`` with each ``(start, end, replacement)`` applied; the spans must not overlap."""
    for start, end, replacement in sorted(edits, reverse=True):
        source = source[:start] + replacement + source[end:]
    return source


@dataclass(frozen=True)
class FixResult:
    """What :func:`fix_notebook` changed in one notebook, and what it could not fix."""

    path: Path
    inserted: int
    unlinked: int
    repathed: int
    left: list[Problem]


def fix_notebook(path: Path, terms: Sequence[Term] | None = None, glossary: Path | None = None) -> FixResult:
    """Insert the missing first-use links, drop repeated ones, fix wrong paths; write the notebook (via
    nbformat, markdown cells only) when anything changed. Outputs and code cells are left as they are."""
    problems, edits = scan_notebook(path, terms, glossary)
    if edits:
        book = nbformat.read(path, as_version=4)
        for index, cell_edits in edits.items():
            book.cells[index].source = apply_edits(book.cells[index].source, cell_edits)
        nbformat.write(book, path)
    count = {kind: sum(p.kind == kind for p in problems) for kind in ("not linked on first use", "linked again")}
    return FixResult(
        path,
        inserted=count["not linked on first use"],
        unlinked=count["linked again"],
        repathed=sum(p.kind == "wrong path" for p in problems),
        left=[p for p in problems if p.kind == "no such term"],
    )


def notebook_paths(root: Path | None = None) -> list[Path]:
    """Every notebook and lab a learner reads (``notebooks/*.ipynb``, ``labs/**/*.ipynb``), in name order."""
    base = root or repo_root()
    return sorted([*base.glob("notebooks/*.ipynb"), *base.glob("labs/**/*.ipynb")])
