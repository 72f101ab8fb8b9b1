"""The facilitator guide: a one-day agenda, per-module notes and a failure playbook, generated.

Why generated: an instructor plans the day from two kinds of figure that both drift. Learner time is
stated in each notebook's and lab's opening, and changes when a notebook gains an exercise; machine time
is what the last clean-clone CI run measured (``data/reference/measured/notebook_times.json``), and
changes with every refresh. A guide typed by hand would disagree with both within a week. This module
reads both, builds the agenda (each slot is the larger of learner and machine time, plus discussion),
computes what each cut line saves, takes the expected figures from the shipped reference results, and
writes ``docs/facilitator-guide.md`` (:func:`write_markdown`, ``servelab course guide``). A unit test
fails when the committed file differs from what this module writes now.

The plan itself (order, discussion minutes, breaks, cut lines, talking points) is data of this module:
it is the instructor's judgement, not a measurement.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import nbformat

from servelab import results
from servelab.errors import ServelabError
from servelab.paths import repo_root

GUIDE = Path("docs") / "facilitator-guide.md"
REGENERATE = "servelab course guide"
TIMES_FILE = "notebook_times.json"
SLOT_STEP_MIN = 5
"""Slots are rounded up to whole 5-minute steps: an agenda of 09:47 starts helps nobody."""

DAY_START, DAY_END = "09:00", "17:00"
BREAKS: tuple[tuple[str, str, int], ...] = (
    ("10:30", "morning break", 15),
    ("12:30", "lunch", 45),
    ("15:00", "afternoon break", 15),
)
"""(earliest time, name, minutes): each break is taken at the first module boundary at or after its time,
so a module is never split by a break."""

_RANGE = r"(\d+(?:\.\d+)?)(?:\s*[–-]\s*(\d+(?:\.\d+)?))?"
_LEARNER = (
    re.compile(rf"\*\*Learner time:\*\*\s*(?:about\s+)?{_RANGE}\s+minutes", re.IGNORECASE),
    re.compile(rf"about\s+{_RANGE}\s+minutes\s+(?:for a learner|for you|to read)", re.IGNORECASE),
)
_EXERCISES = re.compile(rf"{_RANGE}\s+(?:go to|of them for) the (?:two|three|four)\b", re.IGNORECASE)
_EXERCISE_LIST = re.compile(r"exercises included \(about ((?:\d+(?:, | and )?)+) minutes\)", re.IGNORECASE)
_AMX_SPEEDUP = re.compile(r"about\s+(\d+(?:\.\d+)?)×\s+faster")


# ---- What the notebooks say about themselves ----


@dataclass(frozen=True)
class Opening:
    """What a notebook's first markdown cell states: its title and its learner time (upper bound, min)."""

    name: str
    title: str
    learner_min: float
    exercise_min: float | None


def _upper(match: re.Match[str]) -> float:
    """The upper end of "20–30" (plan for the slower half of the room), or the single figure."""
    return float(match.group(2) or match.group(1))


def _exercise_minutes(markdown: str) -> float | None:
    """The exercises' minutes: "of which about 30 go to the three ..." or "included (about 5, 20 and 10 minutes)"."""
    total = _EXERCISES.search(markdown)
    if total:
        return _upper(total)
    listed = _EXERCISE_LIST.search(markdown)
    return float(sum(int(n) for n in re.findall(r"\d+", listed.group(1)))) if listed else None


def parse_opening(name: str, markdown: str) -> Opening:
    """Read the title and the learner time from a notebook's opening; raise if no learner time is stated.

    Two phrasings are in use: the labs' ``**Learner time:** 20–30 minutes`` and the notebooks'
    ``**Time:** about 45 minutes for a learner`` (or "for you", "to read"). The exercise minutes are
    read where the opening states them; the cut lines need them.
    """
    lines = markdown.strip().splitlines()
    title = lines[0].lstrip("#").strip() if lines and lines[0].startswith("#") else name
    for pattern in _LEARNER:
        found = pattern.search(markdown)
        if found:
            return Opening(name, title, _upper(found), _exercise_minutes(markdown))
    raise ServelabError(
        f"{name}: its opening states no learner time, so the facilitator guide cannot place it in the day",
        f"add '**Learner time:** A–B minutes.' (labs) or '**Time:** about N minutes for a learner; ...' "
        f"(notebooks) to the first markdown cell of {name}, then run `{REGENERATE}`",
    )


