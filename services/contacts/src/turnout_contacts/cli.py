"""`turnout contacts ...`: operator commands of the contacts service."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="The member directory: imports, keys.")
