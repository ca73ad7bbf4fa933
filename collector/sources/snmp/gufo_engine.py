"""The `Engine` on gufo_snmp, an asyncio SNMP client with a Rust core: about a tenth of the
CPU per value that pysnmp takes (README, Benchmarks).

One gufo `SnmpSession` (one connected UDP socket) per agent, opened at its first request
and kept; one request at a time on it. What gufo_snmp 0.13 leaves out, and how this engine
makes up for it:

- SNMP types: integers come as plain ints, reported as `Kind.NUMBER` (the transforms take
  such a counter for 32 bits wide while its values fit, else 64).
- Missing values (noSuchObject, noSuchInstance) are left out of an answer; they are
  reported as NO_SUCH_OBJECT, as SNMPv1 does.
- Error status (tooBig, genErr, SNMPv1's noSuchName) is not reported either: a GET of
  several OIDs answered with no value at all is asked again in halves, so one bad OID
  never hides the others (as the pysnmp engine does on tooBig and noSuchName).
- GETBULK takes one OID, so tables are walked column by column, `max_repetitions` rows
  per request.
- SNMPv3: the agent's engine ID is discovered when the session opens (keys are localised
  per agent). USM takes requests only within 150 s of the agent's clock, which gufo_snmp
  learns from answers: a session idle for longer than `CLOCK_REFRESH_S` reads it again.

3DES privacy and SNMPv3 context names are not possible at all; the config says so
(`engine: pysnmp` does both).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TypeVar

from gufo.snmp import (
    Aes128Key,
    Aes192Key,
    Aes256Key,
    BaseAuthKey,
    BasePrivKey,
    DesKey,
    KeyExpansion,
    Md5Key,
    Sha1Key,
    Sha224Key,
    Sha256Key,
    Sha384Key,
    Sha512Key,
    SnmpAuthError,
    SnmpVersion,
    User,
)
from gufo.snmp import SnmpError as GufoError
from gufo.snmp.aio import SnmpSession

from collector.sources.snmp.engine import (
    Agent,
    AuthError,
    Column,
    Kind,
    Oid,
    RequestTimeout,
    SnmpError,
    Unreachable,
    UsmUser,
    Varbind,
    shared_engine,
)

AUTH_KEYS: dict[str, type[BaseAuthKey]] = {
    "MD5": Md5Key, "SHA": Sha1Key, "SHA-224": Sha224Key, "SHA-256": Sha256Key,
    "SHA-384": Sha384Key, "SHA-512": Sha512Key,
}
# Net-SNMP's names: AES-192/AES-256 extend the key as draft-blumenthal-aes-usm says;
# the C variants as Cisco does (Reeder). No 3DES in gufo_snmp.
PRIV_KEYS: dict[str, tuple[type[BasePrivKey], KeyExpansion]] = {
    "DES": (DesKey, KeyExpansion.Blumenthal),
    "AES": (Aes128Key, KeyExpansion.Blumenthal),
    "AES-128": (Aes128Key, KeyExpansion.Blumenthal),
    "AES-192": (Aes192Key, KeyExpansion.Blumenthal),
    "AES-256": (Aes256Key, KeyExpansion.Blumenthal),
    "AES-192C": (Aes192Key, KeyExpansion.Cisco),
    "AES-256C": (Aes256Key, KeyExpansion.Cisco),
}
VERSIONS = {"v1": SnmpVersion.v1, "v2c": SnmpVersion.v2c, "v3": SnmpVersion.v3}
GET_CHUNK = 32
"""Scalars per GET request, as the pysnmp engine asks."""
CLOCK_REFRESH_S = 100.0
"""Re-read an SNMPv3 agent's clock after this long without an answer (USM allows 150 s)."""

T = TypeVar("T")


@dataclass(eq=False)
class _Session:
    """One agent's socket: None until opened, and again after an SNMPv3 failure (so the
    agent is discovered anew)."""

    snmp: SnmpSession | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answered_at: float = 0.0
    authenticated: bool = False
    """An SNMPv3 request was answered: the keys are right."""


