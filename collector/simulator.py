"""A strict stand-in for the two Dynatrace endpoints dt-collector uses, over real HTTP.

`PUT /api/v1/timeseries/{id}` registers a custom metric and
`POST /api/v1/entity/infrastructure/custom/{customDeviceId}` pushes data points and
metadata of a custom device; both also under the ActiveGate prefix `/e/{env}`. The
simulator checks what the reference and api-notes.md say Dynatrace checks (token,
content type, body size, JSON shape and types, registered metric, declared dimension
keys, device type against metric types, the one-hour window) and answers with the
reference's ErrorEnvelope. A push with any violation is rejected whole, like the real
endpoint; every violation names its element (`series[2].dataPoints[0]`) so a client can
drop that series and resend the rest.

It keeps what it accepted (`points()`, `pushes`, `devices`, `metrics`), counts every
answer, and can be told to misbehave (`fail`, `slow`, `drop_connections`) so that tests
and users trying a config offline (`dt-collector simulate`) can see how the collector
copes. The same is available over HTTP under `/_simulator/`, which is never faulted,
authenticated or counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from collector.config.types import check_dimension_key, check_metric_id

__all__ = ["AcceptedPoint", "DeviceState", "Fault", "MetricDefinition", "Push",
           "RequestRecord", "Simulator", "Violation", "serve"]

log = logging.getLogger(__name__)

WINDOW_MS = 3_600_000
"""Data points may be at most one hour old (api-notes.md)."""
FUTURE_TOLERANCE_MS = 1_000
"""Future timestamps are undocumented; allow a second of clock skew, no more."""
MAX_PROPERTIES, MAX_PROPERTY_KEY, MAX_PROPERTY_VALUE = 20, 100, 200
MAX_DIMENSION_LENGTH = 128
REGISTRATION_BODY_LIMIT = 1_048_576
"""The general request body limit; the smaller push limit is `max_body_bytes`."""
CONTROL_PREFIX = "/_simulator/"
_BODY_BYTES = web.RequestKey("body_bytes", int)

_ENTITY_ID = re.compile(r"CUSTOM_DEVICE-[0-9A-F]{16}")
# The CustomDevicePushMessage elements of the reference and their JSON types.
_PUSH_FIELDS = {
    "configUrl": "string", "displayName": "string", "favicon": "string", "group": "string",
    "type": "string", "hostNames": "string[]", "ipAddresses": "string[]", "tags": "string[]",
    "listenPorts": "integer[]", "properties": "object", "series": "array",
}
_SERIES_FIELDS = frozenset({"timeseriesId", "dimensions", "dataPoints"})
_REGISTRATION_FIELDS = frozenset({"displayName", "unit", "dimensions", "types"})
_FAULT_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "fail": {"status": int, "count": int, "seconds": (int, float), "retry_after": str,
             "path_contains": str},
    "slow": {"delay": (int, float), "count": int, "seconds": (int, float), "path_contains": str},
    "drop": {"count": int, "seconds": (int, float), "path_contains": str},
}


class AcceptedPoint(NamedTuple):
    """One data point the simulator accepted."""

    device: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    timestamp_ms: int
    value: float


class Push(NamedTuple):
    """One accepted push: device id, parsed body, receive time (simulator clock, seconds)."""

    device: str
    body: dict[str, Any]
    received: float


class RequestRecord(NamedTuple):
    """One request to a Dynatrace endpoint; `status` 0 means the connection was dropped."""

    method: str
    path: str
    status: int
    body_bytes: int


class Violation(NamedTuple):
    """One entry of the ErrorEnvelope's `constraintViolations`."""

    path: str
    message: str
    parameter_location: str = "PAYLOAD_BODY"

    def to_json(self) -> dict[str, Any]:
        # Dynatrace sends `location: null` for body violations.
        return {"path": self.path, "message": self.message,
                "parameterLocation": self.parameter_location, "location": None}


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    """A registered custom metric and when it was first registered (clock, ms)."""

    id: str
    display_name: str
    unit: str
    dimensions: tuple[str, ...]
    types: tuple[str, ...]
    created_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"timeseriesId": self.id, "displayName": self.display_name, "unit": self.unit,
                "dimensions": list(self.dimensions), "types": list(self.types),
                "detailedSource": "API", "filter": "CUSTOM"}


