"""Both engines (pysnmp, gufo) against a real Net-SNMP snmpd: types, walks, v1/v2c/v3, errors.

Every test runs on both and expects the same, except what gufo_snmp does not report: the
SNMP type of an integer (`Kind.NUMBER`) and which kind of missing value an OID is
(`NO_SUCH_OBJECT`); `reported` says so, in one place. What gufo cannot do at all is a
config error, asserted at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from collector.config import ConfigError, parse_config
from collector.config.snmp import EngineName
from collector.sources.snmp import gufo_engine
from collector.sources.snmp.engine import (
    Agent,
    AuthError,
    Kind,
    RequestTimeout,
    UsmUser,
    Varbind,
)
from collector.sources.snmp.source import open_engine
from tests.snmpd import AUTH_KEY, COMMUNITY, ENTERPRISE, PRIV_KEY, V3_USER, SnmpAgent, start_snmpd

E = tuple(int(p) for p in ENTERPRISE.split("."))
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
UPTIME_TEXT = "1.3.6.1.2.1.1.3.0"
ROWS = 40
COLUMNS = [(*E, 5, 1, c) for c in (1, 2, 3)]


NUMBERS = {Kind.INTEGER, Kind.COUNTER32, Kind.COUNTER64, Kind.GAUGE32, Kind.TIMETICKS}


@pytest.fixture(params=["pysnmp", "gufo"])
def engine(request: pytest.FixtureRequest) -> EngineName:
    name: EngineName = request.param
    return name


def reported(engine: EngineName, kind: Kind) -> Kind:
    """The kind `engine` reports for a value of SNMP type `kind`."""
    if engine == "gufo" and kind in NUMBERS:
        return Kind.NUMBER  # gufo_snmp gives plain ints
    if engine == "gufo" and kind is Kind.NO_SUCH_INSTANCE:
        return Kind.NO_SUCH_OBJECT  # gufo_snmp leaves missing values out
    return kind


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


async def test_get_returns_typed_values_in_order(agent: SnmpAgent, engine: EngineName) -> None:
    oids = [SYS_UPTIME, *((*E, n, 0) for n in (1, 2, 3, 4, 6, 9)), (1, 3, 6, 1, 6, 99, 0)]
    async with open_engine(engine) as snmp:
        got = await snmp.get(v2c(agent), oids)
    assert [v.oid for v in got] == oids
    assert [(v.kind, v.value) for v in got] == [(reported(engine, kind), value) for kind, value in [
        (Kind.TIMETICKS, 4242), (Kind.COUNTER32, 4294967295), (Kind.COUNTER64, 2**64 - 1),
        (Kind.GAUGE32, 7), (Kind.INTEGER, -3), (Kind.OCTETS, b"42.5"),
        (Kind.NO_SUCH_INSTANCE, None), (Kind.NO_SUCH_OBJECT, None)]]


async def test_oids_and_addresses_are_no_numbers(agent: SnmpAgent, engine: EngineName) -> None:
    values: dict[str, tuple[str, int | str]] = {
        UPTIME_TEXT: ("timeticks", 1), f"{ENTERPRISE}.1.0": ("objectid", ".1.3.6.1.4"),
        f"{ENTERPRISE}.2.0": ("ipaddress", "10.0.0.1"), f"{ENTERPRISE}.3.0": ("string", "")}
    agent.set(values)
    try:
        async with open_engine(engine) as snmp:
            got = await snmp.get(v2c(agent), [(*E, n, 0) for n in (1, 2, 3)])
    finally:
        agent.set(table_values())
    assert [(v.kind, v.value) for v in got] == [(Kind.OTHER, None), (Kind.OTHER, None),
                                                (Kind.OCTETS, b"")]


async def test_many_scalars_are_fetched_in_order(agent: SnmpAgent, engine: EngineName) -> None:
    oids = [(*E, 7, n, 0) for n in range(100)]
    async with open_engine(engine) as snmp:
        got = await snmp.get(v2c(agent), oids)
    assert got == [Varbind(oid, reported(engine, Kind.INTEGER), n) for n, oid in enumerate(oids)]


@pytest.mark.parametrize("version", ["v1", "v2c", "v3"])
async def test_walk_reads_every_row_of_every_column_and_nothing_beyond(
        agent: SnmpAgent, engine: EngineName, version: str) -> None:
    async with open_engine(engine) as snmp:
        got = await snmp.walk(agent_for(version)(agent), COLUMNS, max_repetitions=7)
    assert list(got) == COLUMNS
    assert [list(rows) for rows in got.values()] == [[(r,) for r in range(1, ROWS + 1)]] * 3
    assert got[COLUMNS[0]][(5,)] == Varbind((*COLUMNS[0], 5), Kind.OCTETS, b"port5")
    assert [v.value for v in got[COLUMNS[1]].values()] == [r * 1000 for r in range(1, ROWS + 1)]
    assert {v.kind for v in got[COLUMNS[2]].values()} == {reported(engine, Kind.INTEGER)}
    assert all(v.oid == (*c, *index) for c, rows in got.items() for index, v in rows.items())


async def test_walking_an_empty_column_gives_nothing(agent: SnmpAgent, engine: EngineName) -> None:
    async with open_engine(engine) as snmp:
        assert await snmp.walk(v2c(agent), [(*E, 5, 1, 9)], max_repetitions=10) == {
            (*E, 5, 1, 9): {}}
        assert await snmp.walk(v2c(agent), [(1, 3, 6, 1, 6, 99)], max_repetitions=10) == {
            (1, 3, 6, 1, 6, 99): {}}


async def test_v1_get_with_a_missing_oid_keeps_the_others(agent: SnmpAgent,
                                                          engine: EngineName) -> None:
    oids = [SYS_UPTIME, (*E, 9, 0), (*E, 3, 0), (*E, 2, 0)]
    async with open_engine(engine) as snmp:
        got = await snmp.get(agent_for("v1")(agent), oids)
    # Counter64 does not exist in SNMPv1: the agent hides it like a missing object.
    assert [(v.oid, v.kind, v.value) for v in got] == [
        (SYS_UPTIME, reported(engine, Kind.TIMETICKS), 4242),
        ((*E, 9, 0), Kind.NO_SUCH_OBJECT, None),
        ((*E, 3, 0), reported(engine, Kind.GAUGE32), 7), ((*E, 2, 0), Kind.NO_SUCH_OBJECT, None)]


async def test_a_silent_agent_times_out(silent_port: int, engine: EngineName) -> None:
    silent = Agent("127.0.0.1", silent_port, "v2c", community=SecretStr(COMMUNITY),
                   timeout=0.2, retries=1)
    async with open_engine(engine) as snmp:
        with pytest.raises(RequestTimeout, match=r"0.2s x 2 tries"):
            await snmp.get(silent, [SYS_UPTIME])
        with pytest.raises(RequestTimeout, match=r"0.2s x 2 tries"):
            await snmp.walk(silent, COLUMNS, 10)


async def test_v3_wrong_keys_and_user_are_auth_errors(agent: SnmpAgent,
                                                      engine: EngineName) -> None:
    async with open_engine(engine) as snmp:
        assert (await snmp.get(v3(agent), [SYS_UPTIME]))[0].value == 4242
        with pytest.raises(AuthError, match="auth_key") as wrong_auth:
            await snmp.get(v3(agent, auth_key="not-the-auth-key"), [SYS_UPTIME])
        with pytest.raises(AuthError, match="priv_key") as wrong_priv:
            await snmp.get(v3(agent, priv_key="not-the-priv-key"), [SYS_UPTIME])
        with pytest.raises(AuthError, match="user"):
            await snmp.get(v3(agent, user="nobody"), [SYS_UPTIME])
        # The right credentials still work beside the wrong ones.
        assert (await snmp.get(v3(agent), [SYS_UPTIME]))[0].value == 4242
    for error in (wrong_auth.value, wrong_priv.value):
        assert "not-the" not in str(error) and AUTH_KEY not in str(error)


async def test_one_user_name_with_different_keys_on_two_agents(tmp_path: Path,
                                                               engine: EngineName) -> None:
    # Real fleets do this: the same user name, a different key per device.
    first = start_snmpd(tmp_path / "a", engine_id="dtcfirst", values=table_values())
    second = start_snmpd(tmp_path / "b", engine_id="dtcsecond", values=table_values(),
                         auth_key="second-auth-key", priv_key="second-priv-key")
    try:
        async with open_engine(engine) as snmp:
            agents = [v3(first), v3(second, "second-auth-key", "second-priv-key")]
            results = await asyncio.gather(*(snmp.get(agents[i % 2], [SYS_UPTIME])
                                             for i in range(40)))
            walks = await asyncio.gather(*(snmp.walk(a, COLUMNS, 10) for a in agents))
    finally:
        first.stop()
        second.stop()
    assert all(r[0].value == 4242 for r in results)
    assert [[len(rows) for rows in w.values()] for w in walks] == [[ROWS] * 3] * 2


async def test_a_v3_agent_replaced_at_its_address_is_discovered_again(
        tmp_path: Path, engine: EngineName) -> None:
    agent = start_snmpd(tmp_path, engine_id="dtcbefore", values=table_values())
    try:
        async with open_engine(engine) as snmp:
            assert (await snmp.get(v3(agent), [SYS_UPTIME]))[0].value == 4242
            # Another device at the same address (a replaced one): another engine ID. It
            # ignores requests for the old one, so a request times out, and the next
            # discovers it again.
            conf = tmp_path / "snmpd.conf"
            conf.write_text(conf.read_text().replace("dtcbefore", "dtcafter"))
            agent.restart()
            with pytest.raises(RequestTimeout):
                await snmp.get(v3(agent), [SYS_UPTIME])
            if engine == "pysnmp":
                # pysnmp itself keeps an address's engine ID for 300 s; then it discovers.
                with pytest.raises(RequestTimeout, match="engine discovery"):
                    await snmp.get(v3(agent), [SYS_UPTIME])
                return
            assert (await snmp.get(v3(agent), [SYS_UPTIME]))[0].value == 4242
            got = await snmp.walk(v3(agent), COLUMNS, 10)
    finally:
        agent.stop()
    assert [len(rows) for rows in got.values()] == [ROWS] * 3


async def test_an_idle_v3_session_reads_the_agent_clock_again(
        agent: SnmpAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    # gufo only: USM takes requests within 150 s of the agent's clock, which gufo_snmp
    # learns from answers; an idle session refreshes it first (here: always).
    monkeypatch.setattr(gufo_engine, "CLOCK_REFRESH_S", 0.0)
    async with open_engine("gufo") as snmp:
        for _ in range(3):
            assert (await snmp.get(v3(agent), [SYS_UPTIME]))[0].value == 4242


async def test_one_engine_per_loop_closed_by_its_last_user(engine: EngineName) -> None:
    async with open_engine(engine) as first, open_engine(engine) as second:
        assert first is second
    async with open_engine(engine) as third:
        assert third is not first


# Net-SNMP's names for the Cisco key extension differ from ours (AES-192C).
NET_SNMP_PRIV = {"AES-192C": "AES192C", "AES-256C": "AES256C"}


@pytest.mark.parametrize(("auth", "priv"), [
    ("MD5", "DES"), ("SHA", "AES"), ("SHA-224", "AES-128"), ("SHA-384", "AES-192"),
    ("SHA-512", "AES-256"), ("MD5", "AES-192C"), ("SHA", "AES-256C")])
async def test_v3_protocols_match_net_snmp(tmp_path: Path, engine: EngineName, auth: str,
                                           priv: str) -> None:
    # AES-192/AES-256 extend a short key as draft-blumenthal-aes-usm-04 says, the C
    # variants as Cisco does.
    agent = start_snmpd(tmp_path, auth_protocol=auth, priv_protocol=NET_SNMP_PRIV.get(priv, priv),
                        values={UPTIME_TEXT: ("timeticks", 77)})
    usm = UsmUser(V3_USER, auth, SecretStr(AUTH_KEY), priv, SecretStr(PRIV_KEY))
    try:
        async with open_engine(engine) as snmp:
            got = await snmp.get(Agent("127.0.0.1", agent.ports[0], "v3", user=usm,
                                       timeout=1.0, retries=0), [SYS_UPTIME])
    finally:
        agent.stop()
    assert got == [Varbind(SYS_UPTIME, reported(engine, Kind.TIMETICKS), 77)]


V3_SOURCE = """\
dynatrace: {{url: https://abc12345.live.dynatrace.com, token: t}}
sources:
  - type: snmp
    engine: {engine}
    version: v3
    device_type: T
    v3: {{user: u, auth_protocol: SHA, auth_key: auth-pass, {v3}}}
    targets: [{{host: 10.0.0.1}}]
"""


@pytest.mark.parametrize(("v3", "problem"), [
    ("priv_protocol: 3DES, priv_key: priv-pass",
     "sources[0].v3.priv_protocol: engine gufo has no 3DES privacy"),
    ("context: bridge1",
     "sources[0].v3.context: engine gufo cannot send an SNMPv3 context name"),
], ids=["3DES", "context"])
def test_what_gufo_cannot_do_is_a_config_error(engine: EngineName, v3: str,
                                               problem: str) -> None:
    text = V3_SOURCE.format(engine=engine, v3=v3)
    if engine == "pysnmp":
        parse_config(text, "t.yaml", {})
        return
    with pytest.raises(ConfigError) as error:
        parse_config(text, "t.yaml", {})
    assert [str(issue) for issue in error.value.issues] == [
        f"t.yaml:7: {problem}: set engine: pysnmp (on the target or the source)"]
