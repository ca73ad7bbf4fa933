"""The durable spool: restart, crash (kill -9), corruption, compaction, unwritable disk."""

from __future__ import annotations

import asyncio
import errno
import signal
import tempfile
from array import array
from collections import Counter
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from collector.buffer import Buffer, Piece
from collector.catalog import Catalog, MetricInfo
from collector.model import Device, Reading
from collector.simulator import Simulator
from collector.spool import SeriesKey, Spool, recover
from tests.helpers import TOKEN, wait_for
from tests.test_cli import start

NOW = 1_800_000_000.0


def journaled_buffer(directory: Path) -> tuple[Buffer, Spool]:
    catalog = Catalog()
    catalog.set_metric(MetricInfo("custom:m", frozenset({"k"}), frozenset({"T"})))
    buffer = Buffer(catalog, max_points=100, max_age=600, clock=lambda: NOW)
    spool = Spool(directory)
    spool.open()
    buffer.journal = spool
    buffer.declare_device(Device("d1", "T", display_name="Device one", tags=("a",),
                                 properties={"p": "v"}))
    return buffer, spool


async def sync(buffer: Buffer, spool: Spool, *, snapshot: bool = False) -> None:
    """What the daemon does every sync interval (or to compact: a snapshot)."""
    if snapshot:
        buffer.journal_caught_up()
        await spool.sync(buffer.snapshot(), dict(buffer.catalog.devices))
    else:
        buffer.journal_additions()
        await spool.sync()


def journal_sync(buffer: Buffer, spool: Spool, loop: asyncio.AbstractEventLoop, *,
                 snapshot: bool = False) -> None:
    loop.run_until_complete(sync(buffer, spool, snapshot=snapshot or spool.needs_snapshot))


def emit(buffer: Buffer, n: int, start: int = 0, key: str = "x") -> None:
    for i in range(start, start + n):
        buffer.emit(Reading("d1", "custom:m", (("k", key),), int(NOW * 1000) - 1000 + i,
                            float(i)))


def live(points: dict[SeriesKey, tuple[array[int], array[float]]]) -> dict[str, list[float]]:
    """Values per dimension value of `k`."""
    return {key[2][0][1]: sorted(vs) for key, (_, vs) in points.items()}


async def test_added_minus_delivered_is_what_comes_back(tmp_path: Path) -> None:
    buffer, spool = journaled_buffer(tmp_path)
    emit(buffer, 10)
    emit(buffer, 3, key="y")
    await sync(buffer, spool)
    batch = buffer.take("d1")
    assert batch is not None
    delivered = next(p for p in batch.pieces if p.series.dimensions == (("k", "x"),))
    buffer.accept(delivered)
    for piece in batch.pieces:
        if piece is not delivered:
            buffer.keep(piece)
    emit(buffer, 2, start=100)
    await sync(buffer, spool)
    recovered = recover(tmp_path)
    assert live(recovered.points) == {"x": [100.0, 101.0], "y": [0.0, 1.0, 2.0]}
    assert recovered.devices["d1"] == Device("d1", "T", display_name="Device one",
                                             tags=("a",), properties={"p": "v"})
    assert recovered.set_aside == []


async def test_points_in_flight_at_a_crash_come_back(tmp_path: Path) -> None:
    buffer, spool = journaled_buffer(tmp_path)
    emit(buffer, 4)
    await sync(buffer, spool)
    assert buffer.take("d1") is not None  # in flight when the process dies
    await sync(buffer, spool)
    assert live(recover(tmp_path).points) == {"x": [0.0, 1.0, 2.0, 3.0]}
    # A snapshot taken while they are in flight keeps them too.
    await sync(buffer, spool, snapshot=True)
    assert live(recover(tmp_path).points) == {"x": [0.0, 1.0, 2.0, 3.0]}


