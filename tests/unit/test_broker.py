from __future__ import annotations

import pytest

from cloudlog_core.aws import AwsSettings
from cloudlog_wire.broker import BrokerSettings, broker_url_for, transport_options_for
from cloudlog_worker.settings import WorkerSettings, check_visibility_timeout


def test_local_endpoint_gives_an_sqs_url_with_dummy_credentials_over_http() -> None:
    aws = AwsSettings(aws_endpoint_url="http://127.0.0.1:4566", aws_region="eu-west-1")
    broker = BrokerSettings(broker_url=None)
    assert broker_url_for(broker, aws) == "sqs://testing:testing@127.0.0.1:4566"
    options = transport_options_for(broker, aws)
    assert options["is_secure"] is False
    assert options["region"] == "eu-west-1"
    assert options["visibility_timeout"] == broker.visibility_timeout


def test_real_aws_uses_the_credential_chain_over_https() -> None:
    aws = AwsSettings(aws_endpoint_url=None)
    broker = BrokerSettings(broker_url=None)
    assert broker_url_for(broker, aws) == "sqs://"
    assert transport_options_for(broker, aws)["is_secure"] is True


def test_an_explicit_broker_url_wins() -> None:
    aws = AwsSettings(aws_endpoint_url="http://127.0.0.1:4566")
    broker = BrokerSettings(broker_url="sqs://k:s@example.test:443", broker_use_ssl=True)
    assert broker_url_for(broker, aws) == "sqs://k:s@example.test:443"
    assert transport_options_for(broker, aws)["is_secure"] is True


def test_queue_and_dead_letter_queue_must_differ() -> None:
    with pytest.raises(ValueError, match="must differ"):
        BrokerSettings(queue_name="q", dead_letter_queue_name="q")


def test_the_visibility_timeout_need_not_cover_the_longest_task_but_two_heartbeats() -> None:
    """The worker extends the messages it holds (cloudlog_wire.sqs_transport), so a timeout
    shorter than a task is fine; a heartbeat that leaves no room for a failed beat is not."""
    worker = WorkerSettings(http_read_timeout=60, retry_backoff_max=300)
    assert worker.longest_task_seconds() > 30
    check_visibility_timeout(worker, BrokerSettings(visibility_timeout=30))
    with pytest.raises(ValueError, match="CLOUDLOG_VISIBILITY_TIMEOUT"):
        check_visibility_timeout(
            worker, BrokerSettings(visibility_timeout=30, visibility_heartbeat_interval=16)
        )
