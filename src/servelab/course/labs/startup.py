"""Lab 02: a vLLM Deployment that never becomes Ready, and the client that gets 404 for its model.

The colleague's Deployment (the kit's ``manifests/vllm`` with the cpu overlay, edited by hand) asks for
a longer context than the model has, moves vLLM to another port than the one its probes call, gives the
startupProbe less time than a start takes, and probes a readiness route vLLM does not serve; the front
end's ConfigMap names the model by its Hugging Face id, which vLLM does not list. Each of these is
graded on a real vLLM that :func:`run_answer` starts here from the Deployment's own flags
(:func:`vllm_options`): whether it starts (and vLLM's own error line when not), how long it took to be
ready, what it answers on each probe's path, which models it lists and what it answers the client.

What the lab cannot take from the Deployment, it takes from the kit: the model's local copy, the served
name (:data:`servelab.engines.model.SERVED_NAME`, the service's contract that the manifests publish),
loopback and a free port. The Deployment's own ``--served-model-name`` and ``--port`` are graded as YAML
against those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from servelab.course.grading import LabCheck
from servelab.engines.failure import start_failure
from servelab.engines.launch import Engine, VLLMOptions, start_vllm
from servelab.engines.model import SERVED_NAME
from servelab.errors import ServelabError
from servelab.k8s import docs, manifests
from servelab.k8s import probes as k8s_probes
from servelab.procs import ServerStartError

MARGIN = 2.0  # the startup allowance over the start measured here: a busier or slower node takes longer
READY_TIMEOUT_S = 420.0  # eager mode is ready in about a minute on 2 cores; compiled, in about 3-4 minutes
MAX_KV_CACHE_GIB = 4  # the cpu overlay's VLLM_CPU_KVCACHE_SPACE: the most this lab reserves on a shared machine
CLIENT_MODEL_KEY = "OPENAI_MODEL"  # the ConfigMap key the front end reads its model name from
# The flags the lab takes from the kit instead of the Deployment (see the module docstring).
KIT_FLAGS = ("--model", "--served-model-name", "--host", "--port")
# Flags that map onto VLLMOptions fields; every other flag is passed to vLLM as it is.
VALUE_FLAGS = {"--max-model-len": "max_model_len", "--dtype": "dtype", "--max-num-seqs": "max_num_seqs"}
SWITCHES = {
    "--enforce-eager": ("enforce_eager", True),
    "--enable-prefix-caching": ("enable_prefix_caching", True),
    "--no-enable-prefix-caching": ("enable_prefix_caching", False),
}


@dataclass(frozen=True)
class Answer:
    """The learner's two objects: the vLLM Deployment's container and the front end's model name."""

    deployment: dict[str, Any]
    container: dict[str, Any]
    client_model: str
    configmap: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """What the lab's vLLM did with the Deployment's flags: no process, so the checks (and their unit
    tests) work from these observations alone.

    ``ready_s`` is None when vLLM never became ready; ``error`` is then its own error line.
    ``statuses`` maps each probe path asked to the status vLLM answered; ``client`` is the status of the
    client's request with the reason vLLM gave, e.g. ``"404: The model `x` does not exist."``.
    """

    ready_s: float | None
    error: str | None = None
    statuses: dict[str, str] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)
    client: str | None = None


def parse(text: str) -> Answer:
    """The Deployment and the ConfigMap of the learner's YAML; a :class:`ServelabError` says what is missing."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise ServelabError(f"the YAML does not parse: {err}", "fix the syntax at the line and column shown") from None
    kinds = {
        kind: [d for d in documents if isinstance(d, dict) and d.get("kind") == kind]
        for kind in ("Deployment", "ConfigMap")
    }
    if len(kinds["Deployment"]) != 1 or len(kinds["ConfigMap"]) != 1:
        raise ServelabError(
            f"found {len(kinds['Deployment'])} Deployment and {len(kinds['ConfigMap'])} ConfigMap objects",
            "keep exactly one of each (the vLLM Deployment and the front end's ConfigMap), separated by ---",
        )
    deployment, configmap = kinds["Deployment"][0], kinds["ConfigMap"][0]
    containers = [c for c in docs.listing(docs.get(deployment, "spec.template.spec.containers")) if isinstance(c, dict)]
    if not containers:
        raise ServelabError("the Deployment has no container", "keep the vllm container under spec.template.spec")
    model = docs.mapping(configmap.get("data")).get(CLIENT_MODEL_KEY)
    if not isinstance(model, str) or not model:
        raise ServelabError(f"the ConfigMap has no data.{CLIENT_MODEL_KEY}", f"keep {CLIENT_MODEL_KEY}: <model name>")
    return Answer(deployment, containers[0], model, configmap)


def _flags(container: dict[str, Any]) -> dict[str, list[str]]:
    """The container's ``--flag value...`` and ``--flag=value`` words, each flag with the words after it."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for word in (str(w) for w in docs.listing(container.get("command")) + docs.listing(container.get("args"))):
        if word.startswith("--"):
            name, _, value = word.partition("=")
            current = found.setdefault(name, [])
            current.clear()  # a flag given twice: the last one wins, as in vLLM's argument parser
            if value:
                current.append(value)
        elif current is not None:
            current.append(word)
    return found


