"""The llama.cpp the kit compiles is the one it deploys, and its programs are found only where `make setup` put them."""

import os
from pathlib import Path

import pytest
import yaml

from servelab import binaries
from servelab.course import environment
from servelab.engines import llamacpp_build
from servelab.engines.launch import LlamaServerOptions, llama_server_command, start_llama_server
from servelab.errors import ServelabError
from servelab.paths import manifests_path

KIT_PROGRAMS = ("llama-server", "llama-bench", "llama-perplexity")


def test_the_manifest_deploys_the_build_the_kit_compiles() -> None:
    """manifests/llamacpp pins server-b<build> of the llama.cpp the pinned llama-cpp-python vendors."""
    deployment = yaml.safe_load(manifests_path("llamacpp", "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pinned = llamacpp_build.pinned()
    assert container["image"] == pinned.image == f"ghcr.io/ggml-org/llama.cpp:server-b{pinned.build}"


def test_the_build_record_is_for_the_locked_binding() -> None:
    pinned = llamacpp_build.pinned()
    assert environment.lock_pins()["llama-cpp-python"] == pinned.llama_cpp_python
    assert len(pinned.commit) == 40 and pinned.build > 0
    assert pinned.version_mark == f"(build {pinned.build}, commit {pinned.commit[:7]})"


def _fake_program(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("program", KIT_PROGRAMS)
def test_llamacpp_programs_are_found_in_the_kit_cache_only(
    program: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A llama-server on PATH is another build: the kit measures the one `make setup` compiled."""
    monkeypatch.setenv("SERVELAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(binaries.shutil, "which", lambda name: f"/usr/local/bin/{name}")
    assert binaries.find(program) is None
    with pytest.raises(ServelabError) as err:
        binaries.require(program)
    assert "make setup" in (err.value.fix or "")
    built = _fake_program(tmp_path / "home" / "llama.cpp" / "current" / "bin", program)
    assert binaries.find(program) == str(built) == binaries.require(program)


def test_a_program_that_is_not_executable_does_not_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SERVELAB_HOME", str(tmp_path))
    built = _fake_program(tmp_path / "llama.cpp" / "current" / "bin", "llama-server")
    os.chmod(built, 0o644)
    assert binaries.find("llama-server") is None


def test_llama_server_command_maps_each_option_to_its_flag() -> None:
    opts = LlamaServerOptions(threads=2, n_ctx=1024, parallel=8, kv_unified=False, cont_batching=False, metrics=False)
    cmd = llama_server_command("/bin/llama-server", "/m.gguf", "smollm2", 9000, opts)
    pairs = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert cmd[0] == "/bin/llama-server"
    assert pairs["--model"] == "/m.gguf" and pairs["--alias"] == "smollm2" and pairs["--port"] == "9000"
    assert cmd[cmd.index("--threads") + 1] == cmd[cmd.index("--threads-batch") + 1] == "2"
    assert cmd[cmd.index("--ctx-size") + 1] == "1024" and cmd[cmd.index("--parallel") + 1] == "8"
    assert {"--no-kv-unified", "--no-cont-batching"} <= set(cmd) and "--metrics" not in cmd
    default = llama_server_command("/bin/llama-server", "/m.gguf", "smollm2", 9000, LlamaServerOptions())
    assert {"--kv-unified", "--cont-batching", "--metrics"} <= set(default)
    assert default[default.index("--host") + 1] == "127.0.0.1"


@pytest.mark.parametrize(
    ("model", "problem", "fix"),
    [("/no/such/model.gguf", "does not exist", "smollm2-135m"), ("my-hf-model", "not one", ".gguf file")],
    ids=["missing-gguf", "not-a-gguf"],
)
def test_a_model_llama_server_cannot_serve_is_refused_before_start(
    model: str, problem: str, fix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SERVELAB_HOME", str(tmp_path))
    _fake_program(tmp_path / "llama.cpp" / "current" / "bin", "llama-server")
    with pytest.raises(ServelabError) as err:
        start_llama_server(model=model)
    assert problem in err.value.problem and fix in (err.value.fix or "")
