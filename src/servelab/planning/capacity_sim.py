"""Replicas, queue and latency of an autoscaled vLLM Deployment over a day, from measured per-replica figures.

Why simulate: a day of traffic against a real cluster is not something a workshop can run, but the
questions (how many replica-hours, how many requests miss the SLO, which queue target) only need three
inputs, all measured by the kit: one replica's throughput and TTFT at each batch size (notebook 05's
closed-loop rows), how long a new pod takes to become ready (the engine's start time, notebook 00), and
the HPA algorithm (:mod:`servelab.k8s.autoscale`).

The model, stepped in fixed time steps (1 s by default), is a fluid one: requests arrive (Poisson counts
from a rate trace), wait in one queue in front of all ready pods (an ideal load balancer), and join a
pod's running batch while it holds fewer than ``max_batch`` requests (vLLM's ``--max-num-seqs``); a pod
running ``c`` requests completes them at the measured request rate for concurrency ``c``. A request's
TTFT is its time in the queue plus the measured TTFT at the batch size it joins. Every
``sync_period_s`` the HPA reads the waiting requests per ready pod; pods it adds cost money at once
and serve only after ``startup_s``; pods it removes go starting-first (as a ReplicaSet does).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from servelab.errors import ServelabError
from servelab.k8s.autoscale import DEFAULT_SYNC_PERIOD_S, HorizontalPodAutoscaler, HPASpec, pods_metric_replicas


@dataclass(frozen=True)
class ReplicaModel:
    """One replica's measured behaviour at each running-batch size (closed-loop concurrency)."""

    concurrency: tuple[float, ...]
    request_throughput: tuple[float, ...]
    ttft_s: tuple[float, ...]
    max_batch: int

    @classmethod
    def from_bench_rows(
        cls, rows: Sequence[dict], slo_ttft_s: float | None = None, max_batch: int | None = None
    ) -> ReplicaModel:
        """Build from notebook 05's ``closed`` rows. ``max_batch`` defaults to the largest measured
        concurrency whose TTFT p99 meets ``slo_ttft_s`` (all of them without an SLO): that is the batch a
        replica can hold and still answer in time, so it is what ``--max-num-seqs`` should be."""
        rows = sorted(rows, key=lambda r: r["concurrency"])
        if not rows:
            raise ServelabError(
                "No benchmark rows to build a replica model from.", "run notebooks/05_benchmarking.ipynb"
            )
        if max_batch is None:
            fits = [r["concurrency"] for r in rows if slo_ttft_s is None or r["ttft_p99_s"] <= slo_ttft_s]
            max_batch = int(max(fits) if fits else rows[0]["concurrency"])
        return cls(
            tuple(float(r["concurrency"]) for r in rows),
            tuple(float(r["request_throughput"]) for r in rows),
            tuple(float(r["ttft_p50_s"]) for r in rows),
            int(max_batch),
        )

    def throughput(self, running: float) -> float:
        """Requests/s one replica completes with ``running`` requests in its batch (linear between the
        measured points, through (0, 0); flat beyond the largest measured batch)."""
        return _interp(min(running, self.max_batch), (0.0, *self.concurrency), (0.0, *self.request_throughput))

    def ttft(self, running: float) -> float:
        """TTFT (s) of a request that joins a batch of ``running`` requests."""
        return _interp(min(max(running, self.concurrency[0]), self.max_batch), self.concurrency, self.ttft_s)

    @property
    def capacity_rps(self) -> float:
        """Requests/s of one replica with a full batch."""
        return self.throughput(self.max_batch)


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """``numpy.interp`` for one scalar, without numpy's per-call overhead (the simulation calls it per step)."""
    if x <= xs[0]:
        return float(ys[0])
    i = bisect.bisect_left(xs, x)
    if i >= len(xs):
        return float(ys[-1])
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def diurnal_rate(
    duration_s: float,
    step_s: float,
    trough_rps: float,
    peak_rps: float,
    period_s: float = 86_400.0,
    bursts: int = 6,
    burst_factor: float = 1.8,
    burst_s: float = 300.0,
    seed: int = 0,
) -> np.ndarray:
    """Offered load (requests/s) per step: a day-shaped wave (lowest at t=0, highest at half a period)
    with ``bursts`` random bursts of ``burst_factor`` times the load for ``burst_s`` each."""
    if not 0 <= trough_rps <= peak_rps:
        raise ServelabError(
            f"Load trough {trough_rps} and peak {peak_rps} are inconsistent.", "use 0 <= trough <= peak"
        )
    t = np.arange(0.0, duration_s, step_s)
    rate = trough_rps + (peak_rps - trough_rps) * 0.5 * (1 - np.cos(2 * np.pi * t / period_s))
    rng = np.random.default_rng(seed)
    for start in rng.uniform(0, max(duration_s - burst_s, 0.0), size=bursts):
        rate[(t >= start) & (t < start + burst_s)] *= burst_factor
    return rate