def _varbind(oid: Oid, value: object) -> Varbind:
    if type(value) is int:  # not bool
        return Varbind(oid, Kind.NUMBER, value)
    if type(value) is bytes:
        return Varbind(oid, Kind.OCTETS, value)
    return Varbind(oid, Kind.OTHER, None)  # OID and IpAddress (as text), bool, float


def _user(user: UsmUser) -> User:
    auth = priv = None
    expansion = KeyExpansion.Blumenthal
    if user.auth_key is not None:
        auth = AUTH_KEYS[user.auth_protocol](user.auth_key.get_secret_value().encode())
    if user.priv_key is not None:
        priv_class, expansion = PRIV_KEYS[user.priv_protocol]
        priv = priv_class(user.priv_key.get_secret_value().encode())
    return User(user.name, auth_key=auth, priv_key=priv, key_expansion=expansion)


def _raise_open_files_limit() -> None:
    """One socket per agent: allow as many open files as the hard limit does (as Go does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))


class GufoEngine:
    """`Engine` on gufo_snmp. Create it inside the running event loop it will serve."""

    def __init__(self) -> None:
        asyncio.get_running_loop()  # fail early when created outside a loop
        self._sessions: dict[Agent, _Session] = {}
        _raise_open_files_limit()

    async def close(self) -> None:
        self._sessions.clear()  # gufo_snmp closes a socket when its session is collected

    async def get(self, agent: Agent, oids: Sequence[Oid]) -> list[Varbind]:
        async def get(session: _Session, snmp: SnmpSession) -> list[Varbind]:
            found: list[Varbind] = []
            for start in range(0, len(oids), GET_CHUNK):
                found.extend(await self._get(agent, session, snmp,
                                             list(oids[start:start + GET_CHUNK])))
            return found

        return await self._use(agent, get)

    async def walk(self, agent: Agent, columns: Sequence[Oid],
                   max_repetitions: int) -> dict[Oid, Column]:
        async def walk(session: _Session, snmp: SnmpSession) -> dict[Oid, Column]:
            return {column: await self._walk_column(agent, session, snmp, column,
                                                    max_repetitions) for column in columns}

        return await self._use(agent, walk)

    async def _use(self, agent: Agent,
                   work: Callable[[_Session, SnmpSession], Awaitable[T]]) -> T:
        """`work` on the agent's session: opened, its SNMPv3 clock fresh, one caller at a time."""
        session = self._sessions.get(agent) or self._sessions.setdefault(agent, _Session())
        async with session.lock:
            snmp = session.snmp
            if snmp is None:
                snmp = session.snmp = await self._open(agent, session)
            elif agent.version == "v3" and time.monotonic() - session.answered_at > (
                    CLOCK_REFRESH_S):
                await self._request(agent, session, snmp.refresh)
            return await work(session, snmp)

    async def _get(self, agent: Agent, session: _Session, snmp: SnmpSession,
                   oids: list[Oid]) -> list[Varbind]:
        texts = [".".join(map(str, oid)) for oid in oids]
        values = await self._request(agent, session, lambda: snmp.get_many(texts))
        session.authenticated = True
        if not values and len(oids) > 1:
            # Perhaps an error status that gufo_snmp does not report: ask for halves.
            half = len(oids) // 2
            return (await self._get(agent, session, snmp, oids[:half])
                    + await self._get(agent, session, snmp, oids[half:]))
        return [Varbind(oid, Kind.NO_SUCH_OBJECT, None) if text not in values
                else _varbind(oid, values[text]) for oid, text in zip(oids, texts, strict=True)]

    async def _walk_column(self, agent: Agent, session: _Session, snmp: SnmpSession,
                           column: Oid, max_repetitions: int) -> Column:
        text = ".".join(map(str, column))
        rows = (snmp.getnext(text) if agent.version == "v1"
                else snmp.getbulk(text, max_repetitions))
        found: Column = {}
        cut = len(text) + 1  # gufo_snmp stops at the first OID outside the column
        last: Oid = ()
        failures = 0
        while True:
            try:
                with self._errors(agent, session):
                    # The iterator asks again from the last row after a timeout.
                    async for oid_text, value in rows:
                        try:
                            index = tuple(map(int, oid_text[cut:].split(".")))
                        except ValueError:  # the column itself: an agent that went back
                            return found
                        if index <= last:  # an agent that does not move forward
                            return found
                        found[index] = _varbind(column + index, value)
                        last = index
                        failures = 0
            except TimeoutError:
                failures += 1
                if failures > agent.retries:
                    raise self._timeout(agent, session) from None
                continue
            session.answered_at = time.monotonic()
            session.authenticated = True
            return found

    async def _request(self, agent: Agent, session: _Session,
                       request: Callable[[], Awaitable[T]]) -> T:
        """One request, tried `retries` more times after a timeout."""
        for _ in range(agent.retries + 1):
            try:
                with self._errors(agent, session):
                    answer = await request()
            except TimeoutError:
                continue
            session.answered_at = time.monotonic()
            return answer
        raise self._timeout(agent, session)

    @contextlib.contextmanager
    def _errors(self, agent: Agent, session: _Session) -> Iterator[None]:
        """gufo_snmp's errors as the engine's (a timeout passes: the caller retries)."""
        try:
            yield
        except TimeoutError:
            raise
        except SnmpAuthError:
            session.snmp = None  # rediscover: the agent may have a new engine ID or boots
            raise AuthError("SNMPv3 authentication failed (check user, auth_protocol and "
                            "auth_key)") from None
        except GufoError as exc:
            raise SnmpError(f"{type(exc).__name__.removeprefix('Py')}: {exc}") from None
        except OSError as exc:
            raise Unreachable(f"cannot send to {agent.address}: {exc.strerror or exc}") from None

    def _timeout(self, agent: Agent, session: _Session) -> SnmpError:
        snmp = session.snmp
        if agent.version == "v3":
            session.snmp = None  # discover again next time: it may be another device now
        if agent.version == "v3" and snmp is not None and not session.authenticated:
            if not snmp.get_engine_id():
                return RequestTimeout(f"no answer to SNMPv3 engine discovery within "
                                      f"{agent.timeout}s x {agent.retries + 1} tries")
            # Agents drop what they cannot decrypt: a timeout after a successful
            # discovery, before any answer, is most likely a privacy key problem.
            return AuthError("no answer to authenticated requests although the agent "
                             "answered engine discovery: check priv_protocol and priv_key")
        return RequestTimeout(f"no response within {agent.timeout}s x "
                              f"{agent.retries + 1} tries")

    async def _open(self, agent: Agent, session: _Session) -> SnmpSession:
        address = await _resolve(agent)
        session.authenticated = False
        try:
            if agent.version != "v3":
                assert agent.community is not None, "a v1/v2c agent needs a community"
                return SnmpSession(address, agent.port, version=VERSIONS[agent.version],
                                   community=agent.community.get_secret_value(),
                                   timeout=agent.timeout)
            assert agent.user is not None, "a v3 agent needs a user"
            snmp = SnmpSession(address, agent.port, version=SnmpVersion.v3,
                               user=_user(agent.user), timeout=agent.timeout)
        except OSError as exc:  # e.g. out of file descriptors
            raise SnmpError(f"cannot open a UDP socket: {exc.strerror or exc}") from None
        session.snmp = snmp  # `_timeout` tells a failed discovery from a wrong key by it
        try:
            await self._request(agent, session, snmp.refresh)  # engine ID discovery
        except BaseException:
            session.snmp = None
            raise
        return snmp


async def _resolve(agent: Agent) -> str:
    """The agent's IP address (IPv4 first, as the pysnmp engine does); gufo_snmp needs one."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            agent.host, agent.port, type=socket.SOCK_DGRAM)
    except OSError:
        raise Unreachable(f"cannot resolve {agent.host!r}") from None
    found.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(found[0][4][0])


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[GufoEngine, int]] = (
    weakref.WeakKeyDictionary())


def gufo_engine() -> AbstractAsyncContextManager[GufoEngine]:
    """The event loop's shared engine; the last user to leave closes it."""
    return shared_engine(_SHARED, GufoEngine)
