"""What serving costs, from cited prices and measured throughput: $/1M tokens, the levers, the seed's example.

One formula carries everything: ``$ per 1M tokens = hourly price / (tokens/s x utilization x 3600) x 1e6``.
Prices come from ``data/pricing/gpu_prices.yaml`` (each with its source and date, validated here);
throughput comes from the results earlier notebooks measured (or, run alone, from the kit's shipped
reference results, always labelled as such). Each cost lever is a factor on $/1M tokens with the
measurement or parameter it rests on, so a claim such as "spot saves 70%" becomes a calculation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, PositiveFloat, PositiveInt, ValidationError, model_validator

from servelab.errors import ServelabError
from servelab.paths import data_path, repo_root

Market = Literal["on_demand", "spot"]


def prices_path() -> Path:
    return data_path("pricing", "gpu_prices.yaml")


def seed_claims_path() -> Path:
    return data_path("pricing", "seed_cost_claims.yaml")


class PriceQuote(BaseModel):
    """One price with its provenance; a price without a source is refused, a missing price must say why."""

    model_config = ConfigDict(extra="forbid")
    usd_per_instance_hour: PositiveFloat | None
    source: HttpUrl | None
    as_of: date | None
    retrieved: date
    note: str | None = None

    @model_validator(mode="after")
    def _sourced(self) -> PriceQuote:
        if self.usd_per_instance_hour is not None and self.source is None:
            raise ValueError("a price needs a source URL")
        if self.source is None and not self.note:
            raise ValueError("a price without a source needs a note saying why")
        return self


class Offer(BaseModel):
    """An instance type that provides ``units_per_instance`` accelerators (or one CPU instance)."""

    model_config = ConfigDict(extra="forbid")
    description: str
    provider: str
    instance: str
    region: str
    units_per_instance: PositiveInt
    on_demand: PriceQuote
    spot: PriceQuote

    def usd_per_unit_hour(self, market: Market = "on_demand") -> float:
        """Price of one GPU (or one CPU instance) for an hour."""
        quote = self.spot if market == "spot" else self.on_demand
        if quote.usd_per_instance_hour is None:
            raise ServelabError(
                f"No {market} price for {self.instance}: {quote.note}",
                "add a sourced price to data/pricing/gpu_prices.yaml",
            )
        return quote.usd_per_instance_hour / self.units_per_instance

    def price_dates(self) -> str:
        """When each of the two prices held, and whether they can be compared as of one date."""

        def when(quote: PriceQuote) -> str:
            return f"as of {quote.as_of}" if quote.as_of else f"undated (read {quote.retrieved})"

        text = f"on-demand {when(self.on_demand)}, spot {when(self.spot)}"
        same_snapshot = self.on_demand.source is not None and self.on_demand.source == self.spot.source
        same_date = self.on_demand.as_of is not None and self.on_demand.as_of == self.spot.as_of
        if same_snapshot and not same_date:
            text += " (one snapshot, so of one date)"
        elif not same_date:
            text += ": not known to be of the same date, so their ratio mixes two moments of the market"
        return text


class PriceBook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: Literal["USD"]
    offers: dict[str, Offer]

    def offer(self, name: str) -> Offer:
        """The offer for ``name`` (A100, H100, L4, T4, CPU; any case); an unknown name lists the known ones."""
        for key, offer in self.offers.items():
            if key.lower() == name.strip().lower():
                return offer
        raise ServelabError(
            f"Unknown GPU {name!r}: no price for it in {prices_path().relative_to(repo_root())}.",
            f"use one of: {', '.join(self.offers)}",
        )

    def table(self) -> pd.DataFrame:
        """Per-unit hourly prices, with the spot discount and the sources, one row per offer."""
        rows = []
        for name, o in self.offers.items():
            od, spot = o.usd_per_unit_hour("on_demand"), o.usd_per_unit_hour("spot")
            rows.append(
                {
                    "unit": name,
                    "instance": o.instance,
                    "units_per_instance": o.units_per_instance,
                    "on_demand_usd_per_unit_hour": od,
                    "spot_usd_per_unit_hour": spot,
                    "spot_discount": 1 - spot / od,
                    "on_demand_source": str(o.on_demand.source),
                    "on_demand_as_of": o.on_demand.as_of,
                    "on_demand_retrieved": o.on_demand.retrieved,
                    "spot_source": str(o.spot.source),
                    "spot_as_of": o.spot.as_of,
                    "spot_retrieved": o.spot.retrieved,
                }
            )
        return pd.DataFrame(rows)


def load_prices(path: Path | None = None) -> PriceBook:
    """Read and validate the price file; a malformed or unsourced entry is an error that names it."""
    path = path or prices_path()
    if not path.is_file():
        raise ServelabError(f"No price file at {path}.", "restore data/pricing/gpu_prices.yaml from the repository")
    try:
        return PriceBook.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ServelabError(
            f"{path} is not a valid price file: {problems}",
            "fix the entries named (see the header comment of the file)",
        ) from None


def usd_per_million_tokens(usd_per_hour: float, tokens_per_s: float, utilization: float = 1.0) -> float:
    """``hourly price / (tokens/s x utilization x 3600) x 1e6``: what a million generated tokens cost when
    the hardware does ``tokens_per_s`` while busy and is busy ``utilization`` of the time it is paid for."""
    if tokens_per_s <= 0:
        raise ServelabError(f"Throughput {tokens_per_s} tokens/s must be > 0.", "pass a measured throughput")
    if not 0 < utilization <= 1:
        raise ServelabError(f"Utilization {utilization} must be in (0, 1].", "e.g. 0.6 for 60% busy on average")
    if usd_per_hour < 0:
        raise ServelabError(f"Price {usd_per_hour} $/h must be >= 0.", "pass an hourly price")
    return usd_per_hour / (tokens_per_s * utilization * 3600) * 1e6


@dataclass(frozen=True)
class FleetPlan:
    """How many units serve ``qps`` requests of ``tokens_per_request`` tokens, and what that costs."""

    qps: float
    tokens_per_request: float
    tokens_per_s_needed: float
    tokens_per_s_per_unit: float
    utilization: float
    units: int
    usd_per_unit_hour: float

    @property
    def usd_per_hour(self) -> float:
        return self.units * self.usd_per_unit_hour

    @property
    def usd_per_million_tokens(self) -> float:
        """Cost per token actually served (the fleet is paid for whether or not it is busy)."""
        return usd_per_million_tokens(self.usd_per_hour, self.tokens_per_s_needed)


def plan_fleet(
    qps: float,
    tokens_per_request: float,
    tokens_per_s_per_unit: float,
    usd_per_unit_hour: float,
    utilization: float = 1.0,
) -> FleetPlan:
    """Units needed so that demand stays at or below ``utilization`` of their combined throughput."""
    if qps <= 0 or tokens_per_request <= 0:
        raise ServelabError("qps and tokens per request must be > 0.", "e.g. --qps 100 --tokens-per-request 200")
    usd_per_million_tokens(usd_per_unit_hour, tokens_per_s_per_unit, utilization)  # validates the inputs
    needed = qps * tokens_per_request
    units = max(1, math.ceil(needed / (tokens_per_s_per_unit * utilization) - 1e-9))
    return FleetPlan(qps, tokens_per_request, needed, tokens_per_s_per_unit, utilization, units, usd_per_unit_hour)


def max_tokens_per_request(qps: float, units: int, tokens_per_s_per_unit: float, utilization: float = 1.0) -> float:
    """The longest answers ``units`` can give ``qps`` requests at ``utilization``: when does a fleet suffice?"""
    return units * tokens_per_s_per_unit * utilization / qps


# ---- Levers: factors on $/1M tokens, each from a measurement or a stated parameter ----


@dataclass(frozen=True)
class Lever:
    name: str
    factor: float  # new cost / old cost
    basis: str  # what the factor rests on (measured where, or a parameter)
    claim: SeedLeverClaim | None = None  # what the seed claims for the same lever

    @property
    def saving(self) -> float:
        return 1 - self.factor


def batching_lever(closed_rows: Sequence[dict], source: str) -> Lever:
    """One user at a time vs the best measured concurrency: output tokens/s, C=1 vs max (notebook 05)."""
    rows = sorted(closed_rows, key=lambda r: r["concurrency"])
    single, best = rows[0], max(rows, key=lambda r: r["output_token_throughput"])
    speedup = best["output_token_throughput"] / single["output_token_throughput"]
    return Lever(
        "continuous batching",
        1 / speedup,
        f"{single['output_token_throughput']:.1f} tok/s at C={single['concurrency']} -> "
        f"{best['output_token_throughput']:.1f} tok/s at C={best['concurrency']} (x{speedup:.1f}; {source})",
        seed_lever_claim("batching"),
    )


def quantization_lever(rows: Sequence[dict], level: str, source: str, baseline: str = "F16") -> Lever:
    """Single-stream decode tokens/s of ``level`` vs ``baseline`` (notebook 04's llama.cpp ladder); the file
    size saving is reported beside it, because memory saved is not money saved unless throughput follows."""
    by_level = {r["level"]: r for r in rows}
    for name in (level, baseline):
        if name not in by_level:
            raise ServelabError(f"No quantization level {name!r} in the results.", f"use one of: {', '.join(by_level)}")
    base, quant = by_level[baseline], by_level[level]
    speedup = quant["decode_tok_s"] / base["decode_tok_s"]
    size_saving = 1 - quant["file_mib"] / base["file_mib"]
    return Lever(
        f"quantization {baseline}->{level}",
        1 / speedup,
        f"decode {base['decode_tok_s']:.1f} -> {quant['decode_tok_s']:.1f} tok/s (x{speedup:.2f}); "
        f"file {base['file_mib']:.0f} -> {quant['file_mib']:.0f} MiB ({size_saving:.0%} smaller; {source}). "
        "Not the seed's comparison: this is GGUF on llama.cpp, one stream on a CPU; the seed's INT8 figure is "
        "vLLM on an A100, batched, so format, hardware and batching all differ",
        seed_lever_claim("quantization"),
    )


def spot_lever(offer: Offer, interruption_overhead: float) -> Lever:
    """Spot/on-demand price ratio, plus ``interruption_overhead`` extra capacity (a parameter: replacement
    pods loading the model, requests retried, spare replicas kept for reclaim notices)."""
    if interruption_overhead < 0:
        raise ServelabError("Interruption overhead must be >= 0.", "e.g. 0.15 for 15% extra capacity")
    ratio = offer.usd_per_unit_hour("spot") / offer.usd_per_unit_hour("on_demand")
    return Lever(
        "spot instances",
        ratio * (1 + interruption_overhead),
        f"{offer.instance} spot/on-demand {ratio:.2f} x (1 + {interruption_overhead:.0%} for interruptions); "
        f"{offer.price_dates()}",
        seed_lever_claim("spot"),
    )


def prefix_cache_lever(hit_rate: float, prefill_share: float, source: str, share_source: str | None = None) -> Lever:
    """A prefix-cache hit skips prefill work only: saving = hit rate x prefill's share of GPU time.

    Both figures should come from one workload (the hit rate depends on how much of each prompt is shared,
    the prefill share on prompt and answer lengths). ``share_source`` names where the prefill share came
    from when that is not ``source``, and the basis then says the product mixes two workloads."""
    if not (0 <= hit_rate <= 1 and 0 <= prefill_share <= 1):
        raise ServelabError("Hit rate and prefill share must be in [0, 1].", "pass shares, not percentages")
    where = (
        f"both from {source}'s shared-prefix workload"
        if share_source is None
        else f"hit rate from {source}, prefill share from {share_source}: two different workloads, "
        "so the product is only indicative"
    )
    return Lever(
        "prefix caching",
        1 - hit_rate * prefill_share,
        f"hit rate {hit_rate:.0%} x prefill share {prefill_share:.0%} of a request's time ({where})",
        seed_lever_claim("cache"),
    )


def prefix_cache_lever_from_results(
    quant: dict, closed_rows: Sequence[dict], quant_label: str, bench_label: str
) -> Lever:
    """The prefix-cache lever from notebook 04's results: hit rate and prefill share of its own shared-prefix
    workload. Results written before notebook 04 recorded that share fall back to notebook 05's (a different
    workload), and the lever's basis says so."""
    share = quant.get("prefix_prefill_share")
    if share is not None:
        return prefix_cache_lever(quant["prefix_cache_hit_rate"], share, quant_label)
    return prefix_cache_lever(quant["prefix_cache_hit_rate"], prefill_share(closed_rows), quant_label, bench_label)


