"""servelab.planning.cost: the $/1M tokens formula with hand-computed numbers, the price file's validation, the levers,
the seed's 100 QPS check, and the `servelab cost` CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from servelab.cli import app
from servelab.errors import ServelabError
from servelab.planning import cost

ROOT = Path(__file__).resolve().parents[3]


def test_usd_per_million_tokens_by_hand() -> None:
    # $3.60/h at 1,000 tok/s: 3.6 M tokens/h -> $1.00 per 1M tokens.
    assert cost.usd_per_million_tokens(3.60, 1000) == pytest.approx(1.00)
    # Half the time busy costs twice as much per token.
    assert cost.usd_per_million_tokens(3.60, 1000, utilization=0.5) == pytest.approx(2.00)
    # $2.7447/h at 4,800 tok/s: 2.7447 / (4800 * 3600) * 1e6 = 0.158837...
    assert cost.usd_per_million_tokens(2.7447, 4800) == pytest.approx(0.1588368, rel=1e-6)


@pytest.mark.parametrize("args", [(1.0, 0), (1.0, -5), (1.0, 100, 0), (1.0, 100, 1.5), (-1.0, 100)])
def test_usd_per_million_tokens_refuses_bad_input(args: tuple) -> None:
    with pytest.raises(ServelabError):
        cost.usd_per_million_tokens(*args)


def test_price_file_is_valid_sourced_and_complete() -> None:
    book = cost.load_prices()
    assert {"A100", "H100", "L4", "T4", "CPU"} <= set(book.offers)
    for name, offer in book.offers.items():
        for quote in (offer.on_demand, offer.spot):
            assert quote.usd_per_instance_hour and str(quote.source).startswith("https://"), name
        od, spot = offer.usd_per_unit_hour("on_demand"), offer.usd_per_unit_hour("spot")
        assert 0 < spot < od < 20, name  # per GPU-hour, spot below on-demand
    assert book.offer("a100").instance == "p4d.24xlarge"
    assert book.offer("A100").usd_per_unit_hour() == pytest.approx(21.957642 / 8)


def test_unknown_gpu_lists_the_known_ones() -> None:
    with pytest.raises(ServelabError, match="Unknown GPU 'B200'") as err:
        cost.load_prices().offer("B200")
    assert "A100, H100, L4, T4, CPU" in str(err.value)


def test_a_price_without_a_source_is_refused(tmp_path: Path) -> None:
    doc = yaml.safe_load(cost.prices_path().read_text())
    doc["offers"]["T4"]["spot"]["source"] = None
    bad = tmp_path / "prices.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ServelabError, match=r"offers.T4.spot.*needs a source"):
        cost.load_prices(bad)
    doc["offers"]["T4"]["spot"].update(usd_per_instance_hour=None, note=None)
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ServelabError, match="needs a note"):
        cost.load_prices(bad)


def test_plan_fleet_by_hand() -> None:
    # 100 QPS x 200 tokens = 20,000 tok/s; 4,800 tok/s per GPU at 70% -> 3,360 usable -> ceil(5.95) = 6.
    plan = cost.plan_fleet(100, 200, 4800, 2.0, utilization=0.7)
    assert (plan.tokens_per_s_needed, plan.units, plan.usd_per_hour) == (20_000, 6, 12.0)
    assert plan.usd_per_million_tokens == pytest.approx(12.0 / (20_000 * 3600) * 1e6)
    assert cost.plan_fleet(100, 96, 4800, 2.0).units == 2  # exactly 2 x 4,800 = 9,600 tok/s
    assert cost.plan_fleet(100, 97, 4800, 2.0).units == 3
    assert cost.max_tokens_per_request(100, 2, 4800) == 96


def test_levers_by_hand() -> None:
    rows = [
        {"concurrency": 1, "output_token_throughput": 10.0, "ttft_p50_s": 0.2, "e2e_p50_s": 2.0},
        {"concurrency": 8, "output_token_throughput": 60.0, "ttft_p50_s": 0.9, "e2e_p50_s": 4.0},
        {"concurrency": 16, "output_token_throughput": 50.0, "ttft_p50_s": 2.0, "e2e_p50_s": 9.0},
    ]
    assert cost.batching_lever(rows, "test").factor == pytest.approx(1 / 6)  # best C, not the last
    assert cost.prefill_share(rows) == pytest.approx(0.1)
    assert cost.prefix_cache_lever(0.5, 0.1, "test").factor == pytest.approx(0.95)
    assert cost.exact_cache_lever(0.3).saving == pytest.approx(0.3)
    quant = [
        {"level": "F16", "file_mib": 270.0, "decode_tok_s": 20.0},
        {"level": "Q4_K_M", "file_mib": 100.0, "decode_tok_s": 50.0},
    ]
    lever = cost.quantization_lever(quant, "Q4_K_M", "test")
    assert lever.factor == pytest.approx(0.4) and "63% smaller" in lever.basis
    with pytest.raises(ServelabError, match="use one of: F16, Q4_K_M"):
        cost.quantization_lever(quant, "Q2_K", "test")
    a100 = cost.load_prices().offer("A100")
    ratio = a100.usd_per_unit_hour("spot") / a100.usd_per_unit_hour("on_demand")
    assert cost.spot_lever(a100, 0.10).factor == pytest.approx(ratio * 1.1)


def test_waterfall_multiplies_steps() -> None:
    levers = [cost.Lever("a", 0.5, ""), cost.Lever("b", 0.8, ""), cost.Lever("c", 1.0, "")]
    frame = cost.waterfall(10.0, levers)
    assert frame["usd_per_mtok_after"].tolist() == pytest.approx([5.0, 4.0, 4.0])
    assert frame["saved_usd_per_mtok"].tolist() == pytest.approx([5.0, 1.0, 0.0])
    assert frame["cumulative_saving"].iloc[-1] == pytest.approx(0.6)


def test_seed_100qps_example_is_checked_not_repeated() -> None:
    claims = cost.load_seed_claims()
    check = cost.check_seed_example(claims.example, cost.load_prices(), 4800, 200, 0.7).set_index("claim")
    price = check.loc["price of one A100-hour"]
    assert price["seed"] == "$40.00" and not price["holds"]  # $400 / 10 vs ~$2.74 cited
    assert check.loc["A100s for 100 QPS", "recomputed"] == "6" and not check.loc["A100s for 100 QPS", "holds"]
    assert check.loc["saving vs 10 A100", "recomputed"] == "40%"
    short = cost.check_seed_example(claims.example, cost.load_prices(), 4800, 64, 1.0).set_index("claim")
    assert short.loc["A100s for 100 QPS", "holds"] and short.loc["saving vs 10 A100", "holds"]


def test_cli_cost_prints_price_source_and_fleet() -> None:
    result = CliRunner().invoke(
        app,
        [
            "cost",
            "--gpu",
            "A100",
            "--tokens-per-s",
            "4800",
            "--qps",
            "100",
            "--tokens-per-request",
            "200",
            "--utilization",
            "0.7",
        ],
    )
    assert result.exit_code == 0, result.output
    expected = cost.usd_per_million_tokens(21.957642 / 8, 4800, 0.7)
    assert f"${expected:.4f} per 1M tokens" in result.output
    assert "p4d.24xlarge" in result.output and "hyperscalers.json" in result.output
    assert "6 x A100" in result.output and "$16.47/h" in result.output


def test_cli_cost_spot_and_errors() -> None:
    runner = CliRunner()
    spot = runner.invoke(app, ["cost", "--gpu", "t4", "--tokens-per-s", "100", "--spot"])
    assert spot.exit_code == 0 and "spot" in spot.output
    assert f"${cost.usd_per_million_tokens(0.1841, 100):.4f}" in spot.output
    unknown = runner.invoke(app, ["cost", "--gpu", "B200", "--tokens-per-s", "100"])
    assert unknown.exit_code == 1 and "Unknown GPU 'B200'" in unknown.output
    assert "A100, H100, L4, T4, CPU" in unknown.output
    half = runner.invoke(app, ["cost", "--tokens-per-s", "100", "--qps", "5"])
    assert half.exit_code == 1 and "go together" in half.output
    zero = runner.invoke(app, ["cost", "--tokens-per-s", "0"])
    assert zero.exit_code == 1 and "must be > 0" in zero.output


def test_prefix_cache_lever_says_when_its_figures_come_from_two_workloads() -> None:
    rows = [{"concurrency": 1, "ttft_p50_s": 0.1, "e2e_p50_s": 1.0}]
    same = cost.prefix_cache_lever_from_results(
        {"prefix_cache_hit_rate": 0.5, "prefix_prefill_share": 0.4}, rows, "nb04", "nb05"
    )
    assert same.factor == pytest.approx(0.8) and "two different workloads" not in same.basis
    mixed = cost.prefix_cache_lever_from_results({"prefix_cache_hit_rate": 0.5}, rows, "nb04", "nb05")
    assert mixed.factor == pytest.approx(0.95) and "two different workloads" in mixed.basis


def test_spot_lever_states_the_dates_of_both_prices() -> None:
    a100 = cost.load_prices().offer("A100")
    basis = cost.spot_lever(a100, 0.1).basis
    assert "on-demand" in basis and "spot" in basis
    if a100.on_demand.source != a100.spot.source and a100.on_demand.as_of != a100.spot.as_of:
        assert "not known to be of the same date" in basis
    l4 = cost.load_prices().offer("L4")  # both prices from one snapshot
    assert "one snapshot" in l4.price_dates() and "not known" not in l4.price_dates()


def test_quantization_lever_says_it_is_not_the_seeds_comparison() -> None:
    quant = [
        {"level": "F16", "decode_tok_s": 10.0, "file_mib": 100.0},
        {"level": "Q4_K_M", "decode_tok_s": 20.0, "file_mib": 40.0},
    ]
    assert "format, hardware and batching all differ" in cost.quantization_lever(quant, "Q4_K_M", "t").basis
