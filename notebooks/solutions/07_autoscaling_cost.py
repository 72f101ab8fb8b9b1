"""Reference solutions to notebook 07's exercises (instructor copy; the test suite grades them beside the learner's)."""

from __future__ import annotations

import math
from typing import Any

from servelab.planning import cost


def hpa_desired_replicas(waiting_per_pod: list[float], target: float) -> int:
    """The HPA's proposal for a Pods metric with an AverageValue target, all pods ready."""
    ratio = sum(waiting_per_pod) / len(waiting_per_pod) / target
    if abs(1 - ratio) <= 0.1:  # the controller's default tolerance: no change
        return len(waiting_per_pod)
    return math.ceil(len(waiting_per_pod) * ratio)


# The cpu overlay's batch with a looser target than the shipped one: the SLO is a share of requests, and the
# next 1-2-5 target up misses it on the reference day.
queue_target_choice = {"max_num_seqs": 8, "queue_target": 1.0}


def usd_per_million_output_tokens(offer: cost.Offer, row: dict[str, Any], utilization: float) -> float:
    """One replica on one GPU (or CPU instance) of ``offer``, on-demand, busy ``utilization`` of its paid time."""
    usd_per_hour = offer.on_demand.usd_per_instance_hour / offer.units_per_instance
    output_tokens_per_hour = row["output_token_throughput"] * utilization * 3600
    return usd_per_hour / output_tokens_per_hour * 1e6
