"""Checks for the "Your turn" exercises of notebook 01 (engines compared).

Each check grades what the answer does against what this run measured or what the real engine answers:
the forced-length fields go to llama.cpp's running native server (``llama-server``), on both of its OpenAI
endpoints, and its ``usage`` counts the tokens; the TPOT function is compared with the harness's own
figure for every run the sweep saved; the engine choice is compared with the choice this run's table
implies. None of them compares the answer's text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd

from servelab.course.grading import LabCheck

if TYPE_CHECKING:
    from servelab.engines.launch import Engine

# A question SmolLM2 answers in a few tokens and then ends with its end-of-sequence token, so a body that
# only sets max_tokens gets a short answer: the lengths asked for are well past that natural end. The
# completions endpoint gets the same question in SmolLM2's chat format (ChatML), written out by hand.
FORCED_QUESTION = "What is 2+2? Reply with just the number."
FORCED_PROMPTS: dict[str, dict[str, Any]] = {
    "completions": {"prompt": f"<|im_start|>user\n{FORCED_QUESTION}<|im_end|>\n<|im_start|>assistant\n"},
    "chat/completions": {"messages": [{"role": "user", "content": FORCED_QUESTION}]},
}
FORCED_LENGTHS = (12, 20)
# A body whose cap is far above the length asked for would make the check wait for a long answer.
MAX_TOKENS_FACTOR = 4
# Fields that do not change an answer's length; any other the server did not act on is worth naming.
_NEUTRAL_FIELDS = {"max_tokens", "n_predict", "temperature", "stream", "seed", "top_p", "top_k"}
# How close a TPOT must be to the harness's: the same formula agrees to rounding; dividing by the token
# count instead of the gaps between tokens is off by about one part in the answer's length.
TPOT_RELATIVE_TOLERANCE = 0.005


def _cap(fields: dict[str, Any]) -> Any:
    """The answer's token cap: OpenAI's ``max_tokens``, or llama-server's own name for it, ``n_predict``."""
    return fields.get("max_tokens", fields.get("n_predict"))


def _forced_length_once(fields: dict[str, Any], engine: Engine, endpoint: str, n: int) -> LabCheck:
    name = f"llama-server's /v1/{endpoint} answers exactly {n} tokens"
    cap = _cap(fields)
    if not isinstance(cap, int) or isinstance(cap, bool) or not 0 < cap <= MAX_TOKENS_FACTOR * n:
        return LabCheck(
            name,
            False,
            f"max_tokens is {cap!r}: without a cap of n the server writes until its context is full "
            f"(or past n). Set max_tokens to n, then make the model unable to stop before it.",
        )
    body = {"model": engine.served_model, "temperature": 0.0, **FORCED_PROMPTS[endpoint], **fields}
    try:
        response = httpx.post(f"{engine.base_url}/{endpoint}", json=body, timeout=180, trust_env=False)
    except httpx.HTTPError as err:
        return LabCheck(name, False, f"the request failed ({type(err).__name__}: {err}); is llama-server running?")
    if response.status_code != 200:
        return LabCheck(
            name,
            False,
            f"llama-server refused the body with HTTP {response.status_code}: {response.text[:200]}. "
            "Check the field names and value types against its request options (tools/server/README.md).",
        )
    answer = response.json()
    tokens = answer.get("usage", {}).get("completion_tokens")
    finish = answer["choices"][0].get("finish_reason")
    if tokens == n:
        return LabCheck(name, True, "")
    if finish == "stop":
        unknown = sorted(set(fields) - _NEUTRAL_FIELDS - {"ignore_eos", "logit_bias"})
        why = (
            "The model ended its answer with its end-of-sequence token: max_tokens is a cap, not a length. "
            "llama-server has a request field that makes it ignore that token (its request options in "
            "tools/server/README.md; section 2 says how the harness forces the length on each engine)."
        )
        if unknown:
            why += f" llama-server ignores fields it does not know: is {', '.join(unknown)} spelt as it spells it?"
    else:
        why = "Set max_tokens to exactly n."
    return LabCheck(name, False, f"usage.completion_tokens was {tokens} (finish_reason {finish!r}). {why}")


def check_forced_length(answer: Callable[[int], dict[str, Any]], engine: Engine) -> list[LabCheck]:
    """Send the fields ``answer(n)`` returns to the running llama-server, on ``/v1/completions`` and on
    ``/v1/chat/completions``, with a question it would answer in a few tokens, and count the tokens it
    generated (``usage.completion_tokens``)."""
    checks = []
    for n in FORCED_LENGTHS:
        fields = answer(n)
        if not isinstance(fields, dict):
            checks.append(LabCheck(f"fields for n={n} are a dict", False, f"got {type(fields).__name__}"))
            continue
        checks += [_forced_length_once(fields, engine, endpoint, n) for endpoint in FORCED_PROMPTS]
    return checks


def _runs(runs_dir: Path) -> list[tuple[str, int, pd.DataFrame, float]]:
    """Every run the sweep saved: engine, concurrency, its per-request records, the harness's TPOT p50."""
    found = []
    for path in sorted(runs_dir.glob("*-concurrency*.json")):
        doc = json.loads(path.read_text())
        records = pd.read_csv(runs_dir / doc["records_csv"])
        engine = doc["config"]["workload"]["engine_kind"]
        found.append((engine, int(doc["config"]["concurrency"]), records, float(doc["summary"]["tpot_p50_s"])))
    return found


