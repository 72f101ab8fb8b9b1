"""Prometheus -> Alertmanager -> webhook: a firing and a resolved notification really arrive.

Why: a rule that fires in Prometheus pages nobody unless Prometheus knows its Alertmanager and the
Alertmanager's route reaches a receiver. These tests run the whole chain with real processes and no
engine: a tiny exporter (prometheus_client, in this process) serves a gauge the test flips; a real
Prometheus scrapes it every second and alerts while it is 1; a real Alertmanager routes the alert to
the kit's WebhookReceiver, which records each notification as a JSON line. About 15 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from servelab.errors import ServelabError
from servelab.observe import alertmanager
from servelab.observe.alertmanager import AlertmanagerServer, start_alertmanager
from servelab.observe.prometheus import start_prometheus
from servelab.observe.webhook_receiver import WebhookReceiver
from servelab.procs import free_port

ALERT = "ServelabConditionTrue"
RULES = {
    "groups": [
        {
            "name": "servelab-test",
            "interval": "1s",
            "rules": [
                {
                    "alert": ALERT,
                    "expr": "servelab_test_condition == 1",
                    "for": "0s",
                    "labels": {"severity": "info", "team": "serving"},
                    "annotations": {"summary": "the test condition is true on {{ $labels.instance }}"},
                }
            ],
        }
    ]
}


@pytest.fixture
def exporter() -> Iterator[tuple[Gauge, int]]:
    """A real /metrics endpoint with one gauge the test controls."""
    registry = CollectorRegistry()
    gauge = Gauge("servelab_test_condition", "1 while the test wants the alert to fire", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield gauge, port
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path / "notifications.jsonl") as running:
        yield running


@pytest.fixture
def am(receiver: WebhookReceiver) -> Iterator[AlertmanagerServer]:
    with start_alertmanager(receiver.url, group_wait="1s", group_interval="1s") as server:
        yield server


def test_firing_then_resolved_notification_reach_the_webhook(
    exporter: tuple[Gauge, int], receiver: WebhookReceiver, am: AlertmanagerServer, tmp_path: Path
) -> None:
    gauge, port = exporter
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    with start_prometheus(
        {"exporter": [f"127.0.0.1:{port}"]},
        [rules],
        scrape_interval="1s",
        evaluation_interval="1s",
        alertmanagers=[am.address],
    ) as prom:
        assert prom.config_path.read_text().count(am.address) == 1
        assert am.wait_discovered(prom, timeout_s=30) < 30  # ~5 s: Prometheus' discovery update period
        gauge.set(1)
        began = time.monotonic()
        firing = receiver.wait_for(ALERT, "firing", timeout_s=30)
        to_firing = time.monotonic() - began
        assert [a["labels"]["alertname"] for a in am.alerts()] == [ALERT]

        gauge.set(0)
        began = time.monotonic()
        resolved = receiver.wait_for(ALERT, "resolved", timeout_s=30)
        to_resolved = time.monotonic() - began
    print(
        f"firing notification {to_firing:.1f} s after the condition became true, resolved {to_resolved:.1f} s "
        f"after the condition cleared; {len(receiver.notifications())} notifications"
    )
    assert to_firing < 30 and to_resolved < 30

    assert firing["status"] == "firing" and firing["receiver"] == alertmanager.RECEIVER
    assert firing["groupLabels"] == {"alertname": ALERT}
    labels = firing["alerts"][0]["labels"]
    assert labels == {
        "alertname": ALERT,
        "severity": "info",
        "team": "serving",
        "job": "exporter",
        "instance": f"127.0.0.1:{port}",
    }
    assert firing["alerts"][0]["annotations"]["summary"] == f"the test condition is true on 127.0.0.1:{port}"
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["labels"] == labels
    assert resolved["received_at"] > firing["received_at"]

    # The file holds the same notifications, one JSON object a line, and the table one row per alert.
    lines = [json.loads(line) for line in receiver.path.read_text().splitlines()]
    assert lines == receiver.notifications()
    table = receiver.table()
    assert list(table["alert_status"].iloc[[0, -1]]) == ["firing", "resolved"]
    assert set(table["alertname"]) == {ALERT}


def test_alertmanager_stops_and_cleans_up(receiver: WebhookReceiver) -> None:
    server = start_alertmanager(receiver.url)
    assert server.running and server.workdir.is_dir() and "webhook_configs" in server.config_path.read_text()
    assert httpx.get(f"{server.url}/-/ready", timeout=5).status_code == 200
    # A Prometheus that was not told about it (it only scrapes it) never lists it: a clear error, no hang.
    with start_prometheus({"alertmanager": [server.address]}, []) as prom:
        began = time.monotonic()
        with pytest.raises(ServelabError, match="did not list Alertmanager"):
            server.wait_discovered(prom, timeout_s=1)
        assert time.monotonic() - began < 5
    server.stop()
    assert not server.running and not server.workdir.exists() and server.log_path.is_file()
    with pytest.raises(ServelabError, match="not running"):
        server.alerts()


def test_receiver_refuses_non_json_and_times_out_with_what_it_got(receiver: WebhookReceiver) -> None:
    assert httpx.post(receiver.url, content=b"not json", timeout=5).status_code == 400
    assert (
        httpx.post(
            receiver.url,
            json={"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "Other"}}]},
            timeout=5,
        ).status_code
        == 200
    )
    assert len(receiver.notifications()) == 1 and len(receiver.path.read_text().splitlines()) == 1
    began = time.monotonic()
    with pytest.raises(ServelabError, match=r"no firing notification for Missing within 1 s .*Other"):
        receiver.wait_for("Missing", "firing", timeout_s=1)
    assert time.monotonic() - began < 5
    url = receiver.url
    receiver.stop()
    assert not receiver.running
    with pytest.raises(httpx.TransportError):  # the port is closed, not just ignored
        httpx.post(url, json={}, timeout=2)


def test_latest_notification_decides_after_a_flap(receiver: WebhookReceiver) -> None:
    """An alert that resolved and fired again is firing: the newest notification counts, not the first."""
    for status in ("firing", "resolved", "firing"):
        httpx.post(
            receiver.url,
            json={"status": status, "alerts": [{"status": status, "labels": {"alertname": "Flappy"}}]},
            timeout=5,
        )
    assert receiver.wait_for("Flappy", "firing", timeout_s=1) is receiver.notifications()[-1]
    with pytest.raises(ServelabError, match="no resolved notification"):
        receiver.wait_for("Flappy", "resolved", timeout_s=0.5)
