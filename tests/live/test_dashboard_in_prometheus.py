"""Every expression of the generated Grafana dashboard parses and runs in a real Prometheus.

Why: a dashboard is accepted by Grafana whatever its queries say; a typo'd expression only shows as
"No data" on the day someone needs the panel. Prometheus' query API answers a parse error for bad
PromQL, so each panel's query (Grafana's variables filled in) is sent to the suite's shared Prometheus
(tests/conftest.py). The dashboard's files and structure are checked in tests/unit/observe/test_dashboard.py;
that its metric names exist on a live vLLM, in tests/live/test_engines.py.
"""

from __future__ import annotations

import json

import pytest

from servelab.errors import ServelabError
from servelab.observe import dashboard
from servelab.observe.prometheus import PrometheusServer
from servelab.paths import manifests_path

MODEL = json.loads(manifests_path("monitoring", dashboard.DASHBOARD_FILE).read_text())


def test_every_expression_parses_and_runs_in_a_real_prometheus(prometheus: PrometheusServer) -> None:
    for where, expr in dashboard.expressions(MODEL):
        try:
            prometheus.query(dashboard.concrete(expr))
        except ServelabError as err:
            pytest.fail(f"{where}: {err}")
    with pytest.raises(ServelabError, match="parse error"):  # the check can fail
        prometheus.query(dashboard.concrete('sum(rate(vllm:num_requests_waiting{model_name=~"$model_name"}[1m])'))
