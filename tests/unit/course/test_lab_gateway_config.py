"""Lab 08's checks reject the colleague's config and the classic mistakes, and accept the reference, graded
on recorded trials (no gateway, no engine): what the run would have shown for each config."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import nbformat
import pytest
import yaml

from servelab.course.labs import gateway_config as gc
from servelab.engines.launch import Engine
from servelab.gateway import GatewayConfig

ROOT = Path(__file__).resolve().parents[3]
SOLUTION = (ROOT / "labs" / "solutions" / "lab08_gateway.yaml").read_text()
CHAT_ID, BATCH_ID = "support-chat", "nightly-batch"


def _starting_point() -> str:
    nb = nbformat.read(ROOT / "labs" / "lab08_the_gateway_that_leaks.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith("# YOUR TURN"))
    return cell.split('"""')[1]


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """An engine object that is never started: the config loader only reads its URL."""
    return Engine("llama-server", "smollm2-135m-instruct", "cpu", name="t", command=["true"], port=9, log_path=tmp_path)


def _config(text: str, engine: Engine, tmp_path: Path) -> GatewayConfig:
    config = gc.load_learner_config(text, engine, tmp_path / "run")
    assert isinstance(config, GatewayConfig), config
    return config


def _reply(
    tenant: str,
    phase: str,
    status: int | None,
    latency_s: float,
    engine_s: float | None = None,
    retry_after: str | None = None,
    code: str | None = None,
) -> gc.Reply:
    """A reply as recorded; an answered one spent all but 0.05 s in the engine unless ``engine_s`` says otherwise."""
    if engine_s is None and status == 200:
        engine_s = latency_s - 0.05
    return gc.Reply(tenant, phase, status, latency_s, retry_after, uuid.uuid4().hex, code, engine_s=engine_s)


def _line(reply: gc.Reply, prompt: str | None = None) -> dict:
    key_id = CHAT_ID if reply.tenant == "chat" else BATCH_ID
    line = {"request_id": reply.request_id, "key_id": key_id, "status": reply.status, "outcome": "ok"}
    return line if prompt is None else {**line, "prompt": prompt}


def _trial(
    flood_s: float,
    batch: list[gc.Reply],
    prompts: bool = False,
    deferred: float = 0.0,
    chat_status: int | None = 200,
    drop_lines: int = 0,
    alone_s: float = 0.15,
) -> gc.Trial:
    """A run as it would be recorded: chat alone at ``alone_s``, under the flood at ``flood_s``, then ``batch``."""
    chat = [_reply("chat", "warm-up", 200, 2 * alone_s)]
    chat += [_reply("chat", "alone", 200, alone_s) for _ in range(gc.UNLOADED_REQUESTS)]
    # Under the flood a chat request is served in 0.3 s; the rest of its latency it waited.
    chat += [_reply("chat", "flood", chat_status, flood_s, engine_s=0.3) for _ in range(gc.FLOODED_REQUESTS)]
    replies = chat + batch
    chat_prompt = gc.CHAT_PROMPTS[0]
    lines = [_line(r, (chat_prompt if r.tenant == "chat" else gc.BATCH_PROMPT) if prompts else None) for r in replies]
    lines = lines[drop_lines:]
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return gc.Trial(replies, lines, text, deferred, {"chat": CHAT_ID, "batch": BATCH_ID})


def _throttled_batch() -> list[gc.Reply]:
    return [_reply("batch", "flood", 200, 1.2) for _ in range(6)] + [
        _reply("batch", "flood", 429, 0.01, retry_after="1", code="concurrency_limit") for _ in range(20)
    ]


def _flooding_batch() -> list[gc.Reply]:
    return [_reply("batch", "flood", 200, 5.0) for _ in range(40)]


def _failed(checks: list) -> dict[str, str]:
    return {c.name: c.hint for c in checks if not c.ok}


