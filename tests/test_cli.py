"""The `dt-collector` command as a user runs it: real subprocesses, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from collector import __version__
from collector.simulator import Simulator
from tests.helpers import TOKEN, wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "collector.example.yaml"
FAKE = [sys.executable, "-m", "tests.fake_collector"]


def collector_config(url: str, tmp_path: Path, *, count: int = 5, flush: str = "60s",
                     token_line: str = f"  token: {TOKEN}\n") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "dynatrace:\n"
        f"  url: {url}\n"
        f"{token_line}"
        "  timeout: 1s\n"
        "buffer:\n"
        f"  flush_interval: {flush}\n"
        "  shutdown_timeout: 5s\n"
        "metrics:\n"
        "  custom:fake.value:\n"
        "    display_name: Fake value\n"
        "    dimensions: [port]\n"
        "    types: [Fake]\n"
        "sources:\n"
        "  - type: fake\n"
        "    device: dev-1\n"
        "    device_type: Fake\n"
        "    metric: custom:fake.value\n"
        "    dimensions: {port: p1}\n"
        f"    count: {count}\n"
        "    interval: 0.02\n"
        "health:\n"
        "  listen: ''\n"
        "log:\n"
        "  format: json\n"
        "  level: debug\n"
    )
    return path


async def run_cli(*args: str, env: dict[str, str] | None = None,
                  timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *FAKE, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Running:
    """A `dt-collector run` subprocess whose stderr is collected while it runs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr = ""
        self.stdout = ""
        self._readers = [asyncio.create_task(self._read("stderr")),
                         asyncio.create_task(self._read("stdout"))]

    async def _read(self, name: str) -> None:
        stream = getattr(self.proc, name)
        while line := await stream.readline():
            setattr(self, name, getattr(self, name) + line.decode())

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.gather(*self._readers)
        return code