async def test_snapshot_starts_a_new_generation_and_deletes_the_old(tmp_path: Path) -> None:
    buffer, spool = journaled_buffer(tmp_path)
    emit(buffer, 5)
    await sync(buffer, spool)
    batch = buffer.take("d1")
    assert batch is not None
    for piece in batch.pieces:
        buffer.accept(piece)
    emit(buffer, 2, start=50)
    await sync(buffer, spool, snapshot=True)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gen-00000001.log"]
    emit(buffer, 1, start=60)
    await sync(buffer, spool)
    assert live(recover(tmp_path).points) == {"x": [50.0, 51.0, 60.0]}


async def test_corrupt_and_truncated_records_are_set_aside(tmp_path: Path) -> None:
    buffer, spool = journaled_buffer(tmp_path)
    emit(buffer, 3)
    await sync(buffer, spool)
    emit(buffer, 3, start=10)
    await sync(buffer, spool)
    path = tmp_path / "gen-00000000.log"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # damage the last record
    path.write_bytes(bytes(data))
    recovered = recover(tmp_path)
    assert live(recovered.points) == {"x": [0.0, 1.0, 2.0]}  # the good prefix is kept
    assert len(recovered.set_aside) == 1
    assert recovered.set_aside[0].name.startswith("gen-00000000.log.corrupt-")
    assert recovered.set_aside[0].exists()
    assert not path.exists()

    (tmp_path / "gen-00000005.log").write_bytes(b"DTS1\x10\x00")  # truncated header
    again = recover(tmp_path)
    assert again.points == {}
    assert again.set_aside[0].name.startswith("gen-00000005.log.corrupt-")


async def test_unwritable_spool_is_counted_and_memory_goes_on(tmp_path: Path) -> None:
    buffer, spool = journaled_buffer(tmp_path)
    (tmp_path / "gen-00000000.log").mkdir()  # writes to it fail, as root too
    emit(buffer, 3)
    await sync(buffer, spool)
    assert spool.write_errors == 1
    assert spool.needs_snapshot
    assert buffer.buffered == 3
    (tmp_path / "gen-00000000.log").rmdir()
    await sync(buffer, spool, snapshot=True)
    assert live(recover(tmp_path).points) == {"x": [0.0, 1.0, 2.0]}


async def test_kill_9_then_restart_delivers_the_spooled_points(
        simulator: Simulator, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"dynatrace:\n  url: {simulator.url}\n  token: {TOKEN}\n  timeout: 1s\n"
        "buffer:\n  flush_interval: 60s\n  shutdown_timeout: 5s\n"
        f"  spool:\n    path: {spool_dir}\n    sync_interval: 100ms\n"
        "health:\n  listen: ''\nlog:\n  format: json\n  level: debug\n"
        "metrics:\n  custom:fake.value:\n    display_name: Fake\n    types: [Fake]\n"
        "sources:\n  - type: fake\n    device: dev-1\n    device_type: Fake\n"
        "    metric: custom:fake.value\n    count: 5\n    interval: 0.02\n")
    first = await start("run", "-c", str(config))
    await wait_for(lambda: "emitted 5" in first.stderr, timeout=30, what="5 readings")
    await asyncio.sleep(0.5)  # a few sync intervals: the 5 points are on disk
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert simulator.points() == []  # flush_interval is 60 s: nothing was sent

    second = await start("run", "-c", str(config))
    await wait_for(lambda: "emitted 5" in second.stderr, timeout=30, what="5 more readings")
    assert await second.stop(signal.SIGTERM) == 0
    points = simulator.points()
    assert sorted(p.value for p in points) == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    assert len({p.timestamp_ms for p in points}) == 10
    assert '"event": "spool restored"' in second.stderr
    # Everything was delivered, so what the spool holds now is nothing.
    assert recover(spool_dir).points == {}


def multiset(points: dict[SeriesKey, tuple[array[int], array[float]]]
             ) -> Counter[tuple[SeriesKey, int, float]]:
    return Counter((key, t, v) for key, (ts, vs) in points.items()
                   for t, v in zip(ts, vs, strict=True))


