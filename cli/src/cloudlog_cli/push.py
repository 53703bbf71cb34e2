"""``cloudlog push``: backfill a file of log lines into one CloudWatch Logs stream.

For teams importing old logs. The file is read line by line and handed to the writer
(services/writer) in chunks, so memory stays bounded however long the file is: one chunk of
events (at most ``chunk_events`` events and about ``chunk_bytes`` bytes of lines) plus one
entry per rejected line. A single line is never read whole beyond ``max_line_bytes``.

What a line becomes:

* a JSON object (first non-blank character ``{``) with ``timestamp`` (milliseconds since the
  epoch, or an ISO-8601 string; without a UTC offset it is taken as UTC) and ``message`` (a
  string; any other JSON value is stored as compact JSON) is one event. Other keys are ignored.
  A JSON line without a usable ``timestamp`` or ``message``, or that does not parse, is rejected
  with a reason; it never stops the push.
* any other line is one event, its text as it is, stamped with the time it was read (never
  earlier than the line read before it, so such lines keep the file's order).
* a blank line (empty or whitespace only) is skipped and counted, not sent and not rejected.

Every event's id is derived from the line's number and its bytes, so pushing the same file
again produces the same ids. What CloudWatch (or the writer, in its place) refuses, too old or
too new for instance, is reported per line; what could not be delivered at all (endpoint
unreachable after the writer's retries, access denied) stops the push.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol, TextIO

from cloudlog_writer import EventResult, LogEvent, RejectReason

DEFAULT_CHUNK_EVENTS: Final = 10_000
DEFAULT_CHUNK_BYTES: Final = 16 * 1024 * 1024
# A longer line is rejected ("line_too_long") and skipped without being held in memory.
DEFAULT_MAX_LINE_BYTES: Final = 16 * 1024 * 1024

# Reasons of lines rejected before they reach the writer. The writer's own reasons
# (RejectReason: too_old, too_new, expired, invalid) are reported as they are.
INVALID_UTF8: Final = "invalid_utf8"
LINE_TOO_LONG: Final = "line_too_long"
INVALID_JSON: Final = "invalid_json"
BAD_TIMESTAMP: Final = "bad_timestamp"
BAD_MESSAGE: Final = "bad_message"

# Not a rejection of the line: the endpoint could not take it. Such events stop the push.
DELIVERY_FAILURES: Final = frozenset({RejectReason.RETRIES_EXHAUSTED, RejectReason.ACCESS_DENIED})

# Far beyond any real log time, yet safe for every 64-bit consumer of the value.
_MAX_ABS_TIMESTAMP_MS: Final = 2**62
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_INTEGER_RE: Final = re.compile(r"[+-]?[0-9]+")
_BOM: Final = b"\xef\xbb\xbf"
_SKIP_PIECE_BYTES: Final = 1024 * 1024


class Writer(Protocol):
    def write(self, events: list[LogEvent]) -> list[EventResult]: ...


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line that was not written: rejected (its own fault) or failed (the endpoint's)."""

    line: int
    reason: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason, "detail": self.detail}


@dataclass
class PushReport:
    """What became of every line. Memory grows with rejected (and failed) lines only."""

    lines_read: int = 0
    written: int = 0
    blank: int = 0
    rejected: list[LineProblem] = field(default_factory=list)
    failed: list[LineProblem] = field(default_factory=list)
    # The first line not read when the push stopped early (None: the whole file was read).
    not_attempted_from_line: int | None = None

    @property
    def complete(self) -> bool:
        """Every line written, rejected or blank."""
        return not self.failed and self.not_attempted_from_line is None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "written": self.written,
            "rejected": [problem.as_dict() for problem in self.rejected],
            "blank": self.blank,
            "lines": self.lines_read,
        }
        if not self.complete:
            out["failed"] = [problem.as_dict() for problem in self.failed]
            out["not_attempted_from_line"] = self.not_attempted_from_line
        return out


class PushInterrupted(Exception):
    """Ctrl-C: the chunk in flight may be partly written; ``report`` holds what is known."""

    def __init__(self, report: PushReport) -> None:
        super().__init__("interrupted")
        self.report = report


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawLine:
    number: int  # from 1
    data: bytes  # without the line end; empty when too_long
    too_long: int = 0  # the line's length in bytes when it exceeded the limit, else 0


