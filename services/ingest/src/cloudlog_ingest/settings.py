"""Ingest service settings, from ``CLOUDLOG_INGEST_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_INGEST_PORT = 8080
# A batch call carries at most as many events as one PutLogEvents (10,000, AWS PutLogEvents docs).
MAX_EVENTS_PER_REQUEST = 10_000


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLOUDLOG_INGEST_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_INGEST_PORT, ge=0, le=65535)
    # Events accepted but not yet written, across all requests. Past it: 429 + Retry-After.
    max_pending_events: int = Field(default=200_000, ge=1)
    # The same, per tenant: one tenant's backlog cannot fill the service for the others.
    max_pending_events_per_tenant: int = Field(default=100_000, ge=1)
    # The last share of max_pending_events only quiet tenants may fill (those holding at most a
    # quarter of it): floods never take the whole bound from the others (pipeline.py).
    pending_reserve_fraction: float = Field(default=0.2, ge=0, lt=1)
    # Group and stream creations per tenant (CreateLogStream is ~50/s per AWS account): a
    # request needing more is refused with 429 + Retry-After before anything is written.
    new_streams_per_second: float = Field(default=20.0, gt=0)
    new_streams_burst: int = Field(default=200, ge=1)
    # Commits written at once, one per tenant at most: a slow tenant delays only itself.
    max_concurrent_commits: int = Field(default=8, ge=1, le=256)
    # Streams one journaled commit covers at most (bounds the journal's begin record).
    max_commit_streams: int = Field(default=256, ge=1)
    # Request bodies over this many bytes are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Bytes of request bodies being received or handled at once, in all (past it: 503) and per
    # tenant (half of it; past that: 429), both with Retry-After (bodylimit.py).
    max_body_bytes_in_flight: int = Field(default=64 * 1024 * 1024, ge=2048)
    # How long a request body has to arrive, from its headers; later: 408, connection closed.
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # How many events one group commit hands to the writer at most.
    max_commit_events: int = Field(default=50_000, ge=1)
    max_events_per_request: int = Field(default=MAX_EVENTS_PER_REQUEST, ge=1, le=100_000)
    # Characters in one message; larger messages are split by the writer, not truncated.
    max_message_chars: int = Field(default=4 * 1024 * 1024, ge=1)
    retry_after_seconds: int = Field(default=1, ge=1, le=3600)
    # On shutdown, how long to finish writing what was accepted.
    shutdown_timeout_seconds: float = Field(default=30.0, gt=0)
    log_level: str = "info"
    # Durable idempotency across restarts (see journal.py); empty: in memory only.
    journal_path: Path | None = Path(".cloudlog-state/ingest.journal")
    # Events remembered as written: 40 bytes each, allocated in full at start (1,000,000: 40 MB),
    # so memory stays flat as the journal fills. The oldest go first; at N events/s the journal
    # covers max_entries / N seconds (40 s at 25,000/s): size it for the redelivery window.
    journal_max_entries: int = Field(default=1_000_000, ge=1_000)
    # Must outlast the redelivery horizon: the worker's retries plus the visibility timeout.
    journal_ttl_seconds: float = Field(default=6 * 3600, gt=0)
    # Idempotency shared by every replica (idempotency.py): the DynamoDB table of batch records.
    # Unset: the journal above, which a batch retried on another replica does not reach.
    idempotency_table: str | None = None
    # How long a replica holds a batch it writes; after it, another replica may take the batch
    # over. Must outlast the longest commit (the writer's CLOUDLOG_MAX_RETRY_SECONDS).
    idempotency_lease_seconds: float = Field(default=90.0, gt=0, le=3600)
    # Records expire (DynamoDB TTL) after this: it must outlast the redelivery horizon.
    idempotency_ttl_seconds: float = Field(default=6 * 3600, gt=0)
    # Marking batches done waits this long for the next commit's claim to carry it along.
    idempotency_done_linger_seconds: float = Field(default=5.0, gt=0, le=60)
    # Create the table at start when it is missing (emulators and development only).
    idempotency_create_table: bool = False
    # /readyz (readiness.py): how long CloudWatch Logs has to answer DescribeLogGroups,
    ready_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # how long that answer is reused (probes then cost CloudWatch nothing),
    ready_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # and the share of max_pending_events past which the writer counts as saturated.
    ready_max_pending_fraction: float = Field(default=0.9, gt=0, le=1)
    # GET /metrics (and /readyz's details) only with ``Authorization: Bearer <token>``; unset:
    # /metrics answers 404 and /readyz names its checks without details (README, Threat model).
    metrics_token: SecretStr | None = None
    # /docs, /redoc and /openapi.json: the static description of the public API, no tenant data.
    docs: bool = True

    @model_validator(mode="after")
    def _room_for_bodies(self) -> IngestSettings:
        if self.max_body_bytes_in_flight < 2 * self.max_body_bytes:
            raise ValueError(
                "max_body_bytes_in_flight must be at least twice max_body_bytes "
                "(one tenant may hold half of it, and a body of max_body_bytes must fit)"
            )
        return self

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _no_empty_token(cls, value: object) -> object:
        if value is None or value == "":
            return None
        if isinstance(value, str) and len(value.strip()) < 16:
            raise ValueError("metrics_token must be at least 16 characters")
        return value

    @field_validator("idempotency_table", mode="before")
    @classmethod
    def _no_empty_table(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("journal_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


@lru_cache
def get_settings() -> IngestSettings:
    return IngestSettings()
