"""Lab 02's checks fail the colleague's manifests and the classic mistakes, and pass the reference, fed with
recorded vLLM log lines and fabricated runs (no process starts here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from servelab.course.labs import startup
from servelab.engines.failure import failure_line
from servelab.engines.model import SERVED_NAME
from servelab.errors import ServelabError
from servelab.k8s import shipped
from servelab.procs import ServerStartError

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK = ROOT / "labs" / "lab02_the_probe_that_gives_up.ipynb"
SOLUTION = (ROOT / "labs" / "solutions" / "lab02_vllm_start.yaml").read_text()
START = next(
    "".join(c["source"]).split('"""')[1]
    for c in json.loads(NOTEBOOK.read_text())["cells"]
    if "".join(c["source"]).startswith("# YOUR TURN")
)
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The end of vLLM 0.32's log when --max-model-len is above the model's limit (recorded on this machine).
REFUSED_LOG = """\
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/engine/arg_utils.py", line 1955, in create_model_config
    return ModelConfig(
           ^^^^^^^^^^^^
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
  Value error, User-specified max_model_len (16384) is greater than the derived max_model_len \
(max_position_embeddings=8192.0 or model_max_length=None in model's config.json). To allow overriding this maximum, \
set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. [type=value_error, input_value=ArgsKwargs((), {'model': \
...nderer_num_workers': 1}), input_type=ArgsKwargs]
    For further information visit https://errors.pydantic.dev/2.14/v/value_error
"""
# An engine-core failure: the root cause first, then the API server's re-raise that points back at it.
ENGINE_CORE_LOG = """\
(EngineCore pid=812) ValueError: To serve at least one request with the models's max seq len (8192), (0.38 GiB KV \
cache is needed, which is larger than the available KV cache memory (0.12 GiB).
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/vllm/v1/engine/utils.py", line 933, in wait_for_engine_startup
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
READY_S = 50.0  # what a start in eager mode measured on 2 cores
REASON = f"The model `{HF_ID}` does not exist. Valid aliases: {SERVED_NAME}."  # vLLM's words, recorded
NOT_FOUND = f"404: {REASON}"
RAN = startup.Run(ready_s=READY_S, statuses={"/health": "200"}, listed=[SERVED_NAME], client="200")
REFUSED = startup.Run(ready_s=None, error=failure_line(REFUSED_LOG, "vllm"))

CHECKS = [
    "Kubernetes 1.25, 1.32, 1.35, 1.36, 1.37 accept both objects",
    "vLLM starts with the Deployment's flags",
    "the startupProbe allows 2x the start-up time measured here",
    "every probe asks a path vLLM answers 200",
    "the probes call the port vLLM listens on",
    "the client asks for a model vLLM lists",
]
VALID, STARTS, BUDGET, PATHS, PORTS, CLIENT = CHECKS


def _failed(text: str, run: startup.Run | None) -> dict[str, str]:
    return {c.name: c.hint for c in startup.check_startup(text, run) if not c.ok}


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


def _container(text: str) -> dict[str, Any]:
    return startup.parse(text).container


def _flags(words: list[str]) -> dict[str, list[str]]:
    return startup._flags({"args": words})


def test_the_starting_point_is_the_kits_cpu_overlay_with_the_colleagues_edits() -> None:
    kit = _flags(shipped.container_args("cpu"))
    edits = {"--max-model-len": ["16384"], "--port": ["8080"], "--enforce-eager": []}
    assert startup._flags(_container(START)) == {**kit, **edits}
    assert startup._flags(_container(SOLUTION)) == {**kit, "--max-model-len": ["8192"], "--enforce-eager": []}
    base = yaml.safe_load((ROOT / "manifests" / "vllm" / "base" / "deployment.yaml").read_text())
    kit_startup = base["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert _container(SOLUTION)["startupProbe"] == kit_startup


def test_the_reference_passes_every_check() -> None:
    assert [c.name for c in startup.check_startup(SOLUTION, RAN)] == CHECKS
    assert _failed(SOLUTION, RAN) == {}


def test_untouched_vllm_refuses_and_every_other_check_says_what_it_saw() -> None:
    failed = _failed(START, REFUSED)
    assert set(failed) == {STARTS, BUDGET, PATHS, PORTS, CLIENT}
    assert "User-specified max_model_len (16384)" in failed[STARTS] and "[type=" not in failed[STARTS]
    assert "40 s" in failed[BUDGET] and "not measured" in failed[BUDGET]  # 10 + 10 x 3
    assert "'/readyz'" in failed[PATHS]
    assert "containerPort 8000" in failed[PORTS] and "--port (8080)" in failed[PORTS]
    assert HF_ID in failed[CLIENT] and SERVED_NAME in failed[CLIENT]


def test_once_it_starts_the_probes_and_the_client_fail_on_what_vllm_answered() -> None:
    started = _edit(START, '"16384"', '"8192"')
    run = startup.Run(READY_S, statuses={"/health": "200", "/readyz": "404"}, listed=[SERVED_NAME], client=NOT_FOUND)
    failed = _failed(started, run)
    assert set(failed) == {BUDGET, PATHS, PORTS, CLIENT}
    assert "50 s" in failed[BUDGET] and "40 s" in failed[BUDGET] and "100 s" in failed[BUDGET]
    assert "readinessProbe asks '/readyz', which vLLM answered 404" in failed[PATHS]
    assert NOT_FOUND in failed[CLIENT]


@pytest.mark.parametrize(
    ("allowance", "ok"),
    [
        ("periodSeconds: 10\n            failureThreshold: 10", True),  # 100 s: exactly twice
        ("periodSeconds: 10\n            failureThreshold: 9", False),  # 90 s: above the start, within no margin
        ("initialDelaySeconds: 40\n            periodSeconds: 10\n            failureThreshold: 6", True),
        ("failureThreshold: 9", False),  # periodSeconds defaults to 10
        ('periodSeconds: "10"\n            failureThreshold: 60', False),  # a string, not a number
    ],
)
def test_the_allowance_counts_the_initial_delay_and_kubernetes_defaults(allowance: str, ok: bool) -> None:
    text = _edit(SOLUTION, "periodSeconds: 10\n            failureThreshold: 60", allowance)
    assert (BUDGET not in _failed(text, RAN)) is ok


def test_a_long_liveness_delay_is_no_startup_probe() -> None:
    text = _edit(
        SOLUTION,
        "          startupProbe:\n            httpGet: {path: /health, port: http}\n            periodSeconds: 10\n"
        "            failureThreshold: 60\n",
        "",
    )
    text = _edit(text, "failureThreshold: 6", "failureThreshold: 6\n            initialDelaySeconds: 600")
    failed = _failed(text, RAN)
    assert set(failed) == {BUDGET} and "660 s" in failed[BUDGET]


def test_either_port_fix_passes_and_a_probe_on_another_number_fails() -> None:
    moved = _edit(_edit(SOLUTION, '- "8000"', '- "8080"'), "containerPort: 8000", "containerPort: 8080")
    assert _failed(moved, RAN) == {}
    by_number = _edit(
        SOLUTION,
        "httpGet: {path: /health, port: http}\n            periodSeconds: 5",
        "httpGet: {path: /health, port: 8080}\n            periodSeconds: 5",
    )
    assert "readinessProbe calls port 8080 (containerPort 8080)" in _failed(by_number, RAN)[PORTS]
    no_port_flag = _edit(SOLUTION, '            - --port\n            - "8000"\n', "")
    assert PORTS not in _failed(no_port_flag, RAN)  # vLLM's default --port is 8000


def test_renaming_the_service_instead_of_fixing_the_client_fails() -> None:
    renamed = _edit(
        _edit(SOLUTION, f"- {SERVED_NAME}", f"- {HF_ID}"), f"OPENAI_MODEL: {SERVED_NAME}", f"OPENAI_MODEL: {HF_ID}"
    )
    assert "fix the client's OPENAI_MODEL" in _failed(renamed, RAN)[CLIENT]
    unnamed = _edit(SOLUTION, f"            - --served-model-name\n            - {SERVED_NAME}\n", "")
    assert f"vLLM lists its --model value ['{HF_ID}']" in _failed(unnamed, RAN)[CLIENT]


def test_a_client_answered_404_fails_even_when_the_yaml_looks_right() -> None:
    run = startup.Run(READY_S, statuses={"/health": "200"}, listed=[SERVED_NAME], client=NOT_FOUND)
    assert set(_failed(SOLUTION, run)) == {CLIENT}


def test_the_deployments_flags_become_the_labs_vllm_options() -> None:
    options = startup.vllm_options(
        {
            "args": ["--model", HF_ID, "--max-model-len=4096", "--no-enable-prefix-caching", "--swap-space", "2"],
            "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "2"}],
        }
    )
    assert (options.max_model_len, options.enable_prefix_caching, options.enforce_eager) == (4096, False, False)
    assert options.kv_cache_gib == 2 and options.extra_args == ["--swap-space", "2"] and options.dtype is None
    with pytest.raises(ServelabError, match="VLLM_CPU_KVCACHE_SPACE"):
        startup.vllm_options({"env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "64"}]})


def test_answers_the_lab_cannot_run_get_one_clear_check() -> None:
    for text, said in [
        ("spec: [unclosed", "does not parse"),
        (SOLUTION.split("---")[0], "0 ConfigMap"),
        (_edit(SOLUTION, f"OPENAI_MODEL: {SERVED_NAME}", "MODEL: x"), "data.OPENAI_MODEL"),
        (_edit(SOLUTION, '"8192"', '"8k"'), "whole number"),
    ]:
        (check,) = startup.check_startup(text, RAN)
        assert not check.ok and said in check.hint
    (not_run,) = startup.check_startup(SOLUTION, None)
    assert not not_run.ok and "run_answer" in not_run.hint


def test_a_setting_the_lab_ignores_is_named_in_the_hint() -> None:
    text = _edit(
        START,
        "- name: HF_HUB_OFFLINE",
        '- name: VLLM_ALLOW_LONG_MAX_MODEL_LEN\n              value: "1"\n            - name: HF_HUB_OFFLINE',
    )
    assert "does not pass it on" in _failed(text, REFUSED)[STARTS]


def test_error_line_is_vllms_own_reason() -> None:
    assert failure_line(REFUSED_LOG, "vllm").startswith("Value error, User-specified max_model_len (16384)")
    assert failure_line(ENGINE_CORE_LOG, "vllm").startswith("(EngineCore pid=812) ValueError: To serve at least")


class _FakeEngine:
    """What run_answer uses of an Engine: its URL, ready time, an OpenAI client and stop()."""

    url = "http://127.0.0.1:9"
    ready_seconds = READY_S

    def __init__(self) -> None:
        self.stopped = False
        request = httpx.Request("POST", self.url + "/v1/completions")
        not_found = openai.NotFoundError(
            f"Error code: 404 - {REASON}",
            response=httpx.Response(404, request=request),
            body={"message": REASON, "type": "NotFoundError", "param": "model", "code": 404},
        )

        class Models:
            @staticmethod
            def list() -> Any:
                return type("Page", (), {"data": [type("Model", (), {"id": SERVED_NAME})()]})()

        class Completions:
            @staticmethod
            def create(**body: Any) -> None:
                if body["model"] != SERVED_NAME:
                    raise not_found

        self.client = type("Client", (), {"models": Models, "completions": Completions})()

    def openai_client(self, timeout: float) -> Any:
        return self.client

    def stop(self) -> None:
        self.stopped = True


def test_run_answer_records_what_vllm_answered_and_always_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _FakeEngine()
    monkeypatch.setattr(startup, "start_vllm", lambda **kwargs: engine)
    monkeypatch.setattr(startup.k8s_probes, "http_status", lambda url: "200" if url.endswith("/health") else "404")
    run = startup.run_answer(_edit(START, '"16384"', '"8192"'))
    assert run == startup.Run(
        READY_S, statuses={"/health": "200", "/readyz": "404"}, listed=[SERVED_NAME], client=NOT_FOUND
    )
    assert engine.stopped

    broken = _FakeEngine()
    monkeypatch.setattr(startup, "start_vllm", lambda **kwargs: broken)
    monkeypatch.setattr(startup.k8s_probes, "http_status", lambda url: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        startup.run_answer(SOLUTION)
    assert broken.stopped


def test_run_answer_turns_a_refused_start_into_vllms_error_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "vllm.log"
    log.write_text(ENGINE_CORE_LOG)

    def refuse(timed_out: bool) -> Any:
        def start(**kwargs: Any) -> None:
            raise ServerStartError("vLLM (cpu) did not become ready.", "read it", log, timed_out=timed_out)

        return start

    monkeypatch.setattr(startup, "start_vllm", refuse(timed_out=False))
    run = startup.run_answer(START)
    assert run is not None and run.ready_s is None and run.error is not None
    assert run.error.startswith("(EngineCore pid=812) ValueError") and "KV cache memory" in run.error
    monkeypatch.setattr(startup, "start_vllm", refuse(timed_out=True))
    run = startup.run_answer(START)
    assert run is not None and run.error is not None
    assert run.error.startswith("not ready after 420 s; the last error its log states: (EngineCore pid=812)")


def test_run_answer_does_not_start_what_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(startup, "start_vllm", lambda **kwargs: pytest.fail("started"))
    assert startup.run_answer("spec: [unclosed") is None
    assert "Not run" in capsys.readouterr().out
