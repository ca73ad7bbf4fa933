"""The SNMP source: polls each target (one custom device) on its own timer, emits readings.

A poll is one GET (sysUpTime, for the agent's own timing, plus the scalars) and one walk per
table. Values become readings through the transforms; rows become series dimensioned by
other columns of the row or by its index. Failures are counted by reason and logged when a
target changes state (failing, recovered), never on every poll.
"""

from __future__ import annotations

import re
import time
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Literal, NamedTuple

from collector.config.snmp import (
    INDEX,
    EngineName,
    SnmpSourceConfig,
    SnmpTable,
    SnmpTarget,
    parse_oid,
)
from collector.logs import StateLog
from collector.model import Device, Dimensions, Reading, dims
from collector.sources import SourceContext
from collector.sources.schedule import PollJob, PollScheduler
from collector.sources.snmp.engine import (
    Agent,
    AgentError,
    Column,
    Engine,
    Kind,
    Oid,
    SnmpError,
    UsmUser,
    Varbind,
)
from collector.sources.snmp.transforms import (
    AgentClock,
    CounterState,
    counter_bits,
    read_number,
    read_text,
)
from collector.telemetry import Family

SYS_UPTIME: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)  # SNMPv2-MIB::sysUpTime.0
_TICKS = {Kind.TIMETICKS, Kind.NUMBER}  # NUMBER: from an engine that reports no types
_NOT_IN_ROW = Varbind((), Kind.NO_SUCH_INSTANCE, None)
"""What a column gives for a row it has no value in."""
TransformName = Literal["gauge", "delta", "rate"]


@dataclass(frozen=True)
class _Metric:
    metric: str
    oid: Oid
    transform: TransformName
    scale: float
    divide_by: Oid | None = None


@dataclass(frozen=True)
class _Table:
    """A table entry resolved to OID tuples; `None` stands for the row index."""

    columns: tuple[Oid, ...]
    dimensions: dict[str, Oid | None]
    include: list[tuple[Oid | None, re.Pattern[str]]]
    exclude: list[tuple[Oid | None, re.Pattern[str]]]
    metrics: list[_Metric]

    @classmethod
    def plan(cls, table: SnmpTable) -> _Table:
        def source(text: str) -> Oid | None:
            return None if text == INDEX else parse_oid(text)

        def filters(patterns: dict[str, str]) -> list[tuple[Oid | None, re.Pattern[str]]]:
            return [(source(table.filter_column(k)), re.compile(p)) for k, p in patterns.items()]

        metrics = [_Metric(m.metric, parse_oid(m.oid), m.transform, m.scale,
                           parse_oid(m.divide_by) if m.divide_by else None)
                   for m in table.metrics]
        dimensions = {key: source(text) for key, text in table.dimensions.items()}
        include, exclude = filters(table.include), filters(table.exclude)
        wanted = [*(m.oid for m in metrics), *(m.divide_by for m in metrics),
                  *dimensions.values(), *(oid for oid, _ in include + exclude)]
        columns = tuple(dict.fromkeys(oid for oid in wanted if oid is not None))
        return cls(columns, dimensions, include, exclude, metrics)


class _When(NamedTuple):
    """When a poll's values were read: agent clock seconds, its epoch, wall clock ms."""

    at: float
    epoch: int
    stamp: int


@dataclass(frozen=True)
class _Telemetry:
    errors: Family
    bad_values: Family
    resets: Family
    varbinds: Family


class SnmpSource:
    def __init__(self, config: SnmpSourceConfig, ctx: SourceContext) -> None:
        self.name = config.name
        self.config = config
        self.ctx = ctx
        labels = ("source", "target")
        t = ctx.telemetry
        self._telemetry = _Telemetry(
            errors=t.counter("snmp_errors", "Failed SNMP requests, by reason",
                             (*labels, "reason")),
            bad_values=t.counter("snmp_bad_values", "SNMP values that gave no reading, by reason",
                                 (*labels, "reason")),
            resets=t.counter("snmp_counter_resets",
                             "Counter samples skipped because the counter was reset", labels),
            varbinds=t.counter("snmp_varbinds", "SNMP variable bindings received", labels),
        )
        self.targets = [TargetPoller(config, target, ctx, self._telemetry, StateLog(ctx.log))
                        for target in config.targets]

    async def run(self) -> None:
        for target in self.targets:
            self.ctx.sink.declare_device(target.device)
        scheduler = PollScheduler(self.name, self.ctx.telemetry, self.ctx.log,
                                  max_concurrency=self.config.max_concurrency)
        async with AsyncExitStack() as stack:
            engines = {name: await stack.enter_async_context(open_engine(name))
                       for name in dict.fromkeys(t.engine for t in self.targets)}
            await scheduler.run([PollJob(t.device.id, t.interval,
                                         partial(t.poll, engines[t.engine]))
                                 for t in self.targets])


def open_engine(name: EngineName) -> AbstractAsyncContextManager[Engine]:
    """The event loop's shared engine of that name; its library is imported on first use."""
    if name == "gufo":
        from collector.sources.snmp.gufo_engine import gufo_engine

        return gufo_engine()
    from collector.sources.snmp.pysnmp_engine import pysnmp_engine

    return pysnmp_engine()


def _agent(config: SnmpSourceConfig, target: SnmpTarget) -> Agent:
    host, port = target.address
    version = config.target_version(target)
    v3 = config.target_v3(target)
    user = None
    if version == "v3" and v3 is not None:
        user = UsmUser(v3.user, v3.auth_protocol, v3.auth_secret(), v3.priv_protocol,
                       v3.priv_secret(), v3.context)
    return Agent(host, port, version,
                 community=config.target_community(target) if version != "v3" else None,
                 user=user,
                 timeout=target.timeout or config.timeout,
                 retries=config.retries if target.retries is None else target.retries)


