"""Offline checks of the lab's Kubernetes manifests: schemas, custom resources, cross-references.

Why offline: a learner without a cluster (and CI) should still learn that a Deployment has no
selector or that an apiVersion was removed *before* ``kubectl apply`` says so, and for both ends of
both ends of the seed's Kubernetes range (1.25 and 1.32) and every release supported today (1.35-1.37), not
just the cluster at hand.

Three layers, because a schema alone misses what breaks serving in practice:

1. Schema: kubernetes-validate's bundled OpenAPI-derived JSON schemas (no network), in strict mode
   so a misspelled field is an error instead of being silently dropped by the API server.
2. Custom resources (ServiceMonitor, PrometheusRule, ScaledObject, ...) have no bundled schema; a
   small structural check of our own catches missing required keys (:data:`CUSTOM_KINDS`).
3. Policy and cross-references the API server accepts but that make a serving stack fail: a
   Service that selects no pods, an HPA aimed at a Deployment that does not exist, one replica,
   containers without probes or resource requests.

:func:`validate_tree` runs all of it over a folder (and over ``kubectl kustomize`` output of every
kustomization in it); :func:`apply_if_cluster` adds the server-side dry run when a cluster exists.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from servelab import binaries
from servelab.errors import ServelabError
from servelab.k8s import docs, quantity

SEED_K8S_VERSIONS: tuple[str, ...] = ("1.25.0", "1.32.0")
"""The range the seed document was written for ("v1.25 - v1.32"): both ends."""
SUPPORTED_K8S_VERSIONS: tuple[str, ...] = ("1.35.0", "1.36.0", "1.37.0")
"""The releases upstream Kubernetes supports on 2026-12-01 (kubernetes.io/releases: 1.34 reached end of life on
2026-10-27); kubernetes-validate 1.37 ships their schemas."""
K8S_VERSIONS: tuple[str, ...] = SEED_K8S_VERSIONS + SUPPORTED_K8S_VERSIONS
"""Every Kubernetes version the lab's manifests must be valid for."""

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZE_TIMEOUT_S = 60

