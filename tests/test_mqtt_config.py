"""The `type: mqtt` source config: every rule reports its path; topic patterns match like MQTT."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from collector.config import ConfigError, parse_config
from collector.config.loader import format_loc
from collector.config.mqtt import (
    MqttSourceConfig,
    parse_field_path,
    parse_topic_pattern,
)

HEAD = """\
dynatrace:
  url: http://127.0.0.1:9
  token: test-token
metrics:
  custom:iot.temperature:
    display_name: Temperature
    dimensions: [site]
    types: [Sensor]
"""

SOURCE = """\
- type: mqtt
  url: mqtt://broker.example
  client_id: collector-1
  subscriptions:
    - topic: site/{site}/sensor/{device}/state
      device: {type: Sensor, display_name: "{device} in {site}"}
      metrics:
        - field: env.temperature
          metric: custom:iot.temperature
          dimensions: {site: "{site}"}
"""


def parse(source: str = SOURCE, env: dict[str, str] | None = None) -> MqttSourceConfig:
    text = HEAD + "sources:\n" + textwrap.indent(textwrap.dedent(source), "  ")
    parsed = parse_config(text, env=env or {}).sources[0]
    assert isinstance(parsed, MqttSourceConfig)
    return parsed


def problems(source: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(source, env)
    return [f"{format_loc(issue.loc)}: {issue.message}" for issue in caught.value.issues]


def test_the_defaults() -> None:
    config = parse()
    assert (config.name, config.host, config.port, config.protocol) == (
        "mqtt-0", "broker.example", 1883, "3.1.1")
    assert not config.clean_session and config.session_expiry == 3600
    assert config.tls is None and not config.uses_tls
    sub = config.subscriptions[0]
    assert (sub.qos, sub.payload, sub.device.id, sub.filter) == (
        1, "json", "{device}", "site/+/sensor/+/state")


def test_mqtts_share_group_and_protocol_5() -> None:
    config = parse(SOURCE.replace("mqtt://broker.example", "mqtts://broker.example")
                   .replace("  client_id: collector-1\n", "  client_id: c1\n  protocol: 5\n")
                   .replace("    - topic: site/{site}/sensor/{device}/state\n",
                            "    - topic: site/{site}/sensor/{device}/#\n"
                            "      share_group: collectors\n"))
    assert (config.port, config.uses_tls, config.protocol) == (8883, True, "5")
    assert config.subscriptions[0].filter == "$share/collectors/site/+/sensor/+/#"


def test_the_password_comes_from_the_environment_or_a_file_and_is_never_shown(
        tmp_path: Path) -> None:
    secret = "s3cr3t-mqtt"
    config = parse(SOURCE + "  username: u\n  password: ${MQTT_PASSWORD}\n",
                   env={"MQTT_PASSWORD": secret})
    password = config.secret_password()
    assert password is not None and password.get_secret_value() == secret
    assert secret not in repr(config) + str(config.model_dump()) + config.model_dump_json()
    (tmp_path / "pw").write_text(secret + "\n")
    config = parse(SOURCE + f"  username: u\n  password_file: {tmp_path / 'pw'}\n")
    password = config.secret_password()
    assert password is not None and password.get_secret_value() == secret


@pytest.mark.parametrize(("change", "expected"), [
    ({"url: mqtt://broker.example": "url: http://broker.example"},
     "sources[0].url: url 'http://broker.example' must be mqtt://host[:port] or mqtts://"),
    ({"url: mqtt://broker.example": "url: mqtt://me:pw@broker.example"},
     "sources[0].url: put credentials in username and password"),
    ({"url: mqtt://broker.example": "url: mqtt://broker.example/x"},
     "sources[0].url: url 'mqtt://broker.example/x' must not have a path"),
    ({"  client_id: collector-1\n": ""},
     "sources[0].client_id: a persistent session (clean_session: false) needs a fixed"),
    ({"  client_id: collector-1\n": "  client_id: c\n  tls: {verify: false}\n"},
     "sources[0].tls: tls: needs an mqtts:// url"),
    ({"  client_id: collector-1\n": "  client_id: c\n  tls: {ca_file: /nonexistent/ca.pem}\n"},
     "sources[0].tls.ca_file: Path does not point to a file"),
    ({"  client_id: collector-1\n": "  client_id: c\n  password: x\n"},
     "sources[0].username: a password needs a username"),
    ({"  client_id: collector-1\n": "  client_id: c\n  protocol: 4\n"},
     "sources[0].protocol: Input should be '3.1.1' or '5'"),
    ({"  client_id: collector-1\n": "  client_id: c\n  keepalive: 1d\n"},
     "sources[0].keepalive: keepalive may be at most 65535s"),
    ({"  client_id: collector-1\n": "  client_id: c\n  reconnect_max_delay: 10ms\n"},
     "sources[0].reconnect_max_delay: must not be below reconnect_delay"),
    ({"  client_id: collector-1\n": "  client_id: c\n  max_queued_messages: 0\n"},
     "sources[0].max_queued_messages: Input should be greater than or equal to 1"),
    ({"      device:": "      qso: 1\n      device:"},
     "sources[0].subscriptions[0].qso: unknown key"),
    ({"      device:": "      qos: 3\n      device:"},
     "sources[0].subscriptions[0].qos: Input should be 0, 1 or 2"),
    ({"      device:": "      share_group: a/b\n      device:"},
     "sources[0].subscriptions[0].share_group: String should match pattern"),
    ({"{device}/state": "{device}/st#"},
     "sources[0].subscriptions[0].topic: topic pattern 'site/{site}/sensor/{devi"),
    ({"site/{site}/sensor/{device}/state": "site/{site}/x-{device}"},
     "sources[0].subscriptions[0].topic: topic pattern 'site/{site}/x-{device}'"),
    ({"site/{site}/sensor/{device}/state": "site/{site}/{site}"},
     "sources[0].subscriptions[0].topic: topic pattern 'site/{site}/{site}' name"),
    ({"site/{site}/sensor/{device}/state": "$share/g/site/{site}/{device}"},
     "sources[0].subscriptions[0].topic: write the share group in share_group:"),
    ({'"{device} in {site}"': '"{device} in {city}"'},
     "sources[0].subscriptions[0].device.display_name: uses {city}, which the topic pattern"),
    ({'"{device} in {site}"': '"{device!r}"'},
     "sources[0].subscriptions[0].device.display_name: template '{device!r}'"),
    ({"sensor/{device}/state": "sensor/{id}/state"},
     "sources[0].subscriptions[0].device.id: uses {device}, which the topic pattern 'site/{sit"),
    ({'{site: "{site}"}': '{site: "{room}"}'},
     "sources[0].subscriptions[0].metrics[0].dimensions.site: uses {room}, which the topic"),
    ({"metric: custom:iot.temperature": "metric: custom:iot.pressure"},
     "sources[0].subscriptions[0].metrics[0].metric: metric 'custom:iot.pressure' is not def"),
    ({"metric: custom:iot.temperature": "metric: custom:iot.5"},
     "sources[0].subscriptions[0].metrics[0].metric: metric id 'custom:iot.5'"),
    ({'{site: "{site}"}': '{site: "{site}", room: x}'},
     "sources[0].subscriptions[0].metrics[0].metric: metric 'custom:iot.temperature' does not"
     " declare dimension(s) ['room']"),
    ({"type: Sensor": "type: Thermostat"},
     "sources[0].subscriptions[0].metrics[0].metric: device type 'Thermostat' is not in the "),
    ({"        - field: env.temperature\n": "        - scale: 2\n"},
     "sources[0].subscriptions[0].metrics[0].field: a json payload needs the field"),
    ({"      device:": "      payload: number\n      device:"},
     "sources[0].subscriptions[0].metrics[0].field: a number payload has no fields"),
    ({"      device:": "      payload: boolean\n      timestamp: {field: t, format: s}\n"
                       "      device:"},
     "sources[0].subscriptions[0].timestamp: a boolean payload has no timestamp field"),
    ({"      device:": "      timestamp: {field: t, format: us}\n      device:"},
     "sources[0].subscriptions[0].timestamp.format: Input should be 's', 'ms' or 'iso8601'"),
    ({"field: env.temperature": "field: env..temperature"},
     "sources[0].subscriptions[0].metrics[0].field: field path 'env..temperature'"),
    ({"field: env.temperature": "field: env[x]"},
     "sources[0].subscriptions[0].metrics[0].field: field path 'env[x]' must be"),
])
def test_each_rule_names_its_path(change: dict[str, str], expected: str) -> None:
    source = SOURCE
    for old, new in change.items():
        assert old in source, old
        source = source.replace(old, new)
    found = problems(source)
    assert any(p.startswith(expected) for p in found), found


def test_overlapping_subscriptions_are_an_error() -> None:
    second = """\
    - topic: site/+/sensor/#
      payload: number
      device: {id: x, type: Sensor}
      metrics: [{metric: custom:iot.temperature}]
