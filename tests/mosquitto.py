"""Pytest plugin: real mosquitto brokers on free ports of 127.0.0.1, for the MQTT tests.

`mosquitto` is an anonymous broker, `mosquitto_auth` needs a user and password (a
mosquitto_passwd file), `mosquitto_tls` speaks only TLS with a CA, server and client
certificate made for the test (it requires the client certificate). `mosquitto_factory`
makes brokers with other settings, e.g. persistence for the outage tests; a `Broker` can be
killed and started again on the same port. `Gate` is a TCP proxy that can cut a client off
while the broker stays up. `publish` sends messages with a real client, `mosquitto_pub` with
the command line tool; `topic_root` gives each test its own topics. `running_source` runs
one MQTT source into a `ListSink`, for tests of the source on its own.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.config import Config
from collector.model import Device, Reading
from collector.sources import Source, SourceContext, create_source
from collector.telemetry import Telemetry
from tests.helpers import free_port, wait_for

MOSQUITTO = "/usr/sbin/mosquitto"
USER, PASSWORD = "collector", "pa55-w0rd-never-logged"

IOT_METRICS = """\
metrics:
  custom:iot.temperature:
    display_name: Temperature
    unit: Celsius
    dimensions: [site, position]
    types: [Sensor]
  custom:iot.humidity:
    display_name: Humidity
    unit: Percent
    dimensions: [site]
    types: [Sensor]
  custom:iot.door.open:
    display_name: Door open
    dimensions: [site]
    types: [Sensor]
"""
"""The `metrics:` the MQTT tests map to."""


@dataclass
class Certificates:
    """A CA and the server and client certificates it signed, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass
class Broker:
    """One mosquitto process; its config, persistence and log live in `directory`."""

    directory: Path
    port: int = field(default_factory=free_port)
    users: dict[str, str] = field(default_factory=dict)
    tls: Certificates | None = None
    persistence: bool = False
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _config(self) -> str:
        lines = [f"listener {self.port} 127.0.0.1", f"log_dest file {self.log_file}",
                 "log_type all", "connection_messages true"]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to user mosquitto, who cannot read tmp_path.
            lines.append("user root")
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self.directory / 'passwd'}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.server_cert}",
                      f"keyfile {self.tls.server_key}", "require_certificate true"]
        if self.persistence:
            # Save after every change, so that even SIGKILL keeps sessions and queues.
            lines += ["persistence true", f"persistence_location {self.directory}/",
                      "autosave_interval 1", "autosave_on_changes true"]
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.users:
            passwd = self.directory / "passwd"
            passwd.unlink(missing_ok=True)
            for user, password in self.users.items():
                create = ["-c"] if not passwd.exists() else []
                tool = await asyncio.create_subprocess_exec(
                    "mosquitto_passwd", "-b", *create, str(passwd), user, password)
                assert await tool.wait() == 0, "mosquitto_passwd failed"
        conf = self.directory / "mosquitto.conf"
        conf.write_text(self._config())
        self.process = await asyncio.create_subprocess_exec(
            MOSQUITTO, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            if self.process.returncode is not None:
                err = await self.process.stderr.read() if self.process.stderr else b""
                raise RuntimeError(f"mosquitto exited: {err.decode()}\n{self.log()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"mosquitto did not listen: {self.log()}") from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the broker: SIGTERM (it saves its state), or SIGKILL (`kill`: no goodbye)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        async with asyncio.timeout(10):
            await process.wait()


class Gate:
    """A TCP proxy on 127.0.0.1 in front of a broker: `cut()` drops every connection through
    it and refuses new ones until `open()`, while the broker itself stays up."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # refuse new connections, like a broken route would
        for writer in self._writers:
            writer.transport.abort()
        if server is not None:
            await server.wait_closed()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


async def publish(url: str, messages: Iterable[tuple[str, str | bytes]], *, qos: int = 1,
                  **client_options: object) -> None:
    """Publish each (topic, payload) with a real client; returns once the broker has them
    (for QoS 1 and 2: acknowledged)."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    async with aiomqtt.Client(host, int(port), **client_options) as client:  # type: ignore[arg-type]
        for topic, payload in messages:
            await client.publish(topic, payload, qos=qos)


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dt-collector test CA")])

    def issue(name: str, subject_name: x509.Name, key: ec.EllipticCurvePrivateKey,
              extensions: list[x509.ExtensionType]) -> tuple[Path, Path]:
        builder = (x509.CertificateBuilder().subject_name(subject_name).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        for extension in extensions:
            builder = builder.add_extension(
                extension, critical=isinstance(extension, x509.BasicConstraints | x509.KeyUsage))
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(builder.sign(ca_key, hashes.SHA256())
                              .public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def leaf(name: str, common_name: str, *extensions: x509.ExtensionType) -> tuple[Path, Path]:
        return issue(name, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                     ec.generate_private_key(ec.SECP256R1()),
                     [x509.BasicConstraints(ca=False, path_length=None), *extensions])

    ca, _ = issue("ca", ca_name, ca_key, [
        x509.BasicConstraints(ca=True, path_length=0),
        x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                      content_commitment=False, key_encipherment=False, data_encipherment=False,
                      key_agreement=False, encipher_only=False, decipher_only=False),
    ])
    server_cert, server_key = leaf(
        "server", "127.0.0.1",
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.DNSName("localhost")]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]))
    client_cert, client_key = leaf("client", "dt-collector",
                                   x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]))
    return Certificates(ca, server_cert, server_key, client_cert, client_key)


