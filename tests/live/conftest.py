"""What the gateway's live tests share: two real llama.cpp replicas per test module.

Per module, not per session: the failover drills kill replicas, and a module must not inherit another's
dead or quarantined ones. One thread each, so two replicas and the gateway fit on 2 cores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servelab.engines.launch import Engine, LlamaCppOptions, start_llamacpp

ONE_THREAD = LlamaCppOptions(n_threads=1)


@pytest.fixture(scope="module")
def replicas() -> Iterator[dict[str, Engine]]:
    with start_llamacpp(options=ONE_THREAD) as a, start_llamacpp(options=ONE_THREAD) as b:
        yield {"a": a, "b": b}
