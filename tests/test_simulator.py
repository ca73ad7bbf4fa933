"""The Dynatrace simulator, over real HTTP: each strictness rule, the fault kinds, the control API.

Every rejection test also checks that nothing was accepted: the simulator rejects a push
whole, like Dynatrace.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from yarl import URL

from collector.simulator import AcceptedPoint, Simulator, serve
from tests.helpers import TOKEN, free_port

METRIC = "custom:firewall.connections.dropped"
TYPE = "F5-Firewall"
DEVICE = "fw-linz-1"
AUTH = {"Authorization": f"Api-Token {TOKEN}"}
PUSH_PATH = "/api/v1/entity/infrastructure/custom/"


class Answer(NamedTuple):
    status: int
    body: Any
    headers: Mapping[str, str]


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked(clock: FakeClock) -> AsyncIterator[Simulator]:
    """A simulator whose wall clock is `clock`, for the time-window rules."""
    sim = Simulator(tokens={TOKEN}, clock=clock)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def send(http: aiohttp.ClientSession, method: str, url: str | URL, body: object = None,
               *, headers: Mapping[str, str] | None = None, data: Any = None,
               timeout: float = 10.0) -> Answer:
    """One request; `body` is sent as JSON with the test token unless `data`/`headers` say."""
    if data is None and body is not None:
        data = orjson.dumps(body)
    if headers is None:
        headers = {**AUTH, "Content-Type": "application/json"}
    async with http.request(method, url, data=data, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        raw = await resp.read()
        return Answer(resp.status, orjson.loads(raw) if raw else None, resp.headers)


async def register(http: aiohttp.ClientSession, sim: Simulator, metric: str = METRIC,
                   prefix: str = "", **body: Any) -> Answer:
    definition = {"displayName": "Dropped connections", "unit": "Count",
                  "dimensions": ["nic"], "types": [TYPE], **body}
    return await send(http, "PUT", f"{sim.url}{prefix}/api/v1/timeseries/{metric}", definition)


async def push(http: aiohttp.ClientSession, sim: Simulator, body: object,
               device: str = DEVICE, prefix: str = "", **kwargs: Any) -> Answer:
    return await send(http, "POST", f"{sim.url}{prefix}{PUSH_PATH}{quote(device, safe='')}",
                      body, **kwargs)


def series(timestamp: int, value: float = 1.0, nic: str = "eth0",
           metric: str = METRIC) -> dict[str, Any]:
    return {"timeseriesId": metric, "dimensions": {"nic": nic}, "dataPoints": [[timestamp, value]]}


def now_ms() -> int:
    return int(time.time() * 1000)


def violations(answer: Answer) -> dict[str, str]:
    """path -> message of the answer's constraint violations."""
    return {v["path"]: v["message"] for v in answer.body["error"]["constraintViolations"]}


def assert_rejected(sim: Simulator, answer: Answer, status: int, path: str | None = None,
                    message: str = "", *, accepted_before: int = 0, pushes_before: int = 0
                    ) -> None:
    """`answer` is an ErrorEnvelope with `status`, naming `path`; nothing was accepted."""
    assert answer.status == status, answer.body
    assert answer.body["error"]["code"] == status
    assert isinstance(answer.body["error"]["message"], str)
    if path is not None:
        found = violations(answer)
        assert path in found, found
        assert message in found[path]
        entry = next(v for v in answer.body["error"]["constraintViolations"]
                     if v["path"] == path)
        assert set(entry) == {"path", "message", "parameterLocation", "location"}
    assert len(sim.points()) == accepted_before
    assert len(sim.pushes) == pushes_before


# -- accepted pushes ---------------------------------------------------------------------


