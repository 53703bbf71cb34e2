"""``cloudlog push`` against a real moto server behind the strict AwsProxy.

The command runs as a real subprocess (``python -m cloudlog push``) with
``CLOUDLOG_AWS_ENDPOINT_URL`` pointing at the proxy; what it reports is checked against what
``get_log_events`` reads back from the emulator, and the proxy checks every PutLogEvents body
against the CloudWatch limits moto does not enforce.
"""

from __future__ import annotations

import json
import os
import pty
import random
import select
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cloudlog_cli.push import push_lines
from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.awsproxy import PUT_LOG_EVENTS, AwsProxy
from cloudlog_devtools.processes import cloudlog_command, free_port
from cloudlog_writer import CloudWatchWriter, EventResult, LogEvent, WriterSettings
from cloudlog_writer.splitting import reassemble
from cloudlog_writer.writer import make_logs_client
from tests.conftest import read_stream

pytestmark = pytest.mark.integration

DAY_MS = 24 * 60 * 60 * 1000


@pytest.fixture
def proxy(moto_url: str) -> Iterator[AwsProxy]:
    with AwsProxy(moto_url, strict=True) as running:
        yield running


@pytest.fixture(scope="module")
def emulator(moto_url: str) -> Any:
    return make_client("logs", AwsSettings(aws_endpoint_url=moto_url))


