"""Device choice and the model files: clear errors, no hub."""

import pytest

from servelab.engines import device, model
from servelab.errors import ServelabError


def test_unknown_device_is_a_clear_error() -> None:
    with pytest.raises(ServelabError, match="not one of"):
        device.resolve_device("tpu")


def test_cuda_without_a_gpu_says_what_to_do(monkeypatch) -> None:
    monkeypatch.setattr(device, "gpu_names", lambda timeout=10.0: [])
    with pytest.raises(ServelabError, match="no GPU") as err:
        device.resolve_device("cuda")
    assert err.value.fix


def test_auto_is_cpu_with_the_cpu_build(monkeypatch) -> None:
    monkeypatch.setattr(device, "gpu_names", lambda timeout=10.0: ["NVIDIA H100"])
    monkeypatch.setattr(device, "vllm_build", lambda: "cpu")
    assert device.resolve_device("auto") == "cpu"


def test_this_environment_has_the_cpu_build() -> None:
    assert device.vllm_build() == "cpu"


def test_the_gguf_ships_in_the_package() -> None:
    path = model.gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50e6


def test_a_missing_conversion_names_the_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SERVELAB_HOME", str(tmp_path))
    with pytest.raises(ServelabError) as err:
        model.require_hf_model()
    assert "make model" in str(err.value)
    assert "\n" in str(err.value) and len(str(err.value).splitlines()) == 2
