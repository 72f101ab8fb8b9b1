"""What the kit's manifests ship for scaling vLLM: the HPA's queue target, KEDA's threshold, and each
overlay's ``--max-num-seqs``; and the same for llama.cpp: its HPA's deferred-requests target, KEDA's
threshold and the Deployment's ``--parallel`` slots.

Why this module exists: notebook 07 recommends a queue target and a batch limit from a measurement,
and a test checks that the manifests ship what the reference measurement supports; both need the
shipped values read from the files, never retyped. An overlay's Deployment arguments come from
``kubectl kustomize`` when it is installed (what ``kubectl apply -k`` sends), else from the overlay's
JSON 6902 patches that append to the container's ``args`` (the form the kit's overlays use). llama.cpp
has no overlay: its arguments are read from ``manifests/llamacpp/deployment.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from servelab.errors import ServelabError
from servelab.k8s import quantity
from servelab.k8s.autoscale import HPASpec
from servelab.k8s.manifests import kustomize_available, kustomize_build, load_documents
from servelab.paths import manifests_path

__all__ = [
    "container_args",
    "hpa_target",
    "keda_threshold",
    "llamacpp_args",
    "llamacpp_hpa_target",
    "llamacpp_keda_threshold",
    "llamacpp_parallel",
    "max_num_seqs",
    "overlays",
]


def hpa_target(path: str | Path | None = None) -> float:
    """The HPA's target waiting requests per pod (``manifests/vllm/base/hpa.yaml`` by default)."""
    return HPASpec.from_manifest(path or manifests_path("vllm", "base", "hpa.yaml")).target


def keda_threshold(path: str | Path | None = None) -> float:
    """The threshold of KEDA's Prometheus trigger (``manifests/vllm/keda/scaledobject.yaml`` by default)."""
    source = Path(path or manifests_path("vllm", "keda", "scaledobject.yaml"))
    scaled = next((d for d in load_documents(source) if d.get("kind") == "ScaledObject"), None)
    triggers = [t for t in (scaled or {}).get("spec", {}).get("triggers", []) if t.get("type") == "prometheus"]
    if len(triggers) != 1:
        raise ServelabError(f"{source} has no single prometheus trigger", "see manifests/vllm/keda/scaledobject.yaml")
    return quantity.parse(str(triggers[0]["metadata"]["threshold"]))


def overlays() -> list[str]:
    """The overlay names under ``manifests/vllm/overlays`` (``cpu``, ``gpu``)."""
    return sorted(p.name for p in manifests_path("vllm", "overlays").iterdir() if (p / "kustomization.yaml").is_file())


def _patched_args(overlay_dir: Path) -> list[str]:
    """The base container's args plus every value the overlay's JSON 6902 patches append to them."""
    base = next(
        d for d in load_documents(manifests_path("vllm", "base", "deployment.yaml")) if d["kind"] == "Deployment"
    )
    args = [str(a) for a in base["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    kustomization = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    for patch in kustomization.get("patches") or []:
        ops = yaml.safe_load(patch.get("patch") or "")
        if not isinstance(ops, list):
            continue  # a strategic merge patch: the kit's overlays change no args that way
        for op in ops:
            if op.get("op") == "add" and str(op.get("path", "")).endswith("/containers/0/args/-"):
                args.append(str(op["value"]))
    return args


def container_args(overlay: str) -> list[str]:
    """The vLLM container's args as the overlay renders them."""
    directory = manifests_path("vllm", "overlays", overlay)
    if not (directory / "kustomization.yaml").is_file():
        raise ServelabError(f"no overlay {overlay!r} under {directory.parent}", f"use one of {overlays()}")
    if kustomize_available():
        docs: list[dict[str, Any]] = kustomize_build(directory)
        deployment = next(d for d in docs if d.get("kind") == "Deployment")
        return [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    return _patched_args(directory)


def max_num_seqs(overlay: str) -> int | None:
    """The ``--max-num-seqs`` the overlay ships (None: not set, vLLM's per-device default applies)."""
    args = container_args(overlay)
    if "--max-num-seqs" not in args:
        return None
    return int(args[args.index("--max-num-seqs") + 1])


def llamacpp_hpa_target(path: str | Path | None = None) -> float:
    """llama.cpp's HPA target: deferred requests per pod (``manifests/llamacpp/hpa.yaml`` by default)."""
    return hpa_target(path or manifests_path("llamacpp", "hpa.yaml"))


def llamacpp_keda_threshold(path: str | Path | None = None) -> float:
    """The threshold of llama.cpp's KEDA trigger (``manifests/llamacpp-keda/scaledobject.yaml`` by default)."""
    return keda_threshold(path or manifests_path("llamacpp-keda", "scaledobject.yaml"))


def llamacpp_args(path: str | Path | None = None) -> list[str]:
    """The llama-server container's args as ``manifests/llamacpp/deployment.yaml`` ships them."""
    source = Path(path or manifests_path("llamacpp", "deployment.yaml"))
    deployment = next((d for d in load_documents(source) if d.get("kind") == "Deployment"), None)
    if deployment is None:
        raise ServelabError(f"{source} holds no Deployment", "pass manifests/llamacpp/deployment.yaml")
    return [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0].get("args", [])]


def llamacpp_parallel(path: str | Path | None = None) -> int | None:
    """The slots (``--parallel``/``-np``) llama.cpp's Deployment ships; None: not set, so llama-server
    picks its own ("auto": 4 slots with a unified cache in b11312)."""
    args = llamacpp_args(path)
    for flag in ("--parallel", "-np"):
        if flag in args:
            return int(args[args.index(flag) + 1])
    return None