async def test_reference_example_is_accepted(clocked: Simulator, clock: FakeClock,
                                             http: aiohttp.ClientSession) -> None:
    simulator = clocked
    assert (await register(http, simulator)).status == 201
    clock.now += 120
    t = clock.ms
    body = {"tags": ["tag2"], "type": TYPE, "properties": {"Sample Property 2": "Sample value 2"},
            "series": [
                {"timeseriesId": METRIC, "dimensions": {"nic": "ethernetcard1"},
                 "dataPoints": [[t - 60_000, 460], [t, 456]]},
                {"timeseriesId": METRIC, "dimensions": {"nic": "ethernetcard2"},
                 "dataPoints": [[t - 30_000, 439.5]]}]}
    answer = await push(http, simulator, body)
    assert answer.status == 200
    assert re.fullmatch(r"CUSTOM_DEVICE-[0-9A-F]{16}", answer.body["entityId"])
    assert re.fullmatch(r"CUSTOM_DEVICE_GROUP-[0-9A-F]{16}", answer.body["groupId"])
    assert simulator.points() == [
        AcceptedPoint(DEVICE, METRIC, (("nic", "ethernetcard1"),), t - 60_000, 460.0),
        AcceptedPoint(DEVICE, METRIC, (("nic", "ethernetcard1"),), t, 456.0),
        AcceptedPoint(DEVICE, METRIC, (("nic", "ethernetcard2"),), t - 30_000, 439.5),
    ]
    assert [(p.device, p.body) for p in simulator.pushes] == [(DEVICE, body)]
    device = simulator.devices[DEVICE]
    assert device.entity_id == answer.body["entityId"]
    assert device.type == TYPE
    assert simulator.responses == {201: 1, 200: 1}


