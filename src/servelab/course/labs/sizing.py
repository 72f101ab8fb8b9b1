"""Lab 03: the llama.cpp pod that gets OOMKilled, sized from the real server under the service's load.

The colleague reconfigured ``manifests/llamacpp``'s Deployment for a new service (several users at once,
longer conversations) and the pod is OOMKilled under load and CPU-throttled. The learner edits the whole
Deployment; :func:`run_manifest` starts the native ``llama-server`` that the kit builds with the
container's own flags (:func:`server_options`), loads it with the service's concurrent users through the
kit's harness, samples its resident memory meanwhile (:class:`servelab.memory.footprint.RSSSampler`, as
notebook 03 does) and asks the server how many slots and how much context per slot it made
(``/props``). :func:`check_deployment` grades the manifest against that run: the schemas, the memory
request and limit against the measured peak, the CPU against ``--threads``, the slots and context the
server reported against the service, the readiness probe against llama-server's ``/health``, and
whether every request was served.

Two memory facts of this llama.cpp build make the lesson. The KV cache for the whole ``-c`` is allocated
and zeroed at start, so a short load already shows the footprint of long conversations. The prompt cache
is not: llama-server keeps finished prompts' KV state in RAM, up to ``--cache-ram`` MiB (8192 by
default), and it fills only with hours of traffic, so the limit must leave room for the bound the flag
sets rather than for what a short run saw.

What the lab cannot take from the Deployment it takes from the kit: the GGUF (the pod's ``-m`` is a path
on its volume), loopback and a free port.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import yaml

from servelab.bench.loadgen import run_benchmark
from servelab.bench.stats import BenchResult
from servelab.bench.workload import fixed_workload
from servelab.course.exercises.nb03 import HEADROOM
from servelab.course.grading import LabCheck
from servelab.engines.failure import logged_failure, start_failure
from servelab.engines.launch import LlamaServerOptions, start_llama_server
from servelab.errors import ServelabError
from servelab.k8s import docs, manifests, quantity
from servelab.k8s import probes as k8s_probes
from servelab.memory.footprint import RSSSampler

SERVICE_USERS = 4  # users the service serves at the same time
SERVICE_CONTEXT_TOKENS = 4096  # one user's conversation: prompt and answer
LOAD_INPUT_TOKENS = 128  # the load's prompts: short, so a run takes seconds on 2 cores (the KV cache
LOAD_OUTPUT_TOKENS = 32  # for the whole -c is allocated at start whatever the prompts fill)
REQUESTS_PER_USER = 2
REQUEST_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 60.0
SAMPLE_INTERVAL_S = 0.1
PROMPT_CACHE_DEFAULT_MIB = 8192  # --cache-ram's default in this build (`llama-server --help`)
LLAMA_SERVER_DEFAULT_PORT = 8080  # --port's default
MAX_CTX_TOKENS = 65536  # about 1.4 GiB of KV cache for this model: the most this lab allocates on a shared machine
MAX_THREADS = 16
ROUNDING_MIB = 64

# The container's flags the lab reads into LlamaServerOptions (field, or None: taken from the kit instead);
# every other flag goes to llama-server as it is, so a flag it rejects fails as it would in the pod.
VALUE_FLAGS: dict[str, str | None] = {
    "-m": None,
    "--model": None,
    "--host": None,
    "--port": None,
    "-t": "threads",
    "--threads": "threads",
    "-c": "n_ctx",
    "--ctx-size": "n_ctx",
    "-np": "parallel",
    "--parallel": "parallel",
    "-b": "n_batch",
    "--batch-size": "n_batch",
}
SWITCHES = {
    "-kvu": ("kv_unified", True),
    "--kv-unified": ("kv_unified", True),
    "-no-kvu": ("kv_unified", False),
    "--no-kv-unified": ("kv_unified", False),
    "-cb": ("cont_batching", True),
    "--cont-batching": ("cont_batching", True),
    "-nocb": ("cont_batching", False),
    "--no-cont-batching": ("cont_batching", False),
    "--metrics": ("metrics", True),
}
CACHE_RAM_FLAGS = ("-cram", "--cache-ram")


@dataclass
class ServerRun:
    """What one start of llama-server with the manifest's flags measured under the service's load."""

    args: list[str]
    command: list[str] = field(default_factory=list)  # what the lab ran: the flags, the kit's GGUF and port
    error: str | None = None  # llama-server's own line when it did not start or died under load
    slots: int | None = None  # /props total_slots
    slot_ctx: int | None = None  # /props default_generation_settings.n_ctx: tokens one slot holds
    memory: RSSSampler | None = None  # the server's resident memory, sampled while the load ran
    result: BenchResult | None = None


def deployment_of(text: str) -> dict[str, Any]:
    """The one Deployment in ``text`` (YAML), or a :class:`ServelabError` saying what is wrong with it."""
    try:
        found = [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind") == "Deployment"]
    except yaml.YAMLError as err:
        raise ServelabError(f"the manifest is not valid YAML: {err}", "fix the YAML syntax") from None
    if len(found) != 1:
        raise ServelabError(f"the manifest holds {len(found)} Deployments", "keep exactly one Deployment")
    return found[0]


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment's first container (the llama-server one)."""
    containers = docs.listing(docs.get(deployment, "spec.template.spec.containers"))
    if not containers or not isinstance(containers[0], dict):
        raise ServelabError("the Deployment has no container", "keep the llamacpp container of the starting point")
    return containers[0]