def served_names(container: dict[str, Any]) -> list[str]:
    """The names vLLM lists at ``/v1/models`` for this container: ``--served-model-name``, else ``--model``."""
    flags = _flags(container)
    return flags.get("--served-model-name") or flags.get("--model") or []


def _kv_cache_gib(container: dict[str, Any]) -> float:
    env = {e.get("name"): e.get("value") for e in docs.listing(container.get("env")) if isinstance(e, dict)}
    value = env.get("VLLM_CPU_KVCACHE_SPACE")
    if value is None:
        return VLLMOptions().kv_cache_gib
    if not str(value).isdigit() or not 1 <= int(value) <= MAX_KV_CACHE_GIB:
        raise ServelabError(
            f"VLLM_CPU_KVCACHE_SPACE={value!r}",
            f"give a whole number of GiB from 1 to {MAX_KV_CACHE_GIB} (the lab reserves it on this machine)",
        )
    return float(value)


def vllm_options(container: dict[str, Any]) -> VLLMOptions:
    """The :class:`VLLMOptions` the Deployment's container asks for (see :data:`VALUE_FLAGS`, :data:`SWITCHES`)."""
    flags = _flags(container)
    values: dict[str, Any] = {"enforce_eager": False, "kv_cache_gib": _kv_cache_gib(container), "extra_args": []}
    for flag, words in flags.items():
        if flag in KIT_FLAGS:
            continue
        if flag in SWITCHES:
            key, value = SWITCHES[flag]
            values[key] = value
        elif flag in VALUE_FLAGS:
            if len(words) != 1:
                raise ServelabError(f"{flag} is given {words}", f"give {flag} exactly one value")
            key = VALUE_FLAGS[flag]
            if key != "dtype" and not words[0].isdigit():
                raise ServelabError(f"{flag} {words[0]!r} is not a whole number", f"give {flag} a number, quoted")
            values[key] = words[0] if key == "dtype" else int(words[0])
        else:
            values["extra_args"] += [flag, *words]
    return VLLMOptions(**values)


def _ask_client(engine: Engine, model: str) -> str:
    """The client's request, as the front end sends it: its model name, one token."""
    import openai

    try:
        engine.openai_client(timeout=60).completions.create(model=model, prompt="Hello", max_tokens=1)
    except openai.APIStatusError as err:  # vLLM's reason is the body's message; err.message adds a prefix
        said = err.body.get("message") if isinstance(err.body, dict) else None
        return f"{err.status_code}: {said or err.message}"
    except openai.APIError as err:
        return f"no answer: {err}"
    return "200"


