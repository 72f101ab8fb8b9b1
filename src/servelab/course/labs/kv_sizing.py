"""Lab 04: a vLLM engine sized for a service, so that nobody is preempted and no cache sits idle.

The service has :data:`USERS` users at once, each sending a prompt of :data:`PROMPT_TOKENS` tokens and
reading an answer of :data:`OUTPUT_TOKENS`. The learner sizes the engine with three numbers that only
work together: the KV cache in blocks (``--num-gpu-blocks-override``, the way notebook 04 shrinks the CPU
cache, whose own budget is whole GiB), ``--max-num-seqs`` and ``--max-model-len``. The check starts vLLM
with them (:func:`run_service`), sends the service's load with the kit's harness, and grades what vLLM's
own ``/metrics`` and the harness's records saw: preemptions, the running batch, whole answers.

Two checks are arithmetic on the settings, where one run cannot show the answer. An engine that admits
``max_num_seqs`` sequences of up to ``max_model_len`` tokens is only safe from preemption when its cache
holds all of them at full length: today's load may fit while a day of longer answers would not. And a
cache more than :data:`WASTE_FACTOR` times what the service's sequences can fill is memory no request
uses. Both count vLLM's blocks as vLLM does: its block pool keeps one block back for itself (the "null
block", ``vllm/v1/core/block_pool.py``), and its start-up check plans against the rest
(``get_kv_cache_configs`` in ``vllm/v1/core/kv_cache_utils.py``), so the sequences share
``kv_blocks - 1`` blocks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from servelab.bench.loadgen import run_benchmark
from servelab.bench.stats import BenchResult
from servelab.bench.workload import fixed_workload
from servelab.course.grading import LabCheck
from servelab.engines import model as models
from servelab.engines.device import default_dtype, resolve_device
from servelab.engines.failure import start_failure
from servelab.engines.launch import VLLMOptions, start_vllm
from servelab.errors import ServelabError
from servelab.memory import kvcache
from servelab.observe import metrics

USERS = 4  # the service's users, all asking at once
PROMPT_TOKENS = 240  # each prompt; just under two CPU blocks of 128, so each answer opens a third block
OUTPUT_TOKENS = 32  # each answer (forced to this length)
WASTE_FACTOR = 2  # a cache over twice what the service's sequences can fill holds memory no request uses
NULL_BLOCKS = 1  # the block vLLM's block pool keeps back for itself
READY_TIMEOUT_S = 300.0  # a start that takes longer is stopped and reported (about a minute on 2 cores)
LOAD_TIMEOUT_S = 120.0  # per request: a preempted sequence is recomputed, and still answers well within it
# vLLM counts a preemption when the evicted request's next output is processed, and updates /metrics just
# after handing outputs to the clients: a moment's wait lets the last counts land before they are read.
SETTLE_S = 1.0
SETTINGS = ("kv_blocks", "max_num_seqs", "max_model_len")
RUNNING, WAITING = "vllm:num_requests_running", "vllm:num_requests_waiting"
USAGE, PREEMPTIONS = "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total"
CACHE_INFO = "vllm:cache_config_info"  # an info metric: the cache's figures are in its labels


@dataclass(frozen=True)
class Service:
    """The load the engine is sized for, and the KV cache's unit on the machine that serves it."""

    device: str
    dtype: str
    bytes_per_token: float  # the kit's formula (kvcache.ModelShape) on the model's config.json, at ``dtype``
    block_size: int
    users: int = USERS
    prompt_tokens: int = PROMPT_TOKENS
    output_tokens: int = OUTPUT_TOKENS
    budget_gib: float = VLLMOptions.kv_cache_gib  # the memory the lab lets the cache take (VLLM_CPU_KVCACHE_SPACE)

    @property
    def sequence_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def blocks(self, tokens: int, sequences: int = 1) -> int:
        """Blocks that many sequences of ``tokens`` hold: each its own, the last one partly empty."""
        return sequences * math.ceil(tokens / self.block_size)

    @property
    def blocks_needed(self) -> int:
        """Blocks the service's sequences fill when all its users decode at once."""
        return self.blocks(self.sequence_tokens, self.users)

    @property
    def max_blocks(self) -> int:
        """The largest cache the lab runs: what its memory budget holds."""
        return kvcache.cache_tokens(self.budget_gib * 2**30, self.bytes_per_token, self.block_size) // self.block_size

    def mib(self, blocks: int) -> float:
        return blocks * self.block_size * self.bytes_per_token / 2**20


