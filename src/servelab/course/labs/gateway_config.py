"""Lab 08: a gateway that leaks into its audit log and lets one key starve another.

The colleague's config puts two tenants in front of one llama-server replica: a support chat, where a
person waits for each answer, and a nightly batch job that summarises documents as fast as it can. It
logs every prompt (people paste card numbers, passwords and health details into a chat), gives the batch
key limits so large that its flood fills every slot of the engine and then its queue, and sets no bound
on the requests sent to the replica, so they wait inside the engine, out of reach of the gateway's fair
queueing.

The check runs the learner's config for real (:func:`run_trial`): it starts the gateway on the lab's
replica, times a few chat requests alone, then floods with the batch key while the chat key sends a few
more, and reads the audit file the gateway wrote. :func:`check_gateway` grades that record: every chat
request answered, their latency under the flood within a bound set by the unloaded measurement of the
same run, the batch key (not the chat key) refused with 429 and ``Retry-After``, the audit log complete
and free of prompts and keys, and the replica's outstanding requests bounded.

The batch job is a well-behaved client: after a 429 it waits ``Retry-After`` seconds, as the OpenAI SDK
does. The kit's load generator is not used for it: it sends the next request at once after a 429 (on two
cores the refused requests would take CPU from the engine), and it sends ``stream_options``, a field the
gateway's allow-list does not forward.
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import yaml

from servelab.bench.workload import length_forcing_body
from servelab.course.exercises.nb08 import error_code, post_completion
from servelab.course.grading import LabCheck
from servelab.engines.launch import Engine, LlamaServerOptions
from servelab.errors import ServelabError
from servelab.gateway import GatewayConfig, hash_key, load_config, read_audit
from servelab.gateway.launch import start_gateway
from servelab.observe.metrics import MetricsRecorder

# The lab's replica: llama-server with this many slots (requests decoded together in one batch), on one
# thread: the other core of a two-core machine is left to the gateway and the clients, whose work would
# otherwise stall the engine's threads at every step and blur what the config does.
SLOTS = 4
REPLICA_OPTIONS = LlamaServerOptions(parallel=SLOTS, threads=1)
# Demo keys for this lab only; the config holds their SHA-256 hashes.
TENANT_KEYS = {"chat": "sk-lab08-chat-5e1d7b", "batch": "sk-lab08-batch-a93f20"}
# What each tenant sends: a chat answer is short, a batch summary longer; both forced to full length.
CHAT_MAX_TOKENS = 6
BATCH_MAX_TOKENS = 32
# What people paste into a support chat: none of it may reach the audit log.
CHAT_PROMPTS = (
    "My card 4111 1111 1111 1111 was charged twice, please refund it. Jane Doe, jane.doe@example.com",
    "Why does psql postgres://admin:Tr0ub4dor@db.internal/prod say access denied?",
    "Write a sick note for Mark Jones, born 1984-03-02, who is being treated for depression.",
)
BATCH_PROMPT = "Summarise this support ticket in two sentences: the customer asks when the order ships."
UNLOADED_REQUESTS = 3  # chat requests timed alone, after one warm-up
FLOOD_WORKERS = 2 * SLOTS  # the batch job's parallel workers
FLOODED_REQUESTS = 4  # chat requests sent one after the other during the flood
FLOOD_LEAD_S = 1.5  # the flood runs this long before the first of them, so that its queue has formed
CHAT_PAUSE_S = 0.25  # between two chat requests (a person reads the answer)
CHAT_GIVE_UP_S = 8.0  # a person waits this long for an answer, then gives up (the client's timeout)
BATCH_TIMEOUT_S = 30.0  # the batch job's client timeout
GAVE_UP = "the client gave up waiting"
# Under the flood a chat request shares the engine's batch with the batch key's admitted requests, and on a
# CPU each step of a bigger batch takes longer: a few times its time alone is fair. Waiting behind the batch
# job's queue is what the bound catches. Measured on two busy cores (the median of the chat requests under
# the flood over the median alone): with one to three batch requests admitted at a time 1.8-5.5×; with the
# batch key holding every slot 11-15×; the colleague's config 24× and more.
LATENCY_FACTOR = 8.0
AUDIT_WAIT_S = 10.0  # the gateway writes a line once a response is over: the time it may take to catch up


@dataclass(frozen=True)
class Reply:
    """One request of the trial as its client saw it."""

    tenant: str  # "chat" or "batch"
    phase: str  # "warm-up", "alone" or "flood"
    status: int | None  # None: no answer (the client's timeout or a connection error)
    latency_s: float
    retry_after: str | None = None
    request_id: str | None = None
    code: str | None = None  # the gateway's error code, e.g. concurrency_limit
    error: str | None = None  # why there was no answer
    engine_s: float | None = None  # the engine's own time on it: prompt plus generation (its answer's timings)

    @property
    def wait_s(self) -> float:
        """The part of the latency in which nothing worked on the request: queued in the gateway or the
        engine, and the HTTP hops. The whole latency when the engine never answered."""
        return self.latency_s - (self.engine_s or 0.0)


@dataclass
class Trial:
    """What one run of a config showed: the replies, the engine's own queue, the audit file."""

    replies: list[Reply]
    audit_lines: list[dict[str, Any]]
    audit_text: str
    engine_deferred_max: float | None  # llama-server's requests_deferred: requests waiting inside the engine
    key_ids: dict[str, str] = field(default_factory=dict)  # tenant -> the key id the config gives it
    error: str | None = None  # the gateway did not start: why

    def of(self, tenant: str, phase: str | None = None) -> list[Reply]:
        return [r for r in self.replies if r.tenant == tenant and (phase is None or r.phase == phase)]

    def table(self) -> pd.DataFrame:
        """Requests by tenant, phase and status, with their median latency: what the run looked like."""
        frame = pd.DataFrame([asdict(r) for r in self.replies], columns=list(Reply.__dataclass_fields__))
        frame["status"] = ["no answer" if r.status is None else str(r.status) for r in self.replies]
        return (
            frame.groupby(["tenant", "phase", "status"], sort=False)
            .agg(requests=("latency_s", "size"), median_latency_s=("latency_s", "median"))
            .round(3)
            .reset_index()
        )


