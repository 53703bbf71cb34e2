"""A tenant's slow or heavy work does not delay or refuse another tenant (issue 14, items 5, 6),
with real processes: the emulator and uvicorn ingest, reached through the strict fault proxy.

The proxy throttles CreateLogStream to 50 calls per second (AWS's per-account quota, which moto
does not enforce: ThrottlingException past it, from a token bucket in this test's subclass) and
holds the flooding tenants' PutLogEvents calls for a while, so that their events pile up in
ingest as they would behind a slow or throttled endpoint.

(a) Tenant A posts 10,000 events, each to a new ~490-character stream, in requests of 100,
    while tenant B sends a 1-event request every 100 ms: B never sees a 5xx and its p99 stays
    under 1 s; A gets 429 with Retry-After for what exceeds its new-stream quota, and every
    event A had admitted is written.
(b) Two tenants flood (their writes slow), a third logs quietly: the third is never refused and
    ``/readyz`` answers 200 throughout.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.awsproxy import PUT_LOG_EVENTS, AwsProxy, FaultRule
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import LOOPBACK, free_port
from cloudlog_ingest.tenants import TenantRegistry
from tests.conftest import log_event, read_stream

pytestmark = pytest.mark.integration

CREATE_LOG_STREAM = "logs.CreateLogStream"
CREATE_RATE = 50.0  # CreateLogStream calls per second the "account" allows (AWS: about 50)
NEW_STREAMS_RATE = 40.0  # per tenant, below the account's rate
NEW_STREAMS_BURST = 200
STREAM_CHARS = 490
FLOOD_MARK = b"flood"  # PutLogEvents to groups named with it are held FLOOD_HOLD_S
FLOOD_HOLD_S = 3.0
MAX_PENDING = 20_000
MAX_PENDING_PER_TENANT = 10_000
# Each flooding tenant keeps 12,500 events in flight: enough to reach its own bound, and before
# the fix two of them filled the whole of MAX_PENDING (the quiet tenant then got 429, /readyz 503).
FLOOD_BATCH = 2_500
FLOOD_THREADS = 5


class AccountProxy(AwsProxy):
    """The strict proxy, plus what the fault rules cannot say: a rate limit on CreateLogStream
    (a token bucket, like AWS's per-account quota) and a slow PutLogEvents for flooders."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, seed=1)
        self._bucket_lock = threading.Lock()
        self._create_tokens = CREATE_RATE
        self._create_updated = time.monotonic()
        self.creations_throttled = 0

    def _decide(self, action: str) -> FaultRule | None:
        if action == CREATE_LOG_STREAM:
            with self._bucket_lock:
                now = time.monotonic()
                refill = (now - self._create_updated) * CREATE_RATE
                self._create_tokens = min(CREATE_RATE, self._create_tokens + refill)
                self._create_updated = now
                if self._create_tokens < 1:
                    self.creations_throttled += 1
                    return FaultRule("throttle", action)
                self._create_tokens -= 1
        return super()._decide(action)

    def _process(self, handler: Any, body: bytes) -> Any:
        if FLOOD_MARK in body[:300] and handler.headers.get("X-Amz-Target", "").endswith(
            PUT_LOG_EVENTS.split(".")[1]
        ):
            time.sleep(FLOOD_HOLD_S)
        return super()._process(handler, body)


@pytest.fixture(scope="module")
def account(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalPipeline, AccountProxy]]:
    """Emulator and ingest (no worker: the tests post to ingest themselves), ingest reaching
    CloudWatch Logs through the proxy."""
    log_dir = Path(tmp_path_factory.mktemp("fairness-streams"))
    emulator_port = free_port()
    proxy = AccountProxy(f"http://{LOOPBACK}:{emulator_port}")
    proxy.start()
    running = LocalPipeline(
        log_dir=log_dir,
        emulator_port=emulator_port,
        ingest_port=free_port(),
        logs_endpoint_url=proxy.url,
        extra_env={
            "CLOUDLOG_INGEST_NEW_STREAMS_PER_SECOND": str(NEW_STREAMS_RATE),
            "CLOUDLOG_INGEST_NEW_STREAMS_BURST": str(NEW_STREAMS_BURST),
            "CLOUDLOG_INGEST_MAX_PENDING_EVENTS": str(MAX_PENDING),
            "CLOUDLOG_INGEST_MAX_PENDING_EVENTS_PER_TENANT": str(MAX_PENDING_PER_TENANT),
            "CLOUDLOG_INGEST_READY_CACHE_SECONDS": "0.5",
        },
    )
    try:
        running.start_emulator()
        running.start_ingest()
        yield running, proxy
    finally:
        running.stop()
        proxy.stop()