def notebook_paths() -> list[Path]:
    """Every notebook and lab a learner runs (solutions excluded), notebooks first."""
    root = repo_root()
    return [*sorted((root / "notebooks").glob("*.ipynb")), *sorted((root / "labs").glob("*.ipynb"))]


def read_opening(path: Path) -> Opening:
    """Parse the first markdown cell of the notebook at ``path``."""
    book = nbformat.read(path, as_version=4)
    first = next((c.source for c in book.cells if c.cell_type == "markdown"), "")
    return parse_opening(path.stem, first)


def machine_times() -> dict[str, Any]:
    """The per-notebook papermill seconds of the last clean-clone CI run, with where they come from."""
    path = results.reference_dir() / TIMES_FILE
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("source", "date", "machine", "profile", "seconds") if k not in data]
    if missing:
        raise ServelabError(f"{path} lacks {', '.join(missing)}", "see data/reference/measured/README.md")
    return data


def amx_speedup() -> float:
    """How much faster the AMX Xeon ran the kit than the AVX2 EPYC, as README.md states it."""
    path = repo_root() / "README.md"
    found = _AMX_SPEEDUP.search(path.read_text(encoding="utf-8"))
    if not found:
        raise ServelabError(
            f"{path} no longer states the AMX machine's speed-up ('about N× faster')",
            "restore it in the 'How long things take' section, or change facilitator.amx_speedup",
        )
    return float(found.group(1))


# ---- The plan: the instructor's judgement ----


@dataclass(frozen=True)
class Cut:
    """A cut line: what to drop when running late, in the order to drop it."""

    module: str
    what: Literal["module", "exercises"]
    label: str
    drop_discussion: bool = False


@dataclass(frozen=True)
class Notes:
    """Per-module prose: talking points, and what to tell a room whose numbers differ."""

    points: tuple[str, ...]
    if_different: str


ORDER: tuple[str, ...] = (
    "00_preflight",
    "01_engine_comparison",
    "02_deploy_vllm",
    "lab01_fix_the_seed_deployment",
    "lab02_the_probe_that_gives_up",
    "03_llamacpp_on_cpu",
    "lab03_the_pod_that_gets_oomkilled",
    "04_quantization_paged_attention",
    "lab04_the_server_that_preempts",
    "05_benchmarking",
    "lab05_the_benchmark_that_lies",
    "06_monitoring_alerting",
    "07_autoscaling_cost",
    "lab06_the_alert_that_never_fires",
    "lab07_the_autoscaler_that_never_scales",
    "08_production_practices",
    "lab08_the_gateway_that_leaks",
    "lab09_capstone_serve_an_slo",
    "09_claims_ledger",
)
"""The day's order: each lab right after the notebooks its opening names as prerequisites."""

DISCUSSION_MIN = {"notebook": 5, "lab": 5}
"""Instructor-led minutes after each module (learner times already include the exercises)."""

CUTS: tuple[Cut, ...] = (
    Cut("lab09_capstone_serve_an_slo", "module", "the capstone becomes homework (it draws on notebooks 01-08)"),
    Cut("lab04_the_server_that_preempts", "module", "lab 04 becomes homework (a vLLM start per try)"),
    Cut("lab02_the_probe_that_gives_up", "module", "lab 02 becomes homework (a vLLM start per try)"),
    Cut("lab03_the_pod_that_gets_oomkilled", "module", "lab 03 becomes homework"),
    Cut("lab05_the_benchmark_that_lies", "module", "lab 05 becomes homework (if behind after notebook 05)"),
    Cut(
        "04_quantization_paged_attention",
        "exercises",
        "notebook 04: skip the ladder discussion, its exercises become homework",
        drop_discussion=True,
    ),
    Cut("lab07_the_autoscaler_that_never_scales", "module", "lab 07 becomes homework"),
    Cut("lab06_the_alert_that_never_fires", "module", "lab 06 becomes homework"),
    Cut("lab08_the_gateway_that_leaks", "module", "lab 08 becomes homework"),
    Cut("09_claims_ledger", "module", "notebook 09 is read at home (it needs no engine)"),
    Cut("05_benchmarking", "exercises", "notebook 05: exercises become homework (the harness computes the same)"),
    Cut("07_autoscaling_cost", "exercises", "notebook 07: exercises become homework (no engine needed)"),
    Cut("06_monitoring_alerting", "exercises", "notebook 06: exercises become homework"),
)
"""In the order to drop them: labs repeat a notebook's skills, so they go before a notebook's own exercises."""

