"""The claims ledger: every claim of the seed document, its status, the cell that shows it, its evidence.

Why one ledger: the kit exists to reproduce or correct one document, and its claims are quoted in eight
notebooks. Quoted separately they drift: a renamed cell, a retyped number, a claim nobody answers. Here
each claim is one entry of ``data/seed/claims.yaml``, and this module

- validates the file (:func:`load_claims`, with the entry and field named in the error);
- resolves each piece of evidence into the figure to show (:func:`build`): a key of a notebook's
  results (this run's, else the shipped reference copy, labelled as such), a citation, or a figure
  computed from the seed itself, the kit's data files and manifests (:mod:`servelab.course.seed_figures`
  holds those computations); nothing is typed by hand;
- checks the file against the seed, the notebooks and the results (:func:`missing_cells`,
  :func:`table_coverage_problems`, :func:`originals_not_in_seed`, :func:`evidence_problems`), so a test
  fails when a claim loses its cell, its source text or its figure;
- renders it: a DataFrame, a markdown file (:func:`write_markdown`), counts per status.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nbformat
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from servelab import results
from servelab.course import seed
from servelab.course.seed_figures import COMPUTED, Context, Missing, Value, lookup, segments, short_label
from servelab.errors import ServelabError
from servelab.paths import data_path, repo_root

Status = Literal["reproduced", "corrected", "cited", "not-reproducible"]
Kind = Literal["engine-table", "optimization-table", "benchmark-table", "manifest", "alert", "cost", "practice"]
STATUSES: tuple[str, ...] = ("reproduced", "corrected", "cited", "not-reproducible")
TABLE_KINDS: dict[str, int] = {
    "engine-table": seed.ENGINE_TABLE,
    "optimization-table": seed.OPTIMIZATION_TABLE,
    "benchmark-table": seed.BENCHMARK_TABLE,
}
"""Which of ``seed.tables()`` a table claim's ``cells`` point into."""
FOOTER = "footer"
CITED_DATA_FILES = (("engines", "landscape.yaml"), ("pricing", "gpu_prices.yaml"), ("reference", "hardware.yaml"))
"""Data files whose URLs a claim may cite without listing them again under ``sources:``."""


# ---- The file ----


class TableCell(BaseModel):
    """One cell of a seed table: ``row`` is the row's first cell, ``column`` the Chinese header."""

    model_config = ConfigDict(extra="forbid")
    row: str
    column: str


class ShownIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notebook: str = Field(pattern=r"^(\d\d_|lab\d\d_)[a-z0-9_]+$")
    cell: str = Field(min_length=1)


