"""The writer against a real moto server behind the strict AwsProxy: every CloudWatch limit kept.

moto does not enforce the batch-size, event-count, event-size or 24-hour-span limits; the proxy
in front of it checks every PutLogEvents body and records each violation, so every test ends
with ``proxy.violations() == []``. Events are read back from the emulator with
``get_log_events`` (not taken from the writer's own report) and compared with what was sent.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_case
from hypothesis import strategies as st

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.awsproxy import PUT_LOG_EVENTS, AwsProxy
from cloudlog_writer import (
    CloudWatchWriter,
    EventResult,
    LogEvent,
    RejectReason,
    WriterSettings,
    make_logs_client,
)
from cloudlog_writer.limits import (
    DEFAULT_MAX_EVENT_BYTES,
    LEGACY_MAX_EVENT_BYTES,
    MAX_EVENT_AGE_MS,
    MAX_FUTURE_MS,
)
from cloudlog_writer.splitting import reassemble, split_event
from tests.conftest import read_stream

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


@pytest.fixture
def proxy(moto_url: str) -> Iterator[AwsProxy]:
    with AwsProxy(moto_url, strict=True, seed=20240611) as running:
        yield running


@pytest.fixture(scope="module")
def emulator(moto_url: str) -> Any:
    """A boto3 client straight at moto: for reading back and for changes behind the writer."""
    return make_client("logs", AwsSettings(aws_endpoint_url=moto_url))


def writer_client(proxy: AwsProxy, settings: WriterSettings) -> Any:
    return make_logs_client(settings, AwsSettings(aws_endpoint_url=proxy.url))


def fresh_group(label: str) -> str:
    return f"limits-{label}/{uuid.uuid4().hex[:12]}"


def messages_of(client: Any, group: str, stream: str) -> list[str]:
    return [event["message"] for event in read_stream(client, group, stream)]


def stored_or_empty(client: Any, group: str, stream: str) -> list[dict[str, Any]]:
    """The stream's events; none if the stream (or its group) was never created."""
    try:
        return read_stream(client, group, stream)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFoundException":
            return []
        raise


def expected_order(events: list[LogEvent]) -> list[str]:
    """Architecture invariant 5: chronological, equal timestamps in input order (stable)."""
    return [event.message for event in sorted(events, key=lambda event: event.timestamp)]


def assert_all_written(results: list[EventResult], events: list[LogEvent]) -> None:
    assert [r.event_id for r in results] == [e.event_id for e in events]
    failed = [(r.event_id, r.reason, r.detail) for r in results if not r.written]
    assert failed == []


# -- the property: random event sets ------------------------------------------------------------

ALPHABETS = {
    "ascii": st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    "two_three_byte": st.characters(min_codepoint=0xA0, max_codepoint=0xFFFF, categories=["L"]),
    "four_byte": st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
    "any": st.characters(codec="utf-8", exclude_categories=["Cs"]),
}
# Big messages are built by repetition, so hypothesis does not have to draw megabytes.
BIG_UNITS = ["a", "é", "€", "😀", "ab€😀", "x€"]
# Sizes (UTF-8 bytes of the message) around the per-event and per-batch limits.
EDGE_SIZES = [
    LEGACY_MAX_EVENT_BYTES - 26,
    LEGACY_MAX_EVENT_BYTES - 25,
    DEFAULT_MAX_EVENT_BYTES - 26,
    DEFAULT_MAX_EVENT_BYTES - 25,
    DEFAULT_MAX_EVENT_BYTES,
]

small_message = st.one_of(
    st.just(""),  # CloudWatch refuses an empty message: rejected as invalid
    *(st.text(alphabet, min_size=1, max_size=120) for alphabet in ALPHABETS.values()),
)


