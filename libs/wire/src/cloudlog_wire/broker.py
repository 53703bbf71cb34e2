"""The SQS broker: queue names, the dead-letter queue, and the Celery settings that reach it.

Shared by the Flask extension (which publishes), the worker (which consumes) and the emulator
(which creates the queues). ``CLOUDLOG_BROKER_URL`` wins when set; otherwise the URL is derived
from ``CLOUDLOG_AWS_ENDPOINT_URL`` (a local endpoint) or is plain ``sqs://`` (real AWS, boto3's
credential chain).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloudlog_core.aws import LOCAL_ENDPOINT_CREDENTIALS, AwsSettings

SQS_TRANSPORT = "cloudlog_wire.sqs_transport:Transport"
DEFAULT_QUEUE_NAME = "cloudlog"
DEFAULT_DEAD_LETTER_QUEUE_NAME = "cloudlog-dlq"
# SQS: VisibilityTimeout 0 s .. 12 h (SQS developer guide, "Amazon SQS visibility timeout").
MAX_VISIBILITY_TIMEOUT_S = 12 * 60 * 60
# SQS: ReceiveMessage WaitTimeSeconds 0..20 (SQS API reference, ReceiveMessage).
MAX_WAIT_TIME_SECONDS = 20
# SQS: MessageRetentionPeriod up to 14 days; the dead-letter queue keeps its messages longest.
DEAD_LETTER_RETENTION_S = 14 * 24 * 60 * 60
# SQS: DelaySeconds of one message 0..900 (SQS API reference, SendMessage).
MAX_DELAY_SECONDS = 900
# How long a received message stays hidden unless the worker extends it (sqs_transport.py):
# what a worker killed with kill -9 costs its messages before another worker gets them.
DEFAULT_VISIBILITY_TIMEOUT_S = 30
# Transport options cloudlog_wire.sqs_transport reads besides kombu's own: seconds between two
# extensions of a held message, and how long a message may be held (extended) at most.
HEARTBEAT_INTERVAL_OPTION = "visibility_heartbeat_interval"
MAX_HOLD_OPTION = "visibility_max_hold_seconds"
# CreateQueue's answer for a name taken by a queue with other attributes.
QUEUE_EXISTS_CODES = frozenset({"QueueAlreadyExists", "QueueNameExists"})


class BrokerSettings(BaseSettings):
    """How to reach the queue. Environment variables ``CLOUDLOG_*``."""

    model_config = SettingsConfigDict(env_prefix="CLOUDLOG_", extra="ignore")

    broker_url: str | None = None
    # None: https, except plain http when CLOUDLOG_AWS_ENDPOINT_URL is an http:// URL.
    broker_use_ssl: bool | None = None
    queue_name: str = DEFAULT_QUEUE_NAME
    dead_letter_queue_name: str = DEFAULT_DEAD_LETTER_QUEUE_NAME
    # After this many receives without success a message moves to the dead-letter queue.
    max_receive_count: int = Field(default=5, ge=1, le=1000)
    # Seconds a received message stays hidden. The worker extends each message it holds every
    # ``visibility_heartbeat_interval`` seconds (sqs_transport.py), so this bounds how long a
    # dead worker's messages wait, not how long a task may run.
    visibility_timeout: int = Field(
        default=DEFAULT_VISIBILITY_TIMEOUT_S, ge=2, le=MAX_VISIBILITY_TIMEOUT_S
    )
    # None: a third of the visibility timeout.
    visibility_heartbeat_interval: float | None = Field(
        default=None, gt=0, le=MAX_VISIBILITY_TIMEOUT_S
    )
    wait_time_seconds: int = Field(default=10, ge=0, le=MAX_WAIT_TIME_SECONDS)
    polling_interval: float = Field(default=0.1, ge=0, le=60)

    @model_validator(mode="after")
    def _distinct_queues(self) -> BrokerSettings:
        if self.queue_name == self.dead_letter_queue_name:
            raise ValueError("queue_name and dead_letter_queue_name must differ")
        return self

    def heartbeat_interval(self) -> float:
        """Seconds between two extensions of a message the worker holds."""
        if self.visibility_heartbeat_interval is not None:
            return self.visibility_heartbeat_interval
        return self.visibility_timeout / 3


def broker_url_for(broker: BrokerSettings, aws: AwsSettings) -> str:
    if broker.broker_url:
        return broker.broker_url
    if aws.aws_endpoint_url:
        endpoint = urlsplit(aws.aws_endpoint_url)
        key, secret = LOCAL_ENDPOINT_CREDENTIALS
        return f"sqs://{key}:{secret}@{endpoint.hostname}:{endpoint.port or 80}"
    return "sqs://"


def transport_options_for(broker: BrokerSettings, aws: AwsSettings) -> dict[str, Any]:
    if broker.broker_use_ssl is not None:
        is_secure = broker.broker_use_ssl
    else:
        # kombu speaks https unless told otherwise; a local endpoint is usually plain http.
        is_secure = not (aws.aws_endpoint_url or "").startswith("http://")
    return {
        "region": aws.aws_region,
        "is_secure": is_secure,
        "visibility_timeout": broker.visibility_timeout,
        # Read by cloudlog_wire.sqs_transport: how often a held message is extended.
        HEARTBEAT_INTERVAL_OPTION: broker.heartbeat_interval(),
        "wait_time_seconds": broker.wait_time_seconds,
        "polling_interval": broker.polling_interval,
        # The envelope is JSON whose body kombu already base64-encodes: a second base64 of the
        # whole message (kombu's default) only makes every message a third larger.
        "sqs_base64_encoding": False,
    }


def celery_broker_config(broker: BrokerSettings, aws: AwsSettings) -> dict[str, Any]:
    """The Celery settings both publisher and worker share: SQS, JSON only, no results."""
    return {
        "broker_url": broker_url_for(broker, aws),
        # kombu's SQS transport, made to keep polling after a failed receive (see the module).
        "broker_transport": SQS_TRANSPORT,
        "broker_transport_options": transport_options_for(broker, aws),
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5.0,
        "task_default_queue": broker.queue_name,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        # SQS has no broadcast: remote control, mingle and gossip cannot work over it.
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def ensure_queues(sqs_client: Any, broker: BrokerSettings) -> dict[str, str]:
    """Create the queue and its dead-letter queue with a redrive policy; return their URLs.

    Idempotent: CreateQueue with the same attributes returns the existing queue; a queue that
    exists with other attributes (say the visibility timeout of an earlier release) is given
    ours with SetQueueAttributes.
    """
    dlq_url = sqs_client.create_queue(
        QueueName=broker.dead_letter_queue_name,
        Attributes={"MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_S)},
    )["QueueUrl"]
    dlq_arn = sqs_client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(broker.max_receive_count)}
    attributes = {
        "VisibilityTimeout": str(broker.visibility_timeout),
        "RedrivePolicy": json.dumps(redrive),
    }
    try:
        queue_url = sqs_client.create_queue(QueueName=broker.queue_name, Attributes=attributes)[
            "QueueUrl"
        ]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in QUEUE_EXISTS_CODES:
            raise
        queue_url = sqs_client.get_queue_url(QueueName=broker.queue_name)["QueueUrl"]
        sqs_client.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)
    return {broker.queue_name: queue_url, broker.dead_letter_queue_name: dlq_url}
