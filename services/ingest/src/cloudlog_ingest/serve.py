"""Run the ingest service under uvicorn: ``cloudlog-ingest`` (and ``cloudlog ingest``)."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from cloudlog_core.logging_json import json_logging_config
from cloudlog_ingest.settings import get_settings
from cloudlog_ingest.tenant_table import open_tenant_store
from cloudlog_ingest.tenants import RegistryCorrupt, RegistryUnavailable, TenantSettings


def serve(host: str | None = None, port: int | None = None) -> None:
    """Serve until stopped; ``None`` takes CLOUDLOG_INGEST_HOST / CLOUDLOG_INGEST_PORT.

    Refuses to start, with one line on stderr and exit status 2, on a tenant registry file
    that does not parse, or a tenant table that does not answer: there is no last good registry
    to serve with."""
    try:
        open_tenant_store(TenantSettings())
    except (RegistryCorrupt, RegistryUnavailable) as exc:
        print(f"cloudlog ingest: not starting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    settings = get_settings()
    uvicorn.run(
        "cloudlog_ingest.app:create_app",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_config=json_logging_config(settings.log_level),
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="cloudlog-ingest", description=__doc__)
    parser.add_argument("--host", default=None, help="bind address [CLOUDLOG_INGEST_HOST]")
    parser.add_argument("--port", type=int, default=None, help="port [CLOUDLOG_INGEST_PORT]")
    args = parser.parse_args()
    serve(host=args.host, port=args.port)