@st.composite
def big_message(draw: st.DrawFn) -> str:
    unit = draw(st.sampled_from(BIG_UNITS))
    width = len(unit.encode("utf-8"))
    target = draw(
        st.one_of(
            st.sampled_from(EDGE_SIZES),
            st.integers(20_000, 400_000),  # medium: several of them fill a batch
            st.integers(1_100_000, 4_500_000),  # several MB: split into parts
        )
    )
    return unit * max(1, target // width)


# Timestamp offsets from "now": the window edges are 14 days back and 2 hours ahead. Offsets
# keep 5 minutes off each edge, so what must be written and what must be refused is clear.
SAFE = (-MAX_EVENT_AGE_MS + 5 * MINUTE_MS, MAX_FUTURE_MS - 5 * MINUTE_MS)
EQUAL_STAMPS = [0, -1, -HOUR_MS, -3 * DAY_MS, -3 * DAY_MS - 1, HOUR_MS]
equal_stamp = st.sampled_from(EQUAL_STAMPS)
in_window = st.integers(*SAFE)  # spread over 14 days: batches must not span 24 h
offsets = st.one_of(
    equal_stamp,
    equal_stamp,
    in_window,
    in_window,
    st.integers(-40 * DAY_MS, -MAX_EVENT_AGE_MS - 5 * MINUTE_MS),  # too old
    st.integers(MAX_FUTURE_MS + 5 * MINUTE_MS, 10 * DAY_MS),  # too new
)


@dataclass(frozen=True)
class Draft:
    destination: int
    offset: int
    message: str

    def __repr__(self) -> str:  # a failing example stays readable with megabyte messages
        shown = self.message if len(self.message) <= 60 else f"{self.message[:40]!r}..."
        return f"Draft({self.destination}, {self.offset}, {shown!r} ({len(self.message)} chars))"


@st.composite
def flood(draw: st.DrawFn, destinations: int) -> list[Draft]:
    """Sometimes thousands of small events for one stream: past the 10,000-event limit (tiny
    messages), the 1 MiB limit (200-byte ones) or the 24-hour span (7 s apart), in or against
    chronological order, or all with one timestamp."""
    count = draw(st.sampled_from([0, 0, 0, 9_999, 10_001, 12_500]))
    if not count:
        return []
    width = draw(st.sampled_from([1, 78, 200]))  # 10,000 x (78 + 26) bytes still fit 1 MiB
    step = draw(st.sampled_from([0, 1, 7_000]))
    base = draw(st.integers(SAFE[0], SAFE[1] - step * count))
    destination = draw(st.integers(0, destinations - 1))
    drafts = [
        Draft(destination, base + i * step, (f"{i}:" + "~" * width)[:width]) for i in range(count)
    ]
    return drafts[::-1] if draw(st.booleans()) else drafts


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, list[Draft]]:
    """(number of groups, streams per group, events in input order)."""
    groups = draw(st.integers(1, 2))
    streams = draw(st.integers(1, 2))
    destination = st.integers(0, groups * streams - 1)
    size = draw(st.integers(0, 80))
    small = draw(
        st.lists(
            st.builds(Draft, destination, offsets, small_message), min_size=size, max_size=size
        )
    )
    big_count = draw(st.integers(0, 3))
    big = draw(
        st.lists(
            st.builds(Draft, destination, offsets, big_message()),
            min_size=big_count,
            max_size=big_count,
        )
    )
    drafts = draw(st.permutations(small + big))
    at = draw(st.integers(0, len(drafts)))
    return groups, streams, drafts[:at] + draw(flood(groups * streams)) + drafts[at:]


def allowed_rejections(offset: int, message: str) -> set[RejectReason]:
    """What the writer may answer for an event it could not write (empty set: must be written)."""
    if not message:
        return {RejectReason.INVALID}
    if offset < -MAX_EVENT_AGE_MS:
        return {RejectReason.TOO_OLD}
    if offset > MAX_FUTURE_MS:
        return {RejectReason.TOO_NEW}
    return set()


@pytest.fixture(scope="module")
def property_proxy(moto_url: str) -> Iterator[AwsProxy]:
    with AwsProxy(moto_url, strict=True) as running:
        yield running


@pytest.fixture(scope="module")
def property_client(property_proxy: AwsProxy) -> Any:
    return writer_client(property_proxy, WriterSettings(stream_parallelism=4))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios(), legacy_limit=st.booleans())
