"""The daemon: wires sources -> buffer -> flush -> Dynatrace client, and runs their lifecycle.

Start: declare configured devices, register metrics, start sources, flush on a timer,
tell systemd READY. SIGHUP: re-read the config and apply it without losing buffered
points (or keep the old one if the new one is invalid). SIGTERM/SIGINT: stop sources
first (upstream), then one final flush bounded by `buffer.shutdown_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from collector.backoff import Backoff
from collector.buffer import Buffer
from collector.catalog import Catalog
from collector.config import ConfigError, load_config
from collector.config.model import Config, SourceConfig
from collector.dynatrace import DynatraceClient
from collector.flush import Flusher
from collector.health import HealthServer
from collector.logs import get_logger
from collector.registration import register_metrics
from collector.sources import CountedSink, Source, SourceContext, create_source
from collector.sources.selfmon import SelfMonitor
from collector.spool import Recovered, Spool
from collector.systemd import Notifier, watchdog_loop
from collector.telemetry import Telemetry

log = get_logger("collector.daemon")


class Daemon:
    def __init__(self, config: Config, *, config_path: str | Path | None = None,
                 dry_run: bool = False, out: TextIO | None = None,
                 clock: Callable[[], float] = time.time,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.dry_run = dry_run
        self.out = out
        self.clock = clock
        self.notifier = notifier or Notifier.from_environ()
        self.telemetry = Telemetry()
        self.catalog = Catalog()
        self.buffer = Buffer(self.catalog, max_points=config.buffer.max_points,
                             max_age=config.buffer.max_age,
                             max_clock_skew=config.buffer.max_clock_skew, clock=clock)
        self.client: DynatraceClient | None = None
        self.flusher: Flusher | None = None
        self.sources: dict[str, tuple[SourceConfig | None, asyncio.Task[None]]] = {}
        self.spool: Spool | None = None
        self.registered = asyncio.Event()
        self._stop = asyncio.Event()
        self._reloads = 0
        self._observe_accounting()

    # ----- control ----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def flush_now(self) -> None:
        assert self.flusher is not None, "the daemon is not running"
        await self.flusher.flush()

    async def run(self, *, handle_signals: bool = False) -> None:
        """Run until `stop()` (or SIGTERM/SIGINT when `handle_signals`; SIGHUP reloads)."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.client = self._new_client(self.config)
        await self.client.__aenter__()
        dt = self.config.dynatrace
        self.flusher = Flusher(self.buffer, self.client, self.config.buffer,
                               max_request_bytes=dt.max_request_bytes,
                               max_concurrency=dt.max_concurrency,
                               telemetry=self.telemetry, clock=self.clock)
        self.flusher.on_flush = self._update_status
        health = HealthServer(self.config.health.listen, self)
        background: list[asyncio.Task[None]] = []
        try:
            await self._start_health(health)
            self._declare_devices(self.config)
            recovered = await self._open_spool()
            log.info("starting", url=dt.url, metrics=len(self.config.all_metrics()),
                     sources=len(self.config.sources), dry_run=self.dry_run)
            if await self._until_stopped(self._register(self.config)):
                self.registered.set()
                await self._restore(recovered)
                await self._sync_sources(self.config)
                background = [asyncio.create_task(self.flusher.run(), name="flush"),
                              asyncio.create_task(watchdog_loop(self.notifier), name="watchdog")]
                if self.spool is not None:
                    background.append(asyncio.create_task(self._spool_loop(), name="spool"))
                self.notifier.ready()
                self._update_status()
                await self._stop.wait()
            self.notifier.stopping()
            log.info("stopping")
            await self._stop_sources(list(self.sources))
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._final_flush()
            if self.spool is not None and self.registered.is_set():
                await self._sync_spool()  # what is still undelivered survives the restart
        finally:
            await health.stop()
            await self.client.close()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

    # ----- reload -----------------------------------------------------------------------

    def request_reload(self) -> None:
        if self.registered.is_set():
            asyncio.get_running_loop().create_task(self.reload(), name="reload")
        else:
            log.warning("reload ignored: still starting")

    async def reload(self, new: Config | None = None) -> bool:
        """Apply a new config (read from `config_path` unless given); False if rejected."""
        self.notifier.reloading()
        try:
            if new is None:
                if self.config_path is None:
                    log.error("reload: no config file to read")
                    return False
                try:
                    new = await asyncio.to_thread(load_config, self.config_path)
                except ConfigError as exc:
                    log.error("reload rejected; the running config stays",
                              errors=[str(i) for i in exc.issues])
                    return False
            await self._apply(new)
            self._reloads += 1
            log.info("config reloaded", reloads=self._reloads)
            return True
        finally:
            self.notifier.ready()
            self._update_status()

    async def _apply(self, new: Config) -> None:
        old = self.config
        assert self.flusher is not None and self.client is not None
        if new.dynatrace != old.dynatrace:
            client = self._new_client(new)
            await client.__aenter__()
            async with self.flusher.lock:  # not while a flush is using the old one
                old_client, self.client, self.flusher.client = self.client, client, client
            await old_client.close()
        self.flusher.reconfigure(new.buffer, new.dynatrace.max_request_bytes,
                                 new.dynatrace.max_concurrency)
        self.buffer.max_points = new.buffer.max_points
        self.buffer.max_age_ms = int(new.buffer.max_age * 1000)
        self.buffer.max_skew_ms = int(new.buffer.max_clock_skew * 1000)
        for device_id in old.devices.keys() - new.devices.keys():
            self.catalog.remove_device(device_id)
        self._declare_devices(new)
        old_metrics, new_metrics = old.all_metrics(), new.all_metrics()
        for metric_id in old_metrics.keys() - new_metrics.keys():
            self.catalog.remove_metric(metric_id)
        changed = {m: c for m, c in new_metrics.items() if old_metrics.get(m) != c}
        self.config = new
        await self._register_metrics(changed)  # new metrics are registered before use
        await self._sync_sources(new)

    # ----- spool ------------------------------------------------------------------------

    async def _open_spool(self) -> Recovered | None:
        settings = self.config.buffer.spool
        if settings is None or self.dry_run:
            return None
        spool = Spool(settings.path, settings.sync_interval)
        try:
            recovered = await asyncio.to_thread(spool.open)
        except OSError as exc:
            log.error("spool cannot be opened; buffering in memory only",
                      path=str(settings.path), error=exc.strerror or str(exc))
            return None
        self.spool = spool
        self.buffer.journal = spool
        return recovered

    async def _restore(self, recovered: Recovered | None) -> None:
        if self.spool is None or recovered is None:
            return
        b = self.buffer
        before = (b.buffered, b.dropped["expired"], b.dropped["invalid"])
        b.restore(recovered.devices, recovered.points)
        log.info("spool restored", path=str(self.spool.directory), points=recovered.count,
                 buffered=b.buffered - before[0], expired=b.dropped["expired"] - before[1],
                 invalid=b.dropped["invalid"] - before[2],
                 set_aside=[str(p) for p in recovered.set_aside])
        self.telemetry.counter("spool_set_aside_files", "Corrupt spool files renamed at start"
                               ).inc(len(recovered.set_aside))
        await self._sync_spool(snapshot=True)

    async def _spool_loop(self) -> None:
        assert self.spool is not None
        while True:
            await asyncio.sleep(self.spool.sync_interval)
            await self._sync_spool()

    async def _sync_spool(self, snapshot: bool = False) -> None:
        spool = self.spool
        assert spool is not None
        live = self.buffer.buffered + self.buffer.in_flight
        if snapshot or spool.wants_compaction(live):
            self.buffer.journal_caught_up()  # the snapshot holds every point
            await spool.sync(self.buffer.snapshot(), dict(self.catalog.devices))
        else:
            self.buffer.journal_additions()
            await spool.sync()

    # ----- parts ------------------------------------------------------------------------

    def _new_client(self, config: Config) -> DynatraceClient:
        token = None if self.dry_run else config.dynatrace.api_token()
        return DynatraceClient(config.dynatrace, token, dry_run=self.dry_run, out=self.out)

    async def _register(self, config: Config) -> None:
        await self._register_metrics(config.all_metrics())

    async def _register_metrics(self, metrics: dict[str, Any]) -> None:
        assert self.client is not None
        if metrics:
            await register_metrics(self.client, metrics, self.catalog, self.telemetry,
                                   clock=self.clock)

    def _declare_devices(self, config: Config) -> None:
        for device_id, device in config.devices.items():
            self.buffer.declare_device(device.to_device(device_id), configured=True)

    async def _start_health(self, health: HealthServer) -> None:
        try:
            await health.start()
        except OSError as exc:
            # Collecting matters more than the health endpoint: say so loudly, carry on.
            log.error("health endpoint could not listen; running without it",
                      listen=self.config.health.listen, error=exc.strerror or str(exc))

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

    async def _sync_sources(self, config: Config) -> None:
        """Stop sources removed or changed, then start those new or changed."""
        wanted: dict[str, SourceConfig | None] = {s.name: s for s in config.sources}
        if config.self_monitoring.enabled:
            wanted["self-monitoring"] = None
        await self._stop_sources([name for name, (cfg, _) in self.sources.items()
                                  if name not in wanted or wanted[name] != cfg])
        for name, source_config in wanted.items():
            if name in self.sources:
                continue
            ctx = SourceContext(sink=CountedSink(self.buffer, self.telemetry, name),
                                telemetry=self.telemetry,
                                log=get_logger(f"collector.sources.{name}"), clock=self.clock)
            source: Source = (create_source(source_config, ctx) if source_config is not None
                              else SelfMonitor(config.self_monitoring, ctx))
            task = asyncio.create_task(self._supervise(source), name=f"source:{name}")
            self.sources[name] = (source_config, task)

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

    async def _stop_sources(self, names: list[str]) -> None:
        tasks = [self.sources.pop(name)[1] for name in names]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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

    # ----- what the health endpoint and systemd see -------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self.registered.is_set():
            return False, "metrics not registered yet"
        assert self.flusher is not None
        if self.flusher.last_ok:
            return True, "ok"
        oldest = self.buffer.oldest_ms()
        if oldest is None:
            return True, "ok (nothing buffered)"
        age = self.clock() - oldest / 1000
        if age < self.config.buffer.max_age / 2:
            return True, f"ok (last flush: {self.flusher.last_result})"
        return False, f"oldest buffered point is {age:.0f}s old; {self.flusher.last_result}"

    def status(self) -> dict[str, Any]:
        flusher = self.flusher
        buffered = self.buffer.buffered_by_device()
        devices = {}
        for device_id in sorted(set(self.catalog.devices) | set(buffered)):
            state = flusher.devices.get(device_id) if flusher else None
            devices[device_id] = {
                "points_buffered": buffered.get(device_id, 0),
                "last_push": state.last_push if state else None,
                "entity_id": state.entity_id if state else None,
                "last_error": state.last_error if state else None,
            }
        b = self.buffer
        return {
            "ready": self.readiness()[0],
            "points": {"received": b.received, "delivered": b.delivered,
                       "buffered": b.buffered + b.in_flight, "dropped": dict(b.dropped)},
            "last_flush": flusher.last_result if flusher else None,
            "reloads": self._reloads,
            "sources": sorted(self.sources),
            "devices": devices,
        }

    def _update_status(self) -> None:
        if not self.notifier.enabled:
            return
        b, flusher = self.buffer, self.flusher
        last = flusher.last_result if flusher else "no flush yet"
        with contextlib.suppress(Exception):
            self.notifier.status(f"{len(self.catalog.devices)} devices, "
                                 f"{b.buffered + b.in_flight} points buffered, last flush: {last}")

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
        t.observe("spool_write_errors", "Spool writes that failed (disk full, unwritable)",
                  "counter", lambda: {(): float(self.spool.write_errors if self.spool else 0)})
        t.observe("spool_bytes_written", "Bytes written to the spool", "counter",
                  lambda: {(): float(self.spool.bytes_written if self.spool else 0)})
