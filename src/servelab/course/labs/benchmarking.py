"""Lab 05: a benchmark that lies, and the settings that make it tell what users will see.

The colleague's benchmark runs one request at a time (a closed loop at concurrency 1), five times,
and lets the model stop whenever it likes. Each habit flatters the server: a closed loop never
offers more load than the server finishes, so it never sees a queue; answers cut short by the
end-of-sequence token make every request cheaper than the service's; and a P90 of five requests
is their maximum. The learner changes the settings; the check runs them on a real engine and grades
the run's own records (lengths, counts, errors) together with the load it offered. The service's rate
is measured from the engine itself (:func:`service_rate`), so the lab poses the same problem on any machine.
"""

from __future__ import annotations

import math
from typing import Any

from servelab.bench.loadgen import run_benchmark
from servelab.bench.stats import BenchResult
from servelab.bench.workload import fixed_workload
from servelab.course.grading import LabCheck
from servelab.engines.launch import Engine
from servelab.errors import ServelabError

LOAD = 0.6  # the service keeps one server this busy on average: its rate is LOAD / one answer's time
SERVICE_INPUT_TOKENS = 64
SERVICE_OUTPUT_TOKENS = 32  # the service's answers; the model would often stop earlier on its own
MIN_REQUESTS = 30  # with 30 samples the P90 is an interpolated order statistic, not the maximum
MAX_REQUESTS = 200  # keeps a learner's run within minutes on 2 cores
SETTINGS = {
    "request_rate": (float, int, type(None)),
    "concurrency": (int, type(None)),
    "num_requests": (int,),
    "output_tokens": (int,),
    "force_length": (bool,),
}


def _validate(settings: dict[str, Any]) -> None:
    unknown = sorted(set(settings) - set(SETTINGS))
    missing = sorted(set(SETTINGS) - set(settings))
    if unknown or missing:
        raise ServelabError(
            f"the settings have unknown keys {unknown} or lack {missing}",
            f"keep exactly these keys: {sorted(SETTINGS)}",
        )
    for key, types in SETTINGS.items():
        value = settings[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ServelabError(f"{key}={value!r} is not {names}", f"set {key} to a {names}")
    if not 1 <= settings["num_requests"] <= MAX_REQUESTS:
        raise ServelabError(f"num_requests={settings['num_requests']}", f"use 1 to {MAX_REQUESTS}")
    if settings["request_rate"] is not None and not 0 < settings["request_rate"] <= 20:
        raise ServelabError(f"request_rate={settings['request_rate']}", "use a rate in requests/s, e.g. 1.0")


def service_rate(engine: Engine, samples: int = 3) -> float:
    """The service's request rate on this machine: :data:`LOAD` divided by the mean time of one
    service-sized answer, measured here, rounded to two significant digits.

    Why measured: a fixed rate would be an idle server on a fast machine and an ever-growing queue
    on a slow one; a share of what this server can do keeps the lesson (a queue that a closed loop
    never shows) the same on every machine, and in seconds.
    """
    workload = fixed_workload(SERVICE_INPUT_TOKENS, SERVICE_OUTPUT_TOKENS, engine_kind=engine.kind)
    one_at_a_time = run_benchmark(
        engine.base_url, engine.served_model, workload, concurrency=1, num_requests=samples, warmup=1, progress=False
    ).summary
    if not one_at_a_time["ok"]:
        raise ServelabError(
            f"{engine.kind} answered none of {samples} requests: {one_at_a_time['first_error']}",
            "check the engine's log (engine.log_path) and restart it",
        )
    rate = LOAD / float(one_at_a_time["e2e_mean_s"])
    digits = 1 - math.floor(math.log10(rate))
    return round(rate, digits)


def run_benchmark_settings(settings: dict[str, Any], engine: Engine) -> BenchResult | None:
    """Run the learner's benchmark settings against ``engine`` (the lab's real server); settings that
    cannot run print what to change and give None, which the check then reports."""
    try:
        _validate(settings)
    except ServelabError as err:
        print(f"Not run: {err}")
        return None
    workload = fixed_workload(
        SERVICE_INPUT_TOKENS, settings["output_tokens"], engine_kind=engine.kind, force_length=settings["force_length"]
    )
    return run_benchmark(
        engine.base_url,
        engine.served_model,
        workload,
        concurrency=settings["concurrency"],
        request_rate=settings["request_rate"],
        num_requests=settings["num_requests"],
        warmup=1,
        timeout_s=120,
    )


def check_benchmark(settings: dict[str, Any], result: BenchResult | None, rate_rps: float) -> list[LabCheck]:
    """Lab 05: did these settings measure what users of a service receiving ``rate_rps`` will see?"""
    try:
        _validate(settings)
    except ServelabError as err:
        return [LabCheck("the settings are complete and typed", False, str(err))]
    if result is None:
        return [LabCheck("the benchmark ran", False, "run the cell above that calls labs.run_benchmark_settings(...)")]
    ok = [r for r in result.records if r.ok]
    lengths = sorted({r.output_tokens for r in ok})
    rate = settings["request_rate"]
    if not settings["force_length"]:
        length_hint = (
            f"force_length=False: this run's answers had {lengths} tokens, but the model may stop at its "
            "end-of-sequence token whenever it likes, and a shorter answer costs the server less than the service's"
        )
    else:
        length_hint = f"this run's answers had {lengths} tokens: set output_tokens={SERVICE_OUTPUT_TOKENS}"
    return [
        LabCheck(
            f"it offers the service's load: Poisson arrivals at {rate_rps:g} request/s",
            rate is not None and abs(rate - rate_rps) <= 0.1 * rate_rps,
            "a closed loop sends the next request only when the last one is answered, so the server never has a "
            f"queue; the service receives {rate_rps:g} request/s whether or not the last answer is done: set "
            f"request_rate={rate_rps:g} (an open loop).",
        ),
        LabCheck(
            f"every answer is the service's {SERVICE_OUTPUT_TOKENS} tokens long",
            settings["force_length"]
            and settings["output_tokens"] == SERVICE_OUTPUT_TOKENS
            and lengths == [SERVICE_OUTPUT_TOKENS],
            length_hint,
        ),
        LabCheck(
            f"enough requests for a P90 (at least {MIN_REQUESTS} answered)",
            len(ok) >= MIN_REQUESTS,
            f"{len(ok)} answered: with fewer than 10 the P90 is simply the slowest request; raise num_requests.",
        ),
        LabCheck(
            "no request failed or timed out",
            len(ok) == len(result.records),
            f"{len(result.records) - len(ok)} of {len(result.records)} failed: {result.summary.get('first_error')}",
        ),
    ]
