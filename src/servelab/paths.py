"""Where the kit keeps things: caches outside the checkout, results and artifacts inside it.

Caches (the converted model) live under ``SERVELAB_HOME`` (default ``~/.cache/servelab``) so a fresh
clone reuses them; results of a run live in the checkout's ``results/`` so notebooks and tests of the
same run can read what earlier notebooks measured.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package was installed from (editable install), or the working directory."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "notebooks").is_dir():
            return parent
    return Path.cwd()


def data_path(*parts: str) -> Path:
    """A file or folder under the checkout's ``data/`` (prompts, prices, reference results, the seed)."""
    return repo_root().joinpath("data", *parts)


def manifests_path(*parts: str) -> Path:
    """A file or folder under the checkout's ``manifests/`` (what a learner deploys)."""
    return repo_root().joinpath("manifests", *parts)


def home() -> Path:
    """The kit's cache folder; ``SERVELAB_HOME`` overrides it."""
    path = Path(os.environ.get("SERVELAB_HOME", Path.home() / ".cache" / "servelab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Where notebooks write their measured figures; ``SERVELAB_RESULTS`` overrides it."""
    path = Path(os.environ.get("SERVELAB_RESULTS", repo_root() / "results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def logs_dir() -> Path:
    """Where engine logs go, one file per server start, kept for troubleshooting."""
    path = results_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path