Doc = docs.Doc


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one object; ``str()`` is the line a learner reads.

    ``version`` is set for schema problems (they depend on the Kubernetes version) and ``path`` is
    the JSON path of the offending field, e.g. ``spec.template.spec.containers[0].ports[0]``.
    """

    file: str
    kind: str
    name: str
    message: str
    version: str | None = None
    path: str = ""

    def __str__(self) -> str:
        version = f" (Kubernetes {self.version})" if self.version else ""
        field = f"{self.path}: " if self.path else ""
        return f"{self.file}: {self.kind}/{self.name}{version}: {field}{self.message}"


@dataclass(frozen=True)
class DryRun:
    """Result of :func:`apply_if_cluster`: ``ran`` is False when there was no cluster to ask."""

    ran: bool
    ok: bool
    output: str


# Kinds kubernetes-validate has no schema for: custom resources of the Prometheus Operator and KEDA,
# and kustomize's own Kustomization file (never sent to the cluster). For each: the expected apiVersion
# and the dotted paths that must be present, the fields the operators cannot work without; anything
# finer is left to a server-side dry run on a cluster that has the CRDs installed.
CUSTOM_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ServiceMonitor": ("monitoring.coreos.com/v1", ("spec.selector", "spec.endpoints")),
    "PodMonitor": ("monitoring.coreos.com/v1", ("spec.selector", "spec.podMetricsEndpoints")),
    "PrometheusRule": ("monitoring.coreos.com/v1", ("spec.groups",)),
    "ScaledObject": ("keda.sh/v1alpha1", ("spec.scaleTargetRef.name", "spec.triggers")),
    "Kustomization": ("kustomize.config.k8s.io/v1beta1", ()),
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: PyYAML keeps the last one silently, so two ``env:``
    blocks in one container would lose the first without any error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def iter_manifest_files(root: Path | str) -> Iterator[Path]:
    """Every ``.yaml``/``.yml`` file under ``root`` (or ``root`` itself if it is a file), sorted.

    Nothing is skipped by name, so a new file cannot escape validation; files that are not
    Kubernetes objects at all are recognised by :func:`validate_file` instead.
    """
    root = Path(root)
    if root.is_file():
        yield root
        return
    yield from sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_documents(path: Path | str) -> list[Any]:
    """The non-empty YAML documents of a file (``---`` separated), duplicate keys rejected.

    Raises ``yaml.YAMLError`` on a syntax error; :func:`validate_file` turns that into a Problem.
    """
    text = Path(path).read_text(encoding="utf-8")
    return [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc is not None]


def validate_file(path: Path | str, k8s_versions: Sequence[str] = K8S_VERSIONS) -> list[Problem]:
    """Schema, custom-resource and per-object policy problems of every object in one file.

    Documents that are not Kubernetes objects are skipped on purpose: a Prometheus rules file (top
    level ``groups``, checked by promtool) and servelab's own ``*.source.yaml`` inputs. Any other
    document without ``apiVersion``/``kind`` is reported.
    """
    path = Path(path)
    try:
        docs = load_documents(path)
    except yaml.YAMLError as err:
        return [Problem(str(path), "?", "?", f"not valid YAML: {err}")]
    problems: list[Problem] = []
    for doc in docs:
        not_kubernetes = isinstance(doc, dict) and "apiVersion" not in doc and "kind" not in doc
        if not_kubernetes and ("groups" in doc or path.name.endswith(".source.yaml")):
            continue
        problems += validate_document(doc, str(path), k8s_versions)
    return problems


def validate_document(doc: Any, source: str, k8s_versions: Sequence[str] = K8S_VERSIONS) -> list[Problem]:
    """All checks of one parsed object except the cross-references (those need its neighbours)."""
    _check_versions(k8s_versions)
    if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
        return [Problem(source, "?", "?", "not a Kubernetes object: apiVersion and kind are required")]
    kind, name = docs.identity(doc)
    problems: list[Problem] = []
    found: list[tuple[str, str]] = []  # (json path, message) of the version-independent checks
    if kind in CUSTOM_KINDS:
        found += _check_custom(doc, source)
    else:
        problems += [p for v in k8s_versions if (p := _schema_problem(doc, source, v)) is not None]
        if name == "?":  # the schemas allow generateName instead, but `kubectl apply` needs a name
            found.append(("metadata", "'name' is a required property"))
    if kind == "Deployment":
        found += _check_deployment(doc)
    return problems + [Problem(source, kind, name, msg, path=at) for at, msg in found]


def distinct_problems(problems: Sequence[Problem]) -> list[str]:
    """Each problem once, with the Kubernetes versions it occurs in: a missing field fails every schema alike."""
    versions: dict[str, list[str]] = {}
    for problem in problems:
        at = f"{problem.path}: " if problem.path else ""
        versions.setdefault(f"{at}{problem.message}", []).extend([problem.version] if problem.version else [])
    return [f"{line} (Kubernetes {', '.join(v)})" if v else line for line, v in versions.items()]


def _schema_problem(doc: Doc, source: str, version: str) -> Problem | None:
    """kubernetes-validate's verdict for one version, as a Problem (None when valid)."""
    kind, name = docs.identity(doc)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return Problem(source, kind, name, err.message, version=version, path=docs.json_path(err.absolute_path))
    except kubernetes_validate.SchemaNotFoundError:
        return Problem(
            source,
            kind,
            name,
            f"Kubernetes {version} has no {kind} in apiVersion {doc['apiVersion']} "
            "(removed, not yet added, misspelled, or a custom resource servelab does not know)",
            version=version,
        )
    return None


@functools.cache
def _known_versions() -> list[Version]:
    return sorted({Version(v) for v in all_versions()})


def _check_versions(versions: Sequence[str]) -> None:
    """Fail early on a Kubernetes version kubernetes-validate has no schemas for."""
    known = _known_versions()
    for version in versions:
        minor = Version(".".join(version.lstrip("v").split(".")[:2]))
        if not known[0] <= minor <= Version(f"{known[-1].major}.{known[-1].minor}"):
            raise ServelabError(
                f"kubernetes-validate has no schemas for Kubernetes {version}",
                f"use a version between {known[0]} and {known[-1]}",
            )


