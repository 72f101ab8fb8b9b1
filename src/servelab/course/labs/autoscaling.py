"""Lab 07: an autoscaler that never scales, until the batch is capped and the target is sized.

The seed's HPA scales on a metric nobody serves, with a target Kubernetes rejects; and even the right
metric, ``vllm:num_requests_waiting``, stays at zero while vLLM admits every request into its batch
(no ``--max-num-seqs``): everything slows down and the HPA sees nothing. The learner fixes the HPA
and caps the batch; the grade comes from the kit's capacity simulator, which runs the real HPA
algorithm (:mod:`servelab.k8s.autoscale`) over a day of traffic against a replica measured by
notebook 05 (the reference run shipped in ``data/reference/measured/``, so every learner meets the
same day).

The day's traffic is fixed in requests per second, not in "replicas' worth", so a different batch
size changes the capacity of a replica, never the load it faces.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import yaml

from servelab import results
from servelab.course.grading import LabCheck
from servelab.errors import ServelabError
from servelab.k8s import autoscale, autoscalers, manifests
from servelab.paths import manifests_path
from servelab.planning import capacity_sim

SLO_TTFT_S = 1.0  # the kit's TTFT SLO (notebooks 05-07)
SLO_SHARE = 0.95  # the share of requests that must meet it
COST_SHARE = 0.6  # at most this share of the replica-hours of a static fleet sized for the peak
MEETS_SLO = f"at least {SLO_SHARE:.0%} of the day's requests meet the {SLO_TTFT_S:g} s TTFT SLO"
SAVES = f"at most {COST_SHARE:.0%} of the replica-hours of a static fleet sized for the peak"


@dataclass(frozen=True)
class Day:
    """One simulated day: arrivals per second and what a replica does, both from the reference run."""

    rows: tuple[dict[str, Any], ...]
    startup_s: float
    arrivals: Any  # numpy array of requests per 1 s step
    peak_rps: float
    label: str

    @property
    def largest_measured_batch(self) -> int:
        return int(max(r["concurrency"] for r in self.rows))

    def model(self, max_num_seqs: int) -> capacity_sim.ReplicaModel:
        return capacity_sim.ReplicaModel.from_bench_rows(list(self.rows), max_batch=max_num_seqs)


def reference_day(seed: int = 0) -> Day:
    """Notebook 07's day (trough 0.5 and peak 6 replicas' worth, six bursts of x1.8) with the load fixed
    from the shipped ``--max-num-seqs`` of the cpu overlay, against the reference run's replica."""
    from servelab.k8s import shipped

    bench = results.reference_dir() / "05_benchmarking.json"
    preflight = results.reference_dir() / "00_preflight.json"
    rows = tuple(json.loads(bench.read_text())["closed"])
    startup_s = float(json.loads(preflight.read_text())["vllm_ready_s"])
    batch = shipped.max_num_seqs("cpu") or max(int(r["concurrency"]) for r in rows)
    capacity = capacity_sim.ReplicaModel.from_bench_rows(list(rows), max_batch=batch).capacity_rps
    rate = capacity_sim.diurnal_rate(86_400, 1.0, 0.5 * capacity, 6 * capacity, bursts=6, burst_factor=1.8, seed=seed)
    arrivals = capacity_sim.poisson_arrivals(rate, 1.0, seed=seed)
    return Day(rows, startup_s, arrivals, float(rate.max()), "reference run (data/reference/measured/)")


def _adapter_metrics() -> set[str]:
    """The names the kit's prometheus-adapter rule serves to the custom metrics API."""
    return set(autoscalers.autoscaling_metrics(manifests_path("vllm")).adapter_names.values())


def _read_hpa(hpa_text: str) -> tuple[dict[str, Any] | None, str]:
    try:
        doc = yaml.safe_load(hpa_text)
    except yaml.YAMLError as err:
        return None, f"fix the YAML syntax: {err}"
    if not isinstance(doc, dict) or doc.get("kind") != "HorizontalPodAutoscaler":
        return None, "write one HorizontalPodAutoscaler (kind: HorizontalPodAutoscaler), as the seed's"
    return doc, ""


