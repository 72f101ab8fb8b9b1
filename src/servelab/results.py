"""Key figures a notebook measured, saved as JSON so tests can assert them and later notebooks reuse them.

Each notebook owns ``results/<notebook>.json``. ``record`` merges, so a notebook can add figures as it
goes; every file also says which profile and device produced it, because a quick CPU run and a full GPU
run are not comparable. A notebook that builds on another's figures reads them with
``load_or_reference``: this run's when they exist, else the kit's shipped reference copy, labelled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servelab.errors import ServelabError
from servelab.paths import data_path, results_dir


def path_for(notebook: str) -> Path:
    return results_dir() / f"{notebook}.json"


def reference_dir() -> Path:
    """Results measured on the reference machine and shipped with the kit (see its README.md)."""
    return data_path("reference", "measured")


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


@dataclass(frozen=True)
class LoadedResults:
    """A notebook's figures and where they came from, so a later notebook can say so next to them."""

    notebook: str
    data: dict
    path: Path
    from_this_run: bool

    @property
    def label(self) -> str:
        if self.from_this_run:
            return (
                f"measured in this run ({self.path.name}, profile {self.data.get('profile')}, "
                f"{self.data.get('updated')})"
            )
        return (
            f"reference results from data/reference/measured (not this run): {self.path.name}, "
            f"profile {self.data.get('profile')}, {self.data.get('updated')}"
        )


def load_or_reference(notebook: str, required: Sequence[str] = ()) -> LoadedResults:
    """This run's ``results/<notebook>.json`` when it holds ``required``; otherwise the kit's reference copy
    (measured on the reference machine, see data/reference/measured/README.md); otherwise say what to run.

    Why: a learner may open notebook 07 without having run 04 and 05 (they take minutes); the
    reference copy lets the story go on, and the label keeps it from passing as this machine's figures.
    """
    for path, this_run in ((path_for(notebook), True), (reference_dir() / f"{notebook}.json", False)):
        if path.is_file():
            data = json.loads(path.read_text())
            if all(key in data for key in required):
                return LoadedResults(notebook, data, path, this_run)
    raise ServelabError(
        f"No results from {notebook} with {', '.join(required) or 'any figures'} "
        "(neither this run's nor a reference copy).",
        f"run notebooks/{notebook}.ipynb first",
    )
