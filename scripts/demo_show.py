"""Shows what the Dynatrace simulator received, per device, refreshed every flush."""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from typing import Any


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


def show(simulator: str, health: str | None) -> str:
    devices = get(f"{simulator}/_simulator/devices")
    stats = get(f"{simulator}/_simulator/stats")
    lines = [time.strftime("%H:%M:%S") + f"  the simulator accepted {stats['points']} points "
             f"in {stats['pushes']} pushes; responses {stats['responses']}"]
    if health:
        try:
            points = get(f"{health}/status")["points"]
            lines.append(f"          collector: received {points['received']}, delivered "
                         f"{points['delivered']}, buffered {points['buffered']}, dropped "
                         f"{points['dropped']}")
        except OSError:
            pass
    for device_id, device in sorted(devices.items()):
        lines.append(f"\n  {device_id}  ({device.get('type')}, {device.get('displayName') or ''},"
                     f" {device['entityId']})  {device['seriesCount']} series, "
                     f"{device['pointCount']} points")
        last = sorted(device["lastValues"], key=lambda s: (s["timeseriesId"],
                                                           sorted(s["dimensions"].items())))
        for series in last[:12]:
            dims = ",".join(f"{k}={v}" for k, v in sorted(series["dimensions"].items()))
            lines.append(f"      {series['timeseriesId']:<38} {dims:<28} {series['value']:>14,.2f}")
        if len(last) > 12:
            lines.append(f"      ... and {len(last) - 12} more series")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulator", required=True, help="the simulator's base URL")
    parser.add_argument("--health", help="the collector's health endpoint base URL")
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--for", dest="duration", type=float, default=0.0,
                        help="stop after this many seconds (default: until Ctrl-C)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(args.every)
            print("\033[2J\033[H" if deadline is None else "", end="")
            print(show(args.simulator, args.health), flush=True)
            print("\n(Ctrl-C stops the demo and everything it started)", flush=True)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
