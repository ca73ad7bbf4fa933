"""Polling on a schedule, for every polled source: each target on its own timer.

Start times are spread over the interval so targets do not all fire at once; a poll still
running when the next is due is skipped and counted, never overlapped; a failed poll backs
off (the one `Backoff` helper, from one interval up to `backoff_cap`); a global bound caps the
polls in flight. A dead or slow target therefore never delays another: it holds one slot of
the bound at most, and only its own timer waits for it.

Counted per source and target: `polls`, `polls_failed`, `polls_skipped`, `poll_seconds`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from collector.backoff import Backoff
from collector.logs import Logger, ThrottledLog
from collector.telemetry import Telemetry


@dataclass(frozen=True)
class PollJob:
    """One target: what to call and how often. `poll` returns False when it failed."""

    target: str
    interval: float
    poll: Callable[[], Awaitable[bool]]


@dataclass
class _Timer:
    job: PollJob
    backoff: Backoff
    running: asyncio.Task[None] | None = None
    hold_until: float = 0.0
    """A failed poll holds the next ones back until then (loop time)."""
    skipping: bool = False
    skipped_last: bool = False


class PollScheduler:
    """Runs `PollJob`s until cancelled. One per source; `name` labels its telemetry."""

    def __init__(self, name: str, telemetry: Telemetry, log: Logger, *,
                 max_concurrency: int, backoff_cap: float = 300.0) -> None:
        self.name = name
        self._log = log
        self._throttled = ThrottledLog(log)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._backoff_cap = backoff_cap
        labels = ("source", "target")
        self._polls = telemetry.counter("polls", "Polls completed", labels)
        self._failed = telemetry.counter("polls_failed", "Polls that failed", labels)
        self._skipped = telemetry.counter(
            "polls_skipped", "Polls skipped because the previous one was still running", labels)
        self._seconds = telemetry.counter("poll_seconds", "Time spent polling", labels)

    async def run(self, jobs: Sequence[PollJob]) -> None:
        async with asyncio.TaskGroup() as tasks:
            for i, job in enumerate(jobs):
                timer = _Timer(job, Backoff(initial=job.interval,
                                            cap=max(job.interval, self._backoff_cap)))
                offset = job.interval * i / len(jobs)
                tasks.create_task(self._tick(timer, offset, tasks),
                                  name=f"poll-timer:{self.name}:{job.target}")

    async def _tick(self, timer: _Timer, offset: float, tasks: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        interval = timer.job.interval
        due = loop.time() + offset
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            if timer.running is not None and not timer.running.done():
                self._skip(timer)
            else:
                # A whole interval without an overrun: the target keeps up again.
                timer.skipping = timer.skipping and timer.skipped_last
                timer.skipped_last = False
                if now >= timer.hold_until:
                    timer.running = tasks.create_task(
                        self._poll(timer), name=f"poll:{self.name}:{timer.job.target}")
            # The next tick on this target's grid; ticks missed while the loop was busy are
            # dropped, not fired in a burst.
            due += interval * max(1, math.ceil((now - due) / interval + 1e-9))

    def _skip(self, timer: _Timer) -> None:
        self._skipped.labels(self.name, timer.job.target).inc()
        if not timer.skipping:  # logged once while the target keeps overrunning
            self._log.warning("poll skipped: the previous one is still running",
                              source=self.name, target=timer.job.target,
                              interval_s=timer.job.interval)
        timer.skipping = timer.skipped_last = True

    async def _poll(self, timer: _Timer) -> None:
        job = timer.job
        loop = asyncio.get_running_loop()
        async with self._slots:
            started = loop.time()
            try:
                ok = await job.poll()
            except Exception:
                # A bug must not stop the other targets; it is logged and counted as failed.
                self._throttled.warning(("error", job.target), "poll raised an exception",
                                        source=self.name, target=job.target, exc_info=True)
                ok = False
            ended = loop.time()
        self._polls.labels(self.name, job.target).inc()
        self._seconds.labels(self.name, job.target).inc(ended - started)
        if ok:
            timer.backoff.reset()
            timer.hold_until = 0.0
        else:
            self._failed.labels(self.name, job.target).inc()
            # The delay counts from the failed poll's start: after one failure the next tick
            # still polls; repeated failures space polls out up to `backoff_cap`.
            timer.hold_until = started + timer.backoff.next_delay()
