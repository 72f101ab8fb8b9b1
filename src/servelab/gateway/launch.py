"""Start the gateway as a managed process, like the engines: own process group, readiness wait with a
timeout, stopped by ``stop()``, ``with``, ``atexit`` or the death of the kernel that started it."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from servelab.gateway.audit import read_audit
from servelab.gateway.config import GatewayConfig, load_config, write_config
from servelab.paths import logs_dir
from servelab.procs import ManagedServer, free_port


class Gateway(ManagedServer):
    """A running gateway process."""

    def __init__(self, config: GatewayConfig, config_path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.config_path = config_path

    @property
    def base_url(self) -> str:
        """The OpenAI API root clients use instead of an engine's."""
        return self.url + "/v1"

    @property
    def admin_url(self) -> str:
        """Where ``/ready`` and ``/metrics`` are: the admin port, not the client one (:mod:`servelab.gateway.app`)."""
        return f"http://{self.host}:{self.config.admin_port}"

    @property
    def audit_path(self) -> Path:
        return Path(self.config.audit_path)

    def audit_lines(self) -> list[dict[str, Any]]:
        """The audit log's lines so far, parsed."""
        return read_audit(self.audit_path)


def start_gateway(
    config: GatewayConfig | Path | str,
    port: int | None = None,
    ready_timeout: float = 30.0,
    log_level: str = "warning",
    admin_port: int | None = None,
) -> Gateway:
    """Write ``config`` next to the logs, with ``admin_port`` (a free port by default, whatever the config
    said), start ``python -m servelab.gateway`` on it and wait until the client port answers ``/health``.

    That is as ready as the admin port's ``/ready``: the client server opens for requests only after
    its start-up ran the first round of replica health checks, and both ports are bound before."""
    if not isinstance(config, GatewayConfig):
        config = load_config(config)
    port = port or free_port()
    admin_port = admin_port or next(p for p in iter(free_port, None) if p != port)
    config = config.model_copy(update={"admin_port": admin_port})
    stamp = int(time.time())
    config_path = write_config(config, logs_dir() / f"gateway-{port}-{stamp}.yaml")
    gateway = Gateway(
        config,
        config_path,
        name="gateway",
        command=[
            sys.executable,
            "-m",
            "servelab.gateway",
            "--config",
            str(config_path),
            "--port",
            str(port),
            "--log-level",
            log_level,
        ],
        port=port,
        log_path=logs_dir() / f"gateway-{port}-{stamp}.log",
        ready_path="/health",
    )
    return gateway.launch(ready_timeout)