def run_answer(text: str, device: str = "auto") -> Run | None:
    """Start vLLM from the Deployment's flags, measure its time to ready, ask it each probe's path, list its
    models and send the client's request; then stop it, whatever happened. None (and a printed reason) when
    the YAML cannot be run."""
    try:
        answer = parse(text)
        options = vllm_options(answer.container)
    except ServelabError as err:
        print(f"Not run: {err}")
        return None
    flags = _flags(answer.container)
    taken = " ".join(word for flag, words in flags.items() if flag not in KIT_FLAGS for word in (flag, *words))
    print(
        f"Starting vLLM with the Deployment's {taken} and VLLM_CPU_KVCACHE_SPACE={options.kv_cache_gib:g} (the kit "
        f"sets {', '.join(KIT_FLAGS)}); about a minute on 2 cores in eager mode, waiting at most "
        f"{READY_TIMEOUT_S:.0f} s ..."
    )
    if not options.enforce_eager:
        print("No --enforce-eager: vLLM compiles the model first, which takes several minutes on a CPU.")
    try:
        engine = start_vllm(device=device, options=options, ready_timeout=READY_TIMEOUT_S)
    except ServerStartError as err:
        line = start_failure(err, "vllm")
        if err.timed_out:
            line = f"not ready after {READY_TIMEOUT_S:.0f} s; the last error its log states: {line}"
        print(f"vLLM did not become ready. Its error: {line}\nIts whole log: {err.log_path}")
        return Run(ready_s=None, error=line)
    except ServelabError as err:  # refused before vLLM ran, e.g. the model is not prepared
        print(f"vLLM did not start: {err}")
        return Run(ready_s=None, error=start_failure(err, "vllm"))
    try:
        ready_s = engine.ready_seconds or 0.0  # set by every successful start
        print(f"vLLM was ready in {ready_s:.1f} s with these flags (from its start to /health answering 200).")
        paths = {docs.get(answer.container.get(p), "httpGet.path") for p in k8s_probes.PROBES}
        statuses = {
            path: k8s_probes.http_status(engine.url + path) for path in sorted(p for p in paths if isinstance(p, str))
        }
        models = engine.openai_client(timeout=30).models.list()
        return Run(
            ready_s=ready_s,
            statuses=statuses,
            listed=[m.id for m in models.data],
            client=_ask_client(engine, answer.client_model),
        )
    finally:
        engine.stop()
        print("vLLM stopped.")


def _budget(probe: dict[str, Any]) -> int | None:
    """Seconds a probe lets a container start before the kubelet kills it, or None if a field is not a number."""
    allowance = {key: probe.get(key, default) for key, default in k8s_probes.PROBE_DEFAULTS.items()}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in allowance.values()):
        return None
    return allowance["initialDelaySeconds"] + allowance["periodSeconds"] * allowance["failureThreshold"]


def _startup_check(container: dict[str, Any], run: Run) -> LabCheck:
    """The startupProbe's allowance against :data:`MARGIN` times the start measured here."""
    name = f"the startupProbe allows {MARGIN:g}x the start-up time measured here"
    probe = container.get("startupProbe")
    if not isinstance(probe, dict):
        liveness = container.get("livenessProbe")
        kills = _budget(liveness) if isinstance(liveness, dict) else None
        return LabCheck(
            name,
            False,
            "no startupProbe: the livenessProbe then judges the start"
            + (f" and kills a slow one after {kills} s" if kills is not None else "")
            + ". Add a startupProbe on /health: liveness and readiness wait until it has passed.",
        )
    budget = _budget(probe)
    if budget is None:
        return LabCheck(
            name, False, "give the startupProbe's initialDelaySeconds, periodSeconds and failureThreshold as numbers"
        )
    said = f"your startupProbe allows {budget} s (initialDelaySeconds + periodSeconds x failureThreshold)"
    if run.ready_s is None:
        return LabCheck(
            name,
            False,
            f"not measured: vLLM did not become ready with these flags (see the check above); {said}. Once it "
            f"starts, the lab compares that with {MARGIN:g}x the time it took.",
        )
    need = MARGIN * run.ready_s
    return LabCheck(
        name,
        budget >= need,
        f"vLLM took {run.ready_s:.0f} s to become ready here and {said}. Below the start time the kubelet kills the "
        "container before it is ready, and again after each restart (CrashLoopBackOff); a busier or slower node "
        f"starts slower than this one. Allow at least {need:.0f} s.",
    )


def _path_problems(probes: dict[str, Any], run: Run) -> list[str]:
    """Each probe whose path vLLM did not answer with 200 in this run, with what it answered."""
    found = []
    for name, probe in probes.items():
        path = docs.get(probe, "httpGet.path")
        if not isinstance(path, str):
            found.append(f"{name} has no httpGet.path (the kit's probes are HTTP GETs)")
        elif run.statuses.get(path) != "200":
            found.append(f"{name} asks {path!r}, which vLLM answered {run.statuses.get(path, 'nothing')}")
    return found


