"""pytest plugin: real Net-SNMP `snmpd` agents on 127.0.0.1, serving values a test controls.

`snmpd(...)` starts an agent with a generated config in tmp_path: a v2c community and a v3
authPriv user, listening on one or many free UDP ports. The standard subtrees the tests
need (sysUpTime, ifTable, ifXTable, hrStorageTable, hrProcessorTable) and a test
enterprise subtree are served by `tests/snmp_agent.py` from a JSON file; `agent.set(...)`
changes the values (and how slowly they are served) while the agent runs.
`silent_port` is a UDP port that receives and never answers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

COMMUNITY = "dtc-test-community"
V3_USER = "dtc"
AUTH_KEY = "auth-pass-phrase-1"
PRIV_KEY = "priv-pass-phrase-1"
ENTERPRISE = "1.3.6.1.4.1.99999"
"""The test enterprise subtree: free for scalars and tables of any shape."""

SNMPD = shutil.which("snmpd") or "/usr/sbin/snmpd"
AGENT_SCRIPT = Path(__file__).with_name("snmp_agent.py")
SERVED = (
    "1.3.6.1.2.1.1.3",  # SNMPv2-MIB::sysUpTime
    "1.3.6.1.2.1.2.2",  # IF-MIB::ifTable
    "1.3.6.1.2.1.31.1.1",  # IF-MIB::ifXTable
    "1.3.6.1.2.1.25.2.3",  # HOST-RESOURCES-MIB::hrStorageTable
    "1.3.6.1.2.1.25.3.3",  # HOST-RESOURCES-MIB::hrProcessorTable
    ENTERPRISE,
)
# snmpd's own implementations of those subtrees, turned off so the script's values win.
BUILTINS_OFF = ("system_mib,ifTable,ifXTable,interfaces,hr_proc,hr_device,hrh_storage,"
                "hr_network,hr_disk,hr_partition,hr_system,hrh_filesys")

MAX_PORTS = 128
"""Net-SNMP 5.9's snmpd opens at most this many listening addresses (more are ignored)."""

Values = Mapping[str, tuple[str, int | str]]


@dataclass
class SnmpAgent:
    """A running snmpd. `hosts` are its `127.0.0.1:port` addresses."""

    ports: list[int]
    values_file: Path
    process: subprocess.Popen[bytes]
    log_file: Path
    command: list[str]
    env: dict[str, str]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def set(self, values: Values, delay: float = 0.0) -> None:
        """Serve exactly these values (OID -> (Net-SNMP type, value)) from now on."""
        _write_values(self.values_file, values, delay)

    def restart(self) -> None:
        """Stop, and start again on the same ports: its SNMPv3 engineBoots goes up."""
        self.stop()
        self.process = _launch(self.command, self.env, self.log_file)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_udp_ports(count: int) -> list[int]:
    """`count` distinct UDP ports of 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _write_values(path: Path, values: Values, delay: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"values": {k: list(v) for k, v in values.items()},
                               "delay": delay}), encoding="utf-8")
    os.replace(tmp, path)  # the agent script never reads half a file


def start_snmpd(directory: Path, *, ports: int = 1, engine_id: str = "dtctest",
                auth_protocol: str = "SHA-256", auth_key: str = AUTH_KEY,
                priv_protocol: str = "AES", priv_key: str = PRIV_KEY,
                values: Values | None = None, delay: float = 0.0,
                builtin: bool = False) -> SnmpAgent:
    """Start snmpd in `directory` (config, persistent state, values file, log).

    `builtin=True` serves snmpd's own values (the real sysUpTime, ifNumber, ...) and no
    test values: the cheapest agent, for many-agent tests.
    """
    if not 1 <= ports <= MAX_PORTS:
        raise ValueError(f"one snmpd listens on at most {MAX_PORTS} ports; start several")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "persist").mkdir(exist_ok=True)
    (directory / "mibs").mkdir(exist_ok=True)
    port_list = _free_udp_ports(ports)
    values_file = directory / "values.json"
    _write_values(values_file, values or {}, delay)
    addresses = ",".join(f"udp:127.0.0.1:{p}" for p in port_list)
    lines = [
        f"agentAddress {addresses}",
        f"engineID {engine_id}",
        f"rocommunity {COMMUNITY} 127.0.0.1",
        f"createUser {V3_USER} {auth_protocol} {auth_key} {priv_protocol} {priv_key}",
        f"rouser {V3_USER} authpriv",
        *(f"pass_persist .{tree} {sys.executable} {AGENT_SCRIPT} {values_file} {tree}"
          for tree in ([] if builtin else SERVED)),
    ]
    conf = directory / "snmpd.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIBS": "",
           "MIBDIRS": str(directory / "mibs"), "SNMP_PERSISTENT_DIR": str(directory / "persist"),
           "SNMPCONFPATH": str(directory)}
    log_file = directory / "snmpd.log"
    log_file.write_bytes(b"")
    command = [SNMPD, "-f", "-Lo", "-C", "-c", str(conf),
               *([] if builtin else ["-I", "-" + BUILTINS_OFF])]
    return SnmpAgent(port_list, values_file, _launch(command, env, log_file), log_file,
                     command, env)


def _launch(command: list[str], env: dict[str, str], log_file: Path
            ) -> subprocess.Popen[bytes]:
    """Run snmpd, logging to `log_file`, and wait until it serves."""
    started = log_file.read_text(errors="replace").count("NET-SNMP version")
    with log_file.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=log_file.parent)
    deadline = time.monotonic() + 10
    while log_file.read_text(errors="replace").count("NET-SNMP version") == started:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"snmpd did not start:\n{log_file.read_text()}")
        time.sleep(0.02)
    return process


Start = Callable[..., SnmpAgent]
"""The `snmpd` fixture: call it with keyword arguments of `start_snmpd`."""


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[Start]:
    """Start snmpd agents (keyword arguments of `start_snmpd`); all stopped after the test."""
    if not os.access(SNMPD, os.X_OK):
        pytest.fail(f"Net-SNMP snmpd is not installed at {SNMPD} (apt-get install snmpd)")
    agents: list[SnmpAgent] = []

    def start(**kwargs: object) -> SnmpAgent:
        kwargs.setdefault("engine_id", f"dtctest{len(agents)}")
        agent = start_snmpd(tmp_path / f"snmpd{len(agents)}", **kwargs)  # type: ignore[arg-type]
        agents.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that receives requests and never answers them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
