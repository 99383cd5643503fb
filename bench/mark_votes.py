"""Vote marks over HTTP from one ballots process, against the 1,500 marks/s budget.

    uv run python bench/mark_votes.py [--members 100000] [--seconds 20] [--connections 64]

Starts one ballots process (uvicorn, as `turnout up` runs it, logging at INFO) on a
database and topic namespace of its own, fills its member replica by SQL, opens a ballot
over HTTP and waits until the roll's events are published. Then `wrk` (a C load
generator; `apt-get install wrk`) sends `PUT /v1/ballots/{id}/votes/{member_id}` with a
rep's token, each request naming a member not marked before, so every one is a full
first mark: the ballot's share lock, the roll check, the vote row, the outbox event, the
commit; the outbox relay publishes to Kafka meanwhile, in the same process. Afterwards:
every 201 must be one vote row and one published event. A second, shorter run repeats
marks of members already voted (the idempotent path, nothing published). For scale, the
same requests then go to an endpoint that does nothing behind the kit's HTTP stack.

Printed: marks/s beside the limit and their ratio; the service process's CPU time per
mark (user + system, relay included) and how busy it was - on a machine shared with
other work the wall-clock rate says as much about the neighbours as about the service,
CPU per mark does not; marks per group-commit transaction; and the kit-only endpoint's
requests/s and CPU per request from the same run, with a mark's cost as a multiple of it.

Uses the servers named by KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, else the local runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from tests.support.infra import provide_infra  # noqa: E402
from tests.support.isolation import (  # noqa: E402
    create_database,
    create_topics,
    delete_topics,
    drop_database,
)
from turnout_events.database_url import asyncpg_dsn  # noqa: E402
from turnout_kit.auth import issue_token  # noqa: E402
from turnout_kit.settings import DEVELOPMENT_JWT_SECRET  # noqa: E402

LIMIT = 1500  # marks per second from one process (DESIGN.md, performance budget)
BRANCHES = 20
GROUPS = 4

# Each wrk thread walks its own stride of the member list, so no member is marked twice
# in the run; `response` counts the statuses, `done` prints them for the parser below.
WRK_SCRIPT = r"""
local ids, threads = {}, {}
local path, offset, nthreads, base, token = nil, 0, 1, nil, nil

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  path, offset, nthreads = args[1], tonumber(args[2]), tonumber(args[3])
  base, token = args[4], args[5]  -- base: the path the member ids are appended to
  for line in io.lines(path) do ids[#ids + 1] = line end
  counter = 0
  statuses = {}
end

request = function()
  local i = (offset + counter * nthreads + tid) % #ids + 1
  counter = counter + 1
  return wrk.format("PUT", base .. ids[i],
    {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"},
    '{"source":"rep"}')
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + n
    end
  end
  for status, n in pairs(totals) do io.write(string.format("status %d %d\n", status, n)) end
  io.write(string.format("p50_ms %.2f\np99_ms %.2f\n", latency:percentile(50) / 1000,
                         latency:percentile(99) / 1000))
end
"""


# For scale, the same kind of request through the kit's HTTP stack alone (auth, body
# model, middleware, access log) on an endpoint that does nothing: the ceiling any
# service built on the kit has on this machine at this moment.
REFERENCE_APP = """
import sys, uuid
from typing import Literal
from fastapi import APIRouter
from pydantic import BaseModel
from turnout_kit.app import create_app, serve
from turnout_kit.auth import CurrentCaller
from turnout_kit.logging import configure_logging
from turnout_kit.settings import ServiceSettings

router = APIRouter()

class MarkIn(BaseModel):
    source: Literal["rep", "member_self_report"]

@router.put("/v1/ballots/{ballot_id}/votes/{member_id}", status_code=201)
async def mark(ballot_id: uuid.UUID, member_id: uuid.UUID, body: MarkIn,
               caller: CurrentCaller) -> dict:
    return {"ballot_id": ballot_id, "member_id": member_id, "source": body.source,
            "actor": caller.actor}

settings = ServiceSettings(http_port=int(sys.argv[1]))
configure_logging("reference", settings.log_level, settings.log_json)
serve(create_app(settings, title="reference", version="0", routers=[router]), settings)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(database_url: str, bootstrap: str, namespace: str, port: int,
                  log: Path) -> subprocess.Popen:
    env = {**os.environ, "BALLOTS_DATABASE_URL": database_url,
           "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TURNOUT_TOPIC_NAMESPACE": namespace,
           "BALLOTS_HTTP_PORT": str(port), "TURNOUT_JWT_SECRET": DEVELOPMENT_JWT_SECRET}
    env.pop("TURNOUT_JWKS_URL", None)
    return subprocess.Popen([sys.executable, "-m", "turnout_ballots.main"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def start_reference(port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", REFERENCE_APP, str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "TURNOUT_JWT_SECRET": DEVELOPMENT_JWT_SECRET})


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the ballots service exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling another process's readiness, bounded by the deadline
    raise TimeoutError(f"the ballots service was not ready within {timeout}s; see {log}")


async def fill_replica(dsn: str, members: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO member_replica (member_id, group_code, branch_code, workplace_code, "
            "grade, member_version) SELECT gen_random_uuid(), 'G' || (i % $2), "
            "'B' || (i % $3), 'W' || (i % 500), 'g' || (i % 7), 1 "
            "FROM generate_series(1, $1) AS i", members, GROUPS, BRANCHES)
    finally:
        await conn.close()


async def outbox_backlog(dsn: str) -> tuple[int, int, int]:
    """(unpublished outbox rows, voted events in the outbox, vote rows)."""
    conn = await asyncpg.connect(dsn)
    try:
        return tuple(await conn.fetchrow(  # type: ignore[return-value]
            "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL), "
            "(SELECT count(*) FROM outbox WHERE event_type = 'ballots.voted'), "
            "(SELECT count(*) FROM votes)"))
    finally:
        await conn.close()


async def wait_drained(dsn: str, timeout: float = 600) -> float:
    started = time.monotonic()
    while (await outbox_backlog(dsn))[0]:
        if time.monotonic() - started > timeout:
            raise TimeoutError("the outbox did not drain")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def batch_totals(base: str) -> tuple[float, float]:
    """(commands, transactions) of the service's group commit so far, from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text

    def total(name: str) -> float:
        found = re.search(rf"^{name} ([\d.e+]+)$", text, re.M)
        return float(found[1]) if found else 0.0

    return (total("ballots_group_commit_batch_size_sum"),
            total("ballots_group_commit_batch_size_count"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(ids_file: Path, *, offset: int, base: str, token: str, seconds: int,
            connections: int, threads: int = 1) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", script.name, base, "--", str(ids_file), str(offset), str(threads),
         urlsplit(base).path, token],  # origin-form targets, as any client sends
        capture_output=True, text=True, check=True).stdout
    Path(script.name).unlink()

    def number(pattern: str) -> float:
        found = re.search(pattern, out, re.M)
        if found is None:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return float(found[1])

    result = {"rate": number(r"Requests/sec:\s+([\d.]+)"),
              "p50_ms": number(r"^p50_ms ([\d.]+)$"), "p99_ms": number(r"^p99_ms ([\d.]+)$")}
    for status, n in re.findall(r"^status (\d+) (\d+)$", out, re.M):
        result[f"status_{status}"] = int(n)
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        print(f"  wrk socket errors: {errors[1]}")
    return result


async def measure(infra, members: int, seconds: int, connections: int,
                  with_reference: bool) -> int:
    bootstrap = infra.kafka_bootstrap_servers
    topics = await create_topics(bootstrap, partitions=6)
    database_url = await create_database(infra.database_url)
    dsn = asyncpg_dsn(database_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-marks-"))
    log = workdir / "ballots.log"
    proc = start_service(database_url, bootstrap, topics.namespace, port, log)
    try:
        wait_ready(base, proc, log)
        await fill_replica(dsn, members)
        national = {"Authorization": "Bearer " + issue_token(
            DEVELOPMENT_JWT_SECRET, "national", "bench-national")}
        branches = [f"B{i}" for i in range(BRANCHES)]
        rep_token = issue_token(DEVELOPMENT_JWT_SECRET, "rep", "bench-rep", branches=branches)
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            created = await client.post("/v1/ballots", headers=national, json={
                "name": "Benchmark ballot", "kind": "statutory",
                "opens_at": "2026-03-01T09:00:00Z", "closes_at": "2026-03-22T17:00:00Z",
                "scope": {"group_codes": [f"G{i}" for i in range(GROUPS)]}})
            created.raise_for_status()
            ballot_id = created.json()["ballot_id"]
            (await client.post(f"/v1/ballots/{ballot_id}/open", headers=national)
             ).raise_for_status()
            while not (await client.get(  # noqa: ASYNC110 - polling another process
                    f"/v1/ballots/{ballot_id}", headers=national)).json()["enrolment"]["complete"]:
                await asyncio.sleep(0.2)
        await wait_drained(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            ids = [str(r[0]) for r in await conn.fetch(
                "SELECT member_id FROM roll ORDER BY random()")]
        finally:
            await conn.close()
        ids_file = workdir / "members.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        path = f"/v1/ballots/{ballot_id}/votes/"

        # Warm-up (connections, prepared statements), on members kept out of the runs.
        warm = run_wrk(ids_file, offset=0, base=base + path, token=rep_token, seconds=3,
                       connections=connections)
        await wait_drained(dsn)
        warmed = int(warm.get("status_201", 0))

        batches_before = batch_totals(base)
        cpu_before, wall_before = cpu_seconds(proc.pid), time.monotonic()
        # The warm-up's requests still in flight when it stopped marked members after
        # the answered ones: start past them.
        first = run_wrk(ids_file, offset=warmed + connections, base=base + path,
                        token=rep_token,
                        seconds=seconds, connections=connections)
        cpu_used = cpu_seconds(proc.pid) - cpu_before
        busy = cpu_used / (time.monotonic() - wall_before)
        commands, commits = (after - before for after, before in
                             zip(batch_totals(base), batches_before, strict=True))
        created_marks = int(first.get("status_201", 0))
        others = {k[7:]: int(v) for k, v in first.items()
                  if k.startswith("status_") and k != "status_201"}
        drain = await wait_drained(dsn)
        _, voted_events, vote_rows = await outbox_backlog(dsn)

        # Repeats: members known to have voted.
        conn = await asyncpg.connect(dsn)
        try:
            voted_ids = [str(r[0]) for r in await conn.fetch("SELECT member_id FROM votes")]
        finally:
            await conn.close()
        voted_file = workdir / "voted.txt"
        voted_file.write_text("\n".join(voted_ids) + "\n")
        again = run_wrk(voted_file, offset=0, base=base + path, token=rep_token,
                        seconds=max(5, seconds // 3), connections=connections)
        _, voted_after, rows_after = await outbox_backlog(dsn)
    finally:
        stop(proc)
        await delete_topics(bootstrap, topics)
        await drop_database(infra.database_url, database_url)

    reference = None
    if with_reference:
        ref_port = free_port()
        ref_base = f"http://127.0.0.1:{ref_port}"
        ref_log = workdir / "reference.log"
        ref = start_reference(ref_port, ref_log)
        try:
            wait_ready(ref_base, ref, ref_log)
            ref_cpu = cpu_seconds(ref.pid)
            reference = run_wrk(ids_file, offset=0, base=ref_base + path, token=rep_token,
                                seconds=seconds, connections=connections)
            reference["cpu_ms"] = ((cpu_seconds(ref.pid) - ref_cpu) * 1000
                                   / reference.get("status_201", 1))
        finally:
            stop(ref)

    rate = first["rate"]
    print(f"members on the roll: {len(ids):,}; {connections} connections, {seconds}s; "
          f"infra: {infra.how}")
    print(f"first marks:  {rate:>8,.0f} marks/s  (limit {LIMIT:,}/s)  ratio {rate / LIMIT:.2f}"
          f"  p50 {first['p50_ms']:.1f} ms  p99 {first['p99_ms']:.1f} ms")
    print(f"  {created_marks:,} marked (201), other answers {others or 'none'}; vote rows "
          f"{vote_rows:,} = voted events {voted_events:,} (201s of both runs: "
          f"{created_marks + warmed:,}, plus up to {connections} per run still in flight "
          f"when wrk stopped); outbox drained {drain:.1f}s after the run")
    answered = created_marks + sum(others.values())
    cpu_ms = cpu_used * 1000 / answered
    print(f"  service process CPU: {cpu_ms:.2f} ms per mark, i.e. "
          f"{answered / cpu_used:,.0f} marks per CPU-second (relay and consumers included); "
          f"busy {busy:.0%} of the run; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"  group commit: {commands / max(commits, 1):.1f} marks per transaction "
          f"({commits:,.0f} transactions)")
    if reference is not None:
        print(f"for scale, the kit's HTTP stack alone (same request, an endpoint doing "
              f"nothing): {reference['rate']:,.0f} requests/s, {reference['cpu_ms']:.2f} ms "
              f"CPU per request; a mark costs {cpu_ms / reference['cpu_ms']:.2f} times that")
    print(f"repeat marks: {again['rate']:>8,.0f} marks/s  (idempotent: 200s "
          f"{int(again.get('status_200', 0)):,}, new events {voted_after - voted_events}, "
          f"new rows {rows_after - vote_rows})")
    in_flight = vote_rows - (created_marks + warmed)
    consistent = (vote_rows == voted_events and 0 <= in_flight <= 2 * connections
                  and not others and voted_after == voted_events and rows_after == vote_rows)
    if not consistent:
        print("INCONSISTENT: marks, rows and events disagree")
    verdict = "ok" if rate >= LIMIT else "BELOW LIMIT"
    print(f"verdict: {verdict}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if rate >= LIMIT and consistent else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the run against the kit's stack alone")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (or brew install wrk)")
        return 2
    with provide_infra() as infra:
        return asyncio.run(measure(infra, args.members, args.seconds, args.connections,
                                   not args.no_reference))


if __name__ == "__main__":
    sys.exit(main())
