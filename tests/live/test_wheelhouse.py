"""An offline room: `make wheelhouse` on this set-up checkout, then a seat set up from that folder alone.

The seat is a copy of the checkout's files (what a clone holds) with its own ``.venv`` and an empty
``SERVELAB_HOME``. Its pip reads no config file and no find-links, and its index URL is a port nothing
listens on, so any registry access fails loudly instead of quietly working through this machine's own
settings. The seat must then import servelab, vllm and llama_cpp, run the restored llama-server and OS
tools, and pass ``servelab preflight --no-engines`` (every package, both copies of the model, every tool)
without starting an engine. The seat's install time is printed; README.md, "Offline room", quotes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servelab.engines import llamacpp_build
from servelab.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
MAKE_TIMEOUT_S = 1500  # the wheelhouse: every pinned wheel from the registry (~2.5 GB); a seat: ~3-4 min
# What would let the seat's make, pip or Python see this checkout's own environment or settings.
DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SERVELAB_HOME")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} took over {timeout_s:.0f} s")
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed (exit {done.returncode}):\n{_tail(out)}"
    return out


def _copy_checkout(dest: Path) -> None:
    """The files a clone of this checkout holds (tracked, and new ones git does not ignore)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.split(b"\0")
    for name in filter(None, (raw.decode() for raw in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Path]:
    """A scratch folder for the wheelhouse and the seat, removed afterwards: together they take ~7 GB."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.timeout(2 * MAKE_TIMEOUT_S + 600)
def test_a_seat_installs_from_the_wheelhouse_alone(room: Path) -> None:
    maker_env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    wheelhouse = room / "wheelhouse"
    began = time.perf_counter()
    _run(["make", "--no-print-directory", "wheelhouse", f"WHEELHOUSE={wheelhouse}"], ROOT, maker_env, MAKE_TIMEOUT_S)
    made_s = time.perf_counter() - began
    manifest = json.loads((wheelhouse / "manifest.json").read_text())

    seat, cache = room / "seat", room / "cache"
    _copy_checkout(seat)
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV and not k.startswith("PIP_")}
    env |= {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple/",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "SERVELAB_HOME": str(cache),
    }
    began = time.perf_counter()
    out = _run(["make", "--no-print-directory", "setup", f"WHEELHOUSE={wheelhouse}"], seat, env, MAKE_TIMEOUT_S)
    seat_s = time.perf_counter() - began
    assert "Compiling llama.cpp" not in out and "dequantizing" not in out, _tail(out)

    python = seat / ".venv" / "bin" / "python"
    where = _run([str(python), "-c", "import vllm, llama_cpp, servelab; print(servelab.__file__)"], seat, env, 300)
    assert str(seat / "src" / "servelab") in where, where
    server = cache / "llama.cpp" / "current" / "bin" / "llama-server"
    assert llamacpp_build.pinned().version_mark in _run([str(server), "--version"], seat, env, 60)
    for tool in manifest["os_tools"]:
        version = ["version", "--client"] if tool == "kubectl" else ["--version"]
        _run([str(seat / ".venv" / "bin" / tool), *version], seat, env, 60)
    _run([str(seat / ".venv" / "bin" / "servelab"), "preflight", "--no-engines"], seat, env, 300)

    size = manifest["bytes"]["total"] / 1e9
    print(f"\nwheelhouse: {size:.2f} GB, {len(manifest['wheel_files'])} wheels, made in {made_s:.0f} s")
    print(f"seat set-up from the wheelhouse alone (make setup WHEELHOUSE=...): {seat_s:.0f} s")
