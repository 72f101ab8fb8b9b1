"""The manifests ship the HPA target and --max-num-seqs that notebook 07 recommends from the reference run.

Why: the seed shipped a queue target of 10 that, by notebook 07's own simulation, misses the TTFT SLO by
design, and no batch limit, which keeps vLLM's queue (the HPA's metric) empty while every request
slows down. Here the recommendation is recomputed from the shipped reference results
(data/reference/measured/05_benchmarking.json, what notebook 07 reads when run alone) and compared
with what the manifests ship; refreshing the reference results without updating the manifests (or the
reverse) fails here. The GPU overlay is not measured by the kit, so only its presence is checked.
llama.cpp's HPA is checked against its Deployment's --parallel: its queue starts where the slots end.
"""

from __future__ import annotations

import json

from servelab import results
from servelab.k8s import shipped
from servelab.observe import alerts
from servelab.planning import capacity_sim


def _reference_model() -> tuple[capacity_sim.ReplicaModel, float]:
    bench = json.loads((results.reference_dir() / "05_benchmarking.json").read_text())  # never this run's
    slo = float(bench["slo_ttft_s"])  # notebook 05's and 07's TTFT SLO
    return capacity_sim.ReplicaModel.from_bench_rows(bench["closed"], slo_ttft_s=slo), slo


def test_cpu_overlay_ships_the_measured_batch_limit() -> None:
    model, _ = _reference_model()
    assert shipped.max_num_seqs("cpu") == model.max_batch == 8


def test_hpa_and_keda_ship_the_measured_queue_target() -> None:
    model, slo = _reference_model()
    bound = capacity_sim.queue_target_bound(model, slo)
    assert 0.5 <= bound < 1  # (1 s - 0.73 s) x 2.56 requests/s on the reference run
    assert shipped.hpa_target() == capacity_sim.recommend_queue_target(model, slo) == 0.5
    assert shipped.keda_threshold() == shipped.hpa_target()


def test_the_queue_alert_is_derived_from_the_shipped_target() -> None:
    limits = alerts.default_thresholds()
    assert limits["hpa_queue_target"] == shipped.hpa_target()
    assert limits["queue_threshold"] == shipped.hpa_target() * limits["queue_target_factor"]


def test_every_overlay_sets_a_batch_limit() -> None:
    assert shipped.overlays() == ["cpu", "gpu"]
    assert all(shipped.max_num_seqs(o) for o in shipped.overlays())


def test_llamacpp_ships_explicit_slots_and_a_target_below_them() -> None:
    """llamacpp:requests_deferred counts requests waiting with every --parallel slot busy, so the HPA's
    target is a queue beyond full batches. The slots are written out (llama-server's "auto" default is
    4 slots with a unified cache, and an explicit --parallel alone would split the cache per slot), and
    the target stays below them: at a target of one deferred request per slot every waiting request
    waits for at least one whole answer to finish."""
    parallel = shipped.llamacpp_parallel()
    assert parallel == 4
    args = shipped.llamacpp_args()
    assert "--kv-unified" in args and "--metrics" in args
    target = shipped.llamacpp_hpa_target()
    assert 0 < target < parallel
    limits = alerts.default_thresholds()
    assert limits["llamacpp_hpa_queue_target"] == target
    # the backlog alert pages on a queue still shorter than one round of the slots
    assert limits["llamacpp_queue_threshold"] == target * limits["queue_target_factor"] <= parallel


def test_llamacpp_keda_ships_the_hpas_target() -> None:
    assert shipped.llamacpp_keda_threshold() == shipped.llamacpp_hpa_target()
