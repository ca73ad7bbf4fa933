"""Fuzzing the MQTT payload path: any topic and payload, no exception, everything counted.

The mapping code (collector/sources/mqtt.py, collector/sources/payload.py) is driven
directly with generated messages, into the real buffer: each message either gives one
reading or one counted reason per configured series, or is refused whole for one counted
reason; the buffer then accounts for every reading. A short flood of random payloads
through a real mosquitto and the whole collector to the simulator checks the same end to
end, with good messages mixed in that must all arrive.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import textwrap
import time
from collections.abc import Iterator

import aiomqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.buffer import Buffer
from collector.catalog import Catalog, MetricInfo
from collector.config import Config, parse_config
from collector.model import Reading
from collector.simulator import Simulator
from collector.sources import SourceContext
from collector.sources.mqtt import MqttSource
from collector.telemetry import Telemetry
from tests.helpers import base_config, running_daemon, wait_for
from tests.mosquitto import Broker, publish

METRICS = ("custom:fz.t", "custom:fz.v", "custom:fz.last", "custom:fz.n")


def source_yaml(url: str, root: str) -> str:
    return textwrap.dedent(f"""\
        metrics:
          custom:fz.t: {{display_name: t, dimensions: [site], types: [Sensor]}}
          custom:fz.v: {{display_name: v, dimensions: [site], types: [Sensor]}}
          custom:fz.last: {{display_name: last, dimensions: [site], types: [Sensor]}}
          custom:fz.n: {{display_name: n, dimensions: [site], types: [Sensor]}}
        sources:
          - type: mqtt
            name: fz
            url: {url}
            client_id: {root}-fz
            max_payload_bytes: 2048
            subscriptions:
              - topic: {root}/{{site}}/{{device}}/json
                device: {{type: Sensor, display_name: "{{device}} at {{site}}",
                          tags: ["site:{{site}}"], properties: {{site: "{{site}}"}}}}
                dimensions: {{site: "{{site}}"}}
                timestamp: {{field: time, format: ms}}
                metrics:
                  - {{field: env.t, metric: custom:fz.t}}
                  - {{field: "list[0].v", metric: custom:fz.v, scale: 1e300}}
                  - {{field: "list[-1]", metric: custom:fz.last}}
              - topic: {root}/{{site}}/{{device}}/iso
                device: {{type: Sensor}}
                dimensions: {{site: "{{site}}"}}
                timestamp: {{field: at, format: iso8601}}
                metrics: [{{field: v, metric: custom:fz.v}}]
              - topic: {root}/{{site}}/{{device}}/sec
                device: {{type: Sensor}}
                dimensions: {{site: "{{site}}"}}
                timestamp: {{field: at, format: s}}
                metrics: [{{field: v, metric: custom:fz.v}}]
              - topic: {root}/{{site}}/{{device}}/number
                payload: number
                device: {{type: Sensor}}
                metrics: [{{metric: custom:fz.n, dimensions: {{site: "{{site}}"}}}}]
              - topic: {root}/{{site}}/{{device}}/bool
                payload: boolean
                device: {{type: Sensor}}
                metrics: [{{metric: custom:fz.n, dimensions: {{site: "{{site}}"}}, scale: -1}}]
        """)


ROOT = "fz"


def config(url: str = "mqtt://127.0.0.1:1883", root: str = ROOT) -> Config:
    return parse_config("dynatrace:\n  url: http://127.0.0.1:9\n  token: t\n"
                        + source_yaml(url, root), env={})


CONFIG = config()
SERIES = {"json": 3, "iso": 1, "sec": 1, "number": 1, "bool": 1}
"""How many series a message of each kind feeds."""


def kind_of(topic: str, root: str = ROOT) -> str | None:
    """The subscription a topic matches (by the source's own rules), or None."""
    levels = topic.split("/")
    if len(levels) == 4 and levels[0] == root and levels[3] in SERIES:
        return levels[3]
    return None


class Harness:
    """One MQTT source emitting into a real buffer, fed messages one at a time."""

    def __init__(self, source_config: Config = CONFIG) -> None:
        catalog = Catalog()
        for metric in METRICS:
            catalog.set_metric(MetricInfo(metric, frozenset({"site"}), frozenset({"Sensor"})))
        self.buffer = Buffer(catalog, max_points=100_000, max_age=3600)
        self.telemetry = Telemetry()
        self.source = MqttSource(source_config.sources[0],  # type: ignore[arg-type]
                                 SourceContext(self.buffer, self.telemetry))

    def count(self, family: str) -> float:
        found = self.telemetry.families.get(family)
        return 0.0 if found is None else found.total()

    def feed(self, topic: str, payload: bytes) -> tuple[int, int]:
        """Handle one message; (readings, reasons counted) it gave."""
        before = self.count("mqtt_readings"), self.count("mqtt_bad_input")
        self.source._handle(aiomqtt.Message(topic, payload, 1, False, 1, None))
        return (int(self.count("mqtt_readings") - before[0]),
                int(self.count("mqtt_bad_input") - before[1]))


# ----- generated input --------------------------------------------------------------------

numbers = st.one_of(
    st.integers(), st.integers(min_value=-10**400, max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False), st.just(1.7976931348623157e308))
texts = st.one_of(st.text(max_size=20), st.sampled_from(
    ["NaN", "nan", "Infinity", "-Infinity", "1e999", "0x10", "", " 1 ", "true", "2026-11-28",
     "2026-11-28T10:00:00+01:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]))
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)


@st.composite
def shaped(draw: st.DrawFn) -> object:
    """JSON close to what the subscriptions expect, with any value where one goes."""
    doc: dict[str, object] = {}
    for key, value in (("time", values), ("at", values), ("v", values),
                       ("env", st.dictionaries(st.sampled_from(["t", "x"]), values, max_size=2)),
                       ("list", st.lists(st.one_of(values, st.fixed_dictionaries({"v": values})),
                                         max_size=3))):
        if draw(st.booleans()):
            doc[key] = draw(value)
    return doc


def dumps(document: object) -> bytes:
    try:
        return json.dumps(document).encode()  # NaN and Infinity as JSON does not allow
    except (ValueError, OverflowError):
        return b"{}"


deep = st.integers(1, 3000).map(lambda n: (b"[" * n + b"1" + b"]" * n) if n % 2
                                else (b'{"v":' * n + b"1" + b"}" * n))
payloads = st.one_of(st.binary(max_size=64), shaped().map(dumps), values.map(dumps), deep,
                     st.sampled_from([b"NaN", b"-inf", b"1e999", b"on", b"OFF", b" 42 ",
                                      b"\xff\xfe", b"", b"x" * 3000]))
level = st.text(st.characters(blacklist_characters="/+#\x00"), max_size=8)
topics = st.one_of(
    st.tuples(level, level, st.sampled_from(sorted(SERIES))).map(
        lambda t: f"{ROOT}/{t[0]}/{t[1]}/{t[2]}"),
    st.tuples(level, st.sampled_from(sorted(SERIES))).map(lambda t: f"{ROOT}/{t[0]}/{t[1]}"),
    st.text(st.characters(blacklist_characters="+#\x00"), min_size=1, max_size=20),
    st.sampled_from([f"{ROOT}/{'s' * 200}/d/json", f"{ROOT}/s/{'d' * 300}/number",
                     f"{ROOT}/s/\u200b/number", f"{ROOT}/s/d\x07/bool"]))


def good_message(i: int, root: str = ROOT) -> tuple[str, bytes, Reading]:
    """A valid JSON message and the reading it must give."""
    now = int(time.time() * 1000)
    body = {"time": now, "env": {"t": i + 0.5}}
    return (f"{root}/good/g{i % 3}/json", json.dumps(body).encode(),
            Reading(f"g{i % 3}", "custom:fz.t", (("site", "good"),), now, i + 0.5))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(topics, payloads), max_size=12))
def test_any_message_gives_readings_or_counted_reasons(messages: list[tuple[str, bytes]]
                                                       ) -> None:
    harness = Harness()
    goods = []
    for i, (topic, payload) in enumerate(messages):
        readings, reasons = harness.feed(topic, payload)
        kind = kind_of(topic)
        series = SERIES[kind] if kind is not None else 0
        # Refused whole for one reason, or one outcome for each series it feeds.
        assert (readings, reasons) == (0, 1) or (series and readings + reasons == series), (
            topic, payload[:80], readings, reasons)
        if i % 3 == 0:
            good_topic, good_payload, reading = good_message(i)
            assert harness.feed(good_topic, good_payload) == (1, 2)  # two fields absent
            goods.append(reading)
    b = harness.buffer
    assert harness.count("mqtt_messages") == len(messages) + len(goods)
    assert b.received == harness.count("mqtt_readings")
    assert b.received == b.buffered + sum(b.dropped.values())
    assert b.dropped["invalid"] == sum(b.invalid_causes.values())
    kept = {(key, t, v) for key, (ts, vs) in b.snapshot().items()
            for t, v in zip(ts, vs, strict=True)}
    for r in goods:  # the good ones are all in the buffer, whatever came around them
        assert ((r.device, r.metric, r.dimensions), r.timestamp_ms, r.value) in kept


def test_known_nasty_payloads_are_counted_by_reason() -> None:
    harness = Harness()
    t = f"{ROOT}/s/d"
    cases = [
        (f"{t}/json", b'{"time": 1, "env": {"t": "NaN"}, "list": [{"v": 1}, 2]}',
         (2, 1)),  # t is text; v and last are numbers
        (f"{t}/json", b'{"time": 1, "env": {"t": 1}, "list": [{"v": 1e10}]}',
         (1, 2)),  # v * 1e300 overflows: not_finite; last is the dict: not_a_number
        (f"{t}/json", b'{"time": 1e400}', (0, 1)),  # not JSON orjson takes
        (f"{t}/json", b"[" * 5000 + b"]" * 5000, (0, 1)),  # over max_payload_bytes
        (f"{t}/json", b"[" * 1500 + b"]" * 500, (0, 1)),  # deep, and not JSON
        (f"{t}/iso", b'{"at": "0001-01-01T00:00:00+14:00", "v": 1}', (1, 0)),
        (f"{t}/sec", b'{"at": 1e308, "v": 1}', (0, 1)),  # seconds * 1000 overflows
        (f"{t}/sec", b'{"at": -123, "v": 1}', (0, 1)),  # before 1970
        (f"{t}/number", b"99999999999999999999999999999999999", (1, 0)),
        (f"{t}/number", b"1" * 400, (0, 1)),  # beyond float
        (f"{t}/bool", "true\u00a0".encode(), (1, 0)),  # Unicode space around is fine
        (f"{t}/bool", "tr\u00fce".encode(), (0, 1)),
    ]
    for topic, payload, expected in cases:
        assert harness.feed(topic, payload) == expected, (topic, payload[:60])
    b = harness.buffer
    assert b.received == harness.count("mqtt_readings") == b.buffered + sum(b.dropped.values())


# ----- a flood through a real broker ------------------------------------------------------


def random_payloads(rng: random.Random, n: int, root: str) -> Iterator[tuple[str, bytes]]:
    """Topics and payloads of every nasty kind, reproducibly."""
    def value(depth: int = 0) -> object:
        roll = rng.random()
        if depth < 3 and roll < 0.15:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if depth < 3 and roll < 0.3:
            return {rng.choice(["v", "t", "x"]): value(depth + 1) for _ in range(2)}
        return rng.choice([None, True, 10**rng.randint(0, 400), -rng.random() * 1e308,
                           rng.random(), "NaN", "1e999", "", "Infinity", rng.randint(0, 10**13)])

    for _ in range(n):
        kind = rng.choice([*sorted(SERIES), "nomatch"])
        site = rng.choice(["a", "b", "", "x" * 200, "\u00e9t\u00e9"])
        topic = f"{root}/{site}/d{rng.randint(0, 5)}/{kind}"
        form = rng.randrange(5)
        if form == 0:
            payload = rng.randbytes(rng.randint(0, 100))
        elif form == 1:
            payload = (b"[" * rng.randint(1, 3000)) + b"1"
        elif form == 2:
            payload = rng.choice([b"NaN", b"1e999", b"on", b"off", b"-0", b"12.5", b"x" * 3000])
        else:
            doc = {"time": value(), "at": value(), "v": value(), "env": {"t": value()},
                   "list": [value(), {"v": value()}]}
            payload = dumps(doc)
        yield topic, payload


async def test_a_flood_of_random_payloads_through_a_real_broker(
        mosquitto: Broker, simulator: Simulator, topic_root: str) -> None:
    rng = random.Random(20261128)
    # The broker delivers only what the subscriptions match (the rest is fuzzed above).
    junk = [m for m in random_payloads(rng, 1500, topic_root) if kind_of(m[0], topic_root)]
    # What the mapping makes of the junk, by the same code without a broker: the collector
    # must count exactly this, message for message.
    offline = Harness(config(mosquitto.url, topic_root))
    for topic, payload in junk:
        offline.feed(topic, payload)
    text = base_config(simulator.url) + source_yaml(mosquitto.url, topic_root)
    async with running_daemon(parse_config(text, env={})) as daemon:
        family = daemon.telemetry.families
        await wait_for(lambda: family["mqtt_connected"].value("fz") == 1, what="connected")
        await asyncio.sleep(0.01)  # good readings are stamped after the metrics' creation
        goods = [good_message(i, topic_root) for i in range(0, len(junk), 5)]
        messages: list[tuple[str, str | bytes]] = []
        for i, (topic, payload) in enumerate(junk):
            messages.append((topic, payload))
            if i % 5 == 0:
                messages.append(goods[i // 5][:2])
        await publish(mosquitto.url, messages)
        await wait_for(lambda: family["mqtt_messages"].value("fz") == len(messages), timeout=30,
                       what="every message at the collector")
        await wait_for(lambda: daemon.buffer.buffered + daemon.buffer.in_flight == 0,
                       timeout=30, what="everything flushed")
        assert family["mqtt_connected"].value("fz") == 1
        assert family["mqtt_reconnects"].total() == 0
    bad = {labels[1]: n for labels, n in family["mqtt_bad_input"].by_label().items()}
    expected_bad = {labels[1]: n for labels, n in
                    offline.telemetry.families["mqtt_bad_input"].by_label().items()}
    goods_sent = len(goods)
    # Every good message feeds one series and misses two fields (counted as missing_field).
    expected_bad["missing_field"] = expected_bad.get("missing_field", 0) + 2 * goods_sent
    assert bad == expected_bad
    readings = family["mqtt_readings"].value("fz")
    assert readings == offline.count("mqtt_readings") + goods_sent
    b = daemon.buffer
    assert b.received == readings == b.delivered + sum(b.dropped.values())
    assert b.dropped["overflow"] == b.dropped["expired"] == 0
    assert len(simulator.points()) == b.delivered
    arrived = set(simulator.points())
    for _, _, r in goods:
        assert any(p.device == r.device and p.value == r.value and p.metric == r.metric
                   for p in arrived), r
    assert all(math.isfinite(p.value) for p in arrived)
    assert simulator.devices["g0"].display_name == "g0 at good"
