"""What the engine itself counted while a benchmark ran: the referee between two clients.

Two load generators run one after the other on a shared 2-core machine never see quite the same
server: a noisy neighbour or a background task can slow the second run by a quarter, and a client's
own CPU use slows the server it measures. Comparing client against client therefore mixes harness
error with machine drift. The engine's own counters and histograms, read before and after each run,
describe *the same window* the client measured, so each client is checked against the server in its
own window, and the drift cancels.

vLLM exports what is needed: the generation-token counter and the TTFT and per-request TPOT
histograms, whose ``_sum``/``_count`` pairs give exact means (their buckets are too coarse for a
median).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from servelab.observe.metrics import totals

# figure -> the vLLM samples it is computed from (a counter, or a histogram's sum and count)
VLLM_SAMPLES = {
    "output_tokens_total": ("vllm:generation_tokens_total",),
    "requests": ("vllm:request_success_total",),
    "ttft_mean_s": ("vllm:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_count"),
    "tpot_mean_s": (
        "vllm:request_time_per_output_token_seconds_sum",
        "vllm:request_time_per_output_token_seconds_count",
    ),
}


@dataclass
class ServerWindow:
    """The engine's counters before and after a ``with`` block; :meth:`figures` is what happened inside."""

    metrics_url: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, float | None]:
        """Requests and output tokens the engine finished in the window, and its mean TTFT and TPOT."""
        delta = {name: self.after.get(name, 0.0) - self.before.get(name, 0.0) for name in self.after}
        out: dict[str, float | None] = {}
        for figure, names in VLLM_SAMPLES.items():
            if len(names) == 1:
                out[figure] = delta[names[0]]
            else:
                total, count = delta[names[0]], delta[names[1]]
                out[figure] = total / count if count else None
        return out


def _names() -> list[str]:
    return [name for names in VLLM_SAMPLES.values() for name in names]


@contextmanager
def server_window(server_url: str) -> Iterator[ServerWindow]:
    """Read a vLLM server's ``/metrics`` around the block: ``with server_window(url) as w: ...; w.figures()``.

    Nothing else may send requests to the server meanwhile, or they are counted too.
    """
    window = ServerWindow(server_url.rstrip("/") + "/metrics")
    window.before = totals(window.metrics_url, _names())
    yield window
    window.after = totals(window.metrics_url, _names())
