"""The MQTT source: broker messages -> readings, mapped by the configured subscriptions.

One connection per source, made again forever with capped, jittered backoff (aiomqtt 2.x
does not reconnect by itself); every connect subscribes again, so a broker that lost the
session does not leave the source deaf. Messages wait in aiomqtt's bounded queue (what it
discards when full is counted) and become readings synchronously, straight into the sink.
Bad input is counted by reason and logged at a bounded rate, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from typing import NamedTuple

import aiomqtt
import orjson
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector.backoff import Backoff
from collector.config.model import SourceConfig
from collector.config.mqtt import MqttSourceConfig, MqttTlsConfig, Subscription, parse_field_path
from collector.logs import StateLog, ThrottledLog
from collector.model import Device, Dimensions, Reading, dims
from collector.sources import SourceContext, register_source
from collector.sources.payload import (
    BadPayload,
    finite,
    lookup,
    parse_boolean,
    parse_number,
    timestamp_ms,
    to_number,
)

_MAX_CACHED_TOPICS = 10_000
_BATCH = 1000
"""Messages handled in one go before other tasks get a turn."""
_STABLE_CONNECTION_S = 60.0
"""A connection that lasted this long resets the backoff; quicker drops keep backing off."""

# aiomqtt logs each message it discards from a full queue; we count them and log throttled.
_client_log = logging.getLogger("collector.sources.mqtt.client")
_client_log.setLevel(logging.WARNING)
_client_log.addFilter(lambda record: not record.getMessage().startswith("Message queue is full"))


class _Incoming(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, remembering the message last taken off it (`in_hand`)
    until the source has handled it. aiomqtt's message iterator takes each message in a
    task of its own and loses it when the iterator is cancelled after that task's get but
    before it returns (a reload or shutdown stopping the source); the source handles it."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.in_hand: aiomqtt.Message | None = None
        self.closing = False
        """Set once the source disconnects: a message arriving now is acknowledged after
        our DISCONNECT, which the broker never reads; in a persistent session it will send
        the message again, so it is left to that (handling it too would double it)."""

    def get_nowait(self) -> aiomqtt.Message:
        self.in_hand = super().get_nowait()
        return self.in_hand


class _Series(NamedTuple):
    field: str
    path: tuple[str | int, ...]
    metric: str
    dimensions: Dimensions
    scale: float


class _Binding(NamedTuple):
    """What one topic maps to: its device and the series its messages feed."""

    route: _Route
    device: str
    series: tuple[_Series, ...]


class _Route:
    """One subscription, compiled: makes devices and series from a topic's variables."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.pattern = subscription.pattern
        self.payload = subscription.payload
        stamp = subscription.timestamp
        self.timestamp = None if stamp is None else (parse_field_path(stamp.field), stamp.format)
        self._paths = [parse_field_path(m.field) if m.field else () for m in subscription.metrics]

    def device(self, values: dict[str, str]) -> Device:
        t = self.subscription.device
        return Device(
            id=t.id.format_map(values),
            type=t.type,
            display_name=None if t.display_name is None else t.display_name.format_map(values),
            group=None if t.group is None else t.group.format_map(values),
            tags=tuple(tag.format_map(values) for tag in t.tags),
            properties={k: v.format_map(values) for k, v in t.properties.items()},
        )

    def series(self, values: dict[str, str]) -> tuple[_Series, ...]:
        shared = self.subscription.dimensions
        return tuple(
            _Series(m.field or "", path, m.metric,
                    dims({k: v.format_map(values) for k, v in {**shared, **m.dimensions}.items()}),
                    m.scale)
            for m, path in zip(self.subscription.metrics, self._paths, strict=True)
        )


