"""Ingest's metrics in-process, with a fake writer: what each request adds, and to which label."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cloudlog_ingest.app import create_app
from cloudlog_ingest.metrics import IngestMetrics
from cloudlog_ingest.settings import IngestSettings
from cloudlog_writer.models import EventResult, Outcome, RejectReason
from cloudlog_writer.observer import RetryCause
from tests.unit.test_ingest_app import FakeWriter, batch_event, running


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_each_outcome_is_counted_per_tenant_and_reason() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        metrics: IngestMetrics = client.app.state.metrics  # type: ignore[attr-defined]
        batch = {"events": [batch_event(0), batch_event(1, "reject me"), batch_event(2)]}
        assert client.post("/v1/logs", json=batch).json()["written"] == 2
        # Sent again: the two written events are known to the journal; the rejected one is not.
        assert client.post("/v1/logs", json=batch).json()["written"] == 2
        registry = metrics.registry
        assert value(registry, "cloudlog_ingest_events_accepted_total", tenant="acme") == 6
        assert value(registry, "cloudlog_ingest_events_written_total", tenant="acme") == 2
        assert value(registry, "cloudlog_ingest_events_deduplicated_total", tenant="acme") == 2
        rejected = value(
            registry, "cloudlog_ingest_events_rejected_total", tenant="acme", reason="invalid"
        )
        assert rejected == 2
        assert (
            value(registry, "cloudlog_ingest_rejection_reports_written_total", tenant="acme") == 2
        )
        assert value(registry, "cloudlog_ingest_commit_events_sum") == 6
        assert value(registry, "cloudlog_ingest_commit_events_count") == 2
        assert value(registry, "cloudlog_ingest_pending_events") == 0
        assert value(registry, "cloudlog_ingest_max_pending_events") == 200_000


def test_refused_requests_are_counted_by_route_and_status() -> None:
    with running(FakeWriter(), max_body_bytes=2048) as client:
        metrics: IngestMetrics = client.app.state.metrics  # type: ignore[attr-defined]
        anonymous = client.client
        assert anonymous.post("/v1/logs", json={"events": [batch_event(0)]}).status_code == 401
        assert anonymous.post("/logs", json={}).status_code == 401
        # /v1/logs answers a refused name per event (200); the simple contract refuses it whole
        escape = {"log_group": "../other", "log_stream": "s", "log_message": "m", "level": "info"}
        assert client.post("/logs", json=escape).status_code == 403
        assert client.post("/v1/logs", json={"events": []}).status_code == 422
        huge = {"events": [batch_event(0, "x" * 4096)]}
        assert client.post("/v1/logs", json=huge).status_code == 413
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/nowhere").status_code == 404
        counted = {
            (labels[0][1], labels[1][1]): count
            for (name, labels), count in samples(
                anonymous.get("/metrics", headers=client.scraper).text
            ).items()
            if name == "cloudlog_ingest_requests_refused_total"
        }
    assert counted == {
        ("/v1/logs", "401"): 1,
        ("/logs", "401"): 1,
        ("/logs", "403"): 1,
        ("/v1/logs", "422"): 1,
        ("/v1/logs", "413"): 1,
    }, "only the log endpoints' refusals, each once"
    assert metrics.events_accepted.collect()[0].samples == [], "nothing was accepted"


def test_over_the_pending_bound_is_counted_as_a_429() -> None:
    writer = FakeWriter()
    writer.release.clear()
    with running(writer, max_pending_events=1) as client:
        metrics: IngestMetrics = client.app.state.metrics  # type: ignore[attr-defined]
        pipeline = client.app.state.pipeline  # type: ignore[attr-defined]
        first = threading.Thread(
            target=client.post, args=("/v1/logs",), kwargs={"json": {"events": [batch_event(0)]}}
        )
        first.start()
        deadline = time.monotonic() + 10
        while pipeline.pending_events < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert value(metrics.registry, "cloudlog_ingest_pending_events") == 1
        assert client.post("/v1/logs", json={"events": [batch_event(1)]}).status_code == 429
        writer.release.set()
        first.join(10)
    refused = value(
        metrics.registry, "cloudlog_ingest_requests_refused_total", route="/v1/logs", status="429"
    )
    assert refused == 1


def test_the_writer_reports_to_the_apps_metrics_and_metrics_leak_no_key() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        observer = writer.observer
        assert observer is client.app.state.metrics  # type: ignore[attr-defined]
        observer.put_log_events(events=3, seconds=0.02, outcome="ok")
        observer.put_log_events(events=3, seconds=0.5, outcome="retriable")
        observer.retry(RetryCause.THROTTLED)
        response = client.client.get("/metrics", headers=client.scraper)
        api_key = client.headers["Authorization"].removeprefix("Bearer ")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert api_key not in response.text
    scraped = samples(response.text)
    assert scraped["cloudlog_writer_put_log_events_total", (("outcome", "ok"),)] == 1
    assert scraped["cloudlog_writer_put_log_events_total", (("outcome", "retriable"),)] == 1
    assert scraped["cloudlog_writer_put_log_events_duration_seconds_count", ()] == 2
    assert scraped["cloudlog_writer_put_log_events_batch_events_sum", ()] == 6
    assert scraped["cloudlog_writer_retries_total", (("cause", "throttled"),)] == 1
    assert "python_info" in response.text  # the platform and process collectors too


def test_each_app_has_a_registry_of_its_own() -> None:
    settings = IngestSettings(journal_path=None)
    first, second = create_app(settings), create_app(settings)
    assert first.state.metrics.registry is not second.state.metrics.registry
    first.state.metrics.accepted("acme", 5)
    assert value(second.state.metrics.registry, "cloudlog_ingest_events_accepted_total") == 0


def test_outcomes_count_written_and_rejected_by_reason() -> None:
    metrics = IngestMetrics()
    metrics.outcomes(
        ["a", "a", "b", "b"],
        [
            EventResult("1", Outcome.WRITTEN),
            EventResult("2", Outcome.REJECTED, RejectReason.TOO_OLD),
            EventResult("3", Outcome.REJECTED, RejectReason.TOO_OLD),
            EventResult("4", Outcome.REJECTED, RejectReason.TOO_NEW),
        ],
    )
    metrics.deduplicated(["a", "a", "b"])
    registry = metrics.registry
    assert value(registry, "cloudlog_ingest_events_written_total", tenant="a") == 1
    assert value(registry, "cloudlog_ingest_events_written_total", tenant="b") == 0
    assert (
        value(registry, "cloudlog_ingest_events_rejected_total", tenant="a", reason="too_old") == 1
    )
    assert (
        value(registry, "cloudlog_ingest_events_rejected_total", tenant="b", reason="too_old") == 1
    )
    assert (
        value(registry, "cloudlog_ingest_events_rejected_total", tenant="b", reason="too_new") == 1
    )
    assert value(registry, "cloudlog_ingest_events_deduplicated_total", tenant="a") == 2
    assert value(registry, "cloudlog_ingest_events_deduplicated_total", tenant="b") == 1
