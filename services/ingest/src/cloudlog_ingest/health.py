"""Operations endpoints: liveness, readiness and metrics. None takes a tenant API key.

``/healthz`` and ``/readyz`` are public (load balancers probe them); ``/readyz`` shows its checks'
details (paths, counts, AWS error text) only to the scraper's token, others see check names and
outcomes. ``/metrics`` names tenants, so only the scraper reads it (metrics.scrape_access).
Not in the OpenAPI schema: they are for probes and scrapers, not for clients.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cloudlog_ingest import deps
from cloudlog_ingest.metrics import (
    METRICS_CONTENT_TYPE,
    IngestMetrics,
    ScrapeAccess,
    scrape_access,
)
from cloudlog_ingest.pipeline import WritePipeline
from cloudlog_ingest.readiness import CheckResult, CloudWatchCheck, pending_check, tenants_check
from cloudlog_ingest.settings import IngestSettings

router = APIRouter()


def _scraper(request: Request) -> ScrapeAccess:
    settings: IngestSettings = request.app.state.settings
    return scrape_access(request.headers.get("authorization"), settings.metrics_token)


def _outcome_only(check: CheckResult) -> dict[str, bool]:
    """What anyone may see of a check: its outcome, not its detail."""
    return {"ok": check.ok, "degraded": check.degraded}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing of CloudWatch (see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """200 when CloudWatch Logs answers and the writer is not saturated; else 503 naming the
    checks that failed. A corrupt tenant registry file is listed under ``degraded``, still 200:
    ingest serves with the last good registry (readiness.py)."""
    state = request.app.state
    settings: IngestSettings = state.settings
    pipeline: WritePipeline | None = getattr(state, "pipeline", None)
    checks: dict[str, CheckResult]
    if pipeline is None or pipeline.closing:
        why = "not started" if pipeline is None else "shutting down"
        checks = {"pipeline": CheckResult(False, why)}
    else:
        cloudwatch: CloudWatchCheck = state.cloudwatch_check
        checks = {
            # Not counting tenants at their own bound: their flood is their 429 (pipeline.py).
            "pending": pending_check(
                pipeline.saturation_pending,
                pipeline.max_pending_events,
                settings.ready_max_pending_fraction,
            ),
            "cloudwatch": await cloudwatch(),
            # Re-read when due, as requests do, so a bad file shows here even with no traffic.
            "tenants": tenants_check(deps._registry(request)),
        }
    operator = _scraper(request) is ScrapeAccess.GRANTED
    failed = [name for name, check in checks.items() if not check.ok]
    degraded = [name for name, check in checks.items() if check.degraded]
    return JSONResponse(
        status_code=503 if failed else 200,
        content={
            "status": "not ready" if failed else "ready",
            "failed": failed,
            "degraded": degraded,
            "checks": {
                name: check.as_dict() if operator else _outcome_only(check)
                for name, check in checks.items()
            },
        },
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format (metrics.py), for the scraper's token only: 401 without it, 404
    when no token is configured."""
    access = _scraper(request)
    if access is not ScrapeAccess.GRANTED:
        headers = {"WWW-Authenticate": "Bearer"} if access is ScrapeAccess.UNAUTHORIZED else None
        return JSONResponse(
            status_code=access.value,
            content={"detail": "Unauthorized" if headers else "Not Found"},
            headers=headers,
        )
    registry: IngestMetrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=METRICS_CONTENT_TYPE)
