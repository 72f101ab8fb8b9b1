"""servelab.k8s.autoscale against the Kubernetes HPA documentation's worked examples and defaults
(https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/) and the controller's rules."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from servelab.errors import ServelabError
from servelab.k8s.autoscale import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    HorizontalPodAutoscaler,
    HPASpec,
    ScalingPolicy,
    ScalingRules,
    desired_replicas,
    external_average_value_replicas,
    pods_metric_replicas,
)

ROOT = Path(__file__).resolve().parents[3]


def test_docs_example_200m_over_100m_doubles_and_50m_halves() -> None:
    assert desired_replicas(1, 0.200, 0.100) == 2
    assert desired_replicas(4, 0.200, 0.100) == 8
    assert desired_replicas(4, 0.050, 0.100) == 2


def test_tolerance_of_ten_percent_skips_small_changes() -> None:
    assert desired_replicas(10, 10.5, 10) == 10  # ratio 1.05: within 0.1
    assert desired_replicas(10, 9.1, 10) == 10  # ratio 0.91
    assert desired_replicas(10, 11.5, 10) == 12  # ratio 1.15: ceil(11.5)
    assert desired_replicas(10, 8.5, 10) == 9  # ratio 0.85: ceil(8.5)
    assert desired_replicas(10, 10.5, 10, tolerance=0.0) == 11


def test_pods_metric_averages_ready_pods() -> None:
    # 3 pods waiting 30, 10, 20 requests (mean 20), target 10 per pod: double.
    assert pods_metric_replicas(3, [30, 10, 20], 10) == 6
    assert pods_metric_replicas(3, [11, 10, 10], 10) == 3  # within tolerance


def test_pods_without_metrics_damp_scale_up_and_scale_down() -> None:
    # Scale up: 2 ready pods at 20 (ratio 2) would give 4; 2 starting pods count as 0 -> ratio 1.0 -> no change.
    assert pods_metric_replicas(2, [20, 20], 10) == 4
    assert pods_metric_replicas(4, [20, 20], 10, missing=2) == 4
    assert pods_metric_replicas(4, [40, 40], 10, missing=2) == 8  # (40+40+0+0)/4/10 = 2 -> ceil(2*4)
    # Scale down: 2 ready pods at 2 (ratio 0.2) would give 1; 2 missing pods count as the target -> 3.
    assert pods_metric_replicas(2, [2, 2], 10) == 1
    assert pods_metric_replicas(4, [2, 2], 10, missing=2) == 3


def test_no_ready_pod_means_no_proposal() -> None:
    with pytest.raises(ServelabError, match="No ready pod"):
        pods_metric_replicas(2, [], 10, missing=2)


def test_external_average_value_divides_by_replicas_like_keda() -> None:
    assert external_average_value_replicas(4, 80, 10) == 8
    assert external_average_value_replicas(4, 42, 10) == 4  # 42/40 = 1.05: within tolerance
    assert external_average_value_replicas(2, 0, 10) == 0  # the HPA's minReplicas then applies


def test_docs_scaling_policies_example_80_replicas_down_to_10() -> None:
    """'if there are 80 replicas and the target has to be scaled down to 10 replicas then during the first
    step 8 replicas will be reduced. In the next iteration when the number of replicas is 72, 10% of the
    pods is 7.2 but the number is rounded up to 8 ... below 40 ... 4 replicas will be reduced at a time.'"""
    rules = ScalingRules(300, (ScalingPolicy("Pods", 4, 60), ScalingPolicy("Percent", 10, 60)))
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=1, max_replicas=100, scale_down=rules))
    seen = hpa.replay(80, 10, 600)
    per_minute = seen[::4]  # one value per period of 60 s
    assert per_minute[:3] == [72, 64, 57]
    assert all(x == 72 for x in seen[:4])  # no second step inside the same 60 s period
    steps = [a - b for a, b in itertools.pairwise(per_minute)]
    below_40 = [s for n, s in zip(per_minute, steps, strict=False) if n <= 40]  # steps is one shorter
    assert below_40 and all(s == 4 for s in below_40)


def test_select_policy_min_caps_scale_down_at_five_pods_per_minute() -> None:
    rules = ScalingRules(0, (ScalingPolicy("Percent", 10, 60), ScalingPolicy("Pods", 5, 60)), "Min")
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=1, max_replicas=200, scale_down=rules))
    assert hpa.sync(0, 100, 10) == 95  # Percent allows 10, Pods 5: Min picks the smaller change
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=1, max_replicas=200, scale_down=rules))
    assert hpa.sync(0, 20, 10) == 18  # 10% of 20 = 2 < 5


def test_select_policy_disabled_never_scales_down() -> None:
    rules = ScalingRules(0, DEFAULT_SCALE_DOWN.policies, "Disabled")
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=1, max_replicas=10, scale_down=rules))
    assert hpa.replay(8, 1, 900) == [8] * 61
    assert hpa.sync(915, 8, 10) == 10  # scaling up still works


def test_default_scale_up_doubles_or_adds_four_every_15_seconds() -> None:
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=1, max_replicas=100))
    assert hpa.replay(1, 20, 45) == [5, 10, 20, 20]  # max(+4, x2) per 15 s


