"""LLM Serving Lab: the code every notebook, lab, test and CLI command calls; notebooks tell the story.

Subpackages by purpose (each ``__init__`` says what it holds and which notebook teaches it):

- :mod:`servelab.engines`: start vLLM and llama.cpp, find the device and the model files.
- :mod:`servelab.bench`: workloads, the load generator, latency statistics, cross-checks.
- :mod:`servelab.memory`: KV cache, roofline, resident memory, the quantization ladder.
- :mod:`servelab.observe`: alert rules, PromQL, promtool, Prometheus, Alertmanager, dashboard, ``/metrics``.
- :mod:`servelab.k8s`: offline manifest validation, autoscaler metrics, the HPA algorithm, quantities.
- :mod:`servelab.planning`: capacity simulation and cost.
- :mod:`servelab.gateway`: the deployable API gateway (``pip install .[gateway]``; imports only
  :mod:`servelab.errors` and :mod:`servelab.sse` of the rest).
- :mod:`servelab.course`: preflight, lab checks, the environment's conda twin, gateway drills.
- :mod:`servelab.cli`: the ``servelab`` command, one module per command group.

Shared homes, one per mechanism: :mod:`~servelab.errors` (the error that carries its fix),
:mod:`~servelab.paths` (where files live), :mod:`~servelab.binaries` (finding OS tools),
:mod:`~servelab.procs` (starting, awaiting and stopping servers), :mod:`~servelab.results` (figures a
notebook records), :mod:`~servelab.aio` (running coroutines in scripts and Jupyter), :mod:`~servelab.sse`
(parsing streamed answers).
"""

__version__ = "0.1.0"