async def test_entity_ids_are_stable_per_device_and_group(simulator: Simulator,
                                                          http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    first = await push(http, simulator, {"type": TYPE, "series": [series(now_ms())]})
    again = await push(http, simulator, {"series": [series(now_ms())]})
    other = await push(http, simulator, {"type": TYPE, "series": []}, device="fw-linz-2")
    grouped = await push(http, simulator, {"group": "firewalls", "series": []})
    assert again.body == first.body
    assert other.body["entityId"] != first.body["entityId"]
    assert other.body["groupId"] == first.body["groupId"]  # same type, no group
    assert grouped.body["entityId"] != first.body["entityId"]  # the group is hashed in
    assert grouped.body["groupId"] != first.body["groupId"]


async def test_device_id_is_percent_decoded(simulator: Simulator,
                                            http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    device = "fw linz/1 €"
    url = URL(f"{simulator.url}{PUSH_PATH}{quote(device, safe='')}", encoded=True)
    answer = await send(http, "POST", url, {"type": TYPE, "series": [series(now_ms())]})
    assert answer.status == 200
    assert [p.device for p in simulator.points()] == [device]


async def test_activegate_prefix_serves_both_endpoints(simulator: Simulator,
                                                      http: aiohttp.ClientSession) -> None:
    assert (await register(http, simulator, prefix="/e/abc12345")).status == 201
    answer = await push(http, simulator, {"type": TYPE, "series": [series(now_ms())]},
                        prefix="/e/abc12345")
    assert answer.status == 200
    assert len(simulator.points()) == 1
    assert [r.path for r in simulator.requests] == [
        f"/e/abc12345/api/v1/timeseries/{METRIC}", f"/e/abc12345{PUSH_PATH}{DEVICE}"]


async def test_entity_id_as_device_id_is_rejected(simulator: Simulator,
                                                  http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    answer = await push(http, simulator, {"type": TYPE, "series": [series(now_ms())]},
                        device="CUSTOM_DEVICE-6A567B33AADC306E")
    assert_rejected(simulator, answer, 400, "customDeviceId", "entity id")


# -- authentication, content type, size, JSON --------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer " + TOKEN, "Api-Token ", TOKEN])
async def test_missing_or_malformed_token_is_401(simulator: Simulator,
                                                 http: aiohttp.ClientSession,
                                                 authorization: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = await push(http, simulator, {"type": TYPE, "series": []}, headers=headers)
    assert_rejected(simulator, answer, 401, "Authorization")
    answer = await send(
        http, "PUT", f"{simulator.url}/api/v1/timeseries/{METRIC}",
        {"displayName": "x", "types": [TYPE]}, headers=headers)
    assert answer.status == 401
    assert simulator.metrics == {}


async def test_unknown_token_is_403(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Api-Token dt0c01.OTHER.TOKEN", "Content-Type": "application/json"}
    answer = await push(http, simulator, {"type": TYPE, "series": []}, headers=headers)
    assert_rejected(simulator, answer, 403)
    assert "Token" in answer.body["error"]["message"]


async def test_without_a_token_list_any_token_is_accepted(http: aiohttp.ClientSession) -> None:
    sim = Simulator()
    await sim.start()
    try:
        headers = {"Authorization": "Api-Token anything", "Content-Type": "application/json"}
        answer = await send(http, "PUT", f"{sim.url}/api/v1/timeseries/{METRIC}",
                            {"displayName": "x", "types": [TYPE]}, headers=headers)
        assert answer.status == 201
        answer = await push(http, sim, {"type": TYPE, "series": []},
                            headers={"Content-Type": "application/json"})
        assert answer.status == 401
    finally:
        await sim.stop()


async def test_wrong_content_type_is_415(simulator: Simulator,
                                         http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    answer = await push(http, simulator, {"type": TYPE, "series": [series(now_ms())]},
                        headers={**AUTH, "Content-Type": "text/plain"})
    assert_rejected(simulator, answer, 415)
    assert "application/json" in answer.body["error"]["message"]


def _big_body(size: int) -> bytes:
    t = now_ms()
    points = [[t, 1.0]] * (size // 9)
    body = orjson.dumps({"type": TYPE, "series": [
        {"timeseriesId": METRIC, "dimensions": {"nic": "eth0"}, "dataPoints": points}]})
    assert len(body) > size
    return body


async def test_body_over_the_limit_is_413(simulator: Simulator,
                                          http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    body = _big_body(simulator.max_body_bytes)
    answer = await push(http, simulator, None, data=body)
    assert_rejected(simulator, answer, 413)
    assert simulator.requests[-1].body_bytes == len(body)


async def test_chunked_body_over_the_limit_is_413(simulator: Simulator,
                                                  http: aiohttp.ClientSession) -> None:
    """Without Content-Length the simulator counts what arrives."""
    await register(http, simulator)
    body = _big_body(simulator.max_body_bytes)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    answer = await push(http, simulator, None, data=chunks())
    assert_rejected(simulator, answer, 413)


async def test_body_at_the_limit_is_accepted(http: aiohttp.ClientSession) -> None:
    sim = Simulator(tokens={TOKEN}, max_body_bytes=200)
    await sim.start()
    try:
        await register(http, sim)
        body = orjson.dumps({"type": TYPE, "series": [series(now_ms())]})
        body += b" " * (200 - len(body))
        assert (await push(http, sim, None, data=body)).status == 200
        assert (await push(http, sim, None, data=body + b" ")).status == 413
    finally:
        await sim.stop()


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b""])
async def test_body_must_be_a_json_object(simulator: Simulator, http: aiohttp.ClientSession,
                                          raw: bytes) -> None:
    answer = await push(http, simulator, None, data=raw)
    assert_rejected(simulator, answer, 400)
    assert "JSON" in answer.body["error"]["message"]


# -- the push body -------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "path"), [
    ({"colour": "red"}, "colour"),
    ({"hostNames": "fw.example.com"}, "hostNames"),
    ({"ipAddresses": ["10.0.0.1", 7]}, "ipAddresses[1]"),
    ({"listenPorts": [443, "80"]}, "listenPorts[1]"),
    ({"listenPorts": [True]}, "listenPorts[0]"),
    ({"displayName": 5}, "displayName"),
    ({"properties": ["a"]}, "properties"),
    ({"properties": {"vendor": 5}}, "properties.vendor"),
])
async def test_fields_and_their_types_are_checked(simulator: Simulator,
                                                  http: aiohttp.ClientSession,
                                                  extra: dict[str, Any], path: str) -> None:
    await register(http, simulator)
    answer = await push(http, simulator, {"type": TYPE, "series": [series(now_ms())], **extra})
    assert_rejected(simulator, answer, 400, path)


async def test_series_is_required(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    answer = await push(http, simulator, {"type": TYPE, "displayName": "Linz firewall"})
    assert_rejected(simulator, answer, 400, "series", "required")
    assert simulator.devices == {}


async def test_first_push_of_a_device_must_carry_its_type(simulator: Simulator,
                                                          http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    answer = await push(http, simulator, {"series": [series(now_ms())]})
    assert_rejected(simulator, answer, 400, "type", "type")
    answer = await push(http, simulator, {"type": "", "series": [series(now_ms())]})
    assert_rejected(simulator, answer, 400, "type")


async def test_unregistered_metric_rejects_the_whole_push(simulator: Simulator,
                                                          http: aiohttp.ClientSession) -> None:
    """The client drops the named series and resends the rest, which is then accepted."""
    await register(http, simulator)
    t = now_ms()
    good, bad = series(t), series(t, metric="custom:not.registered")
    answer = await push(http, simulator, {"type": TYPE, "series": [good, bad]})
    assert_rejected(simulator, answer, 400, "series[1].timeseriesId", "not registered")
    assert "series[0].timeseriesId" not in violations(answer)
    assert answer.body["error"]["constraintViolations"][0]["parameterLocation"] == "PAYLOAD_BODY"
    assert (await push(http, simulator, {"type": TYPE, "series": [good]})).status == 200
    assert len(simulator.points()) == 1


async def test_device_type_must_be_among_the_metric_types(simulator: Simulator,
                                                          http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    answer = await push(http, simulator, {"type": "Coffee-Machine", "series": [series(now_ms())]})
    assert_rejected(simulator, answer, 400, "series[0].timeseriesId", "Coffee-Machine")


async def test_device_type_from_an_earlier_push_is_checked(simulator: Simulator,
                                                           http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    await register(http, simulator, "custom:coffee.cups", types=["Coffee-Machine"])
    assert (await push(http, simulator, {"type": TYPE, "series": []})).status == 200
    assert (await push(http, simulator, {"series": [series(now_ms())]})).status == 200
    coffee = series(now_ms(), metric="custom:coffee.cups")
    answer = await push(http, simulator, {"series": [coffee]})
    assert_rejected(simulator, answer, 400, "series[0].timeseriesId", TYPE, accepted_before=1,
                    pushes_before=2)


async def test_only_declared_dimension_keys(simulator: Simulator,
                                            http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    t = now_ms()
    undeclared = {"timeseriesId": METRIC, "dimensions": {"nic": "eth0", "port": "1"},
                  "dataPoints": [[t, 1]]}
    answer = await push(http, simulator, {"type": TYPE, "series": [series(t), undeclared]})
    assert_rejected(simulator, answer, 400, "series[1].dimensions.port", "not declared")
    assert "series[1].dimensions.nic" not in violations(answer)


async def test_dimension_values_have_at_most_128_characters(simulator: Simulator,
                                                            http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    t = now_ms()
    answer = await push(http, simulator, {"type": TYPE, "series": [series(t, nic="x" * 129)]})
    assert_rejected(simulator, answer, 400, "series[0].dimensions.nic", "128")
    answer = await push(http, simulator, {"type": TYPE, "series": [series(t, nic="x" * 128)]})
    assert answer.status == 200


@pytest.mark.parametrize(("point", "message"), [
    ([1.5, 1], "integer"),
    (["now", 1], "integer"),
    ([None, 1], "integer"),
    ([0, "1"], "finite number"),
    ([0, True], "finite number"),
    ([0], "[timestamp, value]"),
    ([0, 1, 2], "[timestamp, value]"),
    ({"t": 0}, "[timestamp, value]"),
])
async def test_data_point_shape(simulator: Simulator, http: aiohttp.ClientSession,
                                point: list[Any], message: str) -> None:
    await register(http, simulator)
    t = now_ms()
    # The placeholder timestamp 0 stands for "now" so only the shape is wrong.
    if isinstance(point, list) and point and point[0] == 0:
        point = [t, *point[1:]]
    body = {"type": TYPE, "series": [
        {"timeseriesId": METRIC, "dataPoints": [[t, 1], point]}]}
    answer = await push(http, simulator, body)
    assert_rejected(simulator, answer, 400, "series[0].dataPoints[1]", message)


@pytest.mark.parametrize("points", [[], None])
async def test_data_points_are_required(simulator: Simulator, http: aiohttp.ClientSession,
                                        points: list[Any] | None) -> None:
    await register(http, simulator)
    body = {"type": TYPE, "series": [{"timeseriesId": METRIC, "dataPoints": points}]}
    answer = await push(http, simulator, body)
    assert_rejected(simulator, answer, 400, "series[0].dataPoints")


async def test_unknown_series_field(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    body = {"type": TYPE, "series": [{**series(now_ms()), "unit": "Count"}]}
    assert_rejected(simulator, await push(http, simulator, body), 400, "series[0].unit")


# -- the time window -----------------------------------------------------------------------


async def test_points_older_than_one_hour_are_rejected(clocked: Simulator, clock: FakeClock,
                                                       http: aiohttp.ClientSession) -> None:
    await register(http, clocked)
    registered = clock.ms
    clock.now += 7200
    old = {"type": TYPE, "series": [series(registered + 1000), series(clock.ms - 3_600_001)]}
    answer = await push(http, clocked, old)
    assert_rejected(clocked, answer, 400, "series[1].dataPoints[0]",
                    "Data point timestamp is too far in the past")
    assert "series[0].dataPoints[0]" in violations(answer)
    edge = {"type": TYPE, "series": [series(clock.ms - 3_600_000)]}
    assert (await push(http, clocked, edge)).status == 200


async def test_points_in_the_future_are_rejected(clocked: Simulator, clock: FakeClock,
                                                 http: aiohttp.ClientSession) -> None:
    await register(http, clocked)
    answer = await push(http, clocked, {"type": TYPE, "series": [series(clock.ms + 1001)]})
    assert_rejected(clocked, answer, 400, "series[0].dataPoints[0]", "future")
    skewed = {"type": TYPE, "series": [series(clock.ms + 1000)]}
    assert (await push(http, clocked, skewed)).status == 200


async def test_points_before_registration_are_rejected(clocked: Simulator, clock: FakeClock,
                                                       http: aiohttp.ClientSession) -> None:
    registered = clock.ms
    await register(http, clocked)
    clock.now += 60
    answer = await push(http, clocked, {"type": TYPE, "series": [series(registered - 1)]})
    assert_rejected(clocked, answer, 400, "series[0].dataPoints[0]",
                    "Data point timestamp is lower than creation timestamp of the timeseries "
                    "configuration")
    assert (await push(http, clocked, {"type": TYPE, "series": [series(registered)]})).status == 200


async def test_update_keeps_the_original_creation_time(clocked: Simulator, clock: FakeClock,
                                                       http: aiohttp.ClientSession) -> None:
    registered = clock.ms
    created = await register(http, clocked)
    assert created.status == 201
    assert created.body["timeseriesId"] == METRIC
    clock.now += 600
    updated = await register(http, clocked, displayName="Dropped", dimensions=["nic", "vlan"])
    assert updated.status == 200
    assert updated.body["displayName"] == "Dropped"
    assert clocked.metrics[METRIC].created_ms == registered
    assert clocked.metrics[METRIC].dimensions == ("nic", "vlan")
    answer = await push(http, clocked, {"type": TYPE, "series": [series(registered + 60_000)]})
    assert answer.status == 200


# -- metric registration -------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "body", "path"), [
    ("firewall.dropped", {}, "timeseriesIdentifier"),
    ("custom:fw.1dropped", {}, "timeseriesIdentifier"),
    ("custom:" + "a" * 250, {}, "timeseriesIdentifier"),
    (METRIC, {"dimensions": ["nic", "bad key"]}, "dimensions[1]"),
    (METRIC, {"dimensions": "nic"}, "dimensions"),
    (METRIC, {"types": []}, "types"),
    (METRIC, {"types": None}, "types"),
    (METRIC, {"types": [TYPE, ""]}, "types[1]"),
    (METRIC, {"displayName": ""}, "displayName"),
    (METRIC, {"unit": 3}, "unit"),
    (METRIC, {"aggregation": "avg"}, "aggregation"),
])
async def test_registration_rules(simulator: Simulator, http: aiohttp.ClientSession,
                                  metric: str, body: dict[str, Any], path: str) -> None:
    answer = await register(http, simulator, metric, **body)
    assert answer.status == 400
    assert path in violations(answer)
    location = "PATH" if path == "timeseriesIdentifier" else "PAYLOAD_BODY"
    assert answer.body["error"]["constraintViolations"][0]["parameterLocation"] == location
    assert simulator.metrics == {}


async def test_update_may_omit_types(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    answer = await send(http, "PUT", f"{simulator.url}/api/v1/timeseries/{METRIC}",
                        {"displayName": "Dropped"})
    assert answer.status == 200
    assert answer.body["types"] == [TYPE]
    assert simulator.metrics[METRIC].unit == "Count"  # the fallback when unit is omitted


# -- device metadata -----------------------------------------------------------------------


async def test_metadata_merge_semantics(simulator: Simulator,
                                        http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    first = {"type": TYPE, "displayName": "Linz firewall", "hostNames": ["fw.example.com"],
             "ipAddresses": ["10.0.0.1"], "listenPorts": [443], "tags": ["office-linz"],
             "properties": {"vendor": "F5", "rack": "1"}, "configUrl": "https://10.0.0.1/",
             "series": [series(now_ms(), 1)]}
    assert (await push(http, simulator, first)).status == 200
    # Empty hostNames/listenPorts/type keep the old values, empty ipAddresses overwrite,
    # tags and properties are added to, series are appended.
    second = {"type": "", "hostNames": [], "ipAddresses": [], "listenPorts": None,
              "tags": ["office-linz", "edge"], "properties": {"rack": "2", "os": "TMOS"},
              "series": [series(now_ms(), 2)]}
    assert (await push(http, simulator, second)).status == 200
    device = simulator.devices[DEVICE]
    assert device.type == TYPE
    assert device.display_name == "Linz firewall"
    assert device.host_names == ["fw.example.com"]
    assert device.ip_addresses == []
    assert device.listen_ports == [443]
    assert device.tags == ["office-linz", "edge"]
    assert device.properties == {"vendor": "F5", "rack": "2", "os": "TMOS"}
    assert device.config_url == "https://10.0.0.1/"
    assert device.point_count == 2
    third = {"type": TYPE, "hostNames": ["fw2.example.com"], "listenPorts": [8443],
             "series": []}
    assert (await push(http, simulator, third)).status == 200
    assert device.host_names == ["fw2.example.com"]
    assert device.listen_ports == [8443]


async def test_property_limits(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    twelve = {f"p{i}": "v" for i in range(12)}
    assert (await push(http, simulator, {"type": TYPE, "properties": twelve, "series": []})
            ).status == 200
    nine_more = {f"q{i}": "v" for i in range(9)}
    answer = await push(http, simulator, {"properties": nine_more, "series": []})
    assert answer.status == 400
    assert "20" in violations(answer)["properties"]
    answer = await push(http, simulator, {"properties": {"k" * 101: "v"}, "series": []})
    assert f"properties.{'k' * 101}" in violations(answer)
    answer = await push(http, simulator, {"properties": {"k": "v" * 201}, "series": []})
    assert "200" in violations(answer)["properties.k"]
    assert len(simulator.pushes) == 1
    assert len(simulator.devices[DEVICE].properties) == 12
    edge = {"properties": {"k" * 100: "v" * 200, **{f"q{i}": "v" for i in range(7)}},
            "series": []}
    assert (await push(http, simulator, edge)).status == 200


# -- routing -------------------------------------------------------------------------------


async def test_unknown_path_is_404_and_wrong_method_is_405(simulator: Simulator,
                                                           http: aiohttp.ClientSession) -> None:
    answer = await send(http, "GET", f"{simulator.url}/api/v2/metrics/ingest")
    assert answer.status == 404
    assert answer.body["error"]["code"] == 404
    answer = await send(http, "GET", f"{simulator.url}{PUSH_PATH}{DEVICE}")
    assert answer.status == 405
    assert answer.body["error"]["code"] == 405
    assert "POST" in answer.headers["Allow"]
    assert simulator.responses == {404: 1, 405: 1}


# -- faults --------------------------------------------------------------------------------


async def test_fail_answers_the_envelope_for_count_requests(simulator: Simulator,
                                                            http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    simulator.fail(503, count=2)
    body = {"type": TYPE, "series": [series(now_ms())]}
    for _ in range(2):
        answer = await push(http, simulator, body)
        assert_rejected(simulator, answer, 503)
        assert "Retry-After" not in answer.headers
    assert (await push(http, simulator, body)).status == 200
    assert simulator.responses == {201: 1, 503: 2, 200: 1}


@pytest.mark.parametrize("retry_after", ["7", "Wed, 21 Oct 2015 07:28:00 GMT", None])
async def test_429_with_and_without_retry_after(simulator: Simulator,
                                                http: aiohttp.ClientSession,
                                                retry_after: str | None) -> None:
    simulator.fail(429, count=1, retry_after=retry_after)
    answer = await push(http, simulator, {"type": TYPE, "series": []})
    assert_rejected(simulator, answer, 429)
    assert answer.headers.get("Retry-After") == retry_after


async def test_fail_only_paths_containing(simulator: Simulator,
                                          http: aiohttp.ClientSession) -> None:
    simulator.fail(500, path_contains="/timeseries/")
    assert (await register(http, simulator)).status == 500
    assert (await push(http, simulator, {"type": TYPE, "series": []})).status == 200
    simulator.clear_faults()
    assert (await register(http, simulator)).status == 201


async def test_fail_for_seconds_ends_by_itself(simulator: Simulator,
                                               http: aiohttp.ClientSession) -> None:
    simulator.fail(502, seconds=0.05)
    assert (await push(http, simulator, {"type": TYPE, "series": []})).status == 502
    await asyncio.sleep(0.1)  # past the deadline however slow the machine
    assert (await push(http, simulator, {"type": TYPE, "series": []})).status == 200


async def test_slow_answer_times_a_short_client_out(simulator: Simulator,
                                                    http: aiohttp.ClientSession) -> None:
    simulator.slow(30.0, count=1)
    with pytest.raises(asyncio.TimeoutError):
        await push(http, simulator, {"type": TYPE, "series": []}, timeout=0.2)
    # The one slow request is used up: the next answers.
    assert (await push(http, simulator, {"type": TYPE, "series": []})).status == 200


async def test_dropped_connection_is_a_client_connection_error(
        simulator: Simulator, http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    simulator.drop_connections(count=1)
    body = {"type": TYPE, "series": [series(now_ms())]}
    with pytest.raises(aiohttp.ClientConnectionError):
        await push(http, simulator, body)
    assert simulator.points() == []
    assert simulator.requests[-1].status == 0
    assert 0 not in simulator.responses
    assert (await push(http, simulator, body)).status == 200


def test_fault_arguments_are_checked() -> None:
    sim = Simulator()
    with pytest.raises(ValueError, match="400-599"):
        sim.fail(200)
    with pytest.raises(ValueError, match="count"):
        sim.fail(503, count=0)
    with pytest.raises(ValueError, match="seconds"):
        sim.drop_connections(seconds=0)
    with pytest.raises(ValueError, match="delay"):
        sim.slow(0)
    assert sim.faults() == []


# -- reset, control API, serve ------------------------------------------------------------


async def test_reset_forgets_data_but_keeps_metrics(simulator: Simulator,
                                                    http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    assert (await push(http, simulator, {"type": TYPE, "series": [series(now_ms())]})
            ).status == 200
    simulator.reset()
    assert simulator.points() == []
    assert simulator.pushes == []
    assert simulator.devices == {}
    assert METRIC in simulator.metrics
    assert (await push(http, simulator, {"type": TYPE, "series": [series(now_ms())]})
            ).status == 200


async def test_control_api_shows_what_was_accepted(clocked: Simulator, clock: FakeClock,
                                                   http: aiohttp.ClientSession) -> None:
    simulator = clocked
    await register(http, simulator)
    clock.now += 120
    t = clock.ms
    body = {"type": TYPE, "properties": {"vendor": "F5"},
            "series": [series(t - 1000, 1, "eth0"), series(t, 2, "eth0"), series(t, 3, "eth1")]}
    entity = (await push(http, simulator, body)).body["entityId"]
    await push(http, simulator, {"series": [series(t, metric="custom:nope")]})
    control = f"{simulator.url}/_simulator"

    points = (await send(http, "GET", f"{control}/points")).body
    assert [(p["device"], p["metric"], p["dimensions"], p["timestamp"], p["value"])
            for p in points] == [(DEVICE, METRIC, {"nic": "eth0"}, t - 1000, 1.0),
                                 (DEVICE, METRIC, {"nic": "eth0"}, t, 2.0),
                                 (DEVICE, METRIC, {"nic": "eth1"}, t, 3.0)]
    assert len((await send(http, "GET", f"{control}/points?device=other")).body) == 0

    device = (await send(http, "GET", f"{control}/devices")).body[DEVICE]
    assert device["entityId"] == entity
    assert device["properties"] == {"vendor": "F5"}
    assert (device["seriesCount"], device["pointCount"]) == (2, 3)
    assert {(v["dimensions"]["nic"], v["value"]) for v in device["lastValues"]} == {
        ("eth0", 2.0), ("eth1", 3.0)}

    metrics = (await send(http, "GET", f"{control}/metrics")).body
    assert metrics[METRIC]["types"] == [TYPE]
    assert metrics[METRIC]["createdMs"] == simulator.metrics[METRIC].created_ms

    stats = (await send(http, "GET", f"{control}/stats")).body
    assert stats["responses"] == {"200": 1, "201": 1, "400": 1}
    assert (stats["pushes"], stats["points"]) == (1, 3)
    # The control API itself is neither counted nor recorded.
    assert len(simulator.requests) == 3


async def test_control_api_steers_faults(simulator: Simulator,
                                         http: aiohttp.ClientSession) -> None:
    faults = f"{simulator.url}/_simulator/faults"
    answer = await send(http, "POST", faults,
                        {"kind": "fail", "status": 429, "count": 1, "retry_after": "3"})
    assert answer.status == 201
    assert answer.body[0]["kind"] == "fail"
    answer = await push(http, simulator, {"type": TYPE, "series": []})
    assert (answer.status, answer.headers.get("Retry-After")) == (429, "3")

    assert (await send(http, "POST", faults, {"kind": "drop"})).status == 201
    with pytest.raises(aiohttp.ClientConnectionError):
        await push(http, simulator, {"type": TYPE, "series": []})
    assert (await send(http, "GET", faults)).body[0]["kind"] == "drop"
    assert (await send(http, "DELETE", faults)).status == 200
    assert simulator.faults() == []
    assert (await push(http, simulator, {"type": TYPE, "series": []})).status == 200

    for bad, path in [({"kind": "explode"}, "kind"), ({"kind": "slow", "status": 500}, "status"),
                      ({"kind": "fail", "count": "2"}, "count")]:
        answer = await send(http, "POST", faults, bad)
        assert answer.status == 400
        assert path in violations(answer)
    answer = await send(http, "POST", faults, {"kind": "slow"})  # delay missing
    assert answer.status == 400
    assert simulator.faults() == []


async def test_control_api_reset(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    await register(http, simulator)
    await push(http, simulator, {"type": TYPE, "series": [series(now_ms())]})
    assert (await send(http, "POST", f"{simulator.url}/_simulator/reset")).status == 200
    assert simulator.points() == []
    assert METRIC in simulator.metrics


async def test_serve_prints_its_url_and_runs_until_cancelled(
        http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    task = asyncio.create_task(serve("127.0.0.1", port, {TOKEN}, 15360))
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if url in capsys.readouterr().out:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("serve() printed no URL")
    answer = await send(http, "GET", f"{url}/_simulator/stats")
    assert answer.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        await send(http, "GET", f"{url}/_simulator/stats")


async def test_a_failure_is_not_used_up_by_a_dropped_request(
        simulator: Simulator, http: aiohttp.ClientSession) -> None:
    simulator.drop_connections(count=1)
    simulator.fail(503, count=1)
    with pytest.raises(aiohttp.ClientConnectionError):
        await push(http, simulator, {"type": TYPE, "series": []})
    assert (await push(http, simulator, {"type": TYPE, "series": []})).status == 503
    assert (await push(http, simulator, {"type": TYPE, "series": []})).status == 200
