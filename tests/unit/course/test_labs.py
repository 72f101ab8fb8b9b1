"""The lab checkers reject the starting point and the classic mistakes, and accept the reference."""

from pathlib import Path

from servelab import results
from servelab.course import labs, seed

ROOT = Path(__file__).resolve().parents[3]
SOLUTION = (ROOT / "labs" / "solutions" / "lab01_deployment.yaml").read_text()


def _failed(text: str) -> set[str]:
    return {c.name for c in labs.check_vllm_deployment(text) if not c.ok}


def test_reference_solution_passes_every_check() -> None:
    assert _failed(SOLUTION) == set()


def test_the_seed_fails_schema_rules_probes_and_image() -> None:
    deployment = seed.manifest_text().split("---")[0]  # the seed document's own Deployment
    failed = _failed(deployment)
    assert any(name.startswith("valid for Kubernetes 1.25, 1.32") for name in failed)
    assert "a current vLLM image" in failed and "startupProbe gives the model time to load" in failed


def test_a_mismatched_selector_is_caught() -> None:
    broken = SOLUTION.replace("matchLabels:\n      app: vllm-server", "matchLabels:\n      app: other")
    assert "serving rules (selector, 2+ replicas, probes, requests)" in _failed(broken)


def test_bad_yaml_gets_a_hint_not_a_traceback() -> None:
    checks = labs.check_vllm_deployment("spec: [unclosed")
    assert not checks[0].ok and "YAML" in checks[0].hint


def test_report_gives_hints_and_a_score_without_raising(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SERVELAB_RESULTS", str(tmp_path))
    table = labs.report(labs.check_vllm_deployment(SOLUTION.replace("startupProbe", "startupProbeX")), lab="t")
    assert "Not yet" in capsys.readouterr().out
    failed = table[table["passed"] == "NO"]
    assert len(failed) >= 1 and failed["hint"].str.contains("startupProbe").any()
    recorded = results.load("t")
    assert 0 < recorded["checks_passed"] < recorded["checks_total"]
    assert all(recorded["hints"][name] for name in recorded["failed"])
    labs.report(labs.check_vllm_deployment(SOLUTION), lab="t")
    assert "All" in capsys.readouterr().out and results.load("t")["failed"] == []
