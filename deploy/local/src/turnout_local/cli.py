"""`turnout`: the command line for running Turnout on one machine.

    turnout up        start PostgreSQL, Kafka (and the services that exist), create topics
    turnout down      stop what `up` started
    turnout status    what is running, where
    turnout token     print a JWT for local use
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import runtime

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turnout: a real-time get-out-the-vote hub for trade-union ballots.")
console = Console(stderr=True)


@app.command()
def up(
    services_too: Annotated[bool, typer.Option(
        "--services/--no-services", help="also start the services")] = True,
) -> None:
    """Start the local runtime (embedded unless DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS are
    set), create the topics and start the services. Safe to run again: what already runs
    is left alone."""
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
    console.print("Stop everything with [bold]make down[/bold] (or `uv run turnout down`).")


@app.command()
def down() -> None:
    """Stop the embedded PostgreSQL and Kafka (external servers are left alone)."""
    with console.status("Stopping..."):
        runtime.stop()
    console.print("Stopped.")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show what runs and where."""
    state = runtime.status()
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


def _add_service_commands() -> None:
    # Each service brings its own operator commands (`turnout contacts import FILE`).
    try:
        from turnout_contacts.cli import app as contacts_app
    except ImportError:  # pragma: no cover - a slimmed install without the service
        return
    app.add_typer(contacts_app, name="contacts")


_add_service_commands()


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())


if __name__ == "__main__":
    main()
