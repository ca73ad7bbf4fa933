"""The HTTP endpoint a supervisor or Prometheus asks: is the collector alive, ready, busy?

`GET /healthz`  200 while the event loop is responsive (a heartbeat task keeps beating)
`GET /readyz`   200 or 503 with the provider's one-line reason
`GET /metrics`  the telemetry registry in the Prometheus text format
`GET /status`   the provider's JSON (per device: buffered points, last push, errors)

The daemon implements `HealthProvider`; this module knows nothing about sources or
flushing. `health.listen` of "" turns the endpoint off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from aiohttp import web

from collector.logs import get_logger
from collector.telemetry import Telemetry

__all__ = ["PROMETHEUS_CONTENT_TYPE", "HealthProvider", "HealthServer", "parse_listen"]

log = get_logger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HEARTBEAT_INTERVAL = 1.0
"""Seconds between heartbeats."""

STALL_AFTER = 5.0
"""Seconds without a heartbeat after which /healthz says the loop is stuck."""


class HealthProvider(Protocol):
    """What the daemon exposes to the endpoint."""

    telemetry: Telemetry

    def readiness(self) -> tuple[bool, str]:
        """(ready, short reason) e.g. (False, "metrics not registered yet")."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-able state: per device points buffered, last push, entity id, last error."""
        ...


def parse_listen(listen: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` -> (host, port); "" -> None (off). Raises ValueError."""
    listen = listen.strip()
    if not listen:
        return None
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen address {listen!r} must be host:port, e.g. 127.0.0.1:9464")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"listen address {listen!r}: unbalanced '[' in the host")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"listen address {listen!r}: {host!r} is not an IPv6 address"
            ) from None
    elif ":" in host:
        raise ValueError(f"listen address {listen!r}: write an IPv6 host in brackets, [::1]:9464")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {listen!r}: port {port_text!r} is not a number") from None
    if not 0 <= port < 65536:
        raise ValueError(f"listen address {listen!r}: port must be 0-65535")
    return host, port


class HealthServer:
    """The endpoint's lifecycle: `start()`, `stop()` (safe without start, safe twice)."""

    def __init__(
        self,
        listen: str,
        provider: HealthProvider,
        *,
        stall_after: float = STALL_AFTER,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = parse_listen(listen)
        self._provider = provider
        self._stall_after = stall_after
        self._heartbeat_interval = heartbeat_interval
        self._clock = clock
        self._last_beat: float | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str | None:
        """`http://host:port` once started (the real port when 0 was asked), else None."""
        return self._url

    async def start(self) -> None:
        """Bind and serve; a no-op when off. Raises OSError when the address is taken."""
        if self._address is None:
            log.info("health endpoint off")
            return
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        # No access log: Prometheus and health checks would fill the journal.
        # A short shutdown timeout: a scraper's keep-alive must not delay our exit.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        host, port = self._address
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._last_beat = self._clock()
        self._heartbeat = asyncio.create_task(self._beat(), name="health-heartbeat")
        bound_port = _bound_port(runner, port)
        shown_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown_host}:{bound_port}"
        log.info("health endpoint listening", url=self._url)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            task, self._heartbeat = self._heartbeat, None
            task.cancel()
            # wait() rather than `await task`: our own cancellation still propagates.
            await asyncio.wait([task])
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._url = None

    async def _beat(self) -> None:
        while True:
            self._last_beat = self._clock()
            await asyncio.sleep(self._heartbeat_interval)

    def loop_lag(self) -> float | None:
        """Seconds since the last heartbeat, None when not running."""
        if self._last_beat is None:
            return None
        return max(0.0, self._clock() - self._last_beat)

    async def _healthz(self, request: web.Request) -> web.Response:
        lag = self.loop_lag()
        if self._heartbeat is None or self._heartbeat.done() or lag is None:
            return _text(503, "unhealthy: heartbeat stopped\n")
        if lag > self._stall_after:
            return _text(503, f"unhealthy: event loop stalled for {lag:.1f}s\n")
        return _text(200, "ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready, reason = self._provider.readiness()
        except Exception:
            log.exception("readiness check failed")
            return _text(503, "not ready: readiness check failed\n")
        if ready:
            return _text(200, f"ready: {reason}\n" if reason else "ready\n")
        return _text(503, f"not ready: {reason}\n" if reason else "not ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self._provider.telemetry.render_prometheus().encode("utf-8")
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def _status(self, request: web.Request) -> web.Response:
        # default=str: timestamps or paths in the provider's dict still render.
        body = orjson.dumps(
            self._provider.status(),
            default=str,
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        )
        return web.Response(body=body, content_type="application/json")


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            port: int = address[1]
            return port
    return asked
