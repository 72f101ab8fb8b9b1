"""``servelab manifests``: validate the Kubernetes manifests offline, dry-run them on a cluster."""

from __future__ import annotations

import typer

from servelab.cli.console import console, fail
from servelab.errors import ServelabError

app = typer.Typer(
    help="Kubernetes manifests: validate offline (1.25, 1.32, 1.35-1.37), dry-run on a cluster.", no_args_is_help=True
)


@app.command("validate")
def manifests_validate(root: str = typer.Argument("manifests", help="folder or file to validate")) -> None:
    """Schemas (Kubernetes 1.25, 1.32 and 1.35-1.37), CRD structure, cross-references and kustomize builds.

    Exits 1 on any problem.
    """
    from pathlib import Path

    from servelab.k8s import manifests

    path = Path(root)
    if not path.exists():
        fail(
            ServelabError(
                f"{root} does not exist: nothing was validated.", "pass a manifest file or folder, e.g. manifests"
            )
        )
    problems = manifests.validate_file(path) if path.is_file() else manifests.validate_tree(path)
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]{root}: valid for Kubernetes {', '.join(manifests.K8S_VERSIONS)}[/green]")


@app.command("dry-run")
def manifests_dry_run(
    directory: str = typer.Argument(..., help="a kustomization folder, e.g. manifests/vllm/overlays/cpu"),
) -> None:
    """Server-side dry-run apply when a cluster is configured (KUBECONFIG); otherwise say so."""
    from servelab.k8s import manifests

    result = manifests.apply_if_cluster(directory)
    console.print(result.output)
    if result.ran and not result.ok:
        raise typer.Exit(1)
