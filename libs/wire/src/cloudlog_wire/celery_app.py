"""The Celery application that carries batches over SQS, for the publisher and the worker alike."""

from __future__ import annotations

from celery import Celery

from cloudlog_core.aws import AwsSettings
from cloudlog_wire.broker import BrokerSettings, celery_broker_config

DELIVER_TASK_NAME = "cloudlog.deliver_batch"


def create_celery(broker: BrokerSettings, aws: AwsSettings, *, name: str = "cloudlog") -> Celery:
    """A Celery app configured for our queue. Creating it does no I/O."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_broker_config(broker, aws))
    return app
