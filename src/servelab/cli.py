"""``servelab``: every action a notebook performs, from a terminal (for instructors and scripts/)."""

from __future__ import annotations

import signal
import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from servelab.errors import ServelabError

app = typer.Typer(help="LLM Serving Lab: prepare the model, run engines, check the machine.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
model_app = typer.Typer(help="The kit's model (no hub needed).", no_args_is_help=True)
engine_app = typer.Typer(help="Start engines and find leftovers.", no_args_is_help=True)
env_app = typer.Typer(help="The pinned environment and its conda twin.", no_args_is_help=True)
alerts_app = typer.Typer(help="vLLM alert rules: render from the one source, check and test with promtool.",
                         no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(engine_app, name="engine")
app.add_typer(env_app, name="env")
app.add_typer(alerts_app, name="alerts")
manifests_app = typer.Typer(help="Kubernetes manifests: validate offline (1.25 and 1.32), dry-run on a cluster.",
                            no_args_is_help=True)
app.add_typer(manifests_app, name="manifests")
dashboard_app = typer.Typer(help="The vLLM Grafana dashboard, generated from servelab.dashboard.", no_args_is_help=True)
app.add_typer(dashboard_app, name="dashboard")
console = Console()


def _fail(err: ServelabError) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(1)


@model_app.command("prepare")
def model_prepare(force: bool = typer.Option(False, help="convert again even if cached")) -> None:
    """Convert the shipped GGUF into the float32 HF directory vLLM loads (once; then cached)."""
    from servelab import model

    try:
        path = model.prepare_hf_model(force=force)
    except ServelabError as err:
        _fail(err)
    console.print(f"[green]ready:[/green] {path}")


@model_app.command("info")
def model_info() -> None:
    """Where the model files are."""
    from servelab import model

    try:
        console.print(f"GGUF (llama.cpp): {model.gguf_path()}")
    except ServelabError as err:
        _fail(err)
    state = "prepared" if model.is_prepared() else f"not prepared: run {model.PREPARE_COMMAND}"
    console.print(f"HF dir (vLLM):    {model.hf_dir()} ({state})")


@engine_app.command("start")
def engine_start(
    kind: str = typer.Argument(..., help="vllm or llamacpp"),
    port: int = typer.Option(0, help="0 picks a free port"),
    device: str = typer.Option("auto", help="vLLM only: auto, cpu or cuda"),
    ready_timeout: float = typer.Option(600.0, help="seconds to wait for readiness"),
) -> None:
    """Start an engine in the foreground and keep it serving until Ctrl-C."""
    from servelab.engines import start_engine

    extra = {"device": device} if kind == "vllm" else {}
    try:
        with start_engine(kind, port=port or None, ready_timeout=ready_timeout, **extra) as engine:  # type: ignore[arg-type]
            console.print(f"[green]{engine.name}[/green] ready in {engine.ready_seconds:.0f} s at "
                          f"{engine.base_url} (model {engine.served_model!r}); log: {engine.log_path}")
            console.print("Ctrl-C stops it.")
            # Explicit handlers: a process started in the background may inherit SIGINT as ignored.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while engine.running:
                time.sleep(1)
    except ServelabError as err:
        _fail(err)
    except KeyboardInterrupt:
        console.print("stopped")


@engine_app.command("leftovers")
def engine_leftovers(kill: bool = typer.Option(False, help="stop them too")) -> None:
    """List (and with --kill stop) server processes the kit started that are still running; exit 1 if any."""
    from servelab.procs import leftover_processes

    found = leftover_processes()
    for proc in found:
        console.print(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        if kill:
            proc.kill()
    if found and not kill:
        raise typer.Exit(1)
    if not found:
        console.print("no servelab server processes running")


@app.command()
def preflight(engines: bool = typer.Option(True, help="also start each engine and ask it once")) -> None:
    """Check the machine and both engines; exit 1 if a required check fails."""
    from servelab import preflight as pf

    checks = pf.run(engines=engines)
    table = Table("check", "status", "found", "fix")
    colour = {"ok": "green", "FAIL": "red", "info": "grey50"}
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.found, "" if c.ok else c.fix)
    console.print(table)
    if not pf.all_ok(checks):
        raise typer.Exit(1)


@app.command("same-model")
def same_model() -> None:
    """Start both engines and compare their greedy first tokens on the kit's fixed prompts."""
    from servelab import agreement
    from servelab.engines import start_llamacpp, start_vllm

    try:
        with start_llamacpp() as llama, start_vllm() as vllm:
            rows = agreement.compare(llama, vllm)
    except ServelabError as err:
        _fail(err)
    table = Table("prompt", "llama.cpp", "vLLM", "same")
    for r in rows:
        table.add_row(r.prompt, repr(r.first), repr(r.second), "yes" if r.first_token_agrees else "no")
    console.print(table)
    console.print(f"first-token agreement: {agreement.agreement_rate(rows):.0%}")


@env_app.command("render")
def env_render() -> None:
    """Rewrite environment.yml's pip list from requirements/lock.txt."""
    from servelab import environment

    environment.write_environment_yml()
    console.print(f"wrote {environment.ENV_YML}")


@env_app.command("check")
def env_check() -> None:
    """Exit 1 if environment.yml and requirements/lock.txt disagree."""
    from servelab import environment

    problems = environment.drift()
    for p in problems:
        console.print(f"[red]{p}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print("environment.yml matches requirements/lock.txt")


@app.command()
def bench(
    base_url: str = typer.Option(..., help="API root, e.g. http://127.0.0.1:8000/v1"),
    model: str = typer.Option(..., help="the served model name"),
    engine_kind: str = typer.Option("openai", help="vllm, llamacpp or openai: how to force full-length answers"),
    concurrency: int = typer.Option(None, "-c", help="closed loop with N users"),
    rate: float = typer.Option(None, help="open loop: Poisson arrivals at this many requests/s"),
    burstiness: float = typer.Option(1.0, help="gamma shape of the arrivals (1 = Poisson)"),
    num_requests: int = typer.Option(50, "-n"),
    duration: float = typer.Option(None, help="stop after this many seconds"),
    input_tokens: int = typer.Option(128), output_tokens: int = typer.Option(64),
    dataset: bool = typer.Option(False, help="use data/prompts/bench_prompts.jsonl instead of fixed lengths"),
    endpoint: str = typer.Option("completions", help="completions or chat"),
    slo_ttft: float = typer.Option(None, help="goodput SLO on TTFT (s)"),
    slo_tpot: float = typer.Option(None, help="goodput SLO on TPOT (s)"),
    timeout: float = typer.Option(60.0, help="per-request timeout (s)"),
    out: str = typer.Option("results/bench", help="folder for the JSON + CSV"),
    name: str = typer.Option("bench"),
) -> None:
    """Benchmark any OpenAI-compatible endpoint: TTFT, TPOT, ITL, E2E percentiles, throughput, goodput."""
    from servelab.bench import dataset_workload, fixed_workload, run_benchmark

    workload = (dataset_workload(engine_kind=engine_kind) if dataset else  # type: ignore[arg-type]
                fixed_workload(input_tokens, output_tokens, engine_kind=engine_kind))  # type: ignore[arg-type]
    try:
        result = run_benchmark(base_url, model, workload, concurrency=concurrency, request_rate=rate,
                               burstiness=burstiness, num_requests=num_requests, duration_s=duration,
                               timeout_s=timeout, endpoint=endpoint, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot)  # type: ignore[arg-type]
    except ServelabError as err:
        _fail(err)
    console.print(result.report())
    paths = result.save(out, name)
    console.print(f"saved {paths['json']} and {paths['csv']}")


@manifests_app.command("validate")
def manifests_validate(root: str = typer.Argument("manifests", help="folder or file to validate")) -> None:
    """Schemas (Kubernetes 1.25 and 1.32), CRD structure, cross-references and kustomize builds; exit 1 on any problem."""
    from pathlib import Path

    from servelab import manifests

    path = Path(root)
    problems = manifests.validate_file(path) if path.is_file() else manifests.validate_tree(path)
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]{root}: valid for Kubernetes {', '.join(manifests.K8S_VERSIONS)}[/green]")


@manifests_app.command("dry-run")
def manifests_dry_run(directory: str = typer.Argument(..., help="a kustomization folder, e.g. manifests/vllm/overlays/cpu")) -> None:
    """Server-side dry-run apply when a cluster is configured (KUBECONFIG); otherwise say so."""
    from servelab import manifests

    result = manifests.apply_if_cluster(directory)
    console.print(result.output)
    if result.ran and not result.ok:
        raise typer.Exit(1)


@alerts_app.command("render")
def alerts_render() -> None:
    """Regenerate the plain rules file and the PrometheusRule from manifests/monitoring/alert-rules.source.yaml."""
    from servelab import alerts

    for path in alerts.write_rendered():
        console.print(f"wrote {path}")


@alerts_app.command("check")
def alerts_check() -> None:
    """`promtool check rules` on both rendered files; exit 1 on a broken rule."""
    from servelab import alerts

    ok_all = True
    for path in sorted(alerts.monitoring_dir().glob("prometheus*.yaml")):
        try:
            ok, output = alerts.promtool_check(path)
        except ServelabError as err:
            _fail(err)
        ok_all &= ok
        console.print(f"[{'green' if ok else 'red'}]{path.name}[/]: {output.strip()}")
    if not ok_all:
        raise typer.Exit(1)


@alerts_app.command("test")
def alerts_test() -> None:
    """`promtool test rules` over tests/promtool/*.yaml: every rule fires and stays silent when it should."""
    from servelab import alerts
    from servelab.paths import repo_root

    try:
        ok, output = alerts.promtool_test(sorted((repo_root() / "tests" / "promtool").glob("*.yaml")))
    except ServelabError as err:
        _fail(err)
    console.print(output)
    if not ok:
        raise typer.Exit(1)


@app.command()
def cost(
    tokens_per_s: float = typer.Option(..., help="measured output tokens/s of one GPU (or one CPU instance)"),
    gpu: str = typer.Option("A100", help="A100, H100, L4, T4 or CPU (prices in data/pricing/gpu_prices.yaml)"),
    spot: bool = typer.Option(False, help="price at the spot rate instead of on-demand"),
    utilization: float = typer.Option(1.0, help="share of paid time the hardware is busy, in (0, 1]"),
    qps: float = typer.Option(None, help="also size a fleet for this many requests/s"),
    tokens_per_request: float = typer.Option(None, help="output tokens per request (with --qps)"),
    prices: str = typer.Option(None, help="another price file (default data/pricing/gpu_prices.yaml)"),
) -> None:
    """$ per 1M tokens = hourly price / (tokens/s x utilization x 3600) x 1e6; with --qps, GPUs needed and $/h."""
    from pathlib import Path

    from servelab import cost as costs

    market = "spot" if spot else "on_demand"
    try:
        offer = costs.load_prices(Path(prices) if prices else None).offer(gpu)
        hourly = offer.usd_per_unit_hour(market)
        per_mtok = costs.usd_per_million_tokens(hourly, tokens_per_s, utilization)
        if (qps is None) != (tokens_per_request is None):
            raise ServelabError("--qps and --tokens-per-request go together.", "pass both, or neither")
        plan = costs.plan_fleet(qps, tokens_per_request, tokens_per_s, hourly, utilization) if qps is not None else None
    except ServelabError as err:
        _fail(err)
    quote = offer.spot if spot else offer.on_demand
    console.print(f"{gpu} ({offer.instance}, {market.replace('_', '-')}): ${hourly:.4f} per unit-hour "
                  f"(source: {quote.source}, as of {quote.as_of or 'undated'})", soft_wrap=True, markup=False)
    console.print(f"{tokens_per_s:g} tok/s at {utilization:.0%} utilization: ${per_mtok:.4f} per 1M tokens",
                  soft_wrap=True)
    if plan is not None:
        console.print(f"{qps:g} QPS x {tokens_per_request:g} tokens = {plan.tokens_per_s_needed:g} tok/s: "
                      f"{plan.units} x {gpu}, ${plan.usd_per_hour:.2f}/h, ${plan.usd_per_million_tokens:.4f} "
                      "per 1M tokens served", soft_wrap=True)


gateway_app = typer.Typer(help="The API gateway: keys, rate limits, timeouts, failover, audit log (notebook 08).",
                          no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("serve")
def gateway_serve(
    config: str = typer.Option("data/gateway/config.yaml", help="gateway YAML"),
    host: str = typer.Option("127.0.0.1", help="0.0.0.0 to accept connections from other machines"),
    port: int = typer.Option(8080),
    log_level: str = typer.Option("warning"),
) -> None:
    """Run the gateway in the foreground until Ctrl-C."""
    from servelab.gateway.__main__ import serve

    try:
        serve(config, host, port, log_level)
    except ServelabError as err:
        _fail(err)


@gateway_app.command("hash-key")
def gateway_hash_key(key: str = typer.Argument(..., help="the raw API key")) -> None:
    """Print the SHA-256 hash a gateway config stores for KEY (configs never hold raw keys)."""
    from servelab.gateway.config import hash_key

    console.print(hash_key(key), markup=False)


@dashboard_app.command("render")
def dashboard_render() -> None:
    """Regenerate manifests/monitoring/grafana-dashboard-vllm.json and its ConfigMap from servelab.dashboard."""
    from servelab import dashboard

    for path in dashboard.write_rendered():
        console.print(f"wrote {path}")


@app.command()
def quantize(
    levels: list[str] = typer.Argument(None, help="GGUF levels, e.g. Q8_0 Q4_K_M (default: the quick ladder)"),
    measure: bool = typer.Option(True, help="also measure size, RAM, speed and perplexity of each level"),
    threads: int = typer.Option(2, help="llama.cpp threads"),
) -> None:
    """Make the GGUF quantization ladder of notebook 04 (cached) and measure each level in a fresh process."""
    from servelab import quantize as quant
    from servelab.paths import repo_root

    try:
        ladder = quant.build_ladder(levels or list(quant.QUICK_LADDER), threads=threads)
        for level, info in ladder.items():
            made = "cached" if info["cached"] else f"made in {info['seconds']} s"
            line = f"{level}: {info['path']} ({made})"
            if measure:
                m = quant.measure_level(level, str(info["path"]), repo_root() / "data" / "text" / "heldout.txt",
                                        threads=threads)
                line += (f"  {m.file_mib} MiB, {m.bits_per_weight} bits/weight (mostly {m.main_type}), RSS {m.rss_mib} MiB, "
                         f"prompt {m.prompt_tok_s} tok/s, decode {m.decode_tok_s} tok/s, perplexity {m.perplexity}")
            console.print(line, soft_wrap=True, markup=False)
    except ServelabError as err:
        _fail(err)


if __name__ == "__main__":
    app()
