"""The benchmark suite: every figure beside a baseline measured in the same run.

This machine is shared and noisy, so only ratios against same-run baselines mean much.
Prints one table and writes it as JSON (bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from bench.common import Row
from bench.core import flush_throughput, memory_per_point
from bench.mqtt import mqtt_ingest
from collector.logs import setup_logging

RESULTS = Path(__file__).resolve().parent / "results"


SUITES: dict[str, Callable[[], list[Row]]] = {
    "memory": lambda: [memory_per_point()],
    "flush": lambda: [asyncio.run(flush_throughput())],
    "mqtt": lambda: asyncio.run(mqtt_ingest()),
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, "
            f"Python {platform.python_version()}")


def table(rows: list[Row]) -> str:
    head = ("benchmark", "collector", "baseline", "ratio", "target", "met", "unit / baseline")
    lines = [head]
    for r in rows:
        met = r.met()
        lines.append((r.name, f"{r.collector:,.1f}", f"{r.baseline:,.1f}", f"{r.ratio:.2f}",
                      r.target, "yes" if met else ("NO" if met is False else "-"),
                      f"{r.unit}; {r.baseline_name}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                     for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(SUITES),
                        help="run only these (repeatable)")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = parser.parse_args(argv)
    setup_logging("warning", "console")
    wanted = args.only or list(SUITES)
    started = time.time()
    rows: list[Row] = []
    for name in wanted:
        rows.extend(SUITES[name]())
    print(f"machine: {machine()}")
    print(table(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.time() - started, 1),
        "rows": [{**asdict(r), "ratio": r.ratio, "met": r.met()} for r in rows],
    }, indent=2) + "\n")
    return 0
