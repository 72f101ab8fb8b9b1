"""``servelab gateway``: run the API gateway and hash its keys."""

from __future__ import annotations

import typer

from servelab.cli.console import console, fail
from servelab.errors import ServelabError

app = typer.Typer(
    help="The API gateway: keys, rate limits, timeouts, failover, audit log (notebook 08).", no_args_is_help=True
)


@app.command("serve")
def gateway_serve(
    config: str = typer.Option("data/gateway/config.yaml", help="gateway YAML"),
    host: str = typer.Option("127.0.0.1", help="0.0.0.0 to accept connections from other machines"),
    port: int = typer.Option(8080),
    log_level: str = typer.Option("warning"),
) -> None:
    """Run the gateway in the foreground until Ctrl-C."""
    from servelab.gateway.__main__ import serve

    try:
        serve(config, host, port, log_level)
    except ServelabError as err:
        fail(err)


@app.command("hash-key")
def gateway_hash_key(key: str = typer.Argument(..., help="the raw API key")) -> None:
    """Print the SHA-256 hash a gateway config stores for KEY (configs never hold raw keys)."""
    from servelab.gateway.config import hash_key

    console.print(hash_key(key), markup=False)
