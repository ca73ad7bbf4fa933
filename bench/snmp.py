"""SNMP: CPU per 10,000 varbinds polled, and how many agents one core polls every minute.

Walk: one snmpd serves a table of 1,000 rows x 10 columns (10,000 Counter64 varbinds). The
collector polls it through the SNMP source into the real buffer, with each engine; the
baselines walk the same table of the same agent with GETBULK, 25 repetitions: Net-SNMP's
`snmpbulkwalk` (C; its CPU from RUSAGE_CHILDREN, process start included), bare pysnmp
(`bulk_walk_cmd`) and bare gufo_snmp (`SnmpSession.getbulk`). snmpbulkwalk, bare gufo and
the gufo engine send the same 400 requests (column after column); pysnmp's engine asks all
10 columns at once, 40 requests of 250 varbinds.

Scale: N targets (several snmpd processes, at most 128 ports each), 20 scalars each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gufo.snmp.aio import SnmpSession
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    bulk_walk_cmd,
)

from bench.common import Row
from collector.buffer import Buffer
from collector.catalog import Catalog, MetricInfo
from collector.config import parse_config
from collector.config.snmp import EngineName, SnmpSourceConfig
from collector.logs import get_logger
from collector.sources import SourceContext
from collector.sources.snmp.source import SnmpSource, TargetPoller, open_engine
from collector.telemetry import Telemetry
from tests.snmpd import COMMUNITY, ENTERPRISE, SnmpAgent, start_snmpd

ROWS, COLUMNS, REPETITIONS, ROUNDS = 1000, 10, 25, 5
ENGINES: tuple[EngineName, ...] = ("gufo", "pysnmp")
VARBINDS = ROWS * COLUMNS
TABLE = f"{ENTERPRISE}.5.1"


def table_values() -> dict[str, tuple[str, int | str]]:
    values: dict[str, tuple[str, int | str]] = {"1.3.6.1.2.1.1.3.0": ("timeticks", 1)}
    for c in range(1, COLUMNS + 1):
        for r in range(1, ROWS + 1):
            values[f"{TABLE}.{c}.{r}"] = ("counter64", r * c + 2**40)
    return values


@contextlib.contextmanager
def running_agents(count: int, **kwargs: object) -> Iterator[list[SnmpAgent]]:
    with tempfile.TemporaryDirectory() as directory:
        agents: list[SnmpAgent] = []
        try:
            for i in range(count):
                agents.append(start_snmpd(Path(directory) / f"snmpd{i}",
                                          engine_id=f"bench{i}", **kwargs))  # type: ignore[arg-type]
            yield agents
        finally:
            for agent in agents:
                agent.stop()


def source_config(hosts: list[str], engine: EngineName, body: str, metrics: list[str],
                  dimensions: str = "[i]") -> SnmpSourceConfig:
    defined = "".join(f"  {m}: {{display_name: b, dimensions: {dimensions}, types: [Bench]}}\n"
                      for m in metrics)
    targets = "".join(f"      - {{host: '{host}', device: d{i}}}\n" for i, host in enumerate(hosts))
    text = (f"dynatrace: {{url: http://127.0.0.1:9, token: t}}\nmetrics:\n{defined}"
            f"sources:\n  - type: snmp\n    name: bench\n    engine: {engine}\n"
            f"    community: {COMMUNITY}\n    device_type: Bench\n{body}"
            f"    targets:\n{targets}")
    config = parse_config(text, env={}).sources[0]
    assert isinstance(config, SnmpSourceConfig)
    return config


def buffer_for(metrics: list[str], points: int, dimensions: frozenset[str] = frozenset({"i"})
               ) -> Buffer:
    catalog = Catalog()
    for metric in metrics:
        catalog.set_metric(MetricInfo(metric, dimensions, frozenset({"Bench"})))
    return Buffer(catalog, max_points=points, max_age=3600)


# ----- walk ----------------------------------------------------------------------------


def walk_poller(host: str, engine: EngineName) -> tuple[TargetPoller, Buffer]:
    """A target that polls the table through the source into a real buffer."""
    metrics = [f"custom:bench.c{c}" for c in range(1, COLUMNS + 1)]
    columns = "".join(f"          - {{metric: {m}, oid: {TABLE}.{c}}}\n"
                      for c, m in enumerate(metrics, 1))
    body = (f"    max_repetitions: {REPETITIONS}\n    tables:\n"
            f"      - dimensions: {{i: index}}\n        metrics:\n{columns}")
    buffer = buffer_for(metrics, (ROUNDS + 1) * VARBINDS)
    source = SnmpSource(source_config([host], engine, body, metrics),
                        SourceContext(buffer, Telemetry(), get_logger("bench")))
    buffer.declare_device(source.targets[0].device)
    return source.targets[0], buffer


async def pysnmp_walk(engine: SnmpEngine, target: UdpTransportTarget) -> int:
    n = 0
    async for error, status, _, varbinds in bulk_walk_cmd(
            engine, CommunityData(COMMUNITY), target, ContextData(), 0, REPETITIONS,
            ObjectType(ObjectIdentity(TABLE)), lexicographicMode=False, lookupMib=False):
        assert not error and not status
        n += len(varbinds)
    return n


async def gufo_walk(session: SnmpSession) -> int:
    n = 0
    async for _ in session.getbulk(TABLE, REPETITIONS):
        n += 1
    return n


def snmpbulkwalk(host: str) -> float:
    """CPU seconds of the child (process start included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["snmpbulkwalk", "-v2c", "-c", COMMUNITY, f"-Cr{REPETITIONS}", "-On", "-Oq", host,
         TABLE], capture_output=True, check=True,
        env={"MIBS": "", "MIBDIRS": "/nonexistent"}).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out.count(b"\n") == VARBINDS, out[-200:]
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


