"""The engines the kit really runs, behind one API.

``start_vllm``, ``start_llamacpp`` (llama-cpp-python's Python server) and ``start_llama_server``
(llama.cpp's native server, the program manifests/llamacpp deploys) each build the server's command
line from a few documented options, start it as a :class:`~servelab.procs.ManagedServer` on a free
loopback port, wait until it answers, and return an :class:`Engine`. Use it as a context manager, or
call ``stop()`` in the notebook's last cell; either way the ``atexit`` hook in :mod:`servelab.procs` is
the backstop.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import httpx

from servelab import binaries
from servelab.engines import model as models
from servelab.engines.device import default_dtype, resolve_device
from servelab.engines.kinds import ENGINE_KINDS, EngineKind
from servelab.errors import ServelabError
from servelab.paths import logs_dir
from servelab.procs import ManagedServer, ServerArgs, free_port

if TYPE_CHECKING:
    from openai import OpenAI


@dataclass
class VLLMOptions:
    """The vLLM flags a learner tunes; each maps to one command-line flag or environment variable."""

    dtype: str | None = None  # None: engines.device.default_dtype (auto on CUDA, bf16 on CPUs with native bf16)
    max_model_len: int = 2048
    enforce_eager: bool = True  # skip torch.compile: ready in ~60 s instead of ~200 s on 2 cores
    kv_cache_gib: float = 1.0  # CPU: VLLM_CPU_KVCACHE_SPACE
    gpu_memory_utilization: float = 0.90  # CUDA: share of GPU memory for weights + KV cache
    tensor_parallel_size: int = 1  # CUDA: GPUs one replica is split over
    max_num_seqs: int | None = None
    enable_prefix_caching: bool | None = None
    extra_args: list[str] = field(default_factory=list)


@dataclass
class LlamaCppOptions:
    """The llama.cpp server settings a learner tunes (names as ``llama_cpp.server`` spells them)."""

    n_threads: int | None = None  # default: every core
    n_ctx: int = 2048
    n_batch: int = 512
    use_mmap: bool = True
    use_mlock: bool = False
    # The server's default (True) cancels a running stream when a new request arrives, so under
    # concurrent load most clients would see their stream cut off. We queue them instead.
    interrupt_requests: bool = False
    extra_args: list[str] = field(default_factory=list)


@dataclass
class LlamaServerOptions:
    """The native llama-server's flags a learner tunes; each maps to one flag (tools/server/README.md)."""

    threads: int | None = None  # -t and -tb; default: every core
    n_ctx: int = 2048  # -c: KV-cache tokens for the whole server, not per request
    parallel: int = 4  # -np: slots, the requests decoded together in one batch
    kv_unified: bool = True  # -kvu: the slots share the n_ctx cache, so one request may use all of it
    cont_batching: bool = True  # -cb: a finished slot takes the next request without waiting for the batch
    n_batch: int = 2048  # -b: prompt tokens processed per step
    metrics: bool = True  # --metrics: the Prometheus endpoint, off in llama-server by default
    host: str = "127.0.0.1"  # --host: 0.0.0.0 to serve other machines
    extra_args: list[str] = field(default_factory=list)


class Engine(ManagedServer):
    """A running OpenAI-compatible engine server."""

    def __init__(self, kind: EngineKind, served_model: str, device: str, **kwargs: Unpack[ServerArgs]) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.served_model = served_model
        self.device = device

    @property
    def base_url(self) -> str:
        """The OpenAI API root, e.g. for ``openai.OpenAI(base_url=engine.base_url)``."""
        return self.url + "/v1"

    def openai_client(self, timeout: float = 60.0) -> OpenAI:  # imported lazily: openai takes ~1 s to import
        """An ``openai`` SDK client pointed at this engine (no key is checked locally)."""
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key="not-needed-locally", timeout=timeout, max_retries=0)

    def complete(self, prompt: str, max_tokens: int = 16, timeout: float = 60.0, **params: object) -> dict:
        """One greedy ``/v1/completions`` call; returns the JSON response.

        Raises a :class:`ServelabError` with the log's tail when the engine does not answer, so a
        notebook cell fails with a reason instead of a connection traceback.
        """
        body = {"model": self.served_model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **params}
        try:
            response = httpx.post(self.base_url + "/completions", json=body, timeout=timeout)
            response.raise_for_status()
        except httpx.HTTPError as err:
            from servelab.procs import tail

            raise ServelabError(
                f"{self.kind} did not answer a completion ({err}). Last log lines:\n{tail(self.log_path)}",
                "check that the engine is still running: engine.running",
            ) from None
        return response.json()

    def concurrent_streams(
        self, prompts: list[str], max_tokens: int = 32, stagger_s: float = 0.3, timeout: float = 120.0
    ) -> list[str]:
        """Stream one completion per prompt, each started ``stagger_s`` after the previous one, and return
        how each ended: its ``finish_reason`` ("length"/"stop"), or ``"cut: ..."`` when the server
        dropped it. Shows what llama.cpp's ``interrupt_requests`` does to concurrent users."""
        from concurrent.futures import ThreadPoolExecutor

        client = self.openai_client(timeout=timeout)

        def one(i_prompt: tuple[int, str]) -> str:
            time.sleep(i_prompt[0] * stagger_s)
            finish = None
            try:
                for chunk in client.completions.create(
                    model=self.served_model, prompt=i_prompt[1], stream=True, max_tokens=max_tokens, temperature=0
                ):
                    finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
            except Exception as err:  # noqa: BLE001 - a dropped stream is the outcome being shown
                return f"cut: {type(err).__name__}"
            return finish or "cut: stream ended without a finish_reason"

        with ThreadPoolExecutor(len(prompts)) as pool:
            return list(pool.map(one, enumerate(prompts)))