def check_startup(text: str, run: Run | None) -> list[LabCheck]:
    """Lab 02: does this Deployment start, become Ready and stay up, and does its client get its model?"""
    try:
        answer = parse(text)
        vllm_options(answer.container)
    except ServelabError as err:
        return [LabCheck("the YAML holds a Deployment and a ConfigMap the lab can run", False, str(err))]
    if run is None:
        return [LabCheck("vLLM ran", False, "run the cell above that calls startup.run_answer(...)")]
    container = answer.container
    problems = [
        *manifests.validate_document(answer.deployment, "your Deployment"),
        *manifests.validate_document(answer.configmap, "your ConfigMap"),
    ]
    versions = ", ".join(v.removesuffix(".0") for v in manifests.K8S_VERSIONS)
    started = run.ready_s is not None
    env = {e.get("name") for e in docs.listing(container.get("env")) if isinstance(e, dict)}
    long_len = (
        " VLLM_ALLOW_LONG_MAX_MODEL_LEN does not make the model read further than it was trained to (positions "
        "past its limit give garbage or NaN), and the lab does not pass it on."
        if "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in env
        else ""
    )
    probes = {p: container[p] for p in k8s_probes.PROBES if isinstance(container.get(p), dict)}
    listens = k8s_probes.listen_port(container)
    wrong_port = [
        f"{p} calls port {docs.get(probe, 'httpGet.port')!r} (containerPort {k8s_probes.probe_port(probe, container)})"
        for p, probe in probes.items()
        if k8s_probes.probe_port(probe, container) != listens
    ]
    return [
        LabCheck(
            f"Kubernetes {versions} accept both objects",
            not problems,
            " | ".join(manifests.distinct_problems(problems))
            + ". manifests/vllm/base/deployment.yaml passes the same validator.",
        ),
        LabCheck(
            "vLLM starts with the Deployment's flags",
            started,
            f'vLLM refused to start: "{run.error}" Read which setting it names and change it in the Deployment (the '
            f"model's own limits are in its config.json).{long_len}",
        ),
        _startup_check(container, run),
        LabCheck(
            "every probe asks a path vLLM answers 200",
            started and bool(probes) and not _path_problems(probes, run),
            (
                "vLLM did not start, so no probe path could be asked yet; your probes ask "
                + ", ".join(f"{p} {docs.get(probe, 'httpGet.path')!r}" for p, probe in probes.items())
                if not started
                else "; ".join(_path_problems(probes, run)) or "no probe to ask"
            )
            + ". A path vLLM does not serve fails every time: the pod is never Ready, or restarted over and over. "
            "Notebook 02, section 2, shows the route vLLM serves for health checks.",
        ),
        LabCheck(
            "the probes call the port vLLM listens on",
            bool(probes) and listens is not None and not wrong_port,
            ("; ".join(wrong_port) or "no probe to check")
            + f", but vLLM listens on its --port ({listens}): the kubelet's GET is refused, so the startupProbe "
            "never passes. Make the containerPort the probes name and vLLM's --port the same number.",
        ),
        _client_check(answer, served_names(container), run),
    ]


def _client_check(answer: Answer, names: list[str], run: Run) -> LabCheck:
    """The client's model against the service's fixed name, then against what the lab's vLLM answered it."""
    name = "the client asks for a model vLLM lists"
    client = answer.client_model
    if not names or names[0] != SERVED_NAME:
        said = (
            f"--served-model-name {' '.join(names)}"
            if "--served-model-name" in _flags(answer.container)
            else f"no --served-model-name, so vLLM lists its --model value {names}"
        )
        return LabCheck(
            name,
            False,
            f"the Deployment serves {said}. The service's name is {SERVED_NAME!r}: the kit's manifests publish it, "
            "other clients already use it, and the lab's vLLM serves it. Keep --served-model-name "
            f"{SERVED_NAME} and fix the client's {CLIENT_MODEL_KEY} instead.",
        )
    if run.ready_s is None:
        return LabCheck(
            name,
            False,
            f"vLLM did not start, so the client's request was not sent: the client asks for {client!r}, the "
            f"Deployment serves {names[0]!r} (--served-model-name). vLLM answers 404 to a name it does not list.",
        )
    return LabCheck(
        name,
        run.client == "200",
        f'vLLM lists {run.listed} at /v1/models and answered the client\'s model {client!r} with "{run.client}" '
        f"Set the ConfigMap's {CLIENT_MODEL_KEY} to the name vLLM lists (not the Hugging Face id it loads).",
    )
