"""The names of the engines the kit runs: one type for every module that branches on the engine.

``llamacpp`` is llama-cpp-python's Python server; ``llama-server`` is llama.cpp's native server, the
program manifests/llamacpp deploys (parallel slots, continuous batching, Prometheus metrics).
"""

from __future__ import annotations

from typing import Literal

EngineKind = Literal["vllm", "llamacpp", "llama-server"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("vllm", "llamacpp", "llama-server")