NOTES: dict[str, Notes] = {
    "00_preflight": Notes(
        (
            "Every red line carries the command that fixes it: read the fix aloud before helping anyone.",
            "Both engines serve the same weights: the GGUF, served by llama.cpp's native llama-server (the "
            "program manifests/llamacpp deploys), and its float32 conversion, served by vLLM. The greedy "
            "first-token comparison is the proof, and longer answers still differ because the arithmetic differs.",
            "vLLM's start is most of the machine time: use it to explain what vLLM does while it starts "
            "(loading, profiling memory, allocating the KV cache).",
        ),
        "A vLLM start far slower than expected is almost always a loaded host or a cold cache: see the "
        "playbook below. A first-token agreement below the reference still passes if the check says ok.",
    ),
    "01_engine_comparison": Notes(
        (
            "The landscape table is cited, not measured: every cell links to its source in data/citations.yaml.",
            "Both engines batch: llama-server's parallel slots and vLLM's scheduler. The question is how much "
            "each gains on this machine and which serves a given load better; the notebook prints the leader "
            "at each level and any crossover, and llama-server's busy-slots-per-step counter is the server's "
            "own proof that the slots shared the batch.",
            "Let learners predict the curves before the cell runs. A llama.cpp curve flat against users came "
            "from llama-cpp-python's Python server, one request at a time (notebook 03).",
        ),
        "Absolute speeds, and even the order of the engines, move with the CPU. On 2 AVX2 cores the quick "
        "profile's short answers are prefill- and compute-bound, so llama-server can lead at every level while "
        "its throughput stays nearly flat; the full profile's longer answers leave batching more room. A curve "
        "that falls, or a vLLM curve that stays flat, usually means the host was busy: rerun that cell alone.",
    ),
    "02_deploy_vllm": Notes(
        (
            "Every flag passed to vLLM is explained in the notebook; ask the room which ones a GPU would change.",
            "The metric names are vLLM's real ones: several tutorials use names vLLM never exported.",
            "The manifests are validated offline against Kubernetes 1.25 and 1.32 and the releases supported "
            "today; no cluster is needed.",
        ),
        "A probe or validation failure names the field at fault; the exercises' hints say what to change.",
    ),
    "lab01_fix_the_seed_deployment": Notes(
        (
            "The broken Deployment is the seed's own; every fix maps to a section of notebook 02.",
            "A failing check is the normal state of an unsolved lab, never an error.",
        ),
        "If a learner is stuck, point at manifests/vllm/base/deployment.yaml, the kit's complete answer.",
    ),
    "lab02_the_probe_that_gives_up": Notes(
        (
            "Every check is graded on a real vLLM started from the learner's own Deployment flags: the "
            "startupProbe's budget is compared with the start-up time measured on this machine.",
            "Three failures from one manifest: a flag vLLM refuses, probes that give up or ask the wrong "
            "path, and a client asking for a model name the server does not list.",
        ),
        "Start-up time moves with the host: a budget that passes here with little margin can fail on a "
        "loaded machine, which is the lesson (size probes from a measurement with headroom).",
    ),
    "03_llamacpp_on_cpu": Notes(
        (
            "The threads sweep shows whether threads beyond the physical cores help on this machine; the "
            "manifest's thread count is chosen from it.",
            "The manifest's memory request and limit are checked against the server's measured footprint "
            "under load, not guessed.",
            "CPU serving fits small models, low concurrency and cost-bound services; the notebook says when.",
        ),
        "On more cores the thread knee moves right; on a shared host the sweep is noisy: compare shapes, not values.",
    ),
    "lab03_the_pod_that_gets_oomkilled": Notes(
        (
            "The manifest's args start the real llama-server here; its peak resident memory under the "
            "service's load is what the memory request and limit are graded against.",
            "Threads, CPU requests, slots and context are one decision: --ctx-size is shared by the slots.",
        ),
        "Peak memory differs a little between machines (allocator, page size); the hints print what this "
        "run measured, so each learner sizes from their own number.",
    ),
    "04_quantization_paged_attention": Notes(
        (
            "The seed's memory claims are checked against this machine's file sizes, resident memory and "
            "perplexity; differences inside the perplexity's standard error are called noise, not quality loss.",
            "The KV-cache bytes-per-token formula is checked against the number vLLM itself prints at start.",
            "Preemptions and prefix-cache hits are read from vLLM's /metrics while the load runs.",
        ),
        "File sizes are properties of the format and must match the reference exactly; speeds and "
        "perplexity's last digits move with the machine.",
    ),
    "lab04_the_server_that_preempts": Notes(
        (
            "Preemptions, the running batch and KV cache usage are read from vLLM's own /metrics during "
            "the learner's run.",
            "Two sums that one run cannot show are graded beside it: the worst case the engine admits and "
            "the cache left idle.",
        ),
        "A run with no preemption can still fail the worst-case check: ask what a longer answer or one "
        "more user would do to this cache.",
    ),
    "05_benchmarking": Notes(
        (
            "Every percentile is shown with its n: a P99 of a handful of requests is the largest of them.",
            "The knee is defined by the SLO (most goodput), not by eye.",
            "The kit's harness is cross-checked against vllm bench serve, and both against the server's own "
            "counters; the client's own ceiling is measured on a stub server.",
        ),
        "TTFT grows fastest on a slower machine; the knee can move one level down. A cross-check difference "
        "beyond a few percent means the host was busy during one of the two runs.",
    ),
    "lab05_the_benchmark_that_lies": Notes(
        (
            "Three habits flatter a server: a closed loop, unforced answer length, and too few requests.",
            "The service's request rate is measured from the engine, so every learner's target differs.",
        ),
        "A run that fails on the number of requests is the lesson, not a bug: ask what a P90 of five means.",
    ),
    "06_monitoring_alerting": Notes(
        (
            "Rules live in one source, rendered for Prometheus and the Operator, proven with promtool before "
            "anything is deployed.",
            "The alert goes pending, firing and resolved on real load; Alertmanager delivers both notifications.",
            "The dashboard is generated from code and every one of its queries is run against this Prometheus.",
        ),
        "On a loaded host the alert can take longer to fire, or fire twice: a failed scrape resets it. See "
        "the playbook below.",
    ),
    "07_autoscaling_cost": Notes(
        (
            "The HPA algorithm is checked against the Kubernetes documentation's own worked examples.",
            "The day of traffic is simulated from capacity and start-up time measured by notebooks 00 and 05.",
            "Every cost figure is hourly price over measured tokens per second, with cited prices.",
        ),
        "Without this run's results the notebook reads the shipped reference copy and says so; the cost "
        "figures then describe the reference machine.",
    ),
    "lab06_the_alert_that_never_fires": Notes(
        (
            "The check replays three fleets through the learner's rule with promtool: it grades behaviour.",
            "The rule must aggregate per pod like the HPA and sit above the HPA's target, with a for:.",
        ),
        "Grading is deterministic: a learner whose result differs from a neighbour's wrote a different rule.",
    ),
    "lab07_the_autoscaler_that_never_scales": Notes(
        (
            "A queue-based HPA needs a capped batch: without --max-num-seqs the queue never grows.",
            "Every learner meets the same simulated day, driven by the real HPA algorithm.",
        ),
        "Grading is deterministic (reference capacity, fixed day): differences come from the answer.",
    ),
    "08_production_practices": Notes(
        (
            "Each item of the production checklist is shown working and failing as designed, against two real "
            "llama.cpp replicas.",
            "The request of death kills a llama.cpp server sent straight to it; the gateway refuses it.",
            "The audit log of a 200-request burst has exactly 200 lines and no raw key.",
        ),
        "Timing-sensitive steps (failover, the burst) take longer on a loaded host; the counts must not change.",
    ),
    "lab08_the_gateway_that_leaks": Notes(
        (
            "Three review findings, each shown by a real run: prompts in the audit log, a batch key whose "
            "limits are never reached, and no bound on what is sent to the replica.",
            "The latency bound is relative: a chat answer under the flood against the same run's answer alone.",
            "A 429 with Retry-After is how a gateway tells a well-behaved batch job to slow down.",
        ),
        "On a busy host the latency ratio moves; a config that caps the batch key below the slots keeps well "
        "inside the bound, the colleague's is far outside it. A learner near the bound should run it again.",
    ),
    "lab09_capstone_serve_an_slo": Notes(
        (
            "The scenario is measured on each machine, so every learner's rate, bounds and budget differ, and "
            "the problem is the same on any machine.",
            "The plan's numbers must agree: the batch limit trades TTFT for TPOT, the HPA target is bounded by "
            "the TTFT a full batch leaves, the alert watches the HPA's queue, the cost follows the measured "
            "throughput on the node priced.",
            "The grade comes from the results file alone: a learner can re-read and explain it.",
        ),
        "If a passing plan fails on a rerun, the host was busy during the run (the TTFT row says so); run the "
        "set-up and serve cells again rather than loosening the plan.",
    ),
    "09_claims_ledger": Notes(
        (
            "Every claim of the seed has one status: reproduced, corrected, cited, or not reproducible here.",
            "Figures of notebooks not run today come from the reference results and are labelled as such.",
        ),
        "A claim marked 'not measured yet' means its notebook has not run in this checkout.",
    ),
}


