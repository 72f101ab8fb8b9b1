"""``servelab engine`` and ``servelab same-model``: run an engine, compare both, find leftovers."""

from __future__ import annotations

import signal
import sys
import time
from typing import cast

import typer
from rich.table import Table

from servelab.cli.console import console, fail
from servelab.errors import ServelabError

app = typer.Typer(help="Start engines and find leftovers.", no_args_is_help=True)


@app.command("start")
def engine_start(
    kind: str = typer.Argument(..., help="vllm, llamacpp (llama-cpp-python's server) or llama-server (native)"),
    port: int = typer.Option(0, help="0 picks a free port"),
    device: str = typer.Option("auto", help="vLLM only: auto, cpu or cuda"),
    ready_timeout: float = typer.Option(600.0, help="seconds to wait for readiness"),
) -> None:
    """Start an engine in the foreground and keep it serving until Ctrl-C."""
    from servelab.engines.kinds import EngineKind
    from servelab.engines.launch import start_engine

    extra = {"device": device} if kind == "vllm" else {}
    # Typer hands over any string; start_engine rejects a name that is not an EngineKind (ServelabError).
    engine_kind = cast("EngineKind", kind)
    try:
        with start_engine(engine_kind, port=port or None, ready_timeout=ready_timeout, **extra) as engine:
            console.print(
                f"[green]{engine.name}[/green] ready in {engine.ready_seconds:.0f} s at "
                f"{engine.base_url} (model {engine.served_model!r}); log: {engine.log_path}"
            )
            console.print("Ctrl-C stops it.")
            # Explicit handlers: a process started in the background may inherit SIGINT as ignored.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while engine.running:
                time.sleep(1)
    except ServelabError as err:
        fail(err)
    except KeyboardInterrupt:
        console.print("stopped")


@app.command("leftovers")
def engine_leftovers(kill: bool = typer.Option(False, help="stop them too")) -> None:
    """List (and with --kill stop) server processes the kit started that are still running; exit 1 if any."""
    from servelab.procs import leftover_processes, stop_processes

    found = leftover_processes()
    for proc in found:
        console.print(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
    if kill:
        stop_processes(found)
    if found and not kill:
        raise typer.Exit(1)
    if not found:
        console.print("no servelab server processes running")


def stop() -> None:
    """Stop every server the kit started on this machine, from any notebook or terminal: engines, Prometheus,
    Alertmanager, gateways (SIGTERM, then SIGKILL after 10 s). A notebook's own: servelab.procs.stop_all()."""
    engine_leftovers(kill=True)


def same_model() -> None:
    """Start both engines (llama.cpp's native llama-server, as notebook 00 does, and vLLM) and compare their
    greedy first tokens on the kit's fixed prompts."""
    from servelab.engines import agreement
    from servelab.engines.launch import start_llama_server, start_vllm

    try:
        with start_llama_server() as llama, start_vllm() as vllm:
            rows = agreement.compare(llama, vllm)
    except ServelabError as err:
        fail(err)
    table = Table("prompt", "llama-server", "vLLM", "same")
    for r in rows:
        table.add_row(r.prompt, repr(r.first), repr(r.second), "yes" if r.first_token_agrees else "no")
    console.print(table)
    console.print(f"first-token agreement: {agreement.agreement_rate(rows):.0%}")
