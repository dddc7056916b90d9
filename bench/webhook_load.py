"""The webhook endpoint under load: accept latency of Graph notifications, through to Kafka.

The real app (`create_webhook_app`, its own producer, acks=all; subscriptions from a real
`Store` on a temp SQLite file through `StoreRegistry`) under uvicorn (`BackgroundServer`),
against the real broker (KAFKA_BOOTSTRAP_SERVERS, else a local one started here and stopped
at the end; topics under a unique prefix). Load: valid change notifications, one item each,
right clientState, distinct contact ids, POSTed to /webhooks/graph open loop at fixed rates
(250, 500, 1,000/s) for 10 s each, by a lean client in a process of its own (asyncio raw
sockets, HTTP/1.1 keep-alive, 32 connections); `BENCH_RATES`, `BENCH_SECONDS` and
`BENCH_CONNECTIONS` override. Latency runs from each request's scheduled send time to its full
response, so queueing in the client counts too (no coordinated omission).

Prints per rate: achieved rate, p50 (median)/p99/max latency, status counts, CPU used by the
server process, the client and the local broker, and the messages that reached
graph.notifications (must equal the 202s); at the end every message is read back and its
contact id matched with the accepted ones. A 4 s warm-up at 250/s comes first, shown but not
judged: a freshly started broker and app are several times slower for a few seconds.
Baseline in the same run, interleaved: the same client and server stack against a trivial
Starlette app answering 202 with no work, at the same rates; the webhook's own cost shows as
the ratio of p99s. Goal: p99 < 100 ms at 1,000 notifications/s.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import resource
import secrets
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contactsync.http_server import BackgroundServer
from contactsync.kafka.local_broker import LocalBroker
from contactsync.kafka.topics import GRAPH_NOTIFICATIONS, ensure_topics_at, topic_name
from contactsync.producers.webhook import StoreRegistry, create_webhook_app
from contactsync.schemas.envelope import decode
from contactsync.settings import Settings, default_cache_dir
from contactsync.store import Store
from contactsync.store.records import Subscription, SubscriptionService

PATH = "/webhooks/graph"
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
SUBSCRIPTIONS = 50
GOAL_RATE, GOAL_P99_MS = 1000, 100.0
TENANT = "11111111-2222-3333-4444-555555555555"
WARM_RATE, WARM_SECONDS = 250, 4.0  # the webhook's warm-up, before the measured rates
DRAIN_SECONDS = 15.0  # after the last scheduled send, how long answers may still take


# --- the load client (runs in a child process) ----------------------------------------------

@dataclass(frozen=True)
class Job:
    port: int
    rate: float
    seconds: float
    id_prefix: str
    subscriptions: list[tuple[str, str, str]]  # (subscription id, client state, user id)


@dataclass
class Outcome:
    latencies: list[float | None]  # seconds from scheduled send to full response; None: none
    statuses: list[int]  # HTTP status; 0 = connection error, -1 = no answer in time
    elapsed: float  # from the first scheduled send to the last answer
    cpu: float  # the client's own CPU seconds


def contact_id(prefix: str, i: int) -> str:
    return f"{prefix}-{i:06d}"


def _request(job: Job, i: int) -> bytes:
    sid, client_state, user = job.subscriptions[i % len(job.subscriptions)]
    cid = contact_id(job.id_prefix, i)
    resource_path = f"Users/{user}/Contacts/{cid}"
    body = json.dumps({"value": [{
        "subscriptionId": sid,
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
        "changeType": "updated",
        "resource": resource_path,
        "resourceData": {"@odata.type": "#Microsoft.Graph.Contact", "@odata.id": resource_path,
                         "@odata.etag": 'W/"EQAAABYAAAA"', "id": cid},
        "clientState": client_state,
        "tenantId": TENANT,
    }]}).encode()
    head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{job.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _load(job: Job) -> Outcome:
    cpu_started = time.process_time()
    n = int(job.rate * job.seconds)
    payloads = [_request(job, i) for i in range(n)]
    latencies: list[float | None] = [None] * n
    statuses = [-1] * n
    done_at = [0.0]
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", job.port)

    async def worker(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        reader, writer = conn
        while (item := await queue.get()) is not None:
            i, due = item
            try:
                writer.write(payloads[i])
                statuses[i] = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                statuses[i] = 0
                writer.close()
                reader, writer = await connect()
            now = time.perf_counter()
            latencies[i] = now - due
            done_at[0] = max(done_at[0], now)
        writer.close()

    conns = [await connect() for _ in range(CONNECTIONS)]
    workers = [asyncio.create_task(worker(c)) for c in conns]
    start = time.perf_counter() + 0.05
    for i in range(n):  # open loop: the schedule never waits for answers
        due = start + i / job.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=DRAIN_SECONDS)
    for task in pending:
        task.cancel()
    return Outcome(latencies, statuses, (done_at[0] or time.perf_counter()) - start,
                   time.process_time() - cpu_started)


def _client_process(conn: Connection) -> None:
    while (job := conn.recv()) is not None:
        conn.send(asyncio.run(_load(job)))


class Client:
    """The load generator in a process of its own: it must not share the server's GIL."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_client_process, args=(child,), daemon=True)
        self._proc.start()

    def run(self, job: Job) -> Outcome:
        self._conn.send(job)
        outcome: Outcome = self._conn.recv()
        return outcome

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(timeout=10)


