"""A real, local Prometheus that scrapes the kit's servers and evaluates the kit's alert rules.

Why this module exists: ``promtool test rules`` proves a rule's logic on made-up series, but only a
real Prometheus scraping a real vLLM proves the whole chain: the target is reachable, the metric
names exist, the rule loads, and it goes ``pending`` then ``firing`` under real load and resolves
when the load ends. :func:`start_prometheus` writes a throw-away ``prometheus.yml`` (short scrape and
evaluation intervals, so an alert with a quick ``for`` fires within seconds), starts the
``prometheus`` binary as a :class:`~servelab.procs.ManagedServer` (own process group, stopped by
``stop()``, ``with``, ``atexit`` or the kernel's death), and returns a :class:`PrometheusServer`
whose methods wrap the HTTP API a notebook needs: instant and range queries, alerts, targets.

Every call has a timeout and :meth:`PrometheusServer.wait_for_alert` has a deadline, so a notebook
cell never hangs on a rule that does not fire: it fails with the rule's state and the fix.

Typical use::

    rules = alerts.write_rules_file(tmp / "rules.yaml", {"queue_for": "6s"}, "2s")
    with start_prometheus({"vllm": [f"127.0.0.1:{engine.port}"]}, [rules]) as prom:
        prom.wait_for_targets()
        prom.wait_for_alert("VLLMQueueBacklog", "firing", timeout_s=120)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pandas as pd

from servelab import binaries
from servelab.errors import ServelabError
from servelab.observe.promql import duration_seconds
from servelab.paths import logs_dir
from servelab.procs import ScratchServer, free_port, scratch_folder, tail

__all__ = [
    "ALERT_STATES",
    "AlertState",
    "PrometheusServer",
    "prometheus_config",
    "start_prometheus",
]

AlertState = Literal["inactive", "pending", "firing"]
ALERT_STATES: tuple[AlertState, ...] = ("inactive", "pending", "firing")  # ordered: each one is "further"


def prometheus_config(
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[str | Path],
    scrape_interval: str = "2s",
    evaluation_interval: str = "2s",
    alertmanagers: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``prometheus.yml`` content as a dict: one static scrape job per entry of ``targets``.

    ``scrape_timeout`` is set to the scrape interval because Prometheus refuses a timeout longer than
    the interval, and its default (10s) is longer than the quick intervals used here. With
    ``alertmanagers`` (``host:port`` each), an ``alerting:`` block makes Prometheus send its alerts there.
    """
    if not targets:
        raise ServelabError("no scrape targets given", 'pass e.g. {"vllm": [f"127.0.0.1:{engine.port}"]}')
    jobs = []
    for job, addresses in targets.items():
        if isinstance(addresses, str):
            raise ServelabError(
                f"targets[{job!r}] is a string, not a list of host:port", f'write {{"{job}": ["{addresses}"]}}'
            )
        jobs.append(
            {
                "job_name": str(job),
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [str(a) for a in addresses]}],
            }
        )
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": jobs,
    }
    if isinstance(alertmanagers, str) or any("/" in str(a) for a in alertmanagers):
        raise ServelabError(
            f"alertmanagers={alertmanagers!r} must be a list of host:port (no scheme, no path)",
            "pass [alertmanager.address], e.g. ['127.0.0.1:9093']",
        )
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [str(a) for a in alertmanagers]}]}]}
    return config