def test_the_starting_point_is_the_colleagues_config_and_the_solution_fixes_its_three_flaws(engine, tmp_path) -> None:
    start, solution = _config(_starting_point(), engine, tmp_path), _config(SOLUTION, engine, tmp_path)
    assert start.audit_prompts and start.max_outstanding_per_replica is None
    assert not solution.audit_prompts and solution.max_outstanding_per_replica == gc.SLOTS
    batch = {c.id: c for c in solution.keys}[BATCH_ID]
    assert batch.max_concurrent < gc.SLOTS  # a slot always stays free for the chat
    # Only what the lab fills in, and the keys' hashes, are shared; the lab sets replica and audit file.
    assert [k.sha256 for k in start.keys] == [k.sha256 for k in solution.keys]
    assert start.audit_path == str(tmp_path / "run" / "audit.jsonl") and start.replicas[0].url == engine.url


def test_the_starting_point_fails_four_checks_each_with_a_hint_that_says_what_was_seen(engine, tmp_path) -> None:
    start = _config(_starting_point(), engine, tmp_path)
    failed = _failed(gc.check_gateway(start, _trial(8.0, _flooding_batch(), prompts=True, deferred=5)))
    assert len(failed) == 4 and "every chat request is answered" not in failed
    hints = " ".join(failed.values())
    bound = gc.LATENCY_FACTOR * 0.15
    assert "8.00 s" in hints and f"over the bound of {bound:.2f} s" in hints  # the latencies seen, and the bound
    assert "they waited 7.70, 7.70" in hints  # and how much of them was waiting, from the engine's timings
    assert "40× 200" in hints and "max_concurrent=1000" in hints  # the batch key's statuses and limits
    assert "'prompt' field" in hints and "4111 1111" in hints  # the offending field and what it leaked
    assert "max_outstanding_per_replica is not set" in hints and "up to 5 requests" in hints


def test_the_reference_solution_passes_every_check(engine, tmp_path) -> None:
    checks = gc.check_gateway(_config(SOLUTION, engine, tmp_path), _trial(0.5, _throttled_batch()))
    assert len(checks) >= 3 and _failed(checks) == {}


def test_each_classic_mistake_fails_its_own_check(engine, tmp_path) -> None:
    solution = _config(SOLUTION, engine, tmp_path)
    # Limits fixed, prompts still logged.
    assert list(_failed(gc.check_gateway(solution, _trial(0.5, _throttled_batch(), prompts=True)))) == [
        "the audit log has a line for every request, and no prompt or key"
    ]
    # The batch key capped at the slots: no engine queue, but the chat waits in the gateway for a slot.
    latency = f"chat latency under the flood stays within {gc.LATENCY_FACTOR:g}× its latency alone"
    assert latency in _failed(gc.check_gateway(solution, _trial(3.0, _throttled_batch())))
    assert latency not in _failed(gc.check_gateway(solution, _trial(gc.LATENCY_FACTOR * 0.15, _throttled_batch())))
    # Limits so tight that they hit the person too.
    tight = _failed(gc.check_gateway(solution, _trial(0.5, _throttled_batch(), chat_status=429)))
    assert "the batch key, not the chat key, is refused with 429 and Retry-After" in tight
    assert "every chat request is answered" in tight and "hit the person" in " ".join(tight.values())
    # A bound above the replica's slots still queues inside the engine.
    wide = _config(
        SOLUTION.replace("max_outstanding_per_replica: 4", "max_outstanding_per_replica: 16"), engine, tmp_path
    )
    assert "more than the replica's 4 slots" in " ".join(
        _failed(gc.check_gateway(wide, _trial(0.5, _throttled_batch()))).values()
    )


