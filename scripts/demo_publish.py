"""The demo's IoT sensors: JSON readings and door contacts published to a local broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import time

import aiomqtt


async def publish(host: str, port: int, every: float) -> None:
    sensors = [("linz", "th-1"), ("linz", "th-2"), ("graz", "th-7")]
    async with aiomqtt.Client(host, port, identifier="demo-publisher") as client:
        n = 0
        while True:
            for site, device in sensors:
                temperature = 21 + 3 * math.sin(n / 10 + len(device)) + random.uniform(-0.2, 0.2)
                body = {"ts": int(time.time() * 1000),
                        "env": {"temperature": round(temperature, 2),
                                "humidity": round(45 + random.uniform(-5, 5), 1)}}
                await client.publish(f"demo/{site}/sensor/{device}/state", json.dumps(body),
                                     qos=1)
            await client.publish("demo/linz/door/front/open", "1" if n % 6 < 2 else "0", qos=1)
            n += 1
            await asyncio.sleep(every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between rounds")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(publish(args.host, args.port, args.every))


if __name__ == "__main__":
    main()
