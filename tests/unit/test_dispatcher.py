from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import pytest
from kombu.utils.json import dumps as kombu_dumps

from clients.flask_ext.buffer import EventBuffer
from clients.flask_ext.dispatcher import (
    KOMBU_SQS_ENCODING_FACTOR,
    TASK_ENVELOPE_BYTES,
    Dispatcher,
    json_size,
    pack,
    payload_budget,
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


def test_payload_budget_leaves_room_for_double_base64_and_the_envelope() -> None:
    budget = payload_budget(262_144)
    assert budget * KOMBU_SQS_ENCODING_FACTOR + TASK_ENVELOPE_BYTES <= 262_144
    assert budget > 140_000


def test_pack_keeps_order_and_every_batch_within_budget() -> None:
    events = [make_event(n, "é" * (n % 50) + "x" * (n * 37 % 900)) for n in range(2_000)]
    budget = 20_000
    batches = list(pack(events, budget))
    assert len(batches) > 1
    assert all(json_size(batch) <= budget for batch in batches)
    assert [e["event_id"] for batch in batches for e in batch] == [e["event_id"] for e in events]


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


def test_pack_splits_oversize_events_in_place() -> None:
    events = [make_event(1), make_event(2, "y" * 50_000), make_event(3)]
    batches = list(pack(events, 10_000))
    flat = [e for batch in batches for e in batch]
    assert flat[0]["event_id"] == "id1" and flat[-1]["event_id"] == "id3"
    assert "".join(e["message"] for e in flat[1:-1]) == "y" * 50_000
    assert all(json_size(batch) <= 10_000 for batch in batches)


class FlakyPublisher:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionError("broker down")
            self.batches.append(json.loads(json.dumps(batch)))


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

    def slow_publish(batch: list[dict[str, Any]]) -> None:
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
        lambda batch: sizes.append(len(batch)),
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

    def small_queue(batch: list[dict[str, Any]]) -> None:
        if len(batch) > 30:
            raise RuntimeError(
                "An error occurred (InvalidParameterValue) when calling the SendMessage "
                "operation: One or more parameters are invalid. Reason: Message must be "
                "shorter than 262144 bytes."
            )
        published.append(len(batch))

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
    from clients.flask_ext.events import event_ids

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
