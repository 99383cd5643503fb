"""Database URLs as the services write them (SQLAlchemy's form), for plain asyncpg.

Its own module, light to import: reporting's fold processes connect with asyncpg alone
and should not import SQLAlchemy for one string function.
"""

from __future__ import annotations


def asyncpg_dsn(url: str) -> str:
    """SQLAlchemy URLs (`postgresql+asyncpg://`) to the plain form asyncpg accepts."""
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url