def check_autoscaling(hpa_text: str, max_num_seqs: int | None, day: Day | None = None) -> list[LabCheck]:
    """Lab 07: does this HPA, with this ``--max-num-seqs``, scale a vLLM fleet through a day within the SLO?"""
    doc, problem = _read_hpa(hpa_text)
    if doc is None:
        return [LabCheck("one HorizontalPodAutoscaler in YAML", False, problem)]
    day = day or reference_day()
    problems = manifests.validate_document(doc, "your HPA")
    schema = "; ".join(dict.fromkeys(p.message for p in problems if p.version))
    served = sorted(_adapter_metrics())
    metric_specs = (doc.get("spec") or {}).get("metrics") or []
    names = {str(((m.get("pods") or {}).get("metric") or {}).get("name")) for m in metric_specs if isinstance(m, dict)}
    on_queue = bool(names) and names <= set(served)
    capped = isinstance(max_num_seqs, int) and 1 <= max_num_seqs <= day.largest_measured_batch
    checks = [
        LabCheck("Kubernetes accepts the HPA", not schema, schema),
        LabCheck(
            "it scales on the queue the adapter serves",
            on_queue,
            f"the custom metrics API serves {', '.join(served)} (prometheus-adapter's rename of "
            f"vllm:num_requests_waiting, manifests/vllm/base/prometheus-adapter-rules.yaml); your HPA asks for "
            f"{', '.join(sorted(names)) or 'nothing'}",
        ),
        LabCheck(
            "--max-num-seqs caps the batch at a measured size",
            capped,
            "without a cap vLLM admits every request into its running batch, so vllm:num_requests_waiting stays 0 "
            "while every request slows down, and the HPA never scales. Set max_num_seqs to a batch notebook 05 "
            f"measured (1 to {day.largest_measured_batch}) whose TTFT still meets the {SLO_TTFT_S:g} s SLO.",
        ),
    ]
    hpa, unreadable = None, ""
    if not schema and on_queue:
        try:
            hpa = autoscale.HPASpec.from_manifest(doc)
        except ServelabError as err:
            unreadable = f"{err.problem} {err.fix or ''}".strip()
        except (KeyError, TypeError, ValueError) as err:
            unreadable = f"the HPA's metric target is incomplete ({err}): give it type AverageValue and averageValue"
    if hpa is None or not isinstance(max_num_seqs, int) or not capped:
        waiting = unreadable or "fix the rows above first: the day is simulated once the HPA and the batch are valid"
        return [*checks, LabCheck(MEETS_SLO, False, waiting), LabCheck(SAVES, False, waiting)]
    model = day.model(max_num_seqs)
    run = capacity_sim.simulate(day.arrivals, model, hpa, day.startup_s, SLO_TTFT_S).summary()
    static = max(1, math.ceil(day.peak_rps / model.capacity_rps)) * 24
    results_note = (
        f"{run['slo_violation_share']:.1%} of {run['requests']:,.0f} requests had TTFT > {SLO_TTFT_S:g} s; "
        f"{run['replica_hours']:.0f} replica-hours, up to {run['max_replicas_used']} replicas"
    )
    return [
        *checks,
        LabCheck(
            MEETS_SLO,
            1 - run["slo_violation_share"] >= SLO_SHARE,
            f"{results_note}. The HPA settles where each pod holds about `target` waiting requests, each "
            "waiting target / capacity seconds: lower the target, pick a batch whose TTFT leaves room for that wait "
            "(capacity_sim.queue_target_bound says how much), and check that maxReplicas x one replica's capacity "
            "covers the peak.",
        ),
        LabCheck(
            SAVES,
            run["replica_hours"] <= COST_SHARE * static,
            f"{results_note}; a static fleet for the peak costs {static} replica-hours. Let the fleet shrink at "
            "night: minReplicas low (2 survives one pod loss), and a scale-down that follows the load.",
        ),
    ]
