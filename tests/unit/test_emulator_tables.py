"""`cloudlog emulator` serves the DynamoDB tables ingest's shared state uses, ready to use."""

from __future__ import annotations

import pytest

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.emulator import start_emulator
from cloudlog_devtools.processes import free_port


def test_the_emulator_creates_the_tenant_and_idempotency_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDLOG_INGEST_IDEMPOTENCY_TABLE", "batches-of-this-test")
    monkeypatch.delenv("CLOUDLOG_TENANTS_TABLE", raising=False)
    server, url = start_emulator(free_port())
    try:
        dynamodb = make_client("dynamodb", AwsSettings(aws_endpoint_url=url))
        assert set(dynamodb.list_tables()["TableNames"]) == {
            "cloudlog-tenants",
            "cloudlog-idempotency",
            "batches-of-this-test",
        }
        ttl = dynamodb.describe_time_to_live(TableName="batches-of-this-test")
        assert ttl["TimeToLiveDescription"] == {
            "TimeToLiveStatus": "ENABLED",
            "AttributeName": "expires_at",
        }
    finally:
        server.stop()
