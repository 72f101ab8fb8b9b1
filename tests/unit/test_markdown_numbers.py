"""No measured-looking number is typed into a notebook's markdown by hand.

A run's figures change with the machine, so markdown that states one goes stale the day it is written.
Every markdown line (a paragraph line, a list item or a table row) of every notebook and lab is scanned
for figures that look measured: a number with a unit of time, speed, size, bandwidth or money, a
percentage, or a multiplier. Such a figure is accepted only when the line says where it comes from:

- **cited**: the line carries a Markdown link to an ``http(s)`` page, or a marker ``[source: data/...]``
  naming a file that exists under ``data/``;
- **seed quote**: the figure sits inside a quotation (``"..."`` or ``“...”``) whose text appears verbatim
  in the seed document (``data/seed/seed.en.md`` or ``seed.zh.md``).

Everything else belongs in a code cell that computes or prints it from the run (for example a final cell
rendering the summary as Markdown from ``results/*.json``). Inline code and fenced code are not scanned:
a parameter such as ``slo_tpot_s = 0.07`` is a setting the learner types, not a result. The opening's
time line (``**Time:**``, or ``**Learner time:**`` / ``**Machine time:**`` in the labs) is the estimate
every notebook must state, and is not scanned either.

The notebooks are read as JSON; nothing runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("labs/**/*.ipynb")])
SEED_FILES = (ROOT / "data" / "seed" / "seed.en.md", ROOT / "data" / "seed" / "seed.zh.md")

_NUMBER = r"\d[\d,]*(?:\.\d+)?"
_UNIT = (
    r"(?:tok(?:ens)?\s*/\s*s|req(?:uests)?\s*/\s*s|T?FLOP/s|TFLOPS|[KMGT]i?B(?:/s)?|"
    r"ms|µs|s|sec(?:ond)?s?|min(?:ute)?s?|h(?:ours?)?|%)"
)
# A number (or a range like 5–10) followed by a unit; a multiplier written against its number (4×, 14.6x,
# ×10, x4: "2 × layers" is a formula, not a figure); or a dollar amount.
MEASURED = re.compile(
    rf"(?<![\w.])(?:{_NUMBER}(?:\s*[-–]\s*{_NUMBER})?(?:\s*{_UNIT}|[×x])(?![\w/])|[×x]{_NUMBER}\b|\$\s*{_NUMBER})",
    re.IGNORECASE,
)
LINK = re.compile(r"\[[^\]]+\]\(https?://[^)\s]+\)")
SOURCE_MARKER = re.compile(r"\[source:\s*(data/[^\]\s]+)\]")
QUOTE = re.compile(r"\"([^\"]+)\"|“([^”]+)”")
INLINE_CODE = re.compile(r"`[^`]*`")
TIME_LINES = ("**Time:**", "**Learner time:**", "**Machine time:**")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """One figure a markdown line states without saying where it comes from."""

    cell: int
    figure: str
    line: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.figure!r} in: {self.line.strip()[:160]}"


def _normalize(text: str) -> str:
    return re.sub(r"[\s*_|]+", " ", text).strip().lower()


@cache
def _seed_text() -> str:
    return "\n".join(_normalize(p.read_text(encoding="utf-8")) for p in SEED_FILES)


def _cited(line: str, root: Path) -> bool:
    if LINK.search(line):
        return True
    return any((root / path).is_file() for path in SOURCE_MARKER.findall(line))


def _seed_quote_spans(line: str, seed_text: str) -> list[tuple[int, int]]:
    """Character spans of quotations in ``line`` that the seed document contains word for word."""
    spans = []
    for match in QUOTE.finditer(line):
        quoted = match.group(1) or match.group(2)
        if _normalize(quoted) and _normalize(quoted) in seed_text:
            spans.append(match.span())
    return spans


def scan_markdown(source: str, cell: int = 0, *, root: Path = ROOT, seed_text: str | None = None) -> list[Finding]:
    """The figures in one markdown cell that are neither cited nor quoted from the seed."""
    seed = _seed_text() if seed_text is None else seed_text
    text = FENCE.sub("", source)
    findings = []
    for line in text.splitlines():
        if line.lstrip().startswith(TIME_LINES) or _cited(line, root):
            continue
        bare = INLINE_CODE.sub(lambda m: " " * len(m.group()), line)
        quoted = _seed_quote_spans(bare, seed)
        for match in MEASURED.finditer(bare):
            if not any(start <= match.start() and match.end() <= end for start, end in quoted):
                findings.append(Finding(cell, match.group().strip(), line))
    return findings


def scan_notebook(path: Path) -> list[Finding]:
    """Every unsourced figure in a notebook's markdown cells."""
    nb = nbformat.read(path, as_version=4)
    return [
        finding
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "markdown"
        for finding in scan_markdown(cell.source, i)
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_states_no_unsourced_figure(path: Path) -> None:
    findings = scan_notebook(path)
    assert not findings, (
        "markdown states figures that look measured: generate them in a code cell from the run, or cite them "
        "([link](https://...) or [source: data/...]) or quote the seed:\n" + "\n".join(map(str, findings))
    )


# The scanner itself: it must catch what it is there to catch, and let through what the rules allow.

SEED = _normalize('The seed says "10 A100 = $400/h" and more.')


@pytest.mark.parametrize(
    "line",
    [
        "vLLM served 42.5 tok/s on this machine.",
        "TTFT p99 was 850 ms.",
        "The first request took 3.2 s.",
        "Bandwidth: 21 GB/s.",
        "Quantization saved 75% of the file.",
        "Batching is about ten times, 14.6× here.",
        "The seed's batching gives x10.",
        "An A100 costs $1.29 per hour.",
        "People read 5–10 tokens/s.",
        "float32 was ~4x faster.",
        "The model needs 270 MiB.",
    ],
)
def test_scanner_flags_a_planted_measured_figure(line: str) -> None:
    assert scan_markdown(f"## Results\n\n{line}\n", seed_text=SEED), line


@pytest.mark.parametrize(
    "line",
    [
        "See notebook 05, section 2, for the knee.",
        "Kubernetes 1.25 and 1.32 are validated.",
        "Set `slo_tpot_s = 0.07` and re-run.",
        "The A100 price is [cited by AWS](https://aws.amazon.com/ec2/pricing/): $3.67 per hour.",
        "The A100 price is $3.67 per hour [source: data/pricing/gpu_prices.yaml].",
        'The seed claims "10 A100 = $400/h" without a workload.',
        "**Time:** about 3 minutes on 2 CPU cores.",
        "**Learner time:** 20–30 minutes. **Machine time:** a few seconds.",
        "KV bytes per token = 2 × layers × kv_heads × head_dim × bytes.",
        "```\nlatency 12 ms\n```",
    ],
)
def test_scanner_allows_what_is_cited_quoted_or_not_a_figure(line: str) -> None:
    assert not scan_markdown(line, seed_text=SEED), line


def test_source_marker_must_name_an_existing_data_file() -> None:
    assert scan_markdown("It costs $3.67 per hour [source: data/pricing/no_such_file.yaml].", seed_text=SEED)


def test_a_quote_that_is_not_in_the_seed_is_not_a_seed_quote() -> None:
    assert scan_markdown('Someone said "vLLM does 900 tok/s" once.', seed_text=SEED)


def test_scanner_flags_a_planted_cell_in_a_notebook(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A notebook\n\nNo figures here."),
        nbformat.v4.new_markdown_cell("## Summary\n- vLLM reached 14.6× the single-user throughput."),
    ]
    path = tmp_path / "planted.ipynb"
    nbformat.write(nb, path)
    findings = scan_notebook(path)
    assert [(f.cell, f.figure) for f in findings] == [(1, "14.6×")]