def exact_cache_lever(hit_rate: float) -> Lever:
    """An exact-response cache answers ``hit_rate`` of requests without the model (a parameter: it depends
    entirely on how often users send identical requests)."""
    if not 0 <= hit_rate < 1:
        raise ServelabError("Exact-cache hit rate must be in [0, 1).", "e.g. 0.05")
    return Lever(
        "exact-response cache", 1 - hit_rate, f"hit rate {hit_rate:.0%} (parameter)", seed_lever_claim("cache")
    )


def prefill_share(closed_rows: Sequence[dict]) -> float:
    """Share of a lone request's time spent before its first token (TTFT / E2E at C=1): the part a prefix
    cache can remove."""
    single = min(closed_rows, key=lambda r: r["concurrency"])
    return single["ttft_p50_s"] / single["e2e_p50_s"]


def waterfall(baseline_usd_per_mtok: float, levers: Sequence[Lever]) -> pd.DataFrame:
    """Apply the levers one after another (they multiply); one row per step with what it saved."""
    rows, cost = [], baseline_usd_per_mtok
    for lever in levers:
        after = cost * lever.factor
        rows.append(
            {
                "step": lever.name,
                "factor": lever.factor,
                "usd_per_mtok_before": cost,
                "usd_per_mtok_after": after,
                "saved_usd_per_mtok": cost - after,
                "step_saving": lever.saving,
                "basis": lever.basis,
                "seed_claim": lever.claim.quote if lever.claim else "",
                "seed_saving": lever.claim.saving if lever.claim else None,
            }
        )
        cost = after
    frame = pd.DataFrame(rows)
    frame["cumulative_saving"] = 1 - frame["usd_per_mtok_after"] / baseline_usd_per_mtok
    return frame


