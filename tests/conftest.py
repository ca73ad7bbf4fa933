"""Shared fixtures: free ports, the Dynatrace simulator over real HTTP on 127.0.0.1.

Fixtures for real brokers and agents live in their own plugin modules (listed below).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from collector.simulator import Simulator
from tests.helpers import TOKEN

pytest_plugins: list[str] = ["tests.mosquitto", "tests.snmpd"]


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A strict Dynatrace simulator on a free port of 127.0.0.1, token `tests.helpers.TOKEN`."""
    sim = Simulator(tokens={TOKEN})
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()
