"""The whole pipeline on this machine: emulator, ingest and worker as real child processes.

Used by ``cloudlog dev``, the integration tests and the benchmarks, so they all run the same way.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cloudlog_devtools.processes import (
    LOOPBACK,
    ManagedProcess,
    ProcessFailed,
    cloudlog_command,
    free_port,
    pipeline_env,
    port_in_use,
)
from cloudlog_ingest.tenants import Tenant, TenantRegistry

WORKER_READY_TEXT = "ready."  # Celery logs "cloudlog@host ready." once it consumes
EMULATOR_READY_TEXT = (
    "emulator ready"  # as cloudlog_devtools.emulator.READY_TEXT (moto is slow to import)
)
LOCAL_TENANT = "local"
# High enough that tests and benchmarks measure the pipeline, not the quota.
LOCAL_TENANT_RATE = 1_000_000.0
LOCAL_TENANT_BURST = 1_000_000


class LocalPipeline:
    def __init__(
        self,
        *,
        log_dir: Path,
        emulator_port: int,
        ingest_port: int,
        sqs_endpoint_url: str | None = None,
        logs_endpoint_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        external_endpoint_url: str | None = None,
        worker_metrics_port: int | None = None,
    ) -> None:
        """``sqs_endpoint_url``: where the worker reaches SQS; ``logs_endpoint_url``: where ingest
        reaches CloudWatch Logs (a fault proxy in front of the emulator, say). Both default to
        the emulator itself. ``extra_env``: ``CLOUDLOG_*`` settings for every process.
        ``external_endpoint_url``: an AWS endpoint that already runs, with the queues created
        (LocalStack, say): no emulator is started and ``emulator_url`` is that endpoint.
        ``worker_metrics_port``: where the worker serves its metrics (default: a free port, so
        that pipelines side by side do not collide; see ``worker_metrics_url``)."""
        self.log_dir = log_dir
        self.emulator_port = emulator_port
        self.ingest_port = ingest_port
        self.external = external_endpoint_url is not None
        self.emulator_url = external_endpoint_url or f"http://{LOOPBACK}:{emulator_port}"
        self.sqs_endpoint_url = sqs_endpoint_url or self.emulator_url
        self.logs_endpoint_url = logs_endpoint_url or self.emulator_url
        self.ingest_url = f"http://{LOOPBACK}:{ingest_port}"
        self.worker_metrics_port = worker_metrics_port or free_port()
        self.worker_metrics_url = f"http://{LOOPBACK}:{self.worker_metrics_port}/metrics"
        self.tenant, self.api_key = self._provision_tenant(log_dir / "tenants.json")
        # Ingest serves /metrics (and /readyz's details) only to this token (the scraper's).
        self.ingest_metrics_token = secrets.token_urlsafe(24)
        self.ingest_metrics_url = f"{self.ingest_url}/metrics"
        self.ingest_metrics_headers = {"Authorization": f"Bearer {self.ingest_metrics_token}"}
        extra = {
            "CLOUDLOG_INGEST_JOURNAL_PATH": str(log_dir / "ingest.journal"),
            "CLOUDLOG_TENANTS_PATH": str(log_dir / "tenants.json"),
            "CLOUDLOG_API_KEY": self.api_key,
            "CLOUDLOG_WORKER_METRICS_HOST": LOOPBACK,
            "CLOUDLOG_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "CLOUDLOG_INGEST_METRICS_TOKEN": self.ingest_metrics_token,
        }
        extra.update(extra_env or {})
        self.env = pipeline_env(self.emulator_url, self.ingest_url, **extra)
        self.emulator: ManagedProcess | None = None
        self.ingest: ManagedProcess | None = None
        self.worker: ManagedProcess | None = None

    @staticmethod
    def _provision_tenant(path: Path) -> tuple[Tenant, str]:
        """A fresh registry with one tenant, whose key the worker uses (CLOUDLOG_API_KEY)."""
        path.unlink(missing_ok=True)
        return TenantRegistry.load(path).create(
            LOCAL_TENANT, rate=LOCAL_TENANT_RATE, burst=LOCAL_TENANT_BURST
        )

    def stored_group(self, group: str) -> str:
        """Where a group the app names lands in CloudWatch: under the tenant's prefix."""
        return self.tenant.log_group_prefix + group

    def _check_free(self, port: int, what: str) -> None:
        if port_in_use(port):
            raise ProcessFailed(f"port {port} for the {what} is already in use on {LOOPBACK}")

    def start_emulator(self) -> ManagedProcess:
        self._check_free(self.emulator_port, "emulator")
        self.emulator = ManagedProcess(
            "emulator",
            cloudlog_command("emulator", "--port", str(self.emulator_port)),
            env=self.env,
            log_dir=self.log_dir,
        ).start()
        self.emulator.wait_for_log(EMULATOR_READY_TEXT, timeout=30)
        return self.emulator

    def start_ingest(self) -> ManagedProcess:
        self._check_free(self.ingest_port, "ingest service")
        self.ingest = ManagedProcess(
            "ingest",
            cloudlog_command("ingest", "--port", str(self.ingest_port)),
            env={**self.env, "CLOUDLOG_AWS_ENDPOINT_URL": self.logs_endpoint_url},
            log_dir=self.log_dir,
        ).start()
        self.ingest.wait_until_ready(f"{self.ingest_url}/healthz", timeout=30)
        return self.ingest

    def start_worker(self, concurrency: int = 4) -> ManagedProcess:
        self.worker = ManagedProcess(
            "worker",
            cloudlog_command("worker", "--concurrency", str(concurrency), "--loglevel", "INFO"),
            env={**self.env, "CLOUDLOG_AWS_ENDPOINT_URL": self.sqs_endpoint_url},
            log_dir=self.log_dir,
        ).start()
        self.worker.wait_for_log(WORKER_READY_TEXT, timeout=60)
        return self.worker

    def start(self) -> LocalPipeline:
        try:
            if not self.external:
                self.start_emulator()
            self.start_ingest()
            self.start_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop in the order data flows out: worker, ingest, then the emulator."""
        for process in (self.worker, self.ingest, self.emulator):
            if process is not None:
                process.stop()