def test_default_scale_down_waits_300_seconds() -> None:
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=1, max_replicas=100))
    assert hpa.sync(0, 10, 10) == 10
    seen = {now: hpa.sync(now, 10 if now < 300 else 2, 2) for now in range(15, 316, 15)}
    assert all(seen[now] == 10 for now in range(15, 300, 15))  # the proposal of 10 at t=0 is in the window
    assert seen[300] == 2  # then all 100% may go at once (down to the proposal)


def test_stabilization_window_on_scale_up_takes_the_lowest_recent_proposal() -> None:
    rules = ScalingRules(60, DEFAULT_SCALE_UP.policies)
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=1, max_replicas=100, scale_up=rules))
    assert hpa.sync(0, 4, 4) == 4
    assert hpa.sync(15, 4, 12) == 4  # the 4 of t=0 is still in the window
    assert hpa.sync(60, 4, 12) == 8  # t=0 left the window; 12 is then rate-limited to x2 (default policy)
    assert hpa.sync(75, 8, 12) == 12


def test_min_and_max_replicas_bound_everything() -> None:
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=2, max_replicas=5))
    assert hpa.sync(0, 3, 50) == 5
    assert hpa.sync(15, 9, 9) == 5  # above max: back to max at once
    no_window = ScalingRules(0, DEFAULT_SCALE_DOWN.policies)
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=2, max_replicas=5, scale_down=no_window))
    assert hpa.sync(0, 5, 0) == 2
    assert hpa.sync(15, 1, 1) == 2  # below min: up to min at once


def test_pods_policy_counts_scale_events_inside_the_period() -> None:
    """The kit's manifest: +2 pods per 60 s. Two pods at t=0, none until the event leaves the period."""
    rules = ScalingRules(0, (ScalingPolicy("Pods", 2, 60),))
    hpa = HorizontalPodAutoscaler(HPASpec(target=1, min_replicas=2, max_replicas=10, scale_up=rules))
    assert hpa.replay(2, 10, 120) == [4, 4, 4, 4, 6, 6, 6, 6, 8]


def test_reads_the_kits_hpa_manifest() -> None:
    spec = HPASpec.from_manifest(ROOT / "manifests" / "vllm" / "base" / "hpa.yaml")
    assert (spec.min_replicas, spec.max_replicas, spec.target) == (2, 10, 0.5)
    assert spec.metric == "vllm_num_requests_waiting"
    assert spec.scale_up == ScalingRules(0, (ScalingPolicy("Pods", 2, 60),), "Max")
    assert spec.scale_down == ScalingRules(600, (ScalingPolicy("Pods", 1, 120),), "Max")


def test_reads_the_llamacpp_hpa_manifest_and_scales_on_deferred_requests() -> None:
    """llama.cpp's HPA: the same policy as vLLM's, on the deferred requests per pod. A pod with every slot
    busy and nothing deferred reads 0: the HPA sees no queue until a request waits for a slot."""
    spec = HPASpec.from_manifest(ROOT / "manifests" / "llamacpp" / "hpa.yaml")
    vllm = HPASpec.from_manifest(ROOT / "manifests" / "vllm" / "base" / "hpa.yaml")
    assert (spec.min_replicas, spec.max_replicas, spec.target) == (2, 10, 0.5)
    assert spec.metric == "llamacpp_requests_deferred"
    assert (spec.scale_up, spec.scale_down) == (vllm.scale_up, vllm.scale_down)
    assert pods_metric_replicas(2, [2, 1], spec.target) == 6  # 1.5 deferred per pod: 3 x the target
    assert pods_metric_replicas(2, [0, 0], spec.target) == 0  # all 4 slots busy, none deferred: scale down
    hpa = HorizontalPodAutoscaler(spec)
    assert hpa.sync(0, 2, pods_metric_replicas(2, [2, 1], spec.target)) == 4  # +2 pods per minute
    assert hpa.sync(15, 4, 6) == 4 and hpa.sync(60, 4, 6) == 6


def test_manifest_behavior_left_out_takes_the_documented_defaults() -> None:
    target = {"type": "AverageValue", "averageValue": "500m"}
    metric = {"type": "Pods", "pods": {"metric": {"name": "q"}, "target": target}}
    doc = {"kind": "HorizontalPodAutoscaler", "spec": {"maxReplicas": 4, "metrics": [metric]}}
    spec = HPASpec.from_manifest(doc)
    assert (spec.min_replicas, spec.target) == (1, 0.5)
    assert (spec.scale_up, spec.scale_down) == (DEFAULT_SCALE_UP, DEFAULT_SCALE_DOWN)
    assert DEFAULT_SCALE_DOWN.stabilization_window_seconds == 300
    up = {(p.type, p.value, p.period_seconds) for p in DEFAULT_SCALE_UP.policies}
    assert up == {("Percent", 100, 15), ("Pods", 4, 15)}


def test_bad_specs_are_refused_with_a_fix() -> None:
    with pytest.raises(ServelabError, match="minReplicas"):
        HPASpec(target=1, min_replicas=5, max_replicas=2)
    with pytest.raises(ServelabError, match="not a HorizontalPodAutoscaler"):
        HPASpec.from_manifest({"kind": "Deployment"})
    with pytest.raises(ServelabError, match="Unknown HPA policy type"):
        ScalingPolicy("Replicas", 1, 60)  # type: ignore[arg-type]