def _missing_tenants(config: GatewayConfig) -> list[str]:
    hashes = {k.sha256 for k in config.all_keys()}
    return [tenant for tenant, raw in TENANT_KEYS.items() if hash_key(raw) not in hashes]


def load_learner_config(text: str, engine: Engine, workdir: Path) -> GatewayConfig | str:
    """The learner's YAML with the lab's replica and an audit file in ``workdir`` filled in, checked by
    the gateway's own validator (:func:`servelab.gateway.load_config`); or why it cannot run, as a sentence."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return f"The config is not valid YAML: {err}"
    if not isinstance(data, dict):
        return f"The config is a {type(data).__name__}, not a mapping of gateway settings."
    workdir.mkdir(parents=True, exist_ok=True)
    data = {
        **data,
        "replicas": [{"name": "llama-server", "url": engine.url, "health_path": "/health"}],
        "audit_path": str(workdir / "audit.jsonl"),
    }
    written = workdir / "config.yaml"
    written.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        config = load_config(written)
    except ServelabError as err:
        return str(err)
    missing = _missing_tenants(config)
    if missing:
        return (
            f"The config has no key entry for the {' and '.join(missing)} tenant's key: keep each entry's "
            "sha256 (the hash of that tenant's key), or the gateway answers that tenant with a 401."
        )
    return config


def _send(url: str, tenant: str, phase: str, body: dict[str, Any]) -> Reply:
    began = time.perf_counter()
    try:
        response = post_completion(
            url, TENANT_KEYS[tenant], body, CHAT_GIVE_UP_S if tenant == "chat" else BATCH_TIMEOUT_S
        )
    except httpx.TimeoutException:
        return Reply(tenant, phase, None, time.perf_counter() - began, error=GAVE_UP)
    except httpx.HTTPError as err:
        return Reply(tenant, phase, None, time.perf_counter() - began, error=f"{type(err).__name__}: {err}")
    latency = time.perf_counter() - began
    ok = response.status_code == 200
    return Reply(
        tenant,
        phase,
        response.status_code,
        latency,
        response.headers.get("retry-after"),
        response.headers.get("x-request-id"),
        None if ok else error_code(response),
        engine_s=_engine_seconds(response) if ok else None,
    )


def _engine_seconds(response: httpx.Response) -> float | None:
    """llama-server's own account of a request (``timings`` in every answer): milliseconds processing its
    prompt and generating its tokens, from the moment a slot took it; the time it was queued is not in it."""
    try:
        timings = response.json()["timings"]
        return (float(timings["prompt_ms"]) + float(timings["predicted_ms"])) / 1000
    except (ValueError, KeyError, TypeError):
        return None


def _body(engine: Engine, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": engine.served_model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        **length_forcing_body(engine.kind),
    }


def _numbered(n: int, prompt: str) -> str:
    """``prompt`` behind a number of its own: no request then finds its start in llama-server's prompt cache,
    so that every chat request pays its prefill, alone and under the flood alike."""
    return f"#{n}: {prompt}"


def _chat(url: str, engine: Engine, phase: str, n: int) -> Reply:
    prompt = _numbered(n, CHAT_PROMPTS[n % len(CHAT_PROMPTS)])
    return _send(url, "chat", phase, _body(engine, prompt, CHAT_MAX_TOKENS))


def _flood(url: str, engine: Engine, chat_numbers: Iterator[int]) -> list[Reply]:
    """The batch job's workers send until the chat requests under the flood are done; each waits
    ``Retry-After`` seconds after a 429. Returns every reply of both tenants."""
    stop = threading.Event()
    batch: list[Reply] = []
    tickets = itertools.count()  # next() on a count is atomic: the workers can share it

    def worker() -> None:
        while not stop.is_set():
            body = _body(engine, _numbered(next(tickets), BATCH_PROMPT), BATCH_MAX_TOKENS)
            reply = _send(url, "batch", "flood", body)
            batch.append(reply)  # list.append is atomic: the workers can share the list
            after = reply.retry_after or ""
            if reply.status == 429:
                stop.wait(float(after) if after.isdigit() else 1.0)

    def chat() -> list[Reply]:
        stop.wait(FLOOD_LEAD_S)
        replies = []
        for n in itertools.islice(chat_numbers, FLOODED_REQUESTS):
            replies.append(_chat(url, engine, "flood", n))
            time.sleep(CHAT_PAUSE_S)
        return replies

    with ThreadPoolExecutor(FLOOD_WORKERS + 1, thread_name_prefix="lab08-flood") as pool:
        workers = [pool.submit(worker) for _ in range(FLOOD_WORKERS)]
        try:
            flooded = pool.submit(chat).result()
        finally:
            stop.set()
            for w in workers:
                w.result()
    return flooded + batch


def _wait_for_audit(path: Path, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + AUDIT_WAIT_S
    lines = read_audit(path)
    while len(lines) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        lines = read_audit(path)
    return lines


def run_trial(config: GatewayConfig, engine: Engine) -> Trial:
    """Start a gateway with ``config`` in front of ``engine``, time chat requests alone and under the
    batch key's flood, and read the audit file; the gateway is stopped however the run ends."""
    key_ids = {
        tenant: next((k.id for k in config.all_keys() if k.sha256 == hash_key(raw)), tenant)
        for tenant, raw in TENANT_KEYS.items()
    }
    audit_path = Path(config.audit_path)
    audit_path.unlink(missing_ok=True)
    try:
        gateway = start_gateway(config, ready_timeout=60)
    except ServelabError as err:
        said = [line for line in err.problem.splitlines() if line.strip()]
        return Trial(
            [], [], "", None, key_ids, error=said[0] + (f" Its log ends: {said[-1].strip()}" if len(said) > 1 else "")
        )
    with gateway:
        url = gateway.base_url
        print(f"Gateway ready in {gateway.ready_seconds:.1f} s; chat requests alone...", flush=True)
        numbers = itertools.count()
        replies = [_chat(url, engine, "warm-up", next(numbers))]  # pays the gateway's and engine's one-time costs
        replies += [_chat(url, engine, "alone", n) for n in itertools.islice(numbers, UNLOADED_REQUESTS)]
        print(
            f"The batch job floods with {FLOOD_WORKERS} workers; the chat key sends {FLOODED_REQUESTS}...", flush=True
        )
        with MetricsRecorder(engine.url + "/metrics", ["llamacpp:requests_deferred"], interval_s=0.25) as queue:
            replies += _flood(url, engine, numbers)
        lines = _wait_for_audit(audit_path, len(replies))
        text = audit_path.read_text() if audit_path.is_file() else ""
    deferred = [row["llamacpp:requests_deferred"] for row in queue.rows]
    return Trial(replies, lines, text, max(deferred) if deferred else None, key_ids)