def push_env(endpoint_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLOG_")}
    env.update(
        {
            "CLOUDLOG_AWS_ENDPOINT_URL": endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    env.update(extra)
    return env


def run_push(
    path: Path, group: str, stream: str, env: dict[str, str], *extra: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cloudlog_command("push", str(path), "--group", group, "--stream", stream, *extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_json_object(stdout: str) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout[:2000]
    report = json.loads(lines[0])
    assert isinstance(report, dict)
    return report


def iso(ms: int, zulu: bool) -> str:
    text = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if zulu else text


@dataclass
class Backfill:
    """A generated file and what must become of each of its lines."""

    path: Path
    lines: int = 0
    blank: int = 0
    rejected: dict[int, str] = field(default_factory=dict)  # line -> reason
    json_stamps: dict[str, int] = field(default_factory=dict)  # message -> timestamp
    plain: list[str] = field(default_factory=list)

    @property
    def written_messages(self) -> list[str]:
        return [*self.json_stamps, *self.plain]


def generate_backfill(path: Path, lines: int, now_ms: int, seed: int = 3) -> Backfill:
    """JSON lines stamped over the last 2 days in random order (a tenth ISO-8601), plain lines,
    a few broken JSON lines, lines with no usable timestamp or message, too-old lines, blank
    lines and one 1.3 MB line (split into parts by the writer)."""
    rng = random.Random(seed)
    specials: dict[int, str] = {}
    kinds = ["invalid_json"] * 25 + ["too_old"] * 25 + ["bad_timestamp"] * 8
    kinds += ["bad_message"] * 6 + ["blank"] * 30 + ["huge"]
    for number, special in zip(rng.sample(range(1, lines + 1), len(kinds)), kinds, strict=True):
        specials[number] = special
    out = Backfill(path)
    with path.open("w", encoding="utf-8") as file:
        for number in range(1, lines + 1):
            kind = specials.get(number)
            text: str
            value: object
            document: dict[str, object]
            if kind == "blank":
                text = rng.choice(["", "   ", "\t"])
                out.blank += 1
            elif kind == "invalid_json":
                text = rng.choice(
                    [
                        '{"timestamp": 1, "message": "unterminated',
                        "{not json at all}",
                        '{"timestamp": 5, "message": "x",}',
                        "{",
                    ]
                )
                out.rejected[number] = kind
            elif kind == "too_old":
                stamp = now_ms - rng.randint(15, 60) * DAY_MS
                value = stamp if number % 2 else iso(stamp, zulu=True)
                text = json.dumps({"timestamp": value, "message": f"ancient {number}"})
                out.rejected[number] = kind
            elif kind == "bad_timestamp":
                value = rng.choice([None, "yesterday", True, [1], "2024-13-45T00:00:00"])
                document = {"message": f"no time {number}"}
                if number % 3:
                    document["timestamp"] = value
                text = json.dumps(document)
                out.rejected[number] = kind
            elif kind == "bad_message":
                document = {"timestamp": now_ms - 1000}
                if number % 2:
                    document["message"] = ""
                text = json.dumps(document)
                out.rejected[number] = kind
            elif kind == "huge":
                text = f"huge {number} " + "äöü€😀" * 100_000  # 1.3 MB: 2 parts
                out.plain.append(text)
            elif rng.random() < 0.8:
                stamp = now_ms - rng.randint(0, 2 * DAY_MS - 60_000)
                message = f"json {number} " + rng.choice(
                    ["GET /", "ünïcödé", "🚀 deploy", "x" * 300]
                )
                value = iso(stamp, zulu=bool(number % 2)) if number % 10 == 0 else stamp
                text = json.dumps({"timestamp": value, "message": message, "level": "info"})
                out.json_stamps[message] = stamp
            else:
                text = f"  plain {number} " + rng.choice(["at frame()", "ERROR ✗", "ok"])
                out.plain.append(text)
            file.write(text + "\n")
            out.lines += 1
    return out


def test_push_backfills_a_50000_line_file_and_reports_every_rejected_line(
    proxy: AwsProxy, emulator: Any, tmp_path: Path
) -> None:
    group, stream = f"push-test/{uuid.uuid4().hex[:10]}", "backfill"
    now_ms = int(time.time() * 1000)
    backfill = generate_backfill(tmp_path / "old.log", 50_000, now_ms)

    started = time.monotonic()
    done = run_push(backfill.path, group, stream, push_env(proxy.url))
    elapsed = time.monotonic() - started
    finished_ms = int(time.time() * 1000)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not a terminal: no progress line
    report = one_json_object(done.stdout)
    rejected = report["rejected"]
    assert report["written"] + len(rejected) == backfill.lines - backfill.blank
    assert report["blank"] == backfill.blank
    assert report["lines"] == backfill.lines
    assert {r["line"]: r["reason"] for r in rejected} == backfill.rejected
    assert [r["line"] for r in rejected] == sorted(backfill.rejected)
    assert all(r["detail"] for r in rejected)

    stored = read_stream(emulator, group, stream)
    messages = reassemble(e["message"] for e in stored)
    assert len(messages) == report["written"] == len(backfill.written_messages)
    assert Counter(messages) == Counter(backfill.written_messages)
    assert len(stored) == len(messages) + 1  # the 1.3 MB line went as two parts
    stamp_of = {e["message"]: e["timestamp"] for e in stored}
    assert all(stamp_of[m] == ts for m, ts in backfill.json_stamps.items())
    plain_stamps = [stamp_of[m] for m in backfill.plain if m in stamp_of]
    assert all(now_ms <= ts <= finished_ms for ts in plain_stamps)

    assert proxy.violations() == []
    puts = proxy.counts()[PUT_LOG_EVENTS]
    assert puts >= 5  # 50,000 events cannot go in fewer than five 10,000-event calls
    print(
        f"\npush: {backfill.lines} lines in {elapsed:.2f} s "
        f"({backfill.lines / elapsed:,.0f} lines/s), {puts} PutLogEvents calls"
    )


class Recording:
    """The real writer, noting where in the file the reader was at each write() call."""

    def __init__(self, writer: CloudWatchWriter, source: BinaryIO) -> None:
        self.writer = writer
        self.source = source
        self.calls: list[tuple[int, int]] = []  # (events, file position)
        self.ids: list[str] = []

    def write(self, events: list[LogEvent]) -> list[EventResult]:
        self.calls.append((len(events), self.source.tell()))
        self.ids += [event.event_id for event in events]
        return self.writer.write(events)


def test_push_streams_the_file_in_bounded_chunks_with_deterministic_ids(
    proxy: AwsProxy, emulator: Any, tmp_path: Path
) -> None:
    backfill = generate_backfill(tmp_path / "old.log", 30_000, int(time.time() * 1000), seed=9)
    size = backfill.path.stat().st_size
    group = f"push-test/{uuid.uuid4().hex[:10]}"
    settings = WriterSettings()
    client = make_logs_client(settings, AwsSettings(aws_endpoint_url=proxy.url))
    runs: list[Recording] = []
    for stream in ("first", "again"):
        with CloudWatchWriter(client, settings) as writer, backfill.path.open("rb") as source:
            recording = Recording(writer, source)
            report = push_lines(source, recording, group, stream, chunk_events=10_000)
        runs.append(recording)
        assert report.complete
        assert report.written == len(backfill.written_messages)
        assert len(read_stream(emulator, group, stream)) == report.written + 1  # huge: 2 parts

    first = runs[0]
    assert [events for events, _ in first.calls] == [10_000, 10_000, len(first.ids) - 20_000]
    # The first chunk went out with about a third of the file read, not all of it.
    assert first.calls[0][1] < size / 2
    assert runs[1].ids == first.ids  # same file, same ids
    assert len(set(first.ids)) == len(first.ids)
    assert proxy.violations() == []


def test_push_shows_progress_on_a_terminal(proxy: AwsProxy, tmp_path: Path) -> None:
    path = tmp_path / "few.log"
    path.write_text("".join(f"line {i}\n" for i in range(3000)) + '{"bad\n', encoding="utf-8")
    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen(
            cloudlog_command("push", str(path), "--group", "push-test/tty", "--stream", "s"),
            env=push_env(proxy.url),
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:  # read the terminal until the child closes it
            ready, _, _ = select.select([leader], [], [], 30)
            assert ready, "no output on the terminal within 30 s"
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child has exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = child.communicate(timeout=60)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert child.returncode == 0
    terminal = seen.decode()
    assert "\r" in terminal
    assert "3,001 lines read, 3,000 written, 1 rejected, 0 blank" in terminal
    report = one_json_object(stdout)
    assert report["written"] == 3000
    assert report["rejected"] == [
        {"line": 3001, "reason": "invalid_json", "detail": report["rejected"][0]["detail"]}
    ]
    assert proxy.violations() == []


def test_push_fails_clearly_on_bad_input_and_an_unreachable_endpoint(
    proxy: AwsProxy, tmp_path: Path
) -> None:
    path = tmp_path / "some.log"
    path.write_text("one\ntwo\n", encoding="utf-8")
    env = push_env(proxy.url)

    missing = run_push(tmp_path / "nope.log", "push-test/x", "s", env)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    assert missing.stdout == ""

    bad_group = run_push(path, "aws/reserved", "s", env)
    assert bad_group.returncode == 2
    assert "--group" in bad_group.stderr and "aws/" in bad_group.stderr

    bad_stream = run_push(path, "push-test/x", "a:b", env)
    assert bad_stream.returncode == 2 and "--stream" in bad_stream.stderr

    too_small = run_push(path, "push-test/x", "s", env, "--max-event-bytes", "10")
    assert too_small.returncode == 2 and "--max-event-bytes" in too_small.stderr
    assert proxy.counts() == {}  # none of these reached AWS

    nobody = push_env(
        f"http://127.0.0.1:{free_port()}",
        CLOUDLOG_WRITER_MAX_ATTEMPTS="2",
        CLOUDLOG_WRITER_MAX_RETRY_SECONDS="2",
        CLOUDLOG_WRITER_CONNECT_TIMEOUT_SECONDS="1",
    )
    unreachable = run_push(path, "push-test/x", "s", nobody)
    assert unreachable.returncode == 1
    assert "neither written nor rejected" in unreachable.stderr
    report = one_json_object(unreachable.stdout)
    assert report["written"] == 0 and report["rejected"] == []
    assert [(f["line"], f["reason"]) for f in report["failed"]] == [
        (1, "retries_exhausted"),
        (2, "retries_exhausted"),
    ]
    assert report["not_attempted_from_line"] is None  # the whole file was one chunk
    assert proxy.violations() == []


def test_push_turns_each_kind_of_line_into_an_event_or_a_reason(
    proxy: AwsProxy, emulator: Any, tmp_path: Path
) -> None:
    now_ms = int(time.time() * 1000)
    hour_ago = now_ms - 3_600_000
    naive_iso = datetime.fromtimestamp(hour_ago / 1000, tz=UTC).replace(tzinfo=None).isoformat()
    lines = [
        "\ufeffplain after a byte order mark\r",  # 1: CRLF and BOM removed
        json.dumps({"timestamp": hour_ago, "message": {"user": "ü", "n": 1}}),  # 2: object
        json.dumps({"timestamp": float(hour_ago) + 0.7, "message": "float ms"}),  # 3
        json.dumps({"timestamp": str(hour_ago + 1), "message": "digit string"}),  # 4
        json.dumps({"timestamp": naive_iso, "message": "ISO without offset is UTC"}),  # 5
        "x" * 1001,  # 6: longer than max_line_bytes
        "\t  indented plain text keeps its spaces",  # 7
        json.dumps({"timestamp": now_ms + 3 * DAY_MS, "message": "from the future"}),  # 8
        json.dumps({"timestamp": 10**30, "message": "absurd"}),  # 9
        "",  # 10
        json.dumps({"timestamp": hour_ago, "message": "\ud800 lone surrogate"}),  # 11
        "last line without a newline",  # 12
    ]
    body = "\n".join(lines).encode("utf-8")
    body = body.replace(b"\n\n", b"\n\xff\xfe not utf-8\n\n", 1)  # 10: bad bytes, 11: blank
    path = tmp_path / "kinds.log"
    path.write_bytes(body)
    group = f"push-test/{uuid.uuid4().hex[:10]}"
    settings = WriterSettings()
    client = make_logs_client(settings, AwsSettings(aws_endpoint_url=proxy.url))
    with CloudWatchWriter(client, settings) as writer, path.open("rb") as source:
        report = push_lines(source, writer, group, "kinds", max_line_bytes=1000)

    assert report.complete and report.lines_read == 13 and report.blank == 1
    assert [(p.line, p.reason) for p in report.rejected] == [
        (6, "line_too_long"),
        (8, "too_new"),
        (9, "bad_timestamp"),
        (10, "invalid_utf8"),
        (12, "invalid"),
    ]
    stored = {e["message"]: e["timestamp"] for e in read_stream(emulator, group, "kinds")}
    assert report.written == len(stored) == 7
    assert stored['{"user":"ü","n":1}'] == hour_ago
    assert stored["float ms"] == hour_ago
    assert stored["digit string"] == hour_ago + 1
    assert stored["ISO without offset is UTC"] == hour_ago
    assert {"plain after a byte order mark", "\t  indented plain text keeps its spaces",
            "last line without a newline"} <= set(stored)  # fmt: skip
    assert proxy.violations() == []


def test_group_is_the_stored_name_unless_a_tenant_is_given(
    moto_url: str, emulator: Any, tmp_path: Path
) -> None:
    """One rule: --group is written as it is (the name `cloudlog tail` takes); --tenant NAME puts
    it under that tenant's prefix from the registry, as ingest does for an app's group."""
    from cloudlog_ingest.tenants import TenantRegistry

    registry = tmp_path / "tenants.json"
    TenantRegistry.load(registry).create("local")
    source = tmp_path / "import.log"
    source.write_text("first line\nsecond line\n")
    suffix = uuid.uuid4().hex[:8]
    env = push_env(moto_url, CLOUDLOG_TENANTS_PATH=str(registry))

    as_given = run_push(source, f"shop/import-{suffix}", "s", env)
    assert as_given.returncode == 0, as_given.stderr
    assert one_json_object(as_given.stdout)["group"] == f"shop/import-{suffix}"
    assert len(read_stream(emulator, f"shop/import-{suffix}", "s")) == 2

    with_tenant = run_push(source, f"shop/import-{suffix}", "s", env, "--tenant", "local")
    assert with_tenant.returncode == 0, with_tenant.stderr
    report = one_json_object(with_tenant.stdout)
    assert (report["group"], report["stream"], report["written"]) == (
        f"local/shop/import-{suffix}",
        "s",
        2,
    )
    messages = [e["message"] for e in read_stream(emulator, f"local/shop/import-{suffix}", "s")]
    assert messages == ["first line", "second line"]

    unknown = run_push(source, "shop/import", "s", env, "--tenant", "nobody")
    assert unknown.returncode == 2
    assert "no tenant 'nobody'" in unknown.stderr and "--tenant" in unknown.stderr

    escaping = run_push(source, "../acme/x", "s", env, "--tenant", "local")
    assert escaping.returncode == 2 and "--group" in escaping.stderr
