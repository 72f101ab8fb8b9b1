"""vLLM alert rules kept once, rendered two ways, and checked with promtool.

Why this module exists: alert rules written twice (a plain Prometheus rules file for a local
Prometheus, a PrometheusRule for the Prometheus Operator in Kubernetes) drift apart, and a rule whose
PromQL or metric name is wrong never fires and nobody notices. So the rules live once, in
``manifests/monitoring/alert-rules.source.yaml``, with their production thresholds; this module
renders both forms from it, writes the two committed manifests, extracts the metric names the rules
use (so a test can check them against a live vLLM's ``/metrics``), and runs ``promtool`` to check the
syntax and to run the rule unit tests in ``tests/promtool/``.

Thresholds are parameters so a notebook can render a quick variant (queue threshold 3 for 15s) into a
temporary file for a local Prometheus, while the production values stay in the manifests.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from servelab.errors import ServelabError
from servelab.paths import find_binary, repo_root

__all__ = [
    "AlertRule",
    "LEGACY_METRIC_NAMES",
    "PROMTOOL_MISSING_FIX",
    "default_thresholds",
    "find_promtool",
    "legacy_names",
    "load_rules",
    "metric_names",
    "monitoring_dir",
    "promtool_check",
    "promtool_test",
    "render_plain_text",
    "render_prometheus_rule",
    "render_prometheus_rule_text",
    "render_rules",
    "rule_metric_names",
    "source_path",
    "write_rendered",
    "write_rules_file",
]

PLAIN_FILE = "prometheus-rules.yaml"
CRD_FILE = "prometheusrule.yaml"
SOURCE_FILE = "alert-rules.source.yaml"
SEVERITIES = ("critical", "warning", "info")

# Names from older vLLM releases, blog posts and made-up examples that a vLLM V1 server does not export:
# a rule using one of them is valid PromQL, passes promtool, and never fires.
LEGACY_METRIC_NAMES = (
    "vllm_queue_size",
    "vllm_request_duration_seconds",
    "vllm:gpu_cache_usage_perc",
    "vllm:cpu_cache_usage_perc",
    "vllm:num_preemptions",  # V1 exports the counter as vllm:num_preemptions_total
)

PROMTOOL_MISSING_FIX = "install it: sudo apt-get install prometheus or conda install -c conda-forge prometheus"

# `{name}` (not `{{ name }}`, not a label matcher, which always holds an operator) is a threshold slot.
_PLACEHOLDER = re.compile(r"(?<!\{)\{([a-z][a-z0-9_]*)\}(?!\})")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_RULE_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    """A Prometheus duration (``15s``, ``1m30s``) in seconds, or an error saying how to write one."""
    if not _DURATION.match(str(text)):
        raise ServelabError(f"{text!r} is not a Prometheus duration", "write e.g. 2s, 15s, 1m")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(str(text)))


@dataclass(frozen=True)
class AlertRule:
    """One alert as written in the source file, before thresholds are filled in.

    ``expr``, ``for_`` and the texts may hold ``{placeholder}`` slots; ``runbook`` is the short "what
    to check, what to do" text that ends up as an annotation so whoever is paged reads it in the alert.
    """

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str

    def placeholders(self) -> set[str]:
        """Threshold names this rule needs, so a missing default is caught at load time, not in Prometheus."""
        text = " ".join((self.expr, self.for_, self.summary, self.description, self.runbook))
        return set(_PLACEHOLDER.findall(text))


def monitoring_dir() -> Path:
    """``manifests/monitoring`` of the checkout: where the source and the two rendered files live."""
    return repo_root() / "manifests" / "monitoring"


def source_path() -> Path:
    """The single source of the rules (``manifests/monitoring/alert-rules.source.yaml``)."""
    return monitoring_dir() / SOURCE_FILE


def _read_source(source: str | Path | None) -> dict[str, Any]:
    path = Path(source) if source is not None else source_path()
    if not path.is_file():
        raise ServelabError(f"alert rule source {path} does not exist",
                            f"run from the checkout, or pass source= (expected {source_path()})")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ServelabError(f"{path} has no `rules:` list", "see manifests/monitoring/alert-rules.source.yaml")
    return data


def _one_line(text: Any) -> str:
    """Folded YAML leaves a trailing newline and an embedded one can sneak in; annotations read better flat."""
    return " ".join(str(text).split())


def load_rules(source: str | Path | None = None) -> list[AlertRule]:
    """Read and validate the rules of the source file (the checkout's one by default).

    Validation happens here, in Python, so a typo (unknown severity, a placeholder with no default,
    a duplicate name) is reported with the rule's name instead of surfacing as a rule that never fires.
    """
    data = _read_source(source)
    defaults = data.get("defaults") or {}
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["rules"]):
        if not isinstance(raw, dict):
            raise ServelabError(f"rule #{i + 1} in the alert source is not a mapping", "each rule is `- name: ...`")
        missing = [k for k in ("name", "expr", "for", "severity", "summary", "description", "runbook") if k not in raw]
        if missing:
            raise ServelabError(f"rule {raw.get('name', '#' + str(i + 1))} lacks {', '.join(missing)}",
                                "every rule needs name, expr, for, severity, summary, description, runbook")
        rule = AlertRule(name=str(raw["name"]), expr=_one_line(raw["expr"]), for_=str(raw["for"]).strip(),
                         severity=str(raw["severity"]), summary=_one_line(raw["summary"]),
                         description=_one_line(raw["description"]), runbook=_one_line(raw["runbook"]))
        if not _RULE_NAME.match(rule.name):
            raise ServelabError(f"alert name {rule.name!r} is not CamelCase", "use names like VLLMQueueBacklog")
        if rule.name in seen:
            raise ServelabError(f"alert {rule.name} is defined twice", "alert names must be unique")
        seen.add(rule.name)
        if rule.severity not in SEVERITIES:
            raise ServelabError(f"{rule.name}: severity {rule.severity!r} is unknown", f"use one of {SEVERITIES}")
        unknown = rule.placeholders() - set(defaults)
        if unknown:
            raise ServelabError(f"{rule.name} uses {sorted(unknown)} with no value under `defaults:`",
                                "add a production default for each placeholder")
        rules.append(rule)
    return rules


def default_thresholds(source: str | Path | None = None) -> dict[str, Any]:
    """The production thresholds (the source's ``defaults:``), e.g. ``{"queue_threshold": 50, ...}``."""
    return dict(_read_source(source).get("defaults") or {})


def _group_name(source: str | Path | None) -> str:
    return str(_read_source(source).get("group") or "vllm-serving")


def _values(thresholds: Mapping[str, Any] | None, source: str | Path | None) -> dict[str, str]:
    """Production defaults overlaid with ``thresholds``; unknown keys are refused (a typo would be ignored)."""
    values = default_thresholds(source)
    unknown = set(thresholds or {}) - set(values)
    if unknown:
        raise ServelabError(f"unknown alert threshold(s) {sorted(unknown)}", f"known: {sorted(values)}")
    values.update(thresholds or {})
    out: dict[str, str] = {}
    for key, value in values.items():
        text = str(value)
        if '"' in text or "\n" in text:
            raise ServelabError(f"threshold {key}={text!r} would break the PromQL", "no quotes or newlines")
        if key.endswith(("_for", "_window")) and not _DURATION.match(text):
            raise ServelabError(f"threshold {key}={text!r} is not a Prometheus duration", "write e.g. 15s, 5m, 1h")
        out[key] = text
    return out


def _fill(text: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render_rules(thresholds: Mapping[str, Any] | None = None, interval: str | None = None,
                 source: str | Path | None = None) -> dict[str, Any]:
    """A plain Prometheus rules file as a dict: ``{"groups": [{"name", "rules": [...]}]}``.

    ``thresholds`` overrides production defaults by name (``{"queue_threshold": 3, "queue_for": "15s"}``);
    ``interval`` sets the group's evaluation interval (default: Prometheus' global one), which a
    notebook shortens so a quick alert fires within a minute. Each rule gets ``labels.severity`` and
    ``annotations`` summary, description and runbook.
    """
    values = _values(thresholds, source)
    if interval is not None and not _DURATION.match(str(interval)):
        raise ServelabError(f"interval {interval!r} is not a Prometheus duration", "write e.g. 5s, 15s, 1m")
    rules = []
    for rule in load_rules(source):
        rendered: dict[str, Any] = {"alert": rule.name, "expr": _fill(rule.expr, values)}
        for_ = _fill(rule.for_, values)
        if for_ not in ("", "0", "0s"):
            rendered["for"] = for_
        rendered["labels"] = {"severity": rule.severity}
        rendered["annotations"] = {"summary": _fill(rule.summary, values),
                                   "description": _fill(rule.description, values),
                                   "runbook": _fill(rule.runbook, values)}
        rules.append(rendered)
    group: dict[str, Any] = {"name": _group_name(source)}
    if interval is not None:
        group["interval"] = str(interval)
    group["rules"] = rules
    return {"groups": [group]}


def render_prometheus_rule(thresholds: Mapping[str, Any] | None = None, interval: str | None = None,
                           source: str | Path | None = None, *, name: str = "vllm-alerts",
                           namespace: str = "llm-serving", release: str = "prometheus") -> dict[str, Any]:
    """The same rules as a ``monitoring.coreos.com/v1`` PrometheusRule manifest.

    ``release`` becomes the ``release`` label because kube-prometheus-stack's Prometheus only loads
    PrometheusRules whose labels match its ``ruleSelector`` (``release: <helm release name>``); a rule
    without it is accepted by the API server and silently ignored.
    """
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"release": release, "app.kubernetes.io/name": "vllm",
                       "app.kubernetes.io/part-of": "llm-serving-lab"},
        },
        "spec": render_rules(thresholds, interval, source),
    }


