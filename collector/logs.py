"""Logging: structlog everywhere, stdlib loggers of libraries routed through it.

Two helpers keep logs readable under failure storms (Home Assistant's rule): `StateLog`
logs when a thing changes state (failing, recovered) and stays quiet on repeats;
`ThrottledLog` logs a recurring problem at most once per interval per key, with a count
of what it held back.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any

import structlog

Logger = structlog.stdlib.BoundLogger


def get_logger(name: str) -> Logger:
    logger: Logger = structlog.stdlib.get_logger(name)
    return logger


def setup_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger to write to `stream` (stderr)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries chatter at INFO/DEBUG (aiohttp access log, pysnmp); keep them at WARNING.
    for noisy in ("aiohttp.access", "pysnmp", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class StateLog:
    """Log the first failure of a thing, stay quiet while it keeps failing, log recovery once."""

    def __init__(self, log: Logger) -> None:
        self._log = log
        self._failing: dict[Hashable, str] = {}

    def failed(self, key: Hashable, event: str, **kw: Any) -> bool:
        """Report a failure; returns True when this is a change of state (it was logged)."""
        reason = str(kw.get("reason", event))
        if self._failing.get(key) == reason:
            return False
        self._failing[key] = reason
        self._log.error(event, **kw)
        return True

    def ok(self, key: Hashable, event: str, **kw: Any) -> bool:
        """Report success; logs `event` only if `key` was failing."""
        if self._failing.pop(key, None) is None:
            return False
        self._log.info(event, **kw)
        return True

    def is_failing(self, key: Hashable) -> bool:
        return key in self._failing


class ThrottledLog:
    """Log at most once per `interval` seconds per key; says how many were held back."""

    def __init__(
        self, log: Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def warning(self, key: Hashable, event: str, **kw: Any) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            kw["suppressed_since_last"] = held
        self._log.warning(event, **kw)