class TargetPoller:
    """Everything about polling one target: its plan, its counters' state, its log state."""

    def __init__(self, config: SnmpSourceConfig, target: SnmpTarget, ctx: SourceContext,
                 telemetry: _Telemetry, states: StateLog) -> None:
        self.device: Device = config.target_device(target)
        self.agent = _agent(config, target)
        self.engine = config.target_engine(target)
        self.interval = target.interval or config.interval
        self._max_repetitions = config.max_repetitions
        self._scalars = [_Metric(s.metric, parse_oid(s.oid), s.transform, s.scale)
                         for s in config.target_scalars(target)]
        self._tables = [_Table.plan(t) for t in config.target_tables(target)]
        self._get_oids = [SYS_UPTIME, *(s.oid for s in self._scalars)]
        self._ctx = ctx
        self._states = states
        self._clock = AgentClock()
        self._counters = CounterState()
        self._reported_bad: set[tuple[str, str]] = set()
        label = (config.name, self.device.id)
        self._errors = partial(telemetry.errors.labels, *label)
        self._bad_values = partial(telemetry.bad_values.labels, *label)
        self._resets = telemetry.resets.labels(*label)
        self._varbinds = telemetry.varbinds.labels(*label)

    async def poll(self, engine: Engine) -> bool:
        try:
            scalars = await engine.get(self.agent, self._get_oids)
        except SnmpError as exc:
            return self._failed(exc)
        uptime = scalars[0]
        ticks = uptime.value if uptime.kind in _TICKS else None
        at, epoch = self._clock.update(ticks if isinstance(ticks, int) else None,
                                       time.monotonic())
        resets = self._counters.resets
        when = _When(at, epoch, self._now_ms())
        for metric, varbind in zip(self._scalars, scalars[1:], strict=True):
            self._emit(metric, (), varbind, None, when)
        self._varbinds.inc(len(scalars))
        ok = True
        for table in self._tables:
            try:
                found = await engine.walk(self.agent, table.columns, self._max_repetitions)
            except AgentError as exc:  # the agent is there; other tables may still work
                ok = self._failed(exc)
                continue
            except SnmpError as exc:
                return self._failed(exc)
            self._varbinds.inc(sum(map(len, found.values())))
            self._emit_table(table, found, when._replace(stamp=self._now_ms()))
        self._resets.inc(self._counters.resets - resets)
        if ok:
            self._counters.forget_unseen()
            self._states.ok(self.device.id, "SNMP target recovered", target=self.device.id,
                            host=self.agent.address)
        return ok

    def _failed(self, exc: SnmpError) -> bool:
        self._errors(exc.reason).inc()
        self._states.failed(self.device.id, "SNMP target failing", target=self.device.id,
                            host=self.agent.address, reason=exc.reason, error=str(exc))
        return False

    def _emit_table(self, table: _Table, found: dict[Oid, Column], when: _When) -> None:
        # What each metric reads, looked up once per poll rather than once per row.
        reads = [(metric, found[metric.oid], None if metric.divide_by is None
                  else found[metric.divide_by]) for metric in table.metrics]
        # The rows in the agent's order: every index of every column, once.
        for index in dict.fromkeys(chain.from_iterable(found.values())):
            if not all((v := _row_value(found, index, s)) is not None and p.fullmatch(v)
                       for s, p in table.include):
                continue
            if any((v := _row_value(found, index, s)) is not None and p.fullmatch(v)
                   for s, p in table.exclude):
                continue
            labels = {key: _row_value(found, index, s) for key, s in table.dimensions.items()}
            known = {key: v for key, v in labels.items() if v is not None}
            if len(known) < len(labels):
                for metric in table.metrics:
                    self._bad(metric.metric, "missing_dimension")
                continue
            dimensions = dims(known)
            for metric, column, divisors in reads:
                divisor = None if divisors is None else divisors.get(index, _NOT_IN_ROW)
                self._emit(metric, dimensions, column.get(index, _NOT_IN_ROW), divisor, when)

    def _emit(self, metric: _Metric, dimensions: Dimensions, varbind: Varbind,
              divisor: Varbind | None, when: _When) -> None:
        value, reason = read_number(varbind)
        if value is not None and divisor is not None:
            denominator, reason = read_number(divisor)
            if denominator == 0:
                reason = "zero_divisor"
            value = value / denominator if denominator else None
        if value is None:
            self._bad(metric.metric, reason or "not_a_number")
            return
        if metric.transform == "gauge":  # the common case; a gauge keeps no state
            out: float | None = value * metric.scale
        else:
            out = self._counters.apply((metric.metric, dimensions), metric.transform, value,
                                       bits=counter_bits(varbind.kind), at=when.at,
                                       epoch=when.epoch, scale=metric.scale)
        if out is not None:
            self._ctx.sink.emit(Reading(self.device.id, metric.metric, dimensions, when.stamp,
                                        out))

    def _bad(self, metric: str, reason: str) -> None:
        self._bad_values(reason).inc()
        if (metric, reason) not in self._reported_bad:  # once per metric and reason
            self._reported_bad.add((metric, reason))
            self._ctx.log.warning("SNMP value gave no reading", target=self.device.id,
                                  metric=metric, reason=reason)

    def _now_ms(self) -> int:
        return int(self._ctx.clock() * 1000)


def _row_value(found: dict[Oid, Column], index: Oid, source: Oid | None) -> str | None:
    """A dimension or filter value of a row: a column's text, or the index (`None`)."""
    if source is None:
        return ".".join(map(str, index))
    varbind = found[source].get(index)
    return None if varbind is None else read_text(varbind)