async def walks(agent: SnmpAgent) -> dict[str, list[float]]:
    """CPU seconds of each walk; rounds interleave the kinds, so noise hurts all alike."""
    pysnmp = SnmpEngine()
    target = await UdpTransportTarget.create(("127.0.0.1", agent.ports[0]), timeout=5)
    session = SnmpSession("127.0.0.1", agent.ports[0], community=COMMUNITY, timeout=5)
    pollers = {name: walk_poller(agent.host, name) for name in ENGINES}
    used: dict[str, list[float]] = {k: [] for k in (*ENGINES, "bare gufo", "bare pysnmp",
                                                     "snmpbulkwalk")}
    async with contextlib.AsyncExitStack() as stack:
        engines = {n: await stack.enter_async_context(open_engine(n)) for n in ENGINES}
        for name, (poller, _) in pollers.items():
            assert await poller.poll(engines[name])  # warm-up: sessions, first series
        for _ in range(ROUNDS):
            for name, (poller, _) in pollers.items():
                cpu = time.process_time()
                assert await poller.poll(engines[name])
                used[name].append(time.process_time() - cpu)
            cpu = time.process_time()
            assert await gufo_walk(session) == VARBINDS
            used["bare gufo"].append(time.process_time() - cpu)
            cpu = time.process_time()
            assert await pysnmp_walk(pysnmp, target) == VARBINDS
            used["bare pysnmp"].append(time.process_time() - cpu)
            used["snmpbulkwalk"].append(snmpbulkwalk(agent.host))
    pysnmp.close_dispatcher()
    for _, buffer in pollers.values():
        assert buffer.buffered == VARBINDS * (ROUNDS + 1), buffer.invalid_causes
    return used


def snmp_walk() -> list[Row]:
    with running_agents(1, values=table_values()) as (agent,):
        used = asyncio.run(walks(agent))
    s = {kind: statistics.median(cpu) * 10_000 / VARBINDS for kind, cpu in used.items()}
    note = (f"walk of {ROWS:,} rows x {COLUMNS} columns, GETBULK x {REPETITIONS}; "
            f"median of {ROUNDS}")
    unit = "CPU s per 10k varbinds"
    return [
        Row("SNMP walk, collector (gufo) vs C", unit, s["gufo"], s["snmpbulkwalk"],
            "Net-SNMP snmpbulkwalk, same walk", "ratio <= 3", False, note),
        Row("SNMP walk, collector (pysnmp) vs C", unit, s["pysnmp"], s["snmpbulkwalk"],
            "Net-SNMP snmpbulkwalk, same walk", "-", False, "engine: pysnmp"),
        Row("SNMP walk, collector (gufo) vs bare gufo", unit, s["gufo"], s["bare gufo"],
            "bare gufo_snmp getbulk, same walk", "-", False, "what the source adds"),
        Row("SNMP walk, collector (pysnmp) vs bare pysnmp", unit, s["pysnmp"],
            s["bare pysnmp"], "bare pysnmp bulk_walk_cmd, same walk", "-", False,
            "what the source adds"),
    ]


# ----- scale ---------------------------------------------------------------------------

SCALARS = [f"1.3.6.1.2.1.11.{n}.0" for n in (*range(1, 7), *range(8, 22))]
"""20 Counter32 of SNMPv2-MIB's snmp group: served by snmpd itself, the cheapest agent."""
UPTIME = "1.3.6.1.2.1.1.3.0"
AGENTS, PORTS = 8, 128
REAL_INTERVAL = 60.0
SCALE_N = 500


