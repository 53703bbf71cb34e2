"""The writer against a real moto server on loopback (HTTP, botocore, moto's Logs backend)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from writer_fakes import StrictClient

from cloudlog_core.aws import AwsSettings
from cloudlog_writer import CloudWatchWriter, LogEvent, RejectReason, WriterSettings
from cloudlog_writer.limits import LEGACY_MAX_EVENT_BYTES, MAX_EVENT_AGE_MS, MAX_FUTURE_MS
from cloudlog_writer.splitting import reassemble
from cloudlog_writer.writer import make_logs_client

pytestmark = pytest.mark.integration


def read_back(client: Any, group: str, stream: str) -> list[str]:
    response = client.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)
    return [e["message"] for e in response["events"]]


def test_write_read_back_and_survive_group_deletion(moto_url: str) -> None:
    settings = WriterSettings(
        retention_days=7, max_event_bytes=LEGACY_MAX_EVENT_BYTES, stream_parallelism=4
    )
    client = StrictClient(make_logs_client(settings, AwsSettings(aws_endpoint_url=moto_url)))
    now = int(time.time() * 1000)
    big = "ü😀" * 120_000  # 720,000 bytes: split into parts under the 256 KB legacy limit
    events = [
        LogEvent("a1", "tenant-a/app", "web-1", now + 5, "a: third"),
        LogEvent("b1", "tenant-b/app", "worker", now, "b: first"),
        LogEvent("a2", "tenant-a/app", "web-1", now, "a: first"),
        LogEvent("old", "tenant-a/app", "web-1", now - MAX_EVENT_AGE_MS - 60_000, "too old"),
        LogEvent("a3", "tenant-a/app", "web-1", now, "a: second (same ms as first)"),
        LogEvent("big", "tenant-b/app", "worker", now + 1, big),
        LogEvent("new", "tenant-b/app", "worker", now + MAX_FUTURE_MS + 60_000, "too new"),
        LogEvent("b2", "tenant-b/app", "worker", now + 2, "b: last"),
    ]
    with CloudWatchWriter(client, settings) as writer:
        results = writer.write(events)
        assert [r.event_id for r in results] == [e.event_id for e in events]
        assert {r.event_id: r.reason for r in results if not r.written} == {
            "old": RejectReason.TOO_OLD,
            "new": RejectReason.TOO_NEW,
        }
        assert read_back(client, "tenant-a/app", "web-1") == [
            "a: first",
            "a: second (same ms as first)",
            "a: third",
        ]
        stored_b = read_back(client, "tenant-b/app", "worker")
        assert len(stored_b) > 3  # the big event went as several parts
        assert reassemble(stored_b) == ["b: first", big, "b: last"]
        groups = client.describe_log_groups(logGroupNamePrefix="tenant-")["logGroups"]
        assert {g["logGroupName"]: g.get("retentionInDays") for g in groups} == {
            "tenant-a/app": 7,
            "tenant-b/app": 7,
        }

        # The group disappears while the writer runs (its cache still says it exists).
        client.delete_log_group(logGroupName="tenant-a/app")
        again = writer.write([LogEvent("a4", "tenant-a/app", "web-1", now + 10, "a: after delete")])
        assert again[0].written
        assert read_back(client, "tenant-a/app", "web-1") == ["a: after delete"]
    assert client.puts >= 3