def the_service(device: str = "auto") -> Service:
    """The lab's service on this machine's vLLM: block size and dtype of the device, KV bytes per token
    from the prepared model's ``config.json``."""
    dev = resolve_device(device)
    dtype = default_dtype(dev)
    shape = kvcache.shape_from_hf_config(models.require_hf_model())
    kv_dtype = "bfloat16" if dtype == "auto" else dtype  # CUDA's "auto" is the checkpoint's 16-bit type
    return Service(dev, dtype, shape.bytes_per_token(kv_dtype), kvcache.VLLM_BLOCK_SIZE[dev])


def validate(settings: dict[str, Any], service: Service) -> None:
    """Raise a :class:`ServelabError` that says what to change unless ``settings`` can be run."""
    unknown, missing = sorted(set(settings) - set(SETTINGS)), sorted(set(SETTINGS) - set(settings))
    if unknown or missing:
        raise ServelabError(
            f"the settings have unknown keys {unknown} or lack {missing}", f"keep exactly these keys: {list(SETTINGS)}"
        )
    for key in SETTINGS:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ServelabError(f"{key}={value!r} is not a whole number of at least 1", f"set {key} to an int")
    if settings["kv_blocks"] > service.max_blocks:
        raise ServelabError(
            f"kv_blocks={settings['kv_blocks']} would take {service.mib(settings['kv_blocks']):.0f} MiB, more than "
            f"the lab's {service.budget_gib:g} GiB for the cache ({service.max_blocks} blocks)",
            "size the cache from the service's sequences",
        )


@dataclass
class ServiceRun:
    """What one start of vLLM with the learner's settings showed; ``None`` where it never got that far."""

    settings: dict[str, int]
    start_error: str | None = None  # the engine's own error line when it refused to start
    load_error: str | None = None  # the harness could not finish the load (the engine died under it)
    result: BenchResult | None = None
    timeline: pd.DataFrame = field(default_factory=pd.DataFrame)  # /metrics scraped during the load
    preemptions: float | None = None  # vllm:num_preemptions_total, after the load minus before
    reported_blocks: int | None = None  # num_gpu_blocks in vLLM's own vllm:cache_config_info

    def peak(self, name: str) -> float:
        """The highest value of ``name`` scraped during the load (0 when nothing was scraped)."""
        return float(self.timeline[name].max()) if name in self.timeline and len(self.timeline) else 0.0


def engine_options(settings: dict[str, int], service: Service) -> VLLMOptions:
    """The learner's three numbers as the kit's vLLM options (the cache size is vLLM's block-count override)."""
    return VLLMOptions(
        dtype=service.dtype,
        max_model_len=settings["max_model_len"],
        max_num_seqs=settings["max_num_seqs"],
        kv_cache_gib=service.budget_gib,
        extra_args=["--num-gpu-blocks-override", str(settings["kv_blocks"])],
    )


def _reported_blocks(text: str) -> int | None:
    info = next((labels for name, labels, _ in metrics.samples(text) if name == CACHE_INFO), {})
    blocks = info.get("num_gpu_blocks", "")
    return int(blocks) if blocks.isdigit() else None