# ---- The agenda ----


@dataclass(frozen=True)
class Module:
    """One notebook or lab in the day, with the minutes that decide its slot."""

    opening: Opening
    learner_min: float
    machine_min: float
    discussion_min: int

    @property
    def name(self) -> str:
        return self.opening.name

    @property
    def is_lab(self) -> bool:
        return self.name.startswith("lab")

    @property
    def slot_min(self) -> int:
        """max(learner, machine) plus discussion, rounded up to the agenda's step."""
        raw = max(self.learner_min, self.machine_min) + self.discussion_min
        return SLOT_STEP_MIN * math.ceil(raw / SLOT_STEP_MIN)


@dataclass(frozen=True)
class Row:
    """One line of the agenda: a module or a break, with its start and its minutes."""

    start: int
    minutes: int
    what: str
    module: Module | None = None


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def build_modules(openings: Sequence[Opening], times: dict[str, Any]) -> list[Module]:
    """The day's modules in :data:`ORDER`; raise if a notebook is missing from the plan or the times."""
    by_name = {o.name: o for o in openings}
    unplanned = sorted(set(by_name) - set(ORDER))
    gone = [n for n in ORDER if n not in by_name]
    untimed = [n for n in ORDER if n in by_name and n not in times["seconds"]]
    if unplanned or gone:
        raise ServelabError(
            f"the facilitator plan and the notebooks disagree: not in the plan {unplanned}, no notebook {gone}",
            "update ORDER, NOTES (and CUTS) in servelab/course/facilitator.py",
        )
    if untimed:
        raise ServelabError(
            f"{TIMES_FILE} has no machine time for {untimed}",
            f"refresh data/reference/measured/{TIMES_FILE} from a full `make test` run",
        )
    return [
        Module(
            by_name[n],
            learner_min=by_name[n].learner_min,
            machine_min=times["seconds"][n] / 60,
            discussion_min=DISCUSSION_MIN["lab" if n.startswith("lab") else "notebook"],
        )
        for n in ORDER
    ]


