"""``servelab model``: prepare the kit's model and say where its files are (no hub needed)."""

from __future__ import annotations

import typer

from servelab.cli.console import console, fail
from servelab.errors import ServelabError

app = typer.Typer(help="The kit's model (no hub needed).", no_args_is_help=True)


@app.command("prepare")
def model_prepare(force: bool = typer.Option(False, help="convert again even if cached")) -> None:
    """Convert the shipped GGUF into the float32 HF directory vLLM loads (once; then cached)."""
    from servelab.engines import model

    try:
        path = model.prepare_hf_model(force=force)
    except ServelabError as err:
        fail(err)
    console.print(f"[green]ready:[/green] {path}")


@app.command("info")
def model_info() -> None:
    """Where the model files are."""
    from servelab.engines import model

    try:
        console.print(f"GGUF (llama.cpp): {model.gguf_path()}")
    except ServelabError as err:
        fail(err)
    state = "prepared" if model.is_prepared() else f"not prepared: run {model.PREPARE_COMMAND}"
    console.print(f"HF dir (vLLM):    {model.hf_dir()} ({state})")