class MqttSource:
    """A `collector.sources.Source` for one broker connection and its subscriptions."""

    def __init__(self, config: MqttSourceConfig, ctx: SourceContext) -> None:
        self.config = config
        self.name = config.name
        self._sink = ctx.sink
        self._clock = ctx.clock
        self._log = ctx.log.bind(source=config.name)
        self._state = StateLog(self._log)
        self._bad_log = ThrottledLog(self._log, interval=60.0)
        self._routes = [_Route(s) for s in config.subscriptions]
        self._bindings: dict[str, _Binding | str] = {}
        self._declared: set[str] = set()
        t, source = ctx.telemetry, (config.name,)
        self._messages = t.counter("mqtt_messages", "MQTT messages received",
                                   ("source",)).labels(*source)
        self._readings = t.counter("mqtt_readings", "Readings made from MQTT messages",
                                   ("source",)).labels(*source)
        self._bad = t.counter("mqtt_bad_input", "MQTT messages, or fields of them, that gave "
                              "no reading, by reason", ("source", "reason"))
        self._discarded = t.counter("mqtt_discarded", "MQTT messages discarded because the "
                                    "incoming queue was full", ("source",)).labels(*source)
        self._reconnects = t.counter("mqtt_reconnects", "Lost or failed MQTT connections, each "
                                     "followed by a new attempt", ("source",)).labels(*source)
        self._connected = t.gauge("mqtt_connected", "1 while connected and subscribed",
                                  ("source",)).gauge(*source)

    async def run(self) -> None:
        cfg = self.config
        tls = await asyncio.to_thread(_tls_context, cfg.tls) if cfg.uses_tls else None
        backoff = Backoff(initial=cfg.reconnect_delay, cap=cfg.reconnect_max_delay)
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._connection(tls)
                except aiomqtt.MqttError as exc:
                    # One log line per outage, however often the retries fail.
                    self._state.failed("broker", "mqtt connection lost or refused; retrying",
                                       url=cfg.url, error=_describe(exc))
                self._connected.set(0)
                self._reconnects.inc()
                if time.monotonic() - started > _STABLE_CONNECTION_S:
                    backoff.reset()
                await asyncio.sleep(backoff.next_delay())
        finally:
            self._connected.set(0)

    async def _connection(self, tls: ssl.SSLContext | None) -> None:
        """Connect, subscribe, and handle messages until the connection breaks."""
        cfg = self.config
        client, queue = self._client(tls)
        try:
            async with client:
                topics: list[tuple[str, int]] = [(s.filter, s.qos) for s in cfg.subscriptions]
                granted: Sequence[int | ReasonCode] = await client.subscribe(topics)
                for subscription, code in zip(cfg.subscriptions, granted, strict=True):
                    if int(code.value if isinstance(code, ReasonCode) else code) >= 0x80:
                        self._state.failed(("subscription", subscription.filter),
                                           "mqtt broker refused a subscription",
                                           filter=subscription.filter, code=str(code))
                    else:
                        self._state.ok(("subscription", subscription.filter),
                                       "mqtt subscription accepted", filter=subscription.filter)
                self._connected.set(1)
                if not self._state.ok("broker", "mqtt connection recovered", url=cfg.url):
                    self._log.info("mqtt connected", url=cfg.url, client_id=cfg.client_id,
                                   subscriptions=[s.filter for s in cfg.subscriptions])
                try:
                    async for message in client.messages:
                        queue.in_hand = None
                        self._handle(message)
                        # Take what else is waiting now: one trip through aiomqtt's
                        # iterator per message costs more than handling the message.
                        for _ in range(min(queue.qsize(), _BATCH)):
                            self._handle(queue.get_nowait())
                            queue.in_hand = None
                finally:
                    queue.closing = True  # the DISCONNECT goes out next (see _Incoming)
        finally:
            # Taken off the queue but not handled (see _Incoming), or still queued when the
            # connection broke or the source stopped: acknowledged to the broker already,
            # so handle them, never drop them. In a clean session, also what came in while
            # disconnecting: nothing would send it again.
            taken, queue.in_hand = queue.in_hand, None
            if taken is not None:
                self._handle(taken)
            while not queue.empty():
                self._handle(queue.get_nowait())
            queue.in_hand = None

    def _client(self, tls: ssl.SSLContext | None) -> tuple[aiomqtt.Client, _Incoming]:
        """A client and its incoming queue. A new client per connection: aiomqtt 2.x clients
        are not reliably reusable after a broken connection (empicano/aiomqtt#269, #288)."""
        cfg = self.config
        v5 = cfg.protocol == "5"
        properties = None
        if v5 and not cfg.clean_session:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(cfg.session_expiry)
        password = cfg.secret_password()
        queues: list[_Incoming] = []
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=None if password is None else password.get_secret_value(),
            identifier=cfg.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else cfg.clean_session,
            clean_start=cfg.clean_session if v5 else MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=max(1, round(cfg.keepalive)),
            timeout=cfg.timeout,
            tls_context=tls,
            max_queued_incoming_messages=cfg.max_queued_messages,
            queue_type=self._queue_class(queues),
            logger=_client_log,
        )
        return client, queues[0]

    def _queue_class(self, made: list[_Incoming]) -> type[_Incoming]:
        source = self

        class IncomingQueue(_Incoming):
            """Counts what it discards when full (aiomqtt only logs that), and lets the
            source see the instance aiomqtt makes, to drain it."""

            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                made.append(self)

            def put_nowait(self, item: aiomqtt.Message) -> None:
                if self.closing and not source.config.clean_session:
                    return
                try:
                    super().put_nowait(item)
                except asyncio.QueueFull:
                    source._discarded.inc()
                    source._bad_log.warning("discarded", "mqtt incoming queue full; message "
                                            "discarded", topic=item.topic.value,
                                            max_queued_messages=self.maxsize)
                    raise

        return IncomingQueue

    def _handle(self, message: aiomqtt.Message) -> None:
        """One message -> readings in the sink; bad input counted, never raised."""
        self._messages.inc()
        topic = message.topic.value
        payload = message.payload
        if len(payload) > self.config.max_payload_bytes:
            self._reject(topic, "too_large", f"{len(payload)} bytes")
            return
        binding = self._bindings.get(topic)
        if binding is None:
            binding = self._bind(topic)
        if isinstance(binding, str):
            self._reject(topic, binding, "")
            return
        route = binding.route
        try:
            if route.payload == "json":
                try:
                    document = orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    raise BadPayload("not_json", str(exc)[:80]) from None
                if route.timestamp is None:
                    when = round(self._clock() * 1000)
                else:
                    path, fmt = route.timestamp
                    when = timestamp_ms(lookup(document, path), fmt)
                for series in binding.series:
                    try:
                        value = finite(to_number(lookup(document, series.path)) * series.scale)
                    except BadPayload as exc:
                        self._reject(topic, exc.reason, f"{series.field}: {exc.detail}")
                        continue
                    self._emit(binding.device, series, when, value)
            else:
                number = (parse_number if route.payload == "number" else parse_boolean)(payload)
                when = round(self._clock() * 1000)
                for series in binding.series:
                    self._emit(binding.device, series, when, finite(number * series.scale))
        except BadPayload as exc:
            self._reject(topic, exc.reason, exc.detail)

    def _emit(self, device: str, series: _Series, when: int, value: float) -> None:
        self._sink.emit(Reading(device, series.metric, series.dimensions, when, value))
        self._readings.inc()

    def _bind(self, topic: str) -> _Binding | str:
        """What `topic` maps to (cached), or the reason it maps to nothing."""
        found: _Binding | str = "unmatched_topic"
        for route in self._routes:
            values = route.pattern.match(topic)
            if values is not None:
                device = route.device(values)
                if not 0 < len(device.id) <= 256 or not device.id.isprintable():
                    found = "bad_device_id"
                else:
                    if device.id not in self._declared:
                        self._sink.declare_device(device)
                        self._declared.add(device.id)
                    found = _Binding(route, device.id, route.series(values))
                break
        if len(self._bindings) >= _MAX_CACHED_TOPICS:
            self._bindings.clear()
        self._bindings[topic] = found
        return found

    def _reject(self, topic: str, reason: str, detail: str) -> None:
        self._bad.labels(self.name, reason).inc()
        self._bad_log.warning(reason, "mqtt message gave no reading", topic=topic,
                              reason=reason, detail=detail)


def _describe(exc: BaseException) -> str:
    """aiomqtt's error with its cause: "Disconnected during message iteration" says little."""
    text = str(exc) or type(exc).__name__
    return f"{text}: {exc.__cause__}" if exc.__cause__ is not None else text


def _tls_context(tls: MqttTlsConfig | None) -> ssl.SSLContext:
    tls = tls or MqttTlsConfig()
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def create(config: SourceConfig, ctx: SourceContext) -> MqttSource:
    if not isinstance(config, MqttSourceConfig):
        raise TypeError(f"an MQTT source needs an MqttSourceConfig, not {type(config).__name__}")
    return MqttSource(config, ctx)


register_source(MqttSourceConfig, create)
