"""A Flask request's log lines travel through SQS, a Celery worker and ingest into CloudWatch Logs.

Real processes: the emulator (moto server), a uvicorn ingest server and a Celery worker, all
started by the ``pipeline`` fixture. The Flask app runs here and publishes to the real SQS queue.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import Flask

from cloudlog_devtools.localpipeline import LocalPipeline
from flask_cloudlog import CloudLog, CloudLogState
from tests.conftest import read_stream, wait_for

pytestmark = pytest.mark.integration


def unique_name() -> str:
    """Flask apps share their logger by name: a name of its own keeps each test's handlers apart."""
    return f"shop-{uuid.uuid4().hex[:8]}"


def make_app(pipeline: LocalPipeline, group: str) -> Flask:
    app = Flask(unique_name())
    CloudLog(
        app,
        aws_endpoint_url=pipeline.emulator_url,
        log_group=group,
        log_stream="web-1",
        level="DEBUG",
        flush_interval=0.05,
    )

    @app.get("/checkout")
    def checkout() -> str:
        app.logger.debug("cart loaded", extra={"items": 3})
        app.logger.warning("stock low for sku %s", "A-17")
        app.logger.error("card declined: ünïcödé ✓ 🚀")
        return "ok"

    return app


def test_flask_request_lines_arrive_in_cloudwatch_with_level_and_order(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str
) -> None:
    app = make_app(pipeline, unique_group)
    state: CloudLogState = app.extensions["cloudlog"]
    try:
        response = app.test_client().get("/checkout", headers={"X-Request-ID": "req-42"})
        assert response.status_code == 200
        assert state.flush(timeout=10), state.stats()

        events = wait_for(
            lambda: (
                (found := read_stream(logs_client, pipeline.stored_group(unique_group), "web-1"))
                and len(found) >= 3
                and found
            ),
            what="three events in CloudWatch",
        )
    finally:
        state.close()

    documents = [json.loads(event["message"]) for event in events]
    assert [(doc["level"], doc["message"]) for doc in documents] == [
        ("debug", "cart loaded"),
        ("warning", "stock low for sku A-17"),
        ("error", "card declined: ünïcödé ✓ 🚀"),
    ]
    assert len(events) == 3, "each line exactly once"
    assert all(doc["logger"] == app.name for doc in documents)
    assert all(doc["fields"]["request_id"] == "req-42" for doc in documents)
    assert all(doc["fields"]["path"] == "/checkout" for doc in documents)
    assert documents[0]["fields"]["items"] == 3
    assert len({doc["event_id"] for doc in documents}) == 3
    timestamps = [event["timestamp"] for event in events]
    assert timestamps == sorted(timestamps)
    assert state.stats()["dropped_events"] == 0


def test_an_apps_own_api_key_authenticates_its_batches_and_never_reaches_the_logs(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str
) -> None:
    app = Flask(unique_name())
    CloudLog(
        app,
        aws_endpoint_url=pipeline.emulator_url,
        log_group=unique_group,
        log_stream="keyed",
        api_key=pipeline.api_key,
        flush_interval=0.05,
    )
    state: CloudLogState = app.extensions["cloudlog"]
    try:
        with app.test_request_context("/"):
            app.logger.warning("sent with the app's key")
        assert state.flush(timeout=10)
        events = wait_for(
            lambda: read_stream(logs_client, pipeline.stored_group(unique_group), "keyed"),
            what="the keyed event",
        )
    finally:
        state.close()
    assert json.loads(events[0]["message"])["message"] == "sent with the app's key"
    assert pipeline.worker is not None
    assert pipeline.api_key not in pipeline.worker.log_text()
