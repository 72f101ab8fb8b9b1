"""servelab.planning.capacity_sim: the replica model from bench rows, the load trace, and the simulated HPA + queue."""

from __future__ import annotations

import numpy as np
import pytest

from servelab.errors import ServelabError
from servelab.k8s.autoscale import HPASpec, ScalingPolicy, ScalingRules
from servelab.planning.capacity_sim import (
    ReplicaModel,
    diurnal_rate,
    poisson_arrivals,
    preferred_at_most,
    queue_target_bound,
    recommend_queue_target,
    replicas_needed,
    simulate,
    weighted_quantile,
)

ROWS = [  # shaped like notebook 05's closed-loop rows (requests/s, TTFT p50/p99 at each concurrency)
    {"concurrency": 1, "request_throughput": 0.5, "ttft_p50_s": 0.15, "ttft_p99_s": 0.16},
    {"concurrency": 4, "request_throughput": 1.6, "ttft_p50_s": 0.45, "ttft_p99_s": 0.5},
    {"concurrency": 8, "request_throughput": 2.5, "ttft_p50_s": 0.75, "ttft_p99_s": 0.85},
    {"concurrency": 16, "request_throughput": 3.3, "ttft_p50_s": 1.7, "ttft_p99_s": 1.75},
]
FAST = HPASpec(
    target=2,
    min_replicas=1,
    max_replicas=6,
    scale_up=ScalingRules(0, (ScalingPolicy("Pods", 4, 15),)),
    scale_down=ScalingRules(60, (ScalingPolicy("Pods", 1, 30),)),
)


def test_replica_model_takes_the_largest_batch_within_the_slo() -> None:
    model = ReplicaModel.from_bench_rows(ROWS, slo_ttft_s=1.0)
    assert model.max_batch == 8 and model.capacity_rps == pytest.approx(2.5)
    assert ReplicaModel.from_bench_rows(ROWS).max_batch == 16
    assert ReplicaModel.from_bench_rows(ROWS, slo_ttft_s=0.01).max_batch == 1  # nothing fits: one at a time
    assert model.throughput(0) == 0 and model.throughput(2) == pytest.approx(0.5 + (1.6 - 0.5) / 3)
    assert model.throughput(50) == pytest.approx(2.5)  # never more than a full batch
    assert model.ttft(0) == pytest.approx(0.15) and model.ttft(6) == pytest.approx(0.6)
    assert replicas_needed(10.1, model) == 5
    with pytest.raises(ServelabError):
        ReplicaModel.from_bench_rows([])


def test_diurnal_trace_has_its_trough_peak_and_bursts() -> None:
    calm = diurnal_rate(86_400, 60, 1.0, 5.0, bursts=0)
    assert calm[0] == pytest.approx(1.0) and calm.max() == pytest.approx(5.0) and calm.argmax() == 720
    bursty = diurnal_rate(86_400, 60, 1.0, 5.0, bursts=3, burst_factor=2.0, burst_s=600, seed=1)
    assert (bursty / calm).max() == pytest.approx(2.0) and np.isclose(bursty / calm, 2.0).sum() >= 10
    assert np.array_equal(poisson_arrivals(calm, 60, seed=3), poisson_arrivals(calm, 60, seed=3))
    with pytest.raises(ServelabError):
        diurnal_rate(100, 1, 5.0, 1.0)


def test_light_load_stays_at_min_replicas_and_meets_the_slo() -> None:
    model = ReplicaModel.from_bench_rows(ROWS, slo_ttft_s=1.0)
    arrivals = poisson_arrivals(np.full(1800, 0.5), 1.0, seed=0)
    result = simulate(arrivals, model, FAST, startup_s=30, slo_ttft_s=1.0)
    summary = result.summary()
    assert result.steps["replicas"].max() == 1 and summary["slo_violation_share"] == 0
    assert summary["requests"] == arrivals.sum()  # every request is accounted for
    assert summary["replica_hours"] == pytest.approx(0.5)


