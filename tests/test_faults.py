"""Fault injection with real processes: every scenario ends with exact accounting.

Readings come from a real mosquitto (a publisher numbers every message: device, timestamp,
sequence number) or a real snmpd; the collector runs in this event loop (`running_daemon`)
or as a `dt-collector run` subprocess for the signal scenarios; Dynatrace is the strict
simulator over HTTP, recording when each request came and answered. At the end of each
scenario:

- the collector's books balance: received = delivered + dropped by reason (nothing left
  buffered unless the scenario says so), and the drops are exactly those expected;
- what the simulator accepted is what was published or polled, point by point;
- a point arrives more than once only in the documented at-least-once cases:
  * the simulator accepted a push after the collector had stopped listening for the
    answer (a timeout, or a push cancelled at shutdown): the collector keeps those points
    and sends them again. The simulator records such pushes as `unheard`, and the
    simulator's total is exactly the collector's `delivered` plus the points of those;
  * MQTT QoS 1: a message the publisher sent again because its PUBACK did not come
    (`Publisher.resent`), or one the broker sent again (with the DUP flag, which mosquitto
    logs) because the collector's PUBACK had not reached it before a restart of the broker
    or of the collector's MQTT source: the connection was torn down with the PUBACK still
    unread. Such repeats are bounded by the redeliveries the broker logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import signal
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from collector import flush as flush_module
from collector.config import parse_config
from collector.daemon import Daemon
from collector.simulator import (
    CONTROL_PREFIX,
    AcceptedPoint,
    MetricDefinition,
    Push,
    Simulator,
)
from tests.helpers import TOKEN, base_config, free_port, running_daemon, wait_for
from tests.mosquitto import Broker, BrokerFactory
from tests.snmpd import COMMUNITY, ENTERPRISE, Start
from tests.test_cli import ROOT, Running

METRIC = "custom:fault.value"


# ----- the simulator, recording ---------------------------------------------------------


class Exchange(NamedTuple):
    """One request to a Dynatrace endpoint: path, status, arrival and answer (monotonic)."""

    path: str
    status: int
    arrived: float
    answered: float


_accepted: contextvars.ContextVar[Push | None] = contextvars.ContextVar("accepted", default=None)


class RecordingSimulator(Simulator):
    """The simulator, also recording every exchange and the pushes nobody heard accepted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges: list[Exchange] = []
        self.unheard: list[Push] = []
        """Pushes accepted after the client had closed the connection (gave up, cancelled)."""
        self.in_progress = 0
        self._late: list[float] = []

    def answer_late(self, delay: float, count: int) -> None:
        """Accept the next `count` pushes as usual, but answer each `delay` seconds later."""
        self._late += [delay] * count

    @property
    def late_answers(self) -> int:
        return len(self._late)

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.insert(0, self._record)  # outermost: sees faults and answers
        return app

    @web.middleware
    async def _record(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        arrived = time.monotonic()
        _accepted.set(None)
        self.in_progress += 1
        try:
            response = await handler(request)
            push = _accepted.get()
            if push is not None and self._late:
                await asyncio.sleep(self._late.pop())
        finally:
            self.in_progress -= 1
        if push is not None and request.transport is None:
            self.unheard.append(push)
        self.exchanges.append(Exchange(request.path, response.status, arrived, time.monotonic()))
        return response

    def _accept(self, device_id: str, body: dict[str, Any]) -> Any:
        device = super()._accept(device_id, body)
        _accepted.set(self.pushes[-1])  # no await between here and the middleware's return
        return device

    def unheard_points(self) -> Counter[AcceptedPoint]:
        return Counter(p for push in self.unheard for p in push_points(push))

    def pushes_with(self, status: int) -> list[Exchange]:
        return [e for e in self.exchanges if "/entity/" in e.path and e.status == status]


def push_points(push: Push) -> Iterable[AcceptedPoint]:
    for series in push.body["series"]:
        dims = tuple(sorted((series.get("dimensions") or {}).items()))
        for ts, value in series["dataPoints"]:
            yield AcceptedPoint(push.device, series["timeseriesId"], dims, ts, float(value))


def preregister(sim: Simulator, *metrics: tuple[str, str]) -> None:
    """Metrics that exist already (200 on PUT), so points of any age in the window count."""
    for metric_id, device_type in metrics:
        sim.metrics[metric_id] = MetricDefinition(metric_id, metric_id, "Count", (),
                                                  (device_type,), 0)


@pytest.fixture
async def sim() -> AsyncIterator[RecordingSimulator]:
    simulator = RecordingSimulator(tokens={TOKEN})
    preregister(simulator, (METRIC, "Sensor"))
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.stop()


# ----- the publisher --------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One published message: one reading of METRIC for `device`."""

    device: str
    ts: int
    seq: int
    age_ms: int = 0
    """How far in the past it was stamped when published."""

    @property
    def point(self) -> AcceptedPoint:
        return AcceptedPoint(self.device, METRIC, (), self.ts, float(self.seq))


@dataclass
class Publisher:
    """Publishes numbered readings, QoS 1, at a steady rate, through broker outages.

    A message whose PUBACK did not come is published again after reconnecting (the broker
    may then have it twice: `resent`). `acked` is what the broker acknowledged.
    """

    port: int
    root: str
    rate: float = 200.0
    devices: int = 4
    age_ms: int = 0
    """Stamp readings this much in the past."""
    acked: list[Sent] = field(default_factory=list)
    resent: set[int] = field(default_factory=set)
    connected: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _seq: int = 0

    async def __aenter__(self) -> Publisher:
        self._task = asyncio.create_task(self._run(), name="publisher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Finish the message in hand, then disconnect."""
        self._stop.set()
        if self._task is not None:
            await self._task

    def _next(self) -> Sent:
        sent = Sent(f"d{self._seq % self.devices}", int(time.time() * 1000) - self.age_ms,
                    self._seq, self.age_ms)
        self._seq += 1
        return sent

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pending: Sent | None = None
        while not self._stop.is_set():
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, timeout=1.0,
                                          identifier=f"pub-{uuid.uuid4().hex[:8]}") as client:
                    self.connected = True
                    due = loop.time()
                    while not self._stop.is_set() or pending is not None:
                        pending = pending or self._next()
                        await client.publish(f"{self.root}/{pending.device}/state",
                                             json.dumps({"time": pending.ts, "v": pending.seq}),
                                             qos=1, timeout=1.0)
                        self.acked.append(pending)
                        pending = None
                        due += 1 / self.rate
                        await asyncio.sleep(max(0.0, due - loop.time()))
            except aiomqtt.MqttError:
                self.connected = False
                if pending is not None:
                    self.resent.add(pending.seq)
                if self._stop.is_set():
                    pending = None  # never acknowledged: not published, as far as we know
                await asyncio.sleep(0.05)
        self.connected = False

    async def more(self, n: int) -> None:
        """Wait until `n` more messages are acknowledged."""
        target = len(self.acked) + n
        await wait_for(lambda: len(self.acked) >= target, timeout=30, what=f"{n} more published")


def mqtt_config(sim: Simulator, broker_port: int, root: str, *, flush: str = "100ms",
                timeout: str = "1s", extra_buffer: str = "", extra_dynatrace: str = "") -> str:
    text = base_config(sim.url, flush_interval=flush, extra_buffer=extra_buffer)
    text = text.replace("  timeout: 2s\n", f"  timeout: {timeout}\n{extra_dynatrace}")
    return text + textwrap.dedent(f"""\
        metrics:
          {METRIC}: {{display_name: Value, types: [Sensor]}}
        sources:
          - type: mqtt
            name: iot
            url: mqtt://127.0.0.1:{broker_port}
            protocol: "5"
            client_id: {root}-collector
            reconnect_delay: 50ms
            reconnect_max_delay: 200ms
            subscriptions:
              - topic: {root}/{{device}}/state
                device: {{type: Sensor}}
                timestamp: {{field: time, format: ms}}
                metrics: [{{field: v, metric: {METRIC}}}]
        """)


def telemetry(daemon: Daemon, family: str, *labels: str) -> float:
    found = daemon.telemetry.families.get(family)
    return 0.0 if found is None else found.value(*labels)


async def mqtt_connected(daemon: Daemon, connected: bool = True) -> None:
    await wait_for(lambda: telemetry(daemon, "mqtt_connected", "iot") == connected,
                   timeout=20, what=f"mqtt connected == {connected}")


async def all_arrived(sim: Simulator, sent: list[Sent], timeout: float = 30) -> None:
    want = {s.point for s in sent}
    await wait_for(lambda: want <= set(sim.points()), timeout=timeout,
                   what=f"{len(want)} published points at the simulator")


# ----- the accounting -------------------------------------------------------------------


def books_balance(daemon: Daemon, **dropped: int) -> None:
    """Nothing buffered, received = delivered + dropped, and exactly these drops."""
    b = daemon.buffer
    assert (b.buffered, b.in_flight) == (0, 0)
    assert b.received == b.delivered + sum(b.dropped.values())
    assert b.dropped == {"expired": 0, "overflow": 0, "rejected": 0, "invalid": 0, **dropped}


def redeliveries(broker: Broker, root: str) -> int:
    """QoS 1 messages mosquitto sent the collector again (DUP flag) after a reconnection."""
    return broker.log().count(f"Sending PUBLISH to {root}-collector (d1,")


def delivered_as_published(sim: RecordingSimulator, daemon: Daemon, published: list[Sent],
                           *, mqtt_repeats: int = 0, never: Iterable[Sent] = ()
                           ) -> dict[str, int]:
    """What arrived is what was published (less `never`), repeats only of the allowed kinds.

    `mqtt_repeats`: how many messages the MQTT side may legitimately have delivered twice.
    Returns how many repeats of each kind there were.
    """
    arrived = Counter(p for p in sim.points() if p.metric == METRIC)
    gone = {s.point for s in never}
    want = Counter(s.point for s in published if s.point not in gone)
    assert set(arrived) == set(want), (
        f"missing {sorted(set(want) - set(arrived))[:5]}, "
        f"unexpected {sorted(set(arrived) - set(want))[:5]}")
    unheard = sim.unheard_points()
    # The simulator's total is the collector's deliveries plus what nobody heard accepted.
    assert sum(arrived.values()) == daemon.buffer.delivered + sum(unheard.values())
    repeats = {"unheard": 0, "mqtt": 0}
    for point, n in arrived.items():
        by_unheard = min(n - 1, unheard[point])
        repeats["unheard"] += by_unheard
        assert n - 1 - by_unheard <= 1, f"{point} arrived {n} times"
        repeats["mqtt"] += n - 1 - by_unheard
    # Readings the collector got twice are exactly the extra ones it received.
    assert repeats["mqtt"] == daemon.buffer.received - len(published)
    assert repeats["mqtt"] <= mqtt_repeats
    return repeats


# ----- Dynatrace misbehaving ------------------------------------------------------------


@asynccontextmanager
async def mqtt_collector(sim: RecordingSimulator, broker: Broker, root: str, *,
                         rate: float = 200.0, **options: str
                         ) -> AsyncIterator[tuple[Daemon, Publisher]]:
    """A collector reading `broker` into `sim`, and a publisher feeding it.

    On exit the publisher stops first, then the collector once it has received every
    message (its final flush sends what is still buffered).
    """
    config = parse_config(mqtt_config(sim, broker.port, root, **options), env={})
    async with running_daemon(config) as daemon:
        await mqtt_connected(daemon)
        async with Publisher(broker.port, root, rate=rate) as publisher:
            yield daemon, publisher
        await wait_for(lambda: daemon.buffer.received >= len(publisher.acked), timeout=20,
                       what="every published message at the collector")


async def test_503_for_five_flush_intervals_then_recovery(
        sim: RecordingSimulator, mosquitto: Broker, topic_root: str) -> None:
    with capture_logs() as logs:
        async with mqtt_collector(sim, mosquitto, topic_root, flush="200ms") as (daemon, pub):
            await pub.more(50)
            await all_arrived(sim, pub.acked)
            sim.fail(503, seconds=5 * 0.2)
            await wait_for(lambda: not sim.faults(), what="the outage to end")
            await pub.more(50)
        await all_arrived(sim, pub.acked)
    assert sim.pushes_with(503), "the outage was never seen"
    books_balance(daemon)
    assert delivered_as_published(sim, daemon, pub.acked) == {"unheard": 0, "mqtt": 0}
    flush_events = [e["event"] for e in logs if "Dynatrace endpoint" in e["event"]]
    assert flush_events == ["Dynatrace endpoint not accepting data; keeping points and retrying",
                            "Dynatrace endpoint reachable again"]


async def delivered_after_last(sim: RecordingSimulator, status: int) -> None:
    """Wait for a push accepted after the last one answered `status` (not by the final
    flush at shutdown, which does not wait: it is bounded by shutdown_timeout instead)."""
    await wait_for(lambda: any(e.arrived > sim.pushes_with(status)[-1].answered
                               for e in sim.pushes_with(200)), what=f"a 200 after the {status}s")


def waits_after(sim: RecordingSimulator, status: int) -> list[float]:
    """For each push answered `status`: seconds until the next push arrived."""
    pushes = [e for e in sim.exchanges if "/entity/" in e.path]
    return [nxt.arrived - e.answered for e, nxt in itertools.pairwise(pushes)
            if e.status == status]


async def test_429_storm_with_retry_after_is_waited_out(
        sim: RecordingSimulator, mosquitto: Broker, topic_root: str) -> None:
    # One push at a time, so "the next push" after a 429 is well defined.
    async with mqtt_collector(sim, mosquitto, topic_root,
                              extra_dynatrace="  max_concurrency: 1\n") as (daemon, pub):
        await pub.more(20)
        sim.fail(429, retry_after="1", seconds=2.0)
        await wait_for(lambda: len(sim.pushes_with(429)) >= 2, what="two 429s")
        await wait_for(lambda: not sim.faults(), what="the storm to end")
        await delivered_after_last(sim, 429)
        await pub.more(20)
    await all_arrived(sim, pub.acked)
    waits = waits_after(sim, 429)
    assert len(waits) >= 2 and min(waits) >= 1.0, waits
    books_balance(daemon)
    assert delivered_as_published(sim, daemon, pub.acked) == {"unheard": 0, "mqtt": 0}


async def test_429_without_retry_after_waits_the_default(
        sim: RecordingSimulator, mosquitto: Broker, topic_root: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 s in production; shorter here, still far above the 100 ms flush interval and the
    # backoff's first steps, so a collector that ignored the rule would come back sooner.
    monkeypatch.setattr(flush_module, "DEFAULT_RETRY_AFTER", 1.5)
    async with mqtt_collector(sim, mosquitto, topic_root,
                              extra_dynatrace="  max_concurrency: 1\n") as (daemon, pub):
        await pub.more(20)
        sim.fail(429, count=2)
        await wait_for(lambda: len(sim.pushes_with(429)) == 2, what="two 429s")
        await delivered_after_last(sim, 429)
        await pub.more(20)
    await all_arrived(sim, pub.acked)
    waits = waits_after(sim, 429)
    assert len(waits) == 2 and min(waits) >= 1.5, waits
    books_balance(daemon)
    assert delivered_as_published(sim, daemon, pub.acked) == {"unheard": 0, "mqtt": 0}


@pytest.mark.parametrize("slow", ["before accepting", "after accepting"])
async def test_endpoint_slower_than_the_timeout(
        sim: RecordingSimulator, mosquitto: Broker, topic_root: str, slow: str) -> None:
    async with mqtt_collector(sim, mosquitto, topic_root, timeout="300ms") as (daemon, pub):
        await pub.more(20)
        if slow == "before accepting":
            sim.slow(0.8, count=6, path_contains="/entity/")
        else:
            sim.answer_late(0.8, count=6)
        await wait_for(lambda: telemetry(daemon, "dynatrace_requests", "push", "timeout") >= 2,
                       what="pushes timing out")
        await wait_for(lambda: not sim.faults() and not sim.late_answers and sim.in_progress == 0,
                       what="the slow answers to end")
        await pub.more(20)
    await all_arrived(sim, pub.acked)
    books_balance(daemon)
    repeats = delivered_as_published(sim, daemon, pub.acked)
    assert repeats["mqtt"] == 0
    if slow == "before accepting":
        # The collector gave up before the simulator read the body: nothing was taken.
        assert sim.unheard == [] and repeats["unheard"] == 0
    else:
        # The simulator took these pushes; the collector, not hearing so, sent them again:
        # those points arrived twice (at least once, as documented), and nothing else did.
        assert sim.unheard and repeats["unheard"] == sum(sim.unheard_points().values())


async def test_endpoint_refusing_connections_then_back_on_the_same_port(
        sim: RecordingSimulator, mosquitto: Broker, topic_root: str) -> None:
    port = int(sim.url.rsplit(":", 1)[1])
    async with mqtt_collector(sim, mosquitto, topic_root) as (daemon, pub):
        await pub.more(20)
        await all_arrived(sim, pub.acked)
        await sim.stop()
        refused = telemetry(daemon, "flushes", "failed")
        await wait_for(lambda: telemetry(daemon, "flushes", "failed") >= refused + 3,
                       what="flushes failing on refused connections")
        await sim.start("127.0.0.1", port)
        await pub.more(20)
    await all_arrived(sim, pub.acked)
    books_balance(daemon)
    errors = {k[1] for k in daemon.telemetry.families["dynatrace_requests"].by_label()}
    assert "connection" in errors
    assert delivered_as_published(sim, daemon, pub.acked) == {"unheard": 0, "mqtt": 0}


async def test_413_splits_large_bodies_until_they_fit(
        mosquitto: Broker, topic_root: str) -> None:
    small = RecordingSimulator(tokens={TOKEN}, max_body_bytes=2000)
    preregister(small, (METRIC, "Sensor"))
    await small.start("127.0.0.1", 0)
    try:
        # 1 s of 800 messages/s over 4 devices: ~6 kB per device and flush, the limit 2 kB.
        async with mqtt_collector(small, mosquitto, topic_root, flush="1s",
                                  rate=800) as (daemon, pub):
            await pub.more(1600)
        await all_arrived(small, pub.acked)
    finally:
        await small.stop()
    assert small.pushes_with(413), "no body was too large"
    assert all(r.body_bytes <= 2000 for r in small.requests if r.status == 200)
    books_balance(daemon)
    assert delivered_as_published(small, daemon, pub.acked) == {"unheard": 0, "mqtt": 0}


async def test_points_reaching_max_age_in_an_outage_are_dropped_never_sent(
        sim: RecordingSimulator, mosquitto: Broker, topic_root: str) -> None:
    async with mqtt_collector(sim, mosquitto, topic_root,
                              extra_buffer="  max_age: 3s\n") as (daemon, pub):
        await pub.more(40)
        await all_arrived(sim, pub.acked)
        sim.fail(503)
        pub.age_ms = 2500  # these reach max_age half a second into the outage
        await pub.more(40)
        pub.age_ms = 0
        await wait_for(lambda: daemon.buffer.dropped["expired"] == len(
            [s for s in pub.acked if s.age_ms]), timeout=20, what="the old points to expire")
        await pub.more(40)  # fresh ones, still in the outage: these must arrive
        sim.clear_faults()
        await pub.more(40)
    await all_arrived(sim, [s for s in pub.acked if not s.age_ms])
    old = [s for s in pub.acked if s.age_ms]
    assert len(old) >= 40
    books_balance(daemon, expired=len(old))
    assert not {s.point for s in old} & set(sim.points())
    assert delivered_as_published(sim, daemon, pub.acked, never=old) == {"unheard": 0, "mqtt": 0}


# ----- the MQTT broker misbehaving ------------------------------------------------------


async def test_broker_restart_mid_stream_qos1_persistent_session(
        sim: RecordingSimulator, mosquitto_factory: BrokerFactory, topic_root: str) -> None:
    broker = await mosquitto_factory(persistence=True)
    async with mqtt_collector(sim, broker, topic_root, rate=300) as (daemon, pub):
        await pub.more(150)
        lost = telemetry(daemon, "mqtt_reconnects", "iot")
        await broker.stop()  # SIGTERM: mosquitto saves the sessions and their queues
        await broker.start()
        await wait_for(lambda: telemetry(daemon, "mqtt_reconnects", "iot") > lost,
                       what="the collector to notice")
        await mqtt_connected(daemon)
        await pub.more(150)
    await all_arrived(sim, pub.acked)
    books_balance(daemon)
    repeats = delivered_as_published(
        sim, daemon, pub.acked, mqtt_repeats=redeliveries(broker, topic_root) + len(pub.resent))
    assert repeats["unheard"] == 0


async def test_broker_gone_for_longer_than_the_flush_interval(
        sim: RecordingSimulator, mosquitto_factory: BrokerFactory, topic_root: str) -> None:
    broker = await mosquitto_factory(persistence=True)
    with capture_logs() as logs:
        async with mqtt_collector(sim, broker, topic_root) as (daemon, pub):
            await pub.more(100)
            await broker.stop()
            await mqtt_connected(daemon, False)
            # Flushing goes on without the source: what the collector had gets delivered
            # while the broker is still away, over at least five flush intervals.
            flushes = telemetry(daemon, "flushes", "ok")
            await wait_for(lambda: telemetry(daemon, "flushes", "ok") >= flushes + 5
                           and daemon.buffer.delivered == daemon.buffer.received,
                           what="five flushes and everything received delivered")
            assert broker.process is None and daemon.buffer.received > 0
            assert telemetry(daemon, "mqtt_reconnects", "iot") >= 2
            await broker.start()
            await mqtt_connected(daemon)
            await pub.more(100)
    await all_arrived(sim, pub.acked)
    books_balance(daemon)
    repeats = delivered_as_published(
        sim, daemon, pub.acked, mqtt_repeats=redeliveries(broker, topic_root) + len(pub.resent))
    assert repeats["unheard"] == 0
    events = [e["event"] for e in logs if e["event"].startswith("mqtt connection")]
    assert events == ["mqtt connection lost or refused; retrying", "mqtt connection recovered"]


# ----- the SNMP agent misbehaving -------------------------------------------------------

E = ENTERPRISE
UPTIME = "1.3.6.1.2.1.1.3.0"
GAUGE, DELTA = "custom:snmp.value", "custom:snmp.count"


def snmp_config(sim: Simulator, host: str) -> str:
    return base_config(sim.url) + textwrap.dedent(f"""\
        metrics:
          {GAUGE}: {{display_name: Value, types: [Firewall]}}
          {DELTA}: {{display_name: Count, types: [Firewall]}}
        sources:
          - type: snmp
            name: net
            interval: 200ms
            timeout: 300ms
            retries: 0
            community: {COMMUNITY}
            device_type: Firewall
            scalars:
              - {{metric: {GAUGE}, oid: {E}.1.0}}
              - {{metric: {DELTA}, oid: {E}.2.0, transform: delta}}
            targets: [{{host: "{host}", device: fw-1}}]
        """)


def polls_ok(daemon: Daemon) -> float:
    return (telemetry(daemon, "polls", "net", "fw-1")
            - telemetry(daemon, "polls_failed", "net", "fw-1"))


async def more_polls(daemon: Daemon, n: int) -> None:
    target = polls_ok(daemon) + n
    await wait_for(lambda: polls_ok(daemon) >= target, timeout=20, what=f"{n} good polls")


def snmp_books(sim: Simulator, daemon: Daemon) -> tuple[list[float], list[float]]:
    """Polled = delivered, exactly; the values delivered per metric."""
    ok = polls_ok(daemon)
    resets = telemetry(daemon, "snmp_counter_resets", "net", "fw-1")
    bad = sum(n for labels, n in daemon.telemetry.families["snmp_bad_values"].by_label().items()
              if labels[:2] == ("net", "fw-1")) if "snmp_bad_values" in \
        daemon.telemetry.families else 0
    # Every good poll gives a gauge reading and a delta, except the delta's first sample and
    # the first one after a reset (a baseline each).
    assert daemon.buffer.received == 2 * ok - 1 - resets - bad
    books_balance(daemon)
    points = [p for p in sim.points() if p.device == "fw-1"]
    assert len(points) == daemon.buffer.delivered == len(set(points))
    return ([p.value for p in points if p.metric == GAUGE],
            [p.value for p in points if p.metric == DELTA])


async def test_snmp_agent_down_then_back(sim: RecordingSimulator, snmpd: Start) -> None:
    values: dict[str, tuple[str, int | str]] = {
        UPTIME: ("timeticks", 100_000), f"{E}.1.0": ("gauge", 111), f"{E}.2.0": ("counter", 5000)}
    agent = snmpd(values=values)
    with capture_logs() as logs:
        async with running_daemon(parse_config(snmp_config(sim, agent.host), env={})) as daemon:
            await more_polls(daemon, 3)
            agent.stop()
            failed = telemetry(daemon, "polls_failed", "net", "fw-1")
            await wait_for(lambda: telemetry(daemon, "polls_failed", "net", "fw-1") >= failed + 2,
                           timeout=20, what="polls failing")
            agent.set({**values, f"{E}.1.0": ("gauge", 222)})
            agent.restart()  # the same ports
            await wait_for(lambda: any(p.value == 222 for p in sim.points()), timeout=20,
                           what="a value from the agent back up")
            await more_polls(daemon, 2)
    gauges, deltas = snmp_books(sim, daemon)
    assert set(gauges) == {111, 222} and set(deltas) == {0}
    assert telemetry(daemon, "snmp_counter_resets", "net", "fw-1") == 0  # same uptime: no reset
    events = [e["event"] for e in logs if e["event"].startswith("SNMP target")]
    assert events == ["SNMP target failing", "SNMP target recovered"]


async def test_snmp_agent_restarted_counter_reset_sends_no_spike(
        sim: RecordingSimulator, snmpd: Start) -> None:
    # A wrap from 4,294,967,000 to 704 would be an increase of 1,000; but sysUpTime went
    # back, so the agent restarted and its counter started again: no delta is sent for it.
    values: dict[str, tuple[str, int | str]] = {
        UPTIME: ("timeticks", 100_000), f"{E}.1.0": ("gauge", 111),
        f"{E}.2.0": ("counter", 4_294_967_000)}
    agent = snmpd(values=values)
    async with running_daemon(parse_config(snmp_config(sim, agent.host), env={})) as daemon:
        await more_polls(daemon, 3)
        agent.stop()
        agent.set({UPTIME: ("timeticks", 100), f"{E}.1.0": ("gauge", 222),
                   f"{E}.2.0": ("counter", 704)})
        agent.restart()  # the same ports
        await wait_for(lambda: any(p.value == 222 for p in sim.points()), timeout=20,
                       what="a value from the restarted agent")
        await more_polls(daemon, 3)
    gauges, deltas = snmp_books(sim, daemon)
    assert set(gauges) == {111, 222}
    assert set(deltas) == {0}, "a spike was sent"
    assert telemetry(daemon, "snmp_counter_resets", "net", "fw-1") == 1


# ----- the collector itself: signals, crashes, reloads ----------------------------------


async def launch(*args: str, module: str = "tests.fake_collector") -> Running:
    """`dt-collector ARGS` as a subprocess (`python -m collector`, or with `type: fake`)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    return Running(proc)


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def emitted(running: Running) -> int:
    """How many readings the fake source says it emitted."""
    return running.stderr.count("emitted ")


async def status(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/status") as answer:
        result: dict[str, Any] = await answer.json()
        return result


def fake_config(sim: Simulator, tmp_path: Path, *, count: int = 0, start_value: float = 0,
                flush: str = "200ms", timeout: str = "5s", extra_buffer: str = "",
                health: str = "''") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(f"""\
        dynatrace: {{url: "{sim.url}", token: {TOKEN}, timeout: {timeout}}}
        buffer:
          flush_interval: {flush}
          shutdown_timeout: 10s
        """) + extra_buffer + textwrap.dedent(f"""\
        health: {{listen: {health}}}
        log: {{format: json, level: info}}
        metrics:
          custom:fake.value: {{display_name: Fake, types: [Fake]}}
        sources:
          - type: fake
            device: dev-1
            device_type: Fake
            metric: custom:fake.value
            count: {count}
            start_value: {start_value}
            interval: 0.01
        """))
    return path


async def test_sigterm_during_a_flush(sim: RecordingSimulator, tmp_path: Path) -> None:
    preregister(sim, ("custom:fake.value", "Fake"))
    sim.answer_late(1.0, count=1000)  # every push is answered a second late: one in flight
    running = await launch("run", "-c", str(fake_config(sim, tmp_path, count=200)))
    try:
        await wait_for(lambda: sim.in_progress > 0 and emitted(running) >= 20, timeout=30,
                       what="a push in flight")
    finally:
        code = await running.stop(signal.SIGTERM)
    await wait_for(lambda: sim.in_progress == 0, what="the simulator to finish")
    assert code == 0
    values = Counter(p.value for p in sim.points())
    n = emitted(running)
    assert n < 200, "the source was not stopped"
    # Every reading arrived: the push cut off by SIGTERM was kept and went out again in the
    # final flush. The simulator finished that cut-off push as well, so its points arrived
    # twice; they, and only they, are the at-least-once repeats.
    unheard = Counter(p.value for p in sim.unheard_points())
    assert sim.unheard, "no push was in flight at SIGTERM"
    assert values == Counter(float(v) for v in range(n)) + unheard
    logged = events(running.stderr)
    assert not [e for e in logged if e["event"] == "points not delivered before shutdown"]
    assert [e["delivered"] for e in logged if e["event"] == "stopped"] == [n]


async def test_sigkill_with_the_spool_then_restart(sim: RecordingSimulator,
                                                   tmp_path: Path) -> None:
    preregister(sim, ("custom:fake.value", "Fake"))
    spool = tmp_path / "spool"
    port = free_port()
    sync = 0.2
    spooled = f"  spool: {{path: {spool}, sync_interval: {sync}s}}\n"
    config = fake_config(sim, tmp_path, extra_buffer=spooled, health=f"127.0.0.1:{port}")
    first = await launch("run", "-c", str(config))
    try:
        await wait_for(lambda: len(sim.points()) >= 50, timeout=30, what="points delivered")
        sim.fail(503)  # from now on the points pile up in the buffer and the spool
        await wait_for(lambda: emitted(first) > 300 + len(sim.points()), timeout=30,
                       what="three seconds of points undelivered")
        killed_at = time.time()
        await first.stop(signal.SIGKILL)
    finally:
        await first.stop(signal.SIGKILL)
    n1 = emitted(first)
    await wait_for(lambda: sim.in_progress == 0, what="the simulator to finish")
    delivered_before = len(sim.points())
    sim.clear_faults()

    config = fake_config(sim, tmp_path, extra_buffer=spooled, health=f"127.0.0.1:{port}",
                         start_value=1_000_000)
    second = await launch("run", "-c", str(config))
    try:
        await wait_for(lambda: '"spool restored"' in second.stderr, timeout=30,
                       what="the spool restored")
        restored = next(e for e in events(second.stderr) if e["event"] == "spool restored")
        await wait_for(lambda: len(sim.points()) >= delivered_before + restored["points"],
                       timeout=30, what="the spooled points delivered")
        books = (await status(port))["points"]
    finally:
        assert await second.stop(signal.SIGTERM) == 0
    n2 = emitted(second)
    first_run = [p for p in sim.points() if p.value < 1_000_000]
    second_run = [p for p in sim.points() if p.value >= 1_000_000]
    values = Counter(p.value for p in first_run)
    # Nothing twice: the first run delivered nothing in its last seconds (503), and what it
    # had delivered before was removed from the spool long before the kill.
    assert max(values.values()) == 1
    assert sorted(p.value for p in second_run) == [1_000_000.0 + v for v in range(n2)]
    # Lost: only what was emitted after the last sync before the kill, i.e. the newest
    # points (a suffix), stamped at most one sync interval (plus the sync's own time) before
    # the kill. The source prints after it emits, so one more than printed may be in.
    got = sorted(values)
    assert got == [float(v) for v in range(len(got))], "a gap: lost points in the middle"
    assert len(got) <= n1 + 1
    newest = max(p.timestamp_ms for p in first_run) / 1000
    assert killed_at - newest <= sync + 1.0, f"lost {killed_at - newest:.2f} s of points"
    assert restored["points"] == len(got) - delivered_before
    assert restored["expired"] == 0 and restored["set_aside"] == []
    # The second run's books, before its final flush: the restored points are received too.
    assert books["received"] == books["delivered"] + books["buffered"] + sum(
        books["dropped"].values())
    assert books["dropped"] == {"expired": 0, "overflow": 0, "rejected": 0, "invalid": 0}


def reloaded(running: Running, times: int) -> bool:
    return running.stderr.count('"config reloaded"') == times


async def test_sighup_reloads_while_ingesting_at_load(
        sim: RecordingSimulator, mosquitto: Broker, topic_root: str, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"

    def write(variant: int) -> None:
        # Each reload changes the MQTT source (so it is restarted) and the flush interval.
        text = mqtt_config(sim, mosquitto.port, topic_root, flush=f"{100 + 50 * variant}ms")
        text = text.replace("reconnect_delay: 50ms", f"reconnect_delay: {50 + variant}ms")
        text = text.replace("  listen: ''", f"  listen: 127.0.0.1:{port}")
        config.write_text(text.replace("  level: debug", "  level: info\n  format: json"))

    write(0)
    running = await launch("run", "-c", str(config), module="collector")
    try:
        await wait_for(lambda: '"mqtt connected"' in running.stderr, timeout=30,
                       what="the collector connected")
        async with Publisher(mosquitto.port, topic_root, rate=1000) as pub:
            await pub.more(500)
            for reload in range(1, 4):
                write(reload % 2)
                running.proc.send_signal(signal.SIGHUP)
                await wait_for(partial(reloaded, running, reload), timeout=30,
                               what=f"reload {reload}")
                await pub.more(500)
        await all_arrived(sim, pub.acked)
        books = (await status(port))["points"]
    finally:
        assert await running.stop(signal.SIGTERM) == 0
    logged = events(running.stderr)
    assert len([e for e in logged if e["event"] == "mqtt connected"]) == 4  # restarted 3 times
    assert not [e for e in logged if e["level"] in ("error", "warning")], logged
    # Nothing lost across three restarts of the source; a message arrives twice only when
    # the broker sent it again (its PUBACK was cut off with the old connection).
    arrived = Counter(p for p in sim.points() if p.metric == METRIC)
    assert set(arrived) == {s.point for s in pub.acked} and max(arrived.values()) <= 2
    repeats = sum(arrived.values()) - len(pub.acked)
    assert repeats <= redeliveries(mosquitto, topic_root) and not pub.resent and not sim.unheard
    received = len(pub.acked) + repeats
    assert books == {"received": received, "delivered": received, "buffered": 0,
                     "dropped": {"expired": 0, "overflow": 0, "rejected": 0, "invalid": 0}}