class Evidence(BaseModel):
    """Exactly one of: a results key ``"<notebook>:<path>"``, a citation, a computed figure."""

    model_config = ConfigDict(extra="forbid")
    result: str | None = Field(default=None, pattern=r"^[0-9a-z_]+:.+$")
    cite: str | None = None
    computed: str | None = None
    arg: str | None = None
    format: str = "{}"
    label: str = ""

    @model_validator(mode="after")
    def _one_kind(self) -> Evidence:
        given = [k for k in ("result", "cite", "computed") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of result, cite, computed (got {given or 'none'})")
        if self.computed is not None and self.computed not in COMPUTED:
            raise ValueError(f"unknown computed figure {self.computed!r}; known: {', '.join(sorted(COMPUTED))}")
        return self


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    section: str
    kind: Kind
    cells: list[TableCell] = []
    original: str = Field(min_length=1)
    english: str = Field(min_length=1)
    status: Status
    why: str = Field(min_length=20)
    shown_in: ShownIn
    evidence: list[Evidence] = Field(min_length=1)

    @model_validator(mode="after")
    def _cells_for_tables(self) -> Claim:
        if (self.kind in TABLE_KINDS) != bool(self.cells):
            raise ValueError("table claims (and only they) locate their cells under `cells`")
        return self


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://")
    title: str


class ClaimsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[Source] = []
    claims: list[Claim] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> ClaimsFile:
        seen: set[str] = set()
        for claim in self.claims:
            if claim.id in seen:
                raise ValueError(f"claim id {claim.id!r} is used twice: ids are stable and unique")
            seen.add(claim.id)
        return self


def claims_path() -> Path:
    return data_path("seed", "claims.yaml")


def load_claims(path: Path | None = None) -> ClaimsFile:
    """Read and validate the claims file; an invalid entry is named by its id and field."""
    path = path or claims_path()
    if not path.is_file():
        raise ServelabError(f"No claims file at {path}.", "restore data/seed/claims.yaml (git checkout data/seed)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ServelabError(f"{path} is not valid YAML: {err}", "fix the line named above") from None
    try:
        return ClaimsFile.model_validate(raw)
    except ValidationError as err:
        claims = raw.get("claims", []) if isinstance(raw, dict) else []
        problems = []
        for e in err.errors():
            loc = list(e["loc"])
            where = ".".join(map(str, loc))
            if len(loc) > 1 and loc[0] == "claims" and isinstance(loc[1], int) and loc[1] < len(claims):
                where += f" (id {claims[loc[1]].get('id', '?')!r})"
            problems.append(f"{where}: {e['msg']}")
        raise ServelabError(
            f"{path} is not a valid claims file: " + "; ".join(problems),
            "fix the entries named (the header comment of the file lists every field)",
        ) from None


# ---- Looking things up: notebooks ----


def notebook_path(stem: str, root: Path | None = None) -> Path:
    """``notebooks/<stem>.ipynb`` or ``labs/<stem>.ipynb`` under ``root`` (the checkout by default)."""
    root = root or repo_root()
    for folder in ("notebooks", "labs"):
        if (candidate := root / folder / f"{stem}.ipynb").is_file():
            return candidate
    raise ServelabError(f"No notebook {stem!r} under {root}/notebooks or {root}/labs.", "fix shown_in.notebook")


@functools.cache
def _read_notebook(path: Path, mtime: float) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _notebook(stem: str, root: Path | None = None) -> nbformat.NotebookNode:
    path = notebook_path(stem, root)
    return _read_notebook(path, path.stat().st_mtime)


def cell_ids(stem: str, root: Path | None = None) -> set[str]:
    return {str(cell.get("id")) for cell in _notebook(stem, root).cells}


def recorded_keys(stem: str, root: Path | None = None) -> set[str]:
    """Top-level keys a notebook writes with ``results.record``/``results.reset`` (read from its code)."""
    keys: set[str] = set()
    for cell in _notebook(stem, root).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("record", "reset")
            ):
                keys |= {k.arg for k in node.keywords if k.arg}
    return keys


# ---- Resolving evidence ----


def _format(fmt: str, value: Any) -> str:
    try:
        return fmt.format(value)
    except (ValueError, TypeError, IndexError, KeyError):
        return str(value)


def resolve(evidence: Evidence, ctx: Context, sources: dict[str, str]) -> Value:
    """The figure or citation one piece of evidence stands for; errors name what no longer resolves."""
    if evidence.cite is not None:
        return Value(evidence.cite, sources.get(evidence.cite, "cited"))
    if evidence.computed is not None:
        try:
            return COMPUTED[evidence.computed](ctx, evidence.arg)
        except Missing as missing:
            return Value("not measured yet", f"run notebooks/{missing.notebook}.ipynb", missing=True)
    assert evidence.result is not None
    notebook, path = evidence.result.split(":", 1)
    try:
        loaded = ctx.loaded(notebook)
    except Missing:
        return Value("not measured yet", f"run notebooks/{notebook}.ipynb", missing=True)
    return Value(_format(evidence.format, lookup(loaded.data, path)), short_label(loaded))


# ---- Checks against the seed, the notebooks and the results ----


def missing_cells(claims: ClaimsFile, root: Path | None = None) -> list[str]:
    """Claims whose ``shown_in`` notebook or cell does not exist (under ``root``, the checkout by default)."""
    problems = []
    for claim in claims.claims:
        try:
            ids = cell_ids(claim.shown_in.notebook, root)
        except ServelabError as err:
            problems.append(f"{claim.id}: {err.problem}")
            continue
        if claim.shown_in.cell not in ids:
            problems.append(f"{claim.id}: no cell {claim.shown_in.cell!r} in {claim.shown_in.notebook}")
    return problems


def _plain_seed_text() -> str:
    return seed.text().replace("**", "")


def originals_not_in_seed(claims: ClaimsFile) -> list[str]:
    """Claims whose ``original`` (each ``" | "``-joined part) is not in the seed as written."""
    text = _plain_seed_text()
    return [
        f"{c.id}: {part!r} is not in data/seed/seed.zh.md"
        for c in claims.claims
        for part in c.original.split(" | ")
        if part not in text
    ]


def section_problems(claims: ClaimsFile) -> list[str]:
    headings = {m.group(1).strip() for m in re.finditer(r"^#+\s+(.+)$", _plain_seed_text(), re.M)} | {FOOTER}
    return [
        f"{c.id}: section {c.section!r} is not a heading of the seed"
        for c in claims.claims
        if c.section not in headings
    ]


def table_coverage_problems(claims: ClaimsFile) -> list[str]:
    """Every cell of the seed's three tables is located by some claim, each located cell exists, its text
    is in that claim's ``original`` and its English (seed.en.md) in the claim's ``english``."""
    zh, en = seed.tables("zh"), seed.tables("en")
    problems, covered = [], set()
    for claim in claims.claims:
        if claim.kind not in TABLE_KINDS:
            continue
        index = TABLE_KINDS[claim.kind]
        rows = {next(iter(r.values())): (i, r) for i, r in enumerate(zh[index])}
        for cell in claim.cells:
            if cell.row not in rows or cell.column not in rows[cell.row][1]:
                problems.append(f"{claim.id}: the seed's {claim.kind} has no cell {cell.row!r} / {cell.column!r}")
                continue
            i, row = rows[cell.row]
            text = row[cell.column]
            english = list(en[index][i].values())[list(row).index(cell.column)]
            if text not in claim.original:
                problems.append(f"{claim.id}: original does not quote the cell {text!r}")
            if english not in claim.english:
                problems.append(f"{claim.id}: english does not contain the translation {english!r}")
            covered.add((index, cell.row, cell.column))
    for index, table in enumerate(zh):
        kind = next(k for k, v in TABLE_KINDS.items() if v == index)
        for row in table:
            key, *columns = list(row)
            for column in columns:
                if (index, row[key], column) not in covered:
                    problems.append(
                        f"no claim covers the seed's {kind} cell {row[key]!r} / {column!r} ({row[column]!r})"
                    )
    return problems


def _source_urls(claims: ClaimsFile) -> dict[str, str]:
    return {s.url: s.title for s in claims.sources}


def _cite_ok(cite: str, claims: ClaimsFile) -> bool:
    if cite.startswith(("http://", "https://")):
        listed = "".join(data_path(*parts).read_text(encoding="utf-8") for parts in CITED_DATA_FILES)
        return cite in _source_urls(claims) or cite in listed
    return (repo_root() / cite).exists()


def evidence_problems(claims: ClaimsFile) -> list[str]:
    """Evidence that does not resolve against the shipped reference results (a notebook without a
    reference copy: against the keys its code records), a citation that is not a file of the repository
    or a listed URL, a computed figure that fails."""
    ctx = Context(reference_only=True)
    problems = []
    for claim in claims.claims:
        for ev in claim.evidence:
            where = f"{claim.id}: {ev.result or ev.cite or ev.computed}"
            if ev.cite is not None and not _cite_ok(ev.cite, claims):
                problems.append(f"{where}: not a file in the repository nor a URL listed under sources: or in data/")
                continue
            if ev.result is not None and not (results.reference_dir() / f"{ev.result.split(':')[0]}.json").is_file():
                notebook, path = ev.result.split(":", 1)
                try:
                    if segments(path)[0] not in recorded_keys(notebook):
                        problems.append(f"{where}: {notebook} records no key {segments(path)[0]!r}")
                except ServelabError as err:
                    problems.append(f"{where}: {err.problem}")
                continue
            try:
                value = resolve(ev, ctx, {})
                if value.missing and value.source.startswith("run notebooks/"):
                    problems.append(f"{where}: needs results that have no reference copy ({value.source})")
            except (ServelabError, KeyError, StopIteration) as err:
                problems.append(f"{where}: {getattr(err, 'problem', err)}")
    return problems


# ---- The ledger ----


@dataclass(frozen=True)
class Row:
    claim: Claim
    values: list[tuple[Evidence, Value]]

    @property
    def shown_in(self) -> str:
        path = notebook_path(self.claim.shown_in.notebook)
        return f"{path.parent.name}/{path.name} · cell {self.claim.shown_in.cell}"

    @property
    def evidence(self) -> str:
        return "; ".join(
            f"{ev.label + ': ' if ev.label else ''}{value.text} [{value.source}]" for ev, value in self.values
        )


@dataclass
class Ledger:
    """Every claim with its evidence resolved; ``sources`` says which results each figure came from."""

    rows: list[Row]
    sources: dict[str, str] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "id": r.claim.id,
                    "section": r.claim.section,
                    "kind": r.claim.kind,
                    "status": r.claim.status,
                    "seed (original)": r.claim.original,
                    "english": r.claim.english,
                    "evidence": r.evidence,
                    "shown in": r.shown_in,
                    "why": r.claim.why,
                }
                for r in self.rows
            ]
        )

    def counts(self) -> dict[str, int]:
        """Claims per status, every status present (zero included), in the order of STATUSES."""
        return {s: sum(r.claim.status == s for r in self.rows) for s in STATUSES}

    def missing(self) -> list[str]:
        """Evidence that needs results not there yet: ``"<claim id>: <what to run>"``."""
        return [f"{r.claim.id}: {v.source}" for r in self.rows for _, v in r.values if v.missing]

    def markdown(self) -> str:
        lines = [
            "# The seed's claims, one ledger",
            "",
            "Generated by `servelab.course.ledger.write_markdown()` (notebook 09) from `data/seed/claims.yaml`,"
            " the seed (`data/seed/seed.zh.md`) and the results below: do not edit by hand, rerun notebook 09.",
            "",
            "Generated from these results:",
            "",
            *[f"- `{nb}`: {label}" for nb, label in sorted(self.sources.items())],
            "",
            "| status | claims |",
            "|---|---|",
            *[f"| {status} | {n} |" for status, n in self.counts().items()],
            f"| **all** | **{len(self.rows)}** |",
        ]
        for section in dict.fromkeys(r.claim.section for r in self.rows):
            lines += ["", f"## {section}", "", "| id | seed | English | status | evidence | shown in | why |"]
            lines.append("|---|---|---|---|---|---|---|")
            for r in (r for r in self.rows if r.claim.section == section):
                cells = [f"`{r.claim.id}`", r.claim.original, r.claim.english, f"**{r.claim.status}**"]
                cells += [r.evidence, r.shown_in, r.claim.why]
                lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>").strip()


def build(claims: ClaimsFile | None = None, reference_only: bool = False) -> Ledger:
    """Resolve every claim's evidence: this run's results where they exist, else the reference copies."""
    claims = claims or load_claims()
    ctx = Context(reference_only)
    sources = _source_urls(claims)
    rows = [Row(c, [(ev, _resolve_or_say_why(ev, ctx, sources)) for ev in c.evidence]) for c in claims.claims]
    return Ledger(rows, ctx.labels())


def _resolve_or_say_why(evidence: Evidence, ctx: Context, sources: dict[str, str]) -> Value:
    """In a notebook, a figure that does not resolve (a partial results file of a notebook that failed
    half-way) is shown as such instead of stopping the ledger; tests/unit/test_ledger.py keeps the shipped
    file resolving (:func:`evidence_problems`)."""
    try:
        return resolve(evidence, ctx, sources)
    except ServelabError as err:
        return Value(f"does not resolve: {err.problem}", evidence.result or evidence.computed or "", missing=True)


def write_markdown(path: Path | str, ledger: Ledger | None = None) -> Path:
    """Write the ledger as markdown (docs/claims-ledger.md in the kit); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((ledger or build()).markdown(), encoding="utf-8")
    return path
