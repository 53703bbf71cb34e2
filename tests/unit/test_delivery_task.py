"""The delivery task against a scripted HTTP server on loopback: what it retries and not."""

from __future__ import annotations

import base64
import gc
import json
import logging
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from celery import Celery
from celery.exceptions import Reject

from cloudlog_core.logging_json import JsonFormatter
from cloudlog_devtools.processes import LOOPBACK, free_port
from cloudlog_wire.payload import TaskCompression, encode, events_json, task_kwargs
from cloudlog_worker.settings import WorkerSettings
from cloudlog_worker.tasks import (
    DeadLetterMessage,
    celery_dead_letter_sender,
    register_tasks,
    retry_countdown,
)
from cloudlog_worker.worker import RedactingFormatter

EVENTS = [{"event_id": "e1", "timestamp": 1, "log_group": "g", "log_stream": "s", "message": "m"}]


def full_answer(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Ingest's answer for a batch it wrote whole: one result per event."""
    results = [{"event_id": e.get("event_id"), "status": "written"} for e in events]
    return {"written": len(events), "rejected": 0, "results": results}


Step = tuple[int, dict[str, str]] | tuple[int, dict[str, str], bytes]


class ScriptedIngest:
    """Answers each POST with the next (status, headers[, body]) of its script; records the calls.

    Without a body of its own a step answers ``answer``, or else ingest's full answer for the
    events posted."""

    def __init__(self, script: list[Step], answer: dict[str, Any] | None = None) -> None:
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []
        self.raw: list[tuple[bytes, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                posted = json.loads(raw)
                owner.calls.append({"body": posted, "auth": self.headers.get("Authorization")})
                owner.raw.append((raw, self.headers.get("Content-Type")))
                step: Step = owner.script.pop(0) if owner.script else (200, {})
                status, headers = step[0], step[1]
                if len(step) == 3:
                    payload = step[2]  # type: ignore[misc]
                else:
                    payload = json.dumps(answer or full_answer(posted["events"])).encode()
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


class DeadLetters(list[DeadLetterMessage]):
    """A dead-letter queue in memory: what the task sent it, in order."""

    fail = False

    def __call__(self, letter: DeadLetterMessage) -> None:
        if self.fail:
            raise ConnectionError("SQS unreachable")
        self.append(letter)


@pytest.fixture
def make_task() -> Iterator[Any]:
    servers: list[ScriptedIngest] = []

    def build(
        script: list[Step], answer: dict[str, Any] | None = None, **settings: Any
    ) -> tuple[Any, ScriptedIngest, DeadLetters]:
        ingest = ScriptedIngest(script, answer)
        servers.append(ingest)
        app = Celery("test", set_as_current=False)
        app.conf.task_always_eager = True
        worker = WorkerSettings(
            **{
                "ingest_url": ingest.url,
                "retry_backoff_base": 0.01,
                "retry_backoff_max": 0.02,
                **settings,
            }
        )
        letters = DeadLetters()
        return register_tasks(app, worker, dead_letters=letters), ingest, letters

    yield build
    for server in servers:
        server.close()


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


KEY = "cl_" + "s3cr3tKEYs3cr3tKEYs3cr3tKEYs3cr3tKEYabcd"
WORKER_KEY = "cl_" + "w0rk3rKEYw0rk3rKEYw0rk3rKEYw0rk3rKEYabcd"


def test_a_200_is_delivered_once_with_the_api_key(make_task: Any) -> None:
    task, ingest, letters = make_task([(200, {})], api_key="k-123")
    assert task.apply(**sent(EVENTS)).get() == {"written": 1, "rejected": 0}
    assert len(ingest.calls) == 1
    assert ingest.calls[0] == {"body": {"events": EVENTS}, "auth": "Bearer k-123"}
    assert letters == []


def test_a_200_with_rejected_events_is_delivered(make_task: Any) -> None:
    answer = {
        "written": 0,
        "rejected": 1,
        "results": [{"event_id": "e1", "status": "rejected", "reason": "too_old"}],
    }
    task, _, letters = make_task([(200, {})], answer)
    assert task.apply(**sent(EVENTS)).get() == {"written": 0, "rejected": 1}
    assert letters == []


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_5xx_and_429_are_retried_until_ingest_takes_the_batch(make_task: Any, status: int) -> None:
    task, ingest, letters = make_task([(status, {}), (status, {}), (200, {})])
    assert task.apply(**sent(EVENTS)).get()["written"] == 1
    assert len(ingest.calls) == 3
    assert letters == []


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Down for maintenance</body></html>",
        b'{"written": 1, "rejected": 0}',  # no results
        b'{"written": 1, "rejected": 0, "results": []}',  # fewer results than events
        b'{"results": [{"event_id": "e1", "status": "lost"}]}',  # neither written nor rejected
        b'{"results": [{"event_id": "e1", "status": "rejected"}]}',  # rejected without reason
        b"[]",
    ],
)
def test_a_200_that_is_not_ingests_full_answer_is_retried(make_task: Any, body: bytes) -> None:
    task, ingest, letters = make_task([(200, {}, body), (200, {}, body), (200, {})])
    assert task.apply(**sent(EVENTS)).get() == {"written": 1, "rejected": 0}
    assert len(ingest.calls) == 3
    assert letters == []


def test_an_unreachable_ingest_is_retried_then_dead_lettered(make_task: Any) -> None:
    dead, _, letters = make_task([], max_retries=2, ingest_url=f"http://{LOOPBACK}:{free_port()}")
    assert dead.apply(**sent(EVENTS)).get() == {
        "written": 0,
        "dead_lettered": 1,
        "cause": "retries_exhausted",
    }
    ((letter,),) = [letters]
    assert letter.header["cause"] == "retries_exhausted"
    assert "unreachable" in letter.header["detail"] and letter.header["retries"] == 2


@pytest.mark.parametrize(
    ("status", "cause"),
    [(401, "http_401"), (403, "http_403"), (413, "http_413"), (422, "http_422"), (400, "http_4xx")],
)
def test_other_4xx_go_to_the_dead_letter_queue_with_their_cause(
    make_task: Any, status: int, cause: str
) -> None:
    body = json.dumps({"detail": "refused"}).encode()
    task, ingest, letters = make_task([(status, {}, body)])
    data, kwargs = encoded(EVENTS, TaskCompression.ZLIB)
    result = task.apply(args=[data], kwargs={**kwargs, "api_key": KEY}).get()
    assert result == {"written": 0, "dead_lettered": 1, "cause": cause, "status": status}
    assert len(ingest.calls) == 1
    ((letter,),) = [letters]
    # The batch goes unchanged, its key with it (for replay); the cause in the header.
    assert letter.args == [data] and letter.kwargs == {**kwargs, "api_key": KEY}
    assert letter.header["cause"] == cause and letter.header["status"] == status
    assert "refused" in letter.header["detail"] and letter.header["key"] == "task"
    assert KEY not in json.dumps(letter.header)


def test_past_max_retries_the_batch_goes_to_the_dead_letter_queue(make_task: Any) -> None:
    task, ingest, letters = make_task([(503, {})] * 10, max_retries=2)
    result = task.apply(**sent(EVENTS)).get()
    assert result == {"written": 0, "dead_lettered": 1, "cause": "retries_exhausted", "status": 503}
    assert len(ingest.calls) == 3  # the first try and two retries
    assert [letter.header["cause"] for letter in letters] == ["retries_exhausted"]


def test_a_dead_letter_that_cannot_be_sent_leaves_the_message_in_the_queue(
    make_task: Any,
) -> None:
    task, _, letters = make_task([(401, {})])
    letters.fail = True
    outcome = task.apply(**sent(EVENTS))
    assert isinstance(outcome.result, Reject) and outcome.result.requeue is True


def test_an_unexpected_exception_is_retried_then_dead_lettered(
    make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudlog_worker import tasks

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(tasks, "classify", broken)
    task, ingest, letters = make_task([], max_exception_retries=2)
    result = task.apply(**sent(EVENTS)).get()
    assert result["cause"] == "unexpected_error"
    assert len(ingest.calls) == 3
    assert "RuntimeError: a bug" in letters[0].header["detail"]


def test_the_key_never_appears_in_logs_even_after_retries(
    make_task: Any, caplog: pytest.LogCaptureFixture
) -> None:
    echo = f"bad key {KEY} / Bearer {WORKER_KEY}".encode()
    task, _, letters = make_task(
        [(503, {}, echo), (200, {}, echo), (401, {}, echo)], api_key=WORKER_KEY
    )
    data, kwargs = encoded(EVENTS, TaskCompression.ZLIB)
    with caplog.at_level(logging.DEBUG):
        result = task.apply(args=[data], kwargs={**kwargs, "api_key": KEY}).get()
    assert result["cause"] == "http_401"
    ours = [r for r in caplog.records if r.name.startswith("cloudlog_worker")]
    text = "\n".join(r.getMessage() + repr(vars(r)) for r in ours)
    assert "retry 1/" in text and "retry 2/" in text and "dead-letter" in text
    assert KEY not in text and WORKER_KEY not in text
    # Celery's own lines (eager mode cannot carry a kwargsrepr: they repr the kwargs) as the
    # worker process writes them: JSON lines through its redacting formatter.
    written = RedactingFormatter(JsonFormatter(), WORKER_KEY)
    lines = "\n".join(written.format(record) for record in caplog.records)
    assert "Task cloudlog.deliver_batch" in lines
    assert KEY not in lines and WORKER_KEY not in lines
    assert KEY not in json.dumps(letters[0].header)


def test_a_retried_copy_carries_a_masked_kwargsrepr(make_task: Any) -> None:
    """What Celery logs of a retried task (its "received" line) comes from ``kwargsrepr``."""
    seen: list[dict[str, Any]] = []
    task, _, _ = make_task([(503, {}), (200, {})])
    original = task.signature_from_request

    def spy(*args: Any, **options: Any) -> Any:
        seen.append(options)
        return original(*args, **options)

    task.signature_from_request = spy
    data, kwargs = encoded(EVENTS, TaskCompression.ZLIB)
    task.apply(args=[data], kwargs={**kwargs, "api_key": KEY}).get()
    assert seen and KEY not in seen[0]["kwargsrepr"] and "'api_key': '***'" in seen[0]["kwargsrepr"]
    assert data not in seen[0]["argsrepr"]


def test_the_celery_dead_letter_sender_masks_the_key() -> None:
    sent_tasks: list[dict[str, Any]] = []

    class App:
        def send_task(self, name: str, **options: Any) -> None:
            sent_tasks.append({"name": name, **options})

    send = celery_dead_letter_sender(App(), "dlq")  # type: ignore[arg-type]
    send(
        DeadLetterMessage(
            task_id="t1",
            args=["abc"],
            kwargs={"encoding": "json", "event_count": 1, "api_key": KEY},
            retries=3,
            header={"cause": "http_401"},
        )
    )
    (options,) = sent_tasks
    assert options["queue"] == "dlq" and options["task_id"] == "t1" and options["retries"] == 3
    assert options["headers"] == {"cloudlog_dead_letter": {"cause": "http_401"}}
    assert KEY not in options["kwargsrepr"] and KEY not in options["argsrepr"]


@pytest.mark.parametrize("compression", list(TaskCompression))
def test_an_encoded_batch_is_posted_as_it_was_serialised(
    make_task: Any, compression: TaskCompression
) -> None:
    events = [*EVENTS, {**EVENTS[0], "event_id": "e2", "message": 'ünï 🚀 "q"', "fields": {}}]
    task, ingest, _ = make_task([(200, {})], api_key="k-123")
    data, kwargs = encoded(events, compression)
    assert task.apply(args=[data], kwargs=kwargs).get() == {"written": 2, "rejected": 0}
    assert ingest.calls == [{"body": {"events": events}, "auth": "Bearer k-123"}]
    ((raw, content_type),) = ingest.raw
    assert raw == b'{"events":' + events_json(events) + b"}"
    assert content_type == "application/json"


def test_the_apps_key_travels_as_a_keyword_and_wins(make_task: Any) -> None:
    task, ingest, _ = make_task([(200, {})], api_key="worker-key")
    data, kwargs = encoded(EVENTS, TaskCompression.ZLIB)
    task.apply(args=[data], kwargs={**kwargs, "api_key": "app-key"}).get()
    assert ingest.calls[0]["auth"] == "Bearer app-key"


def test_a_batch_as_a_list_of_events_is_dead_lettered_as_undecodable(make_task: Any) -> None:
    """Only the encoded form is published; a list argument is a foreign or corrupt task."""
    task, ingest, letters = make_task([(200, {})])
    result = task.apply(args=[EVENTS], kwargs={"api_key": "k-old"}).get()
    assert result["cause"] == "undecodable"
    assert ingest.calls == [] and letters[0].args == [EVENTS]


def test_a_refused_encoded_batch_counts_its_events_without_parsing(make_task: Any) -> None:
    events = [{**EVENTS[0], "event_id": f"e{n}"} for n in range(7)]
    task, _, _ = make_task([(422, {})])
    data, kwargs = encoded(events, TaskCompression.ZLIB)
    assert task.apply(args=[data], kwargs=kwargs).get() == {
        "written": 0,
        "dead_lettered": 7,
        "cause": "http_422",
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
def test_an_undecodable_batch_goes_to_the_dead_letter_queue(
    make_task: Any, data: str, encoding: str
) -> None:
    task, ingest, letters = make_task([(200, {})])
    result = task.apply(args=[data], kwargs={"encoding": encoding, "event_count": 1}).get()
    assert result["cause"] == "undecodable"
    assert ingest.calls == []
    assert letters[0].header["cause"] == "undecodable" and letters[0].args == [data]


def bomb(events: int) -> str:
    """``[{},{},...]`` compressed: a few kilobytes that expand to ``events`` empty events."""
    raw = b"[" + b"{}," * (events - 1) + b"{}]"
    return base64.b64encode(zlib.compress(raw, 9)).decode()


@pytest.mark.parametrize(
    ("events", "event_count"),
    [
        (22_000_000, None),  # 66 MB: past the byte bound
        (22_000_000, 1),  # whatever it claims
        (10_001, None),  # small, but past the event bound
        (5, 10_001),  # claims too many
    ],
)
def test_an_oversized_batch_goes_to_the_dead_letter_queue_unparsed(
    make_task: Any, events: int, event_count: int | None
) -> None:
    task, ingest, letters = make_task([(200, {})])
    kwargs: dict[str, Any] = {"encoding": "zlib+base64"}
    if event_count is not None:
        kwargs["event_count"] = event_count
    result = task.apply(args=[bomb(events)], kwargs=kwargs).get()
    assert result["cause"] == "oversized"
    assert ingest.calls == []
    assert "more than" in letters[0].header["detail"]


def test_a_batch_without_a_count_is_counted_within_the_bound(make_task: Any) -> None:
    events = [{**EVENTS[0], "event_id": f"e{n}"} for n in range(3)]
    task, _, _ = make_task([(200, {})])
    data, _ = encoded(events, TaskCompression.ZLIB)
    assert task.apply(args=[data], kwargs={"encoding": "zlib+base64"}).get()["written"] == 3


def live_responses() -> int:
    # type(), not isinstance(): isinstance() would make Celery's lazy proxies load their app.
    return sum(type(o) is httpx.Response for o in gc.get_objects())


def test_a_delivered_batch_is_freed_by_reference_counting_alone(make_task: Any) -> None:
    """httpx links a response and its stream both ways; left so, each response, its request
    and the whole batch it carried would wait for a full garbage collection (rare in a busy
    worker: its memory grew linearly under load)."""
    task, _, _ = make_task([])
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


def test_a_failed_task_is_never_acknowledged(make_task: Any) -> None:
    """acks_late acknowledges a failure by default; the task catches everything itself, and the
    worker's app turns that default off all the same."""
    from cloudlog_wire.broker import BrokerSettings
    from cloudlog_worker.worker import create_worker_app

    task, _, _ = make_task([])
    assert task.acks_late is True and task.acks_on_failure_or_timeout is False
    app = create_worker_app(WorkerSettings(), BrokerSettings())
    assert app.conf.task_acks_on_failure_or_timeout is False