BrokerFactory = Callable[..., Awaitable[Broker]]


@pytest.fixture
async def mosquitto_factory(tmp_path: Path) -> AsyncIterator[BrokerFactory]:
    """`await mosquitto_factory(persistence=True, ...)`: started brokers, stopped at the end."""
    brokers: list[Broker] = []

    async def make(**options: object) -> Broker:
        broker = Broker(tmp_path / f"mosquitto-{len(brokers)}", **options)  # type: ignore[arg-type]
        brokers.append(broker)
        await broker.start()
        return broker

    yield make
    for broker in brokers:
        await broker.stop()


@pytest.fixture
async def mosquitto(mosquitto_factory: BrokerFactory) -> Broker:
    """An anonymous broker."""
    return await mosquitto_factory()


@pytest.fixture
async def mosquitto_auth(mosquitto_factory: BrokerFactory) -> Broker:
    """A broker that needs user `USER` with password `PASSWORD`."""
    return await mosquitto_factory(users={USER: PASSWORD})


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


@pytest.fixture
async def mosquitto_tls(mosquitto_factory: BrokerFactory, certificates: Certificates) -> Broker:
    """A TLS-only broker whose certificate `certificates.ca` signed; it requires a client
    certificate signed by the same CA."""
    return await mosquitto_factory(tls=certificates)


@pytest.fixture
def topic_root() -> str:
    """A topic prefix no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


@dataclass
class ListSink:
    """A `collector.model.Sink` that keeps what it gets, for tests of a source on its own."""

    devices: dict[str, Device] = field(default_factory=dict)
    readings: list[Reading] = field(default_factory=list)

    def declare_device(self, device: Device) -> None:
        self.devices[device.id] = device

    def emit(self, reading: Reading) -> None:
        self.readings.append(reading)


@dataclass
class RunningSource:
    source: Source
    sink: ListSink
    telemetry: Telemetry
    task: asyncio.Task[None]

    def count(self, family: str, *labels: str) -> float:
        """A telemetry value of this source: count("mqtt_bad_input", "not_json")."""
        found = self.telemetry.families.get(family)
        return 0.0 if found is None else found.value(self.source.name, *labels)

    @property
    def connected(self) -> bool:
        return self.count("mqtt_connected") == 1


@asynccontextmanager
async def running_source(config: Config, *, index: int = 0, connect: bool = True,
                         clock: Callable[[], float] = time.time
                         ) -> AsyncIterator[RunningSource]:
    """Run `config.sources[index]` into a ListSink; wait until it is subscribed (`connect`)."""
    sink, telemetry = ListSink(), Telemetry()
    source = create_source(config.sources[index], SourceContext(sink, telemetry, clock=clock))
    running = RunningSource(source, sink, telemetry,
                            asyncio.create_task(source.run(), name=f"source:{source.name}"))
    try:
        if connect:
            await wait_for(lambda: running.connected or running.task.done(),
                           what=f"{source.name} to connect")
            if running.task.done():
                running.task.result()
        yield running
    finally:
        running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)


async def mosquitto_pub(port: int, topic: str, lines: Iterable[str], *, qos: int = 1) -> None:
    """Publish each line as one message with the mosquitto_pub command line tool."""
    tool = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", str(qos), "-t", topic, "-l",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await tool.communicate("".join(line + "\n" for line in lines).encode())
    assert tool.returncode == 0, f"mosquitto_pub failed: {err.decode()}"
