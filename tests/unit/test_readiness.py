"""/readyz: CloudWatch answering (with fakes for the call) and the writer's backlog."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from cloudlog_ingest.readiness import CloudWatchCheck, pending_check
from tests.unit.test_ingest_app import FakeWriter, batch_event, running
from tests.unit.writer.writer_fakes import client_error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def check(probe: Callable[[], None], clock: Clock | None = None, **options: Any) -> CloudWatchCheck:
    return CloudWatchCheck(
        probe,
        timeout_seconds=options.get("timeout_seconds", 1.0),
        cache_seconds=options.get("cache_seconds", 5.0),
        clock=clock or Clock(),
    )


def test_an_answer_is_reused_for_the_cache_period_then_asked_again() -> None:
    clock = Clock()
    cloudwatch = check(lambda: None, clock)
    assert asyncio.run(cloudwatch()).ok
    clock.now += 4.9
    assert asyncio.run(cloudwatch()).ok
    assert cloudwatch.calls == 1
    clock.now += 0.2
    assert asyncio.run(cloudwatch()).ok
    assert cloudwatch.calls == 2


def test_probes_at_once_share_one_call() -> None:
    def slow() -> None:
        time.sleep(0.05)

    cloudwatch = check(slow)

    async def many() -> list[bool]:
        return [result.ok for result in await asyncio.gather(*(cloudwatch() for _ in range(5)))]

    assert asyncio.run(many()) == [True] * 5
    assert cloudwatch.calls == 1


def test_no_answer_within_the_timeout_is_not_ready() -> None:
    release = threading.Event()
    cloudwatch = check(lambda: release.wait(5) and None, timeout_seconds=0.05)

    async def probe_once() -> tuple[bool, str, float]:
        started = time.monotonic()
        result = await cloudwatch()
        elapsed = time.monotonic() - started
        release.set()  # let the abandoned call end, so the loop can close
        return result.ok, result.detail, elapsed

    ok, detail, elapsed = asyncio.run(probe_once())
    assert not ok
    assert "did not answer within 0.05 s" in detail
    assert elapsed < 1


@pytest.mark.parametrize(
    ("error", "ok"),
    [
        (client_error("AccessDeniedException", op="DescribeLogGroups"), True),
        (client_error("ThrottlingException", op="DescribeLogGroups"), True),
        (client_error("ServiceUnavailableException", 503, op="DescribeLogGroups"), False),
        (client_error("UnrecognizedClientException", op="DescribeLogGroups"), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), False),
    ],
    ids=["access-denied", "throttled", "unavailable", "bad-credentials", "unreachable"],
)
def test_an_answer_that_refuses_the_call_still_shows_cloudwatch_reachable(
    error: Exception, ok: bool
) -> None:
    def probe() -> None:
        raise error

    result = asyncio.run(check(probe)())
    assert result.ok is ok
    assert result.detail.startswith("CloudWatch Logs")


def test_pending_is_ready_below_the_fraction_of_the_bound() -> None:
    assert pending_check(89, 100, 0.9).ok
    assert not pending_check(90, 100, 0.9).ok
    assert pending_check(0, 1, 0.9).ok, "a bound of one still lets an idle writer be ready"
    assert pending_check(90, 100, 0.9).detail == "90 events pending, ready below 90 (90% of 100)"


def test_readyz_is_200_when_cloudwatch_answers_and_the_writer_keeps_up() -> None:
    with running(FakeWriter(), cloudwatch_probe=lambda: None) as client:
        response = client.client.get("/readyz", headers=client.scraper)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and body["failed"] == []
    assert set(body["checks"]) == {"cloudwatch", "pending", "tenants"}
    assert body["degraded"] == [] and not body["checks"]["tenants"]["degraded"]


def test_readyz_is_503_naming_cloudwatch_when_it_does_not_answer() -> None:
    def unreachable() -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    with running(FakeWriter(), cloudwatch_probe=unreachable) as client:
        response = client.client.get("/readyz", headers=client.scraper)
        assert client.client.get("/healthz").status_code == 200, "alive all the same"
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["cloudwatch"]
    assert "unreachable" in body["checks"]["cloudwatch"]["detail"]


def test_readyz_is_503_naming_pending_when_the_writer_is_saturated() -> None:
    writer = FakeWriter()
    writer.release.clear()
    with running(
        writer,
        cloudwatch_probe=lambda: None,
        max_pending_events=10,
        ready_max_pending_fraction=0.5,
    ) as client:
        pipeline = client.app.state.pipeline  # type: ignore[attr-defined]
        backlog = threading.Thread(
            target=client.post,
            args=("/v1/logs",),
            kwargs={"json": {"events": [batch_event(n) for n in range(5)]}},
        )
        backlog.start()
        deadline = time.monotonic() + 10
        while pipeline.pending_events < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        saturated = client.client.get("/readyz", headers=client.scraper)
        writer.release.set()
        backlog.join(10)
        recovered = client.client.get("/readyz", headers=client.scraper)
    assert saturated.status_code == 503
    assert saturated.json()["failed"] == ["pending"]
    assert recovered.status_code == 200


def test_readyz_is_not_in_the_api_schema() -> None:
    with running(FakeWriter()) as client:
        paths = client.client.get("/openapi.json").json()["paths"]
    assert "/readyz" not in paths and "/metrics" not in paths
    assert "/healthz" in paths


def registry_ok_gauge(client: Any) -> str:
    lines = client.client.get("/metrics", headers=client.scraper).text.splitlines()
    return next(line for line in lines if line.startswith("cloudlog_ingest_tenant_registry_ok "))


def test_a_corrupt_registry_file_is_degraded_not_unready_and_requests_keep_working() -> None:
    with running(FakeWriter(), cloudwatch_probe=lambda: None) as client:
        state = client.app.state  # type: ignore[attr-defined]
        state.tenants_reload_seconds = 0.0  # re-read on every request
        path = state.tenants.path
        good = path.read_text()
        assert registry_ok_gauge(client).endswith(" 1.0")
        path.write_text(good[: len(good) // 2])  # truncated
        ready = client.client.get("/readyz", headers=client.scraper)
        accepted = client.post("/v1/logs", json={"events": [batch_event(1)]})
        gauge_while_corrupt = registry_ok_gauge(client)
        path.write_text(good)
        recovered = client.client.get("/readyz", headers=client.scraper)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["failed"] == [] and body["degraded"] == ["tenants"]
    detail = body["checks"]["tenants"]["detail"]
    assert "is corrupt" in detail and "last good registry (1 tenants)" in detail
    assert accepted.status_code < 300, accepted.text
    assert gauge_while_corrupt.endswith(" 0.0")
    assert recovered.json()["degraded"] == []
