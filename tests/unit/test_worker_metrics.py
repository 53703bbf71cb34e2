"""The delivery task's counters, against a scripted ingest, and the worker's metrics server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery import Celery
from prometheus_client import CollectorRegistry

from cloudlog_devtools.processes import LOOPBACK, free_port
from cloudlog_worker.metrics import (
    DEAD_LETTER_CAUSES,
    RETRY_CAUSES,
    WorkerMetrics,
    serve_metrics,
)
from cloudlog_worker.settings import WorkerSettings
from cloudlog_worker.tasks import register_tasks
from tests.unit.test_delivery_task import EVENTS, DeadLetters, ScriptedIngest, sent


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


@pytest.fixture
def deliver() -> Iterator[Any]:
    servers: list[ScriptedIngest] = []

    def build(
        script: list[tuple[int, dict[str, str]]],
        answer: dict[str, Any] | None = None,
        **settings: Any,
    ) -> tuple[Any, WorkerMetrics]:
        ingest = ScriptedIngest(script, answer)
        servers.append(ingest)
        app = Celery("test", set_as_current=False)
        app.conf.task_always_eager = True
        metrics = WorkerMetrics()
        worker = WorkerSettings(
            **{
                "ingest_url": ingest.url,
                "retry_backoff_base": 0.01,
                "retry_backoff_max": 0.02,
                **settings,
            }
        )
        return register_tasks(app, worker, metrics, dead_letters=DeadLetters()), metrics

    yield build
    for server in servers:
        server.close()


def test_a_delivered_batch_counts_its_written_and_rejected_events(deliver: Any) -> None:
    results = [
        {"event_id": "e1", "status": "written"},
        {"event_id": "e2", "status": "written"},
        {"event_id": "e3", "status": "rejected", "reason": "too_old"},
    ]
    task, metrics = deliver([(200, {})], {"written": 2, "rejected": 1, "results": results})
    task.apply(**sent([{**EVENTS[0], "event_id": f"e{n}"} for n in (1, 2, 3)])).get()
    registry = metrics.registry
    assert value(registry, "cloudlog_worker_batches_delivered_total") == 1
    assert value(registry, "cloudlog_worker_events_written_total") == 2
    assert value(registry, "cloudlog_worker_events_rejected_total") == 1
    assert value(registry, "cloudlog_worker_delivery_duration_seconds_count") == 1


def test_retries_are_counted_by_cause(deliver: Any) -> None:
    task, metrics = deliver([(429, {}), (503, {}), (500, {}), (200, {})])
    task.apply(**sent(EVENTS)).get()
    registry = metrics.registry
    assert value(registry, "cloudlog_worker_retries_total", cause="throttled") == 1
    assert value(registry, "cloudlog_worker_retries_total", cause="server_error") == 2
    assert value(registry, "cloudlog_worker_retries_total", cause="connection") == 0
    assert value(registry, "cloudlog_worker_batches_delivered_total") == 1
    assert value(registry, "cloudlog_worker_delivery_duration_seconds_count") == 4


def test_an_unreachable_ingest_is_a_connection_retry_then_the_dead_letter(deliver: Any) -> None:
    task, metrics = deliver([], ingest_url=f"http://{LOOPBACK}:{free_port()}", max_retries=1)
    assert task.apply(**sent(EVENTS)).get()["cause"] == "retries_exhausted"
    registry = metrics.registry
    assert value(registry, "cloudlog_worker_retries_total", cause="connection") == 1
    dead = "cloudlog_worker_batches_dead_lettered_total"
    assert value(registry, dead, cause="retries_exhausted") == 1
    assert (
        value(registry, "cloudlog_worker_events_dead_lettered_total", cause="retries_exhausted")
        == 1
    )
    assert value(registry, "cloudlog_worker_batches_delivered_total") == 0


def test_a_refused_batch_is_counted_with_its_status_and_events(deliver: Any) -> None:
    task, metrics = deliver([(401, {}), (422, {})])
    task.apply(**sent(EVENTS + EVENTS)).get()
    task.apply(**sent(EVENTS)).get()
    registry = metrics.registry
    assert value(registry, "cloudlog_worker_batches_refused_total", status="401") == 1
    assert value(registry, "cloudlog_worker_batches_refused_total", status="422") == 1
    assert value(registry, "cloudlog_worker_events_refused_total") == 3
    assert value(registry, "cloudlog_worker_retries_total", cause="server_error") == 0
    dead = "cloudlog_worker_batches_dead_lettered_total"
    assert value(registry, dead, cause="http_401") == 1
    assert value(registry, dead, cause="http_422") == 1
    assert value(registry, "cloudlog_worker_events_dead_lettered_total", cause="http_401") == 2


def test_bad_answers_and_oversized_batches_are_counted_by_cause(deliver: Any) -> None:
    task, metrics = deliver([(200, {}, b"<html>maintenance</html>"), (200, {})])
    task.apply(**sent(EVENTS)).get()
    task.apply(args=["[]" * 10], kwargs={"encoding": "json", "event_count": 20_000}).get()
    registry = metrics.registry
    assert value(registry, "cloudlog_worker_retries_total", cause="bad_answer") == 1
    assert value(registry, "cloudlog_worker_batches_delivered_total") == 1
    dead = "cloudlog_worker_batches_dead_lettered_total"
    assert value(registry, dead, cause="oversized") == 1


def test_every_cause_is_exported_at_zero_from_the_start() -> None:
    metrics = WorkerMetrics()
    for cause in DEAD_LETTER_CAUSES:
        assert (
            metrics.registry.get_sample_value(
                "cloudlog_worker_batches_dead_lettered_total", {"cause": cause}
            )
            == 0.0
        )
    for cause in RETRY_CAUSES:
        assert (
            metrics.registry.get_sample_value("cloudlog_worker_retries_total", {"cause": cause})
            == 0.0
        )


def test_the_metrics_server_serves_the_registry_on_its_port() -> None:
    metrics = WorkerMetrics()
    metrics.events_written.inc(7)
    port = free_port()
    server = serve_metrics(WorkerSettings(worker_metrics_port=port), metrics)
    assert server is not None
    try:
        text = httpx.get(f"http://{LOOPBACK}:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    assert "cloudlog_worker_events_written_total 7.0" in text
    assert 'cloudlog_worker_retries_total{cause="throttled"} 0.0' in text


def test_port_zero_serves_nothing_and_a_taken_port_is_an_error() -> None:
    assert serve_metrics(WorkerSettings(worker_metrics_port=0), WorkerMetrics()) is None
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            serve_metrics(WorkerSettings(worker_metrics_port=port), WorkerMetrics())


def test_the_defaults_listen_on_loopback_9808() -> None:
    settings = WorkerSettings()
    assert (settings.worker_metrics_host, settings.worker_metrics_port) == ("127.0.0.1", 9808)
