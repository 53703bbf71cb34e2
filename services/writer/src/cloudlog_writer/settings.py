"""Writer settings, read from ``CLOUDLOG_WRITER_*`` environment variables."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloudlog_core.aws import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S

from .limits import DEFAULT_MAX_EVENT_BYTES, EVENT_OVERHEAD_BYTES, MAX_BATCH_BYTES, RETENTION_DAYS
from .models import GroupOptions

# Part markers need room; below this an event could not carry a marker plus one 4-byte character.
MIN_MAX_EVENT_BYTES = 1024


class WriterSettings(BaseSettings):
    """How the writer batches, retries and caches. All limits are bounded."""

    model_config = SettingsConfigDict(env_prefix="CLOUDLOG_WRITER_", extra="ignore")

    max_event_bytes: int = Field(
        default=DEFAULT_MAX_EVENT_BYTES,
        ge=MIN_MAX_EVENT_BYTES,
        le=MAX_BATCH_BYTES,
        description="Largest event (UTF-8 message bytes + 26). Larger messages are split into "
        "marked parts. 262144 (LEGACY_MAX_EVENT_BYTES) for endpoints still holding 256 KB.",
    )
    max_attempts: int = Field(
        default=8, ge=1, le=100, description="PutLogEvents attempts per batch, first one included."
    )
    max_retry_seconds: float = Field(
        default=60.0, gt=0, description="Total time one batch may spend retrying."
    )
    backoff_base_seconds: float = Field(
        default=0.1, gt=0, description="First backoff ceiling; doubles per attempt (full jitter)."
    )
    backoff_max_seconds: float = Field(
        default=10.0, gt=0, description="Ceiling of any single backoff sleep."
    )
    stream_parallelism: int = Field(
        default=8, ge=1, le=256, description="Streams written at once (bounded thread pool)."
    )
    cache_max_entries: int = Field(
        default=10_000, ge=1, description="Groups/streams remembered as existing (LRU)."
    )
    cache_ttl_seconds: float = Field(
        default=3600.0, gt=0, description="How long a group/stream is trusted to exist."
    )
    dedupe_max_entries: int = Field(
        default=100_000,
        ge=0,
        description="Written events remembered to skip redeliveries (0 turns this off).",
    )
    dedupe_ttl_seconds: float = Field(
        default=3600.0, gt=0, description="How long a written event is remembered."
    )
    retention_days: int | None = Field(
        default=None, description="Retention applied to groups the writer creates."
    )
    kms_key_id: str | None = Field(
        default=None, description="KMS key ARN applied to groups the writer creates."
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags applied to groups the writer creates."
    )
    connect_timeout_seconds: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    read_timeout_seconds: float = Field(default=DEFAULT_READ_TIMEOUT_S, gt=0)

    @field_validator("retention_days")
    @classmethod
    def _known_retention(cls, value: int | None) -> int | None:
        if value is not None and value not in RETENTION_DAYS:
            raise ValueError(f"retention_days must be one of {sorted(RETENTION_DAYS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.backoff_base_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_base_seconds must not exceed backoff_max_seconds")
        if self.max_event_bytes <= EVENT_OVERHEAD_BYTES:
            raise ValueError("max_event_bytes must exceed the 26-byte event overhead")
        return self

    def default_group_options(self) -> GroupOptions:
        return GroupOptions(
            retention_days=self.retention_days, kms_key_id=self.kms_key_id, tags=dict(self.tags)
        )
