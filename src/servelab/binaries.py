"""The OS tools the kit runs (Prometheus, promtool, Alertmanager, kubectl): found one way, everywhere.

A tool counts as installed when it is on ``PATH`` or next to this Python (a conda environment whose
``bin/`` is not on ``PATH``), under any of its names: Debian calls the Alertmanager binary
``prometheus-alertmanager``, release archives call it ``alertmanager``. The preflight check and the
code that starts a tool both ask :func:`find`, so the preflight never calls a tool missing that a
notebook then finds (or the other way round).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from servelab.errors import ServelabError


@dataclass(frozen=True)
class Tool:
    """An OS tool: the names its binary goes by, what the kit needs it for, and how to install it."""

    names: tuple[str, ...]
    needed_for: str
    install: str
    optional: bool = False  # another tool does the same job (kubectl bundles kustomize): preflight skips it


_PROMETHEUS_INSTALL = (
    "sudo apt-get install prometheus (Debian/Ubuntu; `make setup` does it as root) "
    "or conda install -c conda-forge prometheus"
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
}


def find(tool: str) -> str | None:
    """Path of ``tool`` under any of its names, or ``None`` when it is not installed."""
    for name in _tool(tool).names:
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
