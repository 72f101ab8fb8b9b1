"""Notebook 03's exercises: settings for the llama.cpp Deployment, read off this run's measurements.

Each check grades what the answer decides against what the notebook measured, never against a number
typed here:

- :func:`check_threads`: the ``-t`` for the manifest, chosen by the learner's rule from the threads sweep.
  A thread is a core the pod requests, so the right choice is the fewest threads that decode about as fast
  as the fastest count, not the fastest count itself. The rule is also tried on a sweep shaped like a larger
  machine's (a curve that flattens), where "the fastest" and "the fewest that is fast enough" differ even
  when this run's short sweep cannot tell them apart.
- :func:`check_memory_resources`: the container's ``resources`` for a given context size. The answer is
  put into the shipped Deployment, which must pass the kit's manifest checks, and its memory request and
  limit are compared with the peak resident memory the real server reached under load at that context:
  the notebook's own measurement for its ``n_ctx``, and one more server start at the larger context.

The learner's prediction uses the attention shape read from the GGUF file itself
(:func:`servelab.memory.gguf_header.kv_shape`), the numbers llama.cpp allocates from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from numbers import Integral
from typing import Any

import pandas as pd
import yaml

from servelab.course.grading import LabCheck
from servelab.k8s import manifests, quantity
from servelab.paths import manifests_path

# --- Your turn 1: threads for the manifest ---------------------------------------------------------

THREADS_NOISE = 0.10
"""How much slower than the fastest thread count a count may decode and still count as equally fast: a few
requests per point on a shared machine move the measured speed by about this share from run to run."""

# A larger machine's sweep, shaped as the full profile draws it: speed rises until memory bandwidth
# saturates, then flattens and falls a little. Units are relative; the fastest count (7) is past the knee.
FLATTENING_SPEEDS = {1: 0.34, 2: 0.62, 3: 0.82, 4: 0.94, 5: 0.97, 6: 0.99, 7: 1.0, 8: 0.98}


def fewest_fast_threads(sweep: pd.DataFrame, noise: float = THREADS_NOISE) -> int:
    """The fewest threads whose decode speed is within ``noise`` of the fastest count's."""
    fast = sweep[sweep["output_tok_s"] >= (1 - noise) * sweep["output_tok_s"].max()]
    return int(fast["threads"].min())


def flattening_sweep(scale: float) -> pd.DataFrame:
    """:data:`FLATTENING_SPEEDS` as a sweep table like the notebook's, in tokens/s of ``scale`` at best."""
    return pd.DataFrame(
        [{"threads": n, "output_tok_s": scale * s, "ok": 1, "failed": 0} for n, s in FLATTENING_SPEEDS.items()]
    )


def _speeds(sweep: pd.DataFrame) -> str:
    return ", ".join(f"{int(r.threads)}: {r.output_tok_s:.1f}" for r in sweep.itertuples())


def _choice_check(
    answer: Callable[[pd.DataFrame, float], object], sweep: pd.DataFrame, noise: float, label: str
) -> LabCheck:
    name = f"-t for {label}"
    choice = answer(sweep.copy(), noise)
    counts = [int(n) for n in sweep["threads"]]
    if not isinstance(choice, Integral) or int(choice) not in counts:
        return LabCheck(name, False, f"got {choice!r}: return one of the measured thread counts {counts} (an int).")
    want = fewest_fast_threads(sweep, noise)
    if int(choice) == want:
        return LabCheck(name, True, "")
    speed = dict(zip(counts, sweep["output_tok_s"], strict=True))
    best = max(speed.values())
    if speed[int(choice)] < (1 - noise) * best:
        why = (
            f"{choice} threads decode {speed[int(choice)]:.1f} tok/s, more than `noise` below the fastest "
            f"count's {best:.1f}: the pod would be slower than it needs to be."
        )
    else:
        why = (
            f"{choice} threads are fast enough, but {want} are too (within `noise` of the fastest): each extra "
            "thread is a core the pod requests for no measurable speed. Take the fewest that are fast enough."
        )
    return LabCheck(name, False, f"tok/s by threads: {_speeds(sweep)}. {why}")


