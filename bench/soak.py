"""The soak: MQTT at 5,000 messages/s and 200 SNMP agents for N minutes, with faults.

    python -m bench.soak --minutes 10      (not part of the test command; ~N+1 minutes)

Every part runs in its own process: the collector (`python -m collector run`), the
Dynatrace simulator (`python -m collector simulate`), mosquitto (persistent, so its restart
keeps the collector's session), two snmpd serving 100 ports each (200 targets) and an MQTT
publisher (paho, QoS 1, paced, counting what the broker acknowledged). First the longest
outage of the run (the simulator answers 503 for 60 s), then every 30 s a fault: 503 for
15 s, 429 with Retry-After for 15 s, mosquitto restarts, one snmpd restarts (100 counter
resets), the simulator drops connections for 10 s; and so on until a minute before the end.

Every 5 s the collector's RSS (VmRSS) and open file descriptors are read from /proc, and
its counters from /metrics. At the end the publisher stops, the collector drains, and the
books are compared: published (acknowledged by the broker) against what the collector
received, delivered and dropped, and what the simulator accepted. The summary is printed
and written to bench/results/soak.json.

RSS growth is measured from the end of a warm-up that covers the long outage and one whole
cycle of faults: the process keeps the memory of its largest buffer (malloc rarely gives it
back), so only after the largest outage of the run does RSS growth mean a leak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import BENCH_TOKEN, free_port, simulator_process
from tests.snmpd import COMMUNITY, SnmpAgent, start_snmpd

RESULTS = Path(__file__).resolve().parent / "results"
DEVICES = 500
AGENTS, PORTS_PER_AGENT = 2, 100
SAMPLE_S = 5.0
FAULT_EVERY_S = 30.0
LONG_OUTAGE_S = 60.0
"""The first fault, the longest: it sets the buffer's high-water mark during the warm-up."""
IF_NUMBER = "1.3.6.1.2.1.2.1.0"  # IF-MIB::ifNumber.0 (gauge)
LO_IN_OCTETS = "1.3.6.1.2.1.2.2.1.10.1"  # IF-MIB::ifInOctets.1 (Counter32): resets on restart


# ----- the publisher (its own process) ----------------------------------------------------


def publish(port: int, rate: float, stop_file: Path) -> None:
    """Publish {"v": n} to soak/d<n % DEVICES>/state at `rate`/s, QoS 1, until `stop_file`
    exists; print {"sent", "acked"} every second and at the end (after the last PUBACK)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acked = 0
    lock = threading.Lock()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-publisher",
                         clean_session=True)
    client.on_publish = on_publish
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)  # unlimited: a broker restart queues, never drops
    client.reconnect_delay_set(1, 2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent, started, last_report = 0, time.monotonic(), 0.0
    while not stop_file.exists():
        due = int((time.monotonic() - started) * rate)
        while sent < due:
            client.publish(f"soak/d{sent % DEVICES}/state", b'{"v": %d}' % sent, qos=1)
            sent += 1
        now = time.monotonic()
        if now - last_report >= 1.0:
            last_report = now
            print(json.dumps({"sent": sent, "acked": acked}), flush=True)
        time.sleep(0.005)
    deadline = time.monotonic() + 60
    while acked < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"sent": sent, "acked": acked, "done": True}), flush=True)


# ----- the other processes ----------------------------------------------------------------


@dataclass
class Broker:
    directory: Path
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 0\n"  # a persistent session's queue is not cut short
            f"persistence true\npersistence_location {self.directory}/\n"
            + ("user root\n" if os.geteuid() == 0 else ""))
        self.process = await asyncio.create_subprocess_exec(
            "mosquitto", "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        for _ in range(500):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


def collector_config(sim_url: str, broker_port: int, hosts: list[str], health: int) -> str:
    targets = "".join(f'      - {{host: "{h}", device: rtr-{i:03d}}}\n'
                      for i, h in enumerate(hosts))
    return f"""\
dynatrace: {{url: "{sim_url}", token: {BENCH_TOKEN}, timeout: 10s}}
buffer: {{flush_interval: 10s, shutdown_timeout: 30s}}
health: {{listen: "127.0.0.1:{health}"}}
log: {{level: info, format: json}}
metrics:
  custom:soak.value: {{display_name: Value, types: [Sensor]}}
  custom:soak.ifnumber: {{display_name: Interfaces, types: [Router]}}
  custom:soak.lo.in: {{display_name: Loopback bytes in, unit: Byte, types: [Router]}}