@dataclass(slots=True)
class DeviceState:
    """A custom device as the pushes so far have left it."""

    id: str
    entity_id: str = ""
    group_id: str = ""
    type: str | None = None
    display_name: str | None = None
    group: str | None = None
    config_url: str | None = None
    favicon: str | None = None
    host_names: list[str] = field(default_factory=list)
    ip_addresses: list[str] = field(default_factory=list)
    listen_ports: list[int] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    point_count: int = 0
    last_values: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, float]] = field(
        default_factory=dict
    )
    """Per series (metric, dimensions): the point with the latest timestamp."""

    def to_json(self) -> dict[str, Any]:
        return {
            "entityId": self.entity_id, "groupId": self.group_id, "type": self.type,
            "displayName": self.display_name, "group": self.group, "configUrl": self.config_url,
            "favicon": self.favicon, "hostNames": self.host_names,
            "ipAddresses": self.ip_addresses, "listenPorts": self.listen_ports,
            "tags": self.tags, "properties": self.properties,
            "seriesCount": len(self.last_values), "pointCount": self.point_count,
            "lastValues": [
                {"timeseriesId": metric, "dimensions": dict(dims), "timestamp": ts, "value": v}
                for (metric, dims), (ts, v) in self.last_values.items()
            ],
        }


@dataclass(slots=True)
class Fault:
    """Misbehaviour for the next `remaining` matching requests and/or until `until`."""

    kind: str  # "fail", "slow" or "drop"
    remaining: int | None = None
    until: float | None = None  # time.monotonic() deadline
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    path_contains: str | None = None

    def active(self, now: float) -> bool:
        return (self.remaining is None or self.remaining > 0) and (
            self.until is None or now < self.until
        )

    def to_json(self) -> dict[str, Any]:
        # The field names of POST /_simulator/faults, plus what is left of the fault.
        left = None if self.until is None else round(self.until - time.monotonic(), 3)
        return {"kind": self.kind, "remaining": self.remaining, "seconds_left": left,
                "status": self.status, "retry_after": self.retry_after, "delay": self.delay,
                "path_contains": self.path_contains}


