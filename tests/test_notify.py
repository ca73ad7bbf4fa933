"""sd_notify over a real AF_UNIX datagram socket, the watchdog, and credential lookup."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from collector.systemd import Notifier, credential_path, watchdog_loop


@pytest.fixture
def path_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound to a file: (NOTIFY_SOCKET value, socket)."""
    # A short directory: socket paths are limited to 107 bytes, pytest's tmp_path is long.
    with (
        tempfile.TemporaryDirectory(prefix="dtc-") as directory,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        name = os.path.join(directory, "notify.sock")
        sock.bind(name)
        sock.settimeout(5.0)
        yield name, sock


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket in the abstract namespace: ("@name", socket)."""
    name = f"dt-collector-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5.0)
        yield "@" + name, sock


def receive(sock: socket.socket) -> list[str]:
    """One datagram, split into its KEY=VALUE lines."""
    return sock.recv(4096).decode().split("\n")


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    # No socket to ping, so no watchdog either.
    assert notifier.watchdog_interval() is None


def test_path_socket_receives_each_message(path_socket: tuple[str, socket.socket]) -> None:
    name, sock = path_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
    assert notifier.enabled
    assert notifier.ready() is True
    assert receive(sock) == ["READY=1"]
    assert notifier.stopping() is True
    assert receive(sock) == ["STOPPING=1"]
    assert notifier.watchdog() is True
    assert receive(sock) == ["WATCHDOG=1"]
    notifier.close()
    notifier.close()  # twice is fine


def test_abstract_socket_name_gets_a_leading_nul(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    name, sock = abstract_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
    assert notifier.ready() is True
    assert receive(sock) == ["READY=1"]
    notifier.close()


def test_reloading_carries_monotonic_usec(path_socket: tuple[str, socket.socket]) -> None:
    name, sock = path_socket
    notifier = Notifier(name)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = receive(sock)
    assert lines[0] == "RELOADING=1"
    assert len(lines) == 2
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    # The value is CLOCK_MONOTONIC in microseconds, taken during the call.
    assert before <= int(value) <= after
    notifier.close()


def test_status_is_one_line(path_socket: tuple[str, socket.socket]) -> None:
    name, sock = path_socket
    notifier = Notifier(name)
    assert notifier.status("3 devices\n120 points buffered\tlast flush ok") is True
    assert receive(sock) == ["STATUS=3 devices 120 points buffered last flush ok"]
    notifier.close()


def test_a_failed_send_does_not_raise_and_is_logged_once() -> None:
    with tempfile.TemporaryDirectory(prefix="dtc-") as directory:
        notifier = Notifier(os.path.join(directory, "nobody-listens.sock"))
        with structlog.testing.capture_logs() as logs:
            assert notifier.ready() is False
            assert notifier.watchdog() is False
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert "sd_notify failed" in logs[0]["event"]
    notifier.close()


def test_a_non_unix_address_disables_notification() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert notifier.ready() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("500000", None, 0.5),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),
        ("30000000", "not-a-pid", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    path_socket: tuple[str, socket.socket],
    usec: str | None,
    pid: str | None,
    expected: float | None,
) -> None:
    environ = {"NOTIFY_SOCKET": path_socket[0]}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid == "self":
        environ["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        # Our parent's pid: the variable was meant for a process that is not us.
        environ["WATCHDOG_PID"] = str(os.getppid())
    elif pid is not None:
        environ["WATCHDOG_PID"] = pid
    assert Notifier.from_environ(environ).watchdog_interval() == expected


async def test_watchdog_loop_pings_until_cancelled(
    path_socket: tuple[str, socket.socket],
) -> None:
    name, sock = path_socket
    sock.setblocking(False)
    # 20ms: pings every 10ms, so the test sees several quickly.
    notifier = Notifier(name, watchdog_usec="20000")
    task = asyncio.create_task(watchdog_loop(notifier), name="watchdog")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        for _ in range(3):
            assert await loop.sock_recv(sock, 4096) == b"WATCHDOG=1"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()


async def test_watchdog_loop_returns_without_a_watchdog(
    path_socket: tuple[str, socket.socket],
) -> None:
    name, sock = path_socket
    notifier = Notifier(name)
    async with asyncio.timeout(10):
        await watchdog_loop(notifier)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_credential_path_prefers_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dt-token").write_text("secret\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert credential_path("dt-token", env) == creds / "dt-token"
    assert credential_path(Path("dt-token"), env) == creds / "dt-token"


def test_credential_path_falls_back_to_the_path_as_given(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    # Not handed over as a credential: relative to the working directory as usual.
    assert credential_path("mqtt-password", env) == Path("mqtt-password")
    assert credential_path("mqtt-password", {}) == Path("mqtt-password")
    # Absolute paths are never redirected, even when a credential of that name exists.
    (creds / "dt-token").write_text("secret\n")
    absolute = tmp_path / "dt-token"
    assert credential_path(absolute, env) == absolute


def test_credential_path_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dt-token").write_text("secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert credential_path("dt-token") == tmp_path / "dt-token"