# ---- The seed's 100 QPS example ----


class SeedExample(BaseModel):
    original: str
    qps: PositiveFloat
    gpu: str
    before: dict[str, float]
    after: dict[str, float]
    saving: float


class SeedLeverClaim(BaseModel):
    """One cost lever as the seed states it: its words, their translation, the saving as a number."""

    original: str
    quote: str
    saving: float = Field(ge=0, lt=1)


class SeedCostClaims(BaseModel):
    source: str
    levers: dict[str, SeedLeverClaim]
    example: SeedExample = Field(alias="example_100qps")


def load_seed_claims(path: Path | None = None) -> SeedCostClaims:
    path = path or seed_claims_path()
    return SeedCostClaims.model_validate(yaml.safe_load(path.read_text()))


@functools.cache
def seed_claims() -> SeedCostClaims:
    """The kit's own seed claims file, read once per process (the levers and the ledger ask often)."""
    return load_seed_claims()


def seed_lever_claim(lever: str) -> SeedLeverClaim:
    """What the seed claims for ``lever`` (spot, batching, quantization, cache), from its data file."""
    claims = seed_claims().levers
    if lever not in claims:
        raise ServelabError(f"The seed states no claim for {lever!r}.", f"use one of: {', '.join(claims)}")
    return claims[lever]


