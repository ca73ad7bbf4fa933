"""The durable spool: buffered points survive a restart and a crash.

An append-only segment log (why not SQLite: the buffer already holds points as typed
arrays per series, and a log of those arrays is written with one `write` per batch and
read back with `frombytes`; no per-point rows, no indexes, no deletes). Every
`sync_interval` the points added to and removed from the buffer since the last sync are
appended as two records and fsynced, in a thread. The buffer hands its new points over
per series just before a sync (`Buffer.journal_additions`), so an emit costs the spool
next to nothing. Devices' metadata is recorded too, so points of devices a source
discovered can be sent after a restart.

When a generation file has grown to several times what is live, a snapshot of the live
buffer starts a new generation and the old files are deleted. On start the newest state
is rebuilt: the last snapshot, then adds minus removes. A record with a bad checksum or
a truncated tail ends the read of its file; that file is renamed `*.corrupt-<time>` (set
aside, not deleted) and what was read before it is kept.

Delivery is at least once: a crash between a delivery and the sync of its removal
resends those points. Loss on SIGKILL is bounded by `sync_interval` of data.

Record: magic `DTS1`, u32 payload length, u32 crc32(payload); payload: one type byte
(S snapshot-begin, P points added, R points removed, D device), then for P/R a u32 JSON
header length, the JSON header ({"series": [[device, metric, [[k, v], ...], n], ...]}),
all timestamps (int64 LE) and all values (float64 LE); for D the device as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from collector.logs import StateLog, get_logger
from collector.model import Device, Dimensions

log = get_logger("collector.spool")

MAGIC = b"DTS1"
HEADER = struct.Struct("<4sII")
SeriesKey = tuple[str, str, Dimensions]
Batch = dict[SeriesKey, tuple["array[int]", "array[float]"]]
LITTLE = array("q", [1]).tobytes()[0] == 1


def _encode_points(kind: bytes, batch: Batch) -> bytes:
    series = []
    stamps, values = array("q"), array("d")
    for (device, metric, dims), (ts, vs) in batch.items():
        series.append((device, metric, dims, len(ts)))  # tuples: JSON arrays
        stamps.extend(ts)
        values.extend(vs)
    if not LITTLE:
        stamps.byteswap()
        values.byteswap()
    head = json.dumps({"series": series}, separators=(",", ":")).encode()
    return kind + struct.pack("<I", len(head)) + head + stamps.tobytes() + values.tobytes()


def _decode_points(payload: bytes) -> Iterator[tuple[SeriesKey, array[int], array[float]]]:
    (head_len,) = struct.unpack_from("<I", payload, 1)
    head = json.loads(payload[5 : 5 + head_len])
    total = sum(int(s[3]) for s in head["series"])
    offset = 5 + head_len
    stamps, values = array("q"), array("d")
    stamps.frombytes(payload[offset : offset + 8 * total])
    values.frombytes(payload[offset + 8 * total : offset + 16 * total])
    if len(stamps) != total or len(values) != total:
        raise ValueError("point arrays shorter than their header says")
    if not LITTLE:
        stamps.byteswap()
        values.byteswap()
    at = 0
    for device, metric, dims, n in head["series"]:
        key = (str(device), str(metric), tuple((str(k), str(v)) for k, v in dims))
        yield key, stamps[at : at + n], values[at : at + n]
        at += n


def _record(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _device_json(device: Device) -> bytes:
    data = asdict(device)
    data["properties"] = dict(device.properties)
    return b"D" + json.dumps(data, separators=(",", ":")).encode()


def _device_from(payload: bytes) -> Device:
    data = json.loads(payload[1:])
    for key in ("ip_addresses", "host_names", "listen_ports", "tags"):
        data[key] = tuple(data.get(key) or ())
    return Device(**data)


@dataclass
class Recovered:
    """What a spool held at start: devices and live points per series."""

    devices: dict[str, Device] = field(default_factory=dict)
    points: dict[SeriesKey, tuple[array[int], array[float]]] = field(default_factory=dict)
    set_aside: list[Path] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(ts) for ts, _ in self.points.values())


def _read_records(path: Path) -> tuple[list[bytes], bool]:
    """The good records of a file, and whether it ended cleanly."""
    data = path.read_bytes()
    records: list[bytes] = []
    at = 0
    while at < len(data):
        if len(data) - at < HEADER.size:
            return records, False
        magic, length, crc = HEADER.unpack_from(data, at)
        payload = data[at + HEADER.size : at + HEADER.size + length]
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            return records, False
        records.append(payload)
        at += HEADER.size + length
    return records, True


def recover(directory: Path) -> Recovered:
    """Rebuild the live state from the generation files (blocking: run in a thread)."""
    result = Recovered()
    added: dict[SeriesKey, tuple[array[int], array[float]]] = {}
    removed: dict[SeriesKey, Counter[tuple[int, float]]] = {}
    for path in sorted(directory.glob("gen-*.log")):
        try:
            records, clean = _read_records(path)
            for payload in records:
                kind = payload[:1]
                if kind == b"S":
                    added.clear()
                    removed.clear()
                elif kind == b"D":
                    device = _device_from(payload)
                    result.devices[device.id] = device
                elif kind in (b"P", b"R"):
                    for key, ts, vs in _decode_points(payload):
                        if kind == b"P":
                            have = added.setdefault(key, (array("q"), array("d")))
                            have[0].extend(ts)
                            have[1].extend(vs)
                        else:
                            removed.setdefault(key, Counter()).update(zip(ts, vs, strict=True))
                else:
                    raise ValueError(f"unknown record type {kind!r}")
        except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
            log.error("spool record unreadable", file=str(path), error=str(exc))
            clean = False
        if not clean:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.rename(aside)
            result.set_aside.append(aside)
    for key, (ts, vs) in added.items():
        live = _subtract(ts, vs, removed.get(key))
        if len(live[0]):
            result.points[key] = live
    return result


def _subtract(ts: array[int], vs: array[float], gone: Counter[tuple[int, float]] | None
              ) -> tuple[array[int], array[float]]:
    """The points of (ts, vs) less the multiset `gone`."""
    if not gone:
        return ts, vs
    keep_ts, keep_vs = array("q"), array("d")
    for t, v in zip(ts, vs, strict=True):
        if gone.get((t, v), 0) > 0:
            gone[(t, v)] -= 1
        else:
            keep_ts.append(t)
            keep_vs.append(v)
    return keep_ts, keep_vs


class Spool:
    """The journal the buffer writes into, and the files it goes to."""

    def __init__(self, directory: Path, sync_interval: float = 1.0) -> None:
        self.directory = directory
        self.sync_interval = sync_interval
        self._added: Batch = {}
        self._removed: Batch = {}
        self._devices: dict[str, Device] = {}
        self._generation = 0
        self._file_bytes = 0
        self._needs_snapshot = True
        self._state = StateLog(log)
        self.write_errors = 0
        self.bytes_written = 0
        self.syncs = 0

    # ----- the buffer's side: on the event loop -------------------------------------------

    def added(self, batch: Batch) -> None:
        """Points added to the buffer (handed over once per sync, per series)."""
        if not self._added:
            self._added = batch
            return
        for key, (ts, vs) in batch.items():
            pending = self._added.setdefault(key, (array("q"), array("d")))
            pending[0].extend(ts)
            pending[1].extend(vs)

    def removed(self, key: SeriesKey, ts: array[int], values: array[float]) -> None:
        pending = self._removed.get(key)
        if pending is None:
            pending = self._removed[key] = (array("q"), array("d"))
        pending[0].extend(ts)
        pending[1].extend(values)

    def device(self, device: Device) -> None:
        self._devices[device.id] = device

    # ----- files ------------------------------------------------------------------------

    def open(self) -> Recovered:
        """Create the directory and read what it holds (blocking: run in a thread)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        mode = self.directory.stat().st_mode
        if mode & 0o007:
            log.warning("spool directory is accessible to other users", path=str(self.directory))
        recovered = recover(self.directory)
        gens = [int(p.name[4:12]) for p in self.directory.glob("gen-*.log")]
        self._generation = max(gens, default=0)
        return recovered

    async def sync(self, snapshot: Batch | None = None,
                   devices: dict[str, Device] | None = None) -> None:
        """Write what changed since the last sync (or a full snapshot), fsynced."""
        added, removed, new_devices = self._added, self._removed, self._devices
        self._added, self._removed, self._devices = {}, {}, {}
        if snapshot is not None:
            self._needs_snapshot = False
            chunks = [_record(b"S")] + [_record(_device_json(d)) for d in (devices or {}).values()]
            if snapshot:
                chunks.append(_record(_encode_points(b"P", snapshot)))
            write = self._write_generation
        else:
            if not (added or removed or new_devices):
                return
            chunks = [_record(_device_json(d)) for d in new_devices.values()]
            if added:
                chunks.append(_record(_encode_points(b"P", added)))
            if removed:
                chunks.append(_record(_encode_points(b"R", removed)))
            write = self._append
        try:
            await asyncio.to_thread(write, b"".join(chunks))
        except OSError as exc:
            self.write_errors += 1
            self._needs_snapshot = True  # the log now misses a batch: start over when we can
            self._state.failed("write", "spool not writable; points are kept in memory only",
                               path=str(self.directory), error=exc.strerror or str(exc))
            return
        self.syncs += 1
        self._state.ok("write", "spool writable again", path=str(self.directory))

    @property
    def needs_snapshot(self) -> bool:
        return self._needs_snapshot

    def wants_compaction(self, live_points: int) -> bool:
        return self._needs_snapshot or self._file_bytes > max(8 << 20, 64 * live_points)

    def _path(self, generation: int) -> Path:
        return self.directory / f"gen-{generation:08d}.log"

    def _append(self, data: bytes) -> None:
        with open(self._path(self._generation), "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._file_bytes += len(data)
        self.bytes_written += len(data)

    def _write_generation(self, data: bytes) -> None:
        new = self._generation + 1
        tmp = self.directory / f"gen-{new:08d}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(self._path(new))
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self.directory.glob("gen-*.log"):
            if int(old.name[4:12]) < new:
                old.unlink(missing_ok=True)
        self._generation = new
        self._file_bytes = len(data)
        self.bytes_written += len(data)
