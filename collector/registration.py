"""Metric registration: every metric is PUT before any reading of it is collected.

Transient failures (5xx, 429, timeouts, a refused token) are retried with backoff until
they succeed or the daemon is stopped; a metric rejected with 400 is disabled with a clear
error, and its readings are then counted as invalid by the buffer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from collector.backoff import Backoff
from collector.catalog import Catalog, MetricInfo
from collector.config.model import MetricConfig
from collector.dynatrace import DEFAULT_RETRY_AFTER, DynatraceClient, Outcome
from collector.logs import StateLog, get_logger
from collector.telemetry import Telemetry

log = get_logger("collector.registration")


def metric_info(metric_id: str, metric: MetricConfig, not_before_ms: int = 0,
                why_disabled: str = "") -> MetricInfo:
    return MetricInfo(metric_id, frozenset(metric.dimensions), frozenset(metric.types),
                      not_before_ms, not why_disabled, why_disabled)


async def register_metrics(
    client: DynatraceClient,
    metrics: Mapping[str, MetricConfig],
    catalog: Catalog,
    telemetry: Telemetry,
    *,
    clock: Callable[[], float] = time.time,
    concurrency: int = 4,
) -> None:
    """PUT each metric (concurrently, bounded) and record the outcome in the catalog."""
    requests = telemetry.counter("dynatrace_requests", "Requests to Dynatrace by endpoint and "
                                 "HTTP status (or error kind)", ("endpoint", "status"))
    state = StateLog(log)
    gate = asyncio.Semaphore(concurrency)

    async def register(metric_id: str, metric: MetricConfig) -> None:
        backoff = Backoff(initial=1.0, cap=60.0)
        async with gate:
            while True:
                answer = await client.register_metric(metric_id, metric)
                requests.labels("timeseries", answer.status_label).inc()
                if answer.outcome is Outcome.DELIVERED:
                    # 201: created now, so points from before now would be rejected.
                    # 200: it existed already; its creation time is not told, and older.
                    created = answer.status == 201
                    not_before = int(clock() * 1000) if created else 0
                    catalog.set_metric(metric_info(metric_id, metric, not_before))
                    state.ok(metric_id, "metric registered after retries", metric=metric_id)
                    log.debug("metric registered", metric=metric_id, created=created)
                    return
                if answer.outcome in (Outcome.REJECTED, Outcome.TOO_LARGE):
                    why = answer.detail + "".join(
                        f"; {v.path}: {v.message}" for v in answer.violations)
                    log.error("Dynatrace rejected the metric definition; its readings will be "
                              "dropped as invalid", metric=metric_id, detail=why)
                    catalog.set_metric(metric_info(metric_id, metric, why_disabled=why))
                    return
                if answer.outcome is Outcome.THROTTLED:
                    delay = answer.retry_after or DEFAULT_RETRY_AFTER
                else:
                    delay = backoff.next_delay()
                state.failed(metric_id, "metric registration failed; retrying", metric=metric_id,
                             reason=answer.outcome.value, detail=answer.detail,
                             retry_in_s=round(delay, 1))
                await asyncio.sleep(delay)

    async with asyncio.TaskGroup() as group:
        for metric_id, metric in metrics.items():
            group.create_task(register(metric_id, metric))
