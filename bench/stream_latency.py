"""From a vote marked over HTTP to the dashboard's stream, against the 150 ms median /
500 ms p99 budget, while votes are marked at a steady rate.

    uv run python bench/stream_latency.py [--members 200000] [--rate 500] [--seconds 30]
                                          [--warmup 5] [--rounds 3]

Starts the ballots and reporting services as `turnout up` runs them (one uvicorn process
each, logging at INFO) on databases and a topic namespace of their own, fills ballots'
member replica by SQL (2,000 workplaces in 20 branches in 4 groups), opens a ballot over
HTTP and waits until reporting has folded its roll. A separate process then opens the
stream as the dashboard does (`GET /v1/ballots/{id}/stream?access_token=...`, a national
token) and stamps every event as it arrives. Meanwhile this process marks votes with
`PUT /v1/ballots/{id}/votes/{member_id}` at a fixed arrival rate (open loop: a request
leaves on schedule whether or not earlier ones were answered), each vote a member not
marked before. The first `--warmup` seconds of each round are not counted; `--rounds`
repeats the measurement on the same running system, to show how much a shared machine
moves the numbers (each round's median and p99 are printed, and their spread).

The latency of a vote is from its HTTP response (the moment the rep's screen says
"marked") to the arrival of the first stream event that shows it. Which event shows it
is known exactly, not inferred from totals: votes go to the workplaces in turn, so two
votes to one workplace leave 2,000 / rate seconds apart (4 s at 500/s), and the j-th
vote to workplace W is shown by the first event in which W's row says voted >= j. That
is exact as long as no vote takes longer than that spacing to show (the script counts
any that do, whose attribution may then be off); the verdict uses it. The cruder
measure - the k-th acknowledged vote against the first event with national voted >= k -
is printed beside it. It is not pessimistic: it pairs each vote with whichever vote was
folded k-th, the same one only if votes are folded in the order they were answered, and
pairing sorted times with sorted times can only narrow the spread (the mean is about the
same). The two agree closely here because the pipeline is nearly first in, first out.

Then, where the time goes, per vote, with the clocks of one machine: the ballots
transaction's start (the outbox row's `created_at`), the relay's send (the Kafka record's
CreateTime), the relay's mark after the broker's acknowledgement (`published_at`), the
start of the fold transaction that folded it (the change feed's `committed_at`), and the
stream event's arrival. Also the CPU seconds each process spent in the measured windows
(ballots, reporting, this load generator, the stream client, and the PostgreSQL backends
serving the two databases, by connection), and how long each process was ready to run
but waited for a CPU: on a shared machine, the part of a latency that is other work.

Knobs are environment variables, passed on to the services: REPORTING_FOLD_POLL_MS,
REPORTING_FOLD_BATCH_SIZE, BALLOTS_MARK_WORKERS, ... Uses the servers named by
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, else the local runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from tests.support.infra import provide_infra  # noqa: E402
from tests.support.isolation import (  # noqa: E402
    create_database,
    create_topics,
    delete_topics,
    drop_database,
)
from turnout_events.database_url import asyncpg_dsn  # noqa: E402
from turnout_events.topics import TopicRegistry  # noqa: E402
from turnout_kit.auth import issue_token  # noqa: E402
from turnout_kit.settings import DEVELOPMENT_JWT_SECRET  # noqa: E402

LIMIT_P50_MS = 150.0  # DESIGN.md, performance budget
LIMIT_P99_MS = 500.0
GROUPS = 4
BRANCHES = 20
WORKPLACES = 2000  # a multiple of BRANCHES: each workplace lies in one branch
PARTITIONS = 6  # as `turnout up` creates the topics
MAX_CONNECTIONS = 256  # the load generator's; arrivals queue for one beyond that
SERVICES = ("ballots", "reporting")


# -- the services, as processes --------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(name: str, database_url: str, bootstrap: str, namespace: str, port: int,
                  log: Path) -> subprocess.Popen:
    prefix = name.upper()
    env = {**os.environ, f"{prefix}_DATABASE_URL": database_url,
           f"{prefix}_HTTP_PORT": str(port), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "TURNOUT_TOPIC_NAMESPACE": namespace, "TURNOUT_TOPIC_PARTITIONS": str(PARTITIONS),
           "TURNOUT_JWT_SECRET": DEVELOPMENT_JWT_SECRET}
    env.pop("TURNOUT_JWKS_URL", None)
    return subprocess.Popen([sys.executable, "-m", f"turnout_{name}.main"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (await asyncio.to_thread(log.read_text))[-3000:]
                raise RuntimeError(f"{log.stem} exited:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)  # another process's readiness, bounded by the deadline
    raise TimeoutError(f"{log.stem} was not ready within {timeout}s; see {log}")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used (Linux /proc); None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waited_seconds(pid: int) -> float | None:
    """Time a process's threads spent runnable but waiting for a CPU (Linux schedstat):
    on a shared machine, how much of a latency is other people's work."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[1])
    except OSError:
        return None
    return total / 1e9


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the stream client: a process of its own, so that stamping an event never waits for
# -- the load generator ------------------------------------------------------------------

