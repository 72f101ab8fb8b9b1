"""The names of the engines the kit runs: one type for every module that branches on the engine."""

from __future__ import annotations

from typing import Literal

EngineKind = Literal["vllm", "llamacpp"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("vllm", "llamacpp")
