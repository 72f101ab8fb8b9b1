"""How every lab and exercise is graded: a list of :class:`LabCheck` and :func:`report`, which shows the
verdict as a table of checks with a hint beside each one that fails. A failing check is the normal state
of an unsolved exercise, so it never raises: the learner reads hints, not a traceback. A lab's score goes
to ``results/<lab>.json``, where the test suite reads it twice: on the untouched starting point (some
checks must fail, each with a hint, which proves they can) and on the reference solution (all pass).
Exercises inside notebooks use the same checks through :mod:`servelab.course.exercises`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class LabCheck:
    name: str
    ok: bool
    hint: str


def report(checks: list[LabCheck], lab: str) -> pd.DataFrame:
    """Record the score in ``results/<lab>.json``, print the verdict, and return the checks as a table."""
    from servelab import results

    results.record(lab, **score(checks))
    return verdict(checks)


def solution_text(filename: str) -> str:
    """A lab's reference solution, ``labs/solutions/<filename>``, found from the repository root: it reads the
    same whatever the kernel's working directory (JupyterLab's is the notebook's folder, a script's anything)."""
    from servelab.errors import ServelabError
    from servelab.paths import repo_root

    path = repo_root() / "labs" / "solutions" / filename
    if not path.is_file():
        raise ServelabError(f"there is no reference solution {path}", "the files are listed in labs/solutions/")
    return path.read_text()


def raised(name: str, err: Exception, on: str | None = None) -> LabCheck:
    """The failed check ``name`` for an answer that raised ``err`` (``on`` the case it was given): the
    learner's code crashing is feedback, shown as a hint, never a traceback."""
    said = f"On {on} your answer raised" if on else "Your answer raised"
    return LabCheck(name, False, f"{said} {type(err).__name__}: {err}")


def as_sentence(advice: str) -> str:
    """Advice as a sentence of its own inside a hint."""
    return advice[:1].upper() + advice[1:] + "."


def score(checks: list[LabCheck]) -> dict[str, Any]:
    """What a results file records of a graded attempt: counts, the failed checks and their hints."""
    failed = [c for c in checks if not c.ok]
    return {
        "checks_total": len(checks),
        "checks_passed": len(checks) - len(failed),
        "failed": [c.name for c in failed],
        "hints": {c.name: c.hint for c in failed},
    }


def verdict(checks: list[LabCheck]) -> pd.DataFrame:
    """Print the verdict (each failed hint in full) and return the checks as a table."""
    import pandas as pd

    failed = [c for c in checks if not c.ok]
    if failed:
        passed = len(checks) - len(failed)
        print(f"Not yet: {passed} of {len(checks)} checks pass. Fix the rows marked NO, then run again.")
        for check in failed:  # in full: a table cell would cut a long hint
            print(f"\n  NO  {check.name}\n      {check.hint}")
    else:
        print(f"All {len(checks)} checks pass.")
    return pd.DataFrame(
        [{"check": c.name, "passed": "yes" if c.ok else "NO", "hint": "" if c.ok else c.hint} for c in checks]
    )
