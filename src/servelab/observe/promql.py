"""PromQL as text: the metric names an expression reads, names that no vLLM V1 server exports, and
Prometheus durations.

Why text, not a parser: the kit needs three answers a regex gets right for the rules and dashboards
it writes — which series a rule reads (to check each against a live ``/metrics``), whether it reads a
name from an older release or a blog post (valid PromQL that never fires), and how long ``5m`` is.
Syntax itself is checked by promtool and a real Prometheus, not here.
"""

from __future__ import annotations

import re

from servelab.errors import ServelabError

# Names from older vLLM releases, blog posts and made-up examples that a vLLM V1 server does not export:
# a rule using one of them is valid PromQL, passes promtool, and never fires.
LEGACY_METRIC_NAMES = (
    "vllm_queue_size",
    "vllm_request_duration_seconds",
    "vllm:gpu_cache_usage_perc",
    "vllm:cpu_cache_usage_perc",
    "vllm:num_preemptions",  # V1 exports the counter as vllm:num_preemptions_total
)


DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    """A Prometheus duration (``15s``, ``1m30s``) in seconds, or an error saying how to write one."""
    if not DURATION.match(str(text)):
        raise ServelabError(f"{text!r} is not a Prometheus duration", "write e.g. 2s, 15s, 1m")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(str(text)))


# Series Prometheus makes itself (scrape health, alert state): they are never on a /metrics page.
_SYNTHETIC = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
}
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
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
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENT.finditer(text):
        token = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or token in _KEYWORDS:  # a function call or an operator keyword
            continue
        names.add(token)
    names -= _SYNTHETIC
    families = {n[: -len(s)] for n in names for s in _FAMILY_SUFFIXES if n.endswith(s)}
    return names | families


def legacy_names(text: str) -> list[str]:
    """Legacy/made-up vLLM metric names that occur in ``text`` (``vllm:num_preemptions_total`` is fine)."""
    found = []
    for name in LEGACY_METRIC_NAMES:
        if re.search(re.escape(name) + r"(?![A-Za-z0-9_:])", text):
            found.append(name)
    return found