# --- the servers -----------------------------------------------------------------------------

def baseline_app() -> Starlette:
    """The same stack doing nothing: read the body, answer 202 with a body of the same shape."""

    async def accept(request: Request) -> Response:
        await request.body()
        return Response(b'{"accepted":1,"refused":0}', 202, media_type="application/json")

    return Starlette(routes=[Route(PATH, accept, methods=["POST"])])


def _subscriptions(store: Store) -> list[tuple[str, str, str]]:
    subs = []
    expiration = datetime.now(UTC) + timedelta(days=2)
    for k in range(SUBSCRIPTIONS):
        sid, secret, user = str(uuid.uuid4()), secrets.token_urlsafe(36), f"user-{k:02d}"
        store.subscriptions.upsert(Subscription(
            subscription_id=sid, service=SubscriptionService.GRAPH,
            resource=f"/users/{user}/contactFolders/folder/contacts", client_state=secret,
            expiration=expiration, notification_url=f"https://bench.invalid{PATH}",
            user_id=user))
        subs.append((sid, secret, user))
    return subs


class TopicCounter:
    """Messages on one topic: the sum of its partitions' end offsets, and their contents."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      consumer_timeout_ms=2000)
        self.consumer.topics()
        partitions = self.consumer.partitions_for_topic(topic) or set()
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]

    def end_offsets(self) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = self.consumer.end_offsets(self.partitions)
        return offsets

    def count(self) -> int:
        return sum(self.end_offsets().values())

    def contact_ids(self) -> Counter[str]:
        ends = self.end_offsets()
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        seen: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                self.consumer.position(tp) < ends[tp] for tp in self.partitions):
            for records in self.consumer.poll(timeout_ms=500, max_records=5000).values():
                for record in records:
                    seen[decode(record.value).payload.contact_id] += 1
        return seen

    def close(self) -> None:
        self.consumer.close()


# --- measuring and printing ------------------------------------------------------------------

@dataclass
class Row:
    rate: float
    outcome: Outcome
    server_cpu: float
    broker_cpu: float | None
    on_topic: int | None = None
    accepted_ids: list[str] = field(default_factory=list)

    def ms(self) -> list[float]:
        return sorted(x * 1000 for x in self.outcome.latencies if x is not None)

    def p(self, q: float) -> float:
        values = self.ms()
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu_seconds(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(client: Client, job: Job, broker_pid: int | None) -> Row:
    cpu, broker = _cpu_seconds(), _proc_cpu_seconds(broker_pid)
    outcome = client.run(job)
    server_cpu = _cpu_seconds() - cpu
    broker_after = _proc_cpu_seconds(broker_pid)
    broker_cpu = None if broker is None or broker_after is None else broker_after - broker
    accepted = [contact_id(job.id_prefix, i) for i, s in enumerate(outcome.statuses) if s == 202]
    return Row(job.rate, outcome, server_cpu, broker_cpu, accepted_ids=accepted)


def _print_row(label: str, row: Row) -> None:
    out = row.outcome
    done = sum(1 for x in out.latencies if x is not None)
    achieved = done / out.elapsed if out.elapsed > 0 else 0.0
    codes = Counter(out.statuses)
    status = " ".join(f"{'err' if c == 0 else 'none' if c == -1 else c}={k}"
                      for c, k in sorted(codes.items()))
    span = out.elapsed or 1.0
    cpu = f"server {row.server_cpu / span:4.0%} client {out.cpu / span:4.0%}"
    if row.broker_cpu is not None:
        cpu += f" broker {row.broker_cpu / span:4.0%}"
    topic = ""
    if row.on_topic is not None:
        verdict = "ok" if row.on_topic == len(row.accepted_ids) else "MISMATCH"
        topic = f"  on topic {row.on_topic} ({verdict})"
    print(f"  {row.rate:6.0f}  {label:8}  {achieved:7.1f}/s  p50 {row.p(0.5):6.1f}  "
          f"p99 {row.p(0.99):6.1f}  max {max(row.ms(), default=float('nan')):6.1f} ms  "
          f"{status}  CPU {cpu}{topic}")


def _run(bootstrap: str, broker_pid: int | None, settings: Settings, tmp: str) -> None:
    rates = [float(r) for r in os.environ.get("BENCH_RATES", "250,500,1000").split(",")]
    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    ensure_topics_at(bootstrap, settings)
    topic = topic_name(settings, GRAPH_NOTIFICATIONS)
    store = Store.open(f"sqlite:///{tmp}/bench.db")
    subs = _subscriptions(store)
    app = create_webhook_app(settings, StoreRegistry(store))
    webhook = BackgroundServer(app).start()
    baseline = BackgroundServer(baseline_app()).start()
    counter = TopicCounter(bootstrap, topic)
    client = Client()
    try:
        deadline = time.monotonic() + 30
        while app.state.publisher.holder.producer is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # Warm-up: connections, producer metadata, the registry cache, and the broker's JIT (a
        # fresh broker's first seconds of produce are several times slower). Shown, not judged.
        _measure(client, Job(baseline.port, 100, 1.0, "warm-b", subs), None)
        before = counter.count()
        warm = _measure(client, Job(webhook.port, WARM_RATE, WARM_SECONDS, "warm-w", subs),
                        broker_pid)
        warm.on_topic = counter.count() - before
        accepted_total = list(warm.accepted_ids)
        print(f"\nwebhook_load: POST {PATH}, 1 notification per request, open loop "
              f"{seconds:.0f} s per rate, {CONNECTIONS} keep-alive connections, "
              f"{SUBSCRIPTIONS} subscriptions (cores: {os.cpu_count()}; Kafka {bootstrap}"
              f"{', local broker' if broker_pid else ''}, topic {topic})")
        print("  latency from scheduled send to full response; CPU as share of one core")
        _print_row("warm-up", warm)
        results: dict[float, tuple[Row, Row]] = {}
        for n, rate in enumerate(rates):
            base = _measure(client, Job(baseline.port, rate, seconds, f"b{n}", subs),
                            broker_pid)
            before = counter.count()
            hook = _measure(client, Job(webhook.port, rate, seconds, f"w{n}", subs),
                            broker_pid)
            hook.on_topic = counter.count() - before
            accepted_total += hook.accepted_ids
            _print_row("baseline", base)
            _print_row("webhook", hook)
            ratio = hook.p(0.99) / base.p(0.99) if base.p(0.99) > 0 else float("nan")
            print(f"          p99 webhook / baseline = {ratio:.1f}x")
            results[rate] = (base, hook)
        seen = counter.contact_ids()
        expected = Counter(accepted_total)
        lost = sum((expected - seen).values())
        extra = sum((seen - expected).values())
        print(f"  read back {sum(seen.values())} messages for {sum(expected.values())} accepted "
              f"notifications (warm-up included): lost {lost}, duplicates or strays {extra}")
        if GOAL_RATE in results:
            hook = results[GOAL_RATE][1]
            all_202 = all(s == 202 for s in hook.outcome.statuses)
            met = hook.p(0.99) < GOAL_P99_MS and all_202 and lost == 0
            print(f"  goal p99 < {GOAL_P99_MS:.0f} ms at {GOAL_RATE:,}/s, all 202, none lost: "
                  f"{'MET' if met else 'NOT MET'} (p99 {hook.p(0.99):.1f} ms)")
    finally:
        client.close()
        counter.close()
        webhook.stop()
        baseline.stop()
        store.close()


def main() -> None:
    settings = Settings()
    settings = settings.model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:8]}."})
    with tempfile.TemporaryDirectory() as tmp:
        broker: LocalBroker | None = None
        bootstrap = settings.kafka_bootstrap_servers
        if not bootstrap:
            broker = LocalBroker(Path(tmp) / "kafka", version=settings.kafka_version,
                                 cache_dir=default_cache_dir())
            bootstrap = broker.up()
        try:
            settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
            pid = broker.status().pid if broker is not None else None
            _run(bootstrap, pid, settings, tmp)
        finally:
            if broker is not None:
                broker.down()


if __name__ == "__main__":
    main()