def run_service(settings: dict[str, Any], service: Service, model: str = models.DEFAULT_MODEL) -> ServiceRun | None:
    """Start vLLM with ``settings``, send the service's load, read vLLM's /metrics, and stop the engine.

    Settings that cannot run print what to change and give None; an engine that refuses to start gives a
    run whose ``start_error`` is the engine's own error line. The engine is stopped in every case.
    """
    try:
        validate(settings, service)
    except ServelabError as err:
        print(f"Not run: {err}")
        return None
    run = ServiceRun(dict(settings))
    print(f"Starting vLLM with {settings} (about a minute on 2 cores) ...")
    try:
        engine = start_vllm(
            model,
            device=service.device,
            options=engine_options(settings, service),
            ready_timeout=READY_TIMEOUT_S,
        )
    except ServelabError as err:
        run.start_error = start_failure(err, "vllm")
        print(f"vLLM did not start: {run.start_error}")
        return run
    with engine:
        url = engine.url + "/metrics"
        print(
            f"Ready in {engine.ready_seconds:.0f} s. The service's load: {service.users} users at once, "
            f"{service.prompt_tokens}-token prompts, {service.output_tokens}-token answers ..."
        )
        workload = fixed_workload(service.prompt_tokens, service.output_tokens, engine_kind="vllm")
        try:
            before = metrics.totals(url, [PREEMPTIONS])[PREEMPTIONS]
            with metrics.MetricsRecorder(url, [RUNNING, WAITING, USAGE, PREEMPTIONS], interval_s=0.5) as recorder:
                run.result = run_benchmark(
                    engine.base_url,
                    engine.served_model,
                    workload,
                    concurrency=service.users,
                    num_requests=service.users,
                    warmup=0,
                    timeout_s=LOAD_TIMEOUT_S,
                    progress=False,
                )
                time.sleep(SETTLE_S)
            run.timeline = recorder.frame()
            run.preemptions = metrics.totals(url, [PREEMPTIONS])[PREEMPTIONS] - before
            run.reported_blocks = _reported_blocks(metrics.scrape(url))
        except ServelabError as err:
            run.load_error = str(err).splitlines()[0]
            print(f"The load did not finish: {run.load_error}")
            return run
    print(f"Done in {run.result.duration_s:.0f} s; vLLM stopped.")
    return run


def _usable(settings: dict[str, int]) -> int:
    return settings["kv_blocks"] - NULL_BLOCKS


def _settings_checks(settings: dict[str, int], service: Service) -> list[LabCheck]:
    """The two checks one run cannot show: the worst case the engine admits, and memory left idle."""
    usable, need = _usable(settings), service.blocks_needed
    seqs, longest = settings["max_num_seqs"], settings["max_model_len"]
    worst = service.blocks(longest, seqs)
    return [
        LabCheck(
            "no load the engine admits can be preempted: max_num_seqs sequences of max_model_len fit",
            worst <= usable,
            f"max_num_seqs={seqs} sequences of up to max_model_len={longest} tokens can fill {seqs} x "
            f"{service.blocks(longest)} = {worst} blocks, and the cache has {usable} for sequences: today's load may "
            "fit, but more users or longer answers than today's would be preempted. Cap max_num_seqs at the "
            f"service's {service.users} users and max_model_len near its {service.sequence_tokens}-token sequences, "
            f"then give the cache their blocks, plus the {NULL_BLOCKS} vLLM keeps back.",
        ),
        LabCheck(
            f"no more than {WASTE_FACTOR}x the blocks the service's sequences can fill",
            usable <= WASTE_FACTOR * need,
            f"{usable} blocks for sequences ({service.mib(usable):.0f} MiB of {service.dtype} KV) against the {need} "
            f"({service.mib(need):.0f} MiB) that {service.users} sequences of {service.sequence_tokens} tokens fill: "
            "the rest is memory no request of this service uses. Lower kv_blocks; if the check above then fails, "
            "lower max_model_len or max_num_seqs instead of buying blocks for sequences the service never sends.",
        ),
    ]


