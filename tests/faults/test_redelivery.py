"""A worker killed with kill -9 while it holds messages, or while its retries are pending: with
the defaults, every line is readable, once, within 90 s of the kill (issue 15).

Unlike the rest of the fault suite this runs with cloudlog's own defaults (visibility timeout
and heartbeat, HTTP timeouts, backoff, concurrency): only ports, the log directory and the
app's group are the test's own. Ingest writes to CloudWatch Logs through the strict AWS proxy
(every PutLogEvents checked against the real limits). The first worker is given an ingest of
the test's own, on a port of its own:

* one that accepts requests and never answers, so the worker holds the messages it received,
  unacknowledged, when it is killed; ingest never sees those batches, so only their
  redelivery can bring their lines. They must come back within the visibility timeout (30 s),
  not the 900 s of old (measured before the change: 400 of 5,000 lines still missing 150 s
  after the kill);
* one that answers 503 with Retry-After: 20, so every batch is scheduled for a retry. The
  copies must wait in SQS (DelaySeconds), not in the killed worker's memory as ETA tasks.

A second worker, with the real ingest, then starts and delivers everything.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import pytest

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.awsproxy import AwsProxy
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import LOOPBACK, free_port
from tests.faults.harness import NumberedLines, assert_exactly_once, read_line_counts

pytestmark = pytest.mark.faults

LINES = 5_000
RATE = 2_500.0  # lines a second: all published in about 2 s (100 lines a message)
DEADLINE_S = 90.0  # from the kill to the last line readable
RETRY_AFTER_S = 20
RECEIVED = "Task cloudlog.deliver_batch["


class SilentIngest:
    """Accepts connections and reads what comes, never answers: an ingest that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.url = f"http://{LOOPBACK}:{self.listener.getsockname()[1]}"
        self.requests = 0
        self._connections: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        try:
            if connection.recv(65536):
                self.requests += 1
            while connection.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for connection in self._connections:
            connection.close()


class RetryLaterIngest:
    """Answers every request 503 with ``Retry-After``: the worker schedules a retry of each."""

    def __init__(self, retry_after: int) -> None:
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests += 1
                self.send_response(503)
                self.send_header("Retry-After", str(retry_after))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def task_events(log: str) -> dict[str, str]:
    """The last thing a worker's log says about each task id: "received", "succeeded", ..."""
    last: dict[str, str] = {}
    for line in log.splitlines():
        try:
            message = json.loads(line).get("message", "")
        except ValueError:
            continue
        if message.startswith(RECEIVED):
            task_id, _, rest = message[len(RECEIVED) :].partition("]")
            last[task_id] = rest.split()[0] if rest.split() else ""
    return last


@dataclass
class Outcome:
    held: set[str]  # task ids the killed worker held
    readable_at_kill: int
    complete_after: float | None  # seconds from the kill until every line was readable
    redelivered_after: float | None  # ... until the second worker had received every held task
    counts: Counter[int] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    first_worker: Counter[str] = field(default_factory=Counter)  # last word logged per task


class FirstIngest(Protocol):
    url: str
    requests: int

    def close(self) -> None: ...


