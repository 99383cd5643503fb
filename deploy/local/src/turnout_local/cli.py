"""`turnout`: the command line for running Turnout on one machine.

    turnout up        start PostgreSQL, Kafka (and the services that exist), create topics;
                      with --demo (what `make up` runs) also the demo, see demo.py
    turnout down      stop what `up` started
    turnout status    what is running, where
    turnout token     print a JWT for local use
    turnout demo      start | stop | status the demo's simulated reps
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from turnout_events.topics import TopicRegistry

from . import demo as demo_
from . import runtime

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turnout: a real-time get-out-the-vote hub for trade-union ballots.")
console = Console(stderr=True)


@app.command()
def up(
    services_too: Annotated[bool, typer.Option(
        "--services/--no-services", help="also start the services")] = True,
    demo: Annotated[bool, typer.Option(
        "--demo/--no-demo", help="also load the demo (a synthetic union, an open ballot, "
        "reminders) and start simulated reps; `make up` does, `make up DEMO=0` does not")
    ] = False,
    demo_members: Annotated[int, typer.Option(
        min=1, help="members in the demo's union (when it is first loaded)")
    ] = demo_.DEFAULT_MEMBERS,
    demo_rate: Annotated[float, typer.Option(
        min=0.1, help="the simulated reps' actions per second")] = demo_.DEFAULT_RATE,
) -> None:
    """Start the local runtime (embedded unless DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS are
    set), create the topics and start the services. Safe to run again: what already runs
    is left alone, and a demo already loaded is not loaded twice."""
    if demo and not services_too:
        console.print("[red]The demo needs the services: drop --no-services.[/red]")
        raise typer.Exit(2)
    started = time.monotonic()
    with console.status("Starting PostgreSQL and Kafka..."):
        try:
            endpoints = runtime.start()
        except Exception as exc:  # say what failed, not a traceback, to someone at a terminal
            console.print(f"[red]Could not start the runtime:[/red] {exc}")
            raise typer.Exit(1) from None
    running = []
    if services_too:
        with console.status("Starting the services (migrations, consumers)..."):
            try:
                running = runtime.start_services(endpoints)
            except Exception as exc:
                console.print(f"[red]A service did not start:[/red] {exc}")
                raise typer.Exit(1) from None
    table = Table(title=f"Turnout is up ({time.monotonic() - started:.1f}s)", show_header=False)
    table.add_row("PostgreSQL", endpoints.database_url,
                  "embedded" if endpoints.embedded_postgres else "external")
    table.add_row("Kafka", endpoints.kafka_bootstrap_servers,
                  "embedded (KRaft)" if endpoints.embedded_kafka else "external")
    for spec in running:
        table.add_row(f"{spec.name} service", spec.url, f"API docs: {spec.url}/docs")
    console.print(table)
    if demo:
        _start_demo(demo_.DemoConfig(
            kafka_bootstrap_servers=endpoints.kafka_bootstrap_servers,
            topics=TopicRegistry.from_env(), members=demo_members, rate=demo_rate))
    console.print("Stop everything with [bold]make down[/bold] (or `uv run turnout down`).")


def _start_demo(cfg: demo_.DemoConfig) -> None:
    started = time.monotonic()
    with console.status("Loading the demo...") as spinner:
        try:
            state = asyncio.run(demo_.load(cfg, say=spinner.update))
        except Exception as exc:
            console.print(f"[red]The demo could not be loaded:[/red] {exc}")
            raise typer.Exit(1) from None
    fresh = demo_.start_simulator(state, cfg.rate, seed=cfg.seed)
    reps = (f"started at {cfg.rate:g} actions/s" if fresh else
            "already running (to change the rate: `uv run turnout demo stop`, then "
            "`uv run turnout demo start --rate N`)")
    # Plain lines, never wrapped or cut: the URLs are what this is for.
    lines = [
        f"[bold]The demo is running[/bold] ({time.monotonic() - started:.1f}s): ballot "
        f"{state.ballot_id}, {state.eligible:,} members on the roll.",
        "  Dashboard, turnout climbing live (this link signs you in for 24 hours):",
        f"    [bold]{demo_.dashboard_link(state.ballot_id)}[/bold]",
        "  Reminders sent (the sandbox SMS provider's page):",
        f"    [bold]{demo_.service_url('notifications')}/sandbox[/bold]",
        f"  Simulated reps: {reps}; log {demo_.services.log_file(demo_.SIMULATOR)}",
        "  A token for the APIs: uv run turnout token --role national",
        "Stop the simulated reps alone with `uv run turnout demo stop`.",
    ]
    for line in lines:
        console.print(line, soft_wrap=True)


@app.command()
def down() -> None:
    """Stop the demo's reps, the services, and the embedded PostgreSQL and Kafka (external
    servers are left alone). The demo's data stays: the next `up --demo` carries on."""
    with console.status("Stopping..."):
        demo_.stop_simulator()
        runtime.stop()
    console.print("Stopped.")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show what runs and where."""
    state = runtime.status()
    if demo_.services.pid_file(demo_.SIMULATOR).exists():
        state["demo"] = demo_.simulator_status()
    if as_json:
        print(json.dumps(state, indent=2))
        return
    table = Table("component", "mode", "running", "address", "logs")
    for name, info in state.items():
        address = info.get("url") or info.get("bootstrap_servers")
        table.add_row(name, str(info.get("mode")), str(info.get("running", "?")),
                      str(address), str(info.get("log", "")))
    console.print(table)
    if not all(info.get("running", True) for info in state.values()):
        raise typer.Exit(1)


@app.command()
def token(
    role: Annotated[str, typer.Option(help="rep, organiser, national, service or admin")],
    branch: Annotated[list[str] | None,
                      typer.Option(help="branch code (reps); repeatable")] = None,
    group: Annotated[list[str] | None,
                     typer.Option(help="group code (organisers); repeatable")] = None,
    subject: Annotated[str | None,
                       typer.Option(help="the caller's id; default: a new one")] = None,
    ttl_hours: Annotated[float, typer.Option(help="hours until it expires")] = 12.0,
) -> None:
    """Print a bearer token signed with the local secret (TURNOUT_JWT_SECRET)."""
    from turnout_kit.cli_token import token_command

    try:
        print(token_command(role=role, branches=branch or [], groups=group or [],
                            subject=subject, ttl_hours=ttl_hours))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


demo_app = typer.Typer(no_args_is_help=True, help=(
    "The demo: a synthetic union, an open statutory ballot, SMS reminders on the sandbox "
    "provider, and simulated reps at work."))
app.add_typer(demo_app, name="demo")


@demo_app.command("start")
def demo_start(
    members: Annotated[int, typer.Option(min=1, help="members in the union (first load only)")
                       ] = demo_.DEFAULT_MEMBERS,
    rate: Annotated[float, typer.Option(min=0.1, help="actions per second")
                    ] = demo_.DEFAULT_RATE,
) -> None:
    """What `turnout up --demo` does: start what is not running, load the demo unless it
    is loaded, and start the simulated reps unless they run."""
    up(services_too=True, demo=True, demo_members=members, demo_rate=rate)


@demo_app.command("stop")
def demo_stop() -> None:
    """Stop the simulated reps; the services and the demo's data stay."""
    demo_.stop_simulator()
    console.print("The simulated reps have stopped; `uv run turnout demo start` carries on.")


