"""Starting Prometheus and Alertmanager, the parts that need neither running: the alerting block of the
generated Prometheus config, and the error that names the install command when a binary is missing.
(The servers themselves run in tests/live/test_alertmanager.py and tests/live/test_alerts_in_prometheus.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servelab import binaries
from servelab.errors import ServelabError
from servelab.observe.alertmanager import start_alertmanager
from servelab.observe.prometheus import prometheus_config, start_prometheus


def test_prometheus_config_alerting_block() -> None:
    config = prometheus_config({"x": ["127.0.0.1:1"]}, [], alertmanagers=["127.0.0.1:9093"])
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}
    assert "alerting" not in prometheus_config({"x": ["127.0.0.1:1"]}, [])
    with pytest.raises(ServelabError, match="host:port"):
        prometheus_config({"x": ["127.0.0.1:1"]}, [], alertmanagers=["http://127.0.0.1:9093"])


def test_missing_alertmanager_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(binaries.shutil, "which", lambda name: None)
    monkeypatch.setattr(binaries.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ServelabError, match="apt-get install prometheus-alertmanager") as err:
        start_alertmanager("http://127.0.0.1:1/")
    assert "conda" in str(err.value) and "$CONDA_PREFIX/bin" in str(err.value)


def test_missing_prometheus_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(binaries.shutil, "which", lambda name: None)
    monkeypatch.setattr(binaries.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ServelabError, match="apt-get install prometheus") as err:
        start_prometheus({"vllm": ["127.0.0.1:1"]}, [])
    assert "conda install -c conda-forge prometheus" in str(err.value)
