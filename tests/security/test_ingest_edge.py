"""Attacks on ingest's edge, against a real uvicorn process (issue 14, items 4, 7, 8, 14).

One pipeline of this module's own (emulator and ingest, no worker), with a short body timeout so
that stalled uploads are cut within the test. Two tenants: ``calm`` (the pipeline's own) and
``mallory``, added to the registry.
"""

from __future__ import annotations

import json
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import LOOPBACK, free_port
from cloudlog_ingest.schemas import MAX_FIELDS_DEPTH, MAX_TIMESTAMP_MS
from cloudlog_ingest.tenants import TenantRegistry

pytestmark = pytest.mark.integration

BODY_TIMEOUT_SECONDS = 4.0
STALLED_BODY_BYTES = 15 * 1024 * 1024
STALLED_CONNECTIONS = 12


class Edge:
    def __init__(self, pipeline: LocalPipeline, mallory_key: str) -> None:
        self.pipeline = pipeline
        self.url = pipeline.ingest_url
        self.calm_key = pipeline.api_key
        self.mallory_key = mallory_key
        assert pipeline.ingest is not None
        self.pid = pipeline.ingest.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def post(self, path: str, key: str | None, **kwargs: Any) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        headers.update(kwargs.pop("headers", {}))
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    log_dir = Path(tmp_path_factory.mktemp("ingest-edge"))
    pipeline = LocalPipeline(
        log_dir=log_dir,
        emulator_port=free_port(),
        ingest_port=free_port(),
        extra_env={
            "CLOUDLOG_INGEST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS),
            # a folder ingest makes itself, to check its mode
            "CLOUDLOG_INGEST_JOURNAL_PATH": str(log_dir / "state" / "ingest.journal"),
        },
    )
    try:
        pipeline.start_emulator()
        registry = TenantRegistry.load(log_dir / "tenants.json")
        _, mallory_key = registry.create(f"mallory-{uuid.uuid4().hex[:6]}", rate=1e6, burst=10**6)
        pipeline.start_ingest()
        yield Edge(pipeline, mallory_key)
    finally:
        pipeline.stop()


def event(**change: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "timestamp": int(time.time() * 1000),
        "log_group": "edge/app",
        "log_stream": "web-1",
        "message": "hello",
        **change,
    }


def batch(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


# -- (a) a lone surrogate fails its own request alone ------------------------------------------


def test_a_lone_surrogate_is_a_422_and_fails_no_other_tenant(edge: Edge) -> None:
    # json.dumps writes "\ud800" as the escape the attack sent: valid JSON, invalid Unicode.
    poisoned = batch(event(log_stream="web-\ud800"))
    assert b"\\ud800" in poisoned
    seed_poisoned = json.dumps(
        {"log_group": "edge/app", "log_stream": "\ud800", "log_message": "m"}
    ).encode()
    json_headers = {"content-type": "application/json"}

    def attack(_: int) -> httpx.Response:
        return edge.post("/v1/logs", edge.mallory_key, content=poisoned, headers=json_headers)

    def calm(_: int) -> httpx.Response:
        return edge.post("/v1/logs", edge.calm_key, content=batch(event(), event()))

    with ThreadPoolExecutor(8) as pool:
        attacks = [pool.submit(attack, i) for i in range(40)]
        calms = [pool.submit(calm, i) for i in range(40)]
        attack_answers = [future.result() for future in attacks]
        calm_answers = [future.result() for future in calms]
    assert {answer.status_code for answer in attack_answers} == {422}
    assert attack_answers[0].json()["errors"][0].startswith("events.0.log_stream: ")
    assert [answer.status_code for answer in calm_answers] == [200] * 40
    assert all(answer.json()["written"] == 2 for answer in calm_answers)
    seed = edge.post("/logs", edge.mallory_key, content=seed_poisoned, headers=json_headers)
    assert seed.status_code == 422
    assert seed.json()["errors"][0].startswith("log_stream: ")
    for field in ("log_group", "message", "logger", "event_id"):
        response = edge.post(
            "/v1/logs",
            edge.mallory_key,
            content=batch(event(**{field: "x\udfff"})),
            headers=json_headers,
        )
        assert response.status_code == 422, field
        assert response.json()["errors"][0].startswith(f"events.0.{field}: "), field


# -- (b) stalled uploads ------------------------------------------------------------------------


def _open_stalled_upload(edge: Edge, key: str | None) -> socket.socket:
    host, port = edge.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/logs HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {STALLED_BODY_BYTES}\r\n\r\n"
    ).encode()
    sock.sendall(head + b'{"events": [' + b" " * 32 * 1024)
    return sock


