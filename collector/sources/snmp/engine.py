"""The small interface between the SNMP source and an SNMP library: get scalars, walk columns.

The source speaks only these types; an engine (pysnmp, gufo_snmp) turns library values
into `Varbind`s and library errors into the `SnmpError` classes below, and never logs
credentials. Which engine polls a target is chosen in the config (`engine:`).
"""

from __future__ import annotations

import asyncio
import enum
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, TypeVar

from pydantic import SecretStr

Oid = tuple[int, ...]


class Kind(enum.Enum):
    """The SNMP type of a value, as far as the source cares."""

    INTEGER = "integer"
    COUNTER32 = "counter32"
    COUNTER64 = "counter64"
    GAUGE32 = "gauge32"
    TIMETICKS = "timeticks"
    NUMBER = "number"
    """An integer whose SNMP type the library does not report (gufo_snmp): INTEGER,
    Counter32/64, Gauge32 or TimeTicks."""
    OCTETS = "octets"
    OTHER = "other"  # OID, IpAddress, Opaque, Null: never a number
    NO_SUCH_OBJECT = "no_such_object"
    NO_SUCH_INSTANCE = "no_such_instance"
    END_OF_MIB_VIEW = "end_of_mib_view"


class Varbind(NamedTuple):
    oid: Oid
    kind: Kind
    value: int | bytes | None


Column = dict[Oid, Varbind]
"""A column walked: row index (what follows the column's OID) -> varbind, in the agent's order."""


@dataclass(frozen=True)
class UsmUser:
    """SNMPv3 user; protocols as written in the config (`SHA-256`, `AES-128`, ...)."""

    name: str
    auth_protocol: str = "none"
    auth_key: SecretStr | None = field(default=None, repr=False)
    priv_protocol: str = "none"
    priv_key: SecretStr | None = field(default=None, repr=False)
    context: str = ""


@dataclass(frozen=True)
class Agent:
    """Where and how to reach one agent. Hashable, so engines can cache per agent."""

    host: str
    port: int
    version: Literal["v1", "v2c", "v3"]
    community: SecretStr | None = field(default=None, repr=False)
    user: UsmUser | None = None
    timeout: float = 5.0
    """Seconds per try; a request takes at most timeout x (retries + 1)."""
    retries: int = 1

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class SnmpError(Exception):
    """A request failed as a whole. `reason` is the label it is counted under."""

    reason = "error"


class RequestTimeout(SnmpError):
    reason = "timeout"


class AuthError(SnmpError):
    """SNMPv3 authentication or privacy failed (wrong user, key or protocol)."""

    reason = "auth"


class Unreachable(SnmpError):
    """The address could not be resolved or used."""

    reason = "unreachable"


class AgentError(SnmpError):
    """The agent answered with an error status (genErr, tooBig, ...)."""

    reason = "agent_error"


class Engine(Protocol):
    """An SNMP library behind the source; one per event loop, shared by its sources."""

    async def get(self, agent: Agent, oids: Sequence[Oid]) -> list[Varbind]:
        """One varbind per OID, in order; missing ones have a NO_SUCH_* kind."""
        ...

    async def walk(self, agent: Agent, columns: Sequence[Oid],
                   max_repetitions: int) -> dict[Oid, Column]:
        """Every instance under each column (GETBULK; GETNEXT for v1), not beyond it; one
        entry per column asked."""
        ...


class Closable(Protocol):
    async def close(self) -> None: ...


E = TypeVar("E", bound=Closable)
SharedEngines = weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[E, int]]


@asynccontextmanager
async def shared_engine(shared: SharedEngines[E], factory: Callable[[], E]) -> AsyncIterator[E]:
    """The event loop's one engine of a kind; the last user to leave closes it."""
    loop = asyncio.get_running_loop()
    engine, users = shared.get(loop) or (factory(), 0)
    shared[loop] = (engine, users + 1)
    try:
        yield engine
    finally:
        engine, users = shared[loop]
        if users > 1:
            shared[loop] = (engine, users - 1)
        else:
            del shared[loop]
            await engine.close()