def stream_client(url: str, token: str, out: multiprocessing.Queue,
                  stop_flag: multiprocessing.Event) -> None:
    """Reads the stream; puts (arrival time, event, seq, national voted, {workplace:
    voted}) on `out` for each event, until `stop_flag` is set; then None."""
    asyncio.run(_read_stream(url, token, out, stop_flag))


async def _read_stream(url: str, token: str, out: multiprocessing.Queue,
                       stop_flag: multiprocessing.Event) -> None:
    async def watch_stop() -> None:
        # A flag of another process: waited for in a thread, not polled.
        await asyncio.to_thread(stop_flag.wait)

    async def read() -> None:
        timeout = httpx.Timeout(10, read=None)
        async with httpx.AsyncClient(timeout=timeout) as client, \
                client.stream("GET", url, params={"access_token": token}) as response:
            response.raise_for_status()
            kind, seq, data = None, None, []
            async for line in response.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        kind = value
                    elif name == "id":
                        seq = int(value)
                    elif name == "data":
                        data.append(value)
                    continue
                if not data:
                    continue  # a comment (ping) ends here
                arrived = time.time()
                rows = json.loads("\n".join(data))["rows"]
                national = next((r["voted"] for r in rows if r["level"] == "national"), None)
                places = {r["unit"]: r["voted"] for r in rows if r["level"] == "workplace"}
                out.put((arrived, kind, seq, national, places))
                kind, seq, data = None, None, []

    reader = asyncio.ensure_future(read())
    stopper = asyncio.ensure_future(watch_stop())
    try:
        await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            reader.result()  # raises why the stream ended early
    finally:
        reader.cancel()
        stopper.cancel()
        out.put(None)


@dataclass
class StreamLog:
    """What the stream client saw, gathered by a thread of this process."""

    events: list[tuple] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def drain(self, source: multiprocessing.Queue) -> None:
        while True:
            try:
                item = source.get(timeout=1)
            except queue.Empty:
                continue
            if item is None:
                self.ended.set()
                return
            self.events.append(item)

    def national(self) -> int:
        for event in reversed(self.events):
            if event[3] is not None:
                return event[3]
        return 0

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # noqa: ASYNC110 - filled by a thread, from another process
            if self.ended.is_set():
                raise RuntimeError(f"the stream ended before {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout:g}s")
            await asyncio.sleep(0.05)


# -- the ballot ------------------------------------------------------------------------