def apply_cut(modules: Sequence[Module], cut: Cut) -> list[Module]:
    """The modules with ``cut`` applied: a module dropped, or its exercises (and discussion) taken out."""
    if cut.what == "module":
        return [m for m in modules if m.name != cut.module]
    out = []
    for m in modules:
        if m.name != cut.module:
            out.append(m)
            continue
        if m.opening.exercise_min is None:
            raise ServelabError(
                f"cut {cut.label!r}: the opening of {m.name} does not state its exercises' minutes",
                "state them ('of which about N go to the three exercises') or change the cut",
            )
        out.append(
            replace(
                m,
                learner_min=m.learner_min - m.opening.exercise_min,
                discussion_min=0 if cut.drop_discussion else m.discussion_min,
            )
        )
    return out


def schedule(modules: Sequence[Module]) -> list[Row]:
    """Place the modules from :data:`DAY_START`, each break at the first boundary at or after its time."""
    rows: list[Row] = []
    now = _minutes(DAY_START)
    pending = list(BREAKS)
    for module in modules:
        while pending and now >= _minutes(pending[0][0]):
            _, name, length = pending.pop(0)
            rows.append(Row(now, length, name))
            now += length
        rows.append(Row(now, module.slot_min, module.opening.title, module))
        now += module.slot_min
    for _, name, length in pending:  # a short day still stops for lunch
        rows.append(Row(now, length, name))
        now += length
    return rows


