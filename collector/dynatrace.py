"""The Dynatrace client: two requests, and the one place that classifies their outcomes.

`push` posts a custom device body; `register_metric` puts a metric definition. Both
return an `Answer` whose `outcome` says what the caller must do with the data:
DELIVERED, REJECTED (drop, never retry), TOO_LARGE (split), REFUSED (401/403/404: a
configuration problem; keep the data), THROTTLED (429; keep, wait Retry-After) or
RETRY (5xx, timeout, connection error; keep, back off).
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import re
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
import yarl
from pydantic import SecretStr

from collector import __version__
from collector.config.model import DynatraceConfig, MetricConfig

USER_AGENT = f"dt-collector/{__version__}"
DEFAULT_RETRY_AFTER = 5.0
_SERIES_PATH = re.compile(r"^series\[(\d+)\]")


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"
    TOO_LARGE = "too_large"
    REFUSED = "refused"
    THROTTLED = "throttled"
    RETRY = "retry"


@dataclass(frozen=True)
class Violation:
    path: str
    message: str

    @property
    def series_index(self) -> int | None:
        """The index into the body's `series` this violation names, if it names one."""
        match = _SERIES_PATH.match(self.path)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    status: int | None  # None when no HTTP answer came (timeout, connection error)
    detail: str = ""
    retry_after: float | None = None
    violations: tuple[Violation, ...] = ()
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def status_label(self) -> str:
        return str(self.status) if self.status is not None else self.detail.split(":")[0]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), 3600.0)


def _error_text(body: dict[str, Any], raw: bytes) -> tuple[str, tuple[Violation, ...]]:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        text = raw[:200].decode("utf-8", "replace").strip()
        return (text or "no error body"), ()
    message = str(error.get("message", ""))[:500]
    violations = []
    for item in error.get("constraintViolations") or []:
        if isinstance(item, dict):
            violations.append(
                Violation(str(item.get("path", ""))[:200], str(item.get("message", ""))[:500])
            )
    return message, tuple(violations)


def classify(status: int, headers: Any, raw: bytes, now: float) -> Answer:
    """The one place that turns an HTTP answer into what to do with the data."""
    body: dict[str, Any] = {}
    try:
        parsed = orjson.loads(raw) if raw else {}
        if isinstance(parsed, dict):
            body = parsed
    except orjson.JSONDecodeError:
        pass
    if 200 <= status < 300:
        return Answer(Outcome.DELIVERED, status, body=body)
    message, violations = _error_text(body, raw)
    detail = f"HTTP {status}: {message}"
    if status == 413:
        return Answer(Outcome.TOO_LARGE, status, detail)
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        return Answer(Outcome.THROTTLED, status, detail, retry_after=retry_after)
    if status in (401, 403, 404, 405):
        return Answer(Outcome.REFUSED, status, detail)
    if status == 408 or status >= 500:
        return Answer(Outcome.RETRY, status, detail)
    return Answer(Outcome.REJECTED, status, detail, violations=violations)


def _ssl_setting(config: DynatraceConfig) -> ssl.SSLContext | bool:
    if not config.verify_tls:
        return False
    if config.ca_file is not None:
        return ssl.create_default_context(cafile=str(config.ca_file))
    return True


class DynatraceClient:
    """One keep-alive aiohttp session to one Dynatrace environment (or ActiveGate)."""

    def __init__(
        self,
        config: DynatraceConfig,
        token: SecretStr | None,
        *,
        dry_run: bool = False,
        out: TextIO | None = None,
    ) -> None:
        if token is None and not dry_run:
            raise ValueError(
                "no Dynatrace API token: set dynatrace.token, dynatrace.token_file or DT_API_TOKEN"
            )
        self.config = config
        # The base may carry a path prefix (/e/{env}): join paths to it, never replace it.
        self.base = config.url.rstrip("/")
        self.host = urlsplit(self.base).hostname or ""
        self._token = token
        self.dry_run = dry_run
        self._out = out or sys.stdout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> DynatraceClient:
        if not self.dry_run:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_concurrency, ssl=_ssl_setting(self.config)
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                headers={"User-Agent": USER_AGENT},
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def push_url(self, device_id: str) -> str:
        return f"{self.base}/api/v1/entity/infrastructure/custom/{quote(device_id, safe='')}"

    def metric_url(self, metric_id: str) -> str:
        return f"{self.base}/api/v1/timeseries/{quote(metric_id, safe=':')}"

    async def push(self, device_id: str, body: bytes) -> Answer:
        return await self._send("POST", self.push_url(device_id), body)

    async def register_metric(self, metric_id: str, metric: MetricConfig) -> Answer:
        body = orjson.dumps({
            "displayName": metric.display_name,
            "unit": metric.unit,
            "dimensions": list(metric.dimensions),
            "types": list(metric.types),
        })
        return await self._send("PUT", self.metric_url(metric_id), body)

    async def _send(self, method: str, url: str, body: bytes) -> Answer:
        if self.dry_run:
            line = {"method": method, "url": url, "body": json.loads(body)}
            self._out.write(json.dumps(line, sort_keys=False) + "\n")
            self._out.flush()
            status = 201 if method == "PUT" else 200
            return Answer(Outcome.DELIVERED, status, body={"dryRun": True})
        assert self._session is not None, "use the client as an async context manager"
        assert self._token is not None
        headers = {
            "Authorization": f"Api-Token {self._token.get_secret_value()}",
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
        }
        try:
            async with self._session.request(
                method, yarl.URL(url, encoded=True), data=body, headers=headers
            ) as response:
                raw = await response.content.read(1 << 20)
                return classify(response.status, response.headers, raw, time.time())
        except aiohttp.ClientConnectorCertificateError as exc:
            return Answer(Outcome.RETRY, None, f"tls: certificate of {self.host} not "
                          f"trusted ({exc.certificate_error})")
        except aiohttp.ClientConnectorSSLError as exc:
            return Answer(Outcome.RETRY, None, f"tls: handshake with {self.host} failed: {exc}")
        except TimeoutError:
            return Answer(Outcome.RETRY, None, f"timeout: no answer within {self.config.timeout}s")
        except aiohttp.ClientConnectorError as exc:
            return Answer(Outcome.RETRY, None, f"connection: {self.host}: {exc.strerror or exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return Answer(Outcome.RETRY, None, f"connection: {type(exc).__name__}: {exc}")