def _check_custom(doc: Doc, source: str) -> list[tuple[str, str]]:
    """Structural check of a custom resource: (json path, message) pairs."""
    kind = doc["kind"]
    api_version, required = CUSTOM_KINDS[kind]
    found: list[tuple[str, str]] = []
    if doc["apiVersion"] != api_version:
        found.append(("apiVersion", f"{kind} is served as {api_version}, not {doc['apiVersion']}"))
    if kind != "Kustomization" and not docs.get(doc, "metadata.name"):
        found.append(("metadata", "'name' is a required property"))
    for dotted in required:
        if docs.get(doc, dotted) in (None, "", [], {}):
            parent, _, leaf = dotted.rpartition(".")
            found.append((parent, f"{leaf!r} is a required property of {kind}"))
    spec = docs.mapping(doc.get("spec"))
    if kind == "ServiceMonitor":
        for i, endpoint in enumerate(docs.listing(spec.get("endpoints"))):
            if not isinstance(endpoint, dict) or not ({"port", "targetPort"} & endpoint.keys()):
                found.append((f"spec.endpoints[{i}]", "needs 'port' (the Service port name) or 'targetPort'"))
    elif kind == "PrometheusRule":
        for g, group in enumerate(docs.listing(spec.get("groups"))):
            if not isinstance(group, dict) or not group.get("name") or not docs.listing(group.get("rules")):
                found.append((f"spec.groups[{g}]", "a group needs 'name' and a non-empty 'rules' list"))
                continue
            for r, rule in enumerate(group["rules"]):
                at = f"spec.groups[{g}].rules[{r}]"
                if not isinstance(rule, dict) or ("alert" in rule) == ("record" in rule):
                    found.append((at, "a rule needs exactly one of 'alert' or 'record'"))
                elif not rule.get("expr"):
                    found.append((at, "'expr' is a required property"))
    elif kind == "ScaledObject":
        for i, trigger in enumerate(docs.listing(spec.get("triggers"))):
            if (
                not isinstance(trigger, dict)
                or not trigger.get("type")
                or not isinstance(trigger.get("metadata"), dict)
            ):
                found.append((f"spec.triggers[{i}]", "a trigger needs 'type' and a 'metadata' mapping"))
    elif kind == "Kustomization":
        found += _check_kustomization_paths(doc, Path(source).parent)
    return found


def _check_kustomization_paths(doc: Doc, folder: Path) -> list[tuple[str, str]]:
    """Every resource/component a kustomization names exists (a typo here only shows at build)."""
    found = []
    for field in ("resources", "components"):
        for i, entry in enumerate(docs.listing(doc.get(field))):
            if isinstance(entry, str) and "://" not in entry and not (folder / entry).exists():
                found.append((f"{field}[{i}]", f"{entry!r} does not exist next to the kustomization"))
    for i, patch in enumerate(docs.listing(doc.get("patches"))):
        if not isinstance(patch, dict) or not ("patch" in patch or "path" in patch):
            found.append((f"patches[{i}]", "a patch needs 'patch' (inline) or 'path' (a file)"))
        elif "path" in patch and not (folder / patch["path"]).is_file():
            found.append((f"patches[{i}].path", f"{patch['path']!r} does not exist"))
    return found


