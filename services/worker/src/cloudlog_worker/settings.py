"""Settings of the Celery worker that delivers batches to ingest (``CLOUDLOG_*`` variables)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloudlog_wire.broker import MAX_DELAY_SECONDS, BrokerSettings

# Where the worker serves Prometheus metrics unless told otherwise (0 turns them off).
DEFAULT_WORKER_METRICS_PORT = 9808
# A task's time besides its HTTP call: publishing its retry or its dead letter (with retries),
# decoding its batch. Part of how long the worker extends a message at most.
TASK_OVERHEAD_SECONDS = 60.0


class WorkerSettings(BaseSettings):
    """The Celery worker that delivers batches to the ingest service."""

    model_config = SettingsConfigDict(env_prefix="CLOUDLOG_", extra="ignore")

    ingest_url: str = "http://127.0.0.1:8080"
    api_key: str | None = None
    worker_concurrency: int = Field(default=4, ge=1, le=256)
    worker_pool: str = "threads"
    http_connect_timeout: float = Field(default=5.0, gt=0, le=60)
    # Ingest answers after the write; a commit under throttling may take a while.
    http_read_timeout: float = Field(default=60.0, gt=0, le=900)
    max_retries: int = Field(default=20, ge=0, le=1000)
    # Retries of a batch whose task raised something unexpected, before it is dead-lettered.
    max_exception_retries: int = Field(default=3, ge=0, le=1000)
    retry_backoff_base: float = Field(default=1.0, gt=0, le=60)
    # A retry waits in SQS as its message's DelaySeconds, at most 900 s.
    retry_backoff_max: float = Field(default=300.0, gt=0, le=MAX_DELAY_SECONDS)
    # Prometheus metrics on http://HOST:PORT/metrics (worker_metrics.py); port 0: none.
    worker_metrics_port: int = Field(default=DEFAULT_WORKER_METRICS_PORT, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    @field_validator("worker_pool")
    @classmethod
    def _known_pool(cls, value: str) -> str:
        if value not in ("threads", "prefork", "solo"):
            raise ValueError("must be threads, prefork or solo")
        return value

    @model_validator(mode="after")
    def _positive_backoff(self) -> WorkerSettings:
        if self.retry_backoff_max < self.retry_backoff_base:
            raise ValueError("retry_backoff_max must be at least retry_backoff_base")
        return self

    def longest_task_seconds(self) -> float:
        """How long one run may legitimately hold its message: the HTTP call, then publishing
        a retry or a dead letter. The retry countdown is not part of it: the retried copy waits
        in SQS (DelaySeconds), not in the worker."""
        return self.http_connect_timeout + self.http_read_timeout + TASK_OVERHEAD_SECONDS


def check_visibility_timeout(worker: WorkerSettings, broker: BrokerSettings) -> None:
    """The worker extends each message it holds every heartbeat interval (sqs_transport.py);
    SQS redelivers a message still being worked on unless an extension arrives in time. At
    least two beats must fit in one timeout, so that one failed ChangeMessageVisibility does
    not cost the message."""
    interval = broker.heartbeat_interval()
    if interval * 2 > broker.visibility_timeout:
        raise ValueError(
            f"CLOUDLOG_VISIBILITY_HEARTBEAT_INTERVAL ({interval:g} s) must be at most half of "
            f"CLOUDLOG_VISIBILITY_TIMEOUT ({broker.visibility_timeout} s): the worker extends "
            "the messages it holds that often, and SQS redelivers one whose extension is late; "
            "unset the interval (a third of the timeout) or raise the timeout"
        )
