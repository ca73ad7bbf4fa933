"""The MQTT source on its own against a real mosquitto: mapping, payloads, auth, TLS, bad input.

The source writes into a list-collecting sink here; the tests through the whole collector
to the Dynatrace simulator are in test_mqtt_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import textwrap
from pathlib import Path

import aiomqtt
import pytest
from structlog.testing import capture_logs

from collector.config import Config, parse_config
from collector.model import Device, Reading
from tests.helpers import wait_for
from tests.mosquitto import (
    IOT_METRICS,
    PASSWORD,
    USER,
    Broker,
    Certificates,
    publish,
    running_source,
)


def mqtt_config(source: str, *, metrics: str = IOT_METRICS,
                env: dict[str, str] | None = None) -> Config:
    """A config with one MQTT source (YAML of the list item, from `- type: mqtt` on)."""
    text = ("dynatrace:\n  url: http://127.0.0.1:9\n  token: test-token\n" + metrics
            + "sources:\n" + textwrap.indent(textwrap.dedent(source), "  "))
    return parse_config(text, env=env or {})


def json_source(url: str, root: str, *, client_id: str | None = None, extra: str = "",
                **options: str) -> str:
    """An MQTT source for JSON payloads on `{root}/site/{site}/sensor/{device}/state`."""
    lines = "".join(f"  {key}: {value}\n" for key, value in options.items())
    return f"""\
- type: mqtt
  name: iot
  url: {url}
  client_id: {client_id or root + "-collector"}
  reconnect_delay: 100ms
  reconnect_max_delay: 500ms
{lines}{extra}  subscriptions:
    - topic: {root}/site/{{site}}/sensor/{{device}}/state
      qos: 1
      device:
        id: "{{site}}-{{device}}"
        type: Sensor
        display_name: "Sensor {{device}} in {{site}}"
        group: "sensors-{{site}}"
        tags: ["site:{{site}}", iot]
        properties: {{site: "{{site}}", vendor: Acme}}
      dimensions: {{site: "{{site}}"}}
      timestamp: {{field: ts, format: s}}
      metrics:
        - field: env.temperature
          metric: custom:iot.temperature
          dimensions: {{position: inside}}
        - field: env.outside[0].t
          metric: custom:iot.temperature
          dimensions: {{position: outside}}
        - field: humidity_permille
          metric: custom:iot.humidity
          scale: 0.1
