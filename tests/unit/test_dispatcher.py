from __future__ import annotations

import base64
import os
import random
import string
import threading
import time
from typing import Any

import pytest
from kombu.utils.json import dumps as kombu_dumps

from cloudlog_wire.payload import (
    EncodedBatch,
    TaskCompression,
    events_json,
    post_body,
    task_events,
    task_kwargs,
)
from flask_cloudlog.buffer import EventBuffer
from flask_cloudlog.dispatcher import (
    CELERY_EMBED,
    TASK_ENVELOPE_BYTES,
    Dispatcher,
    TaskEncoder,
    json_size,
    split_event,
)


def make_event(n: int, message: str | None = None) -> dict[str, Any]:
    return {
        "event_id": f"id{n}",
        "timestamp": 1_700_000_000_000 + n,
        "log_group": "g",
        "log_stream": "s",
        "message": message if message is not None else f"line {n}",
        "level": "info",
    }


def random_text(rng: random.Random, length: int) -> str:
    """Text zlib cannot shrink: what makes a batch as large after compression as before."""
    return "".join(rng.choice(string.ascii_letters + string.digits + "é🚀") for _ in range(length))


def test_pack_keeps_order_and_every_task_within_both_bounds() -> None:
    rng = random.Random(7)
    events = [make_event(n, "é" * (n % 50) + random_text(rng, n * 37 % 900)) for n in range(2_000)]
    encoder = TaskEncoder(max_task_bytes=20_000, max_batch_bytes=200_000, api_key="k" * 40)
    batches = list(encoder.pack(events))
    assert len(batches) > 1
    assert all(encoder.task_bytes(b.data, b.encoding, b.count) <= 20_000 for b in batches)
    assert all(len(post_body(events_json(b.events))) <= 200_000 for b in batches)
    decoded = [e for b in batches for e in task_events(b.data, b.encoding)]
    assert decoded == events


def test_the_uncompressed_bound_holds_even_when_compression_would_fit() -> None:
    """Ingest gets the JSON uncompressed: max_batch_bytes bounds what one POST carries."""
    events = [make_event(n, "a" * 1_000) for n in range(1_000)]  # ~1 MB raw, ~10 KB compressed
    encoder = TaskEncoder(max_task_bytes=262_144, max_batch_bytes=100_000)
    batches = list(encoder.pack(events))
    assert len(batches) >= 11
    assert all(len(post_body(events_json(b.events))) <= 100_000 for b in batches)
    assert [e for b in batches for e in b.events] == events


def test_a_compressible_batch_travels_in_one_task_far_larger_than_the_budget() -> None:
    events = [make_event(n, f"GET /items/{n} 200 " + "x" * 60) for n in range(10_000)]
    encoder = TaskEncoder(max_task_bytes=262_144)
    (batch,) = encoder.pack(events)
    assert len(events_json(events)) > 262_144 * 3
    assert task_events(batch.data, batch.encoding) == events


def test_an_event_larger_than_a_task_is_split_into_parts_never_truncated() -> None:
    message = ('abc🚀ü"\\\n' * 5_000) + "end"
    original = make_event(7, message)
    budget = 4_000
    parts = split_event(original, budget)
    assert len(parts) > 10
    assert all(json_size(part) <= budget for part in parts)
    assert "".join(part["message"] for part in parts) == message
    markers = [part["fields"]["cloudlog_part"] for part in parts]
    assert [m["index"] for m in markers] == list(range(1, len(parts) + 1))
    assert {m["count"] for m in markers} == {len(parts)}
    assert {m["event_id"] for m in markers} == {"id7"}
    assert len({part["event_id"] for part in parts}) == len(parts)
    assert {part["timestamp"] for part in parts} == {original["timestamp"]}


@pytest.mark.parametrize("compression", list(TaskCompression))
def test_pack_splits_incompressible_oversize_events_in_place(compression: TaskCompression) -> None:
    message = random_text(random.Random(3), 60_000)
    events = [make_event(1), make_event(2, message), make_event(3)]
    encoder = TaskEncoder(max_task_bytes=16_384, compression=compression)
    batches = list(encoder.pack(events))
    flat = [e for batch in batches for e in task_events(batch.data, batch.encoding)]
    assert flat[0]["event_id"] == "id1" and flat[-1]["event_id"] == "id3"
    assert "".join(e["message"] for e in flat[1:-1]) == message
    assert len(flat) > 5
    assert all(encoder.task_bytes(b.data, b.encoding, b.count) <= 16_384 for b in batches)


