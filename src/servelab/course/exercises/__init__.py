"""The "Your turn" exercises inside notebooks 01-08: one grader (:class:`Grader`), one module of checks
per notebook (``nbNN``), reference solutions outside the learner's path (``notebooks/solutions/``).

A notebook grades each exercise in the cell where the learner wrote the answer. With the notebook's
``check_reference_solutions`` parameter on (the test suite, an instructor), the same cell also grades the
reference solution, so one run proves both halves of a check: the untouched answer fails with hints and
the solution passes.
"""

from servelab.course.exercises.grader import Grader, NotAnswered, solution, solutions_module

__all__ = ["Grader", "NotAnswered", "solution", "solutions_module"]
