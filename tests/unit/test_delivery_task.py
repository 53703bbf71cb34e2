"""The delivery task against a scripted HTTP server on loopback: what it retries and not."""

from __future__ import annotations

import base64
import gc
import json
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from celery import Celery
from celery.exceptions import Reject

from cloudlog_wire.payload import TaskCompression, encode, events_json, task_kwargs
from cloudlog_worker.settings import WorkerSettings
from cloudlog_worker.tasks import register_tasks, retry_countdown

EVENTS = [{"event_id": "e1", "timestamp": 1, "log_group": "g", "log_stream": "s", "message": "m"}]


class ScriptedIngest:
    """Answers each POST with the next (status, headers) of its script; records the calls."""

    def __init__(
        self, script: list[tuple[int, dict[str, str]]], answer: dict[str, Any] | None = None
    ) -> None:
        self.script = list(script)
        answer = answer or {"written": 1, "rejected": 0, "results": []}
        self.calls: list[dict[str, Any]] = []
        self.raw: list[tuple[bytes, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                owner.calls.append(
                    {"body": json.loads(raw), "auth": self.headers.get("Authorization")}
                )
                owner.raw.append((raw, self.headers.get("Content-Type")))
                status, headers = owner.script.pop(0) if owner.script else (200, {})
                payload = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def make_task() -> Iterator[Any]:
    servers: list[ScriptedIngest] = []

    def build(
        script: list[tuple[int, dict[str, str]]], **settings: Any
    ) -> tuple[Any, ScriptedIngest]:
        ingest = ScriptedIngest(script)
        servers.append(ingest)
        app = Celery("test", set_as_current=False)
        app.conf.task_always_eager = True
        worker = WorkerSettings(
            ingest_url=ingest.url, retry_backoff_base=0.01, retry_backoff_max=0.02, **settings
        )
        return register_tasks(app, worker), ingest

    yield build
    for server in servers:
        server.close()


def test_a_200_is_delivered_once_with_the_api_key(make_task: Any) -> None:
    task, ingest = make_task([(200, {})], api_key="k-123")
    assert task.apply(**sent(EVENTS)).get() == {"written": 1, "rejected": 0}
    assert len(ingest.calls) == 1
    assert ingest.calls[0] == {"body": {"events": EVENTS}, "auth": "Bearer k-123"}


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_5xx_and_429_are_retried_until_ingest_takes_the_batch(make_task: Any, status: int) -> None:
    task, ingest = make_task([(status, {}), (status, {}), (200, {})])
    assert task.apply(**sent(EVENTS)).get()["written"] == 1
    assert len(ingest.calls) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
def test_other_4xx_are_not_retried(make_task: Any, status: int) -> None:
    task, ingest = make_task([(status, {})])
    result = task.apply(**sent(EVENTS)).get()
    assert result == {"written": 0, "refused": 1, "status": status}
    assert len(ingest.calls) == 1


def test_past_max_retries_the_message_is_rejected_for_the_dead_letter_queue(
    make_task: Any,
) -> None:
    task, ingest = make_task([(503, {})] * 10, max_retries=2)
    outcome = task.apply(**sent(EVENTS))
    assert isinstance(outcome.result, Reject) and outcome.result.requeue is True
    assert len(ingest.calls) == 3  # the first try and two retries


def live_responses() -> int:
    # type(), not isinstance(): isinstance() would make Celery's lazy proxies load their app.
    return sum(type(o) is httpx.Response for o in gc.get_objects())


def test_a_delivered_batch_is_freed_by_reference_counting_alone(make_task: Any) -> None:
    """httpx links a response and its stream both ways; left so, each response, its request
    and the whole batch it carried would wait for a full garbage collection (rare in a busy
    worker: its memory grew linearly under load)."""
    task, _ = make_task([])
    assert task.apply(**sent(EVENTS)).get()["written"] == 1  # the client and its connection
    gc.collect()
    gc.disable()
    try:
        before = live_responses()
        for _ in range(20):
            assert task.apply(**sent(EVENTS)).get()["written"] == 1
        assert live_responses() == before
    finally:
        gc.enable()


def test_retry_after_is_honoured_and_capped() -> None:
    settings = WorkerSettings(retry_backoff_base=0.5, retry_backoff_max=30)
    assert all(retry_countdown(0, settings, retry_after=7) >= 7 for _ in range(50))
    assert all(retry_countdown(0, settings, retry_after=900) <= 30 for _ in range(50))
    assert all(0 <= retry_countdown(3, settings, None) <= 4.0 for _ in range(200))
    assert all(retry_countdown(50, settings, None) <= 30 for _ in range(50))


def encoded(
    events: list[dict[str, Any]], compression: TaskCompression
) -> tuple[str, dict[str, Any]]:
    """args[0] and kwargs of a task as the publisher sends it (without a key)."""
    data, encoding = encode(events_json(events), compression)
    return data, task_kwargs(encoding, len(events), None)


def sent(events: list[dict[str, Any]]) -> dict[str, Any]:
    """``Task.apply`` arguments for a batch as the publisher sends it (zlib, without a key)."""
    data, kwargs = encoded(events, TaskCompression.ZLIB)
    return {"args": [data], "kwargs": kwargs}


@pytest.mark.parametrize("compression", list(TaskCompression))
def test_an_encoded_batch_is_posted_as_it_was_serialised(
    make_task: Any, compression: TaskCompression
) -> None:
    events = [*EVENTS, {**EVENTS[0], "event_id": "e2", "message": 'ünï 🚀 "q"', "fields": {}}]
    task, ingest = make_task([(200, {})], api_key="k-123")
    data, kwargs = encoded(events, compression)
    assert task.apply(args=[data], kwargs=kwargs).get() == {"written": 1, "rejected": 0}
    assert ingest.calls == [{"body": {"events": events}, "auth": "Bearer k-123"}]
    ((raw, content_type),) = ingest.raw
    assert raw == b'{"events":' + events_json(events) + b"}"
    assert content_type == "application/json"


def test_the_apps_key_travels_as_a_keyword_and_wins(make_task: Any) -> None:
    task, ingest = make_task([(200, {})], api_key="worker-key")
    data, kwargs = encoded(EVENTS, TaskCompression.ZLIB)
    task.apply(args=[data], kwargs={**kwargs, "api_key": "app-key"}).get()
    assert ingest.calls[0]["auth"] == "Bearer app-key"


def test_a_batch_as_a_list_of_events_is_left_to_the_dead_letter_queue(make_task: Any) -> None:
    """Only the encoded form is published; a list argument is a foreign or corrupt task."""
    task, ingest = make_task([(200, {})])
    outcome = task.apply(args=[EVENTS], kwargs={"api_key": "k-old"})
    assert isinstance(outcome.result, Reject) and outcome.result.requeue is True
    assert ingest.calls == []


def test_a_refused_encoded_batch_counts_its_events_without_parsing(make_task: Any) -> None:
    events = [{**EVENTS[0], "event_id": f"e{n}"} for n in range(7)]
    task, _ = make_task([(422, {})])
    data, kwargs = encoded(events, TaskCompression.ZLIB)
    assert task.apply(args=[data], kwargs=kwargs).get() == {
        "written": 0,
        "refused": 7,
        "status": 422,
    }


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("bm90IHpsaWI=", "zlib+base64"),  # base64, but not zlib
        ("%%%", "zlib+base64"),
        (base64.b64encode(zlib.compress(b'[{"a":1}]')[:-6]).decode(), "zlib+base64"),
        ("[]", "brotli+base64"),
    ],
)
def test_an_undecodable_batch_is_left_to_the_dead_letter_queue(
    make_task: Any, data: str, encoding: str
) -> None:
    task, ingest = make_task([(200, {})])
    outcome = task.apply(args=[data], kwargs={"encoding": encoding, "event_count": 1})
    assert isinstance(outcome.result, Reject) and outcome.result.requeue is True
    assert ingest.calls == []