def test_an_event_over_the_uncompressed_bound_is_split_even_if_it_compresses_well() -> None:
    events = [make_event(1, "z" * 100_000)]
    encoder = TaskEncoder(max_task_bytes=262_144, max_batch_bytes=30_000)
    batches = list(encoder.pack(events))
    assert len(batches) >= 4
    assert all(len(post_body(events_json(b.events))) <= 30_000 for b in batches)
    assert "".join(e["message"] for b in batches for e in b.events) == "z" * 100_000


@pytest.mark.parametrize("compression", list(TaskCompression))
def test_parts_fit_when_the_payload_writes_the_fields_longer_than_kombu_would(
    compression: TaskCompression,
) -> None:
    """pydantic-core writes 1e-05 as 0.00001: 2,000 of them in the fields outgrow the margin."""
    event = make_event(1, "z" * 100_000)
    event["fields"] = {"samples": [1e-05] * 2_000}
    assert len(events_json([event["fields"]])) > json_size([event["fields"]]) + 64
    encoder = TaskEncoder(max_task_bytes=262_144, max_batch_bytes=40_000, compression=compression)
    batches = list(encoder.pack([event]))
    assert len(batches) >= 4
    assert all(len(post_body(events_json(b.events))) <= 40_000 for b in batches)
    assert all(encoder.task_bytes(b.data, b.encoding, b.count) <= 262_144 for b in batches)
    assert "".join(e["message"] for b in batches for e in b.events) == "z" * 100_000


@pytest.mark.parametrize("compression", list(TaskCompression))
@pytest.mark.parametrize("api_key", [None, "k-" + "9" * 60])
def test_task_bytes_counts_the_body_exactly_as_kombu_encodes_it(
    compression: TaskCompression, api_key: str | None
) -> None:
    """kombu is the oracle: base64 of its JSON of [args, kwargs, embed] is the message's body."""
    rng = random.Random(11)
    events = [make_event(n, random_text(rng, n % 300) + '"\\\n\x00') for n in range(300)]
    encoder = TaskEncoder(max_task_bytes=1_048_576, compression=compression, api_key=api_key)
    (batch,) = encoder.pack(events)
    body = kombu_dumps(
        [[batch.data], task_kwargs(batch.encoding, batch.count, api_key), CELERY_EMBED]
    )
    kombu_body = base64.b64encode(body.encode())
    predicted = encoder.task_bytes(batch.data, batch.encoding, batch.count)
    assert predicted == TASK_ENVELOPE_BYTES + len(kombu_body)


class FlakyPublisher:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: EncodedBatch) -> None:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionError("broker down")
            self.batches.append(task_events(batch.data, batch.encoding))


def make_dispatcher(publisher: FlakyPublisher, buffer: EventBuffer) -> Dispatcher:
    return Dispatcher(
        buffer,
        publisher,
        batch_max_events=50,
        max_task_bytes=262_144,
        flush_interval=0.02,
        publish_retry_max_seconds=0.05,
    )


def test_dispatcher_retries_a_failing_broker_and_publishes_each_event_once() -> None:
    buffer = EventBuffer(max_events=10_000, max_bytes=10**9)
    publisher = FlakyPublisher(failures=3)
    dispatcher = make_dispatcher(publisher, buffer)
    for n in range(120):
        buffer.put(make_event(n), wake_at=50)
    dispatcher.ensure_started()
    assert dispatcher.flush(timeout=5)
    assert dispatcher.close(timeout=1)
    published = [e["event_id"] for batch in publisher.batches for e in batch]
    assert published == [f"id{n}" for n in range(120)]
    assert all(len(batch) <= 50 for batch in publisher.batches)
    assert dispatcher.publish_failures == 3
    assert dispatcher.published_events == 120


def test_an_event_that_cannot_be_encoded_is_counted_and_its_neighbours_still_go() -> None:
    buffer = EventBuffer(max_events=10_000, max_bytes=10**9)
    publisher = FlakyPublisher(failures=0)
    dispatcher = make_dispatcher(publisher, buffer)
    blob = random_text(random.Random(1), 300_000)  # incompressible: fields alone fit no task
    hopeless = {**make_event(1), "fields": {"blob": blob}}
    for event in (make_event(0), hopeless, make_event(2)):
        buffer.put(event, wake_at=1_000)
    dispatcher.ensure_started()
    assert dispatcher.flush(timeout=5)
    assert dispatcher.is_running
    buffer.put(make_event(3), wake_at=1_000)
    assert dispatcher.close(timeout=2)
    published = [e["event_id"] for batch in publisher.batches for e in batch]
    assert published == ["id0", "id2", "id3"]
    assert dispatcher.abandoned_events == 1


