"""Names ingest refuses, through real processes (issue 14, item 1): emulator, ingest, worker.

A batch that mixes good events with events whose group or stream is refused by confinement is
delivered by the worker: the good lines are written exactly once, the refused ones answered
``rejected`` (``forbidden_name``) and reported to the tenant's ``<prefix>_cloudlog`` group,
stream ``_rejected``; nothing is dead-lettered. And a Flask app configured with AWS's own
convention, ``CLOUDLOG_LOG_GROUP = "/ecs/shop"``, has its lines land under the tenant's prefix.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx
import pytest
from flask import Flask

from cloudlog_core.aws import AwsSettings
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_wire.broker import BrokerSettings
from cloudlog_wire.celery_app import DELIVER_TASK_NAME, create_celery
from cloudlog_wire.payload import TaskCompression, encode, events_json, task_kwargs
from flask_cloudlog import CloudLog, CloudLogState
from tests.conftest import log_event, read_stream, wait_for

pytestmark = pytest.mark.integration

REFUSALS_GROUP = "_cloudlog"


def worker_metric(pipeline: LocalPipeline, name: str) -> float:
    text = httpx.get(pipeline.worker_metrics_url, timeout=5).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def publish(pipeline: LocalPipeline, events: list[dict[str, Any]]) -> None:
    """One delivery task as the Flask extension sends it (the worker's own key applies)."""
    data, encoding = encode(events_json(events), TaskCompression.ZLIB)
    app = create_celery(BrokerSettings(), AwsSettings(aws_endpoint_url=pipeline.emulator_url))
    try:
        app.send_task(
            DELIVER_TASK_NAME, args=[data], kwargs=task_kwargs(encoding, len(events), None)
        )
    finally:
        app.close()


def info_event(group: str, stream: str, message: str) -> dict[str, Any]:
    return log_event(group, stream, message, level="info")


def test_a_batch_with_forbidden_names_is_written_but_for_them_and_they_are_reported(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str
) -> None:
    prefix = pipeline.tenant.log_group_prefix
    good = [info_event(unique_group, "web", f"good {n}") for n in range(5)]
    slashed = info_event("/" + unique_group, "web", "good 5, named with a leading slash")
    forbidden = {
        "../other": info_event("../other", "web", "escape"),
        "aws/x": info_event("aws/x", "web", "aws's own"),
        "a//b": info_event(f"{unique_group}//b", "web", "doubled slash"),
        "_rejected": info_event(unique_group, "_rejected", "forged report"),
        "a:b": info_event(unique_group, "a:b", "colon"),
    }
    batch = [*good[:3], forbidden["../other"], forbidden["aws/x"], *good[3:], slashed]
    batch += [forbidden["a//b"], forbidden["_rejected"], forbidden["a:b"]]
    refused_ids = {e["event_id"] for e in forbidden.values()}

    def own_reports() -> list[dict[str, Any]]:
        """This test's reports (other tests of the session may report to the same stream)."""
        found = read_stream(logs_client, prefix + REFUSALS_GROUP, "_rejected")
        documents = [json.loads(report["message"]) for report in found]
        return [document for document in documents if document["event_id"] in refused_ids]

    rejected_before = worker_metric(pipeline, "cloudlog_worker_events_rejected_total")
    dead_before = worker_metric(pipeline, "cloudlog_worker_batches_dead_lettered_total")

    publish(pipeline, batch)

    stored = prefix + unique_group
    lines = wait_for(
        lambda: (found := read_stream(logs_client, stored, "web")) and len(found) >= 6 and found,
        what="the good lines in CloudWatch",
    )
    reports = wait_for(
        lambda: (found := own_reports()) and len(found) >= len(forbidden) and found,
        what="the reports of the refused events",
    )
    wait_for(
        lambda: (
            worker_metric(pipeline, "cloudlog_worker_events_rejected_total") - rejected_before
            >= len(forbidden)
        ),
        what="the worker to count the rejected events",
    )
    assert worker_metric(pipeline, "cloudlog_worker_batches_dead_lettered_total") == dead_before

    messages = sorted(json.loads(line["message"])["message"] for line in lines)
    assert messages == sorted([e["message"] for e in good] + [slashed["message"]])
    assert len(lines) == 6, "each good line exactly once"
    documents = {report["event_id"]: report for report in reports}
    assert len(reports) == len(forbidden), "each refused event reported once"
    for rule, refused in forbidden.items():
        report = documents[refused["event_id"]]
        assert report["reason"] == "forbidden_name"
        assert (report["log_group"], report["log_stream"]) == (
            refused["log_group"],
            refused["log_stream"],
        )
        assert report["message"] == refused["message"], rule
    groups = {
        g["logGroupName"]
        for g in logs_client.describe_log_groups()["logGroups"]
        if "other" in g["logGroupName"] or g["logGroupName"].endswith("aws/x")
    }
    assert groups == set(), "no group was created for a refused name"
    assert [
        line for line in read_stream(logs_client, stored, "web") if "forged" in line["message"]
    ] == []

    # The same batch again, straight to ingest: the answer, one result per event in order, and
    # nothing written or reported twice (ingest's journal).
    answer = httpx.post(
        f"{pipeline.ingest_url}/v1/logs",
        json={"events": batch},
        headers={"Authorization": f"Bearer {pipeline.api_key}"},
        timeout=30,
    )
    assert answer.status_code == 200
    body = answer.json()
    assert (body["written"], body["rejected"]) == (6, 5)
    for sent, result in zip(batch, body["results"], strict=True):
        assert result["event_id"] == sent["event_id"]
        if sent["event_id"] in refused_ids:
            assert (result["status"], result["reason"]) == ("rejected", "forbidden_name")
            assert re.match(r"events\.\d+\.log_(group|stream): ", result["detail"]), result
        else:
            assert result["status"] == "written"
    time.sleep(1)
    assert len(read_stream(logs_client, stored, "web")) == 6
    assert len(own_reports()) == len(forbidden)


def test_a_flask_app_logging_to_a_group_with_a_leading_slash_lands_under_the_prefix(
    pipeline: LocalPipeline, logs_client: Any
) -> None:
    name = f"/ecs/shop-{uuid.uuid4().hex[:8]}"
    app = Flask(f"shop-{uuid.uuid4().hex[:8]}")
    app.config.update(
        TESTING=True,
        CLOUDLOG_ENABLED=True,
        CLOUDLOG_LOG_GROUP=name,
        CLOUDLOG_LOG_STREAM="web-1",
        CLOUDLOG_AWS_ENDPOINT_URL=pipeline.emulator_url,
        CLOUDLOG_FLUSH_INTERVAL=0.05,
    )
    CloudLog(app)
    state: CloudLogState = app.extensions["cloudlog"]

    @app.get("/checkout")
    def checkout() -> str:
        app.logger.info("checkout 1")
        app.logger.warning("checkout 2")
        return "ok"

    try:
        assert app.test_client().get("/checkout").status_code == 200
        assert state.flush(timeout=10), state.stats()
        stored = pipeline.tenant.log_group_prefix + name.removeprefix("/")
        lines = wait_for(
            lambda: (
                (found := read_stream(logs_client, stored, "web-1")) and len(found) >= 2 and found
            ),
            what=f"the app's lines in {stored}",
        )
    finally:
        state.close()
    assert [json.loads(line["message"])["message"] for line in lines] == [
        "checkout 1",
        "checkout 2",
    ]
    assert not logs_client.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
