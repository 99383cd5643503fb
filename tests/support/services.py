"""Running a service in-process for tests: its real lifespan (migrations, Kafka broker,
outbox relay, consumers) against the run's broker and a database of the test's own, with
an httpx client speaking to it through ASGI."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from turnout_kit.auth import issue_token
from turnout_kit.settings import DEVELOPMENT_JWT_SECRET


class TokenMaker:
    secret = DEVELOPMENT_JWT_SECRET

    def __call__(self, role: str, *, branches=(), groups=(), subject: str | None = None) -> dict:
        token = issue_token(self.secret, role, subject or f"{role}-{uuid.uuid4().hex[:8]}",
                            branches=branches, groups=groups)
        return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def running(app: FastAPI,
                  base_url: str = "http://service") -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client