def test_a_step_in_load_scales_up_after_the_startup_delay_and_back_down() -> None:
    model = ReplicaModel.from_bench_rows(ROWS, slo_ttft_s=1.0)
    rate = np.concatenate([np.full(300, 1.0), np.full(900, 9.0), np.full(1200, 1.0)])  # 9 req/s needs 4 replicas
    result = simulate(poisson_arrivals(rate, 1.0, seed=0), model, FAST, startup_s=60, slo_ttft_s=1.0)
    steps = result.steps.set_index("t_s")
    assert steps.loc[299, "replicas"] == 1
    first_scale = steps.index[steps["replicas"] > 1][0]
    assert 300 <= first_scale <= 330  # the next sync after the queue grows past the target
    assert steps.loc[first_scale : first_scale + 55, "ready"].max() == 1  # new pods are paid for but not serving yet
    assert steps.loc[first_scale + 60 : 1200, "ready"].max() >= 4
    assert steps.loc[2399, "replicas"] == 1  # back to minReplicas after the load and the 60 s window
    summary = result.summary()
    assert 0 < summary["slo_violation_share"] < 0.5 and summary["max_waiting"] > FAST.target
    windows = result.windows(300)
    assert windows.loc[windows["t_s"] == 300, "slo_violation_share"].item() > 0  # the start-up gap misses the SLO


def test_lower_queue_target_buys_latency_with_replica_hours() -> None:
    model = ReplicaModel.from_bench_rows(ROWS, slo_ttft_s=1.0)
    rate = diurnal_rate(4 * 3600, 1.0, 0.5, 10.0, period_s=4 * 3600, bursts=2, seed=2)
    arrivals = poisson_arrivals(rate, 1.0, seed=2)
    tight = simulate(arrivals, model, FAST.with_target(1), startup_s=30, slo_ttft_s=1.0).summary()
    loose = simulate(arrivals, model, FAST.with_target(20), startup_s=30, slo_ttft_s=1.0).summary()
    assert tight["replica_hours"] > loose["replica_hours"]
    assert tight["slo_violation_share"] < loose["slo_violation_share"]


def test_weighted_quantile() -> None:
    values, weights = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 98.0])
    assert weighted_quantile(values, weights, 0.01) == 1.0 and weighted_quantile(values, weights, 0.5) == 3.0
    assert np.isnan(weighted_quantile(np.array([]), np.array([]), 0.5))


def test_bad_timing_is_refused() -> None:
    model = ReplicaModel.from_bench_rows(ROWS)
    with pytest.raises(ServelabError):
        simulate(np.zeros(10, dtype=int), model, FAST, startup_s=-1, slo_ttft_s=1.0)


def test_queue_target_bound_leaves_the_slo_room_for_the_standing_queue() -> None:
    """At the HPA's equilibrium a pod holds `target` waiting requests, each waiting target / capacity s,
    then the TTFT of a full batch: (1.0 - 0.75) s x 2.5 requests/s = 0.625 waiting per pod."""
    model = ReplicaModel.from_bench_rows(ROWS, slo_ttft_s=1.0)
    assert queue_target_bound(model, 1.0) == pytest.approx(0.625)
    assert recommend_queue_target(model, 1.0) == 0.5
    assert queue_target_bound(model, 0.5) == 0.0
    with pytest.raises(ServelabError, match="no queue target can meet it"):
        recommend_queue_target(model, 0.5)
    # The recommended target really does better on the SLO than the seed's 10, for more replica-hours.
    rate = np.full(3600, 8.0)
    arrivals = poisson_arrivals(rate, 1.0, seed=1)
    low, seed = (simulate(arrivals, model, FAST.with_target(t), 30, 1.0).summary() for t in (0.5, 10))
    assert low["slo_violation_share"] < seed["slo_violation_share"]
    assert low["replica_hours"] >= seed["replica_hours"]


@pytest.mark.parametrize(
    ("value", "expected"), [(0.695, 0.5), (0.5, 0.5), (1.99, 1.0), (2, 2.0), (7, 5.0), (13, 10.0), (0.233, 0.2)]
)
def test_preferred_at_most_rounds_down_to_the_1_2_5_series(value: float, expected: float) -> None:
    assert preferred_at_most(value) == expected
