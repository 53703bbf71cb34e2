"""After a run through the real pipeline, ingest's and the worker's counters say what it did.

The pipeline is shared with other tests, so each test scrapes before and after its run and
compares the differences, once both services are idle. The run: a Flask app logging through
the queue and the worker (one of its lines too old), an app with a wrong key (refused), direct
batches with written, too-old and duplicate events, and requests refused with 401/403/422.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cloudlog_devtools.localpipeline import LocalPipeline
from flask_cloudlog import CloudLog, CloudLogState
from tests.conftest import read_stream, wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
APP_LINES = 25
FRESH = 4
TOO_OLD = 3
FIFTEEN_DAYS_S = 15 * 86_400  # past CloudWatch's 14-day limit


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    text = httpx.get(url, headers=headers, timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("cloudlog_") and not sample.name.endswith("_created")
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def changed(before: Samples, after: Samples, name: str) -> dict[frozenset[Any], float]:
    """Label set -> increase, for every series of ``name`` that moved."""
    moved = {}
    for (sample, labels), value in after.items():
        if sample == name and value != before.get((sample, labels), 0.0):
            moved[labels] = value - before.get((sample, labels), 0.0)
    return moved


def ingest_metrics_url(pipeline: LocalPipeline) -> str:
    return f"{pipeline.ingest_url}/metrics"


def idle_scrapes(pipeline: LocalPipeline) -> tuple[Samples, Samples]:
    """Scrapes of ingest and worker once nothing is pending and two in a row agree."""
    deadline = time.monotonic() + 20
    previous = None
    while time.monotonic() < deadline:
        current = (
            scrape(ingest_metrics_url(pipeline), pipeline.ingest_metrics_headers),
            scrape(pipeline.worker_metrics_url),
        )
        if current == previous and current[0][("cloudlog_ingest_pending_events", frozenset())] == 0:
            return current
        previous = current
        time.sleep(0.3)
    pytest.fail("the pipeline did not go idle")


@contextmanager
def flask_app(pipeline: LocalPipeline, group: str, **options: Any) -> Iterator[Flask]:
    app = Flask(f"metrics-{uuid.uuid4().hex[:8]}")
    CloudLog(
        app,
        aws_endpoint_url=pipeline.emulator_url,
        log_group=group,
        log_stream="web-1",
        flush_interval=0.05,
        **options,
    )
    try:
        yield app
    finally:
        app.extensions["cloudlog"].close()


def batch(group: str, events: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "events": [
            {"event_id": event_id, "timestamp": timestamp, "log_group": group,
             "log_stream": "direct", "message": f"direct {event_id}"}
            for event_id, timestamp in events
        ]
    }  # fmt: skip


def test_counters_increase_by_exactly_what_the_run_did(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str
) -> None:
    tenant = pipeline.tenant.name
    ingest_before, worker_before = idle_scrapes(pipeline)
    client_metrics = CollectorRegistry()

    # 1. A Flask app: APP_LINES lines, and one stamped 15 days ago, through queue and worker.
    with flask_app(pipeline, unique_group) as app:
        state: CloudLogState = app.extensions["cloudlog"]
        state.register_metrics(client_metrics)
        for number in range(APP_LINES):
            app.logger.warning("line %d", number)
        old = app.logger.makeRecord(app.logger.name, logging.WARNING, __file__, 0, "old", (), None)
        old.created -= FIFTEEN_DAYS_S
        app.logger.handle(old)
        assert state.flush(10), state.stats()
        app_tasks = state.stats()["published_tasks"]
        published = client_metrics.get_sample_value(
            "cloudlog_client_published_events_total", {"app": app.name}
        )
        assert published == APP_LINES + 1
        assert (
            client_metrics.get_sample_value(
                "cloudlog_client_dropped_events_total", {"app": app.name}
            )
            == 0
        )

    # 2. An app with a key ingest does not know: the worker's batches are refused (401).
    with flask_app(pipeline, unique_group, api_key="cl_not-a-key") as stranger:
        stranger.logger.warning("who am I")
        stranger.logger.warning("nobody")
        stranger_state: CloudLogState = stranger.extensions["cloudlog"]
        assert stranger_state.flush(10)
        stranger_tasks = stranger_state.stats()["published_tasks"]

    # 3. Direct batches: FRESH written and TOO_OLD rejected, then the FRESH ones again.
    headers = {"Authorization": f"Bearer {pipeline.api_key}"}
    url = f"{pipeline.ingest_url}/v1/logs"
    now = int(time.time() * 1000)
    fresh = [(f"fresh-{uuid.uuid4().hex}", now + i) for i in range(FRESH)]
    old_ms = now - FIFTEEN_DAYS_S * 1000
    too_old = [(f"old-{uuid.uuid4().hex}", old_ms + i) for i in range(TOO_OLD)]
    first = httpx.post(url, json=batch(unique_group, fresh + too_old), headers=headers, timeout=30)
    assert (first.json()["written"], first.json()["rejected"]) == (FRESH, TOO_OLD)
    again = httpx.post(url, json=batch(unique_group, fresh), headers=headers, timeout=30)
    assert again.json()["written"] == FRESH

    # 4. Refused: no key, a wrong key, a group outside the tenant's prefix, an empty batch.
    assert httpx.post(url, json=batch(unique_group, fresh)).status_code == 401
    wrong = {"Authorization": "Bearer cl_wrong"}
    assert httpx.post(url, json=batch(unique_group, fresh), headers=wrong).status_code == 401
    # (/v1/logs answers a refused name per event; the simple contract refuses it whole: 403)
    escape = {"log_group": "../elsewhere", "log_stream": "s", "log_message": "m", "level": "info"}
    simple_url = f"{pipeline.ingest_url}/logs"
    assert httpx.post(simple_url, json=escape, headers=headers).status_code == 403
    assert httpx.post(url, json={"events": []}, headers=headers).status_code == 422

    # Wait until the worker has answered for every task, and the lines are in CloudWatch.
    wait_for(
        lambda: (
            delta(
                worker_before,
                scrape(pipeline.worker_metrics_url),
                "cloudlog_worker_delivery_duration_seconds_count",
            )
            >= app_tasks + stranger_tasks
        ),
        what="the worker to deliver every task",
    )
    stored = pipeline.stored_group(unique_group)
    wait_for(
        lambda: len(read_stream(logs_client, stored, "web-1")) >= APP_LINES,
        what="the app's lines in CloudWatch",
    )
    ingest, worker = idle_scrapes(pipeline)

    accepted = (APP_LINES + 1) + (FRESH + TOO_OLD) + FRESH
    assert changed(ingest_before, ingest, "cloudlog_ingest_events_accepted_total") == {
        frozenset({("tenant", tenant)}): accepted
    }
    assert changed(ingest_before, ingest, "cloudlog_ingest_events_written_total") == {
        frozenset({("tenant", tenant)}): APP_LINES + FRESH
    }
    assert changed(ingest_before, ingest, "cloudlog_ingest_events_rejected_total") == {
        frozenset({("tenant", tenant), ("reason", "too_old")}): 1 + TOO_OLD
    }
    assert changed(ingest_before, ingest, "cloudlog_ingest_events_deduplicated_total") == {
        frozenset({("tenant", tenant)}): FRESH
    }
    assert changed(ingest_before, ingest, "cloudlog_ingest_rejection_reports_written_total") == {
        frozenset({("tenant", tenant)}): 1 + TOO_OLD
    }
    assert changed(ingest_before, ingest, "cloudlog_ingest_requests_refused_total") == {
        frozenset({("route", "/v1/logs"), ("status", "401")}): 2 + stranger_tasks,
        frozenset({("route", "/logs"), ("status", "403")}): 1,
        frozenset({("route", "/v1/logs"), ("status", "422")}): 1,
    }
    assert delta(ingest_before, ingest, "cloudlog_ingest_commit_events_sum") == accepted
    assert delta(ingest_before, ingest, "cloudlog_ingest_commits_failed_total") == 0
    assert ingest["cloudlog_ingest_pending_events", frozenset()] == 0
    puts = sum(changed(ingest_before, ingest, "cloudlog_writer_put_log_events_total").values())
    assert puts > 0
    put_timings = "cloudlog_writer_put_log_events_duration_seconds_count"
    assert delta(ingest_before, ingest, put_timings) == puts

    assert delta(worker_before, worker, "cloudlog_worker_batches_delivered_total") == app_tasks
    assert delta(worker_before, worker, "cloudlog_worker_events_written_total") == APP_LINES
    assert delta(worker_before, worker, "cloudlog_worker_events_rejected_total") == 1
    assert changed(worker_before, worker, "cloudlog_worker_batches_refused_total") == {
        frozenset({("status", "401")}): stranger_tasks
    }
    assert delta(worker_before, worker, "cloudlog_worker_events_refused_total") == 2
    assert changed(worker_before, worker, "cloudlog_worker_retries_total") == {}
    # the stranger's batches are refused (401) and dead-lettered by the worker with that cause
    assert changed(worker_before, worker, "cloudlog_worker_batches_dead_lettered_total") == {
        frozenset({("cause", "http_401")}): stranger_tasks
    }
    timings = "cloudlog_worker_delivery_duration_seconds_count"
    assert delta(worker_before, worker, timings) == app_tasks + stranger_tasks


def test_metrics_name_tenants_but_never_keys(pipeline: LocalPipeline) -> None:
    text = httpx.get(
        ingest_metrics_url(pipeline), headers=pipeline.ingest_metrics_headers, timeout=10
    ).text
    assert pipeline.api_key not in text
    assert pipeline.tenant.key_sha256 not in text


def test_readyz_is_200_on_the_live_pipeline(pipeline: LocalPipeline) -> None:
    response = httpx.get(f"{pipeline.ingest_url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["cloudwatch"]["ok"] is True
