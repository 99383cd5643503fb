"""`turnout contacts ...`: operator commands of the contacts service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, help="The member directory: imports, keys.")


@app.command("rotate-keys")
def rotate_keys_command(
    batch_size: int = typer.Option(500, min=1, max=10_000, help="rows per transaction"),
) -> None:
    """Re-encrypt every contact value not under the active key.

    The active key is the first of CONTACTS_ENCRYPTION_KEYS; keep the old keys after it
    until this has run. Safe to interrupt and to run again."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from turnout_kit.db import create_engine, session_factory

    from .domain.crypto import ContactCipher, KeyRingError
    from .service import keys
    from .settings import ContactsSettings

    console = Console(stderr=True)
    settings = ContactsSettings()
    try:
        cipher = ContactCipher.from_setting(settings.encryption_keys.get_secret_value())
    except KeyRingError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None

    async def run() -> keys.RotationReport:
        engine = create_engine(settings.database_url, application_name="contacts-rotate-keys")
        try:
            sessions = session_factory(engine)
            total = sum((await keys.count_stale(sessions, cipher)).values())
            with Progress("[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task(f"re-encrypting under key {cipher.active!r}", total=total)
                return await keys.rotate_keys(
                    sessions, cipher, batch_size=batch_size,
                    progress=lambda _table, n: bar.advance(task, n))
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(run())
    except KeyRingError as exc:
        console.print(f"[red]{exc}[/red]: add that key to CONTACTS_ENCRYPTION_KEYS "
                      "(after the active one) and run again.")
        raise typer.Exit(1) from None
    rows = ", ".join(f"{n} {table}" for table, n in report.rows.items())
    console.print(f"Re-encrypted {report.values} values ({rows} rows) under key "
                  f"{report.active_key!r}.")


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, readable=True,
        help="the roster CSV exported from the membership system")],
    url: Annotated[str, typer.Option(envvar="TURNOUT_CONTACTS_URL",
                                     help="the running contacts service")
                   ] = "http://127.0.0.1:8001",
) -> None:
    """Import the roster: upload FILE to the contacts service, then show what changed,
    or every bad row (a file with any bad row imports nothing)."""
    import httpx
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )
    from rich.table import Table

    from turnout_kit.cli_token import cli_bearer

    console = Console(stderr=True)
    try:
        token = cli_bearer("national", subject="cli-import")
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    size = file.stat().st_size

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"uploading {file.name}", total=size)

        def chunks():
            with file.open("rb") as f:
                while chunk := f.read(256 * 1024):
                    bar.advance(task, len(chunk))
                    yield chunk
            # The service checks every row before answering: that is the wait now.
            bar.update(task, description="checking and importing")

        try:
            with httpx.Client(timeout=httpx.Timeout(30.0, read=None)) as client:
                response = client.post(
                    f"{url.rstrip('/')}/v1/members:import", content=chunks(),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv",
                             "Content-Length": str(size)})
            bar.update(task, description=f"sent {file.name}")
        except httpx.HTTPError as exc:
            bar.stop()
            console.print(f"[red]Could not reach the contacts service at {url}[/red] "
                          f"({type(exc).__name__}). Is it running? (`turnout up`)")
            raise typer.Exit(1) from None

    body = _json_or_none(response)
    if response.status_code == 200 and body is not None:
        table = Table(title=f"Imported {file.name}", show_header=False)
        for name in ("rows", "created", "updated", "unchanged", "missing"):
            table.add_row(name, f"{body[name]:,}")
        table.add_row("import id", str(body["import_id"]))
        console.print(table)
        if body["missing"]:
            console.print(f"{body['missing']:,} members in the directory are not in this "
                          "file. They were not deleted: they are flagged "
                          "`missing_from_last_import` for review.")
        return

    detail = (body or {}).get("detail") or response.reason_phrase
    console.print(f"[red]The import was refused ({response.status_code}):[/red] {detail}")
    errors = (body or {}).get("errors") or []
    if errors:
        table = Table("row", "column", "problem")
        for error in errors:
            table.add_row(str(error.get("row", "")), str(error.get("field") or "(row)"),
                          str(error.get("message", "")))
        console.print(table)
        total = (body or {}).get("error_count", len(errors))
        if total > len(errors):
            console.print(f"... and {total - len(errors):,} more problems.")
    raise typer.Exit(1)


def _json_or_none(response: Any) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
