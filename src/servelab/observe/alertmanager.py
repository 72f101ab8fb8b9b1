"""A real, local Alertmanager that turns Prometheus' firing alerts into webhook notifications.

Why this module exists: Prometheus only decides that an alert fires; Alertmanager decides who hears
about it, when and how often: it groups alerts (``group_by``), waits for more of the same group
before the first notification (``group_wait``), batches later changes (``group_interval``), repeats
an unchanged one (``repeat_interval``) and sends a "resolved" notification when it ends
(``send_resolved``). :func:`start_alertmanager` writes a throw-away ``alertmanager.yml`` with one
route to one webhook receiver (e.g. :class:`servelab.observe.webhook_receiver.WebhookReceiver`), starts the
``alertmanager`` binary as a :class:`~servelab.procs.ManagedServer` on loopback with clustering off,
and waits until ``/-/ready`` answers. Pass its :attr:`AlertmanagerServer.address` to
``start_prometheus(..., alertmanagers=[...])`` so Prometheus sends it its alerts.

The defaults are the quick ones (1 s / 2 s / 1 h) so a notebook sees a notification seconds after an
alert fires; production values are around 30 s / 5 m / 4 h (Alertmanager's own defaults).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from servelab import binaries
from servelab.errors import ServelabError
from servelab.paths import logs_dir
from servelab.procs import ManagedServer, ScratchServer, free_port, scratch_folder, tail

__all__ = ["AlertmanagerServer", "alertmanager_config", "start_alertmanager"]

RECEIVER = "webhook"


def alertmanager_config(
    receiver_url: str,
    group_by: Sequence[str] = ("alertname",),
    group_wait: str = "1s",
    group_interval: str = "2s",
    repeat_interval: str = "1h",
) -> dict[str, Any]:
    """The ``alertmanager.yml`` content as a dict: one route, one webhook receiver that also gets resolved alerts."""
    if not receiver_url.startswith(("http://", "https://")):
        raise ServelabError(
            f"receiver_url {receiver_url!r} is not an http(s) URL", "pass e.g. WebhookReceiver(...).url"
        )
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": list(group_by),
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [{"name": RECEIVER, "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}],
    }


class AlertmanagerServer(ScratchServer):
    """A running Alertmanager; deletes its scratch folder (config, notification log) on ``stop()``."""

    @property
    def address(self) -> str:
        """``host:port``: what Prometheus' ``alerting.alertmanagers.static_configs.targets`` takes."""
        return f"{self.host}:{self.port}"

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (``GET /api/v2/alerts``): ``labels``, ``status.state``, ``startsAt``..."""
        if not self.running:
            raise ServelabError(
                f"{self.name} is not running. Last log lines:\n{tail(self.log_path)}",
                "start it again with start_alertmanager(...)",
            )
        try:
            response = httpx.get(f"{self.url}/api/v2/alerts", timeout=10.0)
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise ServelabError(
                f"{self.name} did not answer /api/v2/alerts ({type(err).__name__}: {err})",
                f"check its log: {self.log_path}",
            ) from None
        return list(response.json())

    def wait_discovered(self, prometheus: ManagedServer, timeout_s: float = 30.0, poll_s: float = 0.5) -> float:
        """Wait until ``prometheus`` lists this Alertmanager as active; return the seconds waited.

        Prometheus applies new discovery results (static ones too) at most every 5 s, so for its
        first seconds it knows no Alertmanager, and an alert that fires then is dropped and only
        resent a minute later (``--rules.alert.resend-delay``). Waiting here makes the chain
        deterministic. Raises with what Prometheus lists when ``timeout_s`` passes.
        """
        began = time.perf_counter()
        active: list[str] = []
        while time.perf_counter() - began <= timeout_s:
            try:
                body = httpx.get(f"{prometheus.url}/api/v1/alertmanagers", timeout=5.0).json()
                active = [a.get("url", "") for a in body.get("data", {}).get("activeAlertmanagers", [])]
            except (httpx.HTTPError, ValueError):
                active = []
            if any(f"//{self.address}/" in url for url in active):
                return time.perf_counter() - began
            time.sleep(poll_s)
        raise ServelabError(
            f"{prometheus.name} did not list {self.name} at {self.address} within {timeout_s:.0f} s "
            f"(it lists {active or 'none'})",
            "start Prometheus with start_prometheus(..., alertmanagers=[alertmanager.address])",
        )


def start_alertmanager(
    receiver_url: str,
    group_by: Sequence[str] = ("alertname",),
    group_wait: str = "1s",
    group_interval: str = "2s",
    repeat_interval: str = "1h",
    ready_timeout: float = 30,
    port: int | None = None,
    keep_files: bool = False,
) -> AlertmanagerServer:
    """Start a local Alertmanager that notifies ``receiver_url`` (firing and resolved) and return it, ready.

    Config and storage live in ``results/alertmanager-<port>/`` (deleted on ``stop()`` unless
    ``keep_files``), the log in ``results/logs/``. It listens on loopback only, and its cluster
    (gossip) port is switched off: a single local instance needs no peers, and the default
    ``0.0.0.0:9094`` would clash with a second instance. A config Alertmanager refuses makes it exit,
    and this raises with the log's tail.
    """
    binary = binaries.require("alertmanager")
    config = alertmanager_config(receiver_url, group_by, group_wait, group_interval, repeat_interval)
    port = port or free_port()
    workdir, config_path = scratch_folder(
        "alertmanager", port, "alertmanager.yml", config, "servelab.observe.alertmanager.start_alertmanager"
    )
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    return AlertmanagerServer(
        workdir=workdir,
        config_path=config_path,
        keep_files=keep_files,
        name="Alertmanager",
        command=command,
        port=port,
        log_path=logs_dir() / f"alertmanager-{port}-{int(time.time())}.log",
        ready_path="/-/ready",
    ).launch(ready_timeout)