# --- grading ---------------------------------------------------------------------------------------------


def _statuses(replies: Iterable[Reply]) -> str:
    counts = Counter(f"{r.status} {r.code}" if r.code else str(r.status or "no answer") for r in replies)
    return ", ".join(f"{n}× {what}" for what, n in counts.most_common()) or "none sent"


def _seconds(replies: Iterable[Reply]) -> str:
    return ", ".join(f"{r.latency_s:.2f} s" + ("" if r.status == 200 else " without an answer") for r in replies)


def _answered(trial: Trial) -> LabCheck:
    chat = trial.of("chat")
    gave_up = [r for r in chat if r.error == GAVE_UP]
    lost = [r for r in chat if r.status is None and r.error != GAVE_UP]
    refused = [r for r in chat if r.status is not None and r.status != 200]
    hints = [f"The chat key's {len(chat)} requests got: {_statuses(chat)}."]
    if gave_up:
        hints.append(
            f"{len(gave_up)} got no answer within {CHAT_GIVE_UP_S:g} s, and the person gave up: they waited behind "
            "the batch job's requests (the next check says how long)."
        )
    if lost:
        hints.append(f"{len(lost)} could not reach the gateway: {lost[0].error}.")
    if refused:
        reasons = "; ".join(sorted({f"{r.status} {r.code}" for r in refused}))
        hints.append(
            f"The gateway refused the chat key itself ({reasons}): its own limits and the timeouts must let a "
            "person's questions through."
        )
    return LabCheck(
        "every chat request is answered", bool(chat) and not gave_up and not lost and not refused, " ".join(hints)
    )


