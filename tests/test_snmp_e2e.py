"""End to end: real snmpd agents -> the collector (daemon) -> the strict Dynatrace simulator.

Values change under the test's control between polls (right after a target's poll count
moves, so never during a poll), and rates and deltas are asserted exactly: they come from
the agent's sysUpTime, not from when the polls happened.
"""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from collector.config import parse_config
from collector.daemon import Daemon
from collector.simulator import AcceptedPoint, Simulator
from tests.helpers import base_config, running_daemon, wait_for
from tests.snmpd import (
    AUTH_KEY,
    COMMUNITY,
    ENTERPRISE,
    PRIV_KEY,
    V3_USER,
    SnmpAgent,
    Start,
    Values,
)

E = ENTERPRISE
UPTIME = "1.3.6.1.2.1.1.3.0"
IF = "1.3.6.1.2.1.31.1.1.1"
IFT = "1.3.6.1.2.1.2.2.1"
IF_NUMBER = "1.3.6.1.2.1.2.1.0"  # IF-MIB::ifNumber.0

METRICS = """\
metrics:
  custom:firewall.sessions:
    display_name: Sessions
    types: [Firewall]
  custom:firewall.sessions.new:
    display_name: New sessions per second
    unit: PerSecond
    types: [Firewall]
  custom:firewall.drops:
    display_name: Dropped packets
    types: [Firewall]
  custom:firewall.cpu:
    display_name: CPU load
    unit: Percent
    dimensions: [core]
    types: [Firewall]
"""


def polls(daemon: Daemon, target: str) -> float:
    family = daemon.telemetry.families.get("polls")
    return 0.0 if family is None else family.value("net", target)


async def next_poll(daemon: Daemon, *targets: str) -> None:
    """Wait until each target has finished one more poll than now."""
    seen = {t: polls(daemon, t) for t in targets}
    await wait_for(lambda: all(polls(daemon, t) > seen[t] for t in targets), timeout=20,
                   what=f"a poll of {targets}")


async def change_after_a_poll(daemon: Daemon, target: str, agent: SnmpAgent,
                              values: Values) -> None:
    """Serve `values` right after a poll of `target` ends; wait for the next poll."""
    await next_poll(daemon, target)
    agent.set(values)
    await next_poll(daemon, target)


def firsts(points: list[AcceptedPoint]) -> dict[tuple[str, str, tuple[tuple[str, str], ...]],
                                                 float]:
    """The first accepted value of each series."""
    found: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for p in sorted(points, key=lambda p: p.timestamp_ms):
        found.setdefault((p.device, p.metric, p.dimensions), p.value)
    return found


