"""A sweep sends each level prompts of its own: a server that caches prompts (llama-server's slots, vLLM's
prefix cache) must not answer one level from what the previous level sent. Two sweeps over the same levels
(two engines) still send the same prompts level by level. run_benchmark is replaced: no server starts."""

from __future__ import annotations

from typing import Any

import pytest

from servelab.bench import fixed_workload, loadgen, sweep_concurrency, sweep_rate
from servelab.bench.stats import BenchResult


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def record(base_url: str, model: str, workload: Any, **options: Any) -> BenchResult:
        calls.append({**options, "prompts": [r.prompt for r in workload.take(2, seed=options["seed"])]})
        return BenchResult([], {}, duration_s=1.0)

    monkeypatch.setattr(loadgen, "run_benchmark", record)
    return calls


WORKLOAD = fixed_workload(16, 8)


def test_each_concurrency_level_takes_the_next_seed_and_so_new_prompts(sent: list[dict[str, Any]]) -> None:
    sweep_concurrency("http://x/v1", "m", WORKLOAD, [1, 4, 8], requests_per_user=2, seed=5)
    assert [c["seed"] for c in sent] == [5, 6, 7] and [c["concurrency"] for c in sent] == [1, 4, 8]
    assert [c["num_requests"] for c in sent] == [4, 8, 16]
    prompts = [p for c in sent for p in c["prompts"]]
    assert len(set(prompts)) == len(prompts)


def test_two_sweeps_over_the_same_levels_send_the_same_prompts(sent: list[dict[str, Any]]) -> None:
    sweep_concurrency("http://a/v1", "m", WORKLOAD, [1, 4], num_requests=4)
    sweep_concurrency("http://b/v1", "m", WORKLOAD, [1, 4], num_requests=4)
    assert [c["seed"] for c in sent] == [0, 1, 0, 1] and sent[0]["prompts"] == sent[2]["prompts"]


def test_each_rate_takes_the_next_seed(sent: list[dict[str, Any]]) -> None:
    sweep_rate("http://x/v1", "m", WORKLOAD, [1.0, 2.0], num_requests=4)
    assert [(c["request_rate"], c["seed"]) for c in sent] == [(1.0, 0), (2.0, 1)]
