"""The deployable gateway on its own: a fresh venv with nothing but ``pip install "<repo>[gateway]"``
(what the Dockerfile installs) must run ``python -m servelab.gateway`` and serve its probes, metrics (on
the admin port) and a clear 503 when no engine is up, without any of the kit's notebook tooling or heavy libraries.

This is what proves the ``gateway`` extra in pyproject.toml; no Docker build is needed for that. The
install is a regular (non-editable) one from a copy of what the image's build context holds
(pyproject.toml, README.md, src/), with the environment's own pip index settings. ``-X importtime``
on the gateway process lists every module it really imported, so a lazy import of e.g.
servelab.procs during serving is caught too, not only one at import time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from servelab.gateway import hash_key

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-standalone-test"
# Notebook tooling and engines: none may be installed by the extra, let alone imported.
ABSENT = ("psutil", "pandas", "numpy", "torch", "vllm", "llama_cpp", "kubernetes", "matplotlib")
# What of the kit the deployable gateway may import (servelab/gateway/__init__.py says so too).
KIT_ALLOWED = {"servelab", "servelab.errors", "servelab.sse"}
PIP_TIMEOUT_S = 480
START_DEADLINE_S = 60
# Variables that would let the venv's Python or pip see the kit's own environment or change what pip does.
DROP_ENV = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_NO_DEPS", "PIP_TARGET", "PIP_USER"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _kit_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name.split(".")[0] == "servelab":
                names.add(name)
    return names


def _allowed(module: str) -> bool:
    return module in KIT_ALLOWED or (
        (module == "servelab.gateway" or module.startswith("servelab.gateway.")) and module != "servelab.gateway.launch"
    )


@pytest.mark.engines
@pytest.mark.timeout(600)
def test_gateway_extra_alone_runs_the_gateway(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}

    # The image's build context: .dockerignore keeps only these.
    context = tmp_path / "context"
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "requirements/lock.txt"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    began = time.perf_counter()
    try:
        pip = subprocess.run(
            # As the Dockerfile does: the lock constrains the extra's transitive dependencies too.
            [
                python,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-c",
                str(context / "requirements" / "lock.txt"),
                f"{context}[gateway]",
            ],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=PIP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f'pip install ".[gateway]" took over {PIP_TIMEOUT_S} s; its output so far:\n{_tail(out)}')
    if pip.returncode != 0:
        pytest.fail(
            f'pip install ".[gateway]" failed (exit {pip.returncode}) in a fresh venv; pip said:\n'
            f"{_tail(pip.stdout + pip.stderr)}"
        )
    print(f"\npip install .[gateway]: {time.perf_counter() - began:.1f} s")

    check = subprocess.run(
        [python, "-m", "pip", "check"], check=False, capture_output=True, text=True, env=env, timeout=60
    )
    assert check.returncode == 0, f"the extra's dependency set is inconsistent:\n{check.stdout}{check.stderr}"
    probe = subprocess.run(
        [python, "-I", "-c", f"import importlib.util as u; print([m for m in {ABSENT!r} if u.find_spec(m)])"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    assert probe.stdout.strip() == "[]", f"the gateway extra installed notebook/engine packages: {probe.stdout}"

    dead_engine = _free_port()  # nothing listens here: the one replica is down
    admin_port = _free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "replicas": [{"name": "engine", "url": f"http://127.0.0.1:{dead_engine}", "health_path": "/health"}],
                "keys": [{"id": "alice", "sha256": hash_key(KEY)}],
                "health_interval_s": 0.5,
                "health_timeout_s": 0.5,
                "audit_path": "-",  # stdout, as in the Deployment
                "admin_port": admin_port,
            }
        )
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    stdout, stderr = tmp_path / "gateway.out", tmp_path / "gateway.err"
    with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
        proc = subprocess.Popen(
            [python, "-X", "importtime", "-m", "servelab.gateway", "--config", str(config), "--port", str(port)],
            stdout=out_file,
            stderr=err_file,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )

    def logs() -> str:
        lines = stderr.read_text(errors="replace").splitlines()
        return _tail("\n".join(line for line in lines if not line.startswith("import time:")))

    try:
        with (
            httpx.Client(base_url=base, timeout=5, trust_env=False) as client,
            httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=5, trust_env=False) as admin,
        ):
            deadline = time.monotonic() + START_DEADLINE_S
            ready = None
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    hint = " (a module it imports is not in the gateway extra)" if "ModuleNotFound" in logs() else ""
                    pytest.fail(f"python -m servelab.gateway exited with {proc.returncode}{hint}:\n{logs()}")
                try:
                    ready = admin.get("/ready")
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            assert ready is not None and ready.status_code == 200, (
                f"/ready did not answer 200 within {START_DEADLINE_S} s "
                f"(last: {ready and ready.status_code} {ready and ready.text}):\n{logs()}"
            )
            # Ready without a healthy engine, on purpose (app.py): ready pods answer 503s, not "refused".
            assert ready.json() == {"ready": True, "replicas": {"engine": "down"}}
            assert client.get("/health").json() == {"status": "alive"}

            body = {"model": "m", "prompt": "Hello", "max_tokens": 4}
            refused = client.post("/v1/completions", json=body)
            assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
            answer = client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "no_healthy_replica" and "No healthy engine replica" in error["message"]
            assert answer.headers["retry-after"] == "1" and answer.headers["x-request-id"]

            assert client.get("/metrics").status_code == 404 and client.get("/ready").status_code == 404
            metrics = admin.get("/metrics")
            assert metrics.status_code == 200
            assert 'gateway_replica_up{replica="engine"} 0.0' in metrics.text
            assert 'gateway_requests_total{code="503",key_id="alice",outcome="no_replica"} 1.0' in metrics.text or (
                'gateway_requests_total{key_id="alice",code="503",outcome="no_replica"} 1.0' in metrics.text
            ), metrics.text

        # What the kubelet sends. uvicorn shuts down (lifespan end: health loop stopped, audit closed), then
        # re-raises the signal it caught, so a clean stop exits by SIGTERM, not 0; no traceback either way.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), logs()
        assert "Traceback" not in stderr.read_text(errors="replace"), logs()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    audit = [json.loads(line) for line in stdout.read_text().splitlines() if line.startswith("{")]
    assert [(a["key_id"], a["status"], a["outcome"]) for a in audit] == [
        (None, 401, "unauthorized"),
        ("alice", 503, "no_replica"),
    ], audit
    imported = _kit_modules(stderr.read_text(errors="replace"))
    assert "servelab.gateway.app" in imported, "-X importtime listed no gateway modules; the check proves nothing"
    assert not {m for m in imported if not _allowed(m)}, f"the deployable gateway imported kit tooling: {imported}"
