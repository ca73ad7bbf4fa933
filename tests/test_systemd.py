"""systemd/dt-collector.service: `systemd-analyze verify` is clean, exposure is at most 2.0.

`systemd-analyze` comes with Debian's `systemd` package, which `.ci/run` installs. Without
it these tests skip on a developer's machine and fail under CI (CI=true), so a missing
install step cannot pass unnoticed.

`verify` checks that ExecStart= names an existing executable; the unit names
/opt/dt-collector/bin/dt-collector, which a test must not create on the machine. So
verify runs on a copy in a temporary directory whose ExecStart= points at this venv's
`dt-collector` (or, before it is installed, at the Python running the tests); every
other line is the unit as shipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "dt-collector.service"
EXAMPLE_CONFIG = REPO / "config" / "collector.example.yaml"
INSTALLED_BINARY = "/opt/dt-collector/bin/dt-collector"
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze is missing: apt-get install -y systemd"
        if os.environ.get("CI"):
            pytest.fail(message + " (in .ci/run)")
        pytest.skip(message)
    return found


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # SYSTEMD_LOG_COLOR/SYSTEMD_COLORS: plain text to match against.
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, check=False, env=env, cwd=cwd
    )


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Key=value` lines by key, every occurrence (systemd lets keys repeat)."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_verify_is_clean(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1, "ExecStart= should run the venv under /opt"
    venv_binary = Path(sys.executable).parent / "dt-collector"
    stand_in = venv_binary if venv_binary.exists() else Path(sys.executable)
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(stand_in)))
    result = run(analyze, "verify", str(copy))
    # verify reports problems on stderr, sometimes with exit status 0: both must be clean.
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: verify does report a bad setting."""
    analyze = systemd_analyze()
    copy = tmp_path / UNIT.name
    copy.write_text(
        UNIT.read_text().replace(INSTALLED_BINARY, sys.executable)
        + textwrap.dedent("""
            [Service]
            ProtectSystem=sometimes
            """)
    )
    result = run(analyze, "verify", str(copy))
    assert "sometimes" in result.stderr


def exposure(unit: Path) -> tuple[float, str]:
    """The overall exposure `systemd-analyze security` gives the unit file, and its report."""
    result = run(systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit))
    assert result.returncode == 0, result.stderr
    match = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", result.stdout
    )
    assert match is not None, result.stdout
    return float(match[1]), result.stdout


def test_security_exposure_is_at_most_two() -> None:
    level, report = exposure(UNIT)
    assert level <= MAX_EXPOSURE, report


def test_security_exposure_of_an_unhardened_unit_is_high(tmp_path: Path) -> None:
    """The check above can fail: the same unit without its hardening scores far worse."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().split("# Hardening:")[0] + "\n[Install]\n")
    level, report = exposure(copy)
    assert level > MAX_EXPOSURE, report


def test_unit_matches_what_the_daemon_expects() -> None:
    settings = unit_settings(UNIT.read_text())
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"] == [f"{INSTALLED_BINARY} run -c /etc/dt-collector/config.yaml"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["WatchdogSec"], "the daemon pings from its event loop"
    # token_file: dt-token is read from $CREDENTIALS_DIRECTORY.
    assert settings["LoadCredential"] == ["dt-token:/etc/dt-collector/dt-token"]
    assert settings["ConfigurationDirectory"] == ["dt-collector"]
    assert settings["StateDirectory"] == ["dt-collector"]
    # AF_UNIX for $NOTIFY_SOCKET; the collector reaches arbitrary gear, so no IP allow list.
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "IPAddressDeny" not in settings
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["MemoryDenyWriteExecute"] == ["yes"]


# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): since Linux 6.3 the kernel itself refuses
# writable+executable mappings, as the seccomp filter of MemoryDenyWriteExecute=yes does.
_UNDER_MDWE = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    pass
else:
    sys.exit("W+X mapping was allowed: the guard is not in force")
import asyncio, ssl
import aiohttp, aiomqtt, orjson, pydantic, structlog, yaml
import pysnmp.hlapi.v3arch.asyncio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
import collector.daemon, collector.health, collector.systemd
from collector.cli import main as cli_main

Cipher(algorithms.AES(bytes(16)), modes.CBC(bytes(16))).encryptor().update(bytes(16))
async def main() -> None:
    async with aiohttp.ClientSession():
        ssl.create_default_context()
asyncio.run(main())
if cli_main(["check-config", "-c", sys.argv[1]]) != 0:
    sys.exit("check-config failed")
print("ok")
"""


def test_python_and_the_dependencies_run_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes would kill the service if anything needed W+X pages."""
    result = run(sys.executable, "-c", _UNDER_MDWE, str(EXAMPLE_CONFIG))
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert (result.returncode, result.stdout.splitlines()[-1:]) == (0, ["ok"]), result.stderr