def _check_deployment(doc: Doc) -> list[tuple[str, str]]:
    """What the API server accepts but serving needs: selector/labels agree, 2+ replicas, and every
    container has readiness and liveness probes and cpu/memory requests. Fields that are missing or
    of the wrong type are left to the schema check, so one mistake is reported once."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return []
    found: list[tuple[str, str]] = []
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, int) and replicas < 2:
        found.append(
            (
                "spec.replicas",
                (
                    f"replicas is {replicas}: a single pod means an outage at every "
                    "restart, rollout or node drain; use 2 or more"
                ),
            )
        )
    labels = docs.mapping(docs.get(doc, "spec.template.metadata.labels"))
    selector = spec.get("selector")
    if isinstance(selector, dict) and not selector_matches(selector, labels):
        found.append(
            (
                "spec.selector",
                (
                    f"selector {selector} does not match the pod template labels {labels} "
                    "(the API server rejects this Deployment)"
                ),
            )
        )
    for i, container in enumerate(docs.listing(docs.get(doc, "spec.template.spec.containers"))):
        if not isinstance(container, dict):
            continue
        at = f"spec.template.spec.containers[{i}]"
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in container:
                found.append((at, f"container {container.get('name')!r} has no {probe}"))
        missing = [r for r in ("cpu", "memory") if r not in docs.mapping(docs.get(container, "resources.requests"))]
        if missing:
            found.append(
                (
                    f"{at}.resources",
                    (
                        f"container {container.get('name')!r} requests no "
                        f"{' or '.join(missing)}: the scheduler cannot place it sensibly"
                    ),
                )
            )
        found += _check_quantities(container, at)
    return found


def _check_quantities(container: Doc, at: str) -> list[tuple[str, str]]:
    """Resource quantities the schema lets through (it only says "string or number") but the API
    server rejects: a malformed quantity ("1Gb", "8 Gi") or a request above its limit."""
    found: list[tuple[str, str]] = []
    requests, limits = (
        docs.mapping(docs.get(container, "resources.requests")),
        docs.mapping(docs.get(container, "resources.limits")),
    )
    for section, quantities in (("requests", requests), ("limits", limits)):
        for resource, value in quantities.items():
            if not quantity.is_quantity(value):
                found.append(
                    (
                        f"{at}.resources.{section}.{resource}",
                        f"{value!r} is not a Kubernetes quantity ({quantity.EXAMPLES})",
                    )
                )
    if found:
        return found
    for resource in requests.keys() & limits.keys():
        if quantity.parse(requests[resource]) > quantity.parse(limits[resource]):
            found.append(
                (
                    f"{at}.resources.requests.{resource}",
                    f"request {requests[resource]} is above the limit {limits[resource]}",
                )
            )
    return found


def selector_matches(selector: Doc, labels: dict[str, Any]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects pods with ``labels``."""
    if any(labels.get(k) != v for k, v in docs.mapping(selector.get("matchLabels")).items()):
        return False
    for expr in map(docs.mapping, docs.listing(selector.get("matchExpressions"))):
        key, op, values = str(expr.get("key")), expr.get("operator"), docs.listing(expr.get("values"))
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def tree_documents(root: Path | str) -> list[tuple[str, Doc]]:
    """(file, object) for every Kubernetes object under ``root``, the input of :func:`cross_check`."""
    found = []
    for path in iter_manifest_files(root):
        try:
            docs = load_documents(path)
        except yaml.YAMLError:
            continue  # validate_file reports it
        found += [(str(path), d) for d in docs if isinstance(d, dict) and "kind" in d]
    return found


def cross_check(documents: Iterable[tuple[str, Doc]]) -> list[Problem]:
    """References between objects: each Service, PodDisruptionBudget, HorizontalPodAutoscaler and
    ScaledObject must find a Deployment (same namespace) whose pods it selects or that it names.

    The API server accepts all of these dangling; they fail later as a Service without endpoints,
    a PDB that protects nothing, an HPA stuck at ``<unknown>``.
    """
    documents = list(documents)
    pods = [
        (docs.namespace(d), docs.get(d, "metadata.name"), docs.mapping(docs.get(d, "spec.template.metadata.labels")))
        for _, d in documents
        if d.get("kind") == "Deployment"
    ]
    problems = []
    for source, doc in documents:
        kind, name = docs.identity(doc)
        ns = docs.namespace(doc)
        same_ns = [(n, labels) for dns, n, labels in pods if dns == ns]
        selector = docs.get(doc, "spec.selector")
        if kind == "Service" and isinstance(selector, dict):
            if not any(selector_matches({"matchLabels": selector}, labels) for _, labels in same_ns):
                problems.append(
                    Problem(
                        source,
                        kind,
                        name,
                        (
                            f"selector {selector} matches the pods of no "
                            f"Deployment in namespace {ns}: the Service would have no endpoints"
                        ),
                        path="spec.selector",
                    )
                )
        elif kind == "PodDisruptionBudget" and isinstance(selector, dict):
            if not any(selector_matches(selector, labels) for _, labels in same_ns):
                problems.append(
                    Problem(
                        source,
                        kind,
                        name,
                        f"selector matches the pods of no Deployment in namespace {ns}: the budget protects nothing",
                        path="spec.selector",
                    )
                )
        elif kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = docs.mapping(docs.get(doc, "spec.scaleTargetRef"))
            if target.get("kind", "Deployment") == "Deployment" and target.get("name") not in {n for n, _ in same_ns}:
                problems.append(
                    Problem(
                        source,
                        kind,
                        name,
                        (
                            f"scaleTargetRef names Deployment "
                            f"{target.get('name')!r}, which does not exist in namespace {ns}"
                        ),
                        path="spec.scaleTargetRef.name",
                    )
                )
    return problems