Op = tuple[str, int]
ops = st.lists(st.tuples(st.sampled_from(
    ["emit", "emit", "emit", "old", "take", "take", "accept", "keep", "keep", "reject",
     "split", "expire", "forget", "sync", "sync", "sync", "snapshot", "fail"]),
    st.integers(0, 50)),
    min_size=8, max_size=60)


@settings(max_examples=200, deadline=None)
@given(ops)
# Expired while more came in; evicted so often that a series' arrays were compacted.
@example([("sync", 0), ("old", 3), ("sync", 0), ("expire", 10), ("emit", 5), ("sync", 0)])
@example([("sync", 0), *[("emit", 11)] * 10, ("sync", 0), *[("emit", 11)] * 15, ("sync", 0)])
# A piece split for the body size, its halves delivered.
@example([("sync", 0), ("emit", 11), ("take", 1), ("split", 0), *[("accept", 0)] * 4,
          ("sync", 0)])
# A point dropped unjournaled, then the same point again (a QoS 1 repeat).
@example([("sync", 0), ("emit", 1), ("forget", 0), ("emit", 1)])
def test_what_a_sync_leaves_on_disk_is_what_the_buffer_holds(steps: list[Op]) -> None:
    # Whatever happens between syncs (points added, taken, delivered, put back, rejected,
    # evicted, expired; a write that fails), after a sync the spool rebuilds exactly the
    # points the buffer holds, in flight included.
    now = [NOW]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        catalog = Catalog()
        catalog.set_metric(MetricInfo("custom:m", frozenset({"k"}), frozenset({"T"})))
        buffer = Buffer(catalog, max_points=40, max_age=600, clock=lambda: now[0])
        spool = Spool(directory)
        spool.open()
        buffer.journal = spool
        buffer.declare_device(Device("d1", "T"))
        buffer.declare_device(Device("d2", "T"))
        flying: list[Piece] = []
        loop = asyncio.new_event_loop()
        try:
            for step, n in steps:
                if step in ("emit", "old"):
                    for i in range(n % 12):
                        age = 500_000 if step == "old" else i
                        buffer.emit(Reading(f"d{1 + n % 2}", "custom:m", (("k", f"s{i % 3}"),),
                                            int(now[0] * 1000) - age, float(n * 100 + i)))
                elif step == "take":
                    batch = buffer.take(f"d{1 + n % 2}")
                    flying += batch.pieces if batch else []
                elif step in ("accept", "keep", "reject") and flying:
                    piece = flying.pop(n % len(flying))
                    if step == "accept":
                        buffer.accept(piece)
                    elif step == "keep":
                        buffer.keep(piece)
                    else:
                        buffer.reject(piece, "rejected")
                elif step == "split" and flying:  # a body too large for one request
                    piece = flying.pop(n % len(flying))
                    flying += piece.split() if len(piece) > 1 else [piece]
                elif step == "forget":  # a reload removed the device, then it came back
                    buffer.catalog.remove_device("d2")
                    assert buffer.take("d2") is None
                    buffer.declare_device(Device("d2", "T"))
                elif step == "expire":
                    now[0] += n * 20
                    buffer.expire()
                elif step == "fail":  # the disk is full for one sync
                    def full(data: bytes) -> None:
                        raise OSError(errno.ENOSPC, "No space left on device")

                    spool._append = spool._write_generation = full  # type: ignore[method-assign]
                    journal_sync(buffer, spool, loop)
                    del spool._append, spool._write_generation
                elif step in ("sync", "snapshot"):
                    journal_sync(buffer, spool, loop, snapshot=step == "snapshot")
                    assert multiset(recover(directory).points) == multiset(buffer.snapshot())
            journal_sync(buffer, spool, loop)
            assert multiset(recover(directory).points) == multiset(buffer.snapshot())
        finally:
            loop.close()