def test_every_event_is_read_back_once_in_order_or_rejected_with_its_reason(
    property_proxy: AwsProxy,
    property_client: Any,
    emulator: Any,
    scenario: tuple[int, int, list[Draft]],
    legacy_limit: bool,
) -> None:
    proxy = property_proxy
    max_event_bytes = LEGACY_MAX_EVENT_BYTES if legacy_limit else DEFAULT_MAX_EVENT_BYTES
    proxy.set_max_event_bytes(max_event_bytes)
    group_count, stream_count, drafts = scenario
    run = uuid.uuid4().hex[:10]
    destinations = [
        (f"limits-prop/{run}/g{g}", f"s{s}/{run}")
        for g in range(group_count)
        for s in range(stream_count)
    ]
    now = int(time.time() * 1000)
    events = [
        LogEvent(f"e{i}", *destinations[d.destination], now + d.offset, d.message)
        for i, d in enumerate(drafts)
    ]
    settings_ = WriterSettings(max_event_bytes=max_event_bytes, stream_parallelism=4)
    puts_before = proxy.counts().get(PUT_LOG_EVENTS, 0)

    with CloudWatchWriter(property_client, settings_) as writer:
        results = writer.write(events)

    assert [r.event_id for r in results] == [e.event_id for e in events]
    written: list[LogEvent] = []
    for event, draft, result in zip(events, drafts, results, strict=True):
        allowed = allowed_rejections(draft.offset, draft.message)
        if result.written:
            assert not allowed, f"{event.event_id} ({draft.offset} ms) written, expected {allowed}"
            written.append(event)
        else:
            assert result.reason in allowed, (event.event_id, draft.offset, result)
            assert result.detail

    for group, stream in destinations:
        mine = [e for e in written if (e.log_group, e.log_stream) == (group, stream)]
        stored = stored_or_empty(emulator, group, stream)
        raw = [event["message"] for event in stored]
        # Exactly once, in order: the parts sent, each stored once with its event's timestamp,
        # chronological, equal timestamps in input order (moto returns them in that order).
        expected_parts = [
            (e.timestamp, part.message)
            for e in sorted(mine, key=lambda e: e.timestamp)
            for part in split_event(e, max_event_bytes)
        ]
        assert len(stored) == len(expected_parts)
        assert [(event["timestamp"], event["message"]) for event in stored] == expected_parts
        # Split events whole again.
        assert reassemble(raw) == expected_order(mine)

    assert proxy.violations() == []
    assert proxy.violation_count() == 0
    for label, happened in (
        (
            "an event split into parts",
            any(len(split_event(e, max_event_bytes)) > 1 for e in written),
        ),
        ("several batches to one stream", sent_puts(proxy, puts_before) > len(destinations)),
        ("an equal timestamp", len({e.timestamp for e in written}) < len(written)),
        ("a flood of 10,000 or more", len(events) >= 10_000),
        *(
            (f"rejected {reason}", any(r.reason is reason for r in results))
            for reason in RejectReason
        ),
    ):
        if happened:
            note_case(label)
    sent = proxy.counts().get(PUT_LOG_EVENTS, 0) - puts_before
    assert (sent > 0) == bool(written)
    for group in {group for group, _ in destinations}:  # keep moto's memory small
        with contextlib.suppress(emulator.exceptions.ResourceNotFoundException):
            emulator.delete_log_group(logGroupName=group)


def sent_puts(proxy: AwsProxy, before: int) -> int:
    return proxy.counts().get(PUT_LOG_EVENTS, 0) - before


# -- sequence tokens ----------------------------------------------------------------------------


def batch(group: str, stream: str, label: str, count: int, start_ms: int) -> list[LogEvent]:
    return [
        LogEvent(f"{label}-{i}", group, stream, start_ms + i, f"{label} {i} ü€😀")
        for i in range(count)
    ]


def test_sequence_tokens_are_followed_on_a_legacy_endpoint(proxy: AwsProxy, emulator: Any) -> None:
    proxy.set_sequence_tokens(True)
    group = fresh_group("tokens")
    settings_ = WriterSettings(stream_parallelism=2)
    now = int(time.time() * 1000)
    sent: dict[str, list[LogEvent]] = {"a": [], "b": []}
    with CloudWatchWriter(writer_client(proxy, settings_), settings_) as writer:
        for round_ in range(4):  # several calls to stream a
            events = batch(group, "a", f"a{round_}", 50, now - DAY_MS + round_ * 1000)
            assert_all_written(writer.write(events), events)
            sent["a"] += events
        # One call to both streams; stream b's events span 30 h, so it takes two batches.
        both = batch(group, "a", "a4", 30, now - HOUR_MS) + [
            LogEvent(f"b-{i}", group, "b", now - 30 * HOUR_MS + i * HOUR_MS, f"b {i}")
            for i in range(31)
        ]
        assert_all_written(writer.write(both), both)
        sent["a"] += both[:30]
        sent["b"] += both[30:]

    for stream, events in sent.items():
        assert messages_of(emulator, group, stream) == expected_order(events)
    usage = proxy.sequence_token_usage()
    # The first put of a fresh stream carries no token; every later one carries the token.
    assert usage[(group, "a")] >= 4
    assert usage[(group, "b")] >= 1
    assert proxy.injected()["invalid_sequence_token"] >= 2  # each stream learnt it once
    assert proxy.violations() == []