"""


def state(ts: float, temperature: object, outside: object, humidity: object) -> str:
    return json.dumps({"ts": ts, "env": {"temperature": temperature, "outside": [{"t": outside}]},
                       "humidity_permille": humidity})


TS = 1_795_000_000  # 2026-11-18T11:06:40Z, in seconds


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_json_payload_fields_map_to_devices_metrics_and_dimensions(
        mosquitto: Broker, topic_root: str, protocol: str) -> None:
    config = mqtt_config(json_source(mosquitto.url, topic_root, protocol=protocol))
    async with running_source(config) as run:
        await publish(mosquitto.url, [
            (f"{topic_root}/site/linz/sensor/s1/state", state(TS, 21.5, -3, 455)),
            (f"{topic_root}/site/wien/sensor/s2/state", state(TS + 1.25, 19, 1.5, 600)),
        ])
        await wait_for(lambda: len(run.sink.readings) == 6, what="6 readings")
    temp, hum, t1, t2 = "custom:iot.temperature", "custom:iot.humidity", TS * 1000, TS * 1000 + 1250
    assert run.sink.readings == [
        Reading("linz-s1", temp, (("position", "inside"), ("site", "linz")), t1, 21.5),
        Reading("linz-s1", temp, (("position", "outside"), ("site", "linz")), t1, -3.0),
        Reading("linz-s1", hum, (("site", "linz"),), t1, 45.5),
        Reading("wien-s2", temp, (("position", "inside"), ("site", "wien")), t2, 19.0),
        Reading("wien-s2", temp, (("position", "outside"), ("site", "wien")), t2, 1.5),
        Reading("wien-s2", hum, (("site", "wien"),), t2, 60.0),
    ]
    assert run.sink.devices["linz-s1"] == Device(
        id="linz-s1", type="Sensor", display_name="Sensor s1 in linz", group="sensors-linz",
        tags=("site:linz", "iot"), properties={"site": "linz", "vendor": "Acme"})
    assert set(run.sink.devices) == {"linz-s1", "wien-s2"}
    assert run.count("mqtt_messages") == 2
    assert run.count("mqtt_readings") == 6


async def test_plain_number_and_boolean_topics_use_the_receive_time(
        mosquitto: Broker, topic_root: str) -> None:
    config = mqtt_config(f"""\
        - type: mqtt
          url: {mosquitto.url}
          clean_session: true
          subscriptions:
            - topic: {topic_root}/{{site}}/{{device}}/temperature
              payload: number
              device: {{type: Sensor}}
              dimensions: {{site: "{{site}}", position: inside}}
              metrics:
                - metric: custom:iot.temperature
            - topic: {topic_root}/{{site}}/{{device}}/door
              payload: boolean
              qos: 2
              device: {{type: Sensor}}
              metrics:
                - metric: custom:iot.door.open
                  dimensions: {{site: "{{site}}"}}
        """)
    now = 1_795_000_123.4567
    async with running_source(config, clock=lambda: now) as run:
        await publish(mosquitto.url, [
            (f"{topic_root}/linz/s1/temperature", " 21.25\n"),
            (f"{topic_root}/linz/s1/door", "1"),
            (f"{topic_root}/linz/s1/door", "false"),
            (f"{topic_root}/linz/s1/temperature", "-4e1"),
        ], qos=2)
        await wait_for(lambda: len(run.sink.readings) == 4, what="4 readings")
    ms = 1_795_000_123_457
    inside = (("position", "inside"), ("site", "linz"))
    # MQTT keeps the order within a topic only.
    assert [r for r in run.sink.readings if r.metric == "custom:iot.temperature"] == [
        Reading("s1", "custom:iot.temperature", inside, ms, 21.25),
        Reading("s1", "custom:iot.temperature", inside, ms, -40.0),
    ]
    assert [r for r in run.sink.readings if r.metric == "custom:iot.door.open"] == [
        Reading("s1", "custom:iot.door.open", (("site", "linz"),), ms, 1.0),
        Reading("s1", "custom:iot.door.open", (("site", "linz"),), ms, 0.0),
    ]
    assert run.sink.devices == {"s1": Device(id="s1", type="Sensor")}


@pytest.mark.parametrize(("fmt", "value", "expected_ms"), [
    ("ms", 1_795_000_000_123, 1_795_000_000_123),
    ("s", 1_795_000_000.5, 1_795_000_000_500),
    ("iso8601", "2026-11-18T11:06:40.250Z", 1_795_000_000_250),
    ("iso8601", "2026-11-18T12:06:40+01:00", 1_795_000_000_000),
    ("iso8601", "2026-11-18T11:06:40", 1_795_000_000_000),  # no zone: UTC
])
async def test_payload_timestamps(mosquitto: Broker, topic_root: str, fmt: str, value: object,
                                  expected_ms: int) -> None:
    config = mqtt_config(f"""\
        - type: mqtt
          url: {mosquitto.url}
          clean_session: true
          subscriptions:
            - topic: {topic_root}/{{device}}
              device: {{type: Sensor}}
              timestamp: {{field: "[1].time", format: {fmt}}}
              metrics:
                - {{field: "[0]", metric: custom:iot.door.open}}
        """)
    async with running_source(config) as run:
        await publish(mosquitto.url, [(f"{topic_root}/d1", json.dumps([True, {"time": value}]))])
        await wait_for(lambda: len(run.sink.readings) == 1, what="a reading")
    assert run.sink.readings == [Reading("d1", "custom:iot.door.open", (), expected_ms, 1.0)]


async def test_password_from_a_file_is_used_and_never_logged(
        mosquitto_auth: Broker, topic_root: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    config = mqtt_config(json_source(mosquitto_auth.url, topic_root, username=USER,
                                     password_file=str(secret)))
    with capture_logs() as logs:
        async with running_source(config) as run:
            await publish(mosquitto_auth.url, [
                (f"{topic_root}/site/linz/sensor/s1/state", state(TS, 20, 1, 1))],
                username=USER, password=PASSWORD)
            await wait_for(lambda: len(run.sink.readings) == 3, what="3 readings")
    out, err = capfd.readouterr()
    everything = repr(logs) + caplog.text + out + err + repr(config) + str(config.model_dump())
    assert PASSWORD not in everything
    assert "mqtt connected" in [entry["event"] for entry in logs]


async def test_wrong_password_retries_and_logs_the_failure_once(
        mosquitto_auth: Broker, topic_root: str, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    wrong = "not-the-" + PASSWORD
    caplog.set_level(logging.DEBUG)
    config = mqtt_config(json_source(mosquitto_auth.url, topic_root, username=USER,
                                     password=wrong))
    with capture_logs() as logs:
        async with running_source(config, connect=False) as run:
            await wait_for(lambda: run.count("mqtt_reconnects") >= 4, what="4 failed attempts")
            assert not run.connected
            assert not run.task.done()
    failures = [e for e in logs if e["event"] == "mqtt connection lost or refused; retrying"]
    assert len(failures) == 1, logs
    assert failures[0]["log_level"] == "error"
    assert "not authorized" in failures[0]["error"].lower()  # mosquitto's answer
    out, err = capfd.readouterr()
    assert wrong not in repr(logs) + caplog.text + out + err


async def test_tls_with_ca_and_client_certificate(
        mosquitto_tls: Broker, certificates: Certificates, topic_root: str) -> None:
    tls = (f"  tls:\n    ca_file: {certificates.ca}\n    cert_file: {certificates.client_cert}\n"
           f"    key_file: {certificates.client_key}\n")
    config = mqtt_config(json_source(mosquitto_tls.url, topic_root, extra=tls))
    async with running_source(config) as run:
        await publish(mosquitto_tls.url, [
            (f"{topic_root}/site/linz/sensor/s1/state", state(TS, 20, 1, 1))],
            tls_params=_client_tls(certificates))
        await wait_for(lambda: len(run.sink.readings) == 3, what="3 readings")


async def test_tls_verifies_the_broker_by_default(
        mosquitto_tls: Broker, certificates: Certificates, topic_root: str) -> None:
    # The client certificate is fine, but without ca_file the system CAs are used, which do
    # not know the test CA: the source must refuse the broker, and keep trying.
    tls = (f"  tls:\n    cert_file: {certificates.client_cert}\n"
           f"    key_file: {certificates.client_key}\n")
    config = mqtt_config(json_source(mosquitto_tls.url, topic_root, extra=tls))
    with capture_logs() as logs:
        async with running_source(config, connect=False) as run:
            await wait_for(lambda: run.count("mqtt_reconnects") >= 2, what="2 failed attempts")
            assert not run.connected
    failures = [e for e in logs if e["event"] == "mqtt connection lost or refused; retrying"]
    assert len(failures) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in failures[0]["error"]
    assert failures[0]["url"] == mosquitto_tls.url  # names the broker's host


async def test_tls_verification_can_be_turned_off_for_a_lab_broker(
        mosquitto_tls: Broker, certificates: Certificates, topic_root: str) -> None:
    tls = (f"  tls:\n    verify: false\n    cert_file: {certificates.client_cert}\n"
           f"    key_file: {certificates.client_key}\n")
    config = mqtt_config(json_source(mosquitto_tls.url, topic_root, extra=tls))
    async with running_source(config) as run:
        await publish(mosquitto_tls.url, [
            (f"{topic_root}/site/linz/sensor/s1/state", state(TS, 20, 1, 1))],
            tls_params=_client_tls(certificates))
        await wait_for(lambda: len(run.sink.readings) == 3, what="3 readings")


def _client_tls(certificates: Certificates) -> aiomqtt.TLSParameters:
    return aiomqtt.TLSParameters(ca_certs=str(certificates.ca),
                                 certfile=str(certificates.client_cert),
                                 keyfile=str(certificates.client_key))


async def test_bad_input_is_counted_by_reason_and_good_input_still_arrives(
        mosquitto: Broker, topic_root: str) -> None:
    config = mqtt_config(f"""\
        - type: mqtt
          name: iot
          url: {mosquitto.url}
          clean_session: true
          max_payload_bytes: 200
          subscriptions:
            - topic: {topic_root}/json/{{device}}
              device: {{type: Sensor}}
              timestamp: {{field: ts, format: ms}}
              metrics:
                - {{field: a, metric: custom:iot.door.open}}
                - {{field: b.c, metric: custom:iot.humidity, scale: 10}}
            - topic: {topic_root}/number/{{device}}
              payload: number
              device: {{type: Sensor}}
              metrics: [{{metric: custom:iot.door.open}}]
            - topic: {topic_root}/bool/{{device}}
              payload: boolean
              device: {{type: Sensor}}
              metrics: [{{metric: custom:iot.door.open}}]
            - topic: {topic_root}/id/{{device}}
              payload: number
              device: {{id: "{{device}}", type: Sensor}}
              metrics: [{{metric: custom:iot.door.open}}]
        """)
    j, n, b = f"{topic_root}/json/d", f"{topic_root}/number/d", f"{topic_root}/bool/d"
    bad: list[tuple[str, str, str | bytes]] = [  # (reason, topic, payload)
        ("not_json", j, "{not json"),
        ("not_json", j, '{"a": 1e999, "ts": 5}'),
        ("not_json", j, b"\xff\xfe"),
        ("missing_field", j, '{"ts": 5, "a": 1}'),  # b.c missing; a still arrives
        ("missing_field", j, '{"a": 1, "b": {"c": 2}}'),  # no timestamp: the whole message
        ("missing_field", j, '[1, 2]'),  # ts missing
        ("not_a_number", j, '{"ts": 5, "a": "12", "b": {"c": 1}}'),  # a bad, b.c arrives
        ("not_a_number", j, '{"ts": 5, "a": null, "b": {"c": [1]}}'),  # both bad
        ("not_finite", j, '{"ts": 5, "a": 1, "b": {"c": 1.5e308}}'),  # scale 10 overflows
        ("bad_timestamp", j, '{"ts": "yesterday", "a": 1, "b": {"c": 1}}'),
        ("too_large", j, '{"ts": 5, "a": 1, "b": {"c": 1}, "pad": "' + "x" * 200 + '"}'),
        ("not_a_number", n, "twelve"),
        ("not_a_number", n, ""),
        ("not_finite", n, "nan"),
        ("not_finite", n, "-inf"),
        ("not_a_boolean", b, "2"),
        ("not_a_boolean", b, "yes please"),
        ("bad_device_id", f"{topic_root}/id/", "1"),  # empty device id
    ]
    expected = {"not_json": 3, "missing_field": 3, "not_a_number": 5, "not_finite": 3,
                "bad_timestamp": 1, "too_large": 1, "not_a_boolean": 2, "bad_device_id": 1}
    good: list[tuple[str, str | bytes]] = [
        (j, json.dumps({"ts": 1000 + i, "a": i, "b": {"c": i}})) for i in range(20)]
    good += [(n, f"{i}.5") for i in range(20)] + [(b, "on"), (b, "OFF")]
    floods = [(topic, payload) for _, topic, payload in bad] * 3
    messages = [m for i in range(max(len(good), len(floods)))
                for m in (good[i:i + 1] + floods[i:i + 1])]
    with capture_logs() as logs:
        async with running_source(config) as run:
            await publish(mosquitto.url, messages)
            await wait_for(lambda: run.count("mqtt_messages") == len(messages),
                           what="all messages")
            assert not run.task.done()
            by_reason = run.telemetry.families["mqtt_bad_input"].by_label()
            assert by_reason == {("iot", r): 3.0 * count for r, count in expected.items()}
            readings = run.sink.readings
    # Logged at a bounded rate: the first of each reason (within a minute), with its topic.
    warnings = [e for e in logs if e["event"] == "mqtt message gave no reading"]
    assert sorted(e["reason"] for e in warnings) == sorted(expected)
    assert all(e["topic"].startswith(topic_root) and e["log_level"] == "warning"
               for e in warnings)
    assert sorted(r.value for r in readings if r.metric == "custom:iot.humidity") == sorted(
        [10.0 * i for i in range(20)] + [10.0] * 3)  # from the 'a bad, b.c arrives' messages
    assert sorted(r.value for r in readings if r.metric == "custom:iot.door.open") == sorted(
        [float(i) for i in range(20)] + [i + 0.5 for i in range(20)] + [1.0, 0.0] + [1.0] * 6)


async def test_a_topic_that_matches_no_subscription_is_counted(
        mosquitto: Broker, topic_root: str) -> None:
    # A persistent session remembers subscriptions a previous config made; the broker keeps
    # delivering those topics, and they match nothing in the current config.
    client_id = f"{topic_root}-collector"
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=client_id,
                              clean_session=False) as previous:
        await previous.subscribe(f"{topic_root}/old/#", qos=1)
    config = mqtt_config(json_source(mosquitto.url, topic_root, client_id=client_id))
    async with running_source(config) as run:
        await publish(mosquitto.url, [(f"{topic_root}/old/thing", "1"),
                                      (f"{topic_root}/site/linz/sensor/s1/state",
                                       state(TS, 1, 2, 3))])
        await wait_for(lambda: run.count("mqtt_messages") == 2, what="both messages")
        assert run.count("mqtt_bad_input", "unmatched_topic") == 1
        assert len(run.sink.readings) == 3


async def test_after_a_broker_restart_that_lost_the_session_it_subscribes_again(
        mosquitto: Broker, topic_root: str) -> None:
    # No persistence: the restarted broker knows nothing of the session or its subscriptions.
    config = mqtt_config(json_source(mosquitto.url, topic_root))
    with capture_logs() as logs:
        async with running_source(config) as run:
            await mosquitto.stop()
            await wait_for(lambda: not run.connected, what="the source to notice")
            await mosquitto.start()
            await wait_for(lambda: run.connected, what="the source to reconnect")
            await publish(mosquitto.url, [
                (f"{topic_root}/site/linz/sensor/s1/state", state(TS, 20, 1, 1))])
            await wait_for(lambda: len(run.sink.readings) == 3, what="3 readings")
            assert run.count("mqtt_reconnects") >= 1
    events = [e["event"] for e in logs]
    assert events.count("mqtt connection lost or refused; retrying") == 1
    assert events.count("mqtt connection recovered") == 1


async def test_a_full_incoming_queue_discards_and_counts_what_it_discards(
        mosquitto: Broker, topic_root: str) -> None:
    config = mqtt_config(f"""\
        - type: mqtt
          url: {mosquitto.url}
          clean_session: true
          max_queued_messages: 1
          subscriptions:
            - topic: {topic_root}/{{device}}
              payload: number
              qos: 0
              device: {{type: Sensor}}
              metrics: [{{metric: custom:iot.door.open}}]
        """)
    sent = 5000
    async with running_source(config) as run:
        await publish(mosquitto.url, [(f"{topic_root}/d", "1")] * sent, qos=0)
        await wait_for(lambda: run.count("mqtt_messages") + run.count("mqtt_discarded") == sent,
                       what="every message processed or counted as discarded")
        assert run.count("mqtt_discarded") > 0
        assert len(run.sink.readings) == run.count("mqtt_messages")


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_message_arriving_as_the_source_stops_is_handled_not_lost(
        mosquitto: Broker, topic_root: str, turns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # aiomqtt's message iterator takes each message off the queue in a task of its own; a
    # source stopped (reload, shutdown) between that task's get and the iterator's return
    # used to lose the message, already acknowledged to the broker. Here a message is put
    # in the queue as paho's on_message does, and the source is stopped `turns` event-loop
    # turns later: every moment of that window is tried.
    from collector.sources.mqtt import MqttSource

    queues: list[asyncio.Queue[aiomqtt.Message]] = []
    make_client = MqttSource._client

    def capture(self: MqttSource, tls: ssl.SSLContext | None
                ) -> tuple[aiomqtt.Client, asyncio.Queue[aiomqtt.Message]]:
        client, queue = make_client(self, tls)
        queues.append(queue)
        return client, queue

    monkeypatch.setattr(MqttSource, "_client", capture)
    config = mqtt_config(json_source(mosquitto.url, topic_root))
    topic = f"{topic_root}/site/linz/sensor/s1/state"
    async with running_source(config) as run:
        await asyncio.sleep(0.05)  # the source waits for a message
        queues[-1].put_nowait(aiomqtt.Message(topic, state(TS, 20, 1, 1).encode(), 1, False,
                                              1, None))
        for _ in range(turns):
            await asyncio.sleep(0)
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
    assert len(run.sink.readings) == 3
    assert run.count("mqtt_messages") == 1


@pytest.mark.parametrize("clean_session", [False, True])
async def test_a_message_arriving_while_disconnecting_is_left_to_a_persistent_session(
        clean_session: bool) -> None:
    # Once the source disconnects, a message that still comes in is acknowledged after the
    # DISCONNECT, which the broker never reads: a persistent session gets it again on the
    # next connection, so handling it now would double it; a clean session would not.
    from collector.sources import SourceContext
    from collector.sources.mqtt import MqttSource
    from collector.telemetry import Telemetry
    from tests.mosquitto import ListSink

    config = mqtt_config(json_source("mqtt://127.0.0.1:1883", "t", client_id="c",
                                     clean_session=str(clean_session).lower()))
    source = MqttSource(config.sources[0], SourceContext(ListSink(), Telemetry()))  # type: ignore[arg-type]
    _, queue = source._client(None)
    message = aiomqtt.Message("t/site/a/sensor/b/state", b"{}", 1, False, 1, None)
    queue.put_nowait(message)
    queue.closing = True
    queue.put_nowait(message)
    assert queue.qsize() == (2 if clean_session else 1)
