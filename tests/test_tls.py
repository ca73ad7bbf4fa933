"""TLS to Dynatrace: verified by default, with a clear error naming the host when it fails.

The simulator is served over HTTPS with a certificate from a test CA the system does not
trust (tests/mosquitto.py `make_certificates`). The MQTT side is in test_mqtt_source.py.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from collector.buffer import Buffer
from collector.catalog import Catalog, MetricInfo
from collector.config.model import BufferConfig, DynatraceConfig
from collector.dynatrace import DynatraceClient, Outcome
from collector.flush import Flusher
from collector.model import Device, Reading
from collector.simulator import MetricDefinition, Simulator
from collector.telemetry import Telemetry
from tests.helpers import TOKEN
from tests.mosquitto import Certificates

METRIC = "custom:tls.value"


@pytest.fixture
async def https_simulator(certificates: Certificates) -> AsyncIterator[tuple[Simulator, str]]:
    """The simulator on https://127.0.0.1:<port>, its certificate signed by the test CA."""
    sim = Simulator(tokens={TOKEN})
    sim.metrics[METRIC] = MetricDefinition(METRIC, "v", "Count", (), ("T",), 0)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    runner = web.AppRunner(sim.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    port = runner.addresses[0][1]
    try:
        yield sim, f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def body() -> bytes:
    return (b'{"type": "T", "series": [{"timeseriesId": "%s", "dataPoints": [[%d, 1.0]]}]}'
            % (METRIC.encode(), int(time.time() * 1000)))


async def test_an_untrusted_certificate_is_refused_naming_the_host(
        https_simulator: tuple[Simulator, str]) -> None:
    sim, url = https_simulator
    async with DynatraceClient(DynatraceConfig(url=url), SecretStr(TOKEN)) as client:
        answer = await client.push("dev", body())
    assert answer.outcome is Outcome.RETRY and answer.status is None
    assert answer.detail.startswith("tls: certificate of 127.0.0.1 not trusted"), answer.detail
    assert sim.points() == []


async def test_the_flush_logs_a_tls_failure_once(https_simulator: tuple[Simulator, str]) -> None:
    sim, url = https_simulator
    catalog = Catalog()
    catalog.set_metric(MetricInfo(METRIC, frozenset(), frozenset({"T"})))
    buffer = Buffer(catalog, max_points=100, max_age=600)
    buffer.declare_device(Device("dev", "T"))
    config = DynatraceConfig(url=url)
    with capture_logs() as logs:
        async with DynatraceClient(config, SecretStr(TOKEN)) as client:
            flusher = Flusher(buffer, client, BufferConfig(flush_interval=0.1),
                              max_request_bytes=config.max_request_bytes,
                              max_concurrency=1, telemetry=Telemetry())
            for i in range(3):
                buffer.emit(Reading("dev", METRIC, (), int(time.time() * 1000), float(i)))
                flusher.retry_at = 0.0  # try again now, not after the backoff
                await flusher.flush()
    failures = [e for e in logs if e["event"].startswith("Dynatrace endpoint")]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "error"
    assert failures[0]["detail"].startswith("tls: certificate of 127.0.0.1 not trusted "
                                            "([SSL: CERTIFICATE_VERIFY_FAILED]")
    assert buffer.buffered == 3 and buffer.delivered == 0  # kept for a retry, never dropped
    assert sim.points() == []


@pytest.mark.parametrize("setting", ["ca_file", "verify_tls: false"])
async def test_a_trusted_ca_or_verification_off_delivers(
        https_simulator: tuple[Simulator, str], certificates: Certificates,
        setting: str) -> None:
    sim, url = https_simulator
    if setting == "ca_file":
        config = DynatraceConfig(url=url, ca_file=Path(certificates.ca))
    else:
        config = DynatraceConfig(url=url, verify_tls=False)
    async with DynatraceClient(config, SecretStr(TOKEN)) as client:
        answer = await client.push("dev", body())
    assert answer.outcome is Outcome.DELIVERED, answer.detail
    assert [p.value for p in sim.points()] == [1.0]
