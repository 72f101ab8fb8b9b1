"""Every notebook and lab links each glossary term on its first use, to an anchor that exists.

The glossary is ``docs/glossary.md``; the rules (what counts as a use, where no link may go) are
``servelab.course.glossary``'s and are pinned down by ``tests/unit/course/test_glossary.py``. A new
paragraph that uses a term before its link, a renamed anchor, or a new lab without links fails here;
``servelab course glossary --fix`` inserts the missing links. The notebooks are read as JSON; nothing runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from servelab.course import glossary as gl

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = gl.notebook_paths(ROOT)
GLOSSARY = ROOT / gl.GLOSSARY
TERMS = gl.load_terms(GLOSSARY)

REQUIRED = {
    # The terms the course cannot do without (issue 15), by anchor: each must have its entry.
    "ttft", "tpot", "itl", "e2e-latency", "percentile", "goodput", "throughput", "open-loop", "closed-loop",
    "poisson-arrivals", "continuous-batching", "pagedattention", "kv-cache", "kv-block", "preemption",
    "prefix-caching", "prefill", "decode", "roofline", "memory-bandwidth", "quantization", "gguf",
    "quantization-level", "perplexity", "tensor-parallelism", "slot-llama-server", "readiness-probe",
    "liveness-probe", "startup-probe", "hpa", "keda", "custom-metrics-adapter", "replica", "poddisruptionbudget",
    "requests-and-limits", "oomkilled", "cpu-throttling", "promql", "recording-rule", "alerting-rule",
    "for-pending", "alertmanager", "inhibition", "slo", "error-budget", "rate-limit", "token-bucket",
    "api-gateway", "audit-log", "circuit-breaker", "retry-after", "cost-per-million-tokens",
}  # fmt: skip


def test_the_glossary_is_well_formed() -> None:
    """Anchors equal their headings' GitHub anchors, each term has a definition and says where it is taught,
    no spelling belongs to two terms, the index lists every term, links inside the file resolve."""
    assert gl.glossary_problems(GLOSSARY.read_text(encoding="utf-8"), ROOT) == []


def test_the_glossary_defines_every_required_term() -> None:
    defined = {t.anchor for t in TERMS if t.definition}
    assert defined >= REQUIRED, f"missing from {gl.GLOSSARY}: {sorted(REQUIRED - defined)}"


def test_there_are_notebooks_and_labs() -> None:
    assert {p.parent.name for p in NOTEBOOKS} >= {"notebooks", "labs"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_glossary_link_has_its_anchor(path: Path) -> None:
    wrong = [p for p in gl.check_notebook(path, TERMS, GLOSSARY) if p.kind in ("no such term", "wrong path")]
    assert not wrong, "glossary links that lead nowhere:\n" + "\n".join(map(str, wrong))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_term_is_linked_on_its_first_use_and_only_there(path: Path) -> None:
    missing = [
        p for p in gl.check_notebook(path, TERMS, GLOSSARY) if p.kind in ("not linked on first use", "linked again")
    ]
    assert not missing, f"run `{gl.FIX_COMMAND} {path.relative_to(ROOT)}`, then read the result:\n" + "\n".join(
        map(str, missing)
    )


MARKDOWN_FILES = sorted({*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("labs/**/*.md")})
_GLOSSARY_LINK = re.compile(r"\]\(([^)\s]*glossary\.md)#([^)\s]+)\)")


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_markdown_files_link_existing_glossary_anchors(path: Path) -> None:
    anchors = {t.anchor for t in TERMS}
    links = _GLOSSARY_LINK.findall(path.read_text(encoding="utf-8"))
    broken = [f"{target}#{anchor}" for target, anchor in links if anchor not in anchors]
    broken += [target for target, _ in links if (path.parent / target).resolve() != GLOSSARY.resolve()]
    assert not broken, f"links to the glossary that lead nowhere: {broken}"