async def fill_replica(dsn: str, members: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO member_replica (member_id, group_code, branch_code, workplace_code, "
            "grade, member_version) SELECT gen_random_uuid(), 'G' || (i % $2), "
            "'B' || (i % $3), 'W' || (i % $4), 'g' || (i % 7), 1 "
            "FROM generate_series(1, $1) AS i", members, GROUPS, BRANCHES, WORKPLACES)
    finally:
        await conn.close()


async def open_ballot(ballots: httpx.AsyncClient, reporting: httpx.AsyncClient,
                      national: dict, members: int) -> uuid.UUID:
    opens = datetime.now(UTC).replace(microsecond=0)
    created = await ballots.post("/v1/ballots", headers=national, json={
        "name": "Stream latency ballot", "kind": "statutory", "turnout_threshold": 0.5,
        "opens_at": opens.isoformat(), "closes_at": (opens + timedelta(days=21)).isoformat(),
        "scope": {"group_codes": [f"G{i}" for i in range(GROUPS)]}})
    created.raise_for_status()
    ballot_id = uuid.UUID(created.json()["ballot_id"])
    (await ballots.post(f"/v1/ballots/{ballot_id}/open", headers=national)).raise_for_status()
    deadline = time.monotonic() + 600
    while True:  # reporting has the whole roll
        found = await reporting.get(f"/v1/ballots/{ballot_id}/turnout",
                                    params={"level": "national"}, headers=national)
        items = found.json().get("items") if found.status_code == 200 else None
        if items and items[0]["eligible"] == members:
            return ballot_id
        if time.monotonic() > deadline:
            raise TimeoutError(f"reporting did not fold the roll of {members:,}")
        await asyncio.sleep(0.5)  # polling another process, bounded by the deadline


async def voters(dsn: str, ballot_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
    """Every member on the roll with their workplace, in the order they will vote: one
    from each workplace in turn."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT member_id, workplace_code FROM roll "
                                "WHERE ballot_id = $1 ORDER BY random()", ballot_id)
    finally:
        await conn.close()
    by_place: dict[str, list[uuid.UUID]] = defaultdict(list)
    for row in rows:
        by_place[row["workplace_code"]].append(row["member_id"])
    places = sorted(by_place)
    ordered = []
    for turn in range(max(len(m) for m in by_place.values())):
        ordered += [(by_place[p][turn], p) for p in places if turn < len(by_place[p])]
    return ordered


# -- marking at a fixed arrival rate -------------------------------------------------------

@dataclass
class Vote:
    member_id: uuid.UUID
    workplace: str
    scheduled: float  # wall clock (time.time()), as are all times here
    sent: float = 0.0
    acked: float = 0.0
    status: int = 0


class Connections:
    """Keep-alive HTTP/1.1 connections to one server, for one kind of request.

    A load generator that costs far less than what it measures: httpx spent 2-6 ms of CPU
    a request on this machine (more the more connections it holds), more than the ballots
    service does to mark a vote, so at 500/s the generator itself fell behind and its
    queue, not the system, set the latencies. Writing the request and reading the
    answer's head and body over asyncio streams costs about 25 us (as wrk does in C)."""

    # uvicorn closes a connection idle for 5 s (timeout_keep_alive): one idle this long
    # is not reused, lest a request be sent as the server hangs up.
    MAX_IDLE_S = 3.0

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(limit)
        self.opened = 0

    async def request(self, head: bytes, body: bytes, on_sent) -> int:
        """Send one request (`head` ends with the blank line); its status code."""
        async with self._slots:
            reader, writer = self._take() or await self._open()
            on_sent()
            writer.write(head + body)
            try:
                status, keep = await _read_response(reader)
            except BaseException:
                writer.close()
                raise
            if keep:
                self._idle.append((time.monotonic(), reader, writer))
            else:
                writer.close()
            return status

    def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self._idle:
            since, reader, writer = self._idle.pop()  # the most recently used
            if time.monotonic() - since < self.MAX_IDLE_S:
                return reader, writer
            writer.close()
        return None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        for _since, _reader, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise RuntimeError(f"an answer without Content-Length: {lines[0]}")
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection", "").lower() != "close"


async def mark_at_rate(base: str, token: str, ballot_id: uuid.UUID,
                       chosen: list[tuple[uuid.UUID, str]], rate: float) -> list[Vote]:
    url = httpx.URL(base)
    pool = Connections(url.host, url.port or 80, MAX_CONNECTIONS)
    body = b'{"source":"rep"}'
    start = time.time() + 0.1
    marks = [Vote(member, place, start + i / rate) for i, (member, place) in enumerate(chosen)]

    async def mark(vote: Vote) -> None:
        head = (f"PUT /v1/ballots/{ballot_id}/votes/{vote.member_id} HTTP/1.1\r\n"
                f"Host: {url.host}:{url.port}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()

        def sent() -> None:
            vote.sent = time.time()

        try:
            vote.status = await pool.request(head, body, sent)
        except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError):
            vote.status = -1
        vote.acked = time.time()

    tasks = []
    try:
        for vote in marks:
            delay = vote.scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the arrival schedule itself
            tasks.append(asyncio.create_task(mark(vote)))
        await asyncio.gather(*tasks)
    finally:
        pool.close()
    return marks


# -- where the time went: timestamps the system recorded ------------------------------------

async def outbox_rows(dsn: str) -> dict[str, tuple[str, float, float | None]]:
    """member id -> its voted event's (event id, outbox created_at, published_at), times
    as Unix times."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT convert_from(payload, 'UTF8')::jsonb #>> '{data,member_id}' AS member_id, "
            "event_id::text, extract(epoch FROM created_at)::float8 AS created, "
            "extract(epoch FROM published_at)::float8 AS published "
            "FROM outbox WHERE event_type = 'ballots.voted'")
    finally:
        await conn.close()
    return {r["member_id"]: (r["event_id"], r["created"], r["published"]) for r in rows}


async def kafka_times(bootstrap: str, topic: str, partitions: int, since: float
                      ) -> dict[str, float]:
    """voted event id -> the record's CreateTime (the relay's send), from `since` on."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        starts = await consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
        ends = await consumer.end_offsets(tps)
        remaining = {}
        for tp in tps:
            found = starts.get(tp)
            offset = found.offset if found is not None else ends[tp]
            consumer.seek(tp, offset)
            if offset < ends[tp]:
                remaining[tp] = ends[tp]
        times: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while remaining and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for r in records:
                    headers = dict(r.headers or ())
                    if headers.get("event-type") == b"ballots.voted":
                        times[headers["event-id"].decode()] = r.timestamp / 1000
                if records and records[-1].offset + 1 >= remaining.get(tp, 0):
                    remaining.pop(tp, None)
        return times
    finally:
        await consumer.stop()


class FeedTimes:
    """The change feed's committed_at per seq, read every second while it runs (the fold
    prunes the feed to its latest rows)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.committed: dict[int, float] = {}

    async def follow(self, stop_flag: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.dsn,
                                     server_settings={"application_name": "bench-feed-reader"})
        try:
            while True:
                await self.read(conn)
                if stop_flag.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_flag.wait(), 1.0)
        finally:
            await conn.close()

    async def read(self, conn: asyncpg.Connection) -> None:
        after = max(self.committed, default=0)
        for row in await conn.fetch(
                "SELECT seq, extract(epoch FROM committed_at)::float8 AS at "
                "FROM turnout_changes WHERE seq > $1", after):
            self.committed[row["seq"]] = row["at"]


class BackendCpu:
    """CPU of the PostgreSQL backends serving the services' databases (when /proc shows
    them), by service and connection (`application_name`)."""

    def __init__(self, server_dsn: str, databases: dict[str, str]) -> None:
        self.server_dsn = server_dsn
        self.databases = databases  # database name -> service

    async def sample(self) -> dict[int, tuple[str, float]]:
        conn = await asyncpg.connect(self.server_dsn)
        try:
            found = await conn.fetch(
                "SELECT pid, datname, coalesce(nullif(application_name, ''), backend_type) "
                "FROM pg_stat_activity WHERE datname = ANY($1::text[])", list(self.databases))
        finally:
            await conn.close()
        sample = {}
        for pid, database, application in found:
            cpu = cpu_seconds(pid)
            if cpu is not None:
                sample[pid] = (f"{self.databases[database]}: {application}", cpu)
        return sample

    @staticmethod
    def used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
             ) -> dict[str, float]:
        # Backends that came or went in between count from zero / are lost: the pools
        # are warm by then, so that is rare and small.
        by_name: dict[str, float] = defaultdict(float)
        for pid, (name, cpu) in after.items():
            by_name[name] += cpu - before.get(pid, (name, 0.0))[1]
        return dict(sorted(by_name.items()))


@dataclass
class Usage:
    """What the processes had used at one moment: CPU and time waiting for a CPU per
    process, and the CPU of the database backends."""

    at: float
    cpu: dict[str, float]
    waited: dict[str, float]
    backends: dict[int, tuple[str, float]]

    @classmethod
    async def take(cls, pids: dict[str, int], backends: BackendCpu) -> Usage:
        return cls(time.monotonic(), {n: cpu_seconds(p) or 0.0 for n, p in pids.items()},
                   {n: waited_seconds(p) or 0.0 for n, p in pids.items()},
                   await backends.sample())


@dataclass
class Used:
    """Usage summed over the measured windows."""

    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    waited: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    backends: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, before: Usage, after: Usage) -> None:
        self.seconds += after.at - before.at
        for name, cpu in after.cpu.items():
            self.cpu[name] += cpu - before.cpu[name]
            self.waited[name] += after.waited[name] - before.waited[name]
        for name, cpu in BackendCpu.used(before.backends, after.backends).items():
            self.backends[name] += cpu


# -- statistics ------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    ms = [v * 1000 for v in values]
    return (f"p50 {percentile(ms, 50):7.1f}  p90 {percentile(ms, 90):7.1f}  "
            f"p99 {percentile(ms, 99):7.1f}  max {max(ms):7.1f} ms")


def shown_times(events: list[tuple]) -> tuple[dict[str, list[tuple[float, int, int]]],
                                              list[tuple[float, int, int]]]:
    """Per workplace, and nationally: (arrival, voted, seq) in arrival order."""
    places: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    national = []
    for arrived, _kind, seq, voted, workplaces in events:
        if voted is not None:
            national.append((arrived, voted, seq))
        for place, n in workplaces.items():
            places[place].append((arrived, n, seq))
    return places, national


def first_reaching(history: list[tuple[float, int, int]], count: int
                   ) -> tuple[float, int] | None:
    for arrived, voted, seq in history:
        if voted >= count:
            return arrived, seq
    return None


# -- the run -------------------------------------------------------------------------------

@dataclass
class System:
    """The two services and what they run on."""

    bootstrap: str
    topics: TopicRegistry
    ballots_dsn: str
    reporting_dsn: str
    bases: dict[str, str]
    procs: dict[str, subprocess.Popen]
    backends: BackendCpu


@contextlib.asynccontextmanager
async def running_system(infra) -> AsyncIterator[System]:
    bootstrap = infra.kafka_bootstrap_servers
    topics = await create_topics(bootstrap, partitions=PARTITIONS)
    urls = {name: await create_database(infra.database_url) for name in SERVICES}
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    ports = {name: free_port() for name in SERVICES}
    logs = {name: workdir / f"{name}.log" for name in SERVICES}
    procs = {name: start_service(name, urls[name], bootstrap, topics.namespace, ports[name],
                                 logs[name]) for name in SERVICES}
    failed = True
    try:
        bases = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, proc in procs.items():
            await wait_ready(bases[name], proc, logs[name])
        dsns = {name: asyncpg_dsn(url) for name, url in urls.items()}
        yield System(bootstrap, topics, dsns["ballots"], dsns["reporting"], bases, procs,
                     BackendCpu(asyncpg_dsn(infra.database_url),
                                {dsn.rsplit("/", 1)[1]: name for name, dsn in dsns.items()}))
        failed = False
    finally:
        for proc in procs.values():
            stop(proc)
        await delete_topics(bootstrap, topics)
        for url in urls.values():
            await drop_database(infra.database_url, url)
        if failed:
            print(f"the services' logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Run:
    """Everything measured, for the report."""

    rate: float
    warmup: float
    rounds: list[list[Vote]]
    events: list[tuple]  # the stream client's
    outbox: dict[str, tuple[str, float, float | None]]
    sent_at: dict[str, float]
    committed: dict[int, float]
    used: Used


async def measure(infra, members: int, rate: float, seconds: float, warmup: float,
                  rounds: int) -> Run:
    per_round = int(rate * (seconds + warmup))
    if per_round * rounds > members:
        raise SystemExit(f"--members {members:,} is too few for {rounds} rounds of "
                         f"{per_round:,} distinct votes")
    async with running_system(infra) as system:
        await fill_replica(system.ballots_dsn, members)
        national = auth(issue_token(DEVELOPMENT_JWT_SECRET, "national", "bench-national"))
        screen = issue_token(DEVELOPMENT_JWT_SECRET, "national", "bench-screen")
        rep = issue_token(DEVELOPMENT_JWT_SECRET, "rep", "bench-rep",
                          branches=[f"B{i}" for i in range(BRANCHES)])
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=system.bases["ballots"], timeout=600) as ballots, \
                httpx.AsyncClient(base_url=system.bases["reporting"], timeout=60) as reporting:
            ballot_id = await open_ballot(ballots, reporting, national, members)
        print(f"roll of {members:,} opened and folded by reporting in "
              f"{time.monotonic() - started:.1f}s; infra: {infra.how}", flush=True)
        chosen = await voters(system.ballots_dsn, ballot_id)

        # The dashboard's stream, in a process of its own.
        spawn = multiprocessing.get_context("spawn")
        stream_out, stream_stop = spawn.Queue(), spawn.Event()
        stream = StreamLog()
        reader = spawn.Process(target=stream_client, name="stream-client", daemon=True, args=(
            f"{system.bases['reporting']}/v1/ballots/{ballot_id}/stream", screen, stream_out,
            stream_stop))
        reader.start()
        threading.Thread(target=stream.drain, args=(stream_out,), daemon=True).start()
        feed = FeedTimes(system.reporting_dsn)
        feed_stop = asyncio.Event()
        follower = asyncio.create_task(feed.follow(feed_stop))
        try:
            await stream.wait_for(lambda: bool(stream.events), 60, "the stream's snapshot")
            pids = {**{name: proc.pid for name, proc in system.procs.items()},
                    "stream client": reader.pid, "load generator (this process)": os.getpid()}
            used = Used()
            marked: list[list[Vote]] = []
            load_started = time.time()
            for number in range(rounds):
                votes, before, after = await one_round(
                    system, rep, ballot_id, chosen[number * per_round:][:per_round], rate,
                    warmup, pids)
                used.add(before, after)
                marked.append(votes)
                answered = sum(1 for m in marked for v in m if v.status == 201)
                print(f"round {number + 1}: marked {len(votes):,} votes; waiting for the "
                      "stream to show them all", flush=True)
                # Everything marked reaches the stream before the next round (or the
                # report shows what never did).
                try:
                    await stream.wait_for(lambda n=answered: stream.national() >= n, 120,
                                          "the stream to show every vote")
                except TimeoutError as exc:
                    print(f"  {exc}")
        finally:
            stream_stop.set()
            feed_stop.set()
            await asyncio.to_thread(reader.join, 30)
            if reader.is_alive():
                reader.terminate()
            try:
                await follower
            except Exception as exc:  # the report then lacks the fold's timestamps
                print(f"  reading the change feed failed: {type(exc).__name__}: {exc}")
        outbox = await outbox_rows(system.ballots_dsn)
        sent_at = await kafka_times(system.bootstrap, system.topics.events("ballots"),
                                    PARTITIONS, load_started - 1)
    return Run(rate, warmup, marked, stream.events, outbox, sent_at, feed.committed, used)


async def one_round(system: System, token: str, ballot_id: uuid.UUID,
                    chosen: list[tuple[uuid.UUID, str]], rate: float, warmup: float,
                    pids: dict[str, int]) -> tuple[list[Vote], Usage, Usage]:
    """Marks `chosen` at `rate`; the usage when the warm-up ends and when the last
    answer came."""
    before: list[Usage] = []

    async def when_warm(at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))  # a point of the schedule
        before.append(await Usage.take(pids, system.backends))

    warm = asyncio.create_task(when_warm(time.time() + 0.1 + warmup))
    votes = await mark_at_rate(system.bases["ballots"], token, ballot_id, chosen, rate)
    after = await Usage.take(pids, system.backends)
    await warm
    return votes, before[0], after


# -- the report --------------------------------------------------------------------------

@dataclass
class Latencies:
    """Per counted vote: from its answer and from its request to the stream event that
    showed it; and the event (arrival, seq) per vote."""

    from_ack: list[float]
    from_sent: list[float]
    shown: dict[int, tuple[float, int]]  # id(vote) -> (arrival, seq)
    missing: int


def exact_latencies(run: Run) -> Latencies:
    places, _national = shown_times(run.events)
    # The j-th vote to a workplace is shown by the first event with its voted >= j.
    nth_in_place: dict[str, int] = defaultdict(int)
    shown: dict[int, tuple[float, int]] = {}
    answered = [v for votes in run.rounds for v in votes if v.status == 201]
    for vote in sorted(answered, key=lambda v: v.sent):
        nth_in_place[vote.workplace] += 1
        found = first_reaching(places.get(vote.workplace, []), nth_in_place[vote.workplace])
        if found is not None:
            shown[id(vote)] = found
    counted = counted_votes(run)
    return Latencies([shown[id(v)][0] - v.acked for v in counted if id(v) in shown],
                     [shown[id(v)][0] - v.sent for v in counted if id(v) in shown],
                     shown, sum(1 for v in counted if id(v) not in shown))


def counted_votes(run: Run, rounds: list[list[Vote]] | None = None) -> list[Vote]:
    """The votes answered 201 after each round's warm-up."""
    return [v for votes in (rounds or run.rounds) for v in votes
            if v.scheduled >= votes[0].scheduled + run.warmup and v.status == 201]