class PrometheusServer(ScratchServer):
    """A running Prometheus with helpers for the parts of its HTTP API a notebook uses."""

    def __init__(self, targets: Mapping[str, Sequence[str]], rule_files: Sequence[Path], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.targets = {job: list(addresses) for job, addresses in targets.items()}
        self.rule_files = list(rule_files)

    # --- plumbing ---------------------------------------------------------------------------------

    def _api(self, path: str, params: Mapping[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; any failure becomes a ServelabError with a fix."""
        if not self.running:
            raise ServelabError(
                f"{self.name} is not running (it was stopped or it exited). Last log lines:\n{tail(self.log_path)}",
                "start it again with start_prometheus(...)",
            )
        try:
            response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=timeout)
        except httpx.HTTPError as err:
            raise ServelabError(
                f"{self.name} did not answer /api/v1/{path} ({type(err).__name__}: {err})",
                f"check that it is running: prometheus.running; log: {self.log_path}",
            ) from None
        try:
            body = response.json()
        except ValueError:
            raise ServelabError(
                f"/api/v1/{path} answered HTTP {response.status_code} with no JSON: {response.text[:200]}",
                "check the Prometheus log",
            ) from None
        if body.get("status") != "success":
            raise ServelabError(
                f"Prometheus refused /api/v1/{path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}",
                "check the PromQL (metric names, brackets, durations)",
            )
        return body.get("data")

    # --- queries ----------------------------------------------------------------------------------

    def query(self, promql: str, at: float | datetime | None = None) -> list[dict[str, Any]]:
        """An instant query; returns Prometheus' result list, each ``{"metric": {labels}, "value": [t, "v"]}``.

        An empty list means no series matched, which for a metric name usually means the name is wrong
        (or nothing was scraped yet): the check the kit makes against made-up vLLM metric names.
        """
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = _unix(at)
        data = self._api("query", params)
        result = data.get("result", [])
        if data.get("resultType") == "scalar":  # e.g. query("1+1"): wrap it like a vector sample
            return [{"metric": {}, "value": result}]
        return list(result)

    def value(self, promql: str, default: float = math.nan) -> float:
        """The value of an instant query that returns one series (``default`` when it returns none)."""
        result = self.query(promql)
        if not result:
            return default
        if len(result) > 1:
            raise ServelabError(
                f"{promql!r} returned {len(result)} series, not one", "aggregate it, e.g. sum(...) or max(...)"
            )
        return float(result[0]["value"][1])

    def query_range(
        self, promql: str, start: float | datetime, end: float | datetime, step: str | float = "2s"
    ) -> pd.DataFrame:
        """A range query as a long DataFrame: ``timestamp`` (unix s), ``value``, and one column per label.

        One row per series and time step, so ``df.pivot(index="timestamp", columns=label, values="value")``
        gives one column per series; a query that matched nothing returns an empty frame with those
        columns, so plotting code does not need a special case.
        """
        params = {
            "query": promql,
            "start": _unix(start),
            "end": _unix(end),
            "step": step if isinstance(step, str) else f"{float(step):g}",
        }
        data = self._api("query_range", params, timeout=30.0)
        rows: list[dict[str, Any]] = []
        for series in data.get("result", []):
            labels = series.get("metric", {})
            for stamp, text in series.get("values", []):
                rows.append({"timestamp": float(stamp), "value": float(text), **labels})
        frame = pd.DataFrame(rows, columns=None if rows else ["timestamp", "value"])
        return frame.sort_values("timestamp", kind="stable").reset_index(drop=True) if rows else frame

    # --- targets ----------------------------------------------------------------------------------

    def target_health(self) -> list[dict[str, Any]]:
        """Every active scrape target with its ``job``, ``instance``, ``health`` and ``lastError``."""
        return [
            {
                "job": t.get("labels", {}).get("job") or t.get("scrapePool"),
                "instance": t.get("labels", {}).get("instance"),
                "health": t.get("health"),
                "lastError": t.get("lastError", ""),
                "lastScrape": t.get("lastScrape"),
            }
            for t in self._api("targets", {"state": "active"}).get("activeTargets", [])
        ]

    def targets_up(self) -> dict[str, bool]:
        """``{job: True}`` when every target of the job answered its last scrape (``health == "up"``).

        A job whose targets were not scraped yet counts as not up: "unknown" is not healthy.
        """
        jobs: dict[str, bool] = {job: False for job in self.targets}
        seen: dict[str, list[bool]] = {}
        for target in self.target_health():
            seen.setdefault(str(target["job"]), []).append(target["health"] == "up")
        for job, healths in seen.items():
            jobs[job] = bool(healths) and all(healths)
        return jobs

    def wait_for_targets(self, timeout_s: float = 30.0, poll_s: float = 0.5) -> float:
        """Wait until every job's targets are up; return the seconds waited, or fail with the scrape error."""
        began = time.perf_counter()
        while True:
            up = self.targets_up()
            if up and all(up.values()):
                return time.perf_counter() - began
            if time.perf_counter() - began > timeout_s:
                errors = [
                    f"{t['job']} {t['instance']}: {t['health']} {t['lastError']}".strip()
                    for t in self.target_health()
                    if t["health"] != "up"
                ]
                raise ServelabError(
                    f"scrape targets not up after {timeout_s:.0f} s: {errors}",
                    "is the server running and does it serve /metrics on that port?",
                )
            time.sleep(poll_s)

    # --- rules and alerts -------------------------------------------------------------------------

    def rules(self) -> list[dict[str, Any]]:
        """The alerting rules Prometheus loaded: ``name``, ``state``, ``health``, ``lastError``, ``query``.

        Shows that the rules file was really loaded (a file Prometheus cannot parse stops it at start,
        but a rule can still evaluate with an error, which only ``health`` reveals).
        """
        out = []
        for group in self._api("rules", {"type": "alert"}).get("groups", []):
            for rule in group.get("rules", []):
                out.append(
                    {
                        "group": group.get("name"),
                        "name": rule.get("name"),
                        "state": rule.get("state"),
                        "health": rule.get("health"),
                        "lastError": rule.get("lastError", ""),
                        "query": rule.get("query"),
                        "duration_s": rule.get("duration"),
                    }
                )
        return out

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts from ``/api/v1/alerts``.

        Each has ``labels``, ``annotations``, ``state``, ``activeAt`` and ``value``. Only pending and firing
        alerts are listed; a resolved alert disappears from this list.
        """
        return list(self._api("alerts").get("alerts", []))

    def alert_state(self, name: str) -> AlertState:
        """``"firing"``, ``"pending"`` or ``"inactive"`` for alert ``name`` (the furthest over its label sets)."""
        states = [a.get("state") for a in self.alerts() if a.get("labels", {}).get("alertname") == name]
        for state in ("firing", "pending"):
            if state in states:
                return state
        return "inactive"

    def wait_for_alert(self, name: str, state: AlertState, timeout_s: float = 120.0, poll_s: float = 0.5) -> float:
        """Poll until alert ``name`` reaches ``state``; return the seconds waited.

        ``"pending"`` is reached by a pending *or* firing alert (a short ``for`` can pass between two
        polls), ``"firing"`` only by a firing one, ``"inactive"`` once no label set of it is active
        (resolved). Raises a :class:`ServelabError` with the current state and the rule's health when
        ``timeout_s`` passes, or at once when Prometheus has stopped: it never hangs.
        """
        if state not in ALERT_STATES:
            raise ServelabError(
                f"state {state!r} is not one of {ALERT_STATES}", "use 'pending', 'firing' or 'inactive'"
            )
        known = {r["name"] for r in self.rules()}
        if name not in known:
            raise ServelabError(f"no alerting rule named {name!r} is loaded", f"loaded: {sorted(known)}")
        began = time.perf_counter()
        current: AlertState = "inactive"
        while True:
            current = self.alert_state(name)
            reached = current == state if state != "pending" else current in ("pending", "firing")
            if reached:
                return time.perf_counter() - began
            waited = time.perf_counter() - began
            if waited > timeout_s:
                rule = next((r for r in self.rules() if r["name"] == name), {})
                raise ServelabError(
                    f"alert {name} did not become {state} within {timeout_s:.0f} s (it is {current}; rule health "
                    f"{rule.get('health')} {rule.get('lastError') or ''}; expr: {rule.get('query')})",
                    "query the rule's expression with prometheus.query(...) to see its value; raise timeout_s, "
                    "the load, or lower the threshold",
                )
            time.sleep(min(poll_s, max(0.05, timeout_s - waited)))

    def alert_timeline(
        self, name: str, start: float | datetime, end: float | datetime, step: str | float = "1s"
    ) -> pd.DataFrame:
        """Alert ``name``'s state over time from Prometheus' own ``ALERTS`` series.

        Returns ``timestamp`` and ``level`` (0 inactive, 1 pending, 2 firing) for every step, so a plot
        shows exactly when the rule started pending, fired and resolved.
        """
        frame = self.query_range(f'ALERTS{{alertname="{name}"}}', start, end, step)
        stamps = self.query_range("vector(0)", start, end, step)[["timestamp"]]
        levels = {state: level for level, state in enumerate(ALERT_STATES)}
        if frame.empty:
            return stamps.assign(level=0)
        frame = frame.assign(level=frame["alertstate"].map(levels).fillna(0).astype(int))
        worst = frame.groupby("timestamp")["level"].max()
        return stamps.assign(level=stamps["timestamp"].map(worst).fillna(0).astype(int))


def _unix(when: float | datetime) -> float:
    return when.timestamp() if isinstance(when, datetime) else float(when)


def start_prometheus(
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[str | Path] = (),
    scrape_interval: str = "2s",
    evaluation_interval: str = "2s",
    ready_timeout: float = 60,
    port: int | None = None,
    keep_files: bool = False,
    alertmanagers: Sequence[str] = (),
) -> PrometheusServer:
    """Start a local Prometheus scraping ``targets`` (``{job: ["127.0.0.1:port", ...]}``) with ``rule_files``.

    The config and the TSDB live in ``results/prometheus-<port>/`` (deleted on ``stop()`` unless
    ``keep_files``), the log in ``results/logs/``. Prometheus listens on loopback only. It is ready
    when ``/-/ready`` answers 200, which it does only after the config and every rule file loaded: a
    broken rule file makes it exit, and this raises with the log's tail. ``alertmanagers``
    (``host:port``, e.g. ``[alertmanager.address]``) are where it sends its firing and resolved alerts.
    """
    binary = binaries.require("prometheus")
    for value in (scrape_interval, evaluation_interval):
        if duration_seconds(value) <= 0:
            raise ServelabError(f"interval {value!r} must be positive", "write e.g. 2s or 15s")
    files = [Path(p) for p in rule_files]
    for path in files:
        if not path.is_file():
            raise ServelabError(
                f"rule file {path} does not exist",
                "write one with servelab.observe.alerts.write_rules_file(path, thresholds, interval)",
            )
    config = prometheus_config(targets, files, scrape_interval, evaluation_interval, alertmanagers)
    port = port or free_port()
    workdir, config_path = scratch_folder(
        "prometheus", port, "prometheus.yml", config, "servelab.observe.prometheus.start_prometheus"
    )
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
    return PrometheusServer(
        workdir=workdir,
        config_path=config_path,
        targets=targets,
        rule_files=files,
        keep_files=keep_files,
        name="Prometheus",
        command=command,
        port=port,
        log_path=logs_dir() / f"prometheus-{port}-{int(time.time())}.log",
        ready_path="/-/ready",
    ).launch(ready_timeout)
