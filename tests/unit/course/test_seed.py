"""The seed document as data: its manifests, its translation, and the lab that starts from it."""

from __future__ import annotations

import json
import re

import yaml

from servelab.course import seed
from servelab.paths import data_path, repo_root


def test_seed_manifests_file_is_the_documents_own_yaml() -> None:
    committed = data_path("seed", "seed_manifests.yaml").read_text(encoding="utf-8")
    body = "".join(line + "\n" for line in committed.splitlines() if not line.startswith("#"))
    assert body == seed.manifest_text(), "re-extract it: servelab.course.seed.manifest_text()"
    kinds = [d["kind"] for d in yaml.safe_load_all(body)]
    assert kinds == ["Deployment", "HorizontalPodAutoscaler"]
    deployment, hpa = yaml.safe_load_all(body)
    assert deployment["spec"]["replicas"] == 2 and "selector" not in deployment["spec"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v0.3.0"
    assert hpa["spec"]["metrics"][0]["pods"]["target"] == {"averageValue": "10"}  # no target type, as written


def test_translation_keeps_every_code_block_and_number() -> None:
    assert seed.yaml_blocks("en")[0] == seed.yaml_blocks("zh")[0]  # manifests: identical
    numbers = re.compile(r"\$?\d+(?:\.\d+)?(?:%|x|ms| tok/s)?")
    for zh, en in zip(seed.tables("zh"), seed.tables("en"), strict=True):
        assert len(zh) == len(en)
        for row_zh, row_en in zip(zh, en, strict=True):
            assert sorted(numbers.findall(" ".join(row_zh.values()))) == sorted(
                numbers.findall(" ".join(row_en.values()))
            )
    assert "kit's authors (not an" in seed.text("en")  # marked as the kit's own translation


def test_seed_tables_are_read_from_the_document() -> None:
    engines, optimizations, benchmark = seed.tables()
    assert [row["引擎"] for row in engines] == ["vLLM", "TGI", "TensorRT-LLM", "llama.cpp"]
    assert engines[3]["吞吐量"] == "★★☆☆☆"
    assert any("--gpu-memory-utilization=0.95" in row["配置"] for row in optimizations)
    assert [row["吞吐量"] for row in benchmark] == ["4800 tok/s", "7200 tok/s", "6400 tok/s"]


def test_lab01_starts_from_the_seeds_deployment() -> None:
    nb = json.loads((repo_root() / "labs" / "lab01_fix_the_seed_deployment.ipynb").read_text())
    start = next("".join(c["source"]) for c in nb["cells"] if "".join(c["source"]).startswith("# YOUR TURN"))
    manifest = start.split('"""')[1]
    assert yaml.safe_load(manifest) == next(yaml.safe_load_all(seed.manifest_text()))


def test_benchmark_rows_are_the_documents_numbers() -> None:
    rows = {r["configuration"]: r for r in seed.benchmark_rows()}
    assert rows["vLLM FP16"] == {
        "configuration": "vLLM FP16",
        "throughput_tok_s": 4800.0,
        "p99_latency_ms": 850.0,
        "usd_per_mtok": 0.12,
    }
    assert rows["vLLM INT8"]["usd_per_mtok"] == 0.10 and rows["TensorRT FP16"]["throughput_tok_s"] == 7200.0