def _latency(trial: Trial) -> LabCheck:
    name = f"chat latency under the flood stays within {LATENCY_FACTOR:g}× its latency alone"
    alone = [r.latency_s for r in trial.of("chat", "alone") if r.status == 200]
    flooded = trial.of("chat", "flood")
    if not alone or not flooded:
        return LabCheck(
            name, False, "No chat request was answered alone and sent under the flood: see the check above."
        )
    bound = LATENCY_FACTOR * statistics.median(alone)
    # A request that got no answer is not within any bound, however long the person waited before leaving.
    under = statistics.median(r.latency_s if r.status == 200 else math.inf for r in flooded)
    unanswered = sum(r.status != 200 for r in flooded)
    seen = f"{unanswered} of {len(flooded)} got no answer" if math.isinf(under) else f"a median {under:.2f} s"
    deferred = trial.engine_deferred_max
    inside = (
        f"; llama-server held up to {deferred:.0f} in its own queue (llamacpp:requests_deferred)" if deferred else ""
    )
    batch_ok = sum(r.status == 200 for r in trial.of("batch"))
    return LabCheck(
        name,
        under <= bound,
        f"Alone a chat answer took a median {statistics.median(alone):.2f} s; under the flood {seen} (each: "
        f"{_seconds(flooded)}), over the bound of {bound:.2f} s. Of that, they waited "
        f"{', '.join(f'{r.wait_s:.2f}' for r in flooded)} s before the engine started on them (their latency minus "
        "the engine's own prompt and generation time, from the timings in each answer): queued behind the batch "
        f"job's requests, of which {batch_ok} were answered meanwhile{inside}. Cap the batch key so that one of the "
        f"replica's {SLOTS} slots always stays free for the others (max_concurrent below the slots).",
    )


def _throttled(trial: Trial, config: GatewayConfig) -> LabCheck:
    batch, chat = trial.of("batch"), trial.of("chat")
    refused = [r for r in batch if r.status == 429]
    without = [r for r in refused if not r.retry_after]
    chat_refused = [r for r in chat if r.status == 429]
    keys = {k.id: k for k in config.all_keys()}
    hints = []
    if not refused:
        key = keys[trial.key_ids["batch"]]
        hints.append(
            f"The batch key's {len(batch)} requests got: {_statuses(batch)}. Its limits (requests_per_minute="
            f"{key.requests_per_minute}, tokens_per_minute={key.tokens_per_minute}, max_concurrent="
            f"{key.max_concurrent}) are never reached by {FLOOD_WORKERS} workers, so the gateway admits all of "
            "its flood. Lower them to what one batch job should have."
        )
    if without:
        hints.append(f"{len(without)} of the batch key's 429 answers carried no Retry-After header.")
    if chat_refused:
        hints.append(
            f"The chat key was refused {len(chat_refused)} times ({_statuses(chat_refused)}): the limits meant for "
            "the batch job hit the person instead."
        )
    return LabCheck(
        "the batch key, not the chat key, is refused with 429 and Retry-After",
        bool(refused) and not without and not chat_refused,
        " ".join(hints),
    )