def end_of(rows: Sequence[Row]) -> int:
    return rows[-1].start + rows[-1].minutes if rows else _minutes(DAY_START)


@dataclass(frozen=True)
class CutLine:
    """A cut with what it saves and when the day ends once it and every cut above it are applied."""

    cut: Cut
    saves_min: int
    ends: int


@dataclass(frozen=True)
class Plan:
    """The full day, the cut lines in order, and the day as run (with just enough cuts to fit, if any do)."""

    full: list[Row]
    cut_lines: list[CutLine]
    applied: int
    day: list[Row]

    @property
    def fits(self) -> bool:
        return end_of(self.day) <= _minutes(DAY_END)


def plan(modules: Sequence[Module]) -> Plan:
    """Apply the cut lines in order, stopping at the first that makes the day end by :data:`DAY_END`."""
    current = list(modules)
    lines = []
    for cut in CUTS:
        before = sum(m.slot_min for m in current)
        current = apply_cut(current, cut)
        lines.append(CutLine(cut, before - sum(m.slot_min for m in current), end_of(schedule(current))))
    full = schedule(modules)
    applied = 0
    if end_of(full) > _minutes(DAY_END):
        applied = next((i + 1 for i, c in enumerate(lines) if c.ends <= _minutes(DAY_END)), len(lines))
    day = list(modules)
    for cut in CUTS[:applied]:
        day = apply_cut(day, cut)
    return Plan(full, lines, applied, schedule(day))


# ---- Expected figures, from the reference results ----


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def _expected_00(ref: dict[str, Any], factor: float) -> list[str]:
    return [
        f"vLLM ready in {_fmt(ref['vllm_ready_s'])} s on the reference machine (about "
        f"{_fmt(ref['vllm_ready_s'] * factor, 0)} s on an AVX2-only machine); llama-server in "
        f"{_fmt(ref['llamacpp_ready_s'], 2)} s",
        f"greedy first-token agreement between the engines: {_fmt(100 * ref['first_token_agreement'], 0)}%",
    ]


def _expected_04(ref: dict[str, Any], factor: float) -> list[str]:
    rows = [
        f"{q['level']}: file {_fmt(q['file_mib'])} MiB, resident {_fmt(q['rss_mib'])} MiB, decode "
        f"{_fmt(q['decode_tok_s'])} tok/s, perplexity {_fmt(q['perplexity'], 2)}"
        for q in ref["quantization"]
    ]
    return [
        *rows,
        f"F16 to 4-bit: file {_fmt(ref['file_saving_f16_to_q4'], 0)}% smaller, resident memory "
        f"{_fmt(ref['rss_saving_f16_to_q4'], 0)}% smaller (the seed's 75% is weight bits on paper)",
        f"prefix caching: hit rate {_fmt(100 * ref['prefix_cache_hit_rate'], 0)}%, TTFT P50 "
        f"{_fmt(ref['prefix_ttft_speedup'])}× lower; {ref['preemptions']:.0f} preemptions under the "
        "cache-pressure load",
    ]


def _expected_05(ref: dict[str, Any], factor: float) -> list[str]:
    rows = [
        f"vLLM, {r['concurrency']} user(s), n = {r['ok']}: TTFT P50 {_fmt(r['ttft_p50_s'], 2)} s, P99 "
        f"{_fmt(r['ttft_p99_s'], 2)} s; TPOT P50 {_fmt(1000 * r['tpot_p50_s'], 0)} ms, P99 "
        f"{_fmt(1000 * r['tpot_p99_s'], 0)} ms"
        for r in ref["closed"]
    ]
    cross = ref["crosscheck"][0]
    return [
        *rows,
        f"SLO: TTFT {_fmt(ref['slo_ttft_s'])} s, TPOT {_fmt(1000 * ref['slo_tpot_s'], 0)} ms; Poisson "
        f"saturation at {_fmt(ref['saturation_rate'])} requests/s",
        f"harness against vllm bench serve ({cross['figure']}): {_fmt(100 * cross['difference'])}% apart",
    ]


