"""Results files: what a notebook recorded, and the shipped reference copy a later notebook falls back to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servelab import results
from servelab.errors import ServelabError


def test_load_or_reference_prefers_this_run_then_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVELAB_RESULTS", str(tmp_path))
    loaded = results.load_or_reference("05_benchmarking", required=["closed"])
    assert not loaded.from_this_run and "not this run" in loaded.label
    assert loaded.path == results.reference_dir() / "05_benchmarking.json"
    (tmp_path / "05_benchmarking.json").write_text(json.dumps({"closed": [], "profile": "quick"}))
    assert results.load_or_reference("05_benchmarking", required=["closed"]).from_this_run
    # This run's file without the needed figures falls back to the reference copy.
    assert not results.load_or_reference("05_benchmarking", required=["closed", "levels"]).from_this_run
    with pytest.raises(ServelabError, match=r"run notebooks/99_nothing\.ipynb"):
        results.load_or_reference("99_nothing")


def test_reference_results_are_shipped_with_a_readme() -> None:
    ref = results.reference_dir()
    assert (ref / "README.md").is_file()
    bench = json.loads((ref / "05_benchmarking.json").read_text())
    assert bench["closed"] and bench["profile"] and bench["device"]
    assert json.loads((ref / "00_preflight.json").read_text())["vllm_ready_s"] > 0
