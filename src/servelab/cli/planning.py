"""``servelab cost``: $ per 1M tokens and fleet size from a measured throughput."""

from __future__ import annotations

import typer

from servelab.cli.console import console, fail
from servelab.errors import ServelabError


def cost(
    tokens_per_s: float = typer.Option(..., help="measured output tokens/s of one GPU (or one CPU instance)"),
    gpu: str = typer.Option("A100", help="A100, H100, L4, T4 or CPU (prices in data/pricing/gpu_prices.yaml)"),
    spot: bool = typer.Option(False, help="price at the spot rate instead of on-demand"),
    utilization: float = typer.Option(1.0, help="share of paid time the hardware is busy, in (0, 1]"),
    qps: float = typer.Option(None, help="also size a fleet for this many requests/s"),
    tokens_per_request: float = typer.Option(None, help="output tokens per request (with --qps)"),
    prices: str = typer.Option(None, help="another price file (default data/pricing/gpu_prices.yaml)"),
) -> None:
    """$ per 1M tokens = hourly price / (tokens/s x utilization x 3600) x 1e6; with --qps, GPUs needed and $/h."""
    from pathlib import Path

    from servelab.planning import cost as costs

    market: costs.Market = "spot" if spot else "on_demand"
    try:
        offer = costs.load_prices(Path(prices) if prices else None).offer(gpu)
        hourly = offer.usd_per_unit_hour(market)
        per_mtok = costs.usd_per_million_tokens(hourly, tokens_per_s, utilization)
        if (qps is None) != (tokens_per_request is None):
            raise ServelabError("--qps and --tokens-per-request go together.", "pass both, or neither")
        plan = costs.plan_fleet(qps, tokens_per_request, tokens_per_s, hourly, utilization) if qps is not None else None
    except ServelabError as err:
        fail(err)
    quote = offer.spot if spot else offer.on_demand
    console.print(
        f"{gpu} ({offer.instance}, {market.replace('_', '-')}): ${hourly:.4f} per unit-hour "
        f"(source: {quote.source}, as of {quote.as_of or 'undated'})",
        soft_wrap=True,
        markup=False,
    )
    console.print(
        f"{tokens_per_s:g} tok/s at {utilization:.0%} utilization: ${per_mtok:.4f} per 1M tokens", soft_wrap=True
    )
    if plan is not None:
        console.print(
            f"{qps:g} QPS x {tokens_per_request:g} tokens = {plan.tokens_per_s_needed:g} tok/s: "
            f"{plan.units} x {gpu}, ${plan.usd_per_hour:.2f}/h, ${plan.usd_per_million_tokens:.4f} "
            "per 1M tokens served",
            soft_wrap=True,
        )
