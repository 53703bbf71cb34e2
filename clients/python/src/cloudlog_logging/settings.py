"""Settings of a cloudlog producer: keyword options, else ``CLOUDLOG_*`` environment variables.

``ClientSettings`` is what every producer reads (the logging handler of any process, and the
Flask extension, whose ``ExtensionSettings`` adds its own keys and reads ``app.config`` first).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloudlog_core.aws import DEFAULT_REGION, AwsSettings
from cloudlog_wire.broker import DEFAULT_QUEUE_NAME, BrokerSettings
from cloudlog_wire.payload import TaskCompression

# SQS: a message body is at most 262,144 bytes on queues that keep the old MaximumMessageSize
# default, up to 1 MiB where raised (SQS developer guide, "Amazon SQS message quotas").
DEFAULT_MAX_TASK_BYTES = 262_144
# The uncompressed JSON of one batch, which the worker POSTs to ingest as it is: half of ingest's
# default body limit (CLOUDLOG_INGEST_MAX_BODY_BYTES, 16 MiB, services/ingest/settings.py).
DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_BATCH_BYTES = 16 * 1024 * 1024
# Ingest takes at most 10,000 events per POST /v1/logs (and PutLogEvents as many per call).
MAX_BATCH_EVENTS = 10_000
LOGGING_LEVEL_NAMES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class CloudLogConfigError(ValueError):
    """A ``CLOUDLOG_*`` setting is invalid."""


class OverflowPolicy(StrEnum):
    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


class ClientSettings(BaseSettings):
    """Every ``CLOUDLOG_*`` key a producer reads, with its default."""

    model_config = SettingsConfigDict(env_prefix="CLOUDLOG_", extra="ignore")

    log_group: str | None = None  # default: "cloudlog/<app or program name>"
    log_stream: str | None = None  # default: the host name
    level: str = "INFO"
    broker_url: str | None = None
    queue_name: str = DEFAULT_QUEUE_NAME
    aws_endpoint_url: str | None = None
    aws_region: str = DEFAULT_REGION
    # The tenant's key, sent with each batch; unset: the worker's own CLOUDLOG_API_KEY.
    api_key: str | None = None
    buffer_max_events: int = Field(default=10_000, ge=1)
    buffer_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    overflow_policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    block_timeout: float = Field(default=0.05, ge=0, le=10)
    batch_max_events: int = Field(default=1_000, ge=1, le=MAX_BATCH_EVENTS)
    max_task_bytes: int = Field(default=DEFAULT_MAX_TASK_BYTES, ge=16_384, le=1_048_576)
    max_batch_bytes: int = Field(default=DEFAULT_MAX_BATCH_BYTES, ge=16_384, le=MAX_BATCH_BYTES)
    task_compression: TaskCompression = TaskCompression.ZLIB
    flush_interval: float = Field(default=0.2, gt=0, le=60)
    shutdown_timeout: float = Field(default=5.0, ge=0, le=300)
    publish_retry_max_seconds: float = Field(default=10.0, gt=0, le=300)
    # None: on (the Flask extension: on, except under TESTING with no endpoint or broker given).
    # False: events are kept in memory (``captured``), nothing is published.
    enabled: bool | None = None

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LOGGING_LEVEL_NAMES:
            raise ValueError(f"must be one of {', '.join(LOGGING_LEVEL_NAMES)}")
        return value.upper()

    def aws(self) -> AwsSettings:
        return AwsSettings(aws_endpoint_url=self.aws_endpoint_url, aws_region=self.aws_region)

    def broker(self) -> BrokerSettings:
        return BrokerSettings(broker_url=self.broker_url, queue_name=self.queue_name)

    @classmethod
    def config_keys(cls) -> dict[str, str]:
        """``CLOUDLOG_*`` key -> field name."""
        return {f"CLOUDLOG_{name.upper()}": name for name in cls.model_fields}
