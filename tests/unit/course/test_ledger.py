"""The claims ledger holds every claim of the seed, each pointing at a cell that exists and at evidence
that resolves. Each test can fail: the copies in tmp_path break the file the way an edit elsewhere would
(a renamed cell, a retyped quote, a status nobody defined, a results key that moved)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from servelab.course import ledger, seed, seed_figures
from servelab.errors import ServelabError
from servelab.paths import repo_root


@pytest.fixture(scope="module")
def claims() -> ledger.ClaimsFile:
    return ledger.load_claims()


@pytest.fixture(scope="module")
def book(claims: ledger.ClaimsFile) -> ledger.Ledger:
    return ledger.build(claims, reference_only=True)


def _copy(tmp_path: Path, edit: Callable[[dict], object]) -> Path:
    raw = yaml.safe_load(ledger.claims_path().read_text(encoding="utf-8"))
    edit(raw)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _claim(raw: dict, claim_id: str) -> dict:
    return next(c for c in raw["claims"] if c["id"] == claim_id)


# --- the file ---------------------------------------------------------------------------------------


def test_claim_ids_are_unique_and_a_duplicate_is_refused(claims: ledger.ClaimsFile, tmp_path: Path) -> None:
    ids = [c.id for c in claims.claims]
    assert len(ids) == len(set(ids))
    path = _copy(tmp_path, lambda raw: raw["claims"].append(dict(raw["claims"][0])))
    with pytest.raises(ServelabError, match=f"{ids[0]!r} is used twice"):
        ledger.load_claims(path)


def test_statuses_and_kinds_are_from_the_allowed_sets(claims: ledger.ClaimsFile, tmp_path: Path) -> None:
    assert {c.status for c in claims.claims} <= set(ledger.STATUSES)
    assert {c.kind for c in claims.claims} >= set(ledger.TABLE_KINDS)
    path = _copy(tmp_path, lambda raw: _claim(raw, "manifest-no-selector").update(status="proven"))
    with pytest.raises(ServelabError, match=r"status.*'manifest-no-selector'"):
        ledger.load_claims(path)


def test_evidence_names_exactly_one_kind_and_a_known_computation(tmp_path: Path) -> None:
    both = _copy(tmp_path, lambda raw: _claim(raw, "cost-spot-saving")["evidence"][0].update(cite="data/x.yaml"))
    with pytest.raises(ServelabError, match="exactly one of result, cite, computed"):
        ledger.load_claims(both)
    unknown = _copy(tmp_path, lambda raw: _claim(raw, "cost-spot-saving")["evidence"][0].update(computed="guess"))
    with pytest.raises(ServelabError, match="unknown computed figure 'guess'"):
        ledger.load_claims(unknown)


# --- every claim has a row, every row a cell ----------------------------------------------------------


def test_every_claim_in_the_file_has_a_ledger_row(claims: ledger.ClaimsFile, book: ledger.Ledger) -> None:
    assert [r.claim.id for r in book.rows] == [c.id for c in claims.claims]
    frame = book.frame()
    assert list(frame["id"]) == [c.id for c in claims.claims] and frame["evidence"].str.len().min() > 0
    markdown = book.markdown()
    assert all(f"`{c.id}`" in markdown for c in claims.claims)
    assert sum(book.counts().values()) == len(claims.claims) and list(book.counts()) == list(ledger.STATUSES)


def test_every_shown_in_cell_exists(claims: ledger.ClaimsFile) -> None:
    assert ledger.missing_cells(claims) == []


def test_a_claim_pointing_at_a_bogus_cell_fails(tmp_path: Path) -> None:
    path = _copy(tmp_path, lambda raw: _claim(raw, "cost-example-before")["shown_in"].update(cell="deadbeef"))
    problems = ledger.missing_cells(ledger.load_claims(path))
    assert problems == ["cost-example-before: no cell 'deadbeef' in 07_autoscaling_cost"]


def test_a_renamed_notebook_cell_fails(claims: ledger.ClaimsFile, tmp_path: Path) -> None:
    """The same claims, against a copy of the notebooks where one cell got a new id."""
    for folder in ("notebooks", "labs"):
        (tmp_path / folder).mkdir()
        for nb in (repo_root() / folder).glob("*.ipynb"):
            shutil.copy(nb, tmp_path / folder / nb.name)
    target = next(c for c in claims.claims if c.id == "manifest-no-selector").shown_in
    path = tmp_path / "notebooks" / f"{target.notebook}.ipynb"
    notebook = json.loads(path.read_text(encoding="utf-8"))
    next(c for c in notebook["cells"] if c["id"] == target.cell)["id"] = "renamed0"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    problems = ledger.missing_cells(claims, root=tmp_path)
    assert {p.split(":")[0] for p in problems} == {
        c.id for c in claims.claims if (c.shown_in.notebook, c.shown_in.cell) == (target.notebook, target.cell)
    }


# --- the seed: every table cell covered, every quote verbatim -----------------------------------------


def test_every_cell_of_the_seeds_three_tables_is_covered_by_a_claim(claims: ledger.ClaimsFile) -> None:
    assert ledger.table_coverage_problems(claims) == []
    # The same, independently: match on the original text of a claim that locates the cell.
    for kind, index in ledger.TABLE_KINDS.items():
        table = seed.tables()[index]
        assert table, f"the seed's {kind} is empty"
        for row in table:
            key, *columns = list(row)
            for column in columns:
                assert any(
                    c.kind == kind
                    and any(cell.row == row[key] and cell.column == column for cell in c.cells)
                    and row[column] in c.original
                    for c in claims.claims
                ), f"no claim quotes {kind} cell {row[key]} / {column}: {row[column]!r}"


def test_a_table_claim_pointing_at_a_missing_cell_fails(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        _claim(raw, "benchmark-vllm-int8-p99")["cells"] = [{"row": "vLLM INT4", "column": "P99延迟"}]

    problems = ledger.table_coverage_problems(ledger.load_claims(_copy(tmp_path, edit)))
    assert "benchmark-vllm-int8-p99: the seed's benchmark-table has no cell 'vLLM INT4' / 'P99延迟'" in problems
    assert any("no claim covers the seed's benchmark-table cell 'vLLM INT8' / 'P99延迟'" in p for p in problems)


def test_originals_are_verbatim_from_the_seed_and_sections_are_its_headings(
    claims: ledger.ClaimsFile, tmp_path: Path
) -> None:
    assert ledger.originals_not_in_seed(claims) == []
    assert ledger.section_problems(claims) == []
    retyped = _copy(tmp_path, lambda raw: _claim(raw, "cost-spot-saving").update(original="Spot实例: 节省60%成本"))
    assert ledger.originals_not_in_seed(ledger.load_claims(retyped)) == [
        "cost-spot-saving: 'Spot实例: 节省60%成本' is not in data/seed/seed.zh.md"
    ]


def test_the_brief_s_claims_are_all_there(claims: ledger.ClaimsFile) -> None:
    """Claims the issue named, by what the seed says: each must have a row."""
    originals = " ".join(c.original for c in claims.claims)
    for words in (
        "--dtype=float16", "--tensor-parallel-size=1", "vllm/vllm-openai:v0.3.0", "replicas: 2", "nvidia.com/gpu: 1",
        "name: vllm_queue_size", 'averageValue: "10"', "minReplicas: 2", "vllm_request_duration_seconds_bucket",
        "> 50", "节省70%", "吞吐提升10倍", "INT8节省50%", "30%请求命中缓存", "$400/小时", "$80/小时", "节省: 80%",
        "100 QPS", "最少2个副本", "liveness/readiness", "30-60秒", "审计", "API key限流", "v1.25 - v1.32",
        "vLLM 0.3.0+", "--gpu-memory-utilization=0.95", "速度↑2x",
    ):  # fmt: skip
        assert words in originals, f"no claim quotes {words!r}"


# --- evidence resolves --------------------------------------------------------------------------------


def test_every_piece_of_evidence_resolves_against_the_reference_results(claims: ledger.ClaimsFile) -> None:
    assert ledger.evidence_problems(claims) == []


def test_a_result_key_that_moved_fails(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        _claim(raw, "optimization-quantization-memory")["evidence"][0]["result"] = (
            "04_quantization_paged_attention:file_saving_f16_to_q2"
        )
        _claim(raw, "practice-audit-log")["evidence"][0]["result"] = "08_production_practices:audit_lines_seen"

    problems = ledger.evidence_problems(ledger.load_claims(_copy(tmp_path, edit)))
    assert len(problems) == 2
    assert problems[0].startswith("optimization-quantization-memory: ") and "file_saving_f16_to_q2" in problems[0]
    assert problems[1] == (
        "practice-audit-log: 08_production_practices:audit_lines_seen: "
        "08_production_practices records no key 'audit_lines_seen'"
    )


def test_an_unlisted_citation_fails(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        _claim(raw, "optimization-flashattention-2")["evidence"][0]["cite"] = "https://example.com/flash"
        _claim(raw, "engine-tgi-latency")["evidence"][0]["cite"] = "data/engines/nowhere.yaml"

    problems = ledger.evidence_problems(ledger.load_claims(_copy(tmp_path, edit)))
    assert [p.split(":")[0] for p in problems] == ["engine-tgi-latency", "optimization-flashattention-2"]


def test_reference_figures_are_labelled_and_missing_ones_say_what_to_run(book: ledger.Ledger) -> None:
    values = {r.claim.id: r.values for r in book.rows}
    _, throughput = values["engine-vllm-throughput"][0]
    assert throughput.source == "05_benchmarking (reference results, profile quick)" and "tok/s" in throughput.text
    assert "reference results from data/reference/measured" in book.sources["05_benchmarking"]
    _, audit = values["practice-audit-log"][0]
    assert audit.missing and audit.source == "run notebooks/08_production_practices.ipynb"


# --- the arithmetic on the seed -----------------------------------------------------------------------


def test_seed_benchmark_arithmetic_comes_from_the_seeds_own_cells() -> None:
    cells = {row["配置"]: row for row in seed.tables()[ledger.TABLE_KINDS["benchmark-table"]]}
    table = seed_figures.seed_benchmark()
    fp16 = cells["vLLM FP16"]
    expected = float(fp16["成本/1M tokens"].lstrip("$")) * float(fp16["吞吐量"].split()[0]) * 3600 / 1e6
    assert table.loc["vLLM FP16", "implied_usd_per_gpu_hour"] == pytest.approx(expected)
    assert 2.0 < expected < 2.1  # the "about $2.07 per A100-hour" of the issue
    assert table.attrs["seed_usd_per_gpu_hour"] > 15 * expected  # vs $400/h for 10 A100: the contradiction
    int8 = table.loc["vLLM INT8"]
    assert 1 - int8.usd_per_mtok / table.loc["vLLM FP16", "usd_per_mtok"] == pytest.approx(1 / 6)  # -17%, not -50%
    assert 100 < table.loc["vLLM FP16", "max_output_tokens"] < 150  # 850 ms at <= 151 tok/s per stream
    assert table.loc["vLLM INT8", "one_stream_bound_tok_s"] == pytest.approx(
        2 * table.loc["vLLM FP16", "one_stream_bound_tok_s"]
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.b", 1),
        ("rows.0.x", 3),
        ("rows.-1.x", 5),
        ("rows.c=2.x", 5),
        ("rows.c=0.5.x", 3),
        ("rows.max(x).c", 2),
        ("rows.min(x).c", 0.5),
    ],
)
def test_lookup_paths(path: str, expected: object) -> None:
    data = {"a": {"b": 1}, "rows": [{"c": 0.5, "x": 3}, {"c": 2, "x": 5}]}
    assert seed_figures.lookup(data, path) == expected


@pytest.mark.parametrize("path", ["a.z", "rows.7.x", "rows.c=9.x", "rows.max(y).x", "a.b.c"])
def test_lookup_says_which_segment_failed(path: str) -> None:
    with pytest.raises(ServelabError):
        seed_figures.lookup({"a": {"b": 1}, "rows": [{"c": 0.5, "x": 3}]}, path)


def test_write_markdown_names_its_results_and_the_committed_copy_lists_every_claim(
    claims: ledger.ClaimsFile, book: ledger.Ledger, tmp_path: Path
) -> None:
    written = ledger.write_markdown(tmp_path / "docs" / "claims-ledger.md", book).read_text(encoding="utf-8")
    assert "Generated from these results:" in written and "`05_benchmarking`: reference results" in written
    committed = (repo_root() / "docs" / "claims-ledger.md").read_text(encoding="utf-8")
    stale = [c.id for c in claims.claims if f"`{c.id}`" not in committed]
    assert not stale, f"docs/claims-ledger.md is stale (rerun notebooks/09_claims_ledger.ipynb): {stale}"