def _python_module(module: str) -> list[str]:
    # vllm-cpu's `vllm` console script looks up a distribution called "vllm" and fails; `-m` works.
    return [sys.executable, "-m", module]


def vllm_command(model_path: str, served_name: str, port: int, device: str, opts: VLLMOptions) -> list[str]:
    """The exact command line the kit runs for vLLM (shown in notebook 02)."""
    cmd = [
        *_python_module("vllm.entrypoints.openai.api_server"),
        "--model",
        model_path,
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        opts.dtype or default_dtype(device),
        "--max-model-len",
        str(opts.max_model_len),
        "--tensor-parallel-size",
        str(opts.tensor_parallel_size),
    ]
    if device == "cuda":
        cmd += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization)]
    if opts.enforce_eager:
        cmd.append("--enforce-eager")
    if opts.max_num_seqs is not None:
        cmd += ["--max-num-seqs", str(opts.max_num_seqs)]
    if opts.enable_prefix_caching is not None:
        cmd.append("--enable-prefix-caching" if opts.enable_prefix_caching else "--no-enable-prefix-caching")
    return cmd + list(opts.extra_args)


def vllm_env(device: str, opts: VLLMOptions) -> dict[str, str]:
    """Environment for the vLLM process: offline, and on CPU the KV-cache budget in GiB."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if device == "cpu":
        if not float(opts.kv_cache_gib).is_integer() or opts.kv_cache_gib < 1:
            raise ServelabError(
                f"kv_cache_gib={opts.kv_cache_gib} is not a whole number of GiB",
                "vLLM's CPU build reads VLLM_CPU_KVCACHE_SPACE as an integer: use 1, 2, 4, ...",
            )
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{opts.kv_cache_gib:g}"
    return env


def start_vllm(
    model: str = models.DEFAULT_MODEL,
    device: str = "auto",
    options: VLLMOptions | None = None,
    ready_timeout: float = 600.0,
    port: int | None = None,
) -> Engine:
    """Start vLLM (CPU build here, CUDA build on a GPU machine) and wait until ``/health`` is 200."""
    opts = options or VLLMOptions()
    dev = resolve_device(device)
    files = models.resolve(model)
    if files.name == models.DEFAULT_MODEL:
        model_path = str(models.require_hf_model())
    elif files.hf_dir is not None:
        model_path = str(files.hf_dir)
    else:
        model_path = files.name  # a name in the local HF cache; HF_HUB_OFFLINE stops any download
    port = port or free_port()
    engine = Engine(
        kind="vllm",
        served_model=files.served_name,
        device=dev,
        name=f"vLLM ({dev})",
        command=vllm_command(model_path, files.served_name, port, dev, opts),
        port=port,
        log_path=logs_dir() / f"vllm-{port}-{int(time.time())}.log",
        ready_path="/health",
        env=vllm_env(dev, opts),
    )
    return engine.launch(ready_timeout)


def llamacpp_command(gguf: str, served_name: str, port: int, opts: LlamaCppOptions) -> list[str]:
    """The exact command line the kit runs for llama.cpp's Python server (shown in notebook 03)."""
    threads = opts.n_threads or os.cpu_count() or 1
    return [
        *_python_module("llama_cpp.server"),
        "--model",
        gguf,
        "--model_alias",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(opts.n_ctx),
        "--n_batch",
        str(opts.n_batch),
        "--use_mmap",
        str(opts.use_mmap),
        "--use_mlock",
        str(opts.use_mlock),
        "--interrupt_requests",
        str(opts.interrupt_requests),
        *opts.extra_args,
    ]


