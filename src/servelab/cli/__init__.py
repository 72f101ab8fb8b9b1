"""``servelab``: every action a notebook performs, from a terminal (for instructors and scripts/).

One module per command group, named after the subpackage it drives; this module only assembles them.
"""

from __future__ import annotations

import typer

from servelab.cli import bench, course, engine, env, gateway, k8s, memory, model, observe, planning

app = typer.Typer(
    help="LLM Serving Lab: prepare the model, run engines, check the machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model.app, name="model")
app.add_typer(engine.app, name="engine")
app.add_typer(env.app, name="env")
app.add_typer(observe.alerts_app, name="alerts")
app.add_typer(k8s.app, name="manifests")
app.add_typer(observe.dashboard_app, name="dashboard")
app.add_typer(gateway.app, name="gateway")
app.add_typer(course.app, name="course")
app.command()(course.preflight)
app.command("same-model")(engine.same_model)
app.command()(engine.stop)
app.command()(bench.bench)
app.command()(planning.cost)
app.command()(memory.quantize)
