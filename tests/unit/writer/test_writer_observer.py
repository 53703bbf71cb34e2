"""The writer tells its observer of each PutLogEvents call and each retry, with its cause."""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError
from writer_fakes import FakeLogs, client_error

from cloudlog_writer import CloudWatchWriter, LogEvent, RetryCause, WriterSettings
from cloudlog_writer.errors import retry_cause

NOW_MS = 1_800_000_000_000


class Recorder:
    def __init__(self) -> None:
        self.puts: list[tuple[int, str]] = []
        self.retries: list[RetryCause] = []

    def put_log_events(self, *, events: int, seconds: float, outcome: str) -> None:
        assert seconds >= 0
        self.puts.append((events, outcome))

    def retry(self, cause: RetryCause) -> None:
        self.retries.append(cause)


class Broken:
    def put_log_events(self, *, events: int, seconds: float, outcome: str) -> None:
        raise RuntimeError("observer bug")

    def retry(self, cause: RetryCause) -> None:
        raise RuntimeError("observer bug")


def writer_for(fake: FakeLogs, observer: object) -> CloudWatchWriter:
    return CloudWatchWriter(
        fake,
        WriterSettings(),
        observer=observer,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
        sleep=lambda _s: None,
    )


def events(n: int) -> list[LogEvent]:
    return [LogEvent(f"e{i}", "g", "s", NOW_MS + i, f"m{i}") for i in range(n)]


def test_each_call_and_each_retry_is_told_with_its_cause() -> None:
    fake = FakeLogs()
    fake.script["put_log_events"] = [
        client_error("ThrottlingException"),
        client_error("ServiceUnavailableException", 503),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ]
    recorder = Recorder()
    with writer_for(fake, recorder) as writer:
        assert all(result.written for result in writer.write(events(3)))
    assert recorder.puts == [(3, "retriable")] * 3 + [(3, "ok")]
    assert recorder.retries == [
        RetryCause.THROTTLED,
        RetryCause.SERVER_ERROR,
        RetryCause.CONNECTION,
    ]


def test_a_stream_deleted_behind_the_writers_back_is_a_not_found_retry() -> None:
    fake = FakeLogs()
    recorder = Recorder()
    with writer_for(fake, recorder) as writer:
        writer.write(events(1))
        fake.delete_log_group("g")
        assert writer.write([LogEvent("late", "g", "s", NOW_MS + 5, "again")])[0].written
    assert recorder.puts == [(1, "ok"), (1, "not_found"), (1, "ok")]
    assert recorder.retries == [RetryCause.NOT_FOUND]


def test_an_observer_that_fails_does_not_fail_the_write() -> None:
    fake = FakeLogs()
    fake.script["put_log_events"] = [client_error("ThrottlingException")]
    with writer_for(fake, Broken()) as writer:
        assert all(result.written for result in writer.write(events(2)))
    assert len(fake.messages("g", "s")) == 2


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (client_error("ThrottlingException"), RetryCause.THROTTLED),
        (client_error("SomethingNew", 429), RetryCause.THROTTLED),
        (client_error("InternalFailure", 500), RetryCause.SERVER_ERROR),
        (client_error("SomethingNew", 502), RetryCause.SERVER_ERROR),
        (EndpointConnectionError(endpoint_url="http://x"), RetryCause.CONNECTION),
    ],
)
def test_retry_causes(error: Exception, cause: RetryCause) -> None:
    assert retry_cause(error) is cause