def _close(value: Any, expected: float) -> bool:
    return (
        isinstance(value, int | float)
        and math.isfinite(value)
        and math.isclose(value, expected, rel_tol=TPOT_RELATIVE_TOLERANCE)
    )


def _shown(value: Any) -> str:
    return f"{value:.4f} s" if isinstance(value, int | float) else repr(value)


def _with_failures(records: pd.DataFrame) -> pd.DataFrame:
    """The records plus as many failed requests, each cut off after two fast tokens: a TPOT that counts
    them lands far below the successful requests' median."""
    failed = records.copy()
    failed["index"] += len(records)
    failed["status"] = "error"
    failed["ttft_s"] = 0.001
    failed["e2e_s"] = 0.002
    failed["output_tokens"] = 2
    failed["error"] = "connection reset"
    return pd.concat([records, failed], ignore_index=True)


def check_tpot_p50(answer: Callable[[pd.DataFrame], float], runs_dir: Path) -> list[LabCheck]:
    """Compare ``answer(records)`` with the harness's ``tpot_p50_s`` on every run in ``runs_dir``, with the
    harness's own ``tpot_s`` column removed, and on one run with failed requests added."""
    runs = _runs(runs_dir)
    if not runs:
        return [LabCheck("runs to compare with", False, f"no *-concurrency*.json in {runs_dir}: run section 2 first")]
    checks = []
    for engine in sorted({run[0] for run in runs}):
        wrong = []
        for kind, users, records, expected in runs:
            if kind != engine:
                continue
            got = answer(records.drop(columns=["tpot_s"]))
            if not _close(got, expected):
                wrong.append(f"concurrency {users}: yours {_shown(got)}, the harness's {expected:.4f} s")
        checks.append(
            LabCheck(
                f"matches the harness's TPOT p50 on every {engine} run",
                not wrong,
                "; ".join(wrong) + ". TPOT leaves out the wait for the first token: (e2e - TTFT) spread over "
                "the gaps between output tokens, one fewer than the tokens, then the median.",
            )
        )
    kind, users, records, expected = max(runs, key=lambda run: len(run[2]))  # the failures leave it unchanged
    got = answer(_with_failures(records).drop(columns=["tpot_s"]))
    checks.append(
        LabCheck(
            "leaves failed requests out",
            _close(got, expected),
            f"on the {kind} run at concurrency {users} plus as many failed requests: yours {_shown(got)}, expected "
            f"{expected:.4f} s. Latency figures count successful requests only (status 'ok'); failures "
            "are counted separately, as the sweep's errors and timeouts columns.",
        )
    )
    return checks


def _expected_choice(sweep: pd.DataFrame, users: int, slo_s: float) -> str | None:
    rows = sweep[(sweep["concurrency"] == users) & (sweep["ttft_p50_s"] <= slo_s)]
    return None if rows.empty else str(rows.loc[rows["output_token_throughput"].idxmax(), "engine"])


def _swapped(sweep: pd.DataFrame) -> pd.DataFrame:
    """The same measurements with the engines' labels swapped (first with last, in sorted order)."""
    names = sorted(sweep["engine"].unique())
    return sweep.assign(engine=sweep["engine"].map(dict(zip(names, reversed(names), strict=True))))


def check_choose_engine(
    answer: Callable[[pd.DataFrame, int, float], str | None], sweep: pd.DataFrame
) -> list[LabCheck]:
    """Ask ``answer`` for each measured number of users under three SLOs set from this run's own TTFTs:
    tighter than both engines, between them, and looser than both; compare with what the table implies.
    Both engines batch, so which one wins can change from machine to machine: a fourth check asks again on
    the same table with the engines' labels swapped, which only an answer that reads the numbers passes."""
    cases: dict[str, list[tuple[int, float]]] = {"no engine meets it": [], "one engine meets it": [], "both do": []}
    for users, rows in sweep.groupby("concurrency"):
        fast, slow = sorted(rows["ttft_p50_s"])
        cases["no engine meets it"].append((int(users), fast / 2))
        cases["one engine meets it"].append((int(users), (fast + slow) / 2))
        cases["both do"].append((int(users), slow * 2))
    rule = (
        ". Keep the rows for that many users whose ttft_p50_s is within the SLO; of those, the engine with the "
        "highest output_token_throughput; None when no row is left."
    )

    def wrong_on(table: pd.DataFrame, asks: list[tuple[int, float]], which: str) -> list[str]:
        wrong = []
        for users, slo in asks:
            expected = _expected_choice(table, users, slo)
            got = answer(table.copy(), users, slo)
            if got != expected:
                wrong.append(f"concurrency {users}, SLO {slo:.3f} s: yours {got!r}, {which} says {expected!r}")
        return wrong

    checks = []
    for case, asks in cases.items():
        wrong = wrong_on(sweep, asks, "this run's table")
        checks.append(LabCheck(f"median TTFT SLO: {case}", not wrong, "; ".join(wrong) + rule))
    wrong = wrong_on(_swapped(sweep), cases["one engine meets it"] + cases["both do"], "the swapped table")
    checks.append(
        LabCheck(
            "follows the measurements, not the engines' names",
            not wrong,
            "; ".join(wrong) + ". Asked again on this run's table with the two engines' labels swapped, the "
            "answer must swap too: which engine serves a load better is measured, not known in advance" + rule,
        )
    )
    return checks
