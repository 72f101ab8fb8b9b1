"""Notebook 06's exercises: a P95 panel query run on the notebook's live Prometheus, and an inhibition rule
loaded into a real Alertmanager.

Why these two: on call, a latency percentile nobody has drawn yet is the first query one writes by hand,
and the classic mistakes (no ``rate()``, ``le`` dropped from the ``by``, the wrong histogram) are all valid
PromQL that returns something plausible or nothing at all. Only running it on real data tells them apart:
:func:`check_p95_ttft_query` runs the learner's query over the notebook's load and compares every step with
the kit's own P95, and names the mistake by running the classic ones too. An inhibition rule is YAML that
Alertmanager accepts whether or not it ever mutes anything (an ``equal:`` on a label one side lacks never
matches): :func:`check_latency_inhibition` loads it into a throw-away Alertmanager, sends it the alerts of
two clusters with the labels the notebook's own rules give them, and reads back which ones it suppressed.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pandas as pd
import yaml

from servelab.course.grading import LabCheck
from servelab.errors import ServelabError
from servelab.observe import dashboard, promql
from servelab.observe.alertmanager import alertmanager_config, start_alertmanager
from servelab.observe.prometheus import PrometheusServer

__all__ = [
    "CLUSTERS",
    "KIT_P95_TTFT",
    "LATENCY_ALERTS",
    "NOTIFYING_ALERTS",
    "SOURCE_ALERT",
    "alert_labels",
    "check_latency_inhibition",
    "check_p95_ttft_query",
    "inhibition_verdict",
    "parse_inhibit_rules",
    "quantile_mismatch",
    "scenario_alerts",
]

TTFT = "vllm:time_to_first_token_seconds"
_STEP = "2s"
_REL_TOL = 1e-6  # the same evaluation gives the same float; increase() instead of rate() differs in the last bits


def _quantile_query(quantile: float = 0.95, histogram: str = TTFT, window: str = "$__rate_interval") -> str:
    return f"histogram_quantile({quantile:g}, sum by (model_name, le) (rate({histogram}_bucket[{window}])))"


# The kit's P95 of the time to first token, written as the dashboard writes its p50/p99 panels.
KIT_P95_TTFT = _quantile_query()


# The classic mistakes, each as the query that makes it and what to tell whoever made it. A learner's
# series equal to one of these, step for step, made that mistake.
_MISTAKES: tuple[tuple[str, str], ...] = (
    (
        f"histogram_quantile(0.95, sum by (model_name, le) ({TTFT}_bucket))",
        "your series equals the P95 of every request since vLLM started: the buckets are counters, so take "
        "rate(...[$__rate_interval]) of them first, then sum by (model_name, le)",
    ),
    *(
        (_quantile_query(q), f"your series is the p{round(q * 100)}, not the p95: histogram_quantile's first argument")
        for q in (0.5, 0.9, 0.99)
    ),
    *(
        (_quantile_query(histogram=h), f"your series is the P95 of {h}, not of {TTFT}")
        for h in (
            "vllm:e2e_request_latency_seconds",
            "vllm:inter_token_latency_seconds",
            "vllm:request_queue_time_seconds",
            "vllm:request_prefill_time_seconds",
        )
    ),
    *(
        (_quantile_query(window=w), f"your series uses a {w} rate window: write [$__rate_interval], as a panel does")
        for w in ("30s", "1m", "2m", "5m")
    ),
)


def _series(frame: pd.DataFrame) -> dict[str, dict[float, float]]:
    """``{model_name: {timestamp: value}}`` of a range query with one series per model."""
    if frame.empty:
        return {}
    models = frame["model_name"] if "model_name" in frame else pd.Series([""] * len(frame))
    out: dict[str, dict[float, float]] = {}
    for model, stamp, value in zip(models.fillna(""), frame["timestamp"], frame["value"], strict=True):
        out.setdefault(str(model), {})[float(stamp)] = float(value)
    return out


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-12)


def quantile_mismatch(yours: dict[str, dict[float, float]], kit: dict[str, dict[float, float]]) -> tuple[int, int, str]:
    """(steps that differ, steps compared, one example) between two ``{model: {timestamp: value}}`` series.

    A step one side lacks counts as NaN there: a quantile with nothing observed in its window is NaN.
    """
    differ, total, example = 0, 0, ""
    for model in sorted(set(yours) | set(kit)):
        mine, theirs = yours.get(model, {}), kit.get(model, {})
        for stamp in sorted(set(mine) | set(theirs)):
            total += 1
            a, b = mine.get(stamp, math.nan), theirs.get(stamp, math.nan)
            if not _same(a, b):
                differ += 1
                example = (
                    example
                    or f"model {model!r} at {pd.Timestamp(stamp, unit='s'):%H:%M:%S}: yours {a:.4g}, kit's {b:.4g}"
                )
    return differ, total, example


def _range(prom: PrometheusServer, expr: str, start: float, end: float, rate_window: str) -> pd.DataFrame:
    return prom.query_range(dashboard.concrete(expr, rate_window=rate_window), start=start, end=end, step=_STEP)


def _missing_names(prom: PrometheusServer, expr: str) -> list[str]:
    """The metric names ``expr`` reads that match no series in ``prom`` (a histogram's family name is no series)."""
    names = promql.metric_names(expr)
    names -= {n for n in names if any(f"{n}{suffix}" in names for suffix in ("_bucket", "_sum", "_count"))}
    missing = []
    for name in sorted(names):
        try:
            if not prom.query(f'count({{__name__="{name}"}})'):
                missing.append(name)
        except ServelabError:
            missing.append(name)
    return missing


def check_p95_ttft_query(
    answer: str, prom: PrometheusServer, start: float, end: float, rate_window: str
) -> list[LabCheck]:
    """Is ``answer`` (a dashboard query, ``$__rate_interval`` for its window) the P95 TTFT per model?

    It runs on ``prom`` from ``start`` to ``end`` (the notebook's load and drain) with the window a panel
    would get (``rate_window``), and must equal the kit's :data:`KIT_P95_TTFT` at every step.
    """
    if not isinstance(answer, str) or not answer.strip():
        return [LabCheck("Prometheus runs it", False, "write the query as a string of PromQL")]
    try:
        frame = _range(prom, answer, start, end, rate_window)
    except ServelabError as err:
        return [
            LabCheck(
                "Prometheus runs it",
                False,
                f"{err} Keep $__rate_interval as the window (the check fills it in, as Grafana does) and check "
                "the brackets.",
            )
        ]
    values = frame["value"] if not frame.empty else pd.Series(dtype=float)
    if not values.map(math.isfinite).any():
        if missing := _missing_names(prom, answer):
            hint = f"{', '.join(missing)} matches no series in this Prometheus: vLLM's histogram is {TTFT}_bucket"
        else:
            hint = (
                "no data although its metrics exist: histogram_quantile needs the le label (each bucket's upper "
                "bound), so keep le in the by (...) of the sum, next to model_name"
            )
        return [LabCheck("Prometheus runs it", True, ""), LabCheck("it returns data over the load", False, hint)]
    kit = _series(_range(prom, KIT_P95_TTFT, start, end, rate_window))
    labels = sorted(c for c in frame.columns if c not in ("timestamp", "value"))
    yours = _series(frame)
    if len(yours) == len(kit) == 1:  # one series each: compare the values even when the labels are wrong
        yours = {next(iter(kit)): next(iter(yours.values()))}
    differ, total, example = quantile_mismatch(yours, kit)
    value_hint = ""
    if differ:
        value_hint = _diagnose(prom, yours, start, end, rate_window) or (
            f"{differ} of {total} steps differ from the kit's P95 ({example}); the P95 is histogram_quantile(0.95, "
            f"...) over the rate of {TTFT}_bucket, summed by (model_name, le)"
        )
    return [
        LabCheck("Prometheus runs it", True, ""),
        LabCheck("it returns data over the load", True, ""),
        LabCheck(
            "one series per model, labelled model_name",
            labels == ["model_name"] and len(yours) == len(kit),
            f"your series carry the labels {labels or 'none'} ({len(yours)} series); a dashboard shows one line per "
            "model: sum by (model_name, le) before histogram_quantile (with several pods, a per-pod quantile "
            "is not the model's P95)",
        ),
        LabCheck("it is the P95 of the time to first token at every step", differ == 0, value_hint),
    ]


def _diagnose(
    prom: PrometheusServer, yours: dict[str, dict[float, float]], start: float, end: float, rate_window: str
) -> str | None:
    """The hints of the classic mistakes whose series ``yours`` equals step for step, if it is any of them.

    On a short run two mistakes can give the same series (a window longer than the run is every request
    since the start), so every match is named.
    """
    hints = [
        hint
        for expr, hint in _MISTAKES
        if quantile_mismatch(yours, _series(_range(prom, expr, start, end, rate_window)))[0] == 0
    ]
    return "; or ".join(hints) or None


# --- inhibition -----------------------------------------------------------------------------------

SOURCE_ALERT = "VLLMServerDown"
LATENCY_ALERTS = ("VLLMHighTTFT", "VLLMHighInterTokenLatency")
# Must keep notifying while a server is down: the page itself, and the queue alert, which says whether
# the remaining pods (and the autoscaler) make up for the lost one.
NOTIFYING_ALERTS = (SOURCE_ALERT, "VLLMQueueBacklog")
CLUSTERS = ("lab-a", "lab-b")  # lab-a has a server down; lab-b, another cluster, only slow answers
_NOWHERE = "http://127.0.0.1:9/"  # the check's Alertmanager never notifies: group_wait is longer than the check
_COMPARISON = re.compile(r"\s*(?:>=|<=|==|!=|>|<)\s*-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$", re.IGNORECASE)


def alert_labels(prom: PrometheusServer, rule: Mapping[str, Any], cluster: str) -> dict[str, str]:
    """The labels Prometheus sends with ``rule``'s alert, from the series its expression yields on ``prom``.

    An alert carries its expression's labels (without ``__name__``), the rule's labels and ``alertname``;
    ``cluster`` stands for the external label every cluster's Prometheus adds. The comparison is dropped
    from the expression so the labels are known without the alert firing.
    """
    expr = _COMPARISON.sub("", str(rule["expr"]))
    series = prom.query(expr)
    if not series:
        raise ServelabError(f"{expr!r} returns no series in this Prometheus", "run the notebook's cells above first")
    labels = {k: v for k, v in series[0]["metric"].items() if k != "__name__"}
    return {**labels, **rule.get("labels", {}), "alertname": str(rule["alert"]), "cluster": cluster}


def scenario_alerts(prom: PrometheusServer, rules: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """The alerts the check sends, as label sets: lab-a has a server down, its latency and its queue alerts;
    lab-b, where every server is up, only latency and queue alerts."""
    firing = [(CLUSTERS[0], name) for name in (*NOTIFYING_ALERTS, *LATENCY_ALERTS)]
    firing += [(CLUSTERS[1], name) for name in (*LATENCY_ALERTS, "VLLMQueueBacklog")]
    return [alert_labels(prom, rules[name], cluster) for cluster, name in firing]


def parse_inhibit_rules(answer: Any) -> tuple[list[Any] | None, str]:
    """The rules of ``answer`` (``inhibit_rules:`` YAML, a list of rules or one rule), or ``(None, the fix)``."""
    try:
        doc = yaml.safe_load(answer) if isinstance(answer, str) else answer
    except yaml.YAMLError as err:
        return None, f"fix the YAML syntax: {err}"
    if isinstance(doc, dict) and "inhibit_rules" in doc:
        doc = doc["inhibit_rules"]
    elif isinstance(doc, dict):
        doc = [doc]  # one rule without the list around it
    if not isinstance(doc, list) or not doc or not all(isinstance(r, dict) for r in doc):
        return (
            None,
            "write `inhibit_rules:` and under it a list of rules, each with source_matchers, target_matchers, equal",
        )
    return doc, ""


def _suppressed(inhibit_rules: list[Any], alerts: Sequence[Mapping[str, str]]) -> tuple[list[bool] | None, str]:
    """Load ``inhibit_rules`` into a real Alertmanager, send it ``alerts``; which does it suppress?

    Returns ``(None, Alertmanager's error)`` when it refuses the config.
    """
    config = alertmanager_config(_NOWHERE, group_wait="1h", group_interval="1h")
    config["inhibit_rules"] = inhibit_rules
    with start_alertmanager(_NOWHERE, group_wait="1h", group_interval="1h") as am:
        am.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        reloaded = httpx.post(f"{am.url}/-/reload", timeout=10.0)
        if reloaded.status_code != 200:
            return None, reloaded.text.strip()
        httpx.post(
            f"{am.url}/api/v2/alerts", json=[{"labels": dict(a)} for a in alerts], timeout=10.0
        ).raise_for_status()
        # The inhibitor learns the source alerts asynchronously: read until two reads agree.
        previous: list[bool] | None = None
        deadline = time.monotonic() + 5.0
        while True:
            held = {frozenset(a["labels"].items()): a["status"]["state"] == "suppressed" for a in am.alerts()}
            current = [held.get(frozenset(a.items()), False) for a in alerts]
            if (current == previous and len(held) >= len(alerts)) or time.monotonic() > deadline:
                return current, ""
            previous = current
            time.sleep(0.3)


def _named(
    alerts: Sequence[Mapping[str, str]], muted: Sequence[bool], cluster: str, names: Sequence[str]
) -> list[tuple[str, bool]]:
    return [
        (a["alertname"], m)
        for a, m in zip(alerts, muted, strict=True)
        if a["cluster"] == cluster and a["alertname"] in names
    ]


def inhibition_verdict(alerts: Sequence[Mapping[str, str]], muted: Sequence[bool]) -> list[LabCheck]:
    """What Alertmanager did with the scenario's ``alerts`` (``muted[i]``: it suppressed ``alerts[i]``), graded."""
    down, other = CLUSTERS
    source = next(a for a in alerts if a["alertname"] == SOURCE_ALERT)
    target = next(a for a in alerts if a["alertname"] == LATENCY_ALERTS[0])
    shared = sorted(set(source) & set(target) - {"alertname", "severity"})
    same_cluster = _named(alerts, muted, down, LATENCY_ALERTS)
    unmuted = [name for name, m in same_cluster if not m]
    wrongly_other = [name for name, m in _named(alerts, muted, other, LATENCY_ALERTS) if m]
    wrongly_kept = [
        f"{name} of {cluster}"
        for cluster in CLUSTERS
        for name, m in _named(alerts, muted, cluster, NOTIFYING_ALERTS)
        if m
    ]
    return [
        LabCheck(
            f"{SOURCE_ALERT} mutes the latency pages of its cluster",
            not unmuted,
            f"Alertmanager did not mute {', '.join(unmuted)} of {down}, where {SOURCE_ALERT} fires. "
            f"{SOURCE_ALERT} carries {sorted(source)}, {target['alertname']} carries {sorted(target)}: "
            f"source_matchers must match the first, target_matchers the second, and every label in equal must "
            f"be on both with the same value (both carry {shared})",
        ),
        LabCheck(
            "another cluster's latency pages still notify",
            not wrongly_other,
            f"a server down in {down} muted {', '.join(wrongly_other)} of {other}, where every server is up: "
            "equal: lists the labels source and target must share, here the cluster",
        ),
        LabCheck(
            "the page itself and the queue alert still notify",
            not wrongly_kept,
            f"your rule muted {', '.join(wrongly_kept)}: target only the latency alerts "
            f"({' and '.join(LATENCY_ALERTS)}) by alertname; the queue alert says whether the pods left and the "
            "autoscaler make up for the dead one",
        ),
    ]


def check_latency_inhibition(
    answer: str, prom: PrometheusServer, rules: Mapping[str, Mapping[str, Any]]
) -> list[LabCheck]:
    """Does ``answer`` (``inhibit_rules:`` YAML) mute exactly the latency pages a dead server causes?

    ``rules`` are the alerting rules by name (the notebook's quick ones); the alerts sent carry the labels
    they give on ``prom``.
    """
    inhibit_rules, problem = parse_inhibit_rules(answer)
    if inhibit_rules is None:
        return [LabCheck("inhibit_rules in YAML", False, problem)]
    try:
        alerts = scenario_alerts(prom, rules)
    except (ServelabError, KeyError) as err:
        return [LabCheck("the notebook's alerts", False, f"could not build the alerts to send: {err}")]
    muted, refused = _suppressed(inhibit_rules, alerts)
    if muted is None:
        return [
            LabCheck("inhibit_rules in YAML", True, ""),
            LabCheck("Alertmanager loads it", False, f"Alertmanager refused it: {refused}"),
        ]
    return [
        LabCheck("inhibit_rules in YAML", True, ""),
        LabCheck("Alertmanager loads it", True, ""),
        *inhibition_verdict(alerts, muted),
    ]
