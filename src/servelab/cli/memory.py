"""``servelab quantize``: notebook 04's GGUF ladder from the terminal."""

from __future__ import annotations

import typer

from servelab.cli.console import console, fail
from servelab.errors import ServelabError


def quantize(
    levels: list[str] = typer.Argument(None, help="GGUF levels, e.g. Q8_0 Q4_K_M (default: the quick ladder)"),
    measure: bool = typer.Option(True, help="also measure size, RAM, speed and perplexity of each level"),
    threads: int = typer.Option(2, help="llama.cpp threads"),
) -> None:
    """Make the GGUF quantization ladder of notebook 04 (cached) and measure each level in a fresh process."""
    from servelab.memory import quantize as quant
    from servelab.paths import data_path

    try:
        ladder = quant.build_ladder(levels or list(quant.QUICK_LADDER), threads=threads)
        for level, info in ladder.items():
            made = "cached" if info["cached"] else f"made in {info['seconds']} s"
            line = f"{level}: {info['path']} ({made})"
            if measure:
                m = quant.measure_level(level, str(info["path"]), data_path("text", "heldout.txt"), threads=threads)
                line += (
                    f"  {m.file_mib} MiB, {m.bits_per_weight} bits/weight (mostly {m.main_type}), RSS {m.rss_mib} MiB, "
                    f"prompt {m.prompt_tok_s} tok/s, decode {m.decode_tok_s} tok/s, perplexity {m.perplexity}"
                )
            console.print(line, soft_wrap=True, markup=False)
    except ServelabError as err:
        fail(err)