def crude_latencies(run: Run) -> list[float]:
    """The k-th answer against the first event with national voted >= k."""
    _places, national = shown_times(run.events)
    counted = {id(v) for v in counted_votes(run)}
    answered = sorted((v for votes in run.rounds for v in votes if v.status == 201),
                      key=lambda v: v.acked)
    found = []
    for k, vote in enumerate(answered, start=1):
        if id(vote) in counted and (event := first_reaching(national, k)) is not None:
            found.append(event[0] - vote.acked)
    return found


def report(run: Run, seconds: float) -> int:
    rate = run.rate
    exact = exact_latencies(run)
    counted = counted_votes(run)
    every = [v for votes in run.rounds for v in votes]
    failed = defaultdict(int)
    for vote in every:
        if vote.status != 201:
            failed[vote.status] += 1

    print(f"\nmarking at {rate:g}/s scheduled, {len(run.rounds)} round(s) of {seconds:g}s "
          f"measured after a {run.warmup:g}s warm-up:")
    for number, votes in enumerate(run.rounds, start=1):
        measured = [v for v in votes if v.scheduled >= votes[0].scheduled + run.warmup]
        mine = {id(v) for v in counted_votes(run, [votes])}
        lat = [exact.shown[id(v)][0] - v.acked for v in measured
               if id(v) in mine and id(v) in exact.shown]
        print(f"  round {number}: sent at {spread_rate([v.sent for v in measured]):,.1f}/s, "
              f"answered at {spread_rate([v.acked for v in measured]):,.1f}/s, late by "
              f"p99 {percentile([v.sent - v.scheduled for v in measured], 99) * 1000:.0f} ms;"
              f" vote -> stream p50 {percentile(lat, 50) * 1000:6.1f} ms, "
              f"p99 {percentile(lat, 99) * 1000:6.1f} ms")
    print(f"  answers 201: {len(every) - sum(failed.values()):,} of {len(every):,}; others "
          f"{dict(failed) or 'none'}; HTTP round trip "
          f"{summary_ms([v.acked - v.sent for v in counted])}")

    spacing = WORKPLACES / rate
    slow = sum(1 for d in exact.from_sent if d > spacing)
    early = sum(1 for d in exact.from_ack if d < 0)
    print(f"\nvote -> stream (exact, per vote, {len(exact.from_ack):,} votes; "
          f"{exact.missing} never shown, {slow} slower than the {spacing:g}s attribution "
          f"spacing, {early} shown before their HTTP answer):")
    p50 = percentile(exact.from_ack, 50) * 1000
    p99 = percentile(exact.from_ack, 99) * 1000
    print(f"  from the HTTP answer:   {summary_ms(exact.from_ack)}")
    print(f"    median {p50:6.1f} ms  (limit {LIMIT_P50_MS:g} ms)  ratio "
          f"{p50 / LIMIT_P50_MS:.2f}")
    print(f"    p99    {p99:6.1f} ms  (limit {LIMIT_P99_MS:g} ms)  ratio "
          f"{p99 / LIMIT_P99_MS:.2f}")
    if len(run.rounds) > 1:
        per_round = [[exact.shown[id(v)][0] - v.acked for v in counted_votes(run, [votes])
                      if id(v) in exact.shown] for votes in run.rounds]
        p50s = sorted(percentile(r, 50) * 1000 for r in per_round)
        p99s = sorted(percentile(r, 99) * 1000 for r in per_round)
        print(f"    spread over rounds: median {p50s[0]:.0f}-{p50s[-1]:.0f} ms, "
              f"p99 {p99s[0]:.0f}-{p99s[-1]:.0f} ms")
    print(f"  from the request sent:  {summary_ms(exact.from_sent)}")
    print(f"  k-th answer vs national voted >= k (crude, narrower): "
          f"{summary_ms(crude_latencies(run))}")

    print_hops(run, counted, exact)
    print_usage(run.used, len(counted))

    ok = (not exact.missing and bool(exact.from_ack) and not failed
          and p50 <= LIMIT_P50_MS and p99 <= LIMIT_P99_MS)
    print(f"verdict: {'ok' if ok else 'OVER BUDGET' if exact.from_ack else 'BROKEN'}")
    return 0 if ok else 1


