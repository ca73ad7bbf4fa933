"""The flush: every interval, each device's buffered points go to Dynatrace.

Per device, all its series go in one POST, split into several when the JSON body would
exceed `max_request_bytes` (and split further on 413). Devices are pushed concurrently,
bounded by `max_concurrency`. What each answer means for the points is decided by
`collector.dynatrace.classify`; this module only acts on it: accept, reject or keep.
A failure that concerns the whole endpoint (throttling, outage, bad token) stops the rest
of the flush and holds later flushes until its backoff or Retry-After has passed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from collector.backoff import Backoff
from collector.buffer import Buffer, DeviceBatch, Piece
from collector.config.model import BufferConfig
from collector.dynatrace import DEFAULT_RETRY_AFTER, Answer, DynatraceClient, Outcome
from collector.logs import StateLog, get_logger
from collector.model import Device
from collector.telemetry import Telemetry

log = get_logger("collector.flush")


def device_metadata(device: Device) -> dict[str, Any]:
    """The CustomDevicePushMessage fields describing a device (empty ones left out)."""
    meta: dict[str, Any] = {"type": device.type}
    optional: dict[str, Any] = {
        "displayName": device.display_name,
        "group": device.group,
        "hostNames": list(device.host_names),
        "ipAddresses": list(device.ip_addresses),
        "listenPorts": list(device.listen_ports),
        "tags": list(device.tags),
        "properties": dict(device.properties),
        "configUrl": device.config_url,
        "favicon": device.favicon,
    }
    meta.update({k: v for k, v in optional.items() if v})
    return meta


@dataclass(slots=True)
class Body:
    """One request body and the pieces it carries, in the order of its `series`."""

    data: bytes
    pieces: list[Piece]
    with_metadata: bool


class BodyEncoder:
    """Packs a device's pieces into JSON bodies of at most `max_bytes` each."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    @staticmethod
    def encode_series(piece: Piece) -> bytes:
        entry: dict[str, Any] = {"timeseriesId": piece.series.metric}
        if piece.series.dimensions:
            entry["dimensions"] = dict(piece.series.dimensions)
        entry["dataPoints"] = list(zip(piece.timestamps, piece.values, strict=True))
        return orjson.dumps(entry)

    def bodies(self, device: Device, pieces: list[Piece], with_metadata: bool) -> list[Body]:
        head_meta = orjson.dumps(device_metadata(device))[:-1] + b',"series":['
        head_plain = b'{"series":['
        bodies: list[Body] = []
        parts: list[bytes] = []
        carried: list[Piece] = []
        head = head_meta if with_metadata else head_plain
        size = len(head) + 2

        def close() -> None:
            nonlocal head, size, parts, carried
            bodies.append(Body(head + b",".join(parts) + b"]}", carried, head is head_meta))
            head, parts, carried = head_plain, [], []
            size = len(head) + 2

        for encoded, piece in self._fitting(pieces, self.max_bytes - len(head_meta) - 2):
            extra = len(encoded) + (1 if parts else 0)
            if parts and size + extra > self.max_bytes:
                close()
                extra = len(encoded)
            parts.append(encoded)
            carried.append(piece)
            size += extra
        if parts:
            close()
        return bodies

    def _fitting(self, pieces: list[Piece], budget: int) -> list[tuple[bytes, Piece]]:
        """Each piece encoded; pieces too big for one body are split by their points."""
        out: list[tuple[bytes, Piece]] = []
        todo = deque(pieces)
        while todo:
            piece = todo.popleft()
            encoded = self.encode_series(piece)
            if len(encoded) <= budget or len(piece) <= 1:
                out.append((encoded, piece))
            else:
                todo.extendleft(reversed(piece.split()))
        return out

    def split(self, body: Body, device: Device) -> list[Body] | None:
        """Two smaller bodies for a 413, or None when one point is all there is."""
        if len(body.pieces) > 1:
            mid = len(body.pieces) // 2
            halves = [body.pieces[:mid], body.pieces[mid:]]
        elif len(body.pieces[0]) > 1:
            halves = [[p] for p in body.pieces[0].split()]
        else:
            return None
        first = self.bodies(device, halves[0], body.with_metadata)
        return first + self.bodies(device, halves[1], False)


