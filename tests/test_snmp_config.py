"""The `type: snmp` config: defaults and overrides, profile metrics, every rule with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import ConfigError, parse_config
from collector.config import snmp as snmp_config
from collector.config.snmp import SnmpSourceConfig, parse_host, parse_oid

GOOD = """\
dynatrace:
  url: https://abc12345.live.dynatrace.com
  token: secret-token-value
metrics:
  custom:fw.sessions:
    display_name: Sessions
    types: [Firewall]
  custom:fw.cpu:
    display_name: CPU per core
    unit: Percent
    dimensions: [core]
    types: [Firewall]
sources:
  - type: snmp
    name: network
    community: community-secret-1
    device_type: Firewall
    scalars:
      - metric: custom:fw.sessions
        oid: .1.3.6.1.4.1.99999.1.0
        transform: rate
    tables:
      - dimensions: {core: index}
        exclude: {core: "0"}
        metrics:
          - {metric: custom:fw.cpu, oid: 1.3.6.1.4.1.99999.5.1.2}
    targets:
      - host: 10.0.0.1
        device: fw-1
        display_name: Linz firewall
        tags: [linz]
        properties: {vendor: acme}
      - host: router.example.com:1161
        type: Router
        interval: 10s
        profiles: [if-mib]
        version: v3
        v3:
          user: monitor
          auth_protocol: sha-512
          auth_key: auth-key-secret-1
          priv_protocol: aes-256
          priv_key: priv-key-secret-1
