"""The `Engine` on pysnmp 7's asyncio API.

One pysnmp `SnmpEngine` per event loop, created inside the loop and shared by every SNMP
source running there (`pysnmp_engine()`); it is closed when the last of them stops.
Transport targets are created once per agent and cached.

SNMPv3: each agent's engine ID is discovered once and given to pysnmp with the user, so
keys are localised per agent. Without that, pysnmp keeps one entry per user name and swaps
its keys whenever two devices use the same user name with different keys.
"""

from __future__ import annotations

import asyncio
import ipaddress
import weakref
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from pysnmp.carrier.error import CarrierError
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    USM_AUTH_HMAC96_MD5,
    USM_AUTH_HMAC96_SHA,
    USM_AUTH_HMAC128_SHA224,
    USM_AUTH_HMAC192_SHA256,
    USM_AUTH_HMAC256_SHA384,
    USM_AUTH_HMAC384_SHA512,
    USM_AUTH_NONE,
    USM_PRIV_CBC56_DES,
    USM_PRIV_CBC168_3DES,
    USM_PRIV_CFB128_AES,
    USM_PRIV_CFB192_AES,
    USM_PRIV_CFB192_AES_BLUMENTHAL,
    USM_PRIV_CFB256_AES,
    USM_PRIV_CFB256_AES_BLUMENTHAL,
    USM_PRIV_NONE,
    CommunityData,
    ContextData,
    SnmpEngine,
    Udp6TransportTarget,
    UdpTransportTarget,
    UsmUserData,
    bulk_cmd,
    get_cmd,
    next_cmd,
)
from pysnmp.proto import errind, rfc1902, rfc1905

from collector.sources.snmp.engine import (
    Agent,
    AgentError,
    AuthError,
    Column,
    Kind,
    Oid,
    RequestTimeout,
    SnmpError,
    Unreachable,
    Varbind,
    shared_engine,
)

AUTH_PROTOCOLS = {
    "none": USM_AUTH_NONE,
    "MD5": USM_AUTH_HMAC96_MD5,
    "SHA": USM_AUTH_HMAC96_SHA,
    "SHA-224": USM_AUTH_HMAC128_SHA224,
    "SHA-256": USM_AUTH_HMAC192_SHA256,
    "SHA-384": USM_AUTH_HMAC256_SHA384,
    "SHA-512": USM_AUTH_HMAC384_SHA512,
}
# Net-SNMP's names: AES-192/AES-256 extend the key as draft-blumenthal-aes-usm says;
# the C variants as Cisco does (Reeder).
PRIV_PROTOCOLS = {
    "none": USM_PRIV_NONE,
    "DES": USM_PRIV_CBC56_DES,
    "3DES": USM_PRIV_CBC168_3DES,
    "AES": USM_PRIV_CFB128_AES,
    "AES-128": USM_PRIV_CFB128_AES,
    "AES-192": USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES-256": USM_PRIV_CFB256_AES_BLUMENTHAL,
    "AES-192C": USM_PRIV_CFB192_AES,
    "AES-256C": USM_PRIV_CFB256_AES,
}

GET_CHUNK = 32
"""Scalars per GET request; a tooBig answer halves it."""
NO_SUCH_NAME, TOO_BIG = 2, 1
SYS_UPTIME: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)
DISCOVERY_USER = "dt-collector-discovery"
"""A user no agent knows: its request is answered with a report carrying the engine ID."""