def container_args(container: dict[str, Any]) -> list[str]:
    """The container's ``args`` as text: the flags the image's entrypoint, llama-server, receives."""
    args = container.get("args")
    if not isinstance(args, list) or not args:
        raise ServelabError("the container has no args", "give llama-server its flags in `args:` as in the start")
    return [str(a) for a in args]


def _flag_values(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The values of :data:`VALUE_FLAGS` (last one wins, as in llama.cpp) and every other word, in order."""
    values: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word in VALUE_FLAGS and i + 1 < len(args):
            values[word] = args[i + 1]
            i += 2
            continue
        rest.append(word)
        i += 1
    return values, rest


def server_options(args: list[str]) -> LlamaServerOptions:
    """The :class:`LlamaServerOptions` that reproduce what llama-server does with ``args`` in the pod.

    Where the pod leaves a flag out, llama-server's own default applies, not the kit's: ``-c`` 0 (the
    model's training context), ``--parallel`` -1 (auto: 4 slots sharing one cache), a unified cache only
    with an automatic slot count, and ``/metrics`` only with ``--metrics``. A value that is not a whole
    number goes to llama-server as written, which refuses it with its own message.
    """
    values, rest = _flag_values(args)
    fields: dict[str, Any] = {"n_ctx": 0, "parallel": -1, "kv_unified": False, "metrics": False}
    extra: list[str] = []
    for flag, value in values.items():
        key = VALUE_FLAGS[flag]
        if key is None:
            continue
        if re.fullmatch(r"-?\d+", value):
            fields[key] = int(value)
        else:
            extra += [flag, value]
    for word in rest:
        if word in SWITCHES:
            key, on = SWITCHES[word]
            fields[key] = on
        else:
            extra.append(word)
    if fields["n_ctx"] > MAX_CTX_TOKENS or fields.get("threads", 0) > MAX_THREADS:
        raise ServelabError(
            f"-c {fields['n_ctx']} / -t {fields.get('threads')} is more than this lab runs on a shared machine",
            f"keep -c at most {MAX_CTX_TOKENS} and -t at most {MAX_THREADS}",
        )
    return LlamaServerOptions(**fields, extra_args=extra)


def cache_ram_mib(args: list[str]) -> int | None:
    """The prompt cache's bound in MiB that ``args`` give llama-server (None: -1, no bound)."""
    given = [args[i + 1] for i, word in enumerate(args[:-1]) if word in CACHE_RAM_FLAGS]
    value = int(given[-1]) if given and re.fullmatch(r"-?\d+", given[-1]) else PROMPT_CACHE_DEFAULT_MIB
    return None if value < 0 else value


def server_port(args: list[str]) -> int | None:
    """The port llama-server listens on in the pod: ``--port``, else its default."""
    port = _flag_values(args)[0].get("--port", str(LLAMA_SERVER_DEFAULT_PORT))
    return int(port) if port.isdigit() else None


def _props(url: str) -> dict[str, Any]:
    response = httpx.get(url + "/props", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def run_manifest(text: str) -> ServerRun | None:
    """Start llama-server with the manifest's flags, load it with the service's users, and stop it.

    None (with the reason printed) when the manifest has no flags to start it with; otherwise the run,
    whose ``error`` holds llama-server's own line when it did not start or died under the load.
    """
    try:
        args = container_args(container_of(deployment_of(text)))
        options = server_options(args)
    except ServelabError as err:
        print(f"Not run: {err}")
        return None
    run = ServerRun(args=args)
    try:
        server = start_llama_server(options=options, ready_timeout=READY_TIMEOUT_S)
    except ServelabError as err:
        run.error = start_failure(err, "llama-server")
        print(f"llama-server did not start: {run.error}")
        return run
    run.command = server.command
    print("started:", " ".join(server.command))
    requests = SERVICE_USERS * REQUESTS_PER_USER
    assert server.process is not None, "a started server has its process"
    run.memory = memory = RSSSampler(server.process.pid, interval_s=SAMPLE_INTERVAL_S)
    try:
        props = _props(server.url)
        run.slots = int(props["total_slots"])
        run.slot_ctx = int(props["default_generation_settings"]["n_ctx"])
        print(f"ready in {server.ready_seconds:.1f} s: {run.slots} slot(s) of {run.slot_ctx} tokens each")
        print(
            f"loading it with {SERVICE_USERS} users at once, {requests} requests of "
            f"{LOAD_INPUT_TOKENS} prompt + {LOAD_OUTPUT_TOKENS} answer tokens"
        )
        workload = fixed_workload(LOAD_INPUT_TOKENS, LOAD_OUTPUT_TOKENS, engine_kind=server.kind)
        with memory:
            run.result = run_benchmark(
                server.base_url,
                server.served_model,
                workload,
                concurrency=SERVICE_USERS,
                num_requests=requests,
                warmup=0,
                timeout_s=REQUEST_TIMEOUT_S,
                progress=False,
            )
    except (ServelabError, httpx.HTTPError, KeyError, ValueError) as err:  # e.g. the load generator lost it
        run.error = f"{type(err).__name__}: {err}"
    finally:
        if not server.running:  # it died: its log says why
            run.error = logged_failure(server.log_path, server.kind)
        server.stop()
    summary = run.result.summary if run.result else {}
    print(
        f"{summary.get('ok', 0)} of {requests} answered in {summary.get('duration_s', 0):.1f} s; "
        f"RSS idle {memory.idle_mib:.0f} MiB, peak {memory.peak_mib:.0f} MiB; llama-server stopped"
    )
    return run


def declared_memory(text: str) -> dict[str, float]:
    """The manifest's memory request and limit in MiB, those it states (for the plot beside the run)."""
    try:
        resources = docs.mapping(container_of(deployment_of(text)).get("resources"))
    except ServelabError:
        return {}
    found = {
        label: quantity.memory_mib(resources, section)
        for label, section in (("request", "requests"), ("limit", "limits"))
    }
    return {label: mib for label, mib in found.items() if mib is not None}


def _mib(value: float | None) -> str:
    return "missing" if value is None else f"{value:.0f} MiB"


def _rounded(mib: float) -> int:
    return ROUNDING_MIB * math.ceil(mib / ROUNDING_MIB)


def _schema_check(deployment: dict[str, Any]) -> LabCheck:
    problems = manifests.validate_document(deployment, "your manifest")
    versions = ", ".join(v.removesuffix(".0") for v in manifests.K8S_VERSIONS)
    return LabCheck(
        f"valid for Kubernetes {versions} and the kit's serving rules",
        not problems,
        "; ".join(manifests.distinct_problems(problems)),
    )


def _served_check(run: ServerRun) -> LabCheck:
    name = "llama-server starts with these flags and serves every request"
    planned = SERVICE_USERS * REQUESTS_PER_USER
    if run.error is not None:
        return LabCheck(
            name, False, f"llama-server stopped with: {run.error}. Fix what it names in the container's args."
        )
    records = run.result.records if run.result else []
    ok = sum(r.ok for r in records)
    first = run.result.summary.get("first_error") if run.result else None
    return LabCheck(
        name,
        ok == planned,
        f"{ok} of {planned} requests were answered; the first error: {first}. A request longer than one slot's "
        "context is refused: see the context check.",
    )


def _slots_check(run: ServerRun) -> LabCheck:
    name = f"{SERVICE_USERS} slots: every user of the service is decoded at once"
    ttft = run.result.summary.get("ttft_p50_s") if run.result else None
    waited = f" (this run's median time to first token: {ttft:.1f} s)" if ttft is not None else ""
    return LabCheck(
        name,
        run.slots is not None and run.slots >= SERVICE_USERS,
        f"llama-server made {run.slots} slot(s) (/props total_slots) for {SERVICE_USERS} concurrent users: the "
        f"others wait in its queue until a slot frees{waited}. Set --parallel {SERVICE_USERS}.",
    )


def _context_check(run: ServerRun, options: LlamaServerOptions) -> LabCheck:
    need = SERVICE_USERS * SERVICE_CONTEXT_TOKENS
    name = f"the KV cache holds {SERVICE_USERS} conversations of {SERVICE_CONTEXT_TOKENS} tokens at once"
    if run.slot_ctx is None or run.slots is None:
        return LabCheck(name, False, "llama-server did not report its slots (/props): make it start first.")
    unified = options.kv_unified or options.parallel < 0
    pool = options.n_ctx or (run.slot_ctx if unified else run.slot_ctx * run.slots)
    if run.slot_ctx < SERVICE_CONTEXT_TOKENS:
        split = "" if unified else f" (-c {options.n_ctx or pool} split over {run.slots} slots: no --kv-unified)"
        hint = (
            f"each slot holds {run.slot_ctx} tokens (/props n_ctx){split}: a {SERVICE_CONTEXT_TOKENS}-token "
            f"conversation is refused. Give the cache -c {need} for {SERVICE_USERS} slots."
        )
    else:
        hint = (
            f"the cache holds {pool} tokens in all and its slots share it (--kv-unified): {SERVICE_USERS} "
            f"conversations of {SERVICE_CONTEXT_TOKENS} tokens need {need} at once. Set -c {need}."
        )
    return LabCheck(name, run.slot_ctx >= SERVICE_CONTEXT_TOKENS and pool >= need, hint)


def _request_check(container: dict[str, Any], memory: RSSSampler, options: LlamaServerOptions) -> LabCheck:
    request = quantity.memory_mib(container.get("resources"), "requests")
    return LabCheck(
        "memory request covers the peak measured under load",
        request is not None and request >= memory.peak_mib,
        f"request {_mib(request)}, but llama-server's resident memory peaked at {memory.peak_mib:.0f} MiB under "
        f"{SERVICE_USERS} users (idle {memory.idle_mib:.0f} MiB: the GGUF, the KV cache for -c "
        f"{options.n_ctx or 'from the model'}, compute buffers). The scheduler may place the pod where that much "
        "is not free, and under memory pressure a pod above its request is evicted first. Request at least the "
        f"peak, e.g. {_rounded(memory.peak_mib)}Mi.",
    )


def _limit_check(container: dict[str, Any], memory: RSSSampler, args: list[str]) -> LabCheck:
    limit = quantity.memory_mib(container.get("resources"), "limits")
    cache = cache_ram_mib(args)
    peak = memory.peak_mib
    need = max(HEADROOM * peak, peak + (math.inf if cache is None else cache))
    killed = limit is not None and limit < peak
    over = " Above its limit the kernel OOM-kills the container: here, during this very load." if killed else ""
    if cache is None:
        bound = "-1, no bound"
    else:
        bound = f"{cache} MiB" + (", the default" if cache == PROMPT_CACHE_DEFAULT_MIB else "")
    return LabCheck(
        f"memory limit leaves {HEADROOM:g} x the peak and room for the prompt cache",
        limit is not None and limit >= need,
        f"limit {_mib(limit)}; the measured peak is {peak:.0f} MiB.{over} llama-server also keeps finished prompts' "
        f"KV state in RAM, growing with traffic up to --cache-ram ({bound}), on top of the peak. Bound it with "
        f"--cache-ram (0 turns it off) and set the limit to at least the larger of {HEADROOM:g} x the peak and the "
        "peak plus --cache-ram.",
    )


def _cpu_check(container: dict[str, Any], options: LlamaServerOptions) -> LabCheck:
    resources = container.get("resources")
    threads = options.threads
    request, limit = quantity.resource(resources, "requests", "cpu"), quantity.resource(resources, "limits", "cpu")
    name = "-t matches the CPU the pod requests, under any CPU limit"
    if threads is None or threads < 1:
        return LabCheck(
            name,
            False,
            f"-t is {threads or 'not set'}: llama.cpp then starts a thread per core of the node, not of the pod "
            f"({os.cpu_count()} here). Set -t to the CPU the pod requests.",
        )
    if limit is not None and limit < threads:
        hint = (
            f"-t {threads} under a CPU limit of {limit:g}: the kernel lets the container run {limit:g} CPUs' worth "
            "in each 100 ms period and then throttles all its threads until the next one, and llama.cpp's threads "
            "wait for each other at every layer, so every token waits. Set -t to the CPU you request and drop the "
            "CPU limit (the kit's manifest sets none) or keep it at least -t."
        )
    else:
        hint = (
            f"-t {threads} but the pod requests {'no' if request is None else f'{request:g}'} CPU: on a busy node it "
            f"is guaranteed only that, and {threads} busy threads share it. Request {threads} CPUs (or lower -t)."
        )
    return LabCheck(name, request is not None and request >= threads and (limit is None or limit >= threads), hint)


def _readiness_check(container: dict[str, Any], port: int | None) -> LabCheck:
    probe = docs.mapping(container.get("readinessProbe"))
    path, probed = docs.get(probe, "httpGet.path"), k8s_probes.probe_port(probe, container)
    return LabCheck(
        "readiness probe is GET /health on llama-server's port",
        path == "/health" and probed is not None and probed == port,
        f"the readiness probe is {yaml.safe_dump(probe, default_flow_style=True).strip()}, llama-server listens on "
        f"{port}. It opens its port before it loads the model (so a TCP probe passes early) and answers /health 503 "
        "while loading and 200 once it can serve: probe httpGet /health on that port.",
    )


def check_deployment(text: str, run: ServerRun | None) -> list[LabCheck]:
    """Lab 03: does this Deployment serve the service without being OOMKilled or throttled, as measured?"""
    try:
        deployment = deployment_of(text)
        container = container_of(deployment)
        args = container_args(container)
        options = server_options(args)
    except ServelabError as err:
        return [LabCheck("the manifest gives llama-server flags this lab can run", False, str(err))]
    schema = _schema_check(deployment)
    if run is None or run.args != args:
        return [
            schema,
            LabCheck(
                "these flags were measured",
                False,
                "run the cell above with this manifest: it measures llama-server with the container's flags.",
            ),
        ]
    static = [_cpu_check(container, options), _readiness_check(container, server_port(args))]
    if run.memory is None or not run.memory.samples:  # never loaded: a measured check would compare with nothing
        return [schema, _served_check(run), *static]
    return [
        schema,
        _served_check(run),
        _slots_check(run),
        _context_check(run, options),
        _request_check(container, run.memory, options),
        _limit_check(container, run.memory, args),
        *static,
    ]