async def start(*args: str, env: dict[str, str] | None = None) -> Running:
    proc = await asyncio.create_subprocess_exec(
        *FAKE, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    return Running(proc)


@pytest.mark.parametrize("command", [[], ["run"], ["check-config"], ["simulate"]])
async def test_version_everywhere(command: list[str]) -> None:
    code, out, _ = await run_cli(*command, "--version")
    assert code == 0
    assert out.strip() == f"dt-collector {__version__}"


async def test_python_dash_m_collector_is_the_same_command() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "check-config", "-c", str(EXAMPLE), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert "OK (18 metrics, 1 devices, 2 sources)" in out.decode()


@pytest.mark.parametrize("command", ["run", "check-config", "simulate"])
async def test_help_for_each_command(command: str) -> None:
    code, out, _ = await run_cli(command, "--help")
    assert code == 0
    assert f"usage: dt-collector {command}" in out


async def test_check_config_ok_and_broken(tmp_path: Path) -> None:
    code, out, _ = await run_cli("check-config", "-c", str(EXAMPLE))
    assert code == 0 and "OK" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text(EXAMPLE.read_text().replace("unit: Count", "unit: Count\n    colour: red"))
    code, _, err = await run_cli("check-config", "-c", str(broken))
    assert code == 2
    line = broken.read_text().splitlines().index("    colour: red") + 1
    assert f'{broken}:{line}: metrics."custom:firewall.connections.dropped".colour: unknown key' \
        in err


async def test_config_path_from_environment(tmp_path: Path) -> None:
    code, out, _ = await run_cli("check-config", env={"DT_COLLECTOR_CONFIG": str(EXAMPLE)})
    assert code == 0 and str(EXAMPLE) in out
    code, _, err = await run_cli("check-config",
                                 env={"DT_COLLECTOR_CONFIG": str(tmp_path / "none.yaml")})
    assert code == 2 and "does not exist" in err


async def test_run_refuses_to_start_without_token_or_with_bad_config(tmp_path: Path) -> None:
    config = collector_config("http://127.0.0.1:9", tmp_path, token_line="")
    env = {"DT_API_TOKEN": ""}
    code, _, err = await run_cli("run", "-c", str(config), env=env)
    assert code == 2 and "no Dynatrace API token" in err
    code, _, err = await run_cli("run", "-c", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err


async def test_dry_run_prints_every_request_and_sends_nothing(tmp_path: Path) -> None:
    config = collector_config("https://abc.live.dynatrace.com/e/env1", tmp_path, count=3,
                              flush="100ms", token_line="")
    running = await start("run", "--dry-run", "-c", str(config), env={"DT_API_TOKEN": ""})
    await wait_for(lambda: '"method": "POST"' in running.stdout, timeout=30,
                   what="a POST in the dry-run output")
    assert await running.stop() == 0
    requests = [json.loads(line) for line in running.stdout.splitlines()]
    assert requests[0] == {
        "method": "PUT",
        "url": "https://abc.live.dynatrace.com/e/env1/api/v1/timeseries/custom:fake.value",
        "body": {"displayName": "Fake value", "unit": "Count", "dimensions": ["port"],
                 "types": ["Fake"]},
    }
    posts = [r for r in requests if r["method"] == "POST"]
    assert posts[0]["url"] == (
        "https://abc.live.dynatrace.com/e/env1/api/v1/entity/infrastructure/custom/dev-1")
    assert posts[0]["body"]["type"] == "Fake"
    values = [p[1] for r in posts for s in r["body"]["series"] for p in s["dataPoints"]]
    assert values == [0.0, 1.0, 2.0]


async def test_sigterm_runs_a_final_flush(simulator: Simulator, tmp_path: Path) -> None:
    # flush_interval is 60 s: only the final flush at SIGTERM can deliver these points.
    config = collector_config(simulator.url, tmp_path, count=5)
    running = await start("run", "-c", str(config))
    await wait_for(lambda: "emitted 5" in running.stderr, timeout=30, what="5 readings")
    assert simulator.points() == []
    assert await running.stop(signal.SIGTERM) == 0
    assert [p.value for p in simulator.points()] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert {p.dimensions for p in simulator.points()} == {(("port", "p1"),)}
    assert '"event": "stopped"' in running.stderr


async def test_undeliverable_points_are_reported_at_shutdown(
        simulator: Simulator, tmp_path: Path) -> None:
    config = collector_config(simulator.url, tmp_path, count=4)
    running = await start("run", "-c", str(config))
    await wait_for(lambda: "emitted 4" in running.stderr, timeout=30, what="4 readings")
    simulator.fail(503)
    assert await running.stop(signal.SIGINT) == 0
    stopped = [json.loads(line) for line in running.stderr.splitlines()
               if '"points not delivered before shutdown"' in line]
    assert stopped and stopped[0]["points"] == 4 and stopped[0]["by_device"] == {"dev-1": 4}


async def test_token_never_appears_in_any_output(simulator: Simulator, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = collector_config(simulator.url, tmp_path, count=6, flush="100ms",
                              token_line=f"  token_file: {token_file}\n")
    outputs = []
    # Refused, throttled, failing and dropped answers: every error path logs something.
    simulator.fail(401, count=2)
    simulator.fail(429, count=1, retry_after="1")
    running = await start("run", "-c", str(config))
    await wait_for(lambda: "emitted 6" in running.stderr, timeout=30, what="6 readings")
    simulator.fail(503, count=2)
    simulator.drop_connections(count=1)
    await asyncio.sleep(1.0)
    await running.stop()
    outputs += [running.stdout, running.stderr]
    dry = await start("run", "--dry-run", "-c", str(config))
    await wait_for(lambda: '"method": "POST"' in dry.stdout, timeout=30, what="dry-run POST")
    await dry.stop()
    outputs += [dry.stdout, dry.stderr]
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("timeout: 1s", "timeout: never"))
    code, out, err = await run_cli("check-config", "-c", str(bad))
    assert code == 2
    outputs += [out, err]
    secret_part = TOKEN.split(".")[2]
    for text in outputs:
        assert TOKEN not in text
        assert secret_part not in text
    assert "401" in running.stderr  # the refusals were logged, without the token
