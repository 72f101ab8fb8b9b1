"""llama.cpp's queue signal, live: what the kit's llama.cpp alert rules and HPA read, on the real llama-server.

The HPA in manifests/llamacpp and the rule LlamaCppQueueBacklog scale and page on
``llamacpp:requests_deferred``. Here the kit-built llama-server (the build manifests/llamacpp deploys) is
started with ``--parallel 1`` and with ``--parallel 4``, given more concurrent requests than slots, and
its /metrics read while it is loaded (servelab.observe.metrics.MetricsRecorder).

What it showed (llama-server b11312, SmolLM2-135M Q4_1, 2 cores shared with other jobs, 2026-12-01):

| slots | concurrent requests | answer tokens | read every | max requests_processing | max requests_deferred |
|---|---|---|---|---|---|
| 1 | 5 | 32 | 0.2 s | 1 | 4 |
| 4 | 8 | 32 | 0.2 s | 4 | 4 |
| 1 | 8 | 48 | 0.1 s | 1 | 7 |
| 4 | 8 | 48 | 0.1 s | 4 | 4 |
| 1 | 8 | 48 | 0.25 s | 1 | 6 |

(the first two rows are this file as it stands, 16 s in all; the last row is a first probe in which one
read of /metrics waited 5.4 s for its answer and reported 6 of the 7 waiting; in the other runs the
slowest read took 0.5 s). The deferred count fell by one per finished answer, to 0.

- One slot shows its queue as four do: "a server with one slot never shows a queue (so an HPA on it never
  scales)" is false for llama-server. Deferred = requests beyond the busy slots, up to N - slots.
- What is true, and what to teach instead: (1) the gauge counts the requests that found every slot busy
  when the server last looked at them (one that arrives during a decode step is counted after it, by the
  server's source), and /metrics is answered from the server's own task loop, so a read can wait for its
  answer (5.4 s once, on a shared machine, under the ServiceMonitor's 10 s scrapeTimeout). (2) It is a
  snapshot taken when /metrics is read: Prometheus sees the queue only at its scrapes, 15 s apart, so a
  burst that drains between two scrapes never reaches the HPA. (3) The busy-slots gauge,
  requests_processing, does stop at --parallel: an HPA on it with a target of 1 or more never scales a
  one-slot server, and that is the queue-less signal. (4) llama-cpp-python's server (the notebooks'
  ``start_llamacpp``) exports no /metrics (404), and llama-server without ``--metrics`` answers 501:
  neither can feed the HPA, and both make the scrape fail (LlamaCppServerDown).
- The throughput gauges (``llamacpp:predicted_tokens_seconds``...) are averages since the previous read
  of /metrics: every read restarts them, so two scrapers of one pod (an HA Prometheus pair, someone's curl)
  each see the other's window. The kit's rules and HPA read none of them.

Every metric name the llama.cpp rules, the prometheus-adapter rule and KEDA's query read is asserted here
against the live /metrics, as tests/live/test_engines.py does for vLLM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import pytest

from servelab.engines.launch import Engine, LlamaServerOptions, start_llama_server
from servelab.k8s import autoscalers
from servelab.observe import alerts, metrics
from servelab.paths import manifests_path

pytestmark = pytest.mark.engines
DEFERRED, PROCESSING = "llamacpp:requests_deferred", "llamacpp:requests_processing"
ANSWER_TOKENS = 32
READ_EVERY_S = 0.2
MEASURED: dict[int, dict[str, float]] = {}  # slots -> what the load showed, printed with -s


def _ask(url: str, i: int) -> int:
    body = {"prompt": f"Story {i}: once upon a time", "n_predict": ANSWER_TOKENS, "ignore_eos": True, "temperature": 0}
    return int(httpx.post(url + "/v1/completions", json=body, timeout=120).json()["usage"]["completion_tokens"])


def _gauges(url: str) -> tuple[float, float]:
    """(processing, deferred) as one read of /metrics gives them now."""
    values = {name: value for name, _, value in metrics.samples(metrics.scrape(url)) if name in (PROCESSING, DEFERRED)}
    return values[PROCESSING], values[DEFERRED]


def _drained(url: str, timeout_s: float = 15.0) -> tuple[float, float]:
    """The gauges once every answer is in, read until both are 0 or ``timeout_s`` passes: on a loaded host
    the recorder's last read can be seconds old, taken while the last answer was still decoding."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = _gauges(url)
        if now == (0, 0) or time.monotonic() > deadline:
            return now
        time.sleep(READ_EVERY_S)


def _load(server: Engine, users: int) -> tuple[pd.DataFrame, tuple[float, float]]:
    """``users`` concurrent requests while /metrics is read every READ_EVERY_S; one row per read (``gap``:
    seconds since the previous row, i.e. how long that read waited for its answer, plus READ_EVERY_S),
    and the gauges once the load is over."""
    url = server.url + "/metrics"
    with metrics.MetricsRecorder(url, [DEFERRED, PROCESSING], interval_s=READ_EVERY_S) as recorder:
        time.sleep(0.5)  # a few idle reads first
        with ThreadPoolExecutor(users) as pool:
            answered = list(pool.map(lambda i: _ask(server.url, i), range(users)))
    assert answered == [ANSWER_TOKENS] * users and not recorder.failed
    frame = recorder.frame()
    return frame.assign(gap=frame["t"].diff()), _drained(url)


