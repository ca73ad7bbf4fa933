"""Bad input of every kind: no exception escapes, everything is classified or reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import yaml
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import ConfigError, parse_config
from collector.config.model import DynatraceConfig
from collector.dynatrace import DynatraceClient, Outcome, classify, parse_retry_after

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=30))
trees = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.text(max_size=12), children, max_size=4)), max_leaves=20)
section_names = st.sampled_from(["dynatrace", "buffer", "metrics", "devices", "sources",
                                 "log", "health", "self_monitoring", "other"])


def config_issues(text: str) -> list[str] | None:
    """None if the text is a valid config, else its issues; any other exception escapes."""
    try:
        parse_config(text, "fuzz.yaml", env={})
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return None


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(section_names, trees, max_size=6))
def test_config_loader_never_raises_anything_but_config_error(tree: dict[str, object]) -> None:
    issues = config_issues(yaml.safe_dump(tree))
    assert issues is None or (issues and all(issues))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_config_loader_survives_arbitrary_text(text: str) -> None:
    issues = config_issues(text)
    assert issues is None or issues


@settings(max_examples=500, deadline=None)
@given(status=st.integers(100, 599), body=st.binary(max_size=300),
       retry_after=st.one_of(st.none(), st.text(max_size=40)))
def test_classify_any_answer(status: int, body: bytes, retry_after: str | None) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    answer = classify(status, headers, body, now=1_800_000_000.0)
    assert answer.status == status
    if 200 <= status < 300:
        assert answer.outcome is Outcome.DELIVERED
    elif status == 429:
        assert answer.outcome is Outcome.THROTTLED
        assert answer.retry_after is None or 0 <= answer.retry_after <= 3600
    elif status >= 500:
        assert answer.outcome is Outcome.RETRY


@settings(max_examples=200, deadline=None)
@given(st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                 st.dictionaries(st.text(max_size=20), c,
                                                                 max_size=3)), max_leaves=10))
def test_classify_any_json_error_body(tree: object) -> None:
    import json

    body = json.dumps({"error": tree}).encode()
    answer = classify(400, {}, body, now=0.0)
    assert answer.outcome is Outcome.REJECTED
    for violation in answer.violations:
        assert isinstance(violation.path, str)


def test_retry_after_forms() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Thu, 15 Jan 2027 08:00:00 GMT", now) is not None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None
    assert parse_retry_after("99999999", now) == 3600.0


GARBAGE: list[tuple[str, dict[str, str], bytes, int]] = [
    ("html error page", {"Content-Type": "text/html"}, b"<html>oops</html>", 500),
    ("json but not an object", {"Content-Type": "application/json"}, b"[1, 2", 400),
    ("binary", {"Content-Type": "application/octet-stream"}, bytes(range(256)), 400),
    ("success with garbage", {"Content-Type": "text/plain"}, b"\xff\xfe", 200),
    ("huge header", {"X-Junk": "j" * 20000}, b"{}", 200),
    ("wrong envelope", {"Content-Type": "application/json"},
     b'{"error": {"constraintViolations": [1, "x", {"path": 5}]}}', 400),
]


@pytest.fixture
async def garbage_server() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["device"]
        _, headers, body, status = next(g for g in GARBAGE if g[0].replace(" ", "-") == name)
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_post("/api/v1/entity/infrastructure/custom/{device}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("case", GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_client_survives_garbage_answers(
        garbage_server: str, case: tuple[str, dict[str, str], bytes, int]) -> None:
    from pydantic import SecretStr

    config = DynatraceConfig(url=garbage_server, timeout=2)
    async with DynatraceClient(config, SecretStr("t")) as client:
        answer = await client.push(case[0].replace(" ", "-"), b"{}")
    if case[0] == "huge header":
        assert answer.outcome is Outcome.RETRY  # the client refuses the header: retry later
        assert answer.status is None
    else:
        assert answer.status == case[3]
        assert answer.outcome in set(Outcome)


async def test_client_survives_a_server_that_never_answers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    from pydantic import SecretStr

    try:
        config = DynatraceConfig(url=f"http://127.0.0.1:{port}", timeout=0.3)
        async with DynatraceClient(config, SecretStr("t")) as client:
            answer = await client.push("dev", b"{}")
        assert answer.outcome is Outcome.RETRY
        assert answer.detail.startswith("timeout")
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_connection_is_retry() -> None:
    from pydantic import SecretStr

    from tests.helpers import free_port

    config = DynatraceConfig(url=f"http://127.0.0.1:{free_port()}", timeout=2)
    async with DynatraceClient(config, SecretStr("t")) as client:
        answer = await client.push("dev", b"{}")
    assert answer.outcome is Outcome.RETRY
    assert answer.detail.startswith("connection: 127.0.0.1")
