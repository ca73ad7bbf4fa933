#!/usr/bin/env python3
"""A Net-SNMP `pass_persist` script: serves the values a test writes to a JSON file.

Usage (from snmpd.conf): pass_persist <subtree> <python> snmp_agent.py <values.json> <subtree>

The file holds {"values": {"1.3.6...": ["counter64", 123], ...}, "delay": 0.0}; it is
read again whenever it is replaced, so a test controls every value (counters, wraps, resets
of sysUpTime) exactly. `delay` makes every answer that slow (a slow agent).
Types are Net-SNMP's: integer, gauge, counter, counter64, timeticks, string, objectid.
"""

from __future__ import annotations

import bisect
import json
import os
import sys
import time

Oid = tuple[int, ...]


def parse(text: str) -> Oid:
    return tuple(int(p) for p in text.strip().strip(".").split(".") if p)


class Values:
    def __init__(self, path: str, subtree: Oid) -> None:
        self.path = path
        self.subtree = subtree
        self.version: tuple[int, int, int] = (-1, -1, -1)
        self.values: dict[Oid, tuple[str, str]] = {}
        self.order: list[Oid] = []
        self.delay = 0.0

    def load(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return
        # The test replaces the file (a new inode) on every change.
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if version == self.version:
            return
        with open(self.path, encoding="utf-8") as f:
            data = json.load(f)
        self.version = version
        self.delay = float(data.get("delay", 0.0))
        self.values = {
            oid: (str(kind), str(value))
            for text, (kind, value) in data.get("values", {}).items()
            if (oid := parse(text))[: len(self.subtree)] == self.subtree
        }
        self.order = sorted(self.values)

    def next_after(self, oid: Oid) -> Oid | None:
        at = bisect.bisect_right(self.order, oid)
        return self.order[at] if at < len(self.order) else None


def main() -> None:
    values = Values(sys.argv[1], parse(sys.argv[2]))
    out = sys.stdout
    while line := sys.stdin.readline():
        command = line.strip()
        if command == "PING":
            out.write("PONG\n")
        elif command in ("get", "getnext"):
            oid = parse(sys.stdin.readline())
            values.load()
            if values.delay:
                time.sleep(values.delay)
            found = oid if command == "get" else values.next_after(oid)
            if found is None or found not in values.values:
                out.write("NONE\n")
            else:
                kind, value = values.values[found]
                out.write("." + ".".join(map(str, found)) + f"\n{kind}\n{value}\n")
        elif command == "set":
            sys.stdin.readline()
            sys.stdin.readline()
            out.write("not-writable\n")
        out.flush()


if __name__ == "__main__":
    main()
