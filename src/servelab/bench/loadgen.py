"""The load generator: sends streamed requests in a closed or an open loop and times every chunk.

Two load modes, because they answer different questions:

- **Closed loop** (``concurrency=N``, no ``request_rate``): N workers, each sends its next request as
  soon as the previous one ends. The server never sees more than N requests; this measures how an
  engine behaves at a given batch size.
- **Open loop** (``request_rate=r``): requests arrive on a clock, independent of how fast answers
  come back, like real users. Inter-arrival times are gamma-distributed with shape ``burstiness``
  and mean ``1/r`` (``burstiness=1`` is a Poisson process; smaller is burstier), as in
  ``vllm bench serve``. ``concurrency`` then caps requests in flight; the time a request waits in the
  client for a slot is recorded as ``client_queue_s`` and is *not* counted in its TTFT.

A run never hangs on a dead server: it checks the server answers before it starts, and stops with a
:class:`~servelab.errors.ServelabError` after a few consecutive refused connections.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pandas as pd
from tqdm import tqdm

from servelab import sse
from servelab.aio import run_sync
from servelab.bench.stats import BenchResult, RequestRecord, Status
from servelab.bench.workload import Endpoint, Request, Workload
from servelab.errors import ServelabError

MAX_CONNECT_FAILURES = 3
UNREACHABLE_FIX = (
    "start the engine first (e.g. engine = start_llamacpp()) and pass engine.base_url; "
    "if it was running, read its log: it may have crashed"
)


class _ServerGone(Exception):
    """Raised inside the run when connections keep being refused; turned into a ServelabError."""


def inter_arrival_times(n: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """``n`` gaps between arrivals: gamma(shape=burstiness, scale=1/(rate*burstiness)), mean 1/rate.

    The mean does not depend on ``burstiness``; only the variance does (CV = 1/sqrt(burstiness)).
    """
    if request_rate <= 0 or burstiness <= 0:
        raise ServelabError(
            f"request_rate={request_rate} and burstiness={burstiness} must be > 0.",
            "use e.g. request_rate=2.0, burstiness=1.0 (Poisson)",
        )
    if np.isinf(request_rate):
        return np.zeros(n)
    return _arrival_rng(seed).gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n)


def _arrival_rng(seed: int) -> np.random.Generator:
    # Its own stream, apart from the workload's default_rng(seed): prompt lengths and arrival gaps
    # must not be correlated, and the prompts must not change with the rate.
    return np.random.default_rng([seed, 7919])


def arrival_offsets(n: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """When each of ``n`` requests arrives, in seconds after the start; the first arrives at 0.

    An open-loop run with the same ``seed`` uses exactly this schedule.
    """
    gaps = inter_arrival_times(max(n - 1, 0), request_rate, burstiness, seed)
    return np.concatenate([[0.0], np.cumsum(gaps)])[:n]


def _api_url(base_url: str, endpoint: Endpoint) -> str:
    if endpoint not in ("completions", "chat"):
        raise ServelabError(
            f"endpoint={endpoint!r} is not 'completions' or 'chat'.", "pass endpoint='completions' or endpoint='chat'"
        )
    return base_url.rstrip("/") + ("/chat/completions" if endpoint == "chat" else "/completions")


async def send_request(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    request: Request,
    endpoint: Endpoint,
    timeout_s: float,
    *,
    index: int = 0,
    run_start: float = 0.0,
    client_queue_s: float = 0.0,
) -> tuple[RequestRecord, bool]:
    """Send one streamed request and time it; returns the record and whether the connection failed.

    Never raises for a failed request: the failure is the record's status, so it is counted.
    """
    chunk_times: list[float] = []
    usage: dict[str, Any] | None = None
    finish: str | None = None
    status: Status = "ok"
    error: str | None = None
    refused = False
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=request.body(model, endpoint)) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    status, error = "error", f"HTTP {response.status_code}: {detail}"
                else:
                    async for line in response.aiter_lines():
                        event = sse.parse_line(line)
                        if event is None:
                            continue
                        if event.done:
                            break
                        now = time.perf_counter()
                        if event.data is None:
                            status, error = "error", f"a stream event is not JSON: {event.invalid!r:.200}"
                            break
                        if event.error is not None:
                            status, error = "error", f"error in stream: {event.error}"
                            break
                        usage = event.data.get("usage") or usage
                        text, reason = sse.chunk_text(event.data)
                        if text:
                            chunk_times.append(now)
                        finish = reason or finish
    except (TimeoutError, httpx.TimeoutException):
        status, error = "timeout", f"no complete answer within {timeout_s:g} s"
    except httpx.ConnectError as err:
        status, error, refused = "error", f"connection failed: {err}", True
    except httpx.HTTPError as err:
        status, error = "error", f"{type(err).__name__}: {err}"
    end = time.perf_counter()
    output_tokens = usage.get("completion_tokens") if usage else None
    input_tokens = usage.get("prompt_tokens") if usage else request.input_tokens
    record = RequestRecord.from_timestamps(
        index,
        sent,
        chunk_times,
        end,
        run_start=run_start,
        status=status,
        output_tokens=output_tokens,
        input_tokens=input_tokens,
        max_tokens=request.max_tokens,
        client_queue_s=client_queue_s,
        finish_reason=finish,
        error=error,
    )
    return record, refused


async def check_server(client: httpx.AsyncClient, base_url: str) -> None:
    """Fail fast, with a fix, when nothing answers at ``base_url`` (instead of N failed requests)."""
    try:
        response = await client.get(base_url.rstrip("/") + "/models", timeout=5.0)
    except httpx.HTTPError as err:
        raise ServelabError(
            f"The server at {base_url} is unreachable ({type(err).__name__}: {err}).", UNREACHABLE_FIX
        ) from None
    if response.status_code == 404:
        raise ServelabError(
            f"{base_url}/models answered 404: that is not the root of an OpenAI API.",
            "pass the API root, which ends in /v1 (engine.base_url), not engine.url",
        )


class _Run:
    """Shared state of one run: records, the consecutive-refusal counter, the limits, the stop flag."""

    def __init__(
        self,
        num_requests: int | None,
        duration_s: float | None,
        max_connect_failures: int,
        stop: threading.Event,
        bar: tqdm,
    ) -> None:
        self.records: list[RequestRecord] = []
        self.num_requests = num_requests
        self.duration_s = duration_s
        self.max_connect_failures = max_connect_failures
        self.stop = stop
        self.bar = bar
        self.refused_in_a_row = 0
        self.issued = 0
        self.start = time.perf_counter()

    def may_issue(self) -> bool:
        if self.stop.is_set():
            return False
        if self.num_requests is not None and self.issued >= self.num_requests:
            return False
        return self.duration_s is None or time.perf_counter() - self.start < self.duration_s

    def add(self, record: RequestRecord, refused: bool) -> None:
        self.records.append(record)
        self.bar.update(1)
        self.refused_in_a_row = self.refused_in_a_row + 1 if refused else 0
        if self.refused_in_a_row >= self.max_connect_failures:
            raise _ServerGone(f"{self.refused_in_a_row} connections refused in a row; last: {record.error}")


async def _warm_up(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    requests: Iterator[Request],
    endpoint: Endpoint,
    timeout_s: float,
    count: int,
    parallel: int,
) -> None:
    """Unrecorded requests first, so one-time costs (graph capture, page faults) skew no figure."""
    remaining = count
    while remaining > 0:
        batch = [next(requests) for _ in range(min(parallel, remaining))]
        remaining -= len(batch)
        outcomes = await asyncio.gather(*(send_request(client, url, model, r, endpoint, timeout_s) for r in batch))
        if all(refused for _, refused in outcomes):
            raise _ServerGone(f"every warm-up request was refused; last: {outcomes[-1][0].error}")


# Sends one request (request, index, seconds it waited for a slot) and gives what send_request returns.
_Issue = Callable[[Request, int, float], Awaitable[tuple[RequestRecord, bool]]]


async def _closed_loop(run: _Run, concurrency: int, issue: _Issue, requests: Iterator[Request]) -> None:
    async def worker() -> None:
        while run.may_issue():
            index = run.issued
            run.issued += 1
            run.add(*await issue(next(requests), index, 0.0))

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


async def _open_loop(
    run: _Run,
    request_rate: float,
    burstiness: float,
    seed: int,
    concurrency: int | None,
    issue: _Issue,
    requests: Iterator[Request],
) -> None:
    slots = asyncio.Semaphore(concurrency) if concurrency else None

    async def one(request: Request, index: int) -> None:
        arrived = time.perf_counter()
        if slots is None:
            run.add(*await issue(request, index, 0.0))
            return
        async with slots:
            run.add(*await issue(request, index, time.perf_counter() - arrived))

    async with asyncio.TaskGroup() as group:
        gaps = _gap_stream(request_rate, burstiness, seed)
        due = run.start
        while run.may_issue():
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
                if not run.may_issue():
                    break
            index = run.issued
            run.issued += 1
            group.create_task(one(next(requests), index))
            due += next(gaps)


def _gap_stream(request_rate: float, burstiness: float, seed: int, block: int = 1024) -> Iterator[float]:
    """Inter-arrival gaps without end; the same numbers as :func:`inter_arrival_times` for ``seed``."""
    rng = _arrival_rng(seed)
    while True:
        if np.isinf(request_rate):
            yield 0.0
            continue
        yield from rng.gamma(burstiness, 1.0 / (request_rate * burstiness), size=block).tolist()


def _validate(
    concurrency: int | None,
    request_rate: float | None,
    num_requests: int | None,
    duration_s: float | None,
    timeout_s: float,
) -> None:
    if num_requests is None and duration_s is None:
        raise ServelabError(
            "The run has no end: num_requests and duration_s are both None.",
            "set num_requests=50, or duration_s=30, or both",
        )
    if concurrency is not None and concurrency < 1:
        raise ServelabError(f"concurrency={concurrency} must be at least 1.", "use concurrency=1 or more")
    if request_rate is not None and request_rate <= 0:
        raise ServelabError(
            f"request_rate={request_rate} must be > 0.", "use request_rate=float('inf') to send everything at once"
        )
    if timeout_s <= 0:
        raise ServelabError(f"timeout_s={timeout_s} must be > 0.", "use e.g. timeout_s=60")


async def run_benchmark_async(
    base_url: str,
    model: str,
    workload: Workload,
    *,
    concurrency: int | None = None,
    request_rate: float | None = None,
    burstiness: float = 1.0,
    num_requests: int | None = 100,
    duration_s: float | None = None,
    warmup: int = 2,
    timeout_s: float = 60.0,
    endpoint: Endpoint = "completions",
    progress: bool = True,
    seed: int = 0,
    slo_ttft_s: float | None = None,
    slo_tpot_s: float | None = None,
    api_key: str | None = None,
    health_check: bool = True,
    max_connect_failures: int = MAX_CONNECT_FAILURES,
    stop: threading.Event | None = None,
) -> BenchResult:
    """The async form of :func:`run_benchmark` (``await`` it from async code)."""
    _validate(concurrency, request_rate, num_requests, duration_s, timeout_s)
    if request_rate is None and concurrency is None:
        concurrency = 1
    url = _api_url(base_url, endpoint)
    mode = "open-loop" if request_rate is not None else "closed-loop"
    config = {
        "base_url": base_url,
        "model": model,
        "endpoint": endpoint,
        "mode": mode,
        "concurrency": concurrency,
        "request_rate": request_rate,
        "burstiness": burstiness,
        "num_requests": num_requests,
        "duration_s": duration_s,
        "warmup": warmup,
        "timeout_s": timeout_s,
        "seed": seed,
        "workload": workload.describe(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    loopback = urlparse(base_url).hostname in ("127.0.0.1", "localhost", "::1")
    # The harness limits concurrency itself; httpx's own pool limit would add a hidden queue to TTFT.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(concurrency or 0, 64))
    stop = stop or threading.Event()
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s + 5.0, connect=min(timeout_s, 10.0)),
        limits=limits,
        headers=headers,
        trust_env=not loopback,
    ) as client:
        if health_check:
            await check_server(client, base_url)
        bar = tqdm(
            total=num_requests,
            desc=f"bench {mode} " + (f"rate={request_rate:g}/s" if request_rate else f"c={concurrency}"),
            unit="req",
            disable=not progress,
            leave=False,
        )
        run = _Run(num_requests, duration_s, max_connect_failures, stop, bar)
        try:
            if warmup:
                await _warm_up(
                    client,
                    url,
                    model,
                    workload.requests(seed + 1_000_003),
                    endpoint,
                    timeout_s,
                    warmup,
                    concurrency or 1,
                )
            run.start = time.perf_counter()  # the clock starts after warm-up

            def issue(request: Request, index: int, queue_s: float) -> Awaitable[tuple[RequestRecord, bool]]:
                return send_request(
                    client,
                    url,
                    model,
                    request,
                    endpoint,
                    timeout_s,
                    index=index,
                    run_start=run.start,
                    client_queue_s=queue_s,
                )

            requests = workload.requests(seed)
            if request_rate is None:
                await _closed_loop(run, concurrency or 1, issue, requests)
            else:
                await _open_loop(run, request_rate, burstiness, seed, concurrency, issue, requests)
            duration = time.perf_counter() - run.start  # until the last request in flight has ended
        except (_ServerGone, BaseExceptionGroup) as err:
            first = _first_leaf(err)
            if isinstance(first, _ServerGone):
                raise ServelabError(
                    f"The server at {base_url} stopped accepting connections ({first}).", UNREACHABLE_FIX
                ) from None
            raise first from None  # a plain traceback, not a task group's, for anything unexpected
        finally:
            bar.close()
    return BenchResult(sorted(run.records, key=lambda r: r.index), config, duration, slo_ttft_s, slo_tpot_s)


def _first_leaf(err: BaseException) -> BaseException:
    while isinstance(err, BaseExceptionGroup):
        gone = err.subgroup(_ServerGone)
        err = (gone or err).exceptions[0]
    return err


def run_benchmark(base_url: str, model: str, workload: Workload, **options: Any) -> BenchResult:
    """Benchmark an OpenAI-compatible server and return every request's record plus the summary.

    ``base_url`` is the API root (``engine.base_url``, ending in ``/v1``). ``options`` are the keywords
    of :func:`run_benchmark_async` (one list of defaults for both). Give ``concurrency`` for a closed
    loop, ``request_rate`` (req/s) for an open loop (``concurrency`` then caps requests in flight),
    neither for one request at a time. The run ends after ``num_requests`` requests (default 100) or
    ``duration_s`` seconds, whichever comes first; requests in flight then finish (each bounded by
    ``timeout_s``, default 60). Also: ``warmup``, ``burstiness``, ``endpoint``, ``progress``, ``seed``,
    ``slo_ttft_s``, ``slo_tpot_s`` (goodput), ``api_key``, ``health_check``, ``max_connect_failures``.

    Works in a plain script and in Jupyter, whose event loop is already running: there the run goes
    to a worker thread with its own loop; interrupting the kernel stops new requests from being sent.
    """
    return run_sync(
        lambda stop: run_benchmark_async(base_url, model, workload, stop=stop, **options), thread_name="servelab-bench"
    )


def _sweep(
    label: str, values: list[Any], run: Callable[[Any, int], BenchResult], save_dir: Any, name: str, seed: int
) -> pd.DataFrame:
    """One run per value, the i-th with the workload seed ``seed + i``: each level gets prompts of its own.

    With one seed for every level, a level would resend the prompts the previous level sent first, and a
    server that keeps them (llama-server's slots reuse a cached prompt; vLLM's prefix cache) would answer
    those from its cache: time to first token would fall as users rise. Two sweeps over the same values
    (two engines) still send identical prompts, level by level.
    """
    rows = []
    for i, value in enumerate(values):
        result = run(value, seed + i)
        if save_dir is not None:
            result.save(save_dir, f"{name}-{label}{value:g}")
        rows.append({label: value, **result.summary})
    return pd.DataFrame(rows)


def sweep_concurrency(
    base_url: str,
    model: str,
    workload: Workload,
    levels: list[int],
    *,
    save_dir: Any = None,
    name: str = "sweep",
    requests_per_user: int | None = None,
    min_requests: int = 4,
    **run_options: Any,
) -> pd.DataFrame:
    """One closed-loop run per concurrency level; one summary row per level (column ``concurrency``).

    Each level needs several requests per user to measure a steady state: with ``requests_per_user``
    a level of C users sends ``max(min_requests, requests_per_user * C)`` requests; otherwise
    ``num_requests`` from ``run_options`` applies to every level. ``run_options`` go to
    :func:`run_benchmark`; its ``seed`` (default 0) is the first level's, the next levels take the next
    seeds, so no level resends another's prompts. With ``save_dir`` each run is also saved.
    """
    options = dict(run_options)
    seed = int(options.pop("seed", 0))

    def run(c: int, level_seed: int) -> BenchResult:
        level = dict(options, seed=level_seed)
        if requests_per_user is not None:
            level["num_requests"] = max(min_requests, requests_per_user * c)
        return run_benchmark(base_url, model, workload, concurrency=c, **level)

    return _sweep("concurrency", list(levels), run, save_dir, name, seed)


def sweep_rate(
    base_url: str,
    model: str,
    workload: Workload,
    rates: list[float],
    *,
    save_dir: Any = None,
    name: str = "sweep",
    **run_options: Any,
) -> pd.DataFrame:
    """One open-loop run per request rate (req/s); one summary row per rate (column ``request_rate``).

    Pass ``concurrency`` in ``run_options`` to cap requests in flight, ``burstiness`` for burstier
    arrivals. As in :func:`sweep_concurrency`, each rate takes the next seed after ``seed`` (default 0).
    """
    options = dict(run_options)
    seed = int(options.pop("seed", 0))
    return _sweep(
        "request_rate",
        list(rates),
        lambda r, level_seed: run_benchmark(base_url, model, workload, request_rate=r, seed=level_seed, **options),
        save_dir,
        name,
        seed,
    )