def spread_rate(times: list[float]) -> float:
    return (len(times) - 1) / (max(times) - min(times)) if len(times) > 1 else 0.0


def print_hops(run: Run, counted: list[Vote], exact: Latencies) -> None:
    """Where the time goes, per vote, from the start of its ballots transaction."""
    hops: dict[str, list[float]] = defaultdict(list)
    incomplete = 0
    for vote in counted:
        event_id, created, published = run.outbox.get(str(vote.member_id), ("", None, None))
        kafka = run.sent_at.get(event_id)
        arrived, seq = exact.shown.get(id(vote), (None, None))
        folded = run.committed.get(seq) if seq is not None else None
        if created is None or kafka is None or arrived is None or folded is None:
            incomplete += 1
            continue
        hops["request sent -> ballots transaction starts"].append(created - vote.sent)
        hops["ballots transaction -> HTTP answer"].append(vote.acked - created)
        hops["ballots transaction -> relay sends (Kafka CreateTime)"].append(kafka - created)
        hops["relay sends -> fold transaction starts (feed committed_at)"].append(
            folded - kafka)
        hops["fold transaction starts -> event on the stream"].append(arrived - folded)
        if published is not None:
            hops["(relay sends -> relay marks published, after the ack)"].append(
                published - kafka)
    print(f"\nwhere the time goes ({len(counted) - incomplete:,} votes with every timestamp, "
          f"{incomplete:,} without):")
    for name, values in hops.items():
        print(f"  {name:<60} {summary_ms(values)}")
    per_event: dict[int, int] = defaultdict(int)
    for _arrived, seq in exact.shown.values():
        per_event[seq] += 1
    if per_event:
        print(f"  votes per stream event: mean {statistics.fmean(per_event.values()):.1f}, "
              f"max {max(per_event.values())}; {len(run.events):,} events")


