"""Buffer ingest with the durable spool against the in-memory buffer, in the same run.

The same readings (1,000 devices x 10 series) are emitted into a buffer as fast as the
loop allows, once without a journal and once with a `Spool` on disk whose sync runs
beside the ingest the way the daemon runs it (`Daemon._spool_loop`): every sync interval
the points added since the last one are encoded on the loop and written and fsynced in a
thread. The interval here is 100 ms, ten times the default, so each point carries more
sync work than in production: the ratio is a floor. Best of three rounds each.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from pathlib import Path

from bench.common import Row
from collector.buffer import Buffer
from collector.catalog import Catalog, MetricInfo
from collector.model import Device, Reading
from collector.spool import Spool, recover

DEVICES, SERIES, ROUNDS = 1000, 10, 3
READINGS = 600_000
BATCH = 2_000
"""Readings emitted between two turns of the event loop (a source's batch)."""
SYNC_INTERVAL = 0.1


def _buffer() -> Buffer:
    catalog = Catalog()
    catalog.set_metric(MetricInfo("custom:bench", frozenset({"if"}), frozenset({"Bench"})))
    buffer = Buffer(catalog, max_points=READINGS + 1, max_age=3600)
    for d in range(DEVICES):
        buffer.declare_device(Device(f"dev-{d}", "Bench"))
    return buffer


def _readings() -> list[Reading]:
    ts = int(time.time() * 1000)
    return [Reading(f"dev-{i % DEVICES}", "custom:bench", (("if", f"if{i // DEVICES % SERIES}"),),
                    ts - i % 60_000, float(i)) for i in range(READINGS)]


async def _ingest(buffer: Buffer, readings: list[Reading]) -> float:
    """Seconds to emit every reading, a batch per loop turn; the spool syncs alongside."""
    spool = buffer.journal
    stop = asyncio.Event()

    async def sync_loop() -> None:
        assert spool is not None
        while not stop.is_set():
            await asyncio.sleep(SYNC_INTERVAL)
            buffer.journal_additions()
            await spool.sync()

    syncing = asyncio.create_task(sync_loop()) if spool is not None else None
    emit = buffer.emit
    started = time.perf_counter()
    for at in range(0, len(readings), BATCH):
        for reading in readings[at:at + BATCH]:
            emit(reading)
        await asyncio.sleep(0)
    if spool is not None:  # the last interval's points go to disk too: part of the cost
        buffer.journal_additions()
        await spool.sync()
    elapsed = time.perf_counter() - started
    stop.set()
    if syncing is not None:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)
    assert buffer.buffered == len(readings), buffer.dropped
    return elapsed


async def _rounds() -> tuple[float, float, int, int]:
    readings = _readings()
    memory, spooled = [], []
    syncs = written = 0
    for _ in range(ROUNDS):
        gc.collect()
        memory.append(await _ingest(_buffer(), readings))
        with tempfile.TemporaryDirectory(prefix="bench-spool-", dir=Path.home()) as tmp:
            spool = Spool(Path(tmp), SYNC_INTERVAL)
            spool.open()
            buffer = _buffer()
            buffer.journal = spool
            gc.collect()
            spooled.append(await _ingest(buffer, readings))
            syncs, written = spool.syncs, spool.bytes_written
            assert recover(Path(tmp)).count == len(readings)  # everything is on disk
    return min(spooled), min(memory), syncs, written


def spool_ingest() -> list[Row]:
    """Readings/s into the buffer with the spool journaling, against without it."""
    spooled, memory, syncs, written = asyncio.run(_rounds())
    return [Row("buffer ingest with the spool", "readings/s", READINGS / spooled,
                READINGS / memory, "the in-memory buffer (no spool)", "ratio >= 0.8", True,
                f"{READINGS:,} readings, {DEVICES * SERIES:,} series; sync every "
                f"{SYNC_INTERVAL * 1000:.0f} ms ({syncs} syncs, {written / 1e6:.1f} MB "
                "fsynced); best of 3")]


if __name__ == "__main__":
    for row in spool_ingest():
        print(f"{row.name}: {row.collector:,.0f} {row.unit} vs {row.baseline:,.0f} "
              f"({row.baseline_name}): ratio {row.ratio:.2f}, target {row.target} -> "
              f"{'met' if row.met() else 'NOT met'}; {row.note}")