class _Dumper(yaml.SafeDumper):
    """Keeps long PromQL on one line and multi-line text as a block, so the manifests read like hand-written ones."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_representer)


def _dump(header: str, data: Mapping[str, Any]) -> str:
    body: str = yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


def _header(kind: str, thresholds: Mapping[str, Any] | None, interval: str | None) -> str:
    variant = ("production thresholds" if not thresholds and interval is None
               else f"VARIANT, not production: thresholds={dict(thresholds or {})}, interval={interval}")
    return (f"{kind}.\n"
            f"GENERATED from manifests/monitoring/{SOURCE_FILE} by `servelab alerts render`\n"
            f"(servelab.alerts); {variant}. Do not edit: change the source and render again.")


def render_plain_text(thresholds: Mapping[str, Any] | None = None, interval: str | None = None,
                      source: str | Path | None = None) -> str:
    """The plain rules file as YAML text, header comment included (what ``write_rendered`` writes)."""
    return _dump(_header("Prometheus alerting rules for vLLM (plain rules file for rule_files:)",
                         thresholds, interval), render_rules(thresholds, interval, source))


def render_prometheus_rule_text(thresholds: Mapping[str, Any] | None = None, interval: str | None = None,
                                source: str | Path | None = None) -> str:
    """The PrometheusRule manifest as YAML text, header comment included."""
    return _dump(_header("PrometheusRule (Prometheus Operator) with the vLLM alerting rules",
                         thresholds, interval), render_prometheus_rule(thresholds, interval, source))


def write_rendered(directory: str | Path | None = None, source: str | Path | None = None) -> list[Path]:
    """Write both committed manifests with the production thresholds and return their paths.

    Production values only, on purpose: variants go through ``write_rules_file`` to a path of their own,
    so a notebook can never overwrite the manifests with its quick thresholds.
    """
    out = Path(directory) if directory is not None else monitoring_dir()
    out.mkdir(parents=True, exist_ok=True)
    plain, crd = out / PLAIN_FILE, out / CRD_FILE
    plain.write_text(render_plain_text(source=source))
    crd.write_text(render_prometheus_rule_text(source=source))
    return [plain, crd]


def write_rules_file(path: str | Path, thresholds: Mapping[str, Any] | None = None,
                     interval: str | None = None, source: str | Path | None = None) -> Path:
    """Write a plain rules file (e.g. a quick variant for a notebook's local Prometheus) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_plain_text(thresholds, interval, source))
    return path


# --- metric names -------------------------------------------------------------------------------

# Series Prometheus makes itself (scrape health, alert state): they are never on a /metrics page.
_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
              "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "atan2", "inf", "nan", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
             "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+|@\s*[0-9.]+")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_FAMILY_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: each raw name plus, for histogram series, its family.

    ``vllm:e2e_request_latency_seconds_bucket`` yields both that name and
    ``vllm:e2e_request_latency_seconds`` (the family a /metrics parser reports), so a test can check
    each name against a live server either as a sample name or as a family name. Functions,
    aggregations, keywords, label names and values, durations and numbers are skipped, and so is
    ``up`` (and other series Prometheus synthesises), which no exporter serves.
    """
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)       # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)      # range and subquery windows
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENT.finditer(text):
        token = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or token in _KEYWORDS:  # a function call or an operator keyword
            continue
        names.add(token)
    names -= _SYNTHETIC
    families = {n[: -len(s)] for n in names for s in _FAMILY_SUFFIXES if n.endswith(s)}
    return names | families


def rule_metric_names(rules: Iterable[AlertRule] | None = None) -> dict[str, set[str]]:
    """``{alert name: metric_names(expr)}`` for every rule (the source's by default)."""
    return {r.name: metric_names(r.expr) for r in (load_rules() if rules is None else rules)}


def legacy_names(text: str) -> list[str]:
    """Legacy/made-up vLLM metric names that occur in ``text`` (``vllm:num_preemptions_total`` is fine)."""
    found = []
    for name in LEGACY_METRIC_NAMES:
        if re.search(re.escape(name) + r"(?![A-Za-z0-9_:])", text):
            found.append(name)
    return found


# --- promtool -----------------------------------------------------------------------------------

def find_promtool() -> str:
    """Path of ``promtool`` (see :func:`servelab.paths.find_binary`), or an error naming the install."""
    found = find_binary("promtool")
    if found:
        return found
    raise ServelabError("promtool is not installed (it comes with Prometheus)", PROMTOOL_MISSING_FIX)


def _run_promtool(args: list[str], timeout: float) -> tuple[bool, str]:
    cmd = [find_promtool(), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"{' '.join(cmd)} did not finish within {timeout:.0f}s"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def promtool_check(path: str | Path, timeout: float = 60) -> tuple[bool, str]:
    """``promtool check rules`` on a plain rules file or a PrometheusRule manifest; returns ``(ok, output)``.

    promtool only knows the plain format, so for a PrometheusRule the ``spec`` (its ``groups``) is
    written to a temporary file first: that is exactly what the Operator hands to Prometheus.
    """
    path = Path(path)
    if not path.is_file():
        raise ServelabError(f"{path} does not exist", "run `servelab alerts render` first")
    doc = yaml.safe_load(path.read_text())
    if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
        with tempfile.TemporaryDirectory(prefix="servelab-rules-") as tmp:
            extracted = Path(tmp) / f"{path.stem}.spec.yaml"
            extracted.write_text(yaml.safe_dump(doc.get("spec") or {}, sort_keys=False))
            ok, output = _run_promtool(["check", "rules", str(extracted)], timeout)
            return ok, f"(spec.groups of the PrometheusRule {path})\n{output}"
    return _run_promtool(["check", "rules", str(path)], timeout)


def promtool_test(paths: str | Path | Iterable[str | Path], timeout: float = 120) -> tuple[bool, str]:
    """``promtool test rules`` on rule unit-test files; returns ``(ok, output)``.

    Each test file names its rule files relative to its own folder (promtool resolves them so), so
    the tests run the same from any working directory.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ServelabError("no promtool test files given", "pass tests/promtool/*.yaml")
    files = [str(Path(p).resolve()) for p in items]
    for f in files:
        if not Path(f).is_file():
            raise ServelabError(f"{f} does not exist", "pass the rule unit-test files (tests/promtool/*.yaml)")
    return _run_promtool(["test", "rules", *files], timeout)
