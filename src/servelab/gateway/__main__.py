"""``python -m servelab.gateway --config FILE``: run the gateway in the foreground with uvicorn.

This is the command the Kubernetes Deployment runs and the one :func:`servelab.gateway.launch.start_gateway`
starts as a managed process. ``servelab gateway serve`` is the same thing from the kit's CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys

from servelab.errors import ServelabError

# Seconds uvicorn gives open requests to finish after SIGTERM. Kubernetes' grace period (30 s in
# manifests/gateway) must be longer, or the kubelet SIGKILLs the pod mid-request.
GRACEFUL_SHUTDOWN_S = 20


def serve(config_path: str, host: str = "127.0.0.1", port: int = 8080, log_level: str = "warning") -> None:
    """Load the config (failing with a clear message) and serve the client port and the admin port
    (``admin_port`` in the config) until SIGTERM or Ctrl-C."""
    from servelab.gateway import server
    from servelab.gateway.app import create_apps
    from servelab.gateway.config import load_config

    config = load_config(config_path)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server.serve(create_apps(config), config, host, port, log_level, GRACEFUL_SHUTDOWN_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="gateway YAML (see data/gateway/config.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    parser.add_argument("--port", type=int, default=8080, help="the client port (the admin port is in the config)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        serve(args.config, args.host, args.port, args.log_level)
    except ServelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