def interfaces(values: dict[str, tuple[str, int | str]], octets_in: int) -> None:
    for i, (name, status) in {1: ("lo", 1), 2: ("ge-0/0/1", 1), 3: ("ge-0/0/2", 2)}.items():
        values |= {f"{IF}.1.{i}": ("string", name), f"{IF}.6.{i}": ("counter64", octets_in * i),
                   f"{IF}.10.{i}": ("counter64", 0), f"{IF}.15.{i}": ("gauge", 10000),
                   f"{IFT}.8.{i}": ("integer", status), f"{IFT}.13.{i}": ("counter", 0),
                   f"{IFT}.14.{i}": ("counter", octets_in // 1000),
                   f"{IFT}.19.{i}": ("counter", 0), f"{IFT}.20.{i}": ("counter", 0)}


async def test_agents_to_dynatrace_rates_deltas_tables_filters_profiles(
        snmpd: Start, simulator: Simulator) -> None:
    firewall: dict[str, tuple[str, int | str]] = {
        UPTIME: ("timeticks", 10_000), f"{E}.1.0": ("gauge", 1234),
        f"{E}.2.0": ("counter", 4_294_967_000), f"{E}.3.0": ("counter64", 50),
        f"{E}.5.1.2.1": ("integer", 10), f"{E}.5.1.2.2": ("integer", 90)}
    router: dict[str, tuple[str, int | str]] = {UPTIME: ("timeticks", 10_000)}
    interfaces(router, octets_in=1_000_000)
    # One agent each, so each changes right after its own target's poll, never during one.
    fw_agent, rtr_agent = snmpd(values=firewall), snmpd(values=router)
    text = base_config(simulator.url) + METRICS + f"""\
sources:
  - type: snmp
    name: net
    interval: 1s
    community: {COMMUNITY}
    targets:
      - host: "{fw_agent.host}"
        device: fw-1
        display_name: Firewall one
        type: Firewall
        tags: [lab]
        scalars:
          - {{metric: custom:firewall.sessions, oid: {E}.1.0}}
          - {{metric: custom:firewall.sessions.new, oid: {E}.3.0, transform: rate}}
          - {{metric: custom:firewall.drops, oid: {E}.2.0, transform: delta}}
        tables:
          - dimensions: {{core: index}}
            metrics: [{{metric: custom:firewall.cpu, oid: {E}.5.1.2}}]
      - host: "{rtr_agent.host}"
        device: rtr-1
        type: Router
        version: v3
        v3: {{user: {V3_USER}, auth_protocol: SHA-256, auth_key: {AUTH_KEY},
              priv_protocol: AES, priv_key: {PRIV_KEY}}}
        profiles:
          - uptime
          - name: if-mib
            exclude: {{interface: "lo", {IFT}.8: "2"}}
"""
    firewall |= {UPTIME: ("timeticks", 12_000),  # 20 s later on the agent's clock
                 f"{E}.1.0": ("gauge", 1300), f"{E}.2.0": ("counter", 704),  # wrapped
                 f"{E}.3.0": ("counter64", 50 + 20 * 35)}
    router[UPTIME] = ("timeticks", 12_000)
    interfaces(router, octets_in=1_000_000 + 20 * 12_500)
    async with running_daemon(parse_config(text, env={})) as daemon:
        await asyncio.gather(change_after_a_poll(daemon, "fw-1", fw_agent, firewall),
                             change_after_a_poll(daemon, "rtr-1", rtr_agent, router))
        await daemon.flush_now()
    got = firsts(simulator.points())
    port = (("interface", "ge-0/0/1"),)
    assert got[("fw-1", "custom:firewall.sessions", ())] == 1234
    assert got[("fw-1", "custom:firewall.sessions.new", ())] == 35.0
    assert got[("fw-1", "custom:firewall.drops", ())] == 1000.0
    assert got[("fw-1", "custom:firewall.cpu", (("core", "1"),))] == 10
    assert got[("fw-1", "custom:firewall.cpu", (("core", "2"),))] == 90
    assert got[("rtr-1", "custom:snmp.uptime", ())] == 100.0
    assert got[("rtr-1", "custom:snmp.if.in.bytes", port)] == 25_000.0  # ifIndex 2: x 2
    assert got[("rtr-1", "custom:snmp.if.in.errors", port)] == 250.0
    assert got[("rtr-1", "custom:snmp.if.speed", port)] == 1e10
    assert got[("rtr-1", "custom:snmp.if.oper.status", port)] == 1
    # lo and the down interface were filtered out.
    assert {k[2] for k in got if k[0] == "rtr-1" and k[2]} == {port}
    assert all(200 <= status < 300 for status in simulator.responses)  # nothing rejected
    device = simulator.devices["fw-1"]
    assert (device.type, device.display_name, device.tags) == ("Firewall", "Firewall one",
                                                               ["lab"])
    assert device.ip_addresses == ["127.0.0.1"]
    assert simulator.devices["rtr-1"].type == "Router"


async def test_a_wrong_v3_key_leaves_the_daemon_and_other_targets_running(
        snmpd: Start, simulator: Simulator) -> None:
    good = snmpd(values={UPTIME: ("timeticks", 1), f"{E}.1.0": ("gauge", 5)})
    other = snmpd(values={UPTIME: ("timeticks", 1), f"{E}.1.0": ("gauge", 6)})
    text = base_config(simulator.url) + METRICS + f"""\
sources:
  - type: snmp
    name: net
    interval: 200ms
    timeout: 500ms
    retries: 0
    device_type: Firewall
    version: v3
    v3: {{user: {V3_USER}, auth_protocol: SHA-256, auth_key: {AUTH_KEY},
          priv_protocol: AES, priv_key: {PRIV_KEY}}}
    scalars: [{{metric: custom:firewall.sessions, oid: {E}.1.0}}]
    targets:
      - {{host: "{good.host}", device: fw-good}}
      - host: "{other.host}"
        device: fw-typo
        v3: {{user: {V3_USER}, auth_protocol: SHA-256, auth_key: wrong-auth-key,
              priv_protocol: AES, priv_key: {PRIV_KEY}}}
"""
    with capture_logs() as logs:
        async with running_daemon(parse_config(text, env={})) as daemon:
            failures = daemon.telemetry.families
            await wait_for(lambda: "snmp_errors" in failures and failures["snmp_errors"].value(
                "net", "fw-typo", "auth") >= 3, timeout=30, what="three auth failures")
            # The source is still polling, the good target as before.
            await next_poll(daemon, "fw-good")
            await daemon.flush_now()
    auth_errors = [e for e in logs if e.get("reason") == "auth"]
    assert len(auth_errors) == 1
    assert auth_errors[0]["target"] == "fw-typo"
    assert "wrong-auth-key" not in str(logs) and AUTH_KEY not in str(logs)
    devices = {p.device for p in simulator.points()}
    assert devices == {"fw-good"}


async def test_two_hundred_agents_each_polled_every_interval(
        snmpd: Start, simulator: Simulator) -> None:
    # snmpd's own values: cheap enough that the agents keep up on a busy machine.
    agents: list[SnmpAgent] = [snmpd(ports=100, builtin=True) for _ in range(2)]
    hosts = [host for agent in agents for host in agent.hosts]
    targets = "".join(f'      - {{host: "{h}", device: fw-{i:03d}}}\n'
                      for i, h in enumerate(hosts))
    # Flushed once at the end: 200 pushes per flush would compete with the polls for CPU.
    text = base_config(simulator.url, flush_interval="1m") + METRICS + f"""\
sources:
  - type: snmp
    name: net
    interval: 2s
    timeout: 2s
    community: {COMMUNITY}
    device_type: Firewall
    scalars: [{{metric: custom:firewall.sessions, oid: {IF_NUMBER}}}]
    targets:
{targets}"""
    names = [f"fw-{i:03d}" for i in range(200)]
    async with running_daemon(parse_config(text, env={})) as daemon:
        await wait_for(lambda: all(polls(daemon, n) >= 2 for n in names), timeout=30,
                       what="two polls of every agent")
        await daemon.flush_now()
        counts = [polls(daemon, n) for n in names]
        skipped = daemon.telemetry.families["polls_skipped"].total()
        failed = daemon.telemetry.families["polls_failed"].total()
    # Every agent was polled on every tick of its own timer: none fell behind.
    assert max(counts) - min(counts) <= 1
    assert skipped == 0 and failed == 0
    by_device: dict[str, int] = {}
    for point in simulator.points():
        by_device[point.device] = by_device.get(point.device, 0) + 1
    assert set(by_device) == set(names)
    assert min(by_device.values()) >= 2
    assert all(200 <= status < 300 for status in simulator.responses)  # nothing rejected