def _push_more(sock: socket.socket, size: int) -> int:
    """Send up to ``size`` more body bytes, as far as the server lets them in: bytes sent."""
    sock.setblocking(False)
    sent = 0
    chunk = b" " * 65536
    deadline = time.monotonic() + 1.0
    try:
        while sent < size and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
    except OSError:
        pass  # the server closed the connection: good
    finally:
        sock.setblocking(True)
    return sent


def _answer_and_close(sock: socket.socket, timeout: float) -> tuple[int | None, float | None]:
    """(status of the answer, seconds until the server closed), None for what did not come."""
    sock.settimeout(0.2)
    started = time.monotonic()
    data = b""
    closed_after: float | None = None
    while time.monotonic() - started < timeout:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset: the server closed a connection it had not read to the end
            closed_after = time.monotonic() - started
            break
        if not chunk:
            closed_after = time.monotonic() - started
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, closed_after


def _calm_latencies(edge: Edge, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {edge.calm_key}"}, timeout=30) as client:
        while not stop.is_set():
            started = time.monotonic()
            response = client.post(
                f"{edge.url}/v1/logs",
                content=batch(event()),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 200, response.text
            out.append(time.monotonic() - started)
            time.sleep(0.05)


def test_unauthenticated_stalled_uploads_cost_nothing_and_are_closed(edge: Edge) -> None:
    before = edge.rss_kib()
    stop = threading.Event()
    latencies: list[float] = []
    calm = threading.Thread(target=_calm_latencies, args=(edge, stop, latencies))
    calm.start()
    try:
        sockets = [_open_stalled_upload(edge, None) for _ in range(STALLED_CONNECTIONS)]
        answers = [_answer_and_close(sock, BODY_TIMEOUT_SECONDS + 2) for sock in sockets]
        pushed = [_push_more(sock, 2 * 1024 * 1024) for sock in sockets]
        during = edge.rss_kib()
        time.sleep(1.0)
        for sock in sockets:
            sock.close()
    finally:
        stop.set()
        calm.join()
    growth_kib = during - before
    print(f"RSS {before} -> {during} KiB (+{growth_kib}); pushed after the 401: {pushed}")
    print(f"calm latencies: max {max(latencies):.3f}s over {len(latencies)} requests")
    assert [status for status, _ in answers] == [401] * STALLED_CONNECTIONS
    assert all(closed is not None and closed < BODY_TIMEOUT_SECONDS for _, closed in answers)
    assert growth_kib < 20 * 1024
    assert latencies and max(latencies) < 2.0


def test_authenticated_stalled_uploads_are_bounded_and_cut_at_the_body_timeout(
    edge: Edge,
) -> None:
    before = edge.rss_kib()
    stop = threading.Event()
    latencies: list[float] = []
    calm = threading.Thread(target=_calm_latencies, args=(edge, stop, latencies))
    calm.start()
    try:
        sockets = [_open_stalled_upload(edge, edge.mallory_key) for _ in range(STALLED_CONNECTIONS)]
        pushed = [_push_more(sock, 1024 * 1024) for sock in sockets]
        during = edge.rss_kib()
        answers = [_answer_and_close(sock, BODY_TIMEOUT_SECONDS + 3) for sock in sockets]
        for sock in sockets:
            sock.close()
    finally:
        stop.set()
        calm.join()
    growth_kib = during - before
    statuses = [status for status, _ in answers]
    print(f"RSS {before} -> {during} KiB (+{growth_kib}); pushed {sum(pushed)} bytes")
    print(f"statuses {statuses}; calm max latency {max(latencies):.3f}s")
    # 15 MB each: the tenant's half of the 64 MiB in flight holds two; the rest are refused
    # at once (429, Retry-After); the two held are cut at the body timeout (408).
    assert statuses.count(408) == 2
    assert set(statuses) <= {408, 429, 503}
    assert all(closed is not None for _, closed in answers)
    assert growth_kib < 20 * 1024
    assert latencies and max(latencies) < 2.0


# -- (c) deep fields ------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [MAX_FIELDS_DEPTH + 1, 952, 5000])
def test_deep_fields_are_a_422_naming_the_field(edge: Edge, depth: int) -> None:
    # fields itself is the first level
    body = '{"events": [' + json.dumps(event())[:-1] + ', "fields": {"x": '
    body += "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}}]}"
    response = edge.post(
        "/v1/logs", edge.calm_key, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0].startswith("events.0.fields: ")
    anonymous = edge.post("/v1/logs", None, content=body)
    assert anonymous.status_code == 401


def test_fields_as_deep_as_allowed_are_written(edge: Edge) -> None:
    deepest = event(fields={"x": nested(MAX_FIELDS_DEPTH - 1)})
    response = edge.post("/v1/logs", edge.calm_key, json={"events": [deepest]})
    assert response.status_code == 200, response.text
    assert response.json()["written"] == 1


# -- (d) stream names ------------------------------------------------------------------------------

BAD_STREAMS = [
    "a\u009bb",  # C1 control (CSI)
    "a\u202eb",  # right-to-left override
    "a\u2066b",  # left-to-right isolate
    "a\u2028b",  # line separator
    "a\u2029b",  # paragraph separator
    "a\u200bb",  # zero-width space
    "\ufeffweb",  # byte order mark
    "_REJECTED",
    "_rejected ",
    " _rejected",
    "_re\u200bjected",
    "_r\u0435jected",  # Cyrillic ie
    "\uff3frejected",  # full-width low line
    "_rejecte\u0501",  # Cyrillic komi de for d
]


@pytest.mark.parametrize("stream", BAD_STREAMS)
def test_bad_stream_names_are_refused_naming_the_field(edge: Edge, stream: str) -> None:
    # /v1/logs answers per event (the batch's other events would be written); /logs with 403
    response = edge.post("/v1/logs", edge.calm_key, json={"events": [event(log_stream=stream)]})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert (result["status"], result["reason"]) == ("rejected", "forbidden_name")
    assert result["detail"].startswith("events.0.log_stream: ")
    seed = edge.post(
        "/logs",
        edge.calm_key,
        json={"log_group": "edge/app", "log_stream": stream, "log_message": "m"},
    )
    assert seed.status_code == 403
    assert seed.json()["detail"].startswith("log_stream: ")


def test_ordinary_unicode_stream_names_are_still_taken(edge: Edge) -> None:
    for stream in ("café", "web-1 (eu)", "日志", "_rejected-not", "rejected"):
        response = edge.post("/v1/logs", edge.calm_key, json={"events": [event(log_stream=stream)]})
        assert response.status_code == 200, (stream, response.text)


# -- (e) the journal's modes ----------------------------------------------------------------------


def test_the_journal_is_readable_by_its_owner_alone(edge: Edge) -> None:
    assert edge.post("/v1/logs", edge.calm_key, content=batch(event())).status_code == 200
    journal = edge.pipeline.log_dir / "state" / "ingest.journal"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o700


# -- (f) timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize("timestamp", ["1" + "0" * 30, "-1", str(MAX_TIMESTAMP_MS + 1)])
def test_timestamps_out_of_any_real_range_are_422s(edge: Edge, timestamp: str) -> None:
    text = json.dumps({"events": [event(timestamp=0)]})
    text = text.replace('"timestamp": 0', f'"timestamp": {timestamp}')
    response = edge.post(
        "/v1/logs", edge.calm_key, content=text, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0].startswith("events.0.timestamp: ")


def test_the_last_timestamp_taken_is_rejected_as_too_new_not_refused(edge: Edge) -> None:
    response = edge.post(
        "/v1/logs", edge.calm_key, json={"events": [event(timestamp=MAX_TIMESTAMP_MS)]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["reason"] == "too_new"
