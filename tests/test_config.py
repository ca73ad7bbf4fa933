"""Config loading: the example passes; each broken rule is reported with its path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.fakesource  # noqa: F401  registers type: fake
from collector.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "collector.example.yaml"

GOOD = """\
dynatrace:
  url: https://abc12345.live.dynatrace.com
  token: secret-token-value
metrics:
  custom:firewall.connections.dropped:
    display_name: Dropped
    dimensions: [nic]
    types: [F5-Firewall]
devices:
  fw-1:
    type: F5-Firewall
"""


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", env or {})
    return [str(issue) for issue in info.value.issues]


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE, env={})
    assert "custom:firewall.connections.dropped" in config.metrics
    assert config.devices["fw-linz-1"].type == "F5-Firewall"


def test_good_config_values_and_defaults() -> None:
    config = parse_config(GOOD, env={})
    assert config.buffer.flush_interval == 60.0
    assert config.buffer.max_age == 3600.0
    assert config.dynatrace.verify_tls is True
    assert config.dynatrace.max_request_bytes == 15360
    token = config.dynatrace.api_token()
    assert token is not None and token.get_secret_value() == "secret-token-value"
    assert "secret-token-value" not in repr(config)
    assert "secret-token-value" not in str(config.model_dump())


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  token: secret-token-value\n", "  token: secret-token-value\n  tokn: x\n",
         "c.yaml:4: dynatrace.tokn: unknown key"),
        ("display_name: Dropped", "display_name: Dropped\n    unit: 5",
         'c.yaml:7: metrics."custom:firewall.connections.dropped".unit:'),
        ("custom:firewall.connections.dropped:", "firewall.dropped:",
         "metrics.\"firewall.dropped\": metric id 'firewall.dropped' must start with 'custom:'"),
        ("custom:firewall.connections.dropped:", "custom:fw.1dropped:",
         "a digit may not follow a punctuation mark"),
        ("custom:firewall.connections.dropped:", "custom:fw dropped:",
         "may only use letters, digits"),
        ("dimensions: [nic]", "dimensions: [nic, 'bad key']",
         'metrics."custom:firewall.connections.dropped".dimensions[1]: dimension key'),
        ("types: [F5-Firewall]", "types: []",
         'c.yaml:8: metrics."custom:firewall.connections.dropped".types:'),
        ("url: https://abc12345.live.dynatrace.com", "url: ftp://x",
         "c.yaml:2: dynatrace.url: dynatrace.url 'ftp://x' must be an http:// or https:// URL"),
        ("    type: F5-Firewall\n", "    type: F5-Firewall\n    listen_ports: [0]\n",
         'devices."fw-1".listen_ports: ports must be 1-65535'),
    ],
)
def test_each_rule_names_its_path(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    messages = errors(GOOD.replace(old, new))
    assert any(expected in m for m in messages), messages


def test_metric_id_length_limit() -> None:
    long_id = "custom:" + "a" * 250
    messages = errors(GOOD.replace("custom:firewall.connections.dropped", long_id))
    assert any("longer than 256" in m for m in messages), messages


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        ("max_age: 2h", "buffer.max_age: max_age may be at most 1h"),
        ("flush_interval: soon", "buffer.flush_interval: 'soon' is not a duration"),
        ("flush_interval: 0s", "buffer.flush_interval: must be greater than zero"),
        ("max_points: 0", "buffer.max_points: Input should be greater than or equal to 1"),
        ("flush_jitter: 2m", "buffer: flush_jitter must be shorter than flush_interval"),
    ],
)
def test_buffer_rules(buffer: str, expected: str) -> None:
    messages = errors(GOOD + f"buffer:\n  {buffer}\n")
    assert any(expected in m for m in messages), messages


def test_durations_in_every_form() -> None:
    config = parse_config(GOOD + "buffer:\n  flush_interval: 500ms\n  max_age: 1m30s\n"
                          "  shutdown_timeout: 2\n", env={})
    assert config.buffer.flush_interval == 0.5
    assert config.buffer.max_age == 90.0
    assert config.buffer.shutdown_timeout == 2.0


def test_all_errors_reported_at_once() -> None:
    text = GOOD.replace("types: [F5-Firewall]", "types: []") + "buffer:\n  max_age: 3h\nlogs: {}\n"
    messages = errors(text)
    assert len(messages) == 3, messages
    assert any("types" in m for m in messages)
    assert any("buffer.max_age" in m for m in messages)
    assert any("logs: unknown key" in m for m in messages)


def test_interpolation_with_default_and_missing_variable() -> None:
    text = GOOD.replace("secret-token-value", "${TOKEN_VAR}") + (
        "buffer:\n  flush_interval: ${FLUSH:-15s}\n")
    config = parse_config(text, env={"TOKEN_VAR": "from-env"})
    assert config.buffer.flush_interval == 15.0
    token = config.dynatrace.api_token()
    assert token is not None and token.get_secret_value() == "from-env"
    messages = errors(text, env={})
    assert any("c.yaml:3: dynatrace.token: environment variable TOKEN_VAR is not set" in m
               for m in messages), messages


def test_env_override_of_any_key_and_its_errors() -> None:
    config = parse_config(GOOD, env={"DT_COLLECTOR__BUFFER__FLUSH_INTERVAL": "30s",
                                     "DT_COLLECTOR__DYNATRACE__VERIFY_TLS": "false"})
    assert config.buffer.flush_interval == 30.0
    assert config.dynatrace.verify_tls is False
    messages = errors(GOOD, env={"DT_COLLECTOR__BUFFER__MAX_AGE": "5h"})
    assert messages == ["env DT_COLLECTOR__BUFFER__MAX_AGE: buffer.max_age: max_age may be "
                        "at most 1h: Dynatrace rejects older data points"]
    messages = errors(GOOD, env={"DT_COLLECTOR__BUFER__MAX_AGE": "5m"})
    assert any("bufer: unknown key" in m for m in messages), messages


def test_token_sources(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    text = GOOD.replace("token: secret-token-value", f"token_file: {token_file}")
    token = parse_config(text, env={}).dynatrace.api_token()
    assert token is not None and token.get_secret_value() == "file-token"

    both = GOOD.replace("token: secret-token-value",
                        f"token: x\n  token_file: {token_file}")
    assert any("give token or token_file, not both" in m for m in errors(both))

    missing = GOOD.replace("token: secret-token-value", f"token_file: {tmp_path}/nope")
    messages = errors(missing)
    assert any("cannot read token_file" in m and "nope" in m for m in messages), messages

    no_token = GOOD.replace("  token: secret-token-value\n", "")
    assert parse_config(no_token, env={}).dynatrace.api_token() is None
    token = parse_config(no_token, env={}).dynatrace.api_token()
    assert token is None


def test_yaml_problems_are_located(tmp_path: Path) -> None:
    messages = errors("dynatrace:\n  url: [unclosed\n")
    assert messages[0].startswith("c.yaml:") and "not valid YAML" in messages[0]
    dup = GOOD + "devices:\n  fw-2:\n    type: F5-Firewall\n"
    assert any("c.yaml:12: devices: key appears twice" in m for m in errors(dup))
    assert errors("- a list\n") == ["c.yaml: the config must be a YAML mapping"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_sources_select_their_model_by_type() -> None:
    source = ("sources:\n  - type: fake\n    device: fw-1\n    device_type: F5-Firewall\n"
              "    metric: custom:firewall.connections.dropped\n    dimensions: {nic: eth0}\n")
    config = parse_config(GOOD + source, env={})
    assert config.sources[0].type == "fake"
    assert config.sources[0].name == "fake-0"

    unknown = errors(GOOD + "sources:\n  - type: telnet\n")
    assert any("c.yaml:13: sources[0].type: unknown source type 'telnet'" in m
               for m in unknown), unknown
    bad_field = errors(GOOD + source + "    intervall: 1\n")
    assert any("sources[0].intervall: unknown key" in m for m in bad_field), bad_field


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("device_type: F5-Firewall", "device type 'Router' is not in the types"),
        ("dimensions: {nic: eth0}", "does not declare dimension(s) ['port']"),
        ("metric: custom:firewall.connections.dropped", "metric 'custom:nope' is not defined"),
    ],
)
def test_semantic_rules_of_sources(change: str, expected: str) -> None:
    source = ("sources:\n  - type: fake\n    device: fw-1\n    device_type: F5-Firewall\n"
              "    metric: custom:firewall.connections.dropped\n    dimensions: {nic: eth0}\n")
    replacement = {
        "device_type: F5-Firewall": "device_type: Router",
        "dimensions: {nic: eth0}": "dimensions: {port: eth0}",
        "metric: custom:firewall.connections.dropped": "metric: custom:nope",
    }[change]
    messages = errors(GOOD + source.replace(change, replacement))
    assert any("sources[0].metric" in m and expected in m for m in messages), messages


def test_a_secret_file_readable_by_others_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    token_file.chmod(0o644)
    text = GOOD.replace("token: secret-token-value", f"token_file: {token_file}")
    with caplog.at_level("WARNING", logger="collector.config"):
        parse_config(text, env={})
    assert f"secret file {token_file} is readable by other users" in caplog.text
    assert "file-token" not in caplog.text
    caplog.clear()
    token_file.chmod(0o600)
    with caplog.at_level("WARNING", logger="collector.config"):
        parse_config(text, env={})
    assert "readable by other users" not in caplog.text