sources:
  - type: mqtt
    name: mqtt
    url: mqtt://127.0.0.1:{broker_port}
    client_id: soak-collector
    max_queued_messages: 100000
    subscriptions:
      - topic: soak/{{device}}/state
        device: {{type: Sensor}}
        metrics: [{{field: v, metric: custom:soak.value}}]
  - type: snmp
    name: snmp
    interval: 10s
    timeout: 2s
    retries: 1
    community: {COMMUNITY}
    device_type: Router
    scalars:
      - {{metric: custom:soak.ifnumber, oid: {IF_NUMBER}}}
      - {{metric: custom:soak.lo.in, oid: {LO_IN_OCTETS}, transform: delta}}
    targets:
{targets}"""


def prometheus(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ----- the run ------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    published: int
    received: float
    delivered: float
    buffered: float


@dataclass
class Soak:
    minutes: float
    rate: float
    workdir: Path
    samples: list[Sample] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    published: dict[str, Any] = field(default_factory=dict)

    async def run(self) -> dict[str, Any]:
        broker = Broker(self.workdir / "mosquitto")
        broker.directory.mkdir()
        await broker.start()
        agents = [start_snmpd(self.workdir / f"snmpd{i}", ports=PORTS_PER_AGENT,
                              builtin=True, engine_id=f"soak{i}") for i in range(AGENTS)]
        try:
            async with simulator_process() as sim_url:
                return await self._with(sim_url, broker, agents)
        finally:
            for agent in agents:
                agent.stop()
            await broker.stop()

    async def _with(self, sim_url: str, broker: Broker, agents: list[SnmpAgent]
                    ) -> dict[str, Any]:
        health = free_port()
        config = self.workdir / "collector.yaml"
        config.write_text(collector_config(sim_url, broker.port,
                                           [h for a in agents for h in a.hosts], health))
        stop_file = self.workdir / "publisher.stop"
        with (self.workdir / "collector.log").open("wb") as log:
            collector = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "collector", "run", "-c", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=log)
            publisher: asyncio.subprocess.Process | None = None
            try:
                async with aiohttp.ClientSession() as http:
                    base = f"http://127.0.0.1:{health}"
                    await self._until(lambda: self._metric(
                        http, base, 'dtcollector_mqtt_connected{source="mqtt"}', 1.0), 60,
                        "the collector connected")
                    publisher = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "bench.soak", "publish", "--port",
                        str(broker.port), "--rate", str(self.rate), "--stop-file",
                        str(stop_file), stdout=asyncio.subprocess.PIPE)
                    reader = asyncio.create_task(self._read_publisher(publisher))
                    duration = await self._load(http, base, sim_url, broker, agents,
                                                pid=collector.pid)
                    stop_file.touch()
                    await publisher.wait()
                    await reader
                    final, sim = await self._drain(http, base, sim_url, agents)
                collector.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(collector.wait(), 60)
            finally:
                stop_file.touch()
                for process in (publisher, collector):
                    if process is not None and process.returncode is None:
                        process.kill()
                        await process.wait()
        return self._report(duration, int(self.published["acked"]), final, sim, code)

    async def _load(self, http: aiohttp.ClientSession, base: str, sim_url: str,
                    broker: Broker, agents: list[SnmpAgent], *, pid: int) -> float:
        """The run proper: sample every few seconds, a fault every half minute."""
        started = time.monotonic()
        end = started + self.minutes * 60
        long_outage, *cycle = self._fault_plan(sim_url, broker, agents, http)
        faults = iter([long_outage, *(cycle * int(self.minutes * 60 / FAULT_EVERY_S))])
        next_fault = started + FAULT_EVERY_S
        while time.monotonic() < end:
            metrics = await self._metrics(http, base)
            self.samples.append(Sample(
                round(time.monotonic() - started, 1), rss_kib(pid), open_fds(pid),
                int(self.published.get("acked", 0)),
                metrics["dtcollector_points_received_total"],
                metrics["dtcollector_points_delivered_total"],
                metrics["dtcollector_points_buffered"]))
            if time.monotonic() >= next_fault and next_fault < end - 60:
                name, action = next(faults)
                self.faults.append({"t": round(time.monotonic() - started, 1), "fault": name})
                await action()
                # After the long outage, the next fault waits until it is over.
                next_fault += FAULT_EVERY_S + (LONG_OUTAGE_S if len(self.faults) == 1 else 0)
            await asyncio.sleep(SAMPLE_S - (time.monotonic() - started) % SAMPLE_S)
        return time.monotonic() - started

    async def _drain(self, http: aiohttp.ClientSession, base: str, sim_url: str,
                     agents: list[SnmpAgent]) -> tuple[dict[str, float], dict[str, Any]]:
        """Everything published reaches the collector; the agents stop (so that polls add
        nothing more); everything buffered goes out. The final books, and the simulator's."""
        acked = int(self.published["acked"])
        await self._until(lambda: self._metric(
            http, base, 'dtcollector_mqtt_messages_total{source="mqtt"}', acked,
            at_least=True), 120, "every published message at the collector")
        for agent in agents:
            agent.stop()
        await self._until(lambda: self._metric(
            http, base, "dtcollector_points_buffered", 0.0), 300, "the buffer to drain")
        final = await self._metrics(http, base)
        async with http.get(f"{sim_url}/_simulator/stats") as answer:
            sim: dict[str, Any] = await answer.json()
        return final, sim

    def _fault_plan(self, sim_url: str, broker: Broker, agents: list[SnmpAgent],
                    http: aiohttp.ClientSession) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        async def fault(spec: dict[str, Any]) -> None:
            async with http.post(f"{sim_url}/_simulator/faults", json=spec) as answer:
                answer.raise_for_status()

        async def restart_broker() -> None:
            await broker.stop()
            await broker.start()

        async def restart_agent() -> None:
            agent = agents[len(self.faults) % len(agents)]
            await asyncio.to_thread(agent.restart)

        return [
            (f"simulator 503 for {LONG_OUTAGE_S:.0f} s", lambda: fault(
                {"kind": "fail", "status": 503, "seconds": LONG_OUTAGE_S})),
            ("simulator 503 for 15 s", lambda: fault(
                {"kind": "fail", "status": 503, "seconds": 15})),
            ("simulator 429 (Retry-After: 5) for 15 s", lambda: fault(
                {"kind": "fail", "status": 429, "seconds": 15, "retry_after": "5"})),
            ("mosquitto restart", restart_broker),
            ("snmpd restart (100 agents, counters reset)", restart_agent),
            ("simulator drops connections for 10 s", lambda: fault(
                {"kind": "drop", "seconds": 10})),
        ]

    async def _read_publisher(self, publisher: asyncio.subprocess.Process) -> None:
        assert publisher.stdout is not None
        while line := await publisher.stdout.readline():
            self.published = json.loads(line)

    @staticmethod
    async def _metrics(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
        async with http.get(f"{base}/metrics") as answer:
            return prometheus(await answer.text())

    @staticmethod
    async def _metric(http: aiohttp.ClientSession, base: str, name: str, want: float,
                      at_least: bool = False) -> bool:
        with suppress(aiohttp.ClientError):
            async with http.get(f"{base}/metrics") as answer:
                value = prometheus(await answer.text()).get(name)
                if value is not None:
                    return value >= want if at_least else value == want
        return False

    @staticmethod
    async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"soak: timed out waiting for {what}")
            await asyncio.sleep(0.5)

    def _report(self, duration: float, acked: int, final: dict[str, float],
                sim: dict[str, Any], exit_code: int) -> dict[str, Any]:
        from bench.run import machine

        # The long outage, then one cycle of the five faults.
        warmup = 2 * FAULT_EVERY_S + LONG_OUTAGE_S + 5 * FAULT_EVERY_S + SAMPLE_S
        after = [s for s in self.samples if s.t >= warmup]
        window = max(1, int(60 / SAMPLE_S))
        rss_start = statistics.median(s.rss_kib for s in after[:window]) if after else 0
        rss_end = statistics.median(s.rss_kib for s in after[-window:]) if after else 0
        dropped = {k.split('"')[1]: v for k, v in final.items()
                   if k.startswith("dtcollector_points_dropped_total")}
        readings = {k.split('"')[1]: v for k, v in final.items()
                    if k.startswith("dtcollector_readings_received_total")}
        messages = final['dtcollector_mqtt_messages_total{source="mqtt"}']
        polls = sum(v for k, v in final.items() if k.startswith("dtcollector_polls_total"))
        failed = sum(v for k, v in final.items()
                     if k.startswith("dtcollector_polls_failed_total"))
        received = final["dtcollector_points_received_total"]
        delivered = final["dtcollector_points_delivered_total"]
        return {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "minutes": round(duration / 60, 2),
            "target_rate": self.rate,
            "mqtt": {
                "published": acked,
                "published_per_s": round(acked / duration, 1),
                "received_by_collector": messages,
                "qos1_repeats": messages - acked,
                "bad_input": sum(v for k, v in final.items()
                                 if k.startswith("dtcollector_mqtt_bad_input_total")),
                "discarded_queue_full": final.get(
                    'dtcollector_mqtt_discarded_total{source="mqtt"}', 0.0),
            },
            "snmp": {"targets": AGENTS * PORTS_PER_AGENT, "polls": polls,
                     "polls_failed": failed,
                     "counter_resets": sum(v for k, v in final.items()
                                           if k.startswith("dtcollector_snmp_counter_resets"))},
            "books": {
                "readings_by_source": readings,
                "received": received, "delivered": delivered, "dropped": dropped,
                "buffered": final["dtcollector_points_buffered"],
                "balanced": received == delivered + sum(dropped.values())
                + final["dtcollector_points_buffered"],
                "simulator_accepted": sim["points"],
                "accepted_not_heard": sim["points"] - delivered,
                "simulator_responses": sim["responses"],
            },
            "rss_kib": {"warmup_s": round(warmup), "after_warmup": rss_start,
                        "end": rss_end,
                        "growth_pct": round(100 * (rss_end / rss_start - 1), 2)
                        if rss_start else None,
                        "max": max(s.rss_kib for s in self.samples)},
            "fds": {"after_warmup_min": min(s.fds for s in after) if after else None,
                    "after_warmup_max": max(s.fds for s in after) if after else None},
            "faults": self.faults,
            "collector_exit_code": exit_code,
            "samples": [s.__dict__ for s in self.samples],
        }


