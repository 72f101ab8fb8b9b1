"""``servelab alerts`` and ``servelab dashboard``: render the rules and the dashboard, check them with promtool."""

from __future__ import annotations

import typer

from servelab.cli.console import console, fail
from servelab.errors import ServelabError

alerts_app = typer.Typer(
    help="vLLM and llama.cpp alert rules: render from the one source, check and test with promtool.",
    no_args_is_help=True,
)
dashboard_app = typer.Typer(
    help="The vLLM Grafana dashboard, generated from servelab.observe.dashboard.", no_args_is_help=True
)


@alerts_app.command("render")
def alerts_render() -> None:
    """Regenerate the plain rules file and the PrometheusRule from manifests/monitoring/alert-rules.source.yaml."""
    from servelab.observe import alerts

    for path in alerts.write_rendered():
        console.print(f"wrote {path}")


@alerts_app.command("check")
def alerts_check() -> None:
    """`promtool check rules` on both rendered files; exit 1 on a broken rule."""
    from servelab.observe import alerts, promtool

    ok_all = True
    for path in sorted(alerts.monitoring_dir().glob("prometheus*.yaml")):
        try:
            ok, output = promtool.check_rules(path)
        except ServelabError as err:
            fail(err)
        ok_all &= ok
        console.print(f"[{'green' if ok else 'red'}]{path.name}[/]: {output.strip()}")
    if not ok_all:
        raise typer.Exit(1)


@alerts_app.command("test")
def alerts_test() -> None:
    """`promtool test rules` over tests/promtool/*.yaml: every rule fires and stays silent when it should."""
    from servelab.observe import promtool

    try:
        ok, output = promtool.test_rules(promtool.unit_test_files())
    except ServelabError as err:
        fail(err)
    console.print(output)
    if not ok:
        raise typer.Exit(1)


@dashboard_app.command("render")
def dashboard_render() -> None:
    """Regenerate manifests/monitoring/grafana-dashboard-vllm.json and its ConfigMap from servelab.observe.dashboard."""
    from servelab.observe import dashboard

    for path in dashboard.write_rendered():
        console.print(f"wrote {path}")