def check_threads(
    answer: Callable[[pd.DataFrame, float], object], sweep: pd.DataFrame, noise: float = THREADS_NOISE
) -> list[LabCheck]:
    """The learner's ``choose_threads(sweep, noise)`` on this run's sweep, and on a larger machine's curve."""
    measured = sweep[sweep["failed"] == 0] if "failed" in sweep else sweep
    if measured.empty:
        return [LabCheck("the sweep has a clean point", False, "every point of the sweep had failed requests")]
    scale = float(measured["output_tok_s"].max())
    return [
        _choice_check(answer, measured, noise, "this run's sweep"),
        _choice_check(answer, flattening_sweep(scale), noise, "a larger machine's sweep (it flattens)"),
    ]


# --- Your turn 2: memory request and limit for a larger context ------------------------------------

HEADROOM = 1.25
"""The limit must clear the measured peak by this factor: the notebook's rule, and what the test suite
asks of the shipped manifest. Above its limit the kernel OOM-kills the container."""
WASTE_FACTOR = 1.5
WASTE_ROUNDING_MIB = 64
"""A request above ``WASTE_FACTOR`` x the peak (plus one rounding step) reserves node memory no process
uses: the scheduler keeps it from other pods on every replica's node."""


def shipped_deployment() -> dict[str, Any]:
    """The llama.cpp Deployment as ``manifests/llamacpp/deployment.yaml`` ships it."""
    return next(
        d for d in manifests.load_documents(manifests_path("llamacpp", "deployment.yaml")) if d["kind"] == "Deployment"
    )


def _with_resources(deployment: dict[str, Any], resources: Any, n_ctx: int) -> dict[str, Any]:
    """The Deployment with its container's ``resources`` replaced and its ``-c`` set to ``n_ctx``."""
    doc = copy.deepcopy(deployment)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = resources
    args = container["args"]
    args[args.index("-c") + 1] = str(n_ctx)
    return doc


def _resources_for(
    answer: Callable[[int], object], n_ctx: int, peak_mib: float, deployment: dict[str, Any]
) -> list[LabCheck]:
    at = f"n_ctx={n_ctx}"
    text = answer(n_ctx)
    try:
        resources = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError as err:
        return [LabCheck(f"resources for {at} are YAML", False, f"YAML error: {err}")]
    if not isinstance(resources, dict):
        return [
            LabCheck(
                f"resources for {at} are YAML",
                False,
                f"got {text!r}: return the text of a `resources:` block (requests: ..., limits: ...).",
            )
        ]
    problems = manifests.validate_document(_with_resources(deployment, resources, n_ctx), f"resources ({at})")
    valid = LabCheck(
        f"the Deployment with these resources is valid ({at})",
        not problems,
        "; ".join(dict.fromkeys(p.message for p in problems))[:600],
    )
    if problems:
        return [valid]
    request, limit = quantity.memory_mib(resources, "requests"), quantity.memory_mib(resources, "limits")
    measured = f"the server's peak RSS under load at {at} was {peak_mib:.0f} MiB"
    shown = f"{request:.0f} MiB" if request is not None else "missing"
    return [
        valid,
        LabCheck(
            f"memory request covers the measured peak ({at})",
            request is not None and request >= peak_mib,
            f"request {shown}, but {measured}. The scheduler could place the pod on a node without that much "
            "free memory, and under memory pressure a pod above its request is evicted first. Size it from "
            "the file, the KV cache for this context and the overhead this run measured.",
        ),
        LabCheck(
            f"memory request is not wasteful ({at})",
            request is not None and request <= WASTE_FACTOR * peak_mib + WASTE_ROUNDING_MIB,
            f"request {shown} while {measured}: every replica reserves the difference on its node, where no "
            "other pod can use it. The KV cache grows with the context; the file and the overhead do not.",
        ),
        LabCheck(
            f"memory limit leaves headroom ({at})",
            limit is not None and limit >= HEADROOM * peak_mib,
            f"limit {f'{limit:.0f} MiB' if limit is not None else 'missing'}, but {measured}: leave at least "
            f"{HEADROOM:g} x the peak, or the kernel OOM-kills the container when a longer answer needs more.",
        ),
    ]


def check_memory_resources(answer: Callable[[int], object], peak_mib: dict[int, float]) -> list[LabCheck]:
    """For each context size measured (``peak_mib``: n_ctx -> the real server's peak RSS under load), the
    learner's ``memory_resources(n_ctx)`` YAML goes into the shipped Deployment with ``-c n_ctx``; the
    Deployment must pass :func:`servelab.k8s.manifests.validate_document` and its request and limit must fit
    the measurement."""
    deployment = shipped_deployment()
    return [
        check for n_ctx, peak in sorted(peak_mib.items()) for check in _resources_for(answer, n_ctx, peak, deployment)
    ]
