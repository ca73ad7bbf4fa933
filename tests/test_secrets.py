"""Secrets never leave: not in logs, tracebacks, --dry-run output, /status, /metrics, or
check-config errors, through a run with errors of every kind.

The secrets: the Dynatrace token, MQTT passwords (right and wrong), SNMP communities and
SNMPv3 auth/priv keys (right and wrong). Everything the collector says is searched for
each whole secret and for distinctive pieces of it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

import aiohttp

from collector.simulator import Simulator
from tests.helpers import TOKEN, free_port, wait_for
from tests.mosquitto import PASSWORD, USER, Broker, publish
from tests.snmpd import AUTH_KEY, COMMUNITY, PRIV_KEY, V3_USER, Start
from tests.test_cli import ROOT, Running

WRONG_PASSWORD = "Wr0ng-mqtt-pa55phrase-7781"
WRONG_AUTH_KEY = "wr0ng-auth-passphrase-991"
UNHEARD_COMMUNITY = "c0mmunity-nobody-hears-it"
URL_PASSWORD = "url-emb3dded-pa55word-42"
SECRETS = {
    "Dynatrace token": TOKEN,
    "MQTT password": PASSWORD,
    "wrong MQTT password": WRONG_PASSWORD,
    "SNMP community": COMMUNITY,
    "unheard SNMP community": UNHEARD_COMMUNITY,
    "SNMPv3 auth key": AUTH_KEY,
    "SNMPv3 priv key": PRIV_KEY,
    "wrong SNMPv3 auth key": WRONG_AUTH_KEY,
    "password in a URL": URL_PASSWORD,
}
UPTIME = "1.3.6.1.2.1.1.3.0"


def pieces(secret: str) -> set[str]:
    """The secret and distinctive pieces of it: a third of it, at least 8 characters, not
    just letters (`communit` of a community name is a word, not a leak)."""
    size = max(8, len(secret) // 3)
    return {secret} | {piece for i in range(len(secret) - size + 1)
                       if not (piece := secret[i:i + size]).isalpha()}


def leaks(texts: dict[str, str]) -> list[str]:
    """One line per secret found in a text, with where in the text."""
    found = []
    for where, text in texts.items():
        for name, secret in SECRETS.items():
            at = min((i for piece in pieces(secret) if (i := text.find(piece)) >= 0),
                     default=-1)
            if at >= 0:
                found.append(f"{name} in {where}: ...{text[max(0, at - 60):at + 40]!r}...")
    return found


def config_text(sim: Simulator, broker: Broker, agent_host: str, *, silent_port: int,
                tmp_path: Path, health_port: int) -> str:
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    priv_file = tmp_path / "priv-key"
    priv_file.write_text(PRIV_KEY)
    priv_file.chmod(0o600)
    broken_ca = tmp_path / "broken-ca.pem"
    broken_ca.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    return textwrap.dedent(f"""\
        dynatrace:
          url: {sim.url}
          token: ${{DT_TEST_TOKEN}}
          timeout: 1s
        buffer: {{flush_interval: 200ms, shutdown_timeout: 3s}}
        health: {{listen: "127.0.0.1:{health_port}"}}
        log: {{level: debug, format: json}}
        metrics:
          custom:sec.temperature: {{display_name: T, types: [Sensor]}}
          custom:sec.uptime: {{display_name: Up, types: [Firewall]}}
        sources:
          - type: mqtt
            name: iot
            url: {broker.url}
            client_id: secrets-iot
            username: {USER}
            password_file: {password_file}
            subscriptions:
              - topic: sec/{{device}}
                device: {{type: Sensor}}
                metrics: [{{field: t, metric: custom:sec.temperature}}]
          - type: mqtt
            name: iot-wrong-password
            url: {broker.url}
            client_id: secrets-wrong
            username: {USER}
            password: {WRONG_PASSWORD}
            reconnect_delay: 100ms
            reconnect_max_delay: 200ms
            subscriptions:
              - topic: other/{{device}}
                device: {{type: Sensor}}
                metrics: [{{field: t, metric: custom:sec.temperature}}]
          - type: mqtt
            name: iot-raises
            url: mqtts://127.0.0.1:{broker.port}
            client_id: secrets-raises
            username: {USER}
            password: {PASSWORD}
            tls: {{ca_file: {broken_ca}}}
            subscriptions:
              - topic: third/{{device}}
                device: {{type: Sensor}}
                metrics: [{{field: t, metric: custom:sec.temperature}}]
          - type: snmp
            name: net
            interval: 300ms
            timeout: 300ms
            retries: 0
            community: {COMMUNITY}
            device_type: Firewall
            scalars: [{{metric: custom:sec.uptime, oid: {UPTIME}}}]
            targets:
              - {{host: "{agent_host}", device: fw-v2c}}
              - host: "{agent_host}"
                device: fw-v3
                version: v3
                v3: {{user: {V3_USER}, auth_protocol: SHA-256, auth_key: {AUTH_KEY},
                      priv_protocol: AES, priv_key_file: {priv_file}}}
              - host: "{agent_host}"
                device: fw-wrong-key
                version: v3
                v3: {{user: {V3_USER}, auth_protocol: SHA-256, auth_key: {WRONG_AUTH_KEY},
                      priv_protocol: AES, priv_key: {PRIV_KEY}}}
              - {{host: "127.0.0.1:{silent_port}", device: fw-unreachable,
                  community: {UNHEARD_COMMUNITY}}}
              - host: "no-such-agent.invalid"
                device: fw-no-name
                version: v3
                v3: {{user: {V3_USER}, auth_protocol: SHA-256, auth_key: {AUTH_KEY},
                      priv_protocol: AES, priv_key: {PRIV_KEY}}}
        """)


INVALID_NEXT_TO_SECRETS = {
    # Each replaces a line of the valid config with a broken one beside a secret.
    "token of the wrong type": ("token: ${DT_TEST_TOKEN}", f"token: [{TOKEN}]"),
    "bad timeout beside the token": ("timeout: 1s", "timeout: never"),
    "YAML broken on the token's line": ("token: ${DT_TEST_TOKEN}", f'token: "{TOKEN}'),
    "password without its source": (f"password: {WRONG_PASSWORD}",
                                     f"password: {WRONG_PASSWORD}\n    colour: red"),
    "password of the wrong type": (f"password: {WRONG_PASSWORD}",
                                   f"password: {{nested: {WRONG_PASSWORD}}}"),
    "password in the URL, bad scheme": ("name: iot-wrong-password\n    url: ",
                                        f"name: iot-wrong-password\n    url: mqtt+ssl://"
                                        f"{USER}:{URL_PASSWORD}@127.0.0.1:1\n    x_url: "),
    "password in the URL, bad port": ("name: iot-wrong-password\n    url: ",
                                      f"name: iot-wrong-password\n    url: mqtt://"
                                      f"{USER}:{URL_PASSWORD}@127.0.0.1:99999\n    x_url: "),
    "token in the Dynatrace URL": ("  url: http://127.0.0.1", f"  url: http://127.0.0.1:1/"
                                   f"?Api-Token={TOKEN}#\n  x_url: http://127.0.0.1"),
    "token as the Dynatrace URL's password": ("  url: http://", f"  url: http://api:{TOKEN}@"),
    "short auth key": (f"auth_key: {WRONG_AUTH_KEY}", f"auth_key: {WRONG_AUTH_KEY[:7]}"),
    "auth key with an unknown protocol": ("auth_protocol: SHA-256, auth_key: "
                                          f"{WRONG_AUTH_KEY}", "auth_protocol: SHA-999, "
                                          f"auth_key: {WRONG_AUTH_KEY}"),
    "community of the wrong type": (f"community: {COMMUNITY}",
                                    f"community: {{value: {COMMUNITY}}}"),
    "unknown protocol beside the priv key": ("priv_protocol: AES, priv_key: ",
                                             "priv_protocol: AES-999, priv_key: "),
}


async def collector(*args: str, env: dict[str, str]) -> Running:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    return Running(proc)


async def get(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        return await answer.text()


async def test_no_secret_in_any_output_through_errors_of_every_kind(
        simulator: Simulator, mosquitto_auth: Broker, snmpd: Start, silent_port: int,
        tmp_path: Path) -> None:
    import os

    agent = snmpd(values={UPTIME: ("timeticks", 100)})
    health = free_port()
    config = tmp_path / "config.yaml"
    valid = config_text(simulator, mosquitto_auth, agent.host, silent_port=silent_port,
                        tmp_path=tmp_path, health_port=health)
    config.write_text(valid)
    env = {**os.environ, "DT_TEST_TOKEN": TOKEN}
    texts: dict[str, str] = {}

    simulator.fail(401, count=2)  # registration refused at first, then every kind of failure
    running = await collector("run", "-c", str(config), env=env)
    try:
        await wait_for(lambda: '"mqtt connected"' in running.stderr, timeout=30,
                       what="the good MQTT source connected")
        simulator.fail(503, count=2)
        simulator.drop_connections(count=2)
        simulator.fail(401, count=2)
        await publish(mosquitto_auth.url, [(f"sec/s{i}", f'{{"t": {i}}}') for i in range(5)],
                      username=USER, password=PASSWORD)
        await wait_for(lambda: any(p.device == "s4" for p in simulator.points()), timeout=30,
                       what="MQTT points delivered")
        await wait_for(lambda: {"fw-v2c", "fw-v3"} <= {p.device for p in simulator.points()},
                       timeout=30, what="SNMP points delivered")
        failures = ('"reason": "auth"', '"reason": "timeout"', '"reason": "unreachable"',
                    "source failed; restarting", "Not authorized", "HTTP 401")
        await wait_for(lambda: simulator.responses[503] == 2 and simulator.responses[401] >= 3
                       and sum(r.status == 0 for r in simulator.requests) == 2, timeout=30,
                       what="the endpoint's 503s, 401s and dropped connections")
        try:
            await wait_for(lambda: all(f in running.stderr for f in failures), timeout=30)
        except AssertionError:
            missing = [f for f in failures if f not in running.stderr]
            raise AssertionError(f"not logged: {missing}\n{running.stderr}") from None
        # A reload with an invalid config, broken right beside the secrets.
        broken = valid
        for old, new in INVALID_NEXT_TO_SECRETS.values():
            if "x_url" not in new:  # those replace the same line; one at a time below
                broken = broken.replace(old, new, 1)
        config.write_text(broken)
        running.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "reload rejected" in running.stderr, timeout=30,
                       what="the invalid reload rejected")
        texts["/status"] = await get(f"http://127.0.0.1:{health}/status")
        texts["/metrics"] = await get(f"http://127.0.0.1:{health}/metrics")
    finally:
        code = await running.stop(signal.SIGTERM)
    assert code == 0
    texts["run stdout"], texts["run stderr"] = running.stdout, running.stderr
    assert "Traceback" in running.stderr  # the raising source's traceback is in the log
    assert "401" in texts["/status"] or "401" in texts["/metrics"]

    config.write_text(valid)
    dry = await collector("run", "--dry-run", "-c", str(config), env=env)
    try:
        await wait_for(lambda: '"method": "POST"' in dry.stdout, timeout=30,
                       what="a POST in the dry-run output")
    finally:
        await dry.stop(signal.SIGTERM)
    texts["dry-run stdout"], texts["dry-run stderr"] = dry.stdout, dry.stderr

    for name, (old, new) in INVALID_NEXT_TO_SECRETS.items():
        assert old in valid, name
        config.write_text(valid.replace(old, new, 1))
        check = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "check-config", "-c", str(config), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(check.communicate(), 60)
        assert check.returncode == 2, (name, out, err)
        texts[f"check-config: {name}"] = (out + err).decode()
    found = leaks(texts)
    assert not found, "\n".join(found)
