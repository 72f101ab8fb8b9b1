"""Errata a serving expert catches first, each held by a test so it cannot come back."""

from __future__ import annotations

import json
import re

from servelab.paths import manifests_path, repo_root

_FORCED_AWQ = re.compile(r"--quantization[= ,\"']+\s*[\"']?awq\b")


def _code_cells() -> list[tuple[str, str]]:
    cells = []
    for path in sorted([*repo_root().glob("notebooks/*.ipynb"), *repo_root().glob("labs/**/*.ipynb")]):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                cells.append((path.name, "".join(cell["source"])))
    return cells


def test_no_command_forces_the_awq_kernel() -> None:
    """vLLM reads AWQ from the checkpoint; the kit never passes --quantization awq (the seed's habit)."""
    offenders = [name for name, source in _code_cells() if _FORCED_AWQ.search(source)]
    offenders += [str(p) for p in manifests_path().rglob("*.yaml") if _FORCED_AWQ.search(p.read_text())]
    assert not offenders, f"leave --quantization out for AWQ checkpoints: {offenders}"
    assert _FORCED_AWQ.search('extra_args=["--quantization", "awq"]')  # the pattern catches the old form
    assert _FORCED_AWQ.search("--quantization=awq")


def test_default_dtype_never_runs_a_gpu_in_float32() -> None:
    """CUDA: the checkpoint's 16-bit type; a CPU with native bf16: bfloat16; any other CPU: float32."""
    from servelab.engines import device
    from servelab.engines.launch import VLLMOptions, vllm_command

    assert device.default_dtype("cuda", flags=set()) == "auto"
    assert device.default_dtype("cpu", flags={"avx2", "avx512f", "amx_bf16"}) == "bfloat16"
    assert device.default_dtype("cpu", flags={"avx2", "avx512_bf16"}) == "bfloat16"
    assert device.default_dtype("cpu", flags={"avx2", "fma"}) == "float32"
    cmd = vllm_command("/m", "m", 8000, "cuda", VLLMOptions())
    assert cmd[cmd.index("--dtype") + 1] == "auto"
    cmd = vllm_command("/m", "m", 8000, "cuda", VLLMOptions(dtype="float16"))
    assert cmd[cmd.index("--dtype") + 1] == "float16"  # an explicit choice wins


def test_dtype_is_a_parameter_where_vllm_starts() -> None:
    for name in ("00_preflight", "01_engine_comparison", "02_deploy_vllm", "05_benchmarking", "06_monitoring_alerting"):
        nb = json.loads((repo_root() / "notebooks" / f"{name}.ipynb").read_text())
        params = next(c for c in nb["cells"] if "parameters" in (c["metadata"].get("tags") or []))
        assert re.search(r"^dtype = None\b", "".join(params["source"]), re.M), name
