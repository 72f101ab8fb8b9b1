"""One error type that always carries the fix, so a learner never has to read a library traceback."""

from __future__ import annotations


class ServelabError(RuntimeError):
    """An error a learner can act on: ``str(err)`` says what went wrong and what to run next."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  -> fix: {fix}")
