"""The programs the kit runs (Prometheus, promtool, Alertmanager, kubectl, dot, llama.cpp's): found one way, everywhere.

An OS tool counts as installed when it is on ``PATH`` or next to this Python (a conda environment whose
``bin/`` is not on ``PATH``), under any of its names: Debian calls the Alertmanager binary
``prometheus-alertmanager``, release archives call it ``alertmanager``. llama.cpp's programs
(llama-server, llama-bench, llama-perplexity) are different: ``make setup`` compiles them from the
llama.cpp that the pinned llama-cpp-python vendors, into the kit's cache, and only that build counts,
never another llama-server on ``PATH``, so the kit measures the build it deploys. The preflight check
and the code that starts a tool both ask :func:`find`, so the preflight never calls a tool missing that
a notebook then finds (or the other way round).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from servelab.errors import ServelabError
from servelab.paths import home


@dataclass(frozen=True)
class Tool:
    """A program the kit runs: the names its binary goes by, what the kit needs it for, and how to install it."""

    names: tuple[str, ...]
    needed_for: str
    install: str
    # preflight does not require it: another tool does the same job (kubectl bundles kustomize), or nothing
    # fails without it (a notebook without dot prints how to install it instead of a diagram)
    optional: bool = False
    kit_built: bool = False  # compiled by `make setup` into llamacpp_bin_dir(): looked for there only


_PROMETHEUS_INSTALL = (
    "sudo apt-get install prometheus (Debian/Ubuntu; `make setup` does it as root) "
    "or conda install -c conda-forge prometheus"
)
_LLAMACPP_INSTALL = (
    "make setup (it compiles llama.cpp once per machine, with the Python binding, into "
    "$SERVELAB_HOME/llama.cpp; needs a C++ compiler and CMake)"
)
TOOLS: dict[str, Tool] = {
    "prometheus": Tool(("prometheus",), "notebook 06 and the live alert tests", _PROMETHEUS_INSTALL),
    "promtool": Tool(
        ("promtool",), "checking and unit-testing the alert rules (it comes with Prometheus)", _PROMETHEUS_INSTALL
    ),
    "alertmanager": Tool(
        ("alertmanager", "prometheus-alertmanager"),
        "notebook 06's notifications",
        "sudo apt-get install prometheus-alertmanager (Debian/Ubuntu; `make setup` does it as root). With conda, "
        "conda-forge has no Alertmanager package the kit could verify: put the `alertmanager` binary of an "
        "official Prometheus Alertmanager release archive into $CONDA_PREFIX/bin (or anywhere on PATH)",
    ),
    "kustomize": Tool(
        ("kustomize",),
        "rendering kustomize overlays where kubectl is missing",
        "install kubectl, which bundles it, or a kustomize release binary",
        optional=True,
    ),
    "kubectl": Tool(
        ("kubectl",),
        "rendering kustomize overlays (notebooks 02-03, the manifest tests)",
        "install kubectl (it bundles kustomize)",
    ),
    "dot": Tool(
        ("dot",),
        "drawing the notebooks' diagrams (docs/diagrams/)",
        "sudo apt-get install graphviz (Debian/Ubuntu; `make os-tools` does it as root), brew install graphviz "
        "(macOS) or conda install -c conda-forge graphviz",
        optional=True,
    ),
    "llama-server": Tool(
        ("llama-server",), "serving the GGUF with llama.cpp's native server", _LLAMACPP_INSTALL, kit_built=True
    ),
    "llama-bench": Tool(("llama-bench",), "llama.cpp's own speed benchmark", _LLAMACPP_INSTALL, kit_built=True),
    "llama-perplexity": Tool(
        ("llama-perplexity",), "llama.cpp's own perplexity measurement", _LLAMACPP_INSTALL, kit_built=True
    ),
}


def llamacpp_bin_dir() -> Path:
    """Where ``make setup`` (scripts/build-llamacpp) puts llama.cpp's programs and their shared libraries.

    ``current`` links to the build for the Makefile's CPU flags, ``b<build>-<flags key>``; the programs
    find their libraries beside them (an ``$ORIGIN`` rpath), so they run from here as they are.
    """
    return home() / "llama.cpp" / "current" / "bin"


def find(tool: str) -> str | None:
    """Path of ``tool`` under any of its names, or ``None`` when it is not installed."""
    spec = _tool(tool)
    if spec.kit_built:
        built = llamacpp_bin_dir() / spec.names[0]
        return str(built) if built.is_file() and os.access(built, os.X_OK) else None
    for name in spec.names:
        found = shutil.which(name)
        if found:
            return found
        beside = Path(sys.executable).parent / name
        if beside.is_file():
            return str(beside)
    return None


def require(tool: str) -> str:
    """Path of ``tool``, or a :class:`ServelabError` that says how to install it."""
    found = find(tool)
    if found is None:
        spec = _tool(tool)
        raise ServelabError(
            f"{' / '.join(spec.names)} is not installed; it is needed for {spec.needed_for}.",
            f"install it: {spec.install}",
        )
    return found


def _tool(tool: str) -> Tool:
    try:
        return TOOLS[tool]
    except KeyError:
        raise ServelabError(f"{tool!r} is not a tool the kit knows", f"pick one of {sorted(TOOLS)}") from None
