"""Key figures a notebook measured, saved as JSON so tests can assert them and later notebooks reuse them.

Each notebook owns ``results/<notebook>.json``. ``record`` merges, so a notebook can add figures as it
goes; every file also says which profile and device produced it, because a quick CPU run and a full GPU
run are not comparable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from servelab.errors import ServelabError
from servelab.paths import results_dir


def path_for(notebook: str) -> Path:
    return results_dir() / f"{notebook}.json"


def record(notebook: str, **figures: Any) -> None:
    """Merge ``figures`` into the notebook's results file (returns nothing, so a notebook cell ending
    with it does not echo the whole record)."""
    path = path_for(notebook)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(figures)
    data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


def reset(notebook: str, **context: Any) -> None:
    """Start a fresh results file (call once, near the top of a notebook) with its run context."""
    path_for(notebook).unlink(missing_ok=True)
    record(notebook, **context)


def load(notebook: str) -> dict[str, Any]:
    """Read what a notebook recorded, or say which notebook to run first."""
    path = path_for(notebook)
    if not path.is_file():
        raise ServelabError(f"No results from {notebook} yet ({path}).", f"run notebooks/{notebook}.ipynb first")
    return json.loads(path.read_text())