_AUTH_FAILURES = (
    errind.WrongDigest, errind.UnknownUserName, errind.AuthenticationError,
    errind.AuthenticationFailure, errind.DecryptionError, errind.UnsupportedSecurityLevel,
    errind.UnknownSecurityName, errind.UnknownEngineID, errind.NotInTimeWindow,
    errind.UnsupportedAuthProtocol, errind.UnsupportedPrivProtocol,
)
_KINDS: tuple[tuple[type[Any], Kind], ...] = (
    # Order matters: the specific classes subclass the generic ones.
    (rfc1905.NoSuchObject, Kind.NO_SUCH_OBJECT),
    (rfc1905.NoSuchInstance, Kind.NO_SUCH_INSTANCE),
    (rfc1905.EndOfMibView, Kind.END_OF_MIB_VIEW),
    (rfc1902.Counter64, Kind.COUNTER64),
    (rfc1902.Counter32, Kind.COUNTER32),
    (rfc1902.TimeTicks, Kind.TIMETICKS),
    (rfc1902.Gauge32, Kind.GAUGE32),
    (rfc1902.Unsigned32, Kind.GAUGE32),
    (rfc1902.Integer32, Kind.INTEGER),
    (rfc1902.IpAddress, Kind.OTHER),
    (rfc1902.Opaque, Kind.OTHER),
    (rfc1902.OctetString, Kind.OCTETS),
)
_NUMERIC = {Kind.COUNTER64, Kind.COUNTER32, Kind.TIMETICKS, Kind.GAUGE32, Kind.INTEGER}

Command = Callable[..., Awaitable[tuple[Any, Any, Any, Any]]]


def _varbind(name: Any, value: Any) -> Varbind:
    oid = tuple(name)
    for cls, kind in _KINDS:
        if isinstance(value, cls):
            if kind in _NUMERIC:
                return Varbind(oid, kind, int(value))
            return Varbind(oid, kind, bytes(value) if kind is Kind.OCTETS else None)
    return Varbind(oid, Kind.OTHER, None)


def _request_varbinds(oids: Sequence[Oid]) -> list[tuple[rfc1902.ObjectName, rfc1902.Null]]:
    return [(rfc1902.ObjectName(oid), rfc1902.Null("")) for oid in oids]


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


