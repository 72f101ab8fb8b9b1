"""The llama.cpp build the kit compiles, serves and deploys: one record, ``data/engines/llamacpp_build.yaml``.

The pinned llama-cpp-python vendors one llama.cpp commit. ``make setup`` compiles that commit into the
native programs (scripts/build-llamacpp reads the record), and manifests/llamacpp deploys the upstream
image of the same build, ``server-b<build>``; a unit test holds the two together, so what the notebooks
measure is what the manifests ship.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from servelab.paths import data_path

IMAGE_REPOSITORY = "ghcr.io/ggml-org/llama.cpp"


@dataclass(frozen=True)
class LlamaCppBuild:
    """A llama.cpp build: the binding version that vendors it, its build number and commit."""

    llama_cpp_python: str
    build: int
    commit: str

    @property
    def image(self) -> str:
        """The upstream server image of this build (CPU), as manifests/llamacpp must name it."""
        return f"{IMAGE_REPOSITORY}:server-b{self.build}"

    @property
    def version_mark(self) -> str:
        """What ``llama-server --version`` prints for this build, e.g. ``(build 11312, commit 0c1e570)``."""
        return f"(build {self.build}, commit {self.commit[:7]})"


def pinned() -> LlamaCppBuild:
    """The build the kit is pinned to."""
    record = yaml.safe_load(data_path("engines", "llamacpp_build.yaml").read_text())
    return LlamaCppBuild(str(record["llama_cpp_python"]), int(record["build"]), str(record["commit"]))
