"""Lab 09, the capstone: serve an SLO on a real engine, within a budget, with the alert that guards it.

The learner writes one plan (engine, quantization level, batch limit, replicas, the HPA's queue target,
the priced node, one alert rule). :func:`serve_plan` serves it on a real engine, load-tests it with the
kit's harness at the service's rate, overloads it on purpose while a local Prometheus evaluates the
alert on the engine's own ``/metrics``, and records every figure in the lab's results file;
:func:`check_plan` grades only what that file holds, so the verdict can be re-read and explained later.

Why the scenario is measured (:func:`calibrate`): a fixed rate and fixed bounds would be trivial on a fast
machine and impossible on a slow one. One server answering one request at a time sets the scale: the
rate keeps such a server :data:`LOAD` busy, the TTFT bound is a multiple of one answer's time, the TPOT
bound a multiple of one stream's TPOT, and the budget a multiple of one CPU node's cost at that traffic.
With these ratios one slot queues past the TTFT bound, several slots on one node meet it, and a second
node breaks the budget, on any machine.
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from servelab import results
from servelab.bench.loadgen import run_benchmark
from servelab.bench.stats import BenchResult, resolves, summarize
from servelab.bench.workload import Workload, fixed_workload
from servelab.course.grading import LabCheck
from servelab.engines import model as models
from servelab.engines.failure import start_failure
from servelab.engines.kinds import EngineKind
from servelab.engines.launch import Engine, LlamaServerOptions, VLLMOptions, start_engine
from servelab.errors import ServelabError
from servelab.k8s import autoscale
from servelab.memory import quantize
from servelab.observe import metrics, promql, promtool
from servelab.observe.prometheus import PrometheusServer, start_prometheus
from servelab.planning import capacity_sim, cost

LAB = "lab09_capstone_serve_an_slo"
INPUT_TOKENS = 32
OUTPUT_TOKENS = 32
LOAD = 0.7  # the service keeps a one-slot server this busy: it queues, but it is not overwhelmed
TTFT_FACTOR = 2.5  # TTFT p90 bound: this many times one answer's time when the server is idle
TPOT_FACTOR = 5.0  # TPOT p50 bound: this many times one stream's TPOT (a few requests share each step)
BUDGET_FACTOR = 1.3  # $/1M output tokens: this many times one on-demand CPU node serving the traffic
NUM_REQUESTS = 40  # 4 requests above the P90: a percentile, not the slowest request
CALIBRATION_SAMPLES = 5
OVERLOAD_WAIT = 3.0  # the overload queues this many TTFT bounds' worth of work per replica
OVERLOAD_S = 12.0  # and holds the queue about this long, so the alert's windows fill
FULL_BATCH_JOINS = 6  # requests that join a running full batch, at least, for its TTFT
SETTLE_S = 2.5  # one scrape and one rule evaluation (1 s each) after a phase ends
HOURS_PER_MONTH = 730
ENGINES = ("llama-server", "vllm")
GGUF_LEVELS = ("Q4_1", *quantize.LADDER)  # Q4_1 ships with the kit; the others are made from it here
VLLM_DTYPES = ("float32", "bfloat16")
MAX_BATCH = 32
MAX_REPLICAS = 8
MARKETS = ("on_demand", "spot")
# The gauge an HPA scales on for each engine: requests waiting for a slot or a place in the batch.
QUEUE_METRIC = {"llama-server": "llamacpp:requests_deferred", "vllm": "vllm:num_requests_waiting"}
# The scrape job Prometheus files the engine under: the job the kit's ServiceMonitors give each engine.
SCRAPE_JOB = {"llama-server": "llamacpp", "vllm": "vllm"}
PLAN_KEYS = ("engine", "quantization", "batch_limit", "replicas", "hpa_queue_target", "node", "market", "alert")
# Separate prompt streams per phase: llama-server keeps finished prompts in a cache, so a phase that
# repeated an earlier one's prompts would skip their prefill and look faster than the service.
SEED = {"calibration": 11, "load": 0, "full_batch": 22, "overload": 33}

# The checks, in the order of the report.
ENGINE_RAN = "the engine served the plan"
TTFT_MET = "SLO: TTFT p90 within its bound at the service's rate"
TPOT_MET = "SLO: TPOT p50 within its bound"
NO_FAILURES = "no request failed or timed out"
HPA_FITS = "the HPA's queue target fits the batch limit and the TTFT bound"
ALERT_VALID = "the alert is valid PromQL on metrics the engine exports"
ALERT_SILENT = "the alert stays silent while the SLO holds"
ALERT_FIRES = "the alert fires when the TTFT SLO breaks"
WITHIN_BUDGET = "$/1M output tokens within budget, priced on the hardware measured"


def _two_digits(value: float) -> float:
    """Rounded to two significant digits: the scenario prints as numbers a reader can hold."""
    return round(value, 1 - math.floor(math.log10(value)))


@dataclass(frozen=True)
class Scenario:
    """The service to serve, measured on this machine (:func:`calibrate`)."""

    rate_rps: float
    input_tokens: int
    output_tokens: int
    num_requests: int
    slo_ttft_p90_s: float
    slo_tpot_p50_s: float
    budget_usd_per_mtok: float
    one_answer_s: float  # measured: one answer, server otherwise idle (median)
    one_stream_ttft_s: float
    one_stream_tpot_s: float

    def describe(self) -> str:
        per_month = self.budget_usd_per_mtok * self.rate_rps * self.output_tokens * 3600 * HOURS_PER_MONTH / 1e6
        return "\n".join(
            [
                f"Traffic: Poisson arrivals at {self.rate_rps:g} request/s, {self.input_tokens}-token prompts, "
                f"{self.output_tokens}-token answers ({self.num_requests} requests in the load test).",
                f"SLO: TTFT p90 <= {self.slo_ttft_p90_s:g} s and TPOT p50 <= {self.slo_tpot_p50_s * 1000:g} ms, "
                "at that rate, with no failed request.",
                f"Budget: ${self.budget_usd_per_mtok:g} per 1M output tokens (about ${per_month:,.0f} a month at "
                "this traffic).",
                f"Measured here: one answer alone takes {self.one_answer_s:.2f} s (TTFT {self.one_stream_ttft_s:.3f} s,"
                f" TPOT {self.one_stream_tpot_s * 1000:.1f} ms), on llama-server with one slot.",
            ]
        )


def _workload(engine_kind: EngineKind) -> Workload:
    return fixed_workload(INPUT_TOKENS, OUTPUT_TOKENS, engine_kind=engine_kind)


def scenario_from(one_alone: dict[str, Any], cpu_usd_per_hour: float) -> Scenario:
    """The scenario from one server's one-at-a-time figures (a :func:`run_benchmark` summary) and the
    hourly price of a CPU node; separate from :func:`calibrate` so a test can pose it from recorded figures."""
    one_answer, tpot = float(one_alone["e2e_p50_s"]), float(one_alone["tpot_p50_s"])
    rate = _two_digits(LOAD / one_answer)
    budget = BUDGET_FACTOR * cost.usd_per_million_tokens(cpu_usd_per_hour, rate * OUTPUT_TOKENS)
    return Scenario(
        rate_rps=rate,
        input_tokens=INPUT_TOKENS,
        output_tokens=OUTPUT_TOKENS,
        num_requests=NUM_REQUESTS,
        slo_ttft_p90_s=_two_digits(TTFT_FACTOR * one_answer),
        slo_tpot_p50_s=_two_digits(TPOT_FACTOR * tpot),
        budget_usd_per_mtok=_two_digits(budget),
        one_answer_s=one_answer,
        one_stream_ttft_s=float(one_alone["ttft_p50_s"]),
        one_stream_tpot_s=tpot,
    )


def calibrate(samples: int = CALIBRATION_SAMPLES) -> Scenario:
    """Measure one llama-server slot answering one request at a time (medians of ``samples``, after a
    warm-up) and pose the scenario from it; the server is stopped before this returns."""
    with start_engine("llama-server", options=LlamaServerOptions(parallel=1)) as engine:
        alone = run_benchmark(
            engine.base_url,
            engine.served_model,
            _workload(engine.kind),
            concurrency=1,
            num_requests=samples,
            warmup=2,
            progress=False,
            seed=SEED["calibration"],
        ).summary
    if alone["ok"] < samples:
        raise ServelabError(
            f"llama-server answered {alone['ok']} of {samples} calibration requests: {alone['first_error']}",
            "check the engine's log under results/logs/ and run the cell again",
        )
    return scenario_from(alone, cost.load_prices().offer("CPU").usd_per_unit_hour("on_demand"))


@dataclass(frozen=True)
class Plan:
    """What the learner decides; :func:`parse_plan` says what each field may be."""

    engine: str
    quantization: str
    batch_limit: int
    replicas: int
    hpa_queue_target: float
    node: str
    market: str
    alert: Any  # one alerting rule (a mapping); graded by the alert checks, not refused here


def parse_plan(text: str) -> Plan:
    """The plan in ``text`` (YAML), or a :class:`ServelabError` listing every field to fix."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ServelabError(f"the plan is not valid YAML: {err}", "fix the YAML syntax") from None
    if not isinstance(doc, dict):
        raise ServelabError("the plan is not a mapping of fields", f"write the fields {', '.join(PLAN_KEYS)}")
    problems = [f"unknown field {key!r}" for key in doc if key not in PLAN_KEYS]
    problems += [f"missing field {key!r}" for key in PLAN_KEYS if key not in doc]
    if problems:
        raise ServelabError("; ".join(problems), f"keep exactly these fields: {', '.join(PLAN_KEYS)}")
    engine = doc["engine"]
    levels = GGUF_LEVELS if engine == "llama-server" else VLLM_DTYPES
    checks = [
        (engine in ENGINES, f"engine={engine!r}: use one of {', '.join(ENGINES)}"),
        (
            doc["quantization"] in levels,
            f"quantization={doc['quantization']!r}: {engine} takes one of {', '.join(levels)}",
        ),
        (
            _int_in(doc["batch_limit"], 1, MAX_BATCH),
            f"batch_limit={doc['batch_limit']!r}: a whole number, 1-{MAX_BATCH}",
        ),
        (_int_in(doc["replicas"], 1, MAX_REPLICAS), f"replicas={doc['replicas']!r}: a whole number, 1-{MAX_REPLICAS}"),
        (
            isinstance(doc["hpa_queue_target"], (int, float)) and not isinstance(doc["hpa_queue_target"], bool),
            f"hpa_queue_target={doc['hpa_queue_target']!r}: a number of waiting requests per replica, e.g. 2",
        ),
        (doc["market"] in MARKETS, f"market={doc['market']!r}: use one of {', '.join(MARKETS)}"),
    ]
    problems = [problem for ok, problem in checks if not ok]
    try:
        cost.load_prices().offer(str(doc["node"]))
    except ServelabError as err:
        problems.append(f"node={doc['node']!r}: {err.fix}")
    if not problems:
        try:  # the kit's HPA model refuses what the API server refuses (a target <= 0)
            autoscale.HPASpec(target=float(doc["hpa_queue_target"]), min_replicas=doc["replicas"], max_replicas=10)
        except ServelabError as err:
            problems.append(f"{err.problem} ({err.fix})")
    if problems:
        raise ServelabError("; ".join(problems), "fix these fields of the plan")
    return Plan(**{key: doc[key] for key in PLAN_KEYS})


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _gguf(level: str) -> str:
    """The model to serve at ``level``: the kit's own Q4_1 file, or a level made from it (cached)."""
    if level == "Q4_1":
        return models.DEFAULT_MODEL
    print(f"Making the {level} GGUF with llama.cpp's quantizer (servelab.memory.quantize; cached once made)...")
    return str(quantize.build_ladder([level])[level]["path"])


