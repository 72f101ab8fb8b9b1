"""promtool, Prometheus' own checker: rule syntax (``check rules``) and rule unit tests (``test rules``).

A rule that is valid YAML can still be invalid PromQL, and a valid rule can still never fire;
``promtool test rules`` feeds made-up series to the rules and asserts which alerts fire when, so the
files under ``tests/promtool/`` are executable specifications of each alert.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import yaml

from servelab import binaries
from servelab.errors import ServelabError
from servelab.paths import repo_root


def unit_test_files() -> list[Path]:
    """The kit's rule unit tests, ``tests/promtool/*.yaml``."""
    return sorted((repo_root() / "tests" / "promtool").glob("*.yaml"))


def _run_promtool(args: list[str], timeout: float) -> tuple[bool, str]:
    cmd = [binaries.require("promtool"), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"{' '.join(cmd)} did not finish within {timeout:.0f}s"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def check_rules(path: str | Path, timeout: float = 60) -> tuple[bool, str]:
    """``promtool check rules`` on a plain rules file or a PrometheusRule manifest; returns ``(ok, output)``.

    promtool only knows the plain format, so for a PrometheusRule the ``spec`` (its ``groups``) is
    written to a temporary file first: that is exactly what the Operator hands to Prometheus.
    """
    path = Path(path)
    if not path.is_file():
        raise ServelabError(f"{path} does not exist", "run `servelab alerts render` first")
    doc = yaml.safe_load(path.read_text())
    if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
        with tempfile.TemporaryDirectory(prefix="servelab-rules-") as tmp:
            extracted = Path(tmp) / f"{path.stem}.spec.yaml"
            extracted.write_text(yaml.safe_dump(doc.get("spec") or {}, sort_keys=False))
            ok, output = _run_promtool(["check", "rules", str(extracted)], timeout)
            return ok, f"(spec.groups of the PrometheusRule {path})\n{output}"
    return _run_promtool(["check", "rules", str(path)], timeout)


# Named after `promtool test rules`, which it runs; a library function, not a pytest test (PT028 is name-based).
def test_rules(paths: str | Path | Iterable[str | Path], timeout: float = 120) -> tuple[bool, str]:  # noqa: PT028
    """``promtool test rules`` on rule unit-test files; returns ``(ok, output)``.

    Each test file names its rule files relative to its own folder (promtool resolves them so), so
    the tests run the same from any working directory.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ServelabError("no promtool test files given", "pass tests/promtool/*.yaml")
    files = [str(Path(p).resolve()) for p in items]
    for f in files:
        if not Path(f).is_file():
            raise ServelabError(f"{f} does not exist", "pass the rule unit-test files (tests/promtool/*.yaml)")
    return _run_promtool(["test", "rules", *files], timeout)