@dataclass
class DeviceState:
    """What the flush remembers of a device between pushes."""

    sent_version: int = 0
    entity_id: str | None = None
    group_id: str | None = None
    last_push: float | None = None
    last_error: str | None = None


class Flusher:
    def __init__(
        self,
        buffer: Buffer,
        client: DynatraceClient,
        config: BufferConfig,
        *,
        max_request_bytes: int,
        max_concurrency: int,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.buffer = buffer
        self.client = client
        self.config = config
        self.encoder = BodyEncoder(max_request_bytes)
        self.max_concurrency = max_concurrency
        self.clock = clock
        self.devices: dict[str, DeviceState] = {}
        self.backoff = Backoff(initial=config.flush_interval, cap=max(300.0, config.flush_interval))
        self.retry_at = 0.0  # monotonic time before which no flush is attempted
        self.last_result = "no flush yet"
        self.last_ok = False
        self.last_success: float | None = None
        self.on_flush: Callable[[], None] | None = None  # e.g. to update systemd STATUS=
        self._halt: Answer | None = None
        self.lock = asyncio.Lock()
        self._state = StateLog(log)
        self._seen_violations: set[str] = set()
        self._requests = telemetry.counter(
            "dynatrace_requests", "Requests to Dynatrace by endpoint and HTTP status "
            "(or error kind)", ("endpoint", "status"))
        self._flushes = telemetry.counter("flushes", "Flushes by result", ("result",))
        self._duration = telemetry.gauge("flush_duration_seconds", "Duration of the last flush")

    def reconfigure(self, config: BufferConfig, max_request_bytes: int,
                    max_concurrency: int) -> None:
        self.config = config
        self.encoder = BodyEncoder(max_request_bytes)
        self.max_concurrency = max_concurrency

    async def run(self) -> None:
        """Flush every interval (plus jitter) until cancelled; never two at once."""
        next_at = time.monotonic() + self.config.flush_interval
        while True:
            jitter = random.uniform(0, self.config.flush_jitter) if self.config.flush_jitter else 0
            await asyncio.sleep(max(0.0, next_at - time.monotonic()) + jitter)
            try:
                await self.flush()
            except Exception:  # a bug must not end flushing for good: log it, go on
                log.exception("flush failed unexpectedly; the next one will try again")
                self._flushes.labels("error").inc()
            next_at += self.config.flush_interval
            now = time.monotonic()
            if now > next_at:  # the flush took longer than an interval: skip, don't pile up
                skipped = int((now - next_at) // self.config.flush_interval) + 1
                self._flushes.labels("skipped").inc(skipped)
                next_at += skipped * self.config.flush_interval

    async def flush(self, *, final: bool = False) -> None:
        """One flush of every device with points (a final one ignores backoff)."""
        async with self.lock:
            started = time.monotonic()
            if not final and started < self.retry_at:
                self.buffer.expire(self.clock())
                self._flushes.labels("held").inc()
                return
            self._halt = None
            now = self.clock()
            devices = list(self.buffer.devices_with_points())
            gate = asyncio.Semaphore(self.max_concurrency)
            async with asyncio.TaskGroup() as group:
                for device_id in devices:
                    group.create_task(self._push_device(device_id, now, gate))
            self.buffer.expire(now)  # points of devices not attempted still age out
            self._finish(started, len(devices))
        if self.on_flush is not None:
            self.on_flush()

    def _finish(self, started: float, devices: int) -> None:
        self._duration.gauge().set(time.monotonic() - started)
        halt = self._halt
        self.last_ok = halt is None
        if halt is None:
            self.backoff.reset()
            self.last_success = self.clock()
            self.last_result = f"ok ({devices} devices)"
            self._flushes.labels("ok").inc()
            self._state.ok("endpoint", "Dynatrace endpoint reachable again", url=self.client.base)
            return
        if halt.outcome is Outcome.THROTTLED:
            delay = halt.retry_after if halt.retry_after is not None else DEFAULT_RETRY_AFTER
        else:
            delay = self.backoff.next_delay()
        self.retry_at = time.monotonic() + delay
        self.last_result = f"failed: {halt.detail}"
        self._flushes.labels("failed").inc()
        kind = "refused" if halt.outcome is Outcome.REFUSED else halt.outcome.value
        event = ("Dynatrace refused the request: check dynatrace.url and the token's "
                 "DataExport scope" if halt.outcome is Outcome.REFUSED
                 else "Dynatrace endpoint not accepting data; keeping points and retrying")
        self._state.failed("endpoint", event, reason=kind, detail=halt.detail,
                           url=self.client.base, retry_in_s=round(delay, 1))

    async def _push_device(self, device_id: str, now: float, gate: asyncio.Semaphore) -> None:
        async with gate:
            if self._halt is not None:
                return
            batch = self.buffer.take(device_id, now)
            if batch is None:
                return
            state = self.devices.setdefault(device_id, DeviceState())
            with_meta = batch.device_version != state.sent_version
            queue = deque(self.encoder.bodies(batch.device, batch.pieces, with_meta))
            try:
                while queue and self._halt is None:
                    body = queue[0]
                    answer = await self.client.push(device_id, body.data)
                    queue.popleft()
                    queue.extendleft(reversed(self._settle(batch, state, body, answer)))
            finally:
                for body in queue:  # not sent (halted or cancelled): back into the buffer
                    for piece in body.pieces:
                        self.buffer.keep(piece)

    def _settle(self, batch: DeviceBatch, state: DeviceState, body: Body,
                answer: Answer) -> list[Body]:
        """Act on one answer; returns bodies to send next (splits, or the rest after a 400)."""
        self._requests.labels("push", answer.status_label).inc()
        device = batch.device
        if answer.outcome is Outcome.DELIVERED:
            for piece in body.pieces:
                self.buffer.accept(piece)
            state.last_push = self.clock()
            state.last_error = None
            if body.with_metadata:
                state.sent_version = batch.device_version
            entity, group = answer.body.get("entityId"), answer.body.get("groupId")
            state.entity_id = entity if isinstance(entity, str) else state.entity_id
            state.group_id = group if isinstance(group, str) else state.group_id
            return []
        state.last_error = answer.detail
        if answer.outcome is Outcome.TOO_LARGE:
            smaller = self.encoder.split(body, device)
            if smaller is not None:
                return smaller
            log.error("one data point is too large for Dynatrace; dropped", device=device.id,
                      metric=body.pieces[0].series.metric)
            self.buffer.reject(body.pieces[0], "rejected")
            return []
        if answer.outcome is Outcome.REJECTED:
            return self._rejected(device, body, answer)
        for piece in body.pieces:
            self.buffer.keep(piece)
        self._halt = self._halt or answer
        return []

    def _rejected(self, device: Device, body: Body, answer: Answer) -> list[Body]:
        """A 400: drop what the violations name; resend the rest if they named series."""
        named = {v.series_index for v in answer.violations}
        specific = bool(named) and None not in named
        for v in answer.violations or (None,):
            index = v.series_index if v is not None else None
            metric = body.pieces[index].series.metric if index is not None and index < len(
                body.pieces) else None
            message = v.message if v is not None else answer.detail
            key = f"{device.id}|{metric}|{message}"
            if key not in self._seen_violations and len(self._seen_violations) < 10_000:
                self._seen_violations.add(key)
                log.error("Dynatrace rejected data points; they are dropped, not retried",
                          device=device.id, metric=metric, violation=message,
                          path=v.path if v is not None else None, status=answer.status)
        if not specific:
            for piece in body.pieces:
                self.buffer.reject(piece, "rejected")
            return []
        rest = []
        for i, piece in enumerate(body.pieces):
            if i in named:
                self.buffer.reject(piece, "rejected")
            else:
                rest.append(piece)
        return self.encoder.bodies(device, rest, body.with_metadata) if rest else []
