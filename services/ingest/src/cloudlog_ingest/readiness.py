"""Readiness: is this instance fit to take traffic now? (``GET /readyz``)

Two checks, both must pass:

- ``cloudwatch``: CloudWatch Logs answers a cheap call (DescribeLogGroups, one group) within a
  short timeout. The answer is remembered for a few seconds, and one call at most is in flight,
  so however often probes come, the endpoint sees about one call per cache period. An answer
  that refuses the call (AccessDenied, throttling) still shows the endpoint reachable: the
  ingest policy need not allow DescribeLogGroups.
- ``pending``: events accepted but not yet written stay below a fraction of the bound
  (``max_pending_events``); past it the writer is saturated and new work would soon get 429s.
  Events of tenants at their own bound are not counted (``WritePipeline.saturation_pending``):
  a tenant's flood is that tenant's 429, and the others are still served from the room the
  pipeline keeps for them, so taking the instance out would fail everyone for one tenant.

A pipeline that is shutting down, or not started, is not ready.

One more check degrades without failing: ``tenants``. A registry file that cannot be read or
parsed (truncated, hand-edited) leaves ingest serving with the last good registry, so the
instance stays ready (200: taking every instance sharing the file out of service would turn a
bad edit into an outage), but ``/readyz`` names it under ``degraded`` with the reason, and the
gauge ``cloudlog_ingest_tenant_registry_ok`` drops to 0 until the file is good again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry, Gauge

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_ingest.tenants import TenantStore
from cloudlog_writer.errors import THROTTLING_CODES, describe, error_code

# A call refused with one of these was still answered by CloudWatch Logs. Not in the list:
# invalid or expired credentials (UnrecognizedClientException, ...), which fail writes too.
ANSWERED_CODES = frozenset({"AccessDeniedException", "AccessDenied"}) | THROTTLING_CODES

Probe = Callable[[], None]  # raises when CloudWatch Logs does not answer
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str
    degraded: bool = False  # ok, but not as it should be: reported, still ready

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "degraded": self.degraded}


def describe_log_groups_probe(timeout_seconds: float, aws: AwsSettings | None = None) -> Probe:
    """DescribeLogGroups(limit=1) on a client of its own, made on first use, with short
    timeouts and no retries, so a probe never outlives ``timeout_seconds`` by much."""
    client: Any = None

    def probe() -> None:
        nonlocal client
        if client is None:
            client = make_client(
                "logs",
                aws or AwsSettings(),
                connect_timeout=timeout_seconds,
                read_timeout=timeout_seconds,
                max_attempts=1,
                max_pool_connections=1,
            )
        client.describe_log_groups(limit=1)

    return probe


class CloudWatchCheck:
    """Runs the probe in a thread, with a timeout, at most once per ``cache_seconds``."""

    def __init__(
        self,
        probe: Probe,
        *,
        timeout_seconds: float,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._timeout = timeout_seconds
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last: CheckResult | None = None
        self._checked_at = 0.0
        self.calls = 0  # probes actually run

    def _fresh(self) -> CheckResult | None:
        if self._last is not None and self._clock() - self._checked_at < self._cache_seconds:
            return self._last
        return None

    async def __call__(self) -> CheckResult:
        if (cached := self._fresh()) is not None:
            return cached
        async with self._lock:  # one probe in flight; the others wait for its answer
            if (cached := self._fresh()) is not None:
                return cached
            result = await self._run()
            if self._last is None or self._last.ok != result.ok:  # say so when it changes
                logger.log(
                    logging.INFO if result.ok else logging.WARNING, "readyz: %s", result.detail
                )
            self._last, self._checked_at = result, self._clock()
            return result

    async def _run(self) -> CheckResult:
        self.calls += 1
        try:
            await asyncio.wait_for(asyncio.to_thread(self._probe), self._timeout)
        except TimeoutError:
            return CheckResult(False, f"CloudWatch Logs did not answer within {self._timeout:g} s")
        except ClientError as exc:
            if error_code(exc) in ANSWERED_CODES:
                return CheckResult(True, f"CloudWatch Logs answered ({describe(exc)})")
            return CheckResult(False, f"CloudWatch Logs: {describe(exc)}")
        except Exception as exc:
            return CheckResult(False, f"CloudWatch Logs unreachable: {describe(exc)}")
        return CheckResult(True, "CloudWatch Logs answered")


def pending_check(pending: int, bound: int, fraction: float) -> CheckResult:
    """Ready while fewer than ``fraction`` of ``bound`` events are pending."""
    limit = max(1, int(bound * fraction))
    detail = f"{pending} events pending, ready below {limit} ({fraction:.0%} of {bound})"
    return CheckResult(pending < limit, detail)


def tenants_check(registry: TenantStore) -> CheckResult:
    """Always ok (ingest serves with the last good registry); degraded while the file is bad
    or the DynamoDB table does not answer."""
    count = len(registry.tenants())
    if registry.problem is not None:
        return CheckResult(
            True, f"{registry.problem}; serving with the last good registry ({count} tenants)", True
        )
    return CheckResult(True, f"{count} tenants loaded from {registry.source}")


def track_tenant_registry(
    metrics_registry: CollectorRegistry, current: Callable[[], TenantStore | None]
) -> None:
    """``cloudlog_ingest_tenant_registry_ok``: 1 while the registry file was last read whole,
    0 while ingest keeps the last good registry because the file is corrupt or unreadable."""
    gauge = Gauge(
        "cloudlog_ingest_tenant_registry_ok",
        "1 when the tenant registry file was last read whole; 0 when it is corrupt or "
        "unreadable and ingest serves with the last good registry.",
        registry=metrics_registry,
    )

    def ok() -> float:
        registry = current()
        return 0.0 if registry is not None and registry.problem is not None else 1.0

    gauge.set_function(ok)