def print_usage(used: Used, votes: int) -> None:
    per_vote = max(1, votes)
    print(f"\nCPU seconds in the measured windows ({used.seconds:.1f}s, each to its last "
          "answer), per vote, and the seconds each process was ready to run but waited "
          "for a CPU:")
    for name, cpu in used.cpu.items():
        print(f"  {name:<32} {cpu:6.2f} s  ({cpu / used.seconds * 100:5.1f}% of a core, "
              f"{cpu * 1000 / per_vote:.2f} ms per vote); waited {used.waited[name]:5.2f} s")
    total = sum(used.backends.values())
    print(f"  {'PostgreSQL backends':<32} {total:6.2f} s  ({total / used.seconds * 100:5.1f}% "
          f"of a core, {total * 1000 / per_vote:.2f} ms per vote), of which")
    for name, cpu in sorted(used.backends.items()):
        if cpu < 0.005:
            continue  # idle (the services' SQLAlchemy pools while votes are marked)
        print(f"    {name:<30} {cpu:6.2f} s  ({cpu * 1000 / per_vote:.2f} ms per vote)")
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=500.0, help="votes marked per second")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds marked first in each round and not counted")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with provide_infra() as infra:
        run = asyncio.run(measure(infra, args.members, args.rate, args.seconds, args.warmup,
                                  args.rounds))
    return report(run, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
