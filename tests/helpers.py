"""Small helpers the tests share: ports, waiting for a condition, a config for a simulator."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from collector.config import Config
from collector.daemon import Daemon

TOKEN = "dt0c01.TESTTOKEN.SECRETPART0123456789abcdefghijklmnopqrstuvwxyz"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (TCP by default, or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> None:
    """Wait until `predicate()` is true; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def base_config(simulator_url: str, flush_interval: str = "200ms", extra_buffer: str = "") -> str:
    """YAML with `dynatrace:` and `buffer:` for a test against the simulator.

    Append `metrics:`, `devices:` and `sources:` and parse it with `parse_config`.
    """
    return (
        "dynatrace:\n"
        f"  url: {simulator_url}\n"
        f"  token: {TOKEN}\n"
        "  timeout: 2s\n"
        "buffer:\n"
        f"  flush_interval: {flush_interval}\n"
        "  shutdown_timeout: 5s\n"
        f"{extra_buffer}"
        "health:\n"
        "  listen: ''\n"
        "log:\n"
        "  level: debug\n"
    )


@asynccontextmanager
async def running_daemon(config: Config, **kwargs: Any) -> AsyncIterator[Daemon]:
    """A Daemon running in this event loop; stopped (with its final flush) on exit."""
    daemon = Daemon(config, **kwargs)
    task = asyncio.create_task(daemon.run(), name="daemon")
    registered = asyncio.create_task(daemon.registered.wait())
    await asyncio.wait({task, registered}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        registered.cancel()
        task.result()
        raise AssertionError("the daemon stopped before it registered its metrics")
    try:
        yield daemon
    finally:
        daemon.stop()
        await task
