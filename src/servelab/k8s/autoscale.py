"""The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) algorithm, as a pure Python function of its inputs.

Why re-implement it: a learner cannot watch a real HPA decide without a cluster, and the HPA's choices
(tolerance, stabilization windows, rate policies) explain most "why did it not scale?" questions. The
code follows the Kubernetes documentation (tasks/run-application/horizontal-pod-autoscale) and the
controller it describes (pkg/controller/podautoscaler: replica_calculator.go and horizontal.go):

1. Per metric, a proposal: ``ceil(current x metric / target)``, skipped within the tolerance (10%).
   Pods without a metric yet (starting) count as 0 on a scale-up and as the target on a scale-down.
2. Stabilization: the proposal is recorded; the recommendation is the current size clamped between the
   lowest proposal of the scale-up window and the highest of the scale-down window (300 s by default).
3. Rate policies: Pods/Percent per ``periodSeconds``, picked with ``selectPolicy`` Max/Min/Disabled,
   counted from the scale events inside each period; then ``minReplicas``/``maxReplicas``.

Time is passed in explicitly (seconds), so a simulation or a test drives the controller step by step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from servelab.errors import ServelabError
from servelab.k8s import quantity

DEFAULT_TOLERANCE = 0.1  # kube-controller-manager --horizontal-pod-autoscaler-tolerance
DEFAULT_SYNC_PERIOD_S = 15.0  # --horizontal-pod-autoscaler-sync-period


@dataclass(frozen=True)
class ScalingPolicy:
    """At most ``value`` pods (``Pods``) or ``value`` percent of the pods at the period's start
    (``Percent``) may be added or removed within any ``period_seconds``."""

    type: Literal["Pods", "Percent"]
    value: int
    period_seconds: int

    def __post_init__(self) -> None:
        if self.type not in ("Pods", "Percent"):
            raise ServelabError(f"Unknown HPA policy type {self.type!r}.", "use Pods or Percent")
        if self.value <= 0 or not 0 < self.period_seconds <= 1800:
            raise ServelabError(
                f"HPA policy {self.type} {self.value}/{self.period_seconds}s is invalid.",
                "value > 0 and 0 < periodSeconds <= 1800, as the API server requires",
            )


@dataclass(frozen=True)
class ScalingRules:
    """One direction of ``spec.behavior`` (scaleUp or scaleDown)."""

    stabilization_window_seconds: int
    policies: tuple[ScalingPolicy, ...]
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"


# The documented defaults ("Default Behavior" in the HPA docs): scale up by 100% or 4 pods per 15 s,
# whichever is more, with no window; scale down to any size per 15 s, after a 300 s window.
DEFAULT_SCALE_UP = ScalingRules(0, (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)), "Max")
DEFAULT_SCALE_DOWN = ScalingRules(300, (ScalingPolicy("Percent", 100, 15),), "Max")


@dataclass(frozen=True)
class HPASpec:
    """What an autoscaling/v2 HPA on one ``AverageValue`` metric says (the kit's scales on the queue)."""

    target: float
    min_replicas: int = 1
    max_replicas: int = 10
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    tolerance: float = DEFAULT_TOLERANCE
    metric: str = ""

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise ServelabError(f"HPA target {self.target} must be > 0.", "set target.averageValue above 0")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ServelabError(
                f"minReplicas {self.min_replicas} / maxReplicas {self.max_replicas} are inconsistent.",
                "use 1 <= minReplicas <= maxReplicas",
            )

    def with_target(self, target: float) -> HPASpec:
        return replace(self, target=target)

    @classmethod
    def from_manifest(cls, source: str | Path | dict[str, Any]) -> HPASpec:
        """Read an autoscaling/v2 HPA (file path or parsed dict) with one Pods or External metric whose target
        is an ``AverageValue``; behavior fields left out take the documented defaults, as the API server does."""
        doc = yaml.safe_load(Path(source).read_text()) if isinstance(source, (str, Path)) else source
        if not isinstance(doc, dict) or doc.get("kind") != "HorizontalPodAutoscaler":
            raise ServelabError(
                f"{source} is not a HorizontalPodAutoscaler.",
                "pass manifests/vllm/base/hpa.yaml (or manifests/llamacpp/hpa.yaml)",
            )
        spec = doc["spec"]
        metrics = spec.get("metrics") or []
        if len(metrics) != 1 or metrics[0].get("type") not in ("Pods", "External"):
            raise ServelabError(
                "Only an HPA with exactly one Pods or External metric is supported here.",
                "the kit's HPAs scale on one queue gauge alone (vllm_num_requests_waiting, llamacpp_requests_deferred)",
            )
        source_metric = metrics[0][metrics[0]["type"].lower()]
        target = source_metric["target"]
        if target.get("type") != "AverageValue":
            raise ServelabError(f"Metric target type {target.get('type')!r} is not supported.", "use AverageValue")
        behavior = spec.get("behavior") or {}
        return cls(
            target=quantity.parse(target["averageValue"]),
            min_replicas=int(spec.get("minReplicas", 1)),
            max_replicas=int(spec["maxReplicas"]),
            scale_up=_rules(behavior.get("scaleUp"), DEFAULT_SCALE_UP),
            scale_down=_rules(behavior.get("scaleDown"), DEFAULT_SCALE_DOWN),
            metric=source_metric["metric"]["name"],
        )


def _rules(raw: dict[str, Any] | None, default: ScalingRules) -> ScalingRules:
    """Merge one behavior direction with its defaults, field by field (the API server's defaulting)."""
    if not raw:
        return default
    policies = (
        tuple(ScalingPolicy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in raw.get("policies", []))
        or default.policies
    )
    return ScalingRules(
        int(raw.get("stabilizationWindowSeconds", default.stabilization_window_seconds)),
        policies,
        raw.get("selectPolicy", default.select_policy),
    )


def desired_replicas(
    current_replicas: int, current_metric: float, target: float, tolerance: float = DEFAULT_TOLERANCE
) -> int:
    """The docs' core formula, ``ceil(currentReplicas x currentMetricValue / desiredMetricValue)``, with no
    change while the ratio is within ``tolerance`` of 1 (all pods ready and reporting)."""
    ratio = current_metric / target
    if abs(1.0 - ratio) <= tolerance:
        return current_replicas
    return math.ceil(ratio * current_replicas)


def pods_metric_replicas(
    current_replicas: int,
    values: Sequence[float],
    target: float,
    missing: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """A ``Pods`` metric with an ``AverageValue`` target (replica_calculator's calcPlainMetricReplicas).

    ``values`` are the per-pod readings of ready pods; ``missing`` pods run but report nothing yet (a
    vLLM pod still loading its model). Missing pods are assumed to read 0 on a scale-up and the target
    on a scale-down, which damps both; if that assumption flips the direction, nothing changes."""
    if not values:
        raise ServelabError(
            "No ready pod reported the metric: the HPA cannot compute a proposal.",
            "wait until at least one pod is ready and scraped",
        )
    ratio = sum(values) / len(values) / target
    if missing == 0:
        return current_replicas if abs(1.0 - ratio) <= tolerance else math.ceil(ratio * len(values))
    if ratio < 1.0:
        filled = [*values, *[target] * missing]
    elif ratio > 1.0:
        filled = [*values, *[0.0] * missing]
    else:
        filled = list(values)
    new_ratio = sum(filled) / len(filled) / target
    if abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current_replicas
    proposal = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and proposal > current_replicas) or (new_ratio > 1.0 and proposal < current_replicas):
        return current_replicas
    return proposal


def external_average_value_replicas(
    status_replicas: int, total: float, target: float, tolerance: float = DEFAULT_TOLERANCE
) -> int:
    """An ``External`` metric with an ``AverageValue`` target (what KEDA's ScaledObject creates): the total is
    divided by the current replica count; the proposal is ``ceil(total / target)``."""
    ratio = total / (target * status_replicas)
    return status_replicas if abs(1.0 - ratio) <= tolerance else math.ceil(total / target)


@dataclass
class HorizontalPodAutoscaler:
    """One HPA's controller state: its recent proposals and scale events, as horizontal.go keeps them.

    Call :meth:`sync` once per sync period with the current replica count and the metric proposal; it
    returns the replica count to set, and remembers what it needs for the windows and policies."""

    spec: HPASpec
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_up_events: list[tuple[float, int]] = field(default_factory=list)
    scale_down_events: list[tuple[float, int]] = field(default_factory=list)

    def sync(self, now: float, current_replicas: int, proposal: int) -> int:
        """The replica count the HPA sets at time ``now`` (seconds)."""
        spec = self.spec
        if current_replicas > spec.max_replicas:
            desired = spec.max_replicas
        elif current_replicas < spec.min_replicas:
            desired = spec.min_replicas
        else:
            stabilized = self._stabilize(now, current_replicas, proposal)
            desired = self._limit_rate(now, current_replicas, stabilized)
        if desired != current_replicas:
            events = self.scale_up_events if desired > current_replicas else self.scale_down_events
            events.append((now, abs(desired - current_replicas)))
        return desired

    def replay(
        self, start_replicas: int, proposal: int, seconds: float, every: float = DEFAULT_SYNC_PERIOD_S
    ) -> list[int]:
        """Sync every ``every`` s from t=0 to ``seconds`` with a constant proposal; the replica count after
        each sync. The documentation's examples are of this form ("80 replicas, scaled down to 10")."""
        replicas, seen = start_replicas, []
        for i in range(int(seconds // every) + 1):
            replicas = self.sync(i * every, replicas, proposal)
            seen.append(replicas)
        return seen

    def _stabilize(self, now: float, current: int, proposal: int) -> int:
        """Clamp ``current`` between the lowest proposal in the scale-up window and the highest in the
        scale-down window (the new proposal included), then record the proposal."""
        up_cutoff = now - self.spec.scale_up.stabilization_window_seconds
        down_cutoff = now - self.spec.scale_down.stabilization_window_seconds
        up = min([proposal, *(r for t, r in self.recommendations if t > up_cutoff)])
        down = max([proposal, *(r for t, r in self.recommendations if t > down_cutoff)])
        self.recommendations = [(t, r) for t, r in self.recommendations if t > min(up_cutoff, down_cutoff)]
        self.recommendations.append((now, proposal))
        return min(max(current, up), down)

    def _limit_rate(self, now: float, current: int, desired: int) -> int:
        spec = self.spec
        if desired > current:
            ceiling = min(spec.max_replicas, max(current, self._policy_limit(now, current, up=True)))
            return min(desired, ceiling)
        if desired < current:
            floor = max(spec.min_replicas, min(current, self._policy_limit(now, current, up=False)))
            return max(desired, floor)
        return desired

    def _period_start(self, now: float, current: int, period: int) -> int:
        """Replicas at the start of the policy's period: undo the scale events that happened inside it."""
        added = sum(n for t, n in self.scale_up_events if t > now - period)
        removed = sum(n for t, n in self.scale_down_events if t > now - period)
        return current - added + removed

    def _policy_limit(self, now: float, current: int, up: bool) -> int:
        """The ceiling (``up``) or floor that the scale-up or scale-down policies allow now, as the controller says."""
        rules = self.spec.scale_up if up else self.spec.scale_down
        if rules.select_policy == "Disabled":
            return current
        limits = []
        for p in rules.policies:
            start = self._period_start(now, current, p.period_seconds)
            if p.type == "Pods":
                limits.append(start + p.value if up else start - p.value)
            else:  # Percent rounds up going up, or a small deployment could never grow (the controller's comment)
                limits.append(math.ceil(start * (1 + p.value / 100)) if up else int(start * (1 - p.value / 100)))
        # "Max" picks the policy allowing the largest change: the highest ceiling, or the lowest floor.
        widest, narrowest = (max, min) if up else (min, max)
        return widest(limits) if rules.select_policy == "Max" else narrowest(limits)
