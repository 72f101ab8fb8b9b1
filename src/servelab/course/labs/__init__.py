"""The hands-on labs' automatic checks: one module per lab, one way to grade (:mod:`.grading`).

A lab notebook calls its ``check_*`` function on the learner's answer and passes the result to
:func:`report`. Labs live in ``labs/``; their reference solutions in ``labs/solutions/``, read with
:func:`solution_text`.
"""

from servelab.course.grading import LabCheck, report, solution_text
from servelab.course.labs.alerting import check_queue_alert
from servelab.course.labs.autoscaling import check_autoscaling
from servelab.course.labs.benchmarking import check_benchmark, run_benchmark_settings
from servelab.course.labs.deployment import check_vllm_deployment

__all__ = [
    "LabCheck",
    "check_autoscaling",
    "check_benchmark",
    "check_queue_alert",
    "check_vllm_deployment",
    "report",
    "run_benchmark_settings",
    "solution_text",
]