@demo_app.command("status")
def demo_status() -> None:
    """Whether the simulated reps run, their latest progress, and the demo's URLs."""
    info = demo_.simulator_status()
    table = Table(show_header=False)
    table.add_row("simulated reps", "running" if info["running"] else "not running")
    table.add_row("ballot", str(info.get("ballot_id", "not loaded")))
    if progress := info.get("last_progress"):
        table.add_row("actions so far", f"{progress['actions']:,} "
                      f"({progress['per_second']}/s at {progress.get('timestamp', '?')})")
        table.add_row("failed", json.dumps(progress.get("failed", {})))
    table.add_row("log", str(info["log"]))
    console.print(table)
    console.print("Dashboard (signed in for 24 hours): "
                  f"{demo_.dashboard_link(info.get('ballot_id'))}", soft_wrap=True)
    console.print(f"Reminders sent: {demo_.service_url('notifications')}/sandbox",
                  soft_wrap=True)
    if not info["running"]:
        raise typer.Exit(1)


def _add_service_commands() -> None:
    # Each service brings its own operator commands (`turnout contacts import FILE`).
    try:
        from turnout_contacts.cli import app as contacts_app
    except ImportError:  # pragma: no cover - a slimmed install without the service
        return
    app.add_typer(contacts_app, name="contacts")
    try:
        from turnout_reporting.cli import app as reporting_app
    except ImportError:  # pragma: no cover - a slimmed install without the service
        return
    app.add_typer(reporting_app, name="reporting")


_add_service_commands()


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())


if __name__ == "__main__":
    main()