"""
    assert problems(SOURCE + second) == [
        "sources[0].subscriptions[1].topic: overlaps subscriptions[0].topic: the broker would "
        "deliver a message to both"]
    assert parse(SOURCE + second.replace("site/+/sensor/#", "site/+/actor/#"))


def test_all_errors_of_a_source_are_reported_together() -> None:
    source = (SOURCE.replace("  client_id: collector-1\n", "")
              .replace("metric: custom:iot.temperature", "metric: custom:iot.pressure"))
    assert [p.split(":")[0] for p in problems(source)] == [
        "sources[0].client_id", "sources[0].subscriptions[0].metrics[0].metric"]


def test_field_paths() -> None:
    assert parse_field_path("a") == ("a",)
    assert parse_field_path("readings[0].value") == ("readings", 0, "value")
    assert parse_field_path("[-1][2].x y.z") == (-1, 2, "x y", "z")
    for bad in ("", ".a", "a.", "a[", "a[]", "a]b", "a[1]b", "a..b"):
        with pytest.raises(ValueError, match="field path"):
            parse_field_path(bad)


LEVELS = ["a", "b", ""]
PATTERN_LEVEL = st.sampled_from(["a", "b", "", "+", "{v}"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    levels = draw(st.lists(PATTERN_LEVEL, min_size=0, max_size=4))
    levels = [f"{{v{i}}}" if level == "{v}" else level for i, level in enumerate(levels)]
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "#"  # an empty pattern is no pattern


@given(patterns(), st.lists(st.sampled_from(LEVELS), min_size=1, max_size=5))
def test_patterns_match_what_their_filter_matches(pattern: str, levels: list[str]) -> None:
    parsed = parse_topic_pattern(pattern)
    topic = "/".join(levels)
    assume(topic != "")  # not a valid topic
    values = parsed.match(topic)
    assert (values is not None) == aiomqtt.Topic(topic).matches(parsed.filter)
    if values is not None:
        # {vN} sits at level N of the pattern.
        assert values == {name: levels[int(name[1:])] for name in parsed.variables}


@given(patterns(), patterns())
def test_overlap_means_some_topic_matches_both(first: str, second: str) -> None:
    a, b = parse_topic_pattern(first), parse_topic_pattern(second)
    topics = ("/".join(levels) for n in range(1, 7)
              for levels in itertools.product(["a", "b", "", "c"], repeat=n))
    witness = any(a.match(t) is not None and b.match(t) is not None for t in topics)
    assert a.overlaps(b) == witness == b.overlaps(a)


def test_the_documented_snippet_is_a_valid_config() -> None:
    snippet = Path(__file__).parent.parent / "config" / "snippets" / "mqtt.yaml"
    head = "dynatrace:\n  url: http://127.0.0.1:9\n  token: test-token\n"
    config = parse_config(head + snippet.read_text(), env={})
    (source,) = config.sources
    assert isinstance(source, MqttSourceConfig)
    assert [s.filter for s in source.subscriptions] == [
        "site/+/sensor/+/state", "site/+/door/+/open"]
    assert source.secret_password() is None  # MQTT_PASSWORD unset: anonymous