"""
"""Router has no fw.* types: only used in the tests that check that rule."""

VALID = GOOD.replace("types: [Firewall]", "types: [Firewall, Router]")


def snmp(text: str) -> SnmpSourceConfig:
    source = parse_config(text, "c.yaml", {}).sources[0]
    assert isinstance(source, SnmpSourceConfig)
    return source


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", {})
    return [str(issue) for issue in info.value.issues]


def test_defaults_overrides_and_devices() -> None:
    source = snmp(VALID)
    fw, router = source.targets
    assert (source.interval, source.timeout, source.retries) == (60.0, 5.0, 1)
    assert source.max_repetitions == 25
    assert source.target_version(fw) == "v2c"
    community = source.target_community(fw)
    assert community is not None and community.get_secret_value() == "community-secret-1"
    assert source.target_version(router) == "v3"
    v3 = source.target_v3(router)
    assert v3 is not None and (v3.auth_protocol, v3.priv_protocol) == ("SHA-512", "AES-256")
    assert router.interval == 10.0 and router.address == ("router.example.com", 1161)
    device = source.target_device(fw)
    assert (device.id, device.type, device.display_name) == ("fw-1", "Firewall", "Linz firewall")
    assert device.ip_addresses == ("10.0.0.1",) and device.properties == {"vendor": "acme"}
    other = source.target_device(router)
    assert (other.id, other.type, other.host_names) == (
        "router.example.com:1161", "Router", ("router.example.com",))
    assert [t.name for t in source.target_tables(router)] == ["interfaces", ""]
    assert [s.oid for s in source.target_scalars(fw)] == ["1.3.6.1.4.1.99999.1.0"]


def test_the_engine_is_gufo_unless_the_source_or_a_target_says_otherwise() -> None:
    source = snmp(VALID)
    assert [source.target_engine(t) for t in source.targets] == ["gufo", "gufo"]
    source = snmp(VALID.replace("        type: Router\n", "        type: Router\n"
                                "        engine: pysnmp\n"))
    assert [source.target_engine(t) for t in source.targets] == ["gufo", "pysnmp"]
    source = snmp(VALID.replace("    name: network\n", "    name: network\n    engine: pysnmp\n"))
    assert [source.target_engine(t) for t in source.targets] == ["pysnmp", "pysnmp"]


def test_what_gufo_cannot_do_is_said_where_the_v3_user_is() -> None:
    text = VALID.replace("priv_protocol: aes-256", "priv_protocol: 3des")
    assert errors(text) == ["c.yaml:42: sources[0].targets[1].v3.priv_protocol: engine gufo has "
                            "no 3DES privacy: set engine: pysnmp (on the target or the source)"]
    snmp(text.replace("        type: Router\n", "        type: Router\n        engine: pysnmp\n"))


def test_engine_gufo_where_gufo_snmp_is_not_installed_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # gufo_snmp has no build for 32-bit ARM and some others: there pysnmp is the default.
    monkeypatch.setattr(snmp_config, "GUFO_INSTALLED", False)
    text = VALID.replace("    name: network\n", "    name: network\n    engine: gufo\n")
    problem = ("engine gufo needs the gufo_snmp package, which is not installed (it has no "
               "build for this machine): set engine: pysnmp")
    assert errors(text) == [f"c.yaml:16: sources[0].engine: {problem}"]
    text = VALID.replace("        type: Router\n", "        type: Router\n"
                         "        engine: gufo\n").replace("device_type: Firewall",
                                                          "device_type: Firewall\n"
                                                          "    engine: pysnmp")
    assert errors(text) == [f"c.yaml:36: sources[0].targets[1].engine: {problem}"]


def test_profile_metrics_are_registered_with_the_types_that_use_them() -> None:
    config = parse_config(VALID, "c.yaml", {})
    metrics = config.all_metrics()
    inbound = metrics["custom:snmp.if.in.bytes"]
    assert inbound.types == ["Router"]
    assert inbound.dimensions == ["interface"]
    assert inbound.unit == "BytePerSecond"
    assert "custom:snmp.host.cpu.load" not in metrics  # profile not used


def test_secrets_never_show() -> None:
    config = parse_config(VALID, "c.yaml", {})
    shown = repr(config) + str(config.model_dump()) + config.model_dump_json()
    for secret in ("community-secret-1", "auth-key-secret-1", "priv-key-secret-1"):
        assert secret not in shown
    broken = VALID.replace("auth_key: auth-key-secret-1", "auth_key: short")
    assert "short" not in "\n".join(errors(broken)).replace("shorter", "")


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "community").write_text("from-a-file\n")
    (tmp_path / "auth").write_text("auth-from-file\n")
    text = (VALID.replace("community: community-secret-1",
                          f"community_file: {tmp_path / 'community'}")
            .replace("auth_key: auth-key-secret-1", f"auth_key_file: {tmp_path / 'auth'}"))
    source = snmp(text)
    community = source.target_community(source.targets[0])
    assert community is not None and community.get_secret_value() == "from-a-file"
    v3 = source.target_v3(source.targets[1])
    auth = v3.auth_secret() if v3 else None
    assert auth is not None and auth.get_secret_value() == "auth-from-file"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    name: network\n", "    name: network\n    intervall: 5s\n",
         "c.yaml:16: sources[0].intervall: unknown key"),
        ("oid: .1.3.6.1.4.1.99999.1.0", "oid: ifInOctets.1",
         "c.yaml:20: sources[0].scalars[0].oid: 'ifInOctets.1' is not a numeric OID"),
        ("transform: rate", "transform: counter",
         "c.yaml:21: sources[0].scalars[0].transform: Input should be 'gauge', 'delta'"),
        ('exclude: {core: "0"}', 'exclude: {core: "(("}',
         "c.yaml:24: sources[0].tables[0].exclude.core: '((' is not a regular expression"),
        ('exclude: {core: "0"}', 'exclude: {nic: "0"}',
         "c.yaml:23: sources[0].tables[0]: filter key 'nic' is neither a dimension"),
        ("host: 10.0.0.1", "host: 10.0.0.1:99999",
         "c.yaml:28: sources[0].targets[0].host: '10.0.0.1:99999': the port must be 1-65535"),
        ("auth_protocol: sha-512", "auth_protocol: sha-1024",
         "sources[0].targets[1].v3.auth_protocol: Input should be 'none', 'MD5', 'SHA'"),
        ("auth_key: auth-key-secret-1", "auth_key: short",
         "c.yaml:39: sources[0].targets[1].v3: auth_key must be at least 8 characters"),
        ("          auth_protocol: sha-512\n", "",
         "c.yaml:39: sources[0].targets[1].v3: auth_key is set but auth_protocol is none"),
        ("profiles: [if-mib]", "profiles: [if-mbi]",
         "c.yaml:36: sources[0].targets[1].profiles[0].name: unknown profile 'if-mbi'"),
        ("interval: 10s", "interval: 0s",
         "c.yaml:35: sources[0].targets[1].interval: must be greater than zero"),
    ],
)
def test_field_errors_name_their_path(old: str, new: str, expected: str) -> None:
    assert old in VALID
    found = errors(VALID.replace(old, new))
    assert any(expected in e for e in found), found


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    community: community-secret-1\n", "",
         "c.yaml:27: sources[0].targets[0]: SNMP v2c needs a community"),
        ("    device_type: Firewall\n", "",
         "sources[0].targets[0]: the device needs a type"),
        ("        v3:\n", "        v4:\n", "sources[0].targets[1].v4: unknown key"),
        ("device: fw-1", "device: router.example.com:1161",
         "sources[0].targets[1].device: device 'router.example.com:1161' is also polled by "
         "targets[0]"),
        ("dimensions: [core]", "dimensions: [cpu]",
         "c.yaml:26: sources[0].tables[0].metrics[0].metric: metric 'custom:fw.cpu' does not "
         "declare dimension(s) ['core']"),
        ("metric: custom:fw.sessions", "metric: custom:fw.session",
         "sources[0].scalars[0].metric: metric 'custom:fw.session' is not defined"),
    ],
)
def test_cross_section_rules_name_their_path(old: str, new: str, expected: str) -> None:
    assert old in VALID
    found = errors(VALID.replace(old, new))
    assert any(expected in e for e in found), found


def test_a_device_type_must_be_in_every_metric_it_reports() -> None:
    # The router (type Router) gets the source-level firewall metrics too.
    found = errors(GOOD)
    assert any("sources[0].scalars[0].metric: device type 'Router' is not in the types "
               "['Firewall']" in e for e in found), found
    assert len([e for e in found if "scalars[0]" in e]) == 1  # reported once, not per target


def test_a_device_may_not_also_be_under_devices() -> None:
    text = VALID.replace("sources:", "devices:\n  fw-1:\n    type: Firewall\nsources:")
    assert any("sources[0].targets[0].device: device 'fw-1' is also defined under devices:"
               in e for e in errors(text))


def test_the_snippet_for_the_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    snippet = (root / "config" / "snippets" / "snmp.yaml").read_text()
    head = "dynatrace:\n  url: https://abc12345.live.dynatrace.com\n  token: t\n"
    config = parse_config(head + snippet, "snmp.yaml", {})
    assert any(isinstance(s, SnmpSourceConfig) for s in config.sources)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.1", ("10.0.0.1", 161)), ("10.0.0.1:1161", ("10.0.0.1", 1161)),
     ("sw-1.example.com", ("sw-1.example.com", 161)), ("2001:db8::1", ("2001:db8::1", 161)),
     ("[2001:db8::1]:1161", ("2001:db8::1", 1161))],
)
def test_parse_host(text: str, expected: tuple[str, int]) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize("text", ["", "a b", "[::1", "[::1]x", "host:0", "host:port", "2001:zz::1"])
def test_parse_host_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each message is checked above
        parse_host(text)


def test_parse_oid() -> None:
    assert parse_oid(".1.3.6.1.2.1.1.3.0") == (1, 3, 6, 1, 2, 1, 1, 3, 0)
    for bad in ("1", "1.3.x", "3.1", "1..3", "1.3.6.99999999999"):
        with pytest.raises(ValueError, match="OID"):
            parse_oid(bad)


def test_profile_filters_apply_to_the_tables_they_concern() -> None:
    text = VALID.replace("profiles: [if-mib]", """profiles:
          - name: host-resources
            exclude: {storage: "Swap.*", 1.3.6.1.2.1.25.2.3.1.2: "x"}""")
    source = snmp(text)
    processors, storage, _ = source.target_tables(source.targets[1])
    assert processors.exclude == {"1.3.6.1.2.1.25.2.3.1.2": "x"}
    assert storage.exclude == {"storage": "Swap.*", "1.3.6.1.2.1.25.2.3.1.2": "x"}
    broken = VALID.replace("profiles: [if-mib]", "profiles: [{name: if-mib, include: {port: x}}]")
    assert any("sources[0].targets[1].profiles[0]: filter key 'port' is neither a dimension of "
               "profile if-mib (interface) nor a column OID" in e for e in errors(broken))


def test_two_sources_sharing_a_profile_union_its_types() -> None:
    from collector.config import parse_config

    text = """
dynatrace: {url: https://x.live.dynatrace.com, token: t}
sources:
  - type: snmp
    name: routers
    community: c
    targets: [{host: 127.0.0.1, device: r1, type: Router, profiles: [if-mib]}]
  - type: snmp
    name: switches
    community: c
    targets: [{host: 127.0.0.2, device: s1, type: Switch, profiles: [if-mib]}]
"""
    config = parse_config(text, env={})
    types = {tuple(sorted(m.types)) for k, m in config.all_metrics().items() if "if." in k}
    assert types == {("Router", "Switch")}