def summary(result: dict[str, Any]) -> str:
    m, b, r, f = result["mqtt"], result["books"], result["rss_kib"], result["fds"]
    per_minute = []
    for s in result["samples"]:
        if s["t"] % 60 < SAMPLE_S:
            per_minute.append(f"  t={s['t']:>5.0f}s  RSS {s['rss_kib'] / 1024:6.1f} MiB  "
                              f"fds {s['fds']:>3}  buffered {s['buffered']:>8,.0f}")
    return "\n".join([
        f"soak: {result['minutes']} min on {result['machine']}",
        f"MQTT: {m['published']:,} published ({m['published_per_s']:,.0f}/s, target "
        f"{result['target_rate']:,.0f}/s), {m['received_by_collector']:,.0f} received "
        f"({m['qos1_repeats']:,.0f} QoS 1 repeats), bad {m['bad_input']:.0f}, "
        f"discarded {m['discarded_queue_full']:.0f}",
        f"SNMP: {result['snmp']['targets']} targets, {result['snmp']['polls']:,.0f} polls "
        f"({result['snmp']['polls_failed']:,.0f} failed), "
        f"{result['snmp']['counter_resets']:,.0f} counter resets",
        f"books: received {b['received']:,.0f} = delivered {b['delivered']:,.0f} + dropped "
        f"{sum(b['dropped'].values()):,.0f} {b['dropped']} + buffered {b['buffered']:,.0f}: "
        f"{'balanced' if b['balanced'] else 'NOT BALANCED'}",
        f"simulator accepted {b['simulator_accepted']:,} ({b['accepted_not_heard']:,.0f} "
        f"accepted but unheard: resent), responses {b['simulator_responses']}",
        f"RSS after warm-up ({r['warmup_s']} s) {r['after_warmup'] / 1024:.1f} MiB, at the end "
        f"{r['end'] / 1024:.1f} MiB: growth {r['growth_pct']}% (max {r['max'] / 1024:.1f} MiB)",
        f"open fds after warm-up: {f['after_warmup_min']}..{f['after_warmup_max']}",
        f"faults: {len(result['faults'])}; collector exit code {result['collector_exit_code']}",
        "per minute:", *per_minute,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    pub = sub.add_parser("publish", help="(internal) the publisher process")
    pub.add_argument("--port", type=int, required=True)
    pub.add_argument("--rate", type=float, required=True)
    pub.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5000.0, help="MQTT messages per second")
    parser.add_argument("--out", default=str(RESULTS / "soak.json"))
    args = parser.parse_args(argv)
    if args.command == "publish":
        publish(args.port, args.rate, args.stop_file)
        return 0
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        result = asyncio.run(Soak(args.minutes, args.rate, Path(workdir)).run())
    print(summary(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