def poll_source(hosts: list[str], interval: float) -> tuple[SnmpSource, Buffer, Telemetry]:
    metrics = [f"custom:bench.snmp{n}" for n in range(len(SCALARS))]
    scalars = "".join(f"      - {{metric: {m}, oid: {oid}, transform: rate}}\n"
                      for m, oid in zip(metrics, SCALARS, strict=True))
    body = f"    interval: {interval}s\n    scalars:\n{scalars}"
    buffer = buffer_for(metrics, 10_000_000, frozenset())
    telemetry = Telemetry()
    # Skipped polls are counted; their warnings (one per target) would flood the output.
    logging.getLogger("bench.scale").setLevel(logging.ERROR)
    source = SnmpSource(source_config(hosts, "gufo", body, metrics, "[]"),
                        SourceContext(buffer, telemetry, get_logger("bench.scale")))
    return source, buffer, telemetry


async def collector_polls(hosts: list[str], interval: float,
                          window: float) -> tuple[float, float, float]:
    """Run the source: (CPU seconds per poll, CPU share of the window, polls skipped)."""
    source, buffer, telemetry = poll_source(hosts, interval)

    def total(name: str) -> float:
        family = telemetry.families.get(name)
        return family.total() if family is not None else 0.0

    task = asyncio.create_task(source.run())
    try:
        await asyncio.sleep(interval * 1.5)  # every target polled, counters have a baseline
        polls, skipped, cpu, wall = (total("polls"), total("polls_skipped"),
                                     time.process_time(), time.perf_counter())
        await asyncio.sleep(window)
        polls = total("polls") - polls
        skipped = total("polls_skipped") - skipped
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert total("polls_failed") == 0 and buffer.buffered > 0, buffer.invalid_causes
    return cpu / polls, cpu / wall, skipped


async def bare_polls(hosts: list[str], rounds: int = 10) -> float:
    """CPU seconds per poll: gufo_snmp GETs of the same OIDs, 64 at a time, nothing else."""
    sessions = [SnmpSession(host, int(port), community=COMMUNITY, timeout=5)
                for host, port in (h.split(":") for h in hosts)]
    oids = [UPTIME, *SCALARS]
    gate = asyncio.Semaphore(64)

    async def poll(session: SnmpSession) -> None:
        async with gate:
            assert len(await session.get_many(oids)) == len(oids)

    await asyncio.gather(*(poll(s) for s in sessions))  # warm-up
    cpu = time.process_time()
    for _ in range(rounds):
        await asyncio.gather(*(poll(s) for s in sessions))
    return (time.process_time() - cpu) / (rounds * len(sessions))


def snmp_scale() -> list[Row]:
    with running_agents(AGENTS, ports=PORTS, builtin=True) as agents:
        hosts = [host for agent in agents for host in agent.hosts]
        # Time runs 10x faster: 500 targets every 6 s load the collector as 5,000 every 60 s
        # would, so the share at N = 500 is a tenth of what this run uses.
        per_poll, _, skipped = asyncio.run(
            collector_polls(hosts[:SCALE_N], REAL_INTERVAL / 10, 12.0))
        bare = asyncio.run(bare_polls(hosts[:SCALE_N]))
        largest, checks = asyncio.run(largest_n(hosts, REAL_INTERVAL / per_poll))
    assert skipped == 0
    share_500 = per_poll * SCALE_N / REAL_INTERVAL
    return [
        Row("SNMP poll, CPU share at N=500 (60 s)", "% of one core", 100 * share_500,
            100 * bare * SCALE_N / REAL_INTERVAL, "bare gufo_snmp GETs, same agents", "-",
            False, f"{SCALE_N} targets x {len(SCALARS)} Counter32 (rate); time 10x "
            "compressed (6 s interval)"),
        Row("SNMP poll, largest N per core (60 s)", "agents", largest, REAL_INTERVAL / bare,
            "bare gufo_snmp GETs: 60 s / CPU per GET", "-", True, "; ".join(checks)),
    ]


async def largest_n(hosts: list[str], estimate: float) -> tuple[float, list[str]]:
    """The most agents per minute one core polls with no poll skipped.

    All targets poll at the interval that gives that load (time compressed: a shorter
    deadline than 60 s, so stricter); each step aims at 90% of a core from the CPU the
    previous step used, and the largest load without a skipped poll wins.
    """
    largest, notes = 0.0, []
    for _ in range(3):
        interval = REAL_INTERVAL * len(hosts) / estimate
        _, share, skipped = await collector_polls(hosts, interval, max(6.0, 4 * interval))
        notes.append(f"{estimate:,.0f}/min: {share:.0%} CPU, {skipped:.0f} skipped")
        if not skipped and share < 0.97:
            largest = max(largest, estimate)
        aim = estimate * 0.9 / share
        if skipped or share > 0.97:
            aim = min(aim, 0.85 * estimate)
        elif aim < 1.05 * estimate:  # as close to 90% as one step gets
            break
        estimate = aim
    return largest, notes