def kill_the_first_worker(
    tmp_path: Path,
    first_ingest: FirstIngest,
    extra_env: dict[str, str] | None = None,
    wait_s: float = DEADLINE_S + 30,
) -> Outcome:
    """A first worker that talks to ``first_ingest`` takes the app's lines from the queue and is
    killed once its requests stop coming (each task slot is waiting, or every batch has been
    scheduled for a retry); a second worker with the real ingest then delivers everything."""
    emulator_port = free_port()
    with AwsProxy(f"http://{LOOPBACK}:{emulator_port}", strict=True) as proxy:
        pipeline = LocalPipeline(
            log_dir=tmp_path / "logs",
            emulator_port=emulator_port,
            ingest_port=free_port(),
            logs_endpoint_url=proxy.url,
            extra_env=extra_env,
        )
        try:
            pipeline.start_emulator()
            pipeline.start_ingest()
            real_env = pipeline.env
            pipeline.env = {**real_env, "CLOUDLOG_INGEST_URL": first_ingest.url}
            first = pipeline.start_worker()
            pipeline.env = real_env
            logs = make_client("logs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))

            lines = NumberedLines(pipeline.emulator_url)
            lines.emit_paced(LINES, RATE)
            assert lines.close(), lines.state.stats()  # every line is in SQS now

            deadline = time.monotonic() + 30
            seen, steady_since = -1, time.monotonic()
            while first_ingest.requests < 4 or time.monotonic() - steady_since < 2.0:
                assert time.monotonic() < deadline, first.log_tail()
                if first_ingest.requests != seen:
                    seen, steady_since = first_ingest.requests, time.monotonic()
                time.sleep(0.1)
            first.kill()
            killed = time.monotonic()
            first_log = task_events(first.log_text())
            held = {task for task, last in first_log.items() if last == "received"}
            group = pipeline.stored_group(lines.group)
            readable_at_kill = len(read_line_counts(logs, group, lines.stream))
            second = pipeline.start_worker()

            counts: Counter[int] = Counter()
            complete_after = redelivered_after = None
            while time.monotonic() - killed < wait_s:
                if redelivered_after is None and held <= set(task_events(second.log_text())):
                    redelivered_after = time.monotonic() - killed
                counts = read_line_counts(logs, group, lines.stream)
                if len(counts) >= LINES and redelivered_after is not None:
                    complete_after = time.monotonic() - killed
                    break
                time.sleep(0.5)
            if complete_after is not None:
                time.sleep(5.0)  # a late duplicate would show by now
                counts = read_line_counts(logs, group, lines.stream)
        finally:
            pipeline.stop()
            first_ingest.close()
    return Outcome(
        held,
        readable_at_kill,
        complete_after,
        redelivered_after,
        counts,
        proxy.violations(),
        Counter(first_log.values()),
    )


def report(outcome: Outcome) -> str:
    return (
        f"first worker: {dict(outcome.first_worker)}; held at kill: {len(outcome.held)} tasks; "
        f"readable at kill: {outcome.readable_at_kill} of {LINES} lines; held tasks received "
        f"again {outcome.redelivered_after} s and every line readable {outcome.complete_after} s "
        "after the kill"
    )


def test_a_killed_workers_messages_are_delivered_within_90_seconds(tmp_path: Path) -> None:
    """The first worker's ingest accepts and never answers: it holds four messages (its four
    task slots, prefetch 1) when it is killed."""
    outcome = kill_the_first_worker(tmp_path, SilentIngest())
    print(report(outcome))
    assert len(outcome.held) == 4 and outcome.readable_at_kill == 0, report(outcome)
    assert outcome.complete_after is not None and outcome.complete_after <= DEADLINE_S, (
        f"{LINES - len(outcome.counts)} of {LINES} lines missing; {report(outcome)}"
    )
    assert_exactly_once(outcome.counts, LINES)
    assert outcome.violations == []


def test_retries_pending_when_a_worker_is_killed_wait_in_sqs_not_in_it(tmp_path: Path) -> None:
    """The first worker's ingest answers 503 with Retry-After: every batch is scheduled for a
    retry 20 s later. The retried copies must wait in SQS (DelaySeconds), where any worker
    finds them, not in the first worker's memory as ETA tasks whose messages stay hidden."""
    outcome = kill_the_first_worker(tmp_path, RetryLaterIngest(retry_after=RETRY_AFTER_S))
    print(report(outcome))
    assert outcome.first_worker["retry:"] >= 4 and outcome.readable_at_kill == 0, report(outcome)
    assert outcome.complete_after is not None and outcome.complete_after <= DEADLINE_S, (
        f"{LINES - len(outcome.counts)} of {LINES} lines missing; {report(outcome)}"
    )
    assert_exactly_once(outcome.counts, LINES)
    assert outcome.violations == []