def poisson_arrivals(rate: np.ndarray, step_s: float, seed: int = 0) -> np.ndarray:
    """Requests arriving in each step: Poisson counts with mean ``rate x step_s`` (seeded, reproducible)."""
    return np.random.default_rng(seed).poisson(rate * step_s)


@dataclass(frozen=True)
class SimResult:
    """Per-step time series and per-admitted-cohort TTFTs of one simulated run."""

    steps: pd.DataFrame
    ttft: pd.DataFrame  # columns t_s, ttft_s, requests (a cohort admitted together)
    slo_ttft_s: float
    step_s: float

    def summary(self) -> dict[str, float]:
        """The figures a capacity plan is judged on."""
        w = self.ttft["requests"].to_numpy()
        v = self.ttft["ttft_s"].to_numpy()
        return {
            "replica_hours": float(self.steps["replicas"].sum() * self.step_s / 3600),
            "mean_replicas": float(self.steps["replicas"].mean()),
            "max_replicas_used": int(self.steps["replicas"].max()),
            "requests": float(w.sum()),
            "slo_violation_share": float(w[v > self.slo_ttft_s].sum() / w.sum()) if w.sum() else 0.0,
            "ttft_p50_s": weighted_quantile(v, w, 0.50),
            "ttft_p99_s": weighted_quantile(v, w, 0.99),
            "max_waiting": float(self.steps["waiting"].max()),
            "scale_events": int((self.steps["replicas"].diff().fillna(0) != 0).sum()),
        }

    def windows(self, window_s: float = 300.0) -> pd.DataFrame:
        """TTFT p99 and SLO-violation share per time window (for plotting over the day)."""
        frame = self.ttft.assign(window=(self.ttft["t_s"] // window_s) * window_s)
        rows = []
        for t, g in frame.groupby("window"):
            values, weights = g["ttft_s"].to_numpy(), g["requests"].to_numpy()
            rows.append(
                {
                    "t_s": t,
                    "ttft_p99_s": weighted_quantile(values, weights, 0.99),
                    "slo_violation_share": float(weights[values > self.slo_ttft_s].sum() / weights.sum()),
                }
            )
        return pd.DataFrame(rows)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` where each value stands for ``weights`` requests."""
    if len(values) == 0 or weights.sum() <= 0:
        return float("nan")
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1])])


def simulate(
    arrivals: np.ndarray,
    model: ReplicaModel,
    hpa: HPASpec,
    startup_s: float,
    slo_ttft_s: float,
    step_s: float = 1.0,
    sync_period_s: float = DEFAULT_SYNC_PERIOD_S,
    initial_replicas: int | None = None,
) -> SimResult:
    """Run the fluid queue + HPA model over ``arrivals`` (requests per step). See the module docstring."""
    if startup_s < 0 or step_s <= 0 or sync_period_s < step_s:
        raise ServelabError("Simulation timing is inconsistent.", "use startup_s >= 0 and sync_period_s >= step_s > 0")
    n = len(arrivals)
    controller = HorizontalPodAutoscaler(hpa)
    ready = initial_replicas if initial_replicas is not None else hpa.min_replicas
    starting: list[float] = []  # ready-at times of pods still loading the model
    running = queued = 0.0
    queue: deque[list[float]] = deque()  # [arrival time, requests] cohorts, oldest first
    sync_every = max(1, round(sync_period_s / step_s))
    cols = {k: np.zeros(n) for k in ("arrivals", "ready", "starting", "waiting", "running", "completed")}
    admitted: list[tuple[float, float, float]] = []
    for i in range(n):
        now = i * step_s
        if arrivals[i]:
            queue.append([now, float(arrivals[i])])
            queued += float(arrivals[i])
        became_ready = sum(1 for t in starting if t <= now)
        if became_ready:
            starting = [t for t in starting if t > now]
            ready += became_ready
        done = 0.0
        if ready and running > 0:
            done = min(running, ready * model.throughput(running / ready) * step_s)
            running -= done
        free = ready * model.max_batch - running
        if free > 1e-9 and queue:
            join_batch = (running + min(free, queued)) / ready
            ttft_here = model.ttft(join_batch)
            while queue and free > 1e-9:
                cohort = queue[0]
                take = min(free, cohort[1])
                admitted.append((now, now - cohort[0] + ttft_here, take))
                cohort[1] -= take
                queued -= take
                free -= take
                running += take
                if cohort[1] <= 1e-9:
                    queue.popleft()
        waiting = max(queued, 0.0)
        if i % sync_every == 0 and ready:
            current = ready + len(starting)
            proposal = pods_metric_replicas(
                current, [waiting / ready] * ready, hpa.target, missing=len(starting), tolerance=hpa.tolerance
            )
            desired = controller.sync(now, current, proposal)
            if desired > current:
                starting += [now + startup_s] * (desired - current)
            elif desired < current:
                drop = current - desired
                starting.sort()
                while drop and starting:  # a ReplicaSet removes pods that are not ready first
                    starting.pop()
                    drop -= 1
                ready -= drop
        for key, value in (
            ("arrivals", arrivals[i]),
            ("ready", ready),
            ("starting", len(starting)),
            ("waiting", waiting),
            ("running", running),
            ("completed", done),
        ):
            cols[key][i] = value
    # Requests still queued at the end count with the wait they had so far (a lower bound).
    end = n * step_s
    admitted += [(end, end - t0 + model.ttft(model.max_batch), left) for t0, left in queue]
    steps = pd.DataFrame({"t_s": np.arange(n) * step_s, **cols})
    steps["replicas"] = steps["ready"] + steps["starting"]
    return SimResult(steps, pd.DataFrame(admitted, columns=["t_s", "ttft_s", "requests"]), slo_ttft_s, step_s)


def replicas_needed(offered_rps: float, model: ReplicaModel) -> int:
    """The fewest replicas whose full-batch capacity covers ``offered_rps`` (a static plan, for comparison)."""
    return max(1, math.ceil(offered_rps / model.capacity_rps))


def queue_target_bound(model: ReplicaModel, slo_ttft_s: float) -> float:
    """The most waiting requests per pod an HPA target may hold and still let a request meet the SLO.

    An HPA on the queue settles where each ready pod holds about ``target`` waiting requests (below
    that the queue is empty and it proposes ``minReplicas``). A pod works its queue off at its
    full-batch capacity, so a request waits ``target / capacity_rps`` seconds and then gets the TTFT of
    a full batch: the SLO holds while ``target <= (slo_ttft_s - ttft(max_batch)) * capacity_rps``.
    The figure depends on answer length through ``capacity_rps``: longer answers, a lower bound.
    """
    return max(0.0, (slo_ttft_s - model.ttft(model.max_batch)) * model.capacity_rps)


def preferred_at_most(value: float) -> float:
    """The largest number of the 1-2-5 series (..., 0.2, 0.5, 1, 2, 5, 10, ...) not above ``value`` > 0."""
    if not value > 0:
        raise ServelabError(f"{value} has no 1-2-5 value below it", "pass a positive number")
    exponent = math.floor(math.log10(value))
    for mantissa in (5, 2, 1):
        candidate = round(mantissa * 10.0**exponent, 12)
        if candidate <= value * (1 + 1e-12):
            return candidate
    return round(5 * 10.0 ** (exponent - 1), 12)


def recommend_queue_target(model: ReplicaModel, slo_ttft_s: float) -> float:
    """The HPA target (waiting requests per pod) this measurement supports: :func:`queue_target_bound`
    rounded down to the 1-2-5 series, so the manifest carries a value a reader can check by hand."""
    bound = queue_target_bound(model, slo_ttft_s)
    if bound <= 0:
        raise ServelabError(
            f"A full batch of {model.max_batch} already takes {model.ttft(model.max_batch):.2f} s to the first token, "
            f"more than the {slo_ttft_s:g} s SLO: no queue target can meet it.",
            "lower max_batch (--max-num-seqs) or relax the SLO",
        )
    return preferred_at_most(bound)