def test_close_gives_up_within_its_timeout_and_counts_what_it_abandoned() -> None:
    buffer = EventBuffer(max_events=10_000, max_bytes=10**9)
    publisher = FlakyPublisher(failures=10**9)
    dispatcher = make_dispatcher(publisher, buffer)
    for n in range(30):
        buffer.put(make_event(n), wake_at=1_000)
    assert dispatcher.close(timeout=0.3) is False
    assert dispatcher.abandoned_events == 30
    assert publisher.batches == []


@pytest.mark.parametrize("size", [0, 1, 100])
def test_json_size_is_what_kombu_writes(size: int) -> None:
    """kombu's own encoder is the oracle: its separators and escaping decide the task's size."""
    value = [{"m": 'ü🚀"' * size, "n": size, "f": {"k": [1, 2]}}]
    assert json_size(value) == len(kombu_dumps(value).encode())


def test_a_fork_waits_for_the_publish_in_flight() -> None:
    """Forking mid-publish would leave the child with locks no thread releases."""
    started = threading.Event()
    order: list[str] = []

    def slow_publish(batch: EncodedBatch) -> None:
        started.set()
        time.sleep(0.3)
        order.append("published")

    buffer = EventBuffer(max_events=100, max_bytes=10**9)
    dispatcher = Dispatcher(
        buffer,
        slow_publish,
        batch_max_events=10,
        max_task_bytes=262_144,
        flush_interval=0.01,
        publish_retry_max_seconds=0.05,
    )
    buffer.put(make_event(1), wake_at=1)
    dispatcher.ensure_started()
    assert started.wait(5)
    dispatcher.before_fork()
    order.append("fork")
    dispatcher.after_fork_in_parent()
    assert order == ["published", "fork"]
    assert dispatcher.close(timeout=2)


def test_under_steady_load_tasks_are_full_not_a_trickle() -> None:
    """After a publish, a partial batch waits for the flush interval instead of going at once."""
    buffer = EventBuffer(max_events=10_000, max_bytes=10**9)
    sizes: list[int] = []
    dispatcher = Dispatcher(
        buffer,
        lambda batch: sizes.append(batch.count),
        batch_max_events=100,
        max_task_bytes=262_144,
        flush_interval=60,  # long: only full batches may leave during the test
        publish_retry_max_seconds=0.05,
    )
    for n in range(250):
        buffer.put(make_event(n), wake_at=100)
    dispatcher._drain(deadline=None, full_batches_after_first=True)
    assert sizes == [100, 100]
    assert len(buffer) == 50, "the partial batch waits for the next interval"
    assert dispatcher.close(timeout=1)
    assert sizes == [100, 100, 50]


def test_a_task_the_queue_finds_too_long_is_halved_not_retried_forever() -> None:
    published: list[int] = []

    def small_queue(batch: EncodedBatch) -> None:
        if batch.count > 30:
            raise RuntimeError(
                "An error occurred (InvalidParameterValue) when calling the SendMessage "
                "operation: One or more parameters are invalid. Reason: Message must be "
                "shorter than 262144 bytes."
            )
        published.append(batch.count)

    buffer = EventBuffer(max_events=10_000, max_bytes=10**9)
    dispatcher = Dispatcher(
        buffer,
        small_queue,
        batch_max_events=100,
        max_task_bytes=262_144,
        flush_interval=0.01,
        publish_retry_max_seconds=0.05,
    )
    for n in range(100):
        buffer.put(make_event(n), wake_at=1_000)
    assert dispatcher.close(timeout=5)
    assert sum(published) == 100 and max(published) <= 30
    assert dispatcher.publish_failures == 0


def test_event_ids_are_unique_and_differ_in_a_forked_child() -> None:
    from flask_cloudlog.events import event_ids

    parent_ids = {event_ids.next() for _ in range(10_000)}
    assert len(parent_ids) == 10_000
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the ids it makes, then leave at once
        os.write(write_end, ",".join(event_ids.next() for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        child_ids = set(pipe.read().split(","))
    assert len(child_ids) == 100 and not child_ids & parent_ids
    assert not child_ids & {event_ids.next() for _ in range(100)}
