"""Operations endpoints: liveness, readiness and metrics. None needs an API key.

Not in the OpenAPI schema: they are for probes and scrapers, not for clients.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cloudlog_ingest import deps
from cloudlog_ingest.metrics import METRICS_CONTENT_TYPE, IngestMetrics
from cloudlog_ingest.pipeline import WritePipeline
from cloudlog_ingest.readiness import CheckResult, CloudWatchCheck, pending_check, tenants_check
from cloudlog_ingest.settings import IngestSettings

router = APIRouter()


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
            "pending": pending_check(
                pipeline.pending_events,
                pipeline.max_pending_events,
                settings.ready_max_pending_fraction,
            ),
            "cloudwatch": await cloudwatch(),
            # Re-read when due, as requests do, so a bad file shows here even with no traffic.
            "tenants": tenants_check(deps._registry(request)),
        }
    failed = [name for name, check in checks.items() if not check.ok]
    degraded = [name for name, check in checks.items() if check.degraded]
    return JSONResponse(
        status_code=503 if failed else 200,
        content={
            "status": "not ready" if failed else "ready",
            "failed": failed,
            "degraded": degraded,
            "checks": {name: check.as_dict() for name, check in checks.items()},
        },
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format (metrics.py). Keep it to the scraper's network."""
    registry: IngestMetrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=METRICS_CONTENT_TYPE)
