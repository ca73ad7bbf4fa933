"""What every benchmark shares: a result row, CPU/wall timers, a simulator subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

BENCH_TOKEN = "dt0c01.BENCH.0123456789"


@dataclass
class Row:
    """One line of the table: the collector's figure beside a same-run baseline."""

    name: str
    unit: str
    collector: float
    baseline: float
    baseline_name: str
    target: str
    higher_is_better: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        """collector / baseline (for 'lower is better' rows too: 2.0 means twice the cost)."""
        return self.collector / self.baseline if self.baseline else float("nan")

    def met(self) -> bool | None:
        """Whether the target holds; targets read 'ratio >= x', 'ratio <= x' or 'value <= x'."""
        kind, _, limit_text = self.target.partition(" ")
        if not limit_text:
            return None
        op, _, number = limit_text.partition(" ")
        limit = float(number)
        value = self.ratio if kind == "ratio" else self.collector
        return value >= limit if op == ">=" else value <= limit


class Timer:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def simulator_process(max_body_bytes: int = 15360) -> AsyncIterator[str]:
    """The project's simulator in its own process (so it does not share our CPU)."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "simulate", "--port", str(port), "--token",
        BENCH_TOKEN, "--max-body-bytes", str(max_body_bytes),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{url}/_simulator/stats") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        await proc.wait()


async def reset_simulator(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/_simulator/reset") as answer:
        answer.raise_for_status()