def read_lines(source: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[RawLine]:
    """The file's lines, numbered from 1, ends (``\\n``, ``\\r\\n``) removed, a leading UTF-8
    byte order mark dropped. A line longer than ``max_line_bytes`` is skipped in pieces and
    comes out as ``too_long`` with its length."""
    number = 0
    limit = max_line_bytes + 2  # room for "\r\n"
    while True:
        data = source.readline(limit)
        if not data:
            return
        number += 1
        if number == 1 and data.startswith(_BOM):
            data = data[len(_BOM) :]
        if data.endswith(b"\n") or len(data) < limit:
            content = data.removesuffix(b"\n").removesuffix(b"\r")
            if len(content) <= max_line_bytes:
                yield RawLine(number, content)
                continue
            yield RawLine(number, b"", too_long=len(content))
            continue
        length = len(data)
        while not data.endswith(b"\n"):
            data = source.readline(_SKIP_PIECE_BYTES)
            if not data:
                break
            length += len(data)
        yield RawLine(number, b"", too_long=length)


# -- parsing --------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_timestamp(value: object) -> int:
    """Milliseconds since the epoch from a JSON value: a number of milliseconds, a string of
    digits, or an ISO-8601 string (UTC unless it carries an offset). Raises ValueError."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"timestamp must be a number or an ISO-8601 string, not {value!r}")
    if isinstance(value, int):
        millis = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"timestamp {value!r} is not a finite number")
        millis = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if _INTEGER_RE.fullmatch(text):
            millis = int(text)
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"timestamp {value[:80]!r} is not ISO-8601") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            millis = (moment - _EPOCH) // _MS
    else:
        raise ValueError(f"timestamp must be a number or an ISO-8601 string, not {type(value)}")
    if abs(millis) >= _MAX_ABS_TIMESTAMP_MS:
        raise ValueError(f"timestamp {millis} is out of range")
    return millis


def event_id_for(number: int, data: bytes) -> str:
    """Deterministic: the same line at the same place of a file always gets the same id."""
    digest = hashlib.blake2b(number.to_bytes(8, "big"), digest_size=10)
    digest.update(data)
    return f"push-{number}-{digest.hexdigest()}"


class LineParser:
    """Turns one line into an event (or says why not)."""

    def __init__(self, group: str, stream: str, clock: Callable[[], float] = time.time) -> None:
        self._group = group
        self._stream = stream
        self._clock = clock
        self._last_plain_ms = 0

    def parse(self, raw: RawLine) -> LogEvent | LineProblem | None:
        """The line's event, its rejection, or None for a blank line."""
        if raw.too_long:
            return LineProblem(raw.number, LINE_TOO_LONG, f"line of {raw.too_long} bytes")
        try:
            text = raw.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return LineProblem(raw.number, INVALID_UTF8, f"not UTF-8 at byte {exc.start}")
        stripped = text.strip()
        if not stripped:
            return None
        try:
            if stripped.startswith("{"):
                timestamp, message = self._from_json(stripped)
            else:
                timestamp, message = self._plain_stamp(), text
        except _Refused as refused:
            return LineProblem(raw.number, refused.reason, refused.detail)
        return LogEvent(
            event_id=event_id_for(raw.number, raw.data),
            log_group=self._group,
            log_stream=self._stream,
            timestamp=timestamp,
            message=message,
        )

    def _plain_stamp(self) -> int:
        self._last_plain_ms = max(self._last_plain_ms, int(self._clock() * 1000))
        return self._last_plain_ms

    @staticmethod
    def _from_json(text: str) -> tuple[int, str]:
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _Refused(INVALID_JSON, str(exc)[:200]) from None
        if not isinstance(document, dict):  # e.g. "{...} trailing" is caught above
            raise _Refused(INVALID_JSON, "not a JSON object")
        if "timestamp" not in document:
            raise _Refused(BAD_TIMESTAMP, "no 'timestamp' key")
        try:
            timestamp = parse_timestamp(document["timestamp"])
        except ValueError as exc:
            raise _Refused(BAD_TIMESTAMP, str(exc)) from None
        message = document.get("message")
        if message is None:
            raise _Refused(BAD_MESSAGE, "no 'message' key (or it is null)")
        if not isinstance(message, str):
            message = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        if not message:
            raise _Refused(BAD_MESSAGE, "empty message")
        return timestamp, message


# -- progress -------------------------------------------------------------------------------


class Progress:
    """One updating status line on a terminal; silent when ``out`` is not a TTY."""

    def __init__(self, out: TextIO, *, interval: float = 0.25, force: bool | None = None) -> None:
        self._out = out
        self._enabled = out.isatty() if force is None else force
        self._interval = interval
        self._last = -math.inf
        self._width = 0

    def show(self, report: PushReport, *, now: bool = False) -> None:
        if not self._enabled:
            return
        moment = time.monotonic()
        if not now and moment - self._last < self._interval:
            return
        self._last = moment
        text = (
            f"cloudlog push: {report.lines_read:,} lines read, {report.written:,} written, "
            f"{len(report.rejected):,} rejected, {report.blank:,} blank"
        )
        self._out.write("\r" + text.ljust(self._width))
        self._out.flush()
        self._width = len(text)

    def finish(self, report: PushReport) -> None:
        if self._enabled:
            self.show(report, now=True)
            self._out.write("\n")
            self._out.flush()


# -- pushing --------------------------------------------------------------------------------


def _chunks(
    lines: Iterator[RawLine],
    parser: LineParser,
    report: PushReport,
    progress: Progress,
    *,
    chunk_events: int,
    chunk_bytes: int,
) -> Iterator[tuple[list[tuple[int, LogEvent]], list[LineProblem]]]:
    """(events with their line numbers, lines rejected while parsing), chunk by chunk."""
    events: list[tuple[int, LogEvent]] = []
    problems: list[LineProblem] = []
    size = 0
    for raw in lines:
        report.lines_read = raw.number
        parsed = parser.parse(raw)
        if parsed is None:
            report.blank += 1
        elif isinstance(parsed, LineProblem):
            problems.append(parsed)
        else:
            events.append((raw.number, parsed))
            size += len(raw.data)
            if len(events) >= chunk_events or size >= chunk_bytes:
                yield events, problems
                events, problems, size = [], [], 0
        if raw.number % 1024 == 0:
            progress.show(report)
    if events or problems:
        yield events, problems


def push_lines(
    source: BinaryIO,
    writer: Writer,
    group: str,
    stream: str,
    *,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> PushReport:
    """Push every line of ``source``; stops after the first chunk with a delivery failure."""
    if chunk_events < 1 or chunk_bytes < 1 or max_line_bytes < 1:
        raise ValueError("chunk_events, chunk_bytes and max_line_bytes must be positive")
    report = PushReport()
    progress = progress or Progress(sys.stderr, force=False)
    try:
        _push(
            source,
            writer,
            report,
            progress,
            LineParser(group, stream, clock),
            chunk_events=chunk_events,
            chunk_bytes=chunk_bytes,
            max_line_bytes=max_line_bytes,
        )
    except KeyboardInterrupt:
        progress.finish(report)
        raise PushInterrupted(report) from None
    progress.finish(report)
    return report


def _push(
    source: BinaryIO,
    writer: Writer,
    report: PushReport,
    progress: Progress,
    parser: LineParser,
    *,
    chunk_events: int,
    chunk_bytes: int,
    max_line_bytes: int,
) -> None:
    lines = read_lines(source, max_line_bytes)
    for numbered, problems in _chunks(
        lines, parser, report, progress, chunk_events=chunk_events, chunk_bytes=chunk_bytes
    ):
        results = writer.write([event for _, event in numbered]) if numbered else []
        if len(results) != len(numbered):
            raise RuntimeError(f"writer returned {len(results)} results for {len(numbered)}")
        for (number, _), result in zip(numbered, results, strict=True):
            if result.written:
                report.written += 1
                continue
            reason = result.reason or RejectReason.INVALID
            problem = LineProblem(number, reason.value, result.detail or reason.value)
            (report.failed if reason in DELIVERY_FAILURES else problems).append(problem)
        # Chunks cover consecutive lines, so sorting each keeps the whole list in line order.
        report.rejected.extend(sorted(problems, key=lambda p: p.line))
        report.failed.sort(key=lambda p: p.line)
        progress.show(report, now=True)
        if report.failed:
            following = next(lines, None)
            report.not_attempted_from_line = None if following is None else following.number
            return


def push_file(path: Path, writer: Writer, group: str, stream: str, **options: Any) -> PushReport:
    with path.open("rb") as source:
        return push_lines(source, writer, group, stream, **options)


def run_push(
    path: Path,
    group: str,
    stream: str,
    *,
    max_event_bytes: int | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The command: push, print the JSON report on ``out``, return the exit status.

    0: every line written, rejected or blank. 1: lines neither written nor rejected (delivery
    failed; the report says which and where the push stopped) or the file could not be read.
    130: interrupted.
    """
    from cloudlog_core.aws import AwsSettings
    from cloudlog_writer import CloudWatchWriter, WriterSettings, make_logs_client

    out = out or sys.stdout
    err = err or sys.stderr
    overrides: dict[str, Any] = {"dedupe_max_entries": 0}  # every line is its own event
    if max_event_bytes is not None:
        overrides["max_event_bytes"] = max_event_bytes
    settings = WriterSettings(**overrides)  # the rest from CLOUDLOG_WRITER_* variables
    client = make_logs_client(settings, AwsSettings())
    try:
        with CloudWatchWriter(client, settings) as writer:
            report = push_file(path, writer, group, stream, progress=Progress(err))
    except PushInterrupted as interrupted:
        done = interrupted.report
        err.write(
            f"cloudlog push: interrupted after line {done.lines_read}: {done.written} events "
            "written before the chunk in flight, whose events may or may not have been written\n"
        )
        return 130
    except OSError as exc:
        err.write(f"cloudlog push: cannot read {path}: {exc}\n")
        return 1
    named = {"group": group, "stream": stream, **report.as_dict()}  # where it was written
    out.write(json.dumps(named, ensure_ascii=False) + "\n")
    out.flush()
    if report.complete:
        return 0
    first = report.failed[0]
    where = (
        f"; lines from {report.not_attempted_from_line} on were not read"
        if report.not_attempted_from_line is not None
        else ""
    )
    err.write(
        f"cloudlog push: {len(report.failed)} events were neither written nor rejected "
        f"({first.reason}: {first.detail}){where}\n"
    )
    return 1
