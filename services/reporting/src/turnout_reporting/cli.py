"""`turnout reporting ...`: operator commands of the reporting service."""

from __future__ import annotations

from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, help="Turnout projections: rebuild from the log.")


@app.command("rebuild")
def rebuild_command(
    url: Annotated[str, typer.Option(envvar="TURNOUT_REPORTING_URL",
                                     help="the running reporting service")
                   ] = "http://127.0.0.1:8004",
    poll: Annotated[float, typer.Option(min=0.1, max=60.0,
                                        help="seconds between progress checks")] = 0.5,
) -> None:
    """Rebuild the turnout projections from the beginning of the topics, with progress.

    The running service folds every event again into new tables while it keeps serving
    the current numbers, then swaps the new ones in. If a rebuild is already running,
    this follows that one."""
    import time

    import httpx
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from turnout_kit.cli_token import cli_bearer

    console = Console(stderr=True)
    try:
        token = cli_bearer("admin", subject="cli-rebuild")
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}

    with httpx.Client(base_url=base, headers=headers, timeout=30.0) as client:
        try:
            response = client.post("/v1/admin/rebuild")
        except httpx.HTTPError as exc:
            console.print(f"[red]Could not reach the reporting service at {url}[/red] "
                          f"({type(exc).__name__}). Is it running? (`turnout up`)")
            raise typer.Exit(1) from None
        body = _json_or_none(response) or {}
        if response.status_code == 409 and body.get("rebuild_id"):
            console.print("A rebuild is already running: following it.")
            rebuild_id = body["rebuild_id"]
        elif response.status_code == 202:
            rebuild_id = body["rebuild_id"]
        else:
            detail = body.get("detail") or response.reason_phrase
            console.print(f"[red]The rebuild was refused ({response.status_code}):[/red] "
                          f"{detail}")
            raise typer.Exit(1)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console) as bar:
            task = bar.add_task("folding events", total=None)
            while True:
                try:
                    response = client.get(f"/v1/admin/rebuild/{rebuild_id}")
                    status = response.json() if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    status = None  # a blip: ask again
                if status is not None:
                    bar.update(task, completed=status["events_folded"],
                               total=max(status["events_total"], 1),
                               description=_describe(status["state"]))
                    if status["state"] in ("done", "failed"):
                        break
                time.sleep(poll)  # the interval between progress checks

    if status["state"] == "done":
        console.print(f"Rebuilt: {status['events_folded']:,} events folded; the new "
                      "numbers are being served.")
        return
    console.print(f"[red]The rebuild failed[/red] ({status.get('error') or 'unknown'}); "
                  "the numbers served are the ones from before it. See the reporting "
                  "service's log.")
    raise typer.Exit(1)


def _describe(state: str) -> str:
    return {"folding": "folding events", "swapping": "catching up and swapping in",
            "done": "done", "failed": "failed"}.get(state, state)


def _json_or_none(response: Any) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
