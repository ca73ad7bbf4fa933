"""The daemon: wires sources -> buffer -> flush -> Dynatrace client, and runs their lifecycle.

Start: declare configured devices, register metrics, start sources, flush on a timer.
Stop (SIGTERM/SIGINT): stop sources first (upstream), then one final flush bounded by
`buffer.shutdown_timeout`, then report what could not be delivered.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from collector.backoff import Backoff
from collector.buffer import Buffer
from collector.catalog import Catalog
from collector.config.model import Config
from collector.dynatrace import DynatraceClient
from collector.flush import Flusher
from collector.logs import get_logger
from collector.registration import register_metrics
from collector.sources import Source, SourceContext, create_source
from collector.telemetry import Telemetry

log = get_logger("collector.daemon")


class Daemon:
    def __init__(self, config: Config, *, dry_run: bool = False, out: TextIO | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.dry_run = dry_run
        self.out = out
        self.clock = clock
        self.telemetry = Telemetry()
        self.catalog = Catalog()
        self.buffer = Buffer(self.catalog, max_points=config.buffer.max_points,
                             max_age=config.buffer.max_age,
                             max_clock_skew=config.buffer.max_clock_skew, clock=clock)
        self.flusher: Flusher | None = None
        self.sources: dict[str, asyncio.Task[None]] = {}
        self.registered = asyncio.Event()
        self._stop = asyncio.Event()
        self._observe_accounting()

    def stop(self) -> None:
        self._stop.set()

    async def flush_now(self) -> None:
        assert self.flusher is not None, "the daemon is not running"
        await self.flusher.flush()

    async def run(self, *, handle_signals: bool = False) -> None:
        """Run until `stop()` (or SIGTERM/SIGINT when `handle_signals`)."""
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        dt = self.config.dynatrace
        token = None if self.dry_run else dt.api_token()
        async with DynatraceClient(dt, token, dry_run=self.dry_run, out=self.out) as client:
            self.flusher = Flusher(self.buffer, client, self.config.buffer,
                                   max_request_bytes=dt.max_request_bytes,
                                   max_concurrency=dt.max_concurrency,
                                   telemetry=self.telemetry, clock=self.clock)
            for device_id, device in self.config.devices.items():
                self.buffer.declare_device(device.to_device(device_id))
            log.info("starting", url=dt.url, metrics=len(self.config.all_metrics()),
                     sources=len(self.config.sources), dry_run=self.dry_run)
            if await self._until_stopped(register_metrics(
                    client, self.config.all_metrics(), self.catalog, self.telemetry,
                    clock=self.clock)):
                self.registered.set()
                self._start_sources()
                flushing = asyncio.create_task(self.flusher.run(), name="flush")
                await self._stop.wait()
                await self._stop_sources()
                flushing.cancel()
                await asyncio.gather(flushing, return_exceptions=True)
            await self._final_flush()

    async def _until_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Await `work` unless stop() comes first; True if it finished."""
        task = asyncio.create_task(work)
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        task.result()
        return True

    def _start_sources(self) -> None:
        for source_config in self.config.sources:
            ctx = SourceContext(sink=self.buffer, telemetry=self.telemetry,
                                log=get_logger(f"collector.sources.{source_config.type}"),
                                clock=self.clock)
            source = create_source(source_config, ctx)
            self.sources[source.name] = asyncio.create_task(
                self._supervise(source), name=f"source:{source.name}")

    async def _supervise(self, source: Source) -> None:
        """Run a source; a bug in it is logged and the source restarted, never fatal."""
        backoff = Backoff(initial=1.0, cap=60.0)
        while True:
            started = time.monotonic()
            try:
                await source.run()
                return
            except Exception:
                if time.monotonic() - started > 60:
                    backoff.reset()
                delay = backoff.next_delay()
                log.exception("source failed; restarting", source=source.name,
                              retry_in_s=round(delay, 1))
                await asyncio.sleep(delay)

    async def _stop_sources(self) -> None:
        tasks = list(self.sources.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.sources.clear()

    async def _final_flush(self) -> None:
        if self.flusher is None or not (self.buffer.buffered or self.buffer.in_flight):
            log.info("stopped", delivered=self.buffer.delivered)
            return
        timeout = self.config.buffer.shutdown_timeout
        try:
            async with asyncio.timeout(timeout):
                await self.flusher.flush(final=True)
        except TimeoutError:
            log.warning("final flush did not finish in time", timeout_s=timeout)
        left = {d: n for d, n in self.buffer.buffered_by_device().items() if n}
        if left:
            log.error("points not delivered before shutdown", points=sum(left.values()),
                      by_device=left)
        log.info("stopped", delivered=self.buffer.delivered, undelivered=sum(left.values()))

    def _observe_accounting(self) -> None:
        """Expose the buffer's accounting: received = delivered + dropped + buffered."""
        b, t = self.buffer, self.telemetry
        t.observe("points_received", "Readings handed to the buffer", "counter",
                  lambda: {(): float(b.received)})
        t.observe("points_delivered", "Data points Dynatrace accepted", "counter",
                  lambda: {(): float(b.delivered)})
        t.observe("points_dropped", "Data points dropped, by reason", "counter",
                  lambda: {(r,): float(n) for r, n in b.dropped.items()}, ("reason",))
        t.observe("points_invalid", "Invalid readings, by cause", "counter",
                  lambda: {(c,): float(n) for c, n in b.invalid_causes.items()}, ("cause",))
        t.observe("points_buffered", "Data points waiting in the buffer (incl. in flight)",
                  "gauge", lambda: {(): float(b.buffered + b.in_flight)})