@pytest.fixture(scope="module")
def four_slots() -> Iterator[Engine]:
    """llama-server as manifests/llamacpp runs it: 4 slots sharing one cache, --metrics on."""
    with start_llama_server(options=LlamaServerOptions(parallel=4)) as engine:
        yield engine


@pytest.mark.parametrize(("slots", "users"), [(1, 5), (4, 8)])
def test_requests_deferred_shows_the_queue_beyond_the_slots_even_with_one_slot(
    slots: int, users: int, four_slots: Engine
) -> None:
    """More requests than slots: the busy slots stop at --parallel, the rest are deferred, then drain."""
    if slots == 4:
        frame, drained = _load(four_slots, users)
    else:
        with start_llama_server(options=LlamaServerOptions(parallel=slots)) as one_slot:
            frame, drained = _load(one_slot, users)
    peak = frame[[PROCESSING, DEFERRED]].max()
    MEASURED[slots] = {
        "users": users,
        "max processing": peak[PROCESSING],
        "max deferred": peak[DEFERRED],
        "reads": len(frame),
        "reads with deferred > 0": int((frame[DEFERRED] > 0).sum()),
        "slowest read s": round(float(frame["gap"].max()), 2),
    }
    print(f"\n--parallel {slots}: {MEASURED[slots]}")
    assert peak[PROCESSING] == slots  # never more running than slots
    assert 0 < peak[DEFERRED] <= users - slots  # the queue is visible, one slot or four
    assert peak[DEFERRED] >= (users - slots) // 2, MEASURED[slots]  # most of the waiting ones, not a flicker
    assert drained == (0, 0)  # drained: an idle pod reads 0, the HPA scales down


def test_every_metric_the_llamacpp_rules_and_autoscalers_read_is_exported(four_slots: Engine) -> None:
    """The llama.cpp rules, prometheus-adapter's rule and KEDA's query read Prometheus series by llama-server's
    names; the HPA asks for the adapter's rename, which must be exactly what the adapter's rule makes of it.
    The gauges the HPA and the queue rule read are gauges (a counter's rate would be another rule)."""
    four_slots.complete("warm the counters", max_tokens=2)
    text = metrics.scrape(four_slots.url + "/metrics")
    exported = metrics.series_names(text)  # what a PromQL query can name (as for vLLM's recorded names)
    scaling = autoscalers.autoscaling_metrics(manifests_path("llamacpp"))
    keda = autoscalers.autoscaling_metrics(manifests_path("llamacpp-keda"))
    reads = {
        **{f"alert {name}": names for name, names in alerts.rule_metric_names(group=alerts.LLAMACPP_GROUP).items()},
        **scaling.series,
        **keda.series,
    }
    assert any(w.startswith("prometheus-adapter") for w in reads) and any(w.startswith("KEDA") for w in reads)
    assert set().union(*reads.values()) >= {DEFERRED}
    missing = {where: sorted(names - exported) for where, names in reads.items()}
    assert not any(missing.values()), (missing, sorted(exported))
    asked = set().union(*scaling.hpa_metrics.values())
    assert asked and set(scaling.adapter_names.values()) == asked, (scaling.adapter_names, scaling.hpa_metrics)
    assert not asked & exported  # the renamed metric exists only in the custom metrics API
    types = metrics.families(text, "llamacpp:")
    assert types[DEFERRED] == types[PROCESSING] == "gauge", types


def test_throughput_gauges_restart_at_every_read_of_metrics(four_slots: Engine) -> None:
    """llamacpp:predicted_tokens_seconds is an average since the previous read of /metrics: read twice in a
    row after some tokens, the second read has nothing to average."""
    four_slots.complete("Count to ten:", max_tokens=16, ignore_eos=True)
    url = four_slots.url + "/metrics"
    first = metrics.totals(url, ["llamacpp:predicted_tokens_seconds"])["llamacpp:predicted_tokens_seconds"]
    second = metrics.totals(url, ["llamacpp:predicted_tokens_seconds"])["llamacpp:predicted_tokens_seconds"]
    assert first > 0 and second == 0, (first, second)


def test_without_metrics_the_scrape_fails_with_501() -> None:
    """What LlamaCppServerDown's runbook tells apart: a llama-server started without --metrics."""
    with start_llama_server(options=LlamaServerOptions(parallel=1, metrics=False)) as server:
        answer = httpx.get(server.url + "/metrics", timeout=10)
    assert answer.status_code == 501 and "--metrics" in answer.text, answer.text


def test_llama_cpp_pythons_server_exports_no_metrics(llamacpp_engine: Engine) -> None:
    """The binding's server (the notebooks' llama.cpp, the suite's shared one) has no /metrics at all:
    an HPA or alert on llamacpp:* can never see it, whatever its load."""
    answer = httpx.get(llamacpp_engine.url + "/metrics", timeout=10)
    assert answer.status_code == 404, (answer.status_code, answer.text[:200])
