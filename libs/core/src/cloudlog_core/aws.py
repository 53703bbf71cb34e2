"""Where AWS is: one settings class and one client factory shared by every component.

``CLOUDLOG_AWS_ENDPOINT_URL`` unset means real AWS. Set, it points both SQS and CloudWatch Logs
at that endpoint (the embedded moto server or LocalStack); dummy credentials are then supplied
when the environment has none, because local endpoints accept any.
"""

from __future__ import annotations

from typing import Any, Literal

import boto3
from botocore.config import Config
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REGION = "us-east-1"
ServiceName = Literal["logs", "sqs", "dynamodb"]
LOCAL_ENDPOINT_CREDENTIALS = ("testing", "testing")

# Every network call has a timeout (seconds).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0


class AwsSettings(BaseSettings):
    """Endpoint and region, read from ``CLOUDLOG_AWS_ENDPOINT_URL`` and the usual AWS variables."""

    model_config = SettingsConfigDict(env_prefix="CLOUDLOG_", extra="ignore", populate_by_name=True)

    aws_endpoint_url: str | None = None
    aws_region: str = Field(
        default=DEFAULT_REGION,
        validation_alias=AliasChoices("CLOUDLOG_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )


def uses_local_endpoint(settings: AwsSettings) -> bool:
    return bool(settings.aws_endpoint_url)


def session_for(settings: AwsSettings) -> boto3.session.Session:
    """A boto3 session; with a local endpoint and no credentials anywhere, dummy ones."""
    session = boto3.session.Session(region_name=settings.aws_region)
    if uses_local_endpoint(settings) and session.get_credentials() is None:
        key, secret = LOCAL_ENDPOINT_CREDENTIALS
        session = boto3.session.Session(
            aws_access_key_id=key, aws_secret_access_key=secret, region_name=settings.aws_region
        )
    return session


def make_client(
    service: ServiceName,
    settings: AwsSettings,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    max_attempts: int = 1,
    max_pool_connections: int = 10,
    parameter_validation: bool = True,
) -> Any:
    """A boto3 client with timeouts. ``max_attempts=1`` leaves retrying to our own policies.

    ``parameter_validation=False`` skips botocore's walk over every request parameter; only for
    callers that check what they send themselves (the writer's admission does).
    """
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        parameter_validation=parameter_validation,
    )
    return session_for(settings).client(
        service, endpoint_url=settings.aws_endpoint_url or None, config=config
    )