def _kustomize_command() -> list[str] | None:
    """``kubectl kustomize`` (bundled since kubectl 1.14), else a standalone ``kustomize build``."""
    kubectl = binaries.find("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = binaries.find("kustomize")
    return [kustomize, "build"] if kustomize else None


def kustomize_available() -> bool:
    """Whether :func:`kustomize_build` can run here (it needs no network and no cluster)."""
    return _kustomize_command() is not None


def kustomize_build(directory: Path | str) -> list[Doc]:
    """The objects ``kubectl kustomize <directory>`` renders: what ``kubectl apply -k`` would send.

    Validating the rendered output matters because an overlay's patches can break a valid base.
    """
    command = _kustomize_command()
    if command is None:
        raise ServelabError(
            "kustomize build needs kubectl (or kustomize), and neither is installed",
            "install kubectl: https://kubernetes.io/docs/tasks/tools/",
        )
    result = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=KUSTOMIZE_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise ServelabError(
            f"kustomize build of {directory} failed: {result.stderr.strip()}",
            f"run `{' '.join(command)} {directory}` and fix the file it names",
        )
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def iter_kustomizations(root: Path | str) -> Iterator[Path]:
    """Every folder under ``root`` that holds a kustomization file, sorted."""
    yield from sorted({p.parent for p in Path(root).rglob("*") if p.name in KUSTOMIZATION_FILES})


def validate_kustomization(directory: Path | str, k8s_versions: Sequence[str] = K8S_VERSIONS) -> list[Problem]:
    """Build one kustomization and validate and cross-check what it renders."""
    source = f"{directory} (kustomize build)"
    try:
        docs = kustomize_build(directory)
    except ServelabError as err:
        return [Problem(source, "Kustomization", Path(directory).name, err.problem)]
    problems = [p for doc in docs for p in validate_document(doc, source, k8s_versions)]
    return problems + cross_check((source, d) for d in docs)


def validate_tree(root: Path | str, k8s_versions: Sequence[str] = K8S_VERSIONS, build: bool = True) -> list[Problem]:
    """Everything for a folder of manifests (what ``servelab manifests validate`` reports):
    each file, the cross-references between all of them, and, when ``build`` and kustomize is
    available, the rendered output of every kustomization under it."""
    problems = [p for path in iter_manifest_files(root) for p in validate_file(path, k8s_versions)]
    problems += cross_check(tree_documents(root))
    if build and kustomize_available() and Path(root).is_dir():
        problems += [p for d in iter_kustomizations(root) for p in validate_kustomization(d, k8s_versions)]
    return problems


def _cluster_configured() -> bool:
    """A kubeconfig kubectl would use (KUBECONFIG or ~/.kube/config) or in-cluster credentials."""
    return bool(
        os.environ.get("KUBECONFIG")
        or (Path.home() / ".kube" / "config").is_file()
        or os.environ.get("KUBERNETES_SERVICE_HOST")
    )


def apply_if_cluster(directory: Path | str, timeout_s: int = 60) -> DryRun:
    """``kubectl apply --dry-run=server -k <directory>`` when a cluster is configured.

    The server-side dry run is the only check that knows the cluster: installed CRDs, admission
    webhooks, Pod Security, quotas. Nothing is changed. Without a cluster it does not run and says
    so, instead of failing, because the offline checks are the lab's baseline.
    """
    kubectl = binaries.find("kubectl")
    if kubectl is None:
        return DryRun(False, False, "kubectl is not installed: skipped the server-side dry run")
    if not _cluster_configured():
        return DryRun(
            False,
            False,
            "no cluster is configured (no KUBECONFIG, no ~/.kube/config, not in a "
            "pod): skipped the server-side dry run; only the offline checks ran",
        )
    command = [kubectl, "apply", "--dry-run=server", "-k", str(directory), f"--request-timeout={timeout_s}s"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 10, check=False)
    except subprocess.TimeoutExpired:
        return DryRun(True, False, f"the cluster did not answer within {timeout_s}s: {' '.join(command)}")
    return DryRun(True, result.returncode == 0, (result.stdout + result.stderr).strip())