def new_tenant(pipeline: LocalPipeline, name: str, rate: float = 1_000_000) -> tuple[str, str]:
    """(its log group prefix, its key); ingest sees it within its reload interval."""
    registry = TenantRegistry.load(pipeline.log_dir / "tenants.json")
    tenant, key = registry.create(f"{name}-{uuid.uuid4().hex[:6]}", rate=rate, burst=int(rate))
    return tenant.log_group_prefix, key


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def test_new_streams_of_one_tenant_do_not_delay_another(
    account: tuple[LocalPipeline, AccountProxy],
) -> None:
    pipeline, proxy = account
    a_prefix, a_key = new_tenant(pipeline, "streams-a")
    _, b_key = new_tenant(pipeline, "streams-b")
    time.sleep(1.2)  # ingest re-reads the registry at most once a second
    url = f"{pipeline.ingest_url}/v1/logs"
    with httpx.Client(headers={"Authorization": f"Bearer {b_key}"}, timeout=60) as calm:
        # B's stream exists before A starts (a calm tenant logging to its usual stream).
        assert calm.post(url, json={"events": [log_event("calm", "s", "hello")]}).status_code == 200

        stop = threading.Event()
        admitted: list[list[str]] = []  # the streams of each request A had admitted
        a_statuses: list[int] = []
        retry_afters: list[str] = []
        lock = threading.Lock()
        a_started = time.monotonic()

        def flood(part: int) -> None:
            with httpx.Client(headers={"Authorization": f"Bearer {a_key}"}, timeout=120) as http:
                for start in range(part * 5_000, (part + 1) * 5_000, 100):
                    if stop.is_set():
                        return
                    streams = [
                        f"n{start + i:05d}-{uuid.uuid4().hex}".ljust(STREAM_CHARS, "x")
                        for i in range(100)
                    ]
                    body = {"events": [log_event("new", s, f"line {s[:6]}") for s in streams]}
                    response = http.post(url, json=body)
                    with lock:
                        a_statuses.append(response.status_code)
                        if response.status_code == 200:
                            assert response.json()["written"] == 100, response.text
                            admitted.append(streams)
                        elif response.status_code == 429:
                            retry_afters.append(response.headers.get("Retry-After", ""))
                    if response.status_code == 429:
                        stop.wait(0.2)  # keep pressing, sooner than Retry-After asks

        flooders = [threading.Thread(target=flood, args=(part,)) for part in range(2)]
        for thread in flooders:
            thread.start()
        latencies: list[float] = []
        b_statuses: list[int] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = calm.post(url, json={"events": [log_event("calm", "s", "tick")]})
            latencies.append(time.monotonic() - started)
            b_statuses.append(response.status_code)
            time.sleep(0.1)
        stop.set()
        for thread in flooders:
            thread.join(180)
        a_seconds = time.monotonic() - a_started

    streams_written = sum(len(streams) for streams in admitted)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"\nB: {len(latencies)} requests, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms; A: {len(a_statuses)} requests, "
        f"{a_statuses.count(200)} admitted ({streams_written} new streams, "
        f"{streams_written / a_seconds:.1f}/s), {a_statuses.count(429)} refused (429); "
        f"proxy throttled {proxy.creations_throttled} CreateLogStream calls"
    )
    assert not [status for status in b_statuses if status >= 500], b_statuses
    assert set(b_statuses) == {200}, "the calm tenant was never refused"
    assert p99 < 1.0, f"B's p99 {p99:.2f} s"
    assert a_statuses.count(429) > 0 and all(value.isdigit() for value in retry_afters)
    assert set(a_statuses) <= {200, 429}, a_statuses
    # What A got through stays near its quota: the burst plus the rate, one request of slack.
    assert streams_written <= NEW_STREAMS_BURST + NEW_STREAMS_RATE * a_seconds + 100
    # Everything A had admitted was written (answered "written" above), and is there.
    client = make_client("logs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))
    stored: set[str] = set()
    paginator = client.get_paginator("describe_log_streams")
    for page in paginator.paginate(logGroupName=a_prefix + "new"):
        stored.update(stream["logStreamName"] for stream in page["logStreams"])
    assert stored == {s for streams in admitted for s in streams}
    for streams in admitted[:: max(1, len(admitted) // 5)]:
        assert len(read_stream(client, a_prefix + "new", streams[0])) == 1


def test_two_floods_leave_room_and_readiness_for_a_quiet_tenant(
    account: tuple[LocalPipeline, AccountProxy],
) -> None:
    pipeline, _ = account
    flood_keys = [new_tenant(pipeline, "flood-one")[1], new_tenant(pipeline, "flood-two")[1]]
    quiet_prefix, quiet_key = new_tenant(pipeline, "quiet")
    time.sleep(1.2)
    url = f"{pipeline.ingest_url}/v1/logs"
    stop = threading.Event()
    flood_statuses: list[int] = []
    lock = threading.Lock()

    def flood(key: str) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            while not stop.is_set():
                body = {"events": [log_event("flood", "s", f"m{i}") for i in range(FLOOD_BATCH)]}
                status = http.post(url, json=body).status_code
                with lock:
                    flood_statuses.append(status)
                if status == 429:
                    stop.wait(0.05)

    flooders = [
        threading.Thread(target=flood, args=(key,))
        for key in flood_keys
        for _ in range(FLOOD_THREADS)
    ]
    for thread in flooders:
        thread.start()
    ready_statuses: list[int] = []

    def probe() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                ready_statuses.append(http.get(f"{pipeline.ingest_url}/readyz").status_code)
                stop.wait(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    quiet_statuses: list[int] = []
    latencies: list[float] = []
    with httpx.Client(headers={"Authorization": f"Bearer {quiet_key}"}, timeout=60) as quiet:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = quiet.post(url, json={"events": [log_event("quiet", "s", "tick")]})
            latencies.append(time.monotonic() - started)
            quiet_statuses.append(response.status_code)
            time.sleep(0.1)
    stop.set()
    for thread in [*flooders, prober]:
        thread.join(180)

    print(
        f"\nfloods: {len(flood_statuses)} requests, {flood_statuses.count(429)} refused (429); "
        f"quiet: {len(quiet_statuses)} requests, p99 {percentile(latencies, 0.99) * 1000:.0f} ms; "
        f"/readyz: {len(ready_statuses)} probes, {ready_statuses.count(200)} ready"
    )
    assert flood_statuses.count(429) > 0, "the floods reached their bound"
    assert set(quiet_statuses) == {200}, "the quiet tenant was never refused"
    # Nor kept waiting behind the floods' slow writes (a loose bound: the floods' bodies keep
    # the 2 cores busy; before the fix, one quiet request took 10 s).
    assert percentile(latencies, 0.99) < 2.0
    assert set(ready_statuses) == {200}, "the instance stayed ready"
    client = make_client("logs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))
    assert len(read_stream(client, quiet_prefix + "quiet", "s")) == len(quiet_statuses)