def _start(plan: Plan) -> Engine:
    if plan.engine == "llama-server":
        options: Any = LlamaServerOptions(parallel=plan.batch_limit)
        return start_engine("llama-server", model=_gguf(plan.quantization), options=options)
    return start_engine("vllm", options=VLLMOptions(dtype=plan.quantization, max_num_seqs=plan.batch_limit))


def _rule_problem(rule: Any) -> str:
    if not isinstance(rule, dict) or not rule.get("alert") or not rule.get("expr"):
        return "write one rule under alert: a mapping with `alert:` (its name) and `expr:` (the PromQL)"
    return ""


def _write_rules(rule: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": [{"name": "lab09", "rules": [rule]}]}, sort_keys=False))
    return path


def validate_alert(rule: Any, folder: Path) -> dict[str, Any]:
    """promtool's verdict on the rule as written, and the metric names its expression reads."""
    problem = _rule_problem(rule)
    if problem:
        return {"promtool_ok": False, "promtool_output": problem, "reads": []}
    ok, output = promtool.check_rules(_write_rules(rule, folder / "rule.yaml"))
    return {
        "promtool_ok": ok,
        "promtool_output": output[-600:],
        "reads": sorted(promql.metric_names(str(rule["expr"]))),
    }


def _summary(result: BenchResult) -> dict[str, Any]:
    keep = ("requests", "ok", "errors", "timeouts", "duration_s", "request_throughput", "output_token_throughput")
    s = result.summary
    figures = {key: s[key] for key in keep}
    for metric in ("ttft", "tpot"):
        figures.update({f"{metric}_{p}_s": s[f"{metric}_{p}_s"] for p in ("p50", "p90", "p99")})
        figures[f"{metric}_n"] = s[f"{metric}_n"]
    figures["first_error"] = s["first_error"]
    return figures


def _phase(engine: Engine, label: str, **options: Any) -> tuple[BenchResult, float, float]:
    """One run of the kit's load generator against ``engine``, with its wall-clock start and end."""
    began = time.time()
    result = run_benchmark(
        engine.base_url, engine.served_model, _workload(engine.kind), seed=SEED[label], progress=False, **options
    )
    return result, began, time.time()


def _over(prom: PrometheusServer, promql_text: str, start: float, end: float) -> list[list[float]]:
    frame = prom.query_range(promql_text, start, end, "1s")
    return [[float(t), float(v)] for t, v in zip(frame["timestamp"], frame["value"], strict=True)]


def _full_batch(engine: Engine, batch: int) -> dict[str, Any]:
    """One replica kept at a full batch: its request rate, and the TTFT of a request that joins the running
    batch. The first ``batch`` requests start together and share one prefill step, which no request of a
    busy replica does, so their TTFT is left out of that figure."""
    total = batch + max(batch, FULL_BATCH_JOINS)
    print(f"Full batch: {total} requests, {batch} at a time (what one replica does when it is busy)...")
    result, _, _ = _phase(engine, "full_batch", concurrency=batch, num_requests=total, warmup=0)
    joined = summarize([r for r in result.records if r.index >= batch], result.duration_s)
    return {"concurrency": batch, **_summary(result), "ttft_p50_s": joined["ttft_p50_s"], "ttft_n": joined["ttft_n"]}


def _measure(engine: Engine, plan: Plan, scenario: Scenario, run: dict[str, Any], folder: Path) -> None:
    """The load test, the full batch and the overload on ``engine``, watched by a local Prometheus."""
    alert = run["alert"]
    alert["engine_series"] = sorted(metrics.series_names(metrics.scrape(engine.url + "/metrics")))
    with ExitStack() as stack:
        prom: PrometheusServer | None = None
        if alert["promtool_ok"]:
            live = {k: v for k, v in plan.alert.items() if k not in ("for", "keep_firing_for")}
            try:
                prom = stack.enter_context(
                    start_prometheus(
                        {SCRAPE_JOB[plan.engine]: [f"127.0.0.1:{engine.port}"]},
                        [_write_rules(live, folder / "live-rule.yaml")],
                        scrape_interval="1s",
                        evaluation_interval="1s",
                    )
                )
                prom.wait_for_targets(timeout_s=30)
            except ServelabError as err:
                alert["live_error"] = err.problem
                prom = None
        watched_from = time.time()
        rate = scenario.rate_rps / plan.replicas
        print(
            f"Load test: {scenario.num_requests} requests at {rate:g} request/s (the rate one of your replicas gets)..."
        )
        load, began, ended = _phase(engine, "load", request_rate=rate, num_requests=scenario.num_requests, warmup=1)
        run["load_test"] = {"rate_rps": rate, **_summary(load), "ttft_s": [r.ttft_s for r in load.records if r.ok]}
        run["windows"] = {"load": [began, ended]}
        batch = plan.batch_limit
        run["full_batch"] = _full_batch(engine, batch)
        capacity = max(run["full_batch"]["request_throughput"], 1e-3)
        waiting = max(1, math.ceil(OVERLOAD_WAIT * scenario.slo_ttft_p90_s * capacity))
        users = batch + waiting
        print(f"Overload: {users} users on {batch} slots, {waiting} waiting, for about {OVERLOAD_S:g} s...")
        over, began, ended = _phase(
            engine, "overload", concurrency=users, num_requests=users + math.ceil(OVERLOAD_S * capacity), warmup=0
        )
        run["overload"] = {"users": users, "waiting": waiting, **_summary(over)}
        run["windows"]["overload"] = [began, ended + SETTLE_S]
        if prom is not None:
            time.sleep(SETTLE_S)
            try:
                _watch(prom, plan, run, watched_from)
            except ServelabError as err:
                alert["live_error"] = err.problem


def _watch(prom: PrometheusServer, plan: Plan, run: dict[str, Any], watched_from: float) -> None:
    """What Prometheus saw: the alert's state and the HPA's queue metric over the run, per phase."""
    windows = run["windows"]
    end = windows["overload"][1]
    levels = prom.alert_timeline(str(plan.alert["alert"]), watched_from, end, "1s")
    timeline = [[float(t), int(v)] for t, v in zip(levels["timestamp"], levels["level"], strict=True)]
    queue_metric = QUEUE_METRIC[plan.engine]
    queue = _over(prom, f"sum({queue_metric})", watched_from, end)

    def during(series: list[list[float]], start: float, stop: float) -> list[float]:
        return [v for t, v in series if start <= t <= stop]

    load_end, (over_start, over_end) = windows["load"][1], windows["overload"]
    run["alert"].update(
        evaluated=True,
        fired_during_load=any(level == 2 for level in during(timeline, watched_from, load_end)),
        fired_during_overload=any(level == 2 for level in during(timeline, over_start, over_end)),
        timeline=timeline,
    )
    during_load, during_overload = during(queue, watched_from, load_end), during(queue, over_start, over_end)
    run["queue"] = {
        "metric": queue_metric,
        "series": queue,
        "mean_during_load": sum(during_load) / len(during_load) if during_load else None,
        "mean_during_overload": sum(during_overload) / len(during_overload) if during_overload else None,
    }
    windows["watched_from"] = watched_from


def node_price(plan: Plan) -> dict[str, Any]:
    """The plan's node and its hourly price, from the kit's sourced price file (data/pricing/)."""
    offer = cost.load_prices().offer(plan.node)
    return {
        "offer": plan.node,
        "instance": offer.instance,
        "market": plan.market,
        "usd_per_node_hour": offer.usd_per_unit_hour(cast(cost.Market, plan.market)),
        "cpu": plan.node.strip().lower() == "cpu",
    }


def serve_plan(plan_text: str, scenario: Scenario) -> dict[str, Any]:
    """Serve the plan for real and record what happened (``results/<LAB>.json``, key ``serve``).

    Every server it starts (the engine, Prometheus) is stopped before it returns, whatever happened;
    a plan that cannot run is recorded with the reason, so :func:`check_plan` can say what to change.
    """
    run: dict[str, Any] = {"plan_text": plan_text}
    try:
        plan = parse_plan(plan_text)
    except ServelabError as err:
        run["plan_error"] = str(err)
        print(f"Not served: {err}")
        results.record(LAB, serve=run)
        return run
    run["plan"] = asdict(plan)
    run["node"] = node_price(plan)
    with tempfile.TemporaryDirectory(prefix="servelab-lab09-") as tmp:
        run["alert"] = validate_alert(plan.alert, Path(tmp))
        print(f"Starting {plan.engine} ({plan.quantization}, batch limit {plan.batch_limit})...")
        try:
            engine = _start(plan)
        except ServelabError as err:
            run["engine"] = {"started": False, "error": start_failure(err, cast(EngineKind, plan.engine))}
            print(f"{plan.engine} did not start: {run['engine']['error']}")
        else:
            with engine:
                run["engine"] = {
                    "started": True,
                    "kind": engine.kind,
                    "device": engine.device,
                    "command": engine.command,
                }
                try:
                    _measure(engine, plan, scenario, run, Path(tmp))
                except ServelabError as err:
                    run["engine"]["error"] = err.problem.splitlines()[0]
                    print(f"The run stopped: {err}")
    results.record(LAB, serve=run)
    return run


# ---- Grading: from the results file alone ----


def _waiting_for(names: list[str], why: str) -> list[LabCheck]:
    return [LabCheck(name, False, why) for name in names]


def check_plan(recorded: dict[str, Any]) -> list[LabCheck]:
    """Lab 09: does the plan meet the SLO at the service's rate, within the budget, guarded by its alert?

    ``recorded`` is the lab's results file (``results.load(LAB)``): the scenario the set-up measured and
    what :func:`serve_plan` recorded. Nothing is re-measured here.
    """
    if "scenario" not in recorded:
        return [LabCheck("the scenario was measured", False, "run the set-up cell (capstone.calibrate) first")]
    if "serve" not in recorded:
        return [LabCheck(ENGINE_RAN, False, "run the cell that calls capstone.serve_plan(...) first")]
    scenario, serve = Scenario(**recorded["scenario"]), recorded["serve"]
    if "plan_error" in serve:
        return [LabCheck("the plan is complete and valid", False, serve["plan_error"])]
    plan = Plan(**serve["plan"])
    engine = serve.get("engine", {})
    measured = engine.get("started") and "overload" in serve
    checks = [_engine_check(engine, plan, measured)]
    if measured:
        checks += [*_slo_checks(serve, scenario), _hpa_check(serve, plan, scenario)]
    else:
        checks += _waiting_for(
            [TTFT_MET, TPOT_MET, NO_FAILURES, HPA_FITS], "the plan was not served: fix the row above"
        )
    checks.append(_alert_valid_check(serve, plan, bool(measured)))
    checks += _alert_behaviour_checks(serve, scenario, checks)
    checks.append(_cost_check(serve, plan, scenario, bool(measured)))
    return checks


def _engine_check(engine: dict[str, Any], plan: Plan, measured: bool) -> LabCheck:
    if measured:
        return LabCheck(ENGINE_RAN, True, "")
    if engine.get("started"):
        return LabCheck(ENGINE_RAN, False, f"{plan.engine} started, but the run stopped: {engine.get('error')}")
    return LabCheck(
        ENGINE_RAN,
        False,
        f"{plan.engine} did not start; its log says: {engine.get('error')}. Change the setting it names.",
    )


def _slo_checks(serve: dict[str, Any], scenario: Scenario) -> list[LabCheck]:
    load, plan = serve["load_test"], Plan(**serve["plan"])
    ttft, ttft_n = load["ttft_p90_s"], load["ttft_n"]
    tpot, tpot_n = load["tpot_p50_s"], load["tpot_n"]
    at = f"at {load['rate_rps']:g} request/s per replica"
    if plan.batch_limit == 1:
        ttft_advice = (
            "with one slot each request waits for every request ahead of it to finish; raise batch_limit "
            f"({'--parallel' if plan.engine == 'llama-server' else '--max-num-seqs'}) so arriving requests start "
            "at once, or add replicas and watch the budget"
        )
    else:
        ttft_advice = (
            "requests still wait: the batch is full too often (raise batch_limit), or each prefill is slowed by the "
            "others (a faster quantization level, or another replica if the budget allows)"
        )
    failed = load["requests"] - load["ok"]
    return [
        LabCheck(
            TTFT_MET,
            ttft is not None and resolves(90, ttft_n) and ttft <= scenario.slo_ttft_p90_s,
            f"TTFT p90 {_seconds(ttft)} (n={ttft_n}) {at}, bound {scenario.slo_ttft_p90_s:g} s (p50 "
            f"{_seconds(load['ttft_p50_s'])}): {ttft_advice}.",
        ),
        LabCheck(
            TPOT_MET,
            tpot is not None and resolves(50, tpot_n) and tpot <= scenario.slo_tpot_p50_s,
            f"TPOT p50 {_ms(tpot)} (n={tpot_n}) {at}, bound {_ms(scenario.slo_tpot_p50_s)}: every request in a "
            "batch slows the tokens of the others, and a bigger quantization level slows them all; lower "
            "batch_limit or choose a smaller level.",
        ),
        LabCheck(
            NO_FAILURES,
            failed == 0,
            f"{failed} of {load['requests']} requests failed or timed out: {load['first_error']}",
        ),
    ]


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "none" if value is None else f"{value * 1000:.1f} ms"


def queue_bound(serve: dict[str, Any], scenario: Scenario) -> tuple[capacity_sim.ReplicaModel, float]:
    """One replica at a full batch as the capacity simulator models it, and the most waiting requests per
    replica an HPA target may hold under the TTFT bound (:func:`capacity_sim.queue_target_bound`)."""
    full = serve["full_batch"]
    model = capacity_sim.ReplicaModel.from_bench_rows([full], max_batch=full["concurrency"])
    return model, capacity_sim.queue_target_bound(model, scenario.slo_ttft_p90_s)


def _hpa_check(serve: dict[str, Any], plan: Plan, scenario: Scenario) -> LabCheck:
    full = serve["full_batch"]
    if not full["ok"] or full["ttft_p50_s"] is None:
        return LabCheck(HPA_FITS, False, f"the full-batch run answered nothing: {full['first_error']}")
    model, bound = queue_bound(serve, scenario)
    target = plan.hpa_queue_target
    measured = (
        f"with a full batch of {plan.batch_limit} one replica answered {model.capacity_rps:.2f} request/s, TTFT p50 "
        f"{full['ttft_p50_s']:.2f} s (n={full['ttft_n']})"
    )
    if bound <= 0 and plan.batch_limit == 1:
        hint = (
            f"{measured}: one request alone missed the {scenario.slo_ttft_p90_s:g} s TTFT bound here, though the "
            "set-up measured it well inside: the machine was busy with something else during the run. Run the set-up "
            "and serve cells again."
        )
    elif bound <= 0:
        hint = (
            f"{measured}: a full batch alone already misses the {scenario.slo_ttft_p90_s:g} s TTFT bound, so no queue "
            "target can meet it. Lower batch_limit to a batch whose TTFT leaves room for waiting."
        )
    else:
        queue = serve.get("queue", {}).get("mean_during_overload")
        scaled = ""
        if queue is not None and queue > 0:
            proposal = autoscale.pods_metric_replicas(plan.replicas, [queue], target)
            then = f"ask for {proposal} replicas" if proposal > plan.replicas else "not add a replica"
            scaled = (
                f" In the overload each replica held {queue:.1f} waiting on average; your HPA would then {then} "
                "(servelab.k8s.autoscale)."
            )
        hint = (
            f"{measured}. The HPA settles where each replica holds about hpa_queue_target={target:g} waiting requests, "
            f"the last of which waits target / capacity before a TTFT of a full batch: the TTFT bound allows at most "
            f"{bound:.2f} waiting per replica (capacity_sim.queue_target_bound), e.g. "
            f"{capacity_sim.preferred_at_most(bound):g}.{scaled}"
        )
    return LabCheck(HPA_FITS, 0 < target <= bound, hint)


def _alert_valid_check(serve: dict[str, Any], plan: Plan, measured: bool) -> LabCheck:
    alert = serve["alert"]
    if not alert["promtool_ok"]:
        return LabCheck(ALERT_VALID, False, f"promtool check rules says: {alert['promtool_output']}")
    reads = alert["reads"]
    if not reads:
        return LabCheck(ALERT_VALID, False, "the expression reads no metric: an alert must watch the engine")
    if not measured and "engine_series" not in alert:
        return LabCheck(ALERT_VALID, False, "the engine did not run, so its metric names could not be read")
    exported = set(alert["engine_series"])
    unknown = [name for name in reads if name not in exported]
    prefix = QUEUE_METRIC[plan.engine].split(":")[0] + ":"
    theirs = sorted(name for name in exported if name.startswith(prefix))
    return LabCheck(
        ALERT_VALID,
        not unknown,
        f"{plan.engine} does not export {', '.join(unknown)}; its /metrics page has {', '.join(theirs)}",
    )


def _alert_behaviour_checks(serve: dict[str, Any], scenario: Scenario, so_far: list[LabCheck]) -> list[LabCheck]:
    alert = serve["alert"]
    if not alert.get("evaluated"):
        why = alert.get("live_error") or "the alert was not evaluated live: fix the rows above first"
        return _waiting_for([ALERT_SILENT, ALERT_FIRES], why)
    held = all(c.ok for c in so_far if c.name in (TTFT_MET, TPOT_MET, NO_FAILURES))
    queue = serve.get("queue", {})
    metric = queue.get("metric")
    at_load, at_overload = queue.get("mean_during_load"), queue.get("mean_during_overload")
    if not held:
        fired = "and your alert fired then" if alert["fired_during_load"] else "and your alert stayed silent then"
        silent = LabCheck(
            ALERT_SILENT,
            False,
            f"not judged: the load test broke the SLO ({fired}); meet the SLO first, then this row says whether the "
            "alert keeps quiet while it holds.",
        )
    else:
        silent = LabCheck(
            ALERT_SILENT,
            not alert["fired_during_load"],
            f"your alert fired during the load test, which met the SLO ({metric} averaged "
            f"{_number(at_load)} per replica then): it would page nobody can act on. Raise its threshold to the queue "
            "the SLO cannot absorb, and smooth it (avg_over_time over a window) so that one busy scrape does not page.",
        )
    over = serve["overload"]
    broke = over["ttft_p90_s"] is not None and over["ttft_p90_s"] > scenario.slo_ttft_p90_s
    overload = (
        f"{over['users']} users on {serve['plan']['batch_limit']} slots, {over['waiting']} waiting: TTFT p90 "
        f"{_seconds(over['ttft_p90_s'])} (n={over['ttft_n']}) against the {scenario.slo_ttft_p90_s:g} s bound"
    )
    if not broke:
        fires = LabCheck(ALERT_FIRES, False, f"not judged: the overload ({overload}) did not break the SLO; run again")
    else:
        fires = LabCheck(
            ALERT_FIRES,
            alert["fired_during_overload"],
            f"your alert stayed silent through the overload ({overload}; {metric} averaged {_number(at_overload)}). "
            f"Requests waiting for a slot are what TTFT is made of: alert on {metric} above the queue the SLO "
            f"allows, with any window shorter than the overload ({OVERLOAD_S:g} s; the live test drops `for:`).",
        )
    return [silent, fires]


def _number(value: float | None) -> str:
    return "nothing" if value is None else f"{value:.2f}"


def _cost_check(serve: dict[str, Any], plan: Plan, scenario: Scenario, measured: bool) -> LabCheck:
    node = serve["node"]
    on_cpu = serve.get("engine", {}).get("device", "cpu") == "cpu"
    if node["cpu"] != on_cpu:
        hardware = "a CPU" if on_cpu else "a GPU"
        return LabCheck(
            WITHIN_BUDGET,
            False,
            f"you priced {plan.node} ({node['instance']}), but the throughput was measured on {hardware}: price the "
            f"node the engine ran on ({'node: CPU' if on_cpu else 'a GPU offer'}, data/pricing/gpu_prices.yaml).",
        )
    usd, tok_s, usd_per_hour = fleet_cost(serve) if measured else (None, 0.0, 0.0)
    if usd is None:
        return LabCheck(WITHIN_BUDGET, False, "no output tokens were measured: serve the plan first")
    return LabCheck(
        WITHIN_BUDGET,
        usd <= scenario.budget_usd_per_mtok,
        f"${usd:.2f} per 1M output tokens (servelab.planning.cost: {plan.replicas} x "
        f"${node['usd_per_node_hour']:.4f}/h for {node['instance']} {plan.market}, serving {tok_s:.1f} output "
        f"tokens/s, about ${usd_per_hour * HOURS_PER_MONTH:,.0f} a month) against a budget of "
        f"${scenario.budget_usd_per_mtok:g}: a replica the traffic does not need is paid all the same; serve it with "
        "batching on fewer nodes.",
    )


def fleet_cost(serve: dict[str, Any]) -> tuple[float | None, float, float]:
    """``($ per 1M output tokens, fleet output tokens/s, fleet $ per hour)`` of a served plan: each replica
    gets an equal share of the traffic, so the fleet serves the tested replica's throughput times the
    replicas, and pays every replica's node by the hour (None: nothing was served)."""
    replicas = serve["plan"]["replicas"]
    tok_s = serve["load_test"]["output_token_throughput"] * replicas
    usd_per_hour = replicas * serve["node"]["usd_per_node_hour"]
    usd = cost.usd_per_million_tokens(usd_per_hour, tok_s) if tok_s > 0 else None
    return usd, tok_s, usd_per_hour


def measured_table(recorded: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's figures beside their bounds, one row each, for the notebook to show."""
    scenario, serve = Scenario(**recorded["scenario"]), recorded.get("serve", {})
    load = serve.get("load_test")
    if not load:
        return []
    usd, tok_s, _ = fleet_cost(serve)
    rows = [
        {
            "figure": "TTFT p90 (s)",
            "measured": load["ttft_p90_s"],
            "n": load["ttft_n"],
            "bound": scenario.slo_ttft_p90_s,
        },
        {
            "figure": "TPOT p50 (ms)",
            "measured": _scaled(load["tpot_p50_s"]),
            "n": load["tpot_n"],
            "bound": scenario.slo_tpot_p50_s * 1000,
        },
        {"figure": "failed requests", "measured": load["requests"] - load["ok"], "n": load["requests"], "bound": 0},
        {"figure": "output tokens/s (fleet)", "measured": tok_s, "n": load["ok"], "bound": None},
        {"figure": "$ per 1M output tokens", "measured": usd, "n": None, "bound": scenario.budget_usd_per_mtok},
    ]
    full = serve.get("full_batch")
    if full and full["ok"] and full["ttft_p50_s"] is not None:
        target = {"figure": "HPA queue target (waiting per replica)", "measured": serve["plan"]["hpa_queue_target"]}
        rows.append({**target, "n": full["ttft_n"], "bound": queue_bound(serve, scenario)[1]})
    return rows


def _scaled(value: float | None) -> float | None:
    return None if value is None else value * 1000