class PysnmpEngine:
    """`Engine` on pysnmp. Create it inside the running event loop it will serve."""

    def __init__(self) -> None:
        asyncio.get_running_loop()  # fail early when created outside a loop
        self._snmp = SnmpEngine()
        self._transports: dict[tuple[str, int, float, int], Any] = {}
        self._auth: dict[Agent, CommunityData | UsmUserData] = {}
        self._contexts: dict[str, ContextData] = {}
        self._engine_ids: dict[tuple[str, int], Any] = {}
        self._authenticated: set[Agent] = set()
        self._discovering: dict[tuple[Any, ...], Any] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._snmp.observer.register_observer(
            self._observe_report, "rfc3412.prepareDataElements:internal")

    async def close(self) -> None:
        dispatcher = self._snmp.transport_dispatcher
        if dispatcher is None:
            return
        # Stop reading first and deliver what was already read: a datagram handed to the
        # dispatcher after it closed would be logged as an error by asyncio.
        for domain in (UdpTransportTarget.TRANSPORT_DOMAIN, Udp6TransportTarget.TRANSPORT_DOMAIN):
            try:
                transport = dispatcher.get_transport(domain)
            except CarrierError:  # that address family was never used
                continue
            if transport.transport is not None:
                transport.transport.close()
        await asyncio.sleep(0)
        self._snmp.close_dispatcher()
        await asyncio.sleep(0)  # let the dispatcher's cancelled timer task finish

    async def get(self, agent: Agent, oids: Sequence[Oid]) -> list[Varbind]:
        found: list[Varbind] = []
        for start in range(0, len(oids), GET_CHUNK):
            found.extend(await self._get(agent, list(oids[start:start + GET_CHUNK])))
        return found

    async def walk(self, agent: Agent, columns: Sequence[Oid],
                   max_repetitions: int) -> dict[Oid, Column]:
        found: dict[Oid, Column] = {column: {} for column in columns}
        cursors = {column: column for column in columns}
        active = list(cursors)
        while active:
            asked = [cursors[c] for c in active]
            if agent.version == "v1":
                status, index, varbinds = await self._request(agent, next_cmd, asked)
            else:
                status, index, varbinds = await self._request(agent, bulk_cmd, asked,
                                                              0, max_repetitions)
            if status == TOO_BIG and max_repetitions > 1:
                max_repetitions //= 2
                continue
            if status == NO_SUCH_NAME and agent.version == "v1" and 0 < index <= len(active):
                del active[index - 1]  # SNMPv1's way of saying that column ended
                continue
            if status:
                raise AgentError(f"the agent answered error status {status} to a walk")
            finished: set[Oid] = set()
            progressed = False
            # GETBULK answers row by row: repetition r holds one varbind per asked column.
            for i, varbind in enumerate(varbinds):
                column = active[i % len(active)]
                if column in finished:
                    continue
                if (varbind.kind is Kind.END_OF_MIB_VIEW or varbind.oid[:len(column)] != column
                        or varbind.oid <= cursors[column]):
                    finished.add(column)
                    continue
                found[column][varbind.oid[len(column):]] = varbind
                cursors[column] = varbind.oid
                progressed = True
            if not progressed:
                break
            active = [c for c in active if c not in finished]
        return found

    async def _get(self, agent: Agent, oids: list[Oid]) -> list[Varbind]:
        status, index, varbinds = await self._request(agent, get_cmd, oids)
        if not status:
            return varbinds
        if status == TOO_BIG and len(oids) > 1:
            half = len(oids) // 2
            return await self._get(agent, oids[:half]) + await self._get(agent, oids[half:])
        if status == NO_SUCH_NAME and agent.version == "v1" and 0 < index <= len(oids):
            # SNMPv1 fails the whole GET for one missing OID: ask again without it.
            k = index - 1
            rest = await self._get(agent, oids[:k] + oids[k + 1:]) if len(oids) > 1 else []
            return [*rest[:k], Varbind(oids[k], Kind.NO_SUCH_OBJECT, None), *rest[k:]]
        raise AgentError(f"the agent answered error status {status} to a GET")

    async def _request(self, agent: Agent, command: Command, oids: Sequence[Oid],
                       *args: int) -> tuple[int, int, list[Varbind]]:
        target = await self._transport(agent)
        auth = await self._auth_data(agent, target)
        try:
            indication, status, index, varbinds = await command(
                self._snmp, auth, target, self._context(agent), *args,
                *_request_varbinds(oids), lookupMib=False)
        except CarrierError as exc:  # the socket refused to send (no route, ...)
            # pysnmp packs a whole traceback into the message; its last line is the cause.
            cause = str(exc).strip().rsplit(";", 1)[-1].strip()
            raise Unreachable(f"cannot send to {agent.address}: {cause}") from None
        except PySnmpError as exc:
            raise SnmpError(str(exc)) from None
        if indication:
            raise self._error(agent, indication)
        if agent.version == "v3":
            self._authenticated.add(agent)
        return int(status), int(index), [_varbind(n, v) for n, v in varbinds]

    async def _transport(self, agent: Agent) -> Any:
        key = (agent.host, agent.port, agent.timeout, agent.retries)
        target = self._transports.get(key)
        if target is None:
            kinds = [Udp6TransportTarget] if _is_ipv6(agent.host) else [
                UdpTransportTarget, Udp6TransportTarget]  # a name may have AAAA only
            for kind in kinds:
                try:
                    target = await kind.create((agent.host, agent.port),
                                               timeout=agent.timeout, retries=agent.retries)
                    break
                except PySnmpError:
                    continue
            else:
                raise Unreachable(f"cannot resolve {agent.host!r}")
            self._transports[key] = target
        return target

    def _context(self, agent: Agent) -> ContextData:
        name = agent.user.context if agent.user else ""
        context = self._contexts.get(name)
        if context is None:
            context = self._contexts[name] = ContextData(contextName=name)
        return context

    async def _auth_data(self, agent: Agent, target: Any) -> CommunityData | UsmUserData:
        auth = self._auth.get(agent)
        if auth is not None:
            return auth
        if agent.version == "v3":
            # One engine ID discovery per agent, however many requests wait for it.
            async with self._locks.setdefault((agent.host, agent.port), asyncio.Lock()):
                auth = self._auth.get(agent)
                if auth is None:
                    auth = self._auth[agent] = await self._usm_user(agent, target)
            return auth
        assert agent.community is not None, "a v1/v2c agent needs a community"
        auth = self._auth[agent] = CommunityData(agent.community.get_secret_value(),
                                                 mpModel=0 if agent.version == "v1" else 1)
        return auth

    async def _usm_user(self, agent: Agent, target: Any) -> UsmUserData:
        user = agent.user
        assert user is not None, "a v3 agent needs a user"
        return UsmUserData(
            user.name,
            authKey=user.auth_key.get_secret_value() if user.auth_key else None,
            privKey=user.priv_key.get_secret_value() if user.priv_key else None,
            authProtocol=AUTH_PROTOCOLS[user.auth_protocol],
            privProtocol=PRIV_PROTOCOLS[user.priv_protocol],
            securityEngineId=self._engine_ids.get((agent.host, agent.port))
            or await self._discover_engine_id(agent, target),
        )

    async def _discover_engine_id(self, agent: Agent, target: Any) -> Any:
        address = tuple(target.transport_address)[:2]
        self._discovering[address] = None
        try:
            indication, _, _, _ = await get_cmd(
                self._snmp, UsmUserData(DISCOVERY_USER), target, ContextData(),
                *_request_varbinds([SYS_UPTIME]), lookupMib=False)
            engine_id = self._discovering.get(address)
        finally:
            self._discovering.pop(address, None)
        if engine_id is None:
            if isinstance(indication, errind.RequestTimedOut):
                raise RequestTimeout(f"no answer to SNMPv3 engine discovery within "
                                     f"{agent.timeout}s x {agent.retries + 1} tries")
            raise SnmpError(f"SNMPv3 engine discovery failed: {indication}")
        self._engine_ids[agent.host, agent.port] = engine_id
        return engine_id

    def _observe_report(self, snmp: Any, point: str, variables: dict[str, Any],
                        ctx: Any) -> None:
        address = tuple(variables["transportAddress"])[:2]
        if address in self._discovering and variables.get("securityEngineId"):
            self._discovering[address] = variables["securityEngineId"]

    def _error(self, agent: Agent, indication: Any) -> SnmpError:
        if isinstance(indication, errind.RequestTimedOut):
            authenticated = agent in self._authenticated
            if agent.version == "v3":
                self._forget_v3(agent)  # discover again next time: it may be another device
            if agent.version == "v3" and not authenticated:
                # Agents drop what they cannot decrypt: a timeout after a successful
                # discovery, before any answer, is most likely a privacy key problem.
                return AuthError("no answer to authenticated requests although the agent "
                                 "answered engine discovery: check priv_protocol and priv_key")
            return RequestTimeout(f"no response within {agent.timeout}s x "
                                  f"{agent.retries + 1} tries")
        if isinstance(indication, _AUTH_FAILURES):
            self._forget_v3(agent)  # rediscover: the agent may have a new engine ID
            return AuthError(f"SNMPv3 authentication failed: {indication} "
                             "(check user, auth_protocol and auth_key)")
        return SnmpError(str(indication))

    def _forget_v3(self, agent: Agent) -> None:
        self._engine_ids.pop((agent.host, agent.port), None)
        self._auth.pop(agent, None)
        self._authenticated.discard(agent)


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[PysnmpEngine, int]] = (
    weakref.WeakKeyDictionary())


def pysnmp_engine() -> AbstractAsyncContextManager[PysnmpEngine]:
    """The event loop's shared engine; the last user to leave closes it."""
    return shared_engine(_SHARED, PysnmpEngine)
