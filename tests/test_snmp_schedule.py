"""The shared poll scheduler: own timer per target, spread starts, skip-and-count, bound, backoff.

Jobs here are plain coroutines (the scheduler knows no protocol); the SNMP tests run it
against real agents. Assertions compare targets with each other, never with wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from structlog.testing import capture_logs

from collector.logs import get_logger
from collector.sources.schedule import PollJob, PollScheduler
from collector.telemetry import Telemetry
from tests.helpers import wait_for

INTERVAL = 0.05


class Recorder:
    """Counts a job's polls and how many of them ran at the same time."""

    def __init__(self, work: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.started: list[float] = []
        self.finished = 0
        self.running = 0
        self.most_running = 0
        self._work = work

    async def __call__(self) -> bool:
        self.started.append(asyncio.get_running_loop().time())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            return await self._work() if self._work else True
        finally:
            self.running -= 1
            self.finished += 1


@asynccontextmanager
async def scheduled(jobs: Sequence[PollJob], telemetry: Telemetry,
                    **kwargs: int) -> AsyncIterator[None]:
    scheduler = PollScheduler("test", telemetry, get_logger("test"),
                              max_concurrency=kwargs.get("max_concurrency", 100),
                              backoff_cap=kwargs.get("backoff_cap", 300))
    task = asyncio.create_task(scheduler.run(jobs))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def value(telemetry: Telemetry, name: str, target: str) -> float:
    return telemetry.families[name].value("test", target)


async def test_a_hung_and_a_slow_target_never_delay_the_others() -> None:
    async def hang() -> bool:
        await asyncio.Event().wait()
        return True

    async def slow() -> bool:
        await asyncio.sleep(INTERVAL * 3.5)
        return True

    fast, slower, hung = Recorder(), Recorder(slow), Recorder(hang)
    telemetry = Telemetry()
    jobs = [PollJob("hung", INTERVAL, hung), PollJob("slow", INTERVAL, slower),
            PollJob("fast", INTERVAL, fast)]
    with capture_logs() as logs:
        async with scheduled(jobs, telemetry):
            await wait_for(lambda: fast.finished >= 20, what="20 polls of the fast target")
    # The fast target polled on every tick while the others held their own timer only.
    assert len(hung.started) == 1 and hung.most_running == 1
    assert slower.most_running == 1 and len(slower.started) <= fast.finished // 3 + 1
    assert value(telemetry, "polls_skipped", "hung") >= 15
    assert value(telemetry, "polls_skipped", "slow") >= 10
    assert value(telemetry, "polls_skipped", "fast") == 0
    assert value(telemetry, "polls", "fast") == fast.finished
    # Overrunning is logged once per target, however many polls it skips.
    assert sorted(e["target"] for e in logs if e["event"].startswith("poll skipped")) == [
        "hung", "slow"]


async def test_start_times_are_spread_over_the_interval() -> None:
    recorders = [Recorder() for _ in range(4)]
    jobs = [PollJob(f"t{i}", INTERVAL * 4, r) for i, r in enumerate(recorders)]
    async with scheduled(jobs, Telemetry()):
        await wait_for(lambda: all(r.started for r in recorders), what="first polls")
    firsts = [r.started[0] for r in recorders]
    assert firsts == sorted(firsts)
    assert len(set(firsts)) == 4


async def test_the_concurrency_bound_holds() -> None:
    in_flight = 0
    most = 0

    async def work() -> bool:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(INTERVAL / 2)
        in_flight -= 1
        return True

    recorders = [Recorder(work) for _ in range(10)]
    jobs = [PollJob(f"t{i}", INTERVAL / 10, r) for i, r in enumerate(recorders)]
    async with scheduled(jobs, Telemetry(), max_concurrency=2):
        await wait_for(lambda: sum(r.finished for r in recorders) >= 20, what="20 polls")
    assert most == 2


async def test_failing_targets_back_off_and_exceptions_are_contained() -> None:
    async def fail() -> bool:
        return False

    async def broken() -> bool:
        raise RuntimeError("a bug in a poll")

    healthy, failing, raising = Recorder(), Recorder(fail), Recorder(broken)
    telemetry = Telemetry()
    jobs = [PollJob("healthy", INTERVAL, healthy), PollJob("failing", INTERVAL, failing),
            PollJob("raising", INTERVAL, raising)]
    async with scheduled(jobs, telemetry, backoff_cap=1):
        await wait_for(lambda: healthy.finished >= 30, what="30 healthy polls")
    assert 2 <= failing.finished < healthy.finished / 2
    assert 2 <= raising.finished < healthy.finished / 2
    assert value(telemetry, "polls_failed", "raising") == raising.finished
    assert value(telemetry, "polls_failed", "healthy") == 0
    assert value(telemetry, "polls_skipped", "failing") == 0  # held back, not overlapping


async def test_a_target_recovers_from_backoff() -> None:
    outcomes = iter([False] * 3)

    async def flaky() -> bool:
        return next(outcomes, True)

    flaky_target, healthy = Recorder(flaky), Recorder()
    jobs = [PollJob("flaky", INTERVAL, flaky_target), PollJob("healthy", INTERVAL, healthy)]
    async with scheduled(jobs, Telemetry(), backoff_cap=1):
        await wait_for(lambda: flaky_target.finished >= 4, what="recovery")
        seen = healthy.finished
        at_recovery = flaky_target.finished
        await wait_for(lambda: healthy.finished >= seen + 10, what="10 more polls")
    # After recovering it polls on every tick again, like the healthy one.
    assert flaky_target.finished - at_recovery >= 8