def check_sizing(settings: dict[str, Any], run: ServiceRun | None, service: Service) -> list[LabCheck]:
    """Lab 04: does the engine these settings start serve the service without preempting, and without waste?"""
    try:
        validate(settings, service)
    except ServelabError as err:
        return [LabCheck("the settings are three whole numbers the lab can run", False, str(err))]
    if run is None or run.settings != settings:
        return [
            LabCheck(
                "the engine ran with these settings",
                False,
                "run the cell above that calls kv_sizing.run_service(...) after changing the settings",
            )
        ]
    usable, per_sequence = _usable(settings), service.blocks(settings["max_model_len"])
    name_start = "vLLM starts with these settings"
    name_answers = f"every user gets a whole answer ({service.output_tokens} tokens)"
    name_preempt = "nobody is preempted (vllm:num_preemptions_total stays at 0)"
    name_batch = f"all {service.users} users are decoded at once (vllm:num_requests_running)"
    if run.start_error is not None or run.result is None:
        why = run.start_error or run.load_error or "no load was run"
        start_hint = f"vLLM said: {why}"
        if usable < per_sequence:
            start_hint += (
                f". One sequence of max_model_len={settings['max_model_len']} tokens needs {per_sequence} blocks of "
                f"{service.block_size} tokens, and vLLM keeps {NULL_BLOCKS} of the kv_blocks={settings['kv_blocks']} "
                "back: give it more blocks or a shorter max_model_len."
            )
        not_run = "Not measured: the engine served no load (see the first row)."
        return [
            LabCheck(name_start, run.start_error is None, start_hint),
            LabCheck(name_answers, False, not_run if run.start_error else f"The load did not finish: {why}"),
            LabCheck(name_preempt, False, not_run),
            LabCheck(name_batch, False, not_run),
            *_settings_checks(settings, service),
        ]
    records = run.result.records
    ok = [r for r in records if r.ok and r.output_tokens == service.output_tokens]
    lengths = sorted({r.output_tokens for r in records if r.ok})
    answers_hint = (
        f"{len(records) - len(ok)} of {len(records)} requests had no whole answer (answer lengths {lengths}; first "
        f"error: {run.result.summary['first_error']}). vLLM cuts an answer where prompt + answer reach max_model_len: "
        f"the service's sequences are {service.prompt_tokens} + {service.output_tokens} = {service.sequence_tokens} "
        f"tokens, and max_model_len={settings['max_model_len']}."
    )
    seen = (
        f"KV cache usage peaked at {run.peak(USAGE):.0%} (vllm:kv_cache_usage_perc), up to {run.peak(WAITING):.0f} "
        f"request(s) waited"
    )
    preempt_hint = (
        f"vLLM preempted {run.preemptions:g} time(s) under the service's load; {seen}. The {service.users} sequences "
        f"of {service.sequence_tokens} tokens need {service.users} x {service.blocks(service.sequence_tokens)} = "
        f"{service.blocks_needed} blocks of {service.block_size} tokens (each sequence's last block is its own, partly "
        f"empty); the engine had {run.reported_blocks} (num_gpu_blocks in {CACHE_INFO}), of which vLLM keeps "
        f"{NULL_BLOCKS} back, so {usable} for sequences. The prompts fit, then the answers outgrow the cache."
    )
    batch_hint = (
        f"At most {run.peak(RUNNING):.0f} of the {service.users} users were decoded at once and {seen}: "
        f"max_num_seqs={settings['max_num_seqs']} and a cache of {usable} blocks for sequences must let every "
        f"prompt in ({service.users} x {service.blocks(service.prompt_tokens)} blocks), or users queue."
    )
    return [
        LabCheck(name_start, True, ""),
        LabCheck(name_answers, len(ok) == len(records) == service.users, answers_hint),
        LabCheck(name_preempt, run.preemptions == 0, preempt_hint),
        LabCheck(name_batch, run.peak(RUNNING) >= service.users, batch_hint),
        *_settings_checks(settings, service),
    ]
