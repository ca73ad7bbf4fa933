"""The benchmark suite: every figure beside a baseline measured in the same run.

This machine is shared and noisy, so only ratios against same-run baselines mean much.
Prints one table and writes it as JSON (bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from bench.common import Row
from bench.core import flush_throughput, memory_per_point
from bench.e2e import end_to_end
from bench.mqtt import mqtt_ingest
from bench.snmp import snmp_scale, snmp_walk
from bench.spool import spool_ingest
from collector.logs import setup_logging

RESULTS = Path(__file__).resolve().parent / "results"


SUITES: dict[str, Callable[[], list[Row]]] = {
    "memory": lambda: [memory_per_point()],
    "flush": lambda: [asyncio.run(flush_throughput())],
    "mqtt": lambda: asyncio.run(mqtt_ingest()),
    "spool": spool_ingest,
    "snmp-walk": snmp_walk,
    "snmp-scale": snmp_scale,
    "e2e": lambda: asyncio.run(end_to_end()),
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


def number(value: float) -> str:
    """Three significant digits at least, thousands separated."""
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def met_text(row: Row) -> str:
    met = row.met()
    return "yes" if met else ("NO" if met is False else "-")


def table(rows: list[Row]) -> str:
    head = ("benchmark", "collector", "baseline", "ratio", "target", "met", "unit / baseline")
    lines = [head]
    for r in rows:
        lines.append((r.name, number(r.collector), number(r.baseline), f"{r.ratio:.2f}",
                      r.target, met_text(r), f"{r.unit}; {r.baseline_name}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                     for line in lines)


def markdown(rows: list[Row]) -> str:
    """The table for README.md: each figure with its unit, each baseline with what it is."""
    lines = ["| benchmark | collector | baseline | ratio | target | met |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.name} ({r.unit}) | {number(r.collector)} | {number(r.baseline)} "
              f"({r.baseline_name}) | {r.ratio:.2f} | {r.target} | {met_text(r)} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(SUITES),
                        help="run only these (repeatable)")
    parser.add_argument("--out", help="write the JSON here (default: bench/results/"
                        "latest.json after a full run; a partial run writes none)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as Markdown (for README.md)")
    args = parser.parse_args(argv)
    setup_logging("warning", "console")
    wanted = args.only or list(SUITES)
    started = time.time()
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    for name in wanted:
        began = time.time()
        rows.extend(SUITES[name]())
        seconds[name] = round(time.time() - began, 1)
        print(f"bench: {name} took {seconds[name]} s", file=sys.stderr, flush=True)
    print(f"machine: {machine()}")
    print(table(rows))
    if args.markdown:
        print()
        print(markdown(rows))
    out = args.out or (None if args.only else str(RESULTS / "latest.json"))
    if out is None:
        return 0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.time() - started, 1), "suites": seconds,
        "rows": [{**asdict(r), "ratio": r.ratio, "met": r.met()} for r in rows],
    }, indent=2) + "\n")
    return 0
