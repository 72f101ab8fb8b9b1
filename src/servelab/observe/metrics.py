"""Read an engine's Prometheus ``/metrics`` page into Python, with prometheus-client's own parser.

Notebooks use it to show the real metric names an engine exports (vLLM's ``vllm:`` families), and
tests use it to check that every metric an alert rule or the HPA names really exists.
"""

from __future__ import annotations

import threading
import time

import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from servelab.errors import ServelabError


def scrape(url: str, timeout: float = 10.0) -> str:
    """The raw exposition text of ``url`` (e.g. ``engine.url + "/metrics"``)."""
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as err:
        raise ServelabError(f"could not scrape {url}: {err}", "is the server running? (engine.running)") from None
    return response.text


def families(text: str, prefix: str = "") -> dict[str, str]:
    """``{family name: type}`` for every metric family whose name starts with ``prefix``."""
    return {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith(prefix)}


def samples(text: str, prefix: str = "") -> list[tuple[str, dict[str, str], float]]:
    """Every sample as ``(sample name, labels, value)``; histogram buckets keep their ``_bucket`` name."""
    return [
        (s.name, dict(s.labels), s.value)
        for f in text_string_to_metric_families(text)
        if f.name.startswith(prefix)
        for s in f.samples
    ]


def series_names(text: str, prefix: str = "") -> set[str]:
    """The names a PromQL query can use: every sample name, plus each histogram's family name.

    A counter's family name (``vllm:num_preemptions`` for ``vllm:num_preemptions_total``) is left out:
    the parser reports it, but Prometheus stores only ``..._total``, so a rule that names the family
    matches nothing.
    """
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(prefix):
            continue
        names |= {s.name for s in family.samples}
        if family.type in ("histogram", "gaugehistogram", "summary"):
            names.add(family.name)
    return names


def totals(url: str, names: list[str], timeout: float = 10.0) -> dict[str, float]:
    """The current value of each sample name in ``names``, summed over its labels (0 when absent).

    E.g. ``totals(engine.url + "/metrics", ["vllm:prefix_cache_hits_total"])``; take it before and
    after an experiment, and the difference is what the experiment did.
    """
    values = {name: 0.0 for name in names}
    for sample_name, _, value in samples(scrape(url, timeout)):
        if sample_name in values:
            values[sample_name] += value
    return values


class MetricsRecorder:
    """Scrape ``url`` every ``interval_s`` in a background thread while a ``with`` block runs.

    A Prometheus without the Prometheus: for a notebook that wants a few gauges and counters over
    time (running vs waiting requests, KV cache usage, preemptions) during one experiment. Each
    named family is summed over its labels; ``frame()`` gives one row per scrape with ``t`` in
    seconds since the start. A failed scrape is skipped (the server may be busy), not fatal.
    """

    def __init__(self, url: str, names: list[str], interval_s: float = 0.5, timeout_s: float = 5.0) -> None:
        self.url, self.names, self.interval_s, self.timeout_s = url, names, interval_s, timeout_s
        self.rows: list[dict[str, float]] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-recorder", daemon=True)
        self._began = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                values = totals(self.url, self.names, self.timeout_s)
                self.rows.append({"t": time.perf_counter() - self._began, **values})
            except ServelabError:
                self.failed += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MetricsRecorder:
        self._began = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + self.interval_s + 1)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["t", *self.names])
