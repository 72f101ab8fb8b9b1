"""scripts/ are thin wrappers over the CLI: each one runs and reaches the command it names."""

import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize(
    "script, expect", [("validate-manifests", "valid for Kubernetes"), ("check-alerts", "SUCCESS")]
)
def test_script_runs_its_command(script: str, expect: str) -> None:
    done = subprocess.run([str(SCRIPTS / script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and expect in done.stdout, done.stdout + done.stderr


def test_every_script_wraps_the_cli() -> None:
    for path in SCRIPTS.iterdir():
        assert "servelab" in path.read_text() and path.stat().st_mode & 0o111, path.name
