"""Telling systemd the truth: the sd_notify protocol, the watchdog, and credential files.

sd_notify is a few `KEY=VALUE` lines in one datagram to the Unix socket named by
`$NOTIFY_SOCKET` (a name starting with `@` is in the abstract namespace). Writing it
here avoids a C library. Without `$NOTIFY_SOCKET` (not under systemd, or not
`Type=notify`) every call is a no-op, so the daemon calls these unconditionally.

`credential_path` resolves secret files handed over with `LoadCredential=`: a relative
name is looked up in `$CREDENTIALS_DIRECTORY` first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from collector.logs import get_logger

__all__ = ["Notifier", "credential_path", "watchdog_loop"]

log = get_logger(__name__)


class Notifier:
    """Sends sd_notify messages; never raises and never blocks.

    The first failed send is logged; later ones stay quiet (the supervisor sees the
    result anyway: a missing READY or WATCHDOG is acted on by systemd itself).
    """

    def __init__(
        self,
        socket_name: str | None = None,
        *,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        self._address = _socket_address(socket_name) if socket_name else None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._failure_logged = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=env.get("WATCHDOG_USEC"),
            watchdog_pid=env.get("WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to (we run under a Type=notify unit)."""
        return self._address is not None

    def ready(self) -> bool:
        """Startup or a reload is complete."""
        return self.send("READY=1")

    def reloading(self) -> bool:
        """A reload has begun; READY=1 ends it.

        systemd >= 253 (Type=notify-reload) wants the CLOCK_MONOTONIC time alongside,
        to tell this reload from an earlier one; older versions ignore the extra field.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown has begun (buffered points are being flushed)."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """A one-line summary shown by `systemctl status`."""
        # A newline would start a new assignment in the message, so fold it away.
        return self.send("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> bool:
        """Keep-alive ping for `WatchdogSec=`."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds systemd waits for a ping before it kills us, or None without a watchdog.

        None also when `$WATCHDOG_PID` names another process (the variable was inherited
        from a parent that is the supervised one) or when there is no socket to ping.
        """
        if self._address is None or not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` assignments in one datagram; True if it was sent."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # A full socket buffer means systemd is not reading; dropping a ping
                # is better than stalling the event loop.
                self._sock.setblocking(False)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failure_logged:
                self._failure_logged = True
                log.warning(
                    "sd_notify failed; further failures are not logged",
                    socket=_printable(self._address),
                    error=str(exc),
                )
            return False
        return True

    def close(self) -> None:
        """Close the socket (safe to call twice; a later send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(name: str) -> str | bytes | None:
    if name.startswith("@"):
        # Abstract namespace: the kernel wants a leading NUL instead of the '@'.
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    # e.g. systemd >= 254's vsock: addresses, which this daemon does not need.
    log.warning("NOTIFY_SOCKET is not a Unix socket path; not notifying", socket=name)
    return None


def _printable(address: str | bytes) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode(errors="replace")
    return address


async def watchdog_loop(notifier: Notifier) -> None:
    """Ping the watchdog at half its interval until cancelled; returns at once without one.

    It runs on the event loop on purpose: when the loop is stuck the pings stop and
    systemd restarts the service.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    log.debug("watchdog enabled", interval=interval)
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval / 2)


def credential_path(
    name_or_path: str | Path, environ: Mapping[str, str] | None = None
) -> Path:
    """Where a secret file is: `$CREDENTIALS_DIRECTORY/<name>` if that exists, else the path.

    Absolute paths are returned as given. A relative one (e.g. `token_file: dt-token`
    with `LoadCredential=dt-token:...`) is looked up in `$CREDENTIALS_DIRECTORY` first,
    and otherwise stays relative to the working directory.
    """
    path = Path(name_or_path)
    if path.is_absolute():
        return path
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / path
        if candidate.exists():
            return candidate
    return path