EXPECTED: dict[str, tuple[str, Callable[[dict[str, Any], float], list[str]]]] = {
    "00_preflight": ("00_preflight", _expected_00),
    "04_quantization_paged_attention": ("04_quantization_paged_attention", _expected_04),
    "05_benchmarking": ("05_benchmarking", _expected_05),
}
"""Modules with shipped reference results: the results file each reads and how to phrase its figures."""


def _reference(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results.reference_dir() / f"{name}.json").read_text(encoding="utf-8"))
    return data


# ---- The markdown ----


def _agenda_table(rows: Sequence[Row]) -> list[str]:
    out = [
        "| start | end | minutes | module | learner (min) | machine (min) | discussion (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.module is None:
            out.append(f"| {_clock(r.start)} | {_clock(r.start + r.minutes)} | {r.minutes} | *{r.what}* | | | |")
            continue
        m = r.module
        out.append(
            f"| {_clock(r.start)} | {_clock(r.start + r.minutes)} | {r.minutes} | `{m.name}` | "
            f"{m.learner_min:.0f} | {m.machine_min:.1f} | {m.discussion_min} |"
        )
    return out


def markdown() -> str:
    """The whole guide as markdown."""
    times = machine_times()
    factor = amx_speedup()
    modules = build_modules([read_opening(p) for p in notebook_paths()], times)
    day = plan(modules)
    end = _minutes(DAY_END)
    src = f"data/reference/measured/{TIMES_FILE}"
    lines = [
        "# Facilitator guide: the kit in one day",
        "",
        f"Generated by `{REGENERATE}` (`servelab.course.facilitator`) from each notebook's opening (learner "
        f"time), `{src}` (machine time: {times['source']}) and the reference results in "
        "`data/reference/measured/`. Do not edit by hand; a unit test fails when this file is stale.",
        "",
        "## The day",
        "",
        f"The day runs {DAY_START}–{DAY_END} in the {times['profile']} profile. Each slot is the larger of the "
        "learner time the notebook's opening states (the upper end of its range) and the machine time of "
        f"the last CI run on {times['machine']} ({times['date']}), plus discussion, rounded up to "
        f"{SLOT_STEP_MIN} minutes. Learners read and do the exercises while cells run, so the two overlap. "
        "Breaks are taken at the first module boundary after their time.",
        "",
        f"Everything, no cuts: {sum(m.slot_min for m in modules)} minutes of modules, ending at "
        f"{_clock(end_of(day.full))}"
        + (f", {end_of(day.full) - end} minutes past {DAY_END}." if end_of(day.full) > end else "."),
        "",
        "### Cut lines",
        "",
        "Run late? Drop these in order; each line's saving is computed from the slots above, and the end "
        "time assumes every cut above it is applied too. Before any of them: stay in the quick profile (a "
        "full-profile run multiplies the machine time; each notebook's opening says by how much).",
        "",
        "| # | cut | saves (min) | day ends |",
        "|---|---|---|---|",
        *[
            f"| {i} | {c.cut.label} | {c.saves_min} | {_clock(c.ends)}{' (fits)' if c.ends <= end else ''} |"
            for i, c in enumerate(day.cut_lines, start=1)
        ],
        "",
        f"All cuts together save {sum(c.saves_min for c in day.cut_lines)} minutes.",
        "",
    ]
    if day.fits:
        lines.append(
            f"### The agenda ({'no cuts needed' if not day.applied else f'cut lines 1–{day.applied} applied'}, "
            f"ends {_clock(end_of(day.day))})"
        )
    else:
        lines.append(f"### The agenda (every cut applied, still overruns {DAY_END} by {end_of(day.day) - end} minutes)")
    lines += ["", *_agenda_table(day.day), ""]
    if day.applied:
        lines += ["### The agenda with nothing cut", "", *_agenda_table(day.full), ""]
    lines += _modules_section(modules, factor, src)
    lines += _playbook(factor)
    return "\n".join(lines).rstrip() + "\n"


def _modules_section(modules: Sequence[Module], factor: float, src: str) -> list[str]:
    lines = [
        "## Module by module",
        "",
        "Expected figures come from the reference results in `data/reference/measured/`, measured on a "
        '2-core Intel Xeon with AVX-512 and AMX (quick profile). The README\'s "How long things take" '
        f"section states that machine ran the kit about {factor:g}× faster than a 2-core AVX2-only EPYC: on "
        f"AVX2-only machines (laptops included) expect times about {factor:g}× longer and speeds about "
        f"{factor:g}× lower. Machine times below are from `{src}` (the AVX2 machine).",
        "",
    ]
    for m in modules:
        notes = NOTES[m.name]
        lines += [f"### `{m.name}`: {m.opening.title}", ""]
        lines.append(
            f"Learner time {m.learner_min:.0f} min (from its opening); machine time {m.machine_min:.1f} min "
            f"on the AVX2 machine; slot {m.slot_min} min."
        )
        lines += ["", "Talking points:", "", *[f"- {p}" for p in notes.points], ""]
        if m.name in EXPECTED:
            ref_name, phrase = EXPECTED[m.name]
            ref = _reference(ref_name)
            lines += [
                f"Expected (reference results `{ref_name}.json`, {ref['profile']} profile, {ref['updated']}):",
                "",
                *[f"- {x}" for x in phrase(ref, factor)],
                "",
            ]
        lines += [f"If it looks different: {notes.if_different}", ""]
    return lines


def _playbook(factor: float) -> list[str]:
    pre = _reference("00_preflight")
    vllm_s = pre["vllm_ready_s"]
    return [
        "## Failure playbook",
        "",
        "### vLLM is slow to start",
        "",
        f"Normal: {_fmt(vllm_s)} s on the reference machine, about {_fmt(vllm_s * factor, 0)} s on an "
        "AVX2-only 2-core machine (eager mode, quick profile; from `00_preflight.json` and the README's "
        "speed-up). Every start writes its log to `results/logs/vllm-<port>-<unix time>.log` (also "
        "printed by `servelab engine start vllm`); `tail -f` it: a start that is still loading or "
        "profiling is slow, not stuck. The usual causes are a second job on the same cores (two learners "
        "sharing a VM, or a notebook left running) and a cold model cache (`make model`). A start that "
        "fails prints the log's tail in the notebook's error.",
        "",
        "### The alert never fires on a loaded host",
        "",
        "`VLLMQueueBacklog` needs an unbroken run of scrapes showing the queue above its threshold for its "
        "`for:` duration. On a starved host a scrape of vLLM's `/metrics` can time out; a failed scrape "
        "resets the pending alert and the clock starts again (`tests/live/test_alerts_in_prometheus.py` "
        "loads for longer than the alert needs for exactly this reason). Check `up` and "
        "`scrape_duration_seconds` for the vLLM job in Prometheus: if `up` dropped to 0 during the load, "
        "the rule is fine and the host is too busy. Stop other work on the machine and rerun the load cell.",
        "",
        "### Out of memory",
        "",
        "vLLM on the CPU reserves its KV cache up front (`VLLM_CPU_KVCACHE_SPACE`, set from "
        "`VLLMOptions.kv_cache_gib`); two vLLM servers plus a notebook can exceed a small VM. Check for "
        "leftover engines first (below), then restart the kernel. The kit needs about 8 GiB of RAM (README).",
        "",
        "### A stuck kernel",
        "",
        "Interrupt the kernel first; the kit's waits have timeouts and raise an error that says what to run "
        "next. If it does not respond, restart it: every server the kernel started runs in its own process "
        "group and is stopped when the kernel exits or dies. Then rerun the notebook from the top: the kernel's "
        "variables are gone, the results files of earlier notebooks are not.",
        "",
        "### An engine left running",
        "",
        "Running a cell again stops what its earlier run left running, and says so; the notebook's last cell "
        "(`servelab.procs.stop_all()`) stops everything its kernel started. For servers of another kernel or a "
        "crashed one: every server the kit starts (engines, Prometheus, Alertmanager, the gateway) carries "
        "`SERVELAB_MANAGED` in its environment. `servelab engine leftovers` lists them (exit 1 if any) and "
        "`servelab stop` (or `make leftovers`) stops them all; it covers every managed server, not only "
        "engines. A server started outside the kit is not found this way.",
        "",
    ]


def write_markdown() -> Path:
    """Write the guide to ``docs/facilitator-guide.md``; returns the path."""
    path = repo_root() / GUIDE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(), encoding="utf-8")
    return path