def check_seed_example(
    example: SeedExample, book: PriceBook, tokens_per_s_per_gpu: float, tokens_per_request: float, utilization: float
) -> pd.DataFrame:
    """Each number of "10 A100 = $400/h -> 2 A100 = $80/h, 80% saved" next to a recomputation with stated
    inputs (cited price, the seed's own per-A100 throughput, tokens per request, utilization), and whether
    it holds (within 25%, or 5 points for the saving)."""
    offer = book.offer(example.gpu)
    od, spot = offer.usd_per_unit_hour("on_demand"), offer.usd_per_unit_hour("spot")
    before_gpus, after_gpus = int(example.before["gpus"]), int(example.after["gpus"])
    claimed_price = example.before["usd_per_hour"] / before_gpus
    plan = plan_fleet(example.qps, tokens_per_request, tokens_per_s_per_gpu, od, utilization)
    longest = max_tokens_per_request(example.qps, after_gpus, tokens_per_s_per_gpu, utilization)
    saving = 1 - plan.units / before_gpus
    rows = [
        (
            "price of one A100-hour",
            f"${claimed_price:.2f}",
            f"${od:.2f} on-demand, ${spot:.2f} spot ({offer.instance})",
            math.isclose(claimed_price, od, rel_tol=0.25),
            f"the seed's price is {claimed_price / od:.1f}x the cited one",
        ),
        (
            f"{before_gpus} A100 per hour",
            f"${example.before['usd_per_hour']:.0f}",
            f"${before_gpus * od:.2f}",
            math.isclose(example.before["usd_per_hour"], before_gpus * od, rel_tol=0.25),
            "same count, cited price",
        ),
        (
            f"A100s for {example.qps:.0f} QPS",
            f"{after_gpus}",
            f"{plan.units}",
            plan.units <= after_gpus,
            f"{tokens_per_request:.0f} tokens/request at {tokens_per_s_per_gpu:.0f} tok/s per A100 (the seed's table)"
            f" and {utilization:.0%} utilization; {after_gpus} A100 suffice only up to {longest:.0f} tokens/request",
        ),
        (
            "that fleet per hour",
            f"${example.after['usd_per_hour']:.0f}",
            f"${plan.usd_per_hour:.2f}",
            math.isclose(example.after["usd_per_hour"], plan.usd_per_hour, rel_tol=0.25),
            f"{plan.units} x ${od:.2f}; ${plan.usd_per_million_tokens:.2f} per 1M tokens served",
        ),
        (
            f"saving vs {before_gpus} A100",
            f"{example.saving:.0%}",
            f"{saving:.0%}",
            abs(saving - example.saving) <= 0.05,
            f"1 - {plan.units}/{before_gpus}; the percentage does not depend on the price, so it can hold while the "
            "dollar figures do not",
        ),
    ]
    return pd.DataFrame(rows, columns=["claim", "seed", "recomputed", "holds", "why"])
