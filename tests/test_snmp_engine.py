"""The pysnmp engine against a real Net-SNMP snmpd: types, walks, v1/v2c/v3, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from collector.sources.snmp.engine import (
    Agent,
    AuthError,
    Kind,
    RequestTimeout,
    UsmUser,
    Varbind,
)
from collector.sources.snmp.pysnmp_engine import pysnmp_engine
from tests.snmpd import AUTH_KEY, COMMUNITY, ENTERPRISE, PRIV_KEY, V3_USER, SnmpAgent, start_snmpd

E = tuple(int(p) for p in ENTERPRISE.split("."))
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
UPTIME_TEXT = "1.3.6.1.2.1.1.3.0"
ROWS = 40
COLUMNS = [(*E, 5, 1, c) for c in (1, 2, 3)]


def table_values() -> dict[str, tuple[str, int | str]]:
    values: dict[str, tuple[str, int | str]] = {
        "1.3.6.1.2.1.1.3.0": ("timeticks", 4242),
        f"{ENTERPRISE}.1.0": ("counter", 4294967295),
        f"{ENTERPRISE}.2.0": ("counter64", 2**64 - 1),
        f"{ENTERPRISE}.3.0": ("gauge", 7),
        f"{ENTERPRISE}.4.0": ("integer", -3),
        f"{ENTERPRISE}.6.0": ("string", "42.5"),
        f"{ENTERPRISE}.5.1.4.1": ("integer", 99),  # a neighbour column the walk must not read
    }
    for row in range(1, ROWS + 1):
        values[f"{ENTERPRISE}.5.1.1.{row}"] = ("string", f"port{row}")
        values[f"{ENTERPRISE}.5.1.2.{row}"] = ("counter", row * 1000)
        values[f"{ENTERPRISE}.5.1.3.{row}"] = ("integer", row % 2 + 1)
    for n in range(100):
        values[f"{ENTERPRISE}.7.{n}.0"] = ("integer", n)
    return values


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnmpAgent]:
    running = start_snmpd(tmp_path_factory.mktemp("snmpd"), values=table_values())
    yield running
    running.stop()


def v2c(agent: SnmpAgent, **kwargs: float) -> Agent:
    return Agent("127.0.0.1", agent.ports[0], "v2c", community=SecretStr(COMMUNITY),
                 timeout=kwargs.get("timeout", 2.0), retries=int(kwargs.get("retries", 1)))


def v3(agent: SnmpAgent, auth_key: str = AUTH_KEY, priv_key: str = PRIV_KEY,
       user: str = V3_USER) -> Agent:
    usm = UsmUser(user, "SHA-256", SecretStr(auth_key), "AES", SecretStr(priv_key))
    return Agent("127.0.0.1", agent.ports[0], "v3", user=usm, timeout=1.0, retries=0)


def agent_for(version: str) -> Callable[[SnmpAgent], Agent]:
    if version == "v3":
        return v3
    return lambda a: Agent("127.0.0.1", a.ports[0], version,  # type: ignore[arg-type]
                           community=SecretStr(COMMUNITY), timeout=2.0)


async def test_get_returns_typed_values_in_order(agent: SnmpAgent) -> None:
    oids = [SYS_UPTIME, *((*E, n, 0) for n in (1, 2, 3, 4, 6, 9)), (1, 3, 6, 1, 6, 99, 0)]
    async with pysnmp_engine() as engine:
        got = await engine.get(v2c(agent), oids)
    assert [v.oid for v in got] == oids
    assert [(v.kind, v.value) for v in got] == [
        (Kind.TIMETICKS, 4242), (Kind.COUNTER32, 4294967295), (Kind.COUNTER64, 2**64 - 1),
        (Kind.GAUGE32, 7), (Kind.INTEGER, -3), (Kind.OCTETS, b"42.5"),
        (Kind.NO_SUCH_INSTANCE, None), (Kind.NO_SUCH_OBJECT, None)]


async def test_many_scalars_are_fetched_in_order(agent: SnmpAgent) -> None:
    oids = [(*E, 7, n, 0) for n in range(100)]
    async with pysnmp_engine() as engine:
        got = await engine.get(v2c(agent), oids)
    assert got == [Varbind(oid, Kind.INTEGER, n) for n, oid in enumerate(oids)]


@pytest.mark.parametrize("version", ["v1", "v2c", "v3"])
async def test_walk_reads_every_row_of_every_column_and_nothing_beyond(
        agent: SnmpAgent, version: str) -> None:
    async with pysnmp_engine() as engine:
        got = await engine.walk(agent_for(version)(agent), COLUMNS, max_repetitions=7)
    by_column = {c: [v for v in got if v.oid[:len(c)] == c] for c in COLUMNS}
    assert len(got) == 3 * ROWS
    assert [v.oid[-1] for v in by_column[COLUMNS[0]]] == list(range(1, ROWS + 1))
    assert by_column[COLUMNS[0]][4] == Varbind((*COLUMNS[0], 5), Kind.OCTETS, b"port5")
    assert [v.value for v in by_column[COLUMNS[1]]] == [r * 1000 for r in range(1, ROWS + 1)]
    assert {v.kind for v in by_column[COLUMNS[2]]} == {Kind.INTEGER}


async def test_walking_an_empty_column_gives_nothing(agent: SnmpAgent) -> None:
    async with pysnmp_engine() as engine:
        assert await engine.walk(v2c(agent), [(*E, 5, 1, 9)], max_repetitions=10) == []
        assert await engine.walk(v2c(agent), [(1, 3, 6, 1, 6, 99)], max_repetitions=10) == []


async def test_v1_get_with_a_missing_oid_keeps_the_others(agent: SnmpAgent) -> None:
    oids = [SYS_UPTIME, (*E, 9, 0), (*E, 3, 0), (*E, 2, 0)]
    async with pysnmp_engine() as engine:
        got = await engine.get(agent_for("v1")(agent), oids)
    # Counter64 does not exist in SNMPv1: the agent hides it like a missing object.
    assert [(v.oid, v.kind, v.value) for v in got] == [
        (SYS_UPTIME, Kind.TIMETICKS, 4242), ((*E, 9, 0), Kind.NO_SUCH_OBJECT, None),
        ((*E, 3, 0), Kind.GAUGE32, 7), ((*E, 2, 0), Kind.NO_SUCH_OBJECT, None)]


async def test_a_silent_agent_times_out(silent_port: int) -> None:
    silent = Agent("127.0.0.1", silent_port, "v2c", community=SecretStr(COMMUNITY),
                   timeout=0.2, retries=1)
    async with pysnmp_engine() as engine:
        with pytest.raises(RequestTimeout, match=r"0.2s x 2 tries"):
            await engine.get(silent, [SYS_UPTIME])


async def test_v3_wrong_keys_and_user_are_auth_errors(agent: SnmpAgent) -> None:
    async with pysnmp_engine() as engine:
        assert (await engine.get(v3(agent), [SYS_UPTIME]))[0].value == 4242
        with pytest.raises(AuthError, match="auth_key") as wrong_auth:
            await engine.get(v3(agent, auth_key="not-the-auth-key"), [SYS_UPTIME])
        with pytest.raises(AuthError, match="priv_key") as wrong_priv:
            await engine.get(v3(agent, priv_key="not-the-priv-key"), [SYS_UPTIME])
        with pytest.raises(AuthError, match="user"):
            await engine.get(v3(agent, user="nobody"), [SYS_UPTIME])
        # The right credentials still work beside the wrong ones.
        assert (await engine.get(v3(agent), [SYS_UPTIME]))[0].value == 4242
    for error in (wrong_auth.value, wrong_priv.value):
        assert "not-the" not in str(error) and AUTH_KEY not in str(error)


async def test_one_user_name_with_different_keys_on_two_agents(tmp_path: Path) -> None:
    # Real fleets do this: the same user name, a different key per device.
    first = start_snmpd(tmp_path / "a", engine_id="dtcfirst", values=table_values())
    second = start_snmpd(tmp_path / "b", engine_id="dtcsecond", values=table_values(),
                         auth_key="second-auth-key", priv_key="second-priv-key")
    try:
        async with pysnmp_engine() as engine:
            agents = [v3(first), v3(second, "second-auth-key", "second-priv-key")]
            results = await asyncio.gather(*(engine.get(agents[i % 2], [SYS_UPTIME])
                                             for i in range(40)))
            walks = await asyncio.gather(*(engine.walk(a, COLUMNS, 10) for a in agents))
    finally:
        first.stop()
        second.stop()
    assert all(r[0].value == 4242 for r in results)
    assert [len(w) for w in walks] == [3 * ROWS, 3 * ROWS]


async def test_one_engine_per_loop_closed_by_its_last_user() -> None:
    async with pysnmp_engine() as first, pysnmp_engine() as second:
        assert first is second
    async with pysnmp_engine() as third:
        assert third is not first


@pytest.mark.parametrize(("auth", "priv"), [("MD5", "DES"), ("SHA", "AES"), ("SHA-224", "AES-128"),
                                            ("SHA-384", "AES-192"), ("SHA-512", "AES-256")])
async def test_v3_protocols_match_net_snmp(tmp_path: Path, auth: str, priv: str) -> None:
    # Net-SNMP's AES-192/AES-256 extend the key as draft-blumenthal-aes-usm-04 says.
    agent = start_snmpd(tmp_path, auth_protocol=auth, priv_protocol=priv,
                        values={UPTIME_TEXT: ("timeticks", 77)})
    usm = UsmUser(V3_USER, auth, SecretStr(AUTH_KEY), priv, SecretStr(PRIV_KEY))
    try:
        async with pysnmp_engine() as engine:
            got = await engine.get(Agent("127.0.0.1", agent.ports[0], "v3", user=usm,
                                         timeout=1.0, retries=0), [SYS_UPTIME])
    finally:
        agent.stop()
    assert got == [Varbind(SYS_UPTIME, Kind.TIMETICKS, 77)]
