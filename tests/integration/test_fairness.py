"""One tenant floods far past its rate; another logs modestly and is not starved."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_ingest.tenants import TenantRegistry
from tests.conftest import read_stream

pytestmark = pytest.mark.integration

DURATION_S = 8.0
FLOOD_RATE = 300.0  # events/s the flooding tenant is allowed
FLOOD_BATCH = 200
CALM_INTERVAL_S = 0.05  # the calm tenant: one event every 50 ms


def batch(group: str, count: int) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "events": [
            {
                "event_id": uuid.uuid4().hex,
                "timestamp": now,
                "log_group": group,
                "log_stream": "s",
                "message": f"m{i}",
            }
            for i in range(count)
        ]
    }


def test_a_flooding_tenant_does_not_starve_a_calm_one(
    pipeline: LocalPipeline, logs_client: Any
) -> None:
    registry = TenantRegistry.load(pipeline.log_dir / "tenants.json")
    suffix = uuid.uuid4().hex[:6]
    _, flood_key = registry.create(f"flood-{suffix}", rate=FLOOD_RATE, burst=int(FLOOD_RATE))
    calm, calm_key = registry.create(f"calm-{suffix}", rate=1_000, burst=1_000)
    time.sleep(1.2)  # ingest re-reads the registry at most once a second
    stop_at = time.monotonic() + DURATION_S
    flood_statuses: list[int] = []
    lock = threading.Lock()

    def flood() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {flood_key}"}, timeout=30) as http:
            for _ in range(5_000):  # bounded in count as well as in time
                if time.monotonic() > stop_at:
                    return
                status = http.post(f"{pipeline.ingest_url}/v1/logs", json=batch("f", FLOOD_BATCH))
                with lock:
                    flood_statuses.append(status.status_code)

    flooders = [threading.Thread(target=flood) for _ in range(3)]
    for thread in flooders:
        thread.start()
    calm_latencies: list[float] = []
    calm_statuses: list[int] = []
    with httpx.Client(headers={"Authorization": f"Bearer {calm_key}"}, timeout=30) as http:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            response = http.post(f"{pipeline.ingest_url}/v1/logs", json=batch("c", 1))
            calm_latencies.append(time.monotonic() - started)
            calm_statuses.append(response.status_code)
            time.sleep(CALM_INTERVAL_S)
    for thread in flooders:
        thread.join(60)

    admitted = flood_statuses.count(200) * FLOOD_BATCH
    calm_latencies.sort()
    p99 = calm_latencies[int(len(calm_latencies) * 0.99) - 1]
    print(
        f"flood: {len(flood_statuses)} requests, {flood_statuses.count(429)} refused (429), "
        f"{admitted} events admitted; calm: {len(calm_statuses)} requests, "
        f"p50 {calm_latencies[len(calm_latencies) // 2] * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    assert flood_statuses.count(429) > 10 * flood_statuses.count(200), "the flood was throttled"
    # What got through stays near the flooding tenant's rate (one overdraft batch of slack).
    assert admitted <= FLOOD_RATE * (DURATION_S + 1) + 2 * FLOOD_BATCH
    assert set(calm_statuses) == {200}, "the calm tenant was never refused"
    stored = read_stream(logs_client, calm.log_group_prefix + "c", "s")
    assert len(stored) == len(calm_statuses), "every calm line arrived, once"
    assert p99 < 2.0, "the calm tenant's latency stayed bounded (a loose bound)"
