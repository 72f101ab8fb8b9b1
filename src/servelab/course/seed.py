"""The seed document, read as data: its tables and its Kubernetes objects come from the text itself.

The kit was built from one Chinese tutorial page (``data/seed/seed.zh.md``, verbatim; an English
translation sits beside it). Notebooks and labs that show "what the seed says" read it here instead of
retyping it, so a quoted number or manifest cannot drift from its source.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from servelab.errors import ServelabError
from servelab.paths import data_path

_FENCE = re.compile(r"```yaml\n(.*?)```", re.S)
ENGINE_TABLE, OPTIMIZATION_TABLE, BENCHMARK_TABLE = 0, 1, 2  # the seed's three tables, in document order


def text(language: str = "zh") -> str:
    """The document: ``"zh"`` verbatim, ``"en"`` the kit's translation."""
    path = data_path("seed", f"seed.{language}.md")
    if not path.is_file():
        raise ServelabError(f"{path} is missing.", "restore data/seed/ from the repository (git checkout data/seed)")
    return path.read_text(encoding="utf-8")


def yaml_blocks(language: str = "zh") -> list[str]:
    """Every fenced YAML block, in document order, exactly as written."""
    return _FENCE.findall(text(language))


def manifest_text() -> str:
    """The seed's own Deployment and HPA (its section 2), verbatim."""
    for block in yaml_blocks():
        kinds = {doc.get("kind") for doc in yaml.safe_load_all(block) if isinstance(doc, dict)}
        if "Deployment" in kinds:
            return block
    raise ServelabError("The seed document has no YAML block with a Deployment.", "restore data/seed/seed.zh.md")


def rules_text() -> str:
    """The seed's PrometheusRule (its section 5), verbatim."""
    for block in yaml_blocks():
        if "kind: PrometheusRule" in block:
            return block
    raise ServelabError("The seed document has no PrometheusRule block.", "restore data/seed/seed.zh.md")


def tables(language: str = "zh") -> list[list[dict[str, str]]]:
    """Every markdown table, in document order: one dict per row, keyed by the header cells."""
    found: list[list[dict[str, str]]] = []
    lines = text(language).splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[-| ]+\|", lines[i + 1].strip()):
            header = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]), strict=True)))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def _cells(line: str) -> list[str]:
    return [cell.strip().strip("*").strip() for cell in line.strip().strip("|").split("|")]


def number(cell: str) -> float:
    """The first number in a table cell ("4800 tok/s" → 4800, "$0.12" → 0.12)."""
    match = re.search(r"\d+(?:\.\d+)?", cell)
    if not match:
        raise ServelabError(f"no number in the seed's cell {cell!r}", "restore data/seed/seed.zh.md")
    return float(match.group(0))


def benchmark_rows() -> list[dict[str, Any]]:
    """The seed's A100 benchmark table (its section 4) as numbers: one dict per configuration."""
    return [
        {
            "configuration": row["配置"],
            "throughput_tok_s": number(row["吞吐量"]),
            "p99_latency_ms": number(row["P99延迟"]),
            "usd_per_mtok": number(row["成本/1M tokens"]),
        }
        for row in tables()[BENCHMARK_TABLE]
    ]
