"""`turnout contacts ...`: operator commands of the contacts service."""

from __future__ import annotations

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