def _audit(trial: Trial) -> LabCheck:
    lines, text = trial.audit_lines, trial.audit_text
    ids = {line.get("request_id") for line in lines}
    missing = [r for r in trial.replies if r.request_id is not None and r.request_id not in ids]
    per_key = Counter(line.get("key_id") for line in lines)
    short = {
        tenant: len(trial.of(tenant)) - per_key.get(key_id, 0)
        for tenant, key_id in trial.key_ids.items()
        if per_key.get(key_id, 0) < len(trial.of(tenant))
    }
    with_prompt = [line for line in lines if "prompt" in line]
    pasted = [p for p in (*CHAT_PROMPTS, BATCH_PROMPT) if p in text]
    keys = [tenant for tenant, raw in TENANT_KEYS.items() if raw in text]
    hints = []
    if missing or short:
        hints.append(
            f"{len(trial.replies)} requests were sent and the audit log has {len(lines)} lines; "
            + (f"{len(missing)} answered requests have no line of their own; " if missing else "")
            + "".join(f"the {t} key has {n} lines fewer than requests; " for t, n in short.items())
            + "every request must leave exactly one line."
        )
    if with_prompt or pasted:
        example = pasted[0] if pasted else with_prompt[0]["prompt"]
        hints.append(
            f"{len(with_prompt)} of {len(lines)} lines carry a 'prompt' field, and the file holds {len(pasted)} of "
            f"the lab's {len(CHAT_PROMPTS) + 1} prompts word for word, e.g. {example[:90]!r}. Whatever users paste "
            "(card numbers, passwords, health details) then sits in every copy of the log: audit_prompts must stay off."
        )
    if keys:
        hints.append(f"The raw key of the {' and '.join(keys)} tenant appears in the file: log key ids only.")
    return LabCheck(
        "the audit log has a line for every request, and no prompt or key",
        bool(lines) and not hints,
        " ".join(hints) or "The audit log is empty: the gateway wrote no line.",
    )


def _bounded(trial: Trial | None, config: GatewayConfig) -> LabCheck:
    cap = config.max_outstanding_per_replica
    deferred = trial.engine_deferred_max if trial is not None else None
    seen = (
        f" In this run llama-server held up to {deferred:.0f} requests in its own queue (llamacpp:requests_deferred)."
        if deferred
        else ""
    )
    if cap is None:
        hint = (
            "max_outstanding_per_replica is not set: the gateway sends every admitted request to the engine at once. "
            f"Beyond its {SLOTS} slots llama-server queues them first come, first served, where the gateway's fair "
            "queueing between keys and its load shedding cannot reach them, and they are lost if the replica dies."
            f"{seen} Set it to the replica's slots ({SLOTS}) or fewer."
        )
    else:
        hint = (
            f"max_outstanding_per_replica is {cap}, more than the replica's {SLOTS} slots: the requests beyond them "
            f"queue inside the engine, out of the gateway's reach.{seen} Set it to {SLOTS} or fewer."
        )
    return LabCheck(
        f"the requests sent to the replica are bounded by its {SLOTS} slots",
        cap is not None and cap <= SLOTS,
        hint,
    )


def check_gateway(config: GatewayConfig | str, trial: Trial | None) -> list[LabCheck]:
    """Lab 08: grade the learner's config (or why it could not run) by what its trial showed."""
    if isinstance(config, str):
        return [LabCheck("the config is a valid gateway config for both tenants", False, config)]
    if trial is None:
        return [
            LabCheck("the config was run", False, "Run the cell above that calls gateway_config.run_trial(...)."),
            _bounded(None, config),
        ]
    if trial.error is not None:
        return [
            LabCheck("the gateway starts with the config", False, f"The gateway did not start: {trial.error}"),
            _bounded(trial, config),
        ]
    return [_answered(trial), _latency(trial), _throttled(trial, config), _audit(trial), _bounded(trial, config)]