class _Rejected(Exception):
    """Raised by a handler to answer with an ErrorEnvelope."""

    def __init__(self, status: int, message: str, violations: list[Violation] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.violations, self.headers = violations or [], headers


def _envelope(status: int, message: str, violations: list[Violation] | None = None,
              headers: Mapping[str, str] | None = None) -> web.Response:
    error = {"code": status, "message": message,
             "constraintViolations": [v.to_json() for v in violations or []]}
    return _json({"error": error}, status, headers)


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def _hex16(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16].upper()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Simulator:
    """The simulated Dynatrace environment: endpoints, accepted data, fault injection."""

    def __init__(self, tokens: set[str] | None = None, *, max_body_bytes: int = 15360,
                 clock: Callable[[], float] = time.time) -> None:
        self._tokens = set(tokens) if tokens is not None else None
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self.url = ""
        self.metrics: dict[str, MetricDefinition] = {}
        self.devices: dict[str, DeviceState] = {}
        self.pushes: list[Push] = []
        self.responses: Counter[int] = Counter()
        self.requests: list[RequestRecord] = []
        self._points: list[AcceptedPoint] = []
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    def app(self) -> web.Application:
        """A new aiohttp application serving this simulator's state."""
        app = web.Application(middlewares=[self._middleware])
        for prefix in ("", "/e/{env}"):
            app.router.add_put(prefix + "/api/v1/timeseries/{metric}", self._put_timeseries)
            app.router.add_post(prefix + "/api/v1/entity/infrastructure/custom/{device}",
                                self._post_custom_device)
        c = CONTROL_PREFIX
        app.router.add_get(c + "points", self._get_points)
        app.router.add_get(c + "devices", self._get_devices)
        app.router.add_get(c + "metrics", self._get_metrics)
        app.router.add_get(c + "stats", self._get_stats)
        app.router.add_get(c + "faults", self._get_faults)
        app.router.add_post(c + "faults", self._post_faults)
        app.router.add_delete(c + "faults", self._delete_faults)
        app.router.add_post(c + "reset", self._post_reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = a free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        # Slow answers wake up on stop, so a short shutdown timeout never cuts real work.
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        address, bound_port = runner.addresses[0][:2]
        self.url = f"http://{f'[{address}]' if ':' in address else address}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening; safe without start and safe twice."""
        self._stopping.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- accepted data -----------------------------------------------------------------

    def points(self) -> list[AcceptedPoint]:
        """Every data point accepted, in arrival order."""
        return list(self._points)

    def reset(self) -> None:
        """Forget accepted data, devices, pushes and counts; keep metrics and faults."""
        self._points.clear()
        self.pushes.clear()
        self.devices.clear()
        self.responses.clear()
        self.requests.clear()

    # -- fault injection ---------------------------------------------------------------

    def fail(self, status: int = 503, *, count: int | None = None, seconds: float | None = None,
             retry_after: str | None = None, path_contains: str | None = None) -> None:
        """Answer `status` with an ErrorEnvelope (and `Retry-After` when given)."""
        if not 400 <= status <= 599:
            raise ValueError(f"a failure status is 400-599, not {status}")
        self._add_fault(Fault("fail", status=status, retry_after=retry_after,
                              path_contains=path_contains), count, seconds)

    def slow(self, delay: float, *, count: int | None = None, seconds: float | None = None,
             path_contains: str | None = None) -> None:
        """Wait `delay` seconds before handling a request."""
        if delay <= 0:
            raise ValueError("delay must be greater than zero")
        self._add_fault(Fault("slow", delay=delay, path_contains=path_contains), count, seconds)

    def drop_connections(self, *, count: int | None = None, seconds: float | None = None,
                         path_contains: str | None = None) -> None:
        """Read the request, then close the TCP connection without answering."""
        self._add_fault(Fault("drop", path_contains=path_contains), count, seconds)

    def clear_faults(self) -> None:
        self._faults.clear()

    def faults(self) -> list[Fault]:
        """The faults still active."""
        now = time.monotonic()
        self._faults = [f for f in self._faults if f.active(now)]
        return list(self._faults)

    def _add_fault(self, fault: Fault, count: int | None, seconds: float | None) -> None:
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if seconds is not None and seconds <= 0:
            raise ValueError("seconds must be greater than zero")
        fault.remaining = count
        # Fault durations follow real time, not the injectable data clock.
        fault.until = None if seconds is None else time.monotonic() + seconds
        self._faults.append(fault)

    def _take_faults(self, path: str) -> tuple[list[Fault], Fault | None, Fault | None]:
        """The slow faults, the drop fault and the failure that apply to a request to `path`.

        Only faults that take effect are charged: a failure is not used up by a request
        whose connection is dropped anyway.
        """
        matching = [f for f in self.faults()
                    if f.path_contains is None or f.path_contains in path]
        slow = [f for f in matching if f.kind == "slow"]
        drop = next((f for f in matching if f.kind == "drop"), None)
        fail = None if drop else next((f for f in matching if f.kind == "fail"), None)
        for fault in (*slow, drop, fail):
            if fault is not None and fault.remaining is not None:
                fault.remaining -= 1
        return slow, drop, fail

    # -- HTTP plumbing -----------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        control = request.path.startswith(CONTROL_PREFIX)
        slow, drop, failure = ([], None, None) if control else self._take_faults(request.path)
        for fault in slow:
            # Wakes early on stop() so shutdown never waits out a long delay.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), fault.delay)
        if drop is not None:
            # Read the whole request first: the client then sees a clean disconnect
            # instead of a failed write.
            size = 0
            while chunk := await request.content.read(65536):
                size += len(chunk)
            if request.transport is not None:
                request.transport.close()
            self.requests.append(RequestRecord(request.method, request.path, 0, size))
            return web.Response()  # never reaches the client; aiohttp ignores the write
        try:
            if failure is not None:
                headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
                raise _Rejected(failure.status, f"Simulated failure {failure.status}",
                                headers=headers)
            response = await handler(request)
        except _Rejected as exc:
            response = _envelope(exc.status, exc.message, exc.violations, exc.headers)
        except web.HTTPException as exc:  # the router's 404 and 405
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = _envelope(exc.status, f"{exc.reason}: {request.method} {request.path}",
                                 headers=allow)
        except Exception:
            log.exception("simulator failed on %s %s", request.method, request.path)
            response = _envelope(500, "Internal simulator error")
        if not control:
            size = request.get(_BODY_BYTES, request.content_length or 0)
            self.requests.append(RequestRecord(request.method, request.path, response.status,
                                               size))
            self.responses[response.status] += 1
        return response

    def _check_token(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Api-Token" or not token or " " in token:
            raise _Rejected(401, "Missing authorization parameter.", [Violation(
                "Authorization", "expected 'Api-Token <token>'", "HEADER")])
        if self._tokens is not None and token not in self._tokens:
            raise _Rejected(403, "Token Authentication failed")

    async def _read_json(self, request: web.Request, limit: int) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise _Rejected(415, f"Unsupported content type {request.content_type!r}: "
                                 "the endpoint consumes application/json")
        declared = request.content_length
        if declared is not None and declared > limit:
            request[_BODY_BYTES] = declared
            raise _Rejected(413, f"Request body of {declared} bytes exceeds {limit} bytes")
        # Chunked bodies carry no Content-Length: count what actually arrives.
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(65536):
            size += len(chunk)
            request[_BODY_BYTES] = size
            if size > limit:
                raise _Rejected(413, f"Request body exceeds {limit} bytes")
            chunks.append(chunk)
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise _Rejected(400, f"Could not map JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _Rejected(400, "Could not map JSON: the body must be a JSON object")
        return body

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- PUT /api/v1/timeseries/{id} ---------------------------------------------------

    async def _put_timeseries(self, request: web.Request) -> web.StreamResponse:
        self._check_token(request)
        body = await self._read_json(request, REGISTRATION_BODY_LIMIT)
        metric_id = request.match_info["metric"]
        existing = self.metrics.get(metric_id)
        out: list[Violation] = []
        try:
            check_metric_id(metric_id)
        except ValueError as exc:
            out.append(Violation("timeseriesIdentifier", str(exc), "PATH"))
        out += [Violation(k, f"Unknown element {k!r}") for k in body
                if k not in _REGISTRATION_FIELDS]
        # Raw JSON values, checked before they are used.
        display_name: Any = body.get("displayName")
        if not isinstance(display_name, str) or not display_name:
            out.append(Violation("displayName", "displayName is required: a non-empty string"))
        unit: Any = body.get("unit")
        if unit is None:
            unit = "Count"  # Dynatrace's fallback for a missing or unknown unit
        elif not isinstance(unit, str):
            out.append(Violation("unit", "unit must be a string"))
        dimensions: Any = body.get("dimensions")
        if dimensions is None:
            dimensions = []
        elif not isinstance(dimensions, list):
            out.append(Violation("dimensions", "dimensions must be an array of dimension keys"))
        else:
            for i, key in enumerate(dimensions):
                try:
                    check_dimension_key(key if isinstance(key, str) else "")
                except ValueError as exc:
                    out.append(Violation(f"dimensions[{i}]", str(exc)))
        types: Any = body.get("types")
        if types is None and existing is not None:
            types = list(existing.types)  # an update may leave the types as they are
        elif not isinstance(types, list) or not types:
            out.append(Violation("types", "types is required: a non-empty array of device "
                                          "types when the timeseries is created"))
        else:
            out += [Violation(f"types[{i}]", "a type is a non-empty string")
                    for i, t in enumerate(types) if not isinstance(t, str) or not t]
        if out:
            raise _Rejected(400, "Constraints violated.", out)
        definition = MetricDefinition(
            metric_id, display_name, unit, tuple(dimensions), tuple(types),
            # An update keeps the original registration time: points between the first
            # registration and this update stay valid, as in Dynatrace.
            existing.created_ms if existing is not None else self._now_ms(),
        )
        self.metrics[metric_id] = definition
        return _json(definition.to_json(), 200 if existing is not None else 201)

    # -- POST /api/v1/entity/infrastructure/custom/{id} --------------------------------

    async def _post_custom_device(self, request: web.Request) -> web.StreamResponse:
        self._check_token(request)
        device_id = request.match_info["device"]  # aiohttp has percent-decoded it
        body = await self._read_json(request, self.max_body_bytes)
        if _ENTITY_ID.fullmatch(device_id):
            raise _Rejected(400, "Constraints violated.", [Violation(
                "customDeviceId", "use your own device id, not a Dynatrace entity id", "PATH")])
        violations = self._check_push(device_id, body, self._now_ms())
        if violations:
            raise _Rejected(400, "Constraints violated.", violations)
        # No await between the checks and here: a push is accepted atomically.
        device = self._accept(device_id, body)
        return _json({"entityId": device.entity_id, "groupId": device.group_id})

    def _check_push(self, device_id: str, body: dict[str, Any], now_ms: int) -> list[Violation]:
        out: list[Violation] = []
        known = self.devices.get(device_id)
        for key, value in body.items():
            kind = _PUSH_FIELDS.get(key)
            if kind is None:
                out.append(Violation(key, f"Unknown element {key!r}"))
            elif value is None:
                continue
            elif kind == "string" and not isinstance(value, str):
                out.append(Violation(key, f"{key} must be a string"))
            elif kind in ("string[]", "integer[]"):
                if not isinstance(value, list):
                    out.append(Violation(key, f"{key} must be an array"))
                    continue
                for i, item in enumerate(value):
                    if kind == "string[]" and not isinstance(item, str):
                        out.append(Violation(f"{key}[{i}]", "must be a string"))
                    elif kind == "integer[]" and (not isinstance(item, int) or isinstance(
                            item, bool) or not 0 <= item <= 65535):
                        out.append(Violation(f"{key}[{i}]", "must be a port number 0-65535"))
        out += self._check_properties(body.get("properties"), known)
        sent_type = body.get("type")
        device_type = sent_type if isinstance(sent_type, str) and sent_type else (
            known.type if known is not None else None)
        if device_type is None and "type" not in {v.path for v in out}:
            out.append(Violation("type", "the first push of a custom device must set its type"))
        series = body.get("series")
        if series is None:
            out.append(Violation("series", "series is required to report metric data"))
        elif not isinstance(series, list):
            out.append(Violation("series", "series must be an array"))
        else:
            for i, item in enumerate(series):
                out += self._check_series(f"series[{i}]", item, device_type, now_ms)
        return out

    @staticmethod
    def _check_properties(properties: object, known: DeviceState | None) -> list[Violation]:
        if properties is None:
            return []
        if not isinstance(properties, dict):
            return [Violation("properties", "properties must be an object of string values")]
        out: list[Violation] = []
        for key, value in properties.items():
            if len(key) > MAX_PROPERTY_KEY:
                out.append(Violation(f"properties.{key}",
                                     f"a property key has at most {MAX_PROPERTY_KEY} characters"))
            if not isinstance(value, str):
                out.append(Violation(f"properties.{key}", "a property value must be a string"))
            elif len(value) > MAX_PROPERTY_VALUE:
                out.append(Violation(f"properties.{key}", "a property value has at most "
                                                          f"{MAX_PROPERTY_VALUE} characters"))
        # Properties are added to the existing ones, so the limit is on the merged set.
        merged = set(properties) | (set(known.properties) if known is not None else set())
        if len(merged) > MAX_PROPERTIES:
            out.append(Violation("properties", f"a custom device has at most {MAX_PROPERTIES} "
                                               f"properties; this push would make {len(merged)}"))
        return out

    def _check_series(self, path: str, series: object, device_type: str | None,
                      now_ms: int) -> list[Violation]:
        if not isinstance(series, dict):
            return [Violation(path, "a series must be an object")]
        out = [Violation(f"{path}.{k}", f"Unknown element {k!r}") for k in series
               if k not in _SERIES_FIELDS]
        metric_id = series.get("timeseriesId")
        metric = self.metrics.get(metric_id) if isinstance(metric_id, str) else None
        if not isinstance(metric_id, str):
            out.append(Violation(f"{path}.timeseriesId", "timeseriesId is required: a string"))
        elif metric is None:
            out.append(Violation(f"{path}.timeseriesId", f"Timeseries {metric_id!r} is not "
                                 "registered: register it with PUT /api/v1/timeseries first"))
        elif device_type is not None and device_type not in metric.types:
            out.append(Violation(f"{path}.timeseriesId", f"Device type {device_type!r} is not "
                                 f"one of the types {list(metric.types)} of {metric_id!r}"))
        dimensions = series.get("dimensions")
        if isinstance(dimensions, dict):
            for key, value in dimensions.items():
                where = f"{path}.dimensions.{key}"
                if metric is not None and key not in metric.dimensions:
                    out.append(Violation(where, f"Dimension key {key!r} is not declared by "
                                         f"{metric_id!r} (declared: {list(metric.dimensions)})"))
                elif len(key) > MAX_DIMENSION_LENGTH:
                    out.append(Violation(where, f"a dimension key has at most "
                                                f"{MAX_DIMENSION_LENGTH} characters"))
                if not isinstance(value, str) or len(value) > MAX_DIMENSION_LENGTH:
                    out.append(Violation(where, "a dimension value is a string of at most "
                                                f"{MAX_DIMENSION_LENGTH} characters"))
        elif dimensions is not None:
            out.append(Violation(f"{path}.dimensions", "dimensions must be an object"))
        points = series.get("dataPoints")
        if not isinstance(points, list) or not points:
            out.append(Violation(f"{path}.dataPoints", "dataPoints is required: a non-empty "
                                                       "array of [timestamp, value]"))
            return out
        for j, point in enumerate(points):
            problem = self._check_point(point, metric, now_ms)
            if problem is not None:
                out.append(Violation(f"{path}.dataPoints[{j}]", problem))
        return out

    @staticmethod
    def _check_point(point: object, metric: MetricDefinition | None, now_ms: int) -> str | None:
        if not isinstance(point, list) or len(point) != 2:
            return "a data point is an array [timestamp, value]"
        timestamp, value = point
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            return "the timestamp must be an integer number of UTC milliseconds"
        if not _is_number(value) or not math.isfinite(value):
            return "the value must be a finite number"
        if timestamp < now_ms - WINDOW_MS:
            return "Data point timestamp is too far in the past"
        if timestamp > now_ms + FUTURE_TOLERANCE_MS:
            return "Data point timestamp is in the future"
        if metric is not None and timestamp < metric.created_ms:
            return ("Data point timestamp is lower than creation timestamp of the timeseries "
                    "configuration")
        return None

    def _accept(self, device_id: str, body: dict[str, Any]) -> DeviceState:
        device = self.devices.setdefault(device_id, DeviceState(device_id))
        # Merge rules from the reference: a sent value overwrites; for hostNames,
        # listenPorts and type an empty value keeps the old one, for ipAddresses it
        # overwrites; tags and properties are added to.
        for key, attr in (("type", "type"), ("displayName", "display_name"),
                          ("group", "group"), ("configUrl", "config_url"),
                          ("favicon", "favicon"), ("hostNames", "host_names"),
                          ("listenPorts", "listen_ports")):
            if body.get(key):
                setattr(device, attr, body[key])
        if body.get("ipAddresses") is not None:
            device.ip_addresses = body["ipAddresses"]
        device.tags += [t for t in dict.fromkeys(body.get("tags") or ()) if t not in device.tags]
        device.properties.update(body.get("properties") or {})
        # A group is hashed into the entity id; without one the group follows the type.
        device.entity_id = "CUSTOM_DEVICE-" + _hex16(device.group or "", device_id)
        device.group_id = "CUSTOM_DEVICE_GROUP-" + _hex16(device.group or f"type:{device.type}")
        for series in body["series"]:
            metric = series["timeseriesId"]
            dims = tuple(sorted((series.get("dimensions") or {}).items()))
            for timestamp, value in series["dataPoints"]:
                self._points.append(AcceptedPoint(device_id, metric, dims, timestamp,
                                                  float(value)))
                last = device.last_values.get((metric, dims))
                if last is None or timestamp >= last[0]:
                    device.last_values[(metric, dims)] = (timestamp, float(value))
                device.point_count += 1
        self.pushes.append(Push(device_id, body, self._clock()))
        return device

    # -- control API -------------------------------------------------------------------

    async def _get_points(self, request: web.Request) -> web.StreamResponse:
        device, metric = request.query.get("device"), request.query.get("metric")
        return _json([
            {"device": p.device, "metric": p.metric, "dimensions": dict(p.dimensions),
             "timestamp": p.timestamp_ms, "value": p.value}
            for p in self._points
            if (device is None or p.device == device) and (metric is None or p.metric == metric)
        ])

    async def _get_devices(self, request: web.Request) -> web.StreamResponse:
        return _json({device_id: d.to_json() for device_id, d in self.devices.items()})

    async def _get_metrics(self, request: web.Request) -> web.StreamResponse:
        return _json({metric_id: {**m.to_json(), "createdMs": m.created_ms}
                      for metric_id, m in self.metrics.items()})

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return _json({
            "responses": {str(status): n for status, n in sorted(self.responses.items())},
            "requests": len(self.requests),
            "dropped": sum(1 for r in self.requests if r.status == 0),
            "pushes": len(self.pushes),
            "points": len(self._points),
        })

    async def _get_faults(self, request: web.Request) -> web.StreamResponse:
        return _json([f.to_json() for f in self.faults()])

    async def _post_faults(self, request: web.Request) -> web.StreamResponse:
        spec = await self._read_json(request, REGISTRATION_BODY_LIMIT)
        kind = spec.pop("kind", None)
        allowed = _FAULT_FIELDS.get(kind) if isinstance(kind, str) else None
        if allowed is None:
            raise _Rejected(400, "Constraints violated.", [Violation(
                "kind", f"kind is one of {sorted(_FAULT_FIELDS)}")])
        bad = [Violation(k, f"{k} is not a field of a {kind!r} fault" if k not in allowed
                         else f"{k} has the wrong type")
               for k, v in spec.items()
               if v is not None and (k not in allowed or not isinstance(v, allowed[k])
                                     or isinstance(v, bool))]
        if bad:
            raise _Rejected(400, "Constraints violated.", bad)
        adders: dict[str, Callable[..., None]] = {
            "fail": self.fail, "slow": self.slow, "drop": self.drop_connections}
        try:
            adders[kind](**spec)
        except (TypeError, ValueError) as exc:
            raise _Rejected(400, str(exc)) from None
        return _json([f.to_json() for f in self.faults()], 201)

    async def _delete_faults(self, request: web.Request) -> web.StreamResponse:
        self.clear_faults()
        return _json([])

    async def _post_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return _json({"reset": True})


async def serve(host: str, port: int, tokens: set[str] | None, max_body_bytes: int) -> None:
    """Run a simulator until cancelled, after printing one line with its URL."""
    simulator = Simulator(tokens, max_body_bytes=max_body_bytes)
    url = await simulator.start(host, port)
    print(f"Dynatrace simulator listening on {url} (control API: {url}{CONTROL_PREFIX})",
          flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