def test_a_replayed_batch_is_already_accepted_and_not_duplicated(
    proxy: AwsProxy, emulator: Any
) -> None:
    """The answer to an accepted put is lost; the retry, with the same token, is answered
    DataAlreadyAcceptedException: the writer takes that as written and follows the new token."""
    proxy.set_sequence_tokens(True, data_already_accepted=True)
    group = fresh_group("replay")
    # Timed so that the stalled put is accepted upstream (after 2 s) while the client has
    # given up on it (1 s read timeout) and waits (4 s, no jitter) before the replay: 3 s of
    # margin either side for a slow machine.
    settings_ = WriterSettings(
        read_timeout_seconds=1.0, backoff_base_seconds=4.0, backoff_max_seconds=4.0
    )
    now = int(time.time() * 1000)
    first = batch(group, "s", "first", 20, now - 3000)
    second = batch(group, "s", "second", 20, now - 2000)
    third = batch(group, "s", "third", 20, now - 1000)
    client = writer_client(proxy, settings_)
    with CloudWatchWriter(client, settings_, random=lambda: 1.0) as writer:
        assert_all_written(writer.write(first[:10]), first[:10])
        assert_all_written(writer.write(first[10:]), first[10:])  # token mode from here
        proxy.stall(PUT_LOG_EVENTS, seconds=2.0, first=1)
        assert_all_written(writer.write(second), second)
        assert_all_written(writer.write(third), third)  # with the token the replay learnt

    assert messages_of(emulator, group, "s") == expected_order(first + second + third)
    injected = proxy.injected()
    assert injected["stall"] == 1
    assert injected["data_already_accepted"] == 1
    assert proxy.sequence_token_usage()[(group, "s")] >= 3
    assert proxy.violations() == []


# -- resources deleted behind the writer's back ---------------------------------------------


@pytest.mark.parametrize("deleted", ["group", "stream"])
def test_writing_again_after_the_group_was_deleted_recreates_it(
    proxy: AwsProxy, emulator: Any, deleted: str
) -> None:
    group = fresh_group("deleted")
    settings_ = WriterSettings(retention_days=7)
    now = int(time.time() * 1000)
    before = batch(group, "web", "before", 25, now - 5000)
    after = batch(group, "web", "after", 25, now - 1000)
    with CloudWatchWriter(writer_client(proxy, settings_), settings_) as writer:
        assert_all_written(writer.write(before), before)
        assert messages_of(emulator, group, "web") == expected_order(before)
        if deleted == "group":
            emulator.delete_log_group(logGroupName=group)
        else:
            emulator.delete_log_stream(logGroupName=group, logStreamName="web")
        creates = proxy.counts().get("logs.CreateLogStream", 0)
        assert_all_written(writer.write(after), after)  # its cache still says "exists"

    # Recreated: only the second write's events are there, and the group has its retention.
    assert messages_of(emulator, group, "web") == expected_order(after)
    groups = emulator.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in groups] == [(group, 7)]
    counts = proxy.counts()
    assert counts["logs.CreateLogStream"] > creates
    assert counts["logs.CreateLogGroup"] == (2 if deleted == "group" else 1)
    assert proxy.violations() == []


# -- throttling and server errors -----------------------------------------------------------


def test_throttled_and_failing_puts_still_deliver_every_event_exactly_once(
    proxy: AwsProxy, emulator: Any
) -> None:
    throttled = proxy.throttle(PUT_LOG_EVENTS, 0.3)
    failed = proxy.fail(PUT_LOG_EVENTS, 1.0, status=503, first=4)
    create_throttled = proxy.throttle("logs.CreateLog*", 0.3)
    group = fresh_group("throttled")
    streams = ["web-1", "web-2", "worker"]
    settings_ = WriterSettings(
        max_attempts=40, backoff_base_seconds=0.005, backoff_max_seconds=0.05
    )
    now = int(time.time() * 1000)
    sent: list[LogEvent] = []
    with CloudWatchWriter(writer_client(proxy, settings_), settings_) as writer:
        for call in range(25):
            events = [
                LogEvent(
                    f"c{call}-{i}",
                    group,
                    streams[i % len(streams)],
                    now - 60_000 + call * 100 + i // 10,  # equal stamps inside a call
                    f"call {call} event {i}",
                )
                for i in range(90)
            ]
            assert_all_written(writer.write(events), events)
            sent += events

    for stream in streams:
        mine = [e for e in sent if e.log_stream == stream]
        stored = messages_of(emulator, group, stream)
        assert len(stored) == len(mine)  # exactly once
        assert stored == expected_order(mine)
    injected = proxy.injected()
    assert throttled.fired > 0 and failed.fired == 4 and create_throttled.seen > 0
    assert injected["throttle"] == throttled.fired + create_throttled.fired
    assert injected["error"] == 4
    # Every put that was not answered with a fault reached moto, one per batch sent.
    assert proxy.counts()[PUT_LOG_EVENTS] == 25 * 3 + throttled.fired + failed.fired
    print(f"\nthrottling: {proxy.counts()[PUT_LOG_EVENTS]} PutLogEvents for 75 batches, {injected}")
    assert proxy.violations() == []
