"""scripts/ are thin wrappers over the CLI: each one runs and reaches the command it names."""

import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


# validate-manifests gets one folder: that it passes its arguments on is checked too, and the whole tree's
# validation (every file, every Kubernetes version; ~10 s) is tests/unit/k8s/test_manifests.py's job.
@pytest.mark.parametrize(
    ("command", "expect"),
    [
        (["validate-manifests", "manifests/namespace"], "manifests/namespace: valid for Kubernetes"),
        (["check-alerts"], "SUCCESS"),
    ],
    ids=["validate-manifests", "check-alerts"],
)
def test_script_runs_its_command(command: list[str], expect: str) -> None:
    script, *args = command
    done = subprocess.run(
        [str(SCRIPTS / script), *args], cwd=SCRIPTS.parent, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and expect in done.stdout, done.stdout + done.stderr


def test_every_script_wraps_the_cli() -> None:
    for path in SCRIPTS.iterdir():
        assert "servelab" in path.read_text() and path.stat().st_mode & 0o111, path.name