def test_the_audit_check_catches_missing_lines_raw_keys_and_429s_without_retry_after(engine, tmp_path) -> None:
    solution = _config(SOLUTION, engine, tmp_path)
    missing = _failed(gc.check_gateway(solution, _trial(0.5, _throttled_batch(), drop_lines=2)))
    assert "2 answered requests have no line" in " ".join(missing.values())
    leaky = _trial(0.5, _throttled_batch())
    leaky.audit_text += json.dumps({"error": f"bad key {gc.TENANT_KEYS['batch']}"}) + "\n"
    assert "raw key of the batch tenant" in " ".join(_failed(gc.check_gateway(solution, leaky)).values())
    no_retry = [_reply("batch", "flood", 429, 0.01, code="rate_limit_requests")]
    assert "carried no Retry-After" in " ".join(_failed(gc.check_gateway(solution, _trial(0.5, no_retry))).values())


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("keys: [unclosed", "not valid YAML"),
        ("- a list", "not a mapping"),
        (SOLUTION.replace("request_timeout_s", "request_timeout"), "request_timeout"),
        (SOLUTION.replace("d37b46c6", "00000000"), "no key entry for the chat tenant's key"),
    ],
)
def test_a_config_that_cannot_run_gets_one_row_with_a_hint(engine, tmp_path, text: str, said: str) -> None:
    config = gc.load_learner_config(text, engine, tmp_path / "run")
    assert isinstance(config, str) and said in config
    checks = gc.check_gateway(config, None)
    assert len(checks) == 1 and not checks[0].ok and said in checks[0].hint


def test_a_gateway_that_did_not_start_is_a_failed_check_not_a_traceback(engine, tmp_path) -> None:
    trial = gc.Trial([], [], "", None, error="gateway exited with code 1 before it was ready.")
    failed = _failed(gc.check_gateway(_config(SOLUTION, engine, tmp_path), trial))
    assert "exited with code 1" in failed["the gateway starts with the config"]


def test_the_prompts_are_found_verbatim_in_a_json_audit_line() -> None:
    """The audit writer keeps non-ASCII as is; a prompt with a quote or backslash would be escaped and missed."""
    for prompt in (*gc.CHAT_PROMPTS, gc.BATCH_PROMPT):
        assert prompt in json.dumps({"prompt": prompt}, ensure_ascii=False)


def test_the_trial_table_counts_requests_by_tenant_phase_and_status() -> None:
    table = _trial(0.5, _throttled_batch()).table()
    counts = {(r.tenant, r.phase, r.status): r.requests for r in table.itertuples()}
    assert counts[("batch", "flood", "429")] == 20 and counts[("chat", "alone", "200")] == gc.UNLOADED_REQUESTS
    gave_up = _trial(gc.CHAT_GIVE_UP_S, _flooding_batch(), chat_status=None).table()
    assert "no answer" in set(gave_up["status"])


def test_the_solution_file_is_yaml_the_gateway_accepts_apart_from_what_the_lab_fills_in() -> None:
    data = yaml.safe_load(SOLUTION)
    assert "replicas" not in data and "audit_path" not in data


def test_chat_requests_that_got_no_answer_fail_however_generous_the_bound(engine, tmp_path) -> None:
    """On a slow machine the bound can exceed the time a person waits; a request abandoned unanswered still fails."""
    start = _config(_starting_point(), engine, tmp_path)
    trial = _trial(gc.CHAT_GIVE_UP_S, _flooding_batch(), chat_status=None, alone_s=2.0)
    trial.replies = [r if r.status == 200 else dataclasses.replace(r, error=gc.GAVE_UP) for r in trial.replies]
    assert gc.LATENCY_FACTOR * 2.0 > gc.CHAT_GIVE_UP_S
    failed = _failed(gc.check_gateway(start, trial))
    assert "the person gave up" in failed["every chat request is answered"]
    latency = f"chat latency under the flood stays within {gc.LATENCY_FACTOR:g}× its latency alone"
    assert f"{gc.FLOODED_REQUESTS} of {gc.FLOODED_REQUESTS} got no answer" in failed[latency]
