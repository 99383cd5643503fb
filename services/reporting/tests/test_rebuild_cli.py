"""`turnout reporting rebuild` against a running reporting service: it starts a rebuild,
shows its progress, and ends when the new numbers are served."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
from turnout_reporting.messaging.consumer import group_id

from services.reporting.tests.events import publish
from services.reporting.tests.test_exactly_once import (
    _at_least,
    assert_exact,
    reporting_db,  # noqa: F401 - a fixture
    service_process,
    synthetic,
    wait_for,
)
from turnout_local import services

pytestmark = pytest.mark.integration


async def test_the_rebuild_command_rebuilds_with_progress_and_ends_when_served(
        tmp_path, monkeypatch, database_url, reporting_db, topics,  # noqa: F811
        kafka_bootstrap, tokens):
    ballot, envelopes = synthetic(members=300, seed=71)
    await publish(kafka_bootstrap, topics, envelopes)
    spec, env = service_process(monkeypatch, tmp_path, database_url, kafka_bootstrap, topics,
                                REPORTING_FOLD_BATCH_SIZE="200")
    services.start(spec, env)
    try:
        services.wait_ready(spec, timeout=60)
        await wait_for(lambda: _at_least(reporting_db, group_id(topics), len(envelopes)),
                       "for the service to fold the ballot")

        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "turnout_local.cli", "reporting", "rebuild",
            "--url", spec.url, "--poll", "0.2",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(command.communicate(), timeout=120)
        shown = err.decode()
        assert command.returncode == 0, shown
        assert "Rebuilt:" in shown and f"{len(envelopes):,} events folded" in shown
        assert f"{len(envelopes)}/{len(envelopes)}" in shown  # the progress bar, full

        async with httpx.AsyncClient(base_url=spec.url) as client:
            await assert_exact(client, tokens("national"), ballot)
            rebuilds = await reporting_db.fetch("SELECT state FROM rebuilds")
        assert [r["state"] for r in rebuilds] == ["done"]
    finally:
        services.stop(spec)