def start_llamacpp(
    model: str = models.DEFAULT_MODEL,
    options: LlamaCppOptions | None = None,
    ready_timeout: float = 120.0,
    port: int | None = None,
) -> Engine:
    """Start llama.cpp's OpenAI-compatible server on the GGUF and wait until it lists its model."""
    opts = options or LlamaCppOptions()
    files = models.resolve(model)
    if files.gguf is None:
        raise ServelabError(
            f"llama.cpp serves GGUF files; model={model!r} has none.", "use model='smollm2-135m' for llama.cpp"
        )
    port = port or free_port()
    engine = Engine(
        kind="llamacpp",
        served_model=files.served_name,
        device="cpu",
        name="llama.cpp (cpu)",
        command=llamacpp_command(str(files.gguf), files.served_name, port, opts),
        port=port,
        log_path=logs_dir() / f"llamacpp-{port}-{int(time.time())}.log",
        ready_path="/v1/models",
        env={"HF_HUB_OFFLINE": "1"},
    )
    return engine.launch(ready_timeout)


def _gguf(model: str) -> Path:
    """The GGUF file llama.cpp serves: the kit's own for ``DEFAULT_MODEL``, else ``model`` as a path."""
    if model == models.DEFAULT_MODEL:
        return models.gguf_path()
    path = Path(model).expanduser()
    if path.suffix != ".gguf":
        raise ServelabError(
            f"llama.cpp serves GGUF files; model={model!r} is not one.",
            f"use model={models.DEFAULT_MODEL!r} or the path of a .gguf file",
        )
    if not path.is_file():
        raise ServelabError(
            f"The GGUF file {path} does not exist.", f"check the path, or use model={models.DEFAULT_MODEL!r}"
        )
    return path


def llama_server_command(binary: str, gguf: str, served_name: str, port: int, opts: LlamaServerOptions) -> list[str]:
    """The exact command line the kit runs for llama.cpp's native server."""
    threads = str(opts.threads or os.cpu_count() or 1)
    cmd = [binary, "--model", str(gguf), "--alias", served_name, "--host", opts.host, "--port", str(port)]
    cmd += ["--threads", threads, "--threads-batch", threads, "--ctx-size", str(opts.n_ctx)]
    cmd += ["--parallel", str(opts.parallel), "--batch-size", str(opts.n_batch)]
    cmd.append("--kv-unified" if opts.kv_unified else "--no-kv-unified")
    cmd.append("--cont-batching" if opts.cont_batching else "--no-cont-batching")
    cmd.append("--no-webui")  # the kit compiles no web UI; the API is what it serves
    if opts.metrics:
        cmd.append("--metrics")
    return cmd + list(opts.extra_args)


def start_llama_server(
    model: str = models.DEFAULT_MODEL,
    options: LlamaServerOptions | None = None,
    ready_timeout: float = 60.0,
    port: int | None = None,
) -> Engine:
    """Start llama.cpp's native server (``make setup`` compiles it) and wait until ``/health`` is 200.

    ``model`` is the kit's model name or the path of any GGUF file. ``/health`` answers 503 while the
    model loads, so ready means ready to serve, as the manifests' probes read it.
    """
    opts = options or LlamaServerOptions()
    binary = binaries.require("llama-server")
    gguf = _gguf(model)
    served = models.SERVED_NAME if model == models.DEFAULT_MODEL else gguf.stem
    port = port or free_port()
    engine = Engine(
        kind="llama-server",
        served_model=served,
        device="cpu",
        name="llama-server (cpu)",
        command=llama_server_command(binary, str(gguf), served, port, opts),
        port=port,
        log_path=logs_dir() / f"llama-server-{port}-{int(time.time())}.log",
        ready_path="/health",
        host="127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host,
    )
    return engine.launch(ready_timeout)


def start_engine(kind: EngineKind, **kwargs: Any) -> Engine:
    """Start either engine by name, e.g. from the CLI or a loop over engines in a notebook.

    ``kwargs`` go to :func:`start_vllm`, :func:`start_llamacpp` or :func:`start_llama_server` (typed there;
    a wrong name fails there).
    """
    if kind == "vllm":
        return start_vllm(**kwargs)
    if kind == "llamacpp":
        return start_llamacpp(**kwargs)
    if kind == "llama-server":
        return start_llama_server(**kwargs)
    raise ServelabError(
        f"engine {kind!r} is not one of {', '.join(ENGINE_KINDS)}.", "pick kind='vllm', 'llamacpp' or 'llama-server'"
    )
