"""The ingest app in-process with a fake writer: validation, group commit, back-pressure."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloudlog_ingest.app import WriterHandle, create_app
from cloudlog_ingest.settings import IngestSettings
from cloudlog_ingest.tenants import TenantRegistry, TenantSettings
from cloudlog_writer.models import EventResult, GroupOptions, LogEvent, Outcome, RejectReason
from cloudlog_writer.observer import WriterObserver


class FakeWriter:
    """Records commits; rejects events whose message says so; can be held to build a backlog."""

    def __init__(self) -> None:
        self.commits: list[list[LogEvent]] = []
        self.release = threading.Event()
        self.release.set()
        self.observer: WriterObserver | None = None  # what the app handed the writer factory

    def write(self, events: Sequence[LogEvent]) -> list[EventResult]:
        self.release.wait(10)
        self.commits.append(list(events))
        return [
            EventResult(e.event_id, Outcome.REJECTED, RejectReason.INVALID, "told to")
            if '"reject me"' in e.message
            else EventResult(e.event_id, Outcome.WRITTEN)
            for e in events
        ]


TENANT_PREFIX = "acme/"


METRICS_TOKEN = "unit-test-metrics-token"


class AuthedClient:
    """A TestClient that sends the tenant's key on every call."""

    def __init__(self, client: TestClient, api_key: str) -> None:
        self.client = client
        self.app = client.app
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.scraper = {"Authorization": f"Bearer {METRICS_TOKEN}"}  # /metrics, /readyz details

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.client.post(
            url, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs
        )


@contextmanager
def running(
    writer: FakeWriter,
    *,
    rate: float = 1e9,
    cloudwatch_probe: Callable[[], None] | None = None,
    **settings: Any,
) -> Iterator[AuthedClient]:
    with tempfile.TemporaryDirectory() as state:
        tenants_path = Path(state) / "tenants.json"
        _, api_key = TenantRegistry.load(tenants_path).create("acme", rate=rate, burst=10**9)

        def factory(
            group_options: Callable[[str], GroupOptions], observer: WriterObserver
        ) -> WriterHandle:
            writer.observer = observer
            return WriterHandle(write=writer.write, close=lambda: None, read_back=lambda *_: set())

        app = create_app(
            IngestSettings(**{"journal_path": None, "metrics_token": METRICS_TOKEN, **settings}),
            writer_factory=factory,
            tenant_settings=TenantSettings(tenants_path=tenants_path),
            cloudwatch_probe=cloudwatch_probe,
        )
        with TestClient(app) as client:
            yield AuthedClient(client, api_key)


def batch_event(n: int, message: str = "m") -> dict[str, object]:
    return {
        "event_id": f"e{n}",
        "timestamp": 1_700_000_000_000 + n,
        "log_group": "g",
        "log_stream": "s",
        "message": message,
        "level": "INFO",
        "logger": "app",
        "fields": {"n": n},
    }


def test_batch_returns_one_result_per_event_in_order() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        events = [batch_event(0), batch_event(1, "reject me"), batch_event(2)]
        body = client.post("/v1/logs", json={"events": events}).json()
    assert [r["event_id"] for r in body["results"]] == ["e0", "e1", "e2"]
    assert [r["status"] for r in body["results"]] == ["written", "rejected", "written"]
    assert body["results"][1]["reason"] == "invalid"
    assert (body["written"], body["rejected"]) == (2, 1)


def test_events_are_rendered_as_json_with_level_message_and_fields() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        client.post("/v1/logs", json={"events": [batch_event(5, "hé 🚀")]})
    (event,) = writer.commits[0]
    assert json.loads(event.message) == {
        "level": "info",
        "message": "hé 🚀",
        "event_id": "e5",
        "logger": "app",
        "fields": {"n": 5},
    }
    assert (event.log_group, event.log_stream, event.timestamp) == (
        "acme/g",
        "s",
        1_700_000_000_005,
    )


def test_seed_contract_is_queued_and_written_by_shutdown() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        response = client.post(
            "/logs",
            json={"log_group": "g", "log_stream": "s", "log_message": "hi", "level": "error"},
        )
        assert response.json() == {"status": "queued"}
    written = [e for commit in writer.commits for e in commit]
    assert [json.loads(e.message)["message"] for e in written] == ["hi"]
    assert json.loads(written[0].message)["level"] == "error"


def test_requests_arriving_during_a_write_share_the_next_commit() -> None:
    writer = FakeWriter()
    writer.release.clear()
    with running(writer) as client:
        threads = [
            threading.Thread(
                target=client.post,
                args=("/v1/logs",),
                kwargs={"json": {"events": [batch_event(n)]}},
            )
            for n in range(6)
        ]
        for thread in threads:
            thread.start()
        threading.Timer(0.3, writer.release.set).start()
        for thread in threads:
            thread.join(10)
    assert sum(len(c) for c in writer.commits) == 6
    assert len(writer.commits) < 6, "the held commit let the others gather into fewer commits"


def test_over_the_pending_bound_is_a_429_with_retry_after() -> None:
    writer = FakeWriter()
    writer.release.clear()
    with running(writer, max_pending_events=2, retry_after_seconds=3) as client:
        pipeline = client.app.state.pipeline  # type: ignore[attr-defined]
        first = threading.Thread(
            target=client.post,
            args=("/v1/logs",),
            kwargs={"json": {"events": [batch_event(0), batch_event(1)]}},
        )
        first.start()
        deadline = time.monotonic() + 10
        while pipeline.pending_events < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        response = client.post("/v1/logs", json={"events": [batch_event(2)]})
        writer.release.set()
        first.join(10)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert [e.event_id for c in writer.commits for e in c] == ["e0", "e1"]


@pytest.mark.parametrize(
    ("event_change", "error"),
    [
        ({"timestamp": -1}, "events.0.timestamp"),
        ({"event_id": ""}, "events.0.event_id"),
        ({"level": "verbose"}, "events.0.level"),
    ],
)
def test_bad_batch_fields_are_named(event_change: dict[str, object], error: str) -> None:
    with running(FakeWriter()) as client:
        response = client.post("/v1/logs", json={"events": [{**batch_event(0), **event_change}]})
    assert response.status_code == 422
    assert response.json()["errors"][0].startswith(error + ":")


def test_empty_batch_is_refused() -> None:
    with running(FakeWriter()) as client:
        response = client.post("/v1/logs", json={"events": []})
    assert response.status_code == 422
    assert response.json()["errors"][0].startswith("events:")


def test_messages_over_the_configured_length_are_a_422_naming_the_field() -> None:
    with running(FakeWriter(), max_message_chars=10, max_events_per_request=2) as client:
        too_long = client.post("/v1/logs", json={"events": [batch_event(0, "x" * 11)]})
        too_many = client.post("/v1/logs", json={"events": [batch_event(n) for n in range(3)]})
        seed = client.post(
            "/logs", json={"log_group": "g", "log_stream": "s", "log_message": "y" * 11}
        )
        fits = client.post("/v1/logs", json={"events": [batch_event(0, "x" * 10)]})
    assert too_long.status_code == 422
    assert too_long.json()["errors"] == [
        "events.0.message: String should have at most 10 characters"
    ]
    assert too_many.status_code == 422
    assert too_many.json()["errors"] == ["events: List should have at most 2 items"]
    assert seed.status_code == 422
    assert seed.json()["errors"] == ["log_message: String should have at most 10 characters"]
    assert fits.status_code == 200


def test_a_redelivered_batch_is_answered_written_without_a_second_write() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        first = client.post("/v1/logs", json={"events": [batch_event(1), batch_event(2)]}).json()
        again = client.post("/v1/logs", json={"events": [batch_event(2), batch_event(3)]}).json()
    assert first["written"] == 2
    assert [r["status"] for r in again["results"]] == ["written", "written"]
    assert again["results"][0]["detail"] == "duplicate: already written"
    assert [e.event_id for c in writer.commits for e in c] == ["e1", "e2", "e3"]


def test_the_configured_journal_file_is_the_one_written(tmp_path: Path) -> None:
    writer = FakeWriter()
    journal_path = tmp_path / "ingest.journal"
    with running(writer, journal_path=journal_path) as client:
        client.post("/v1/logs", json={"events": [batch_event(1)]})
    records = [json.loads(line) for line in journal_path.read_text().splitlines()]
    assert {record["t"] for record in records} >= {"done"}
    assert any(record.get("keys") for record in records)


# --- names refused by confinement are answered per event (issue 14, item 1) -----------------


def test_a_refused_name_rejects_its_event_only_and_the_rest_of_the_batch_is_written() -> None:
    writer = FakeWriter()
    events = [
        batch_event(0),
        batch_event(1) | {"log_group": "../other"},
        batch_event(2),
        batch_event(3) | {"log_group": "AWS/x"},
        batch_event(4) | {"log_stream": "_rejected"},
        batch_event(5, "reject me"),
    ]
    with running(writer) as client:
        response = client.post("/v1/logs", json={"events": events})
    assert response.status_code == 200
    body = response.json()
    assert [r["status"] for r in body["results"]] == [
        "written", "rejected", "written", "rejected", "rejected", "rejected",
    ]  # fmt: skip
    assert (body["written"], body["rejected"]) == (2, 4)
    assert [r["reason"] for r in body["results"]] == [
        None, "forbidden_name", None, "forbidden_name", "forbidden_name", "invalid",
    ]  # fmt: skip
    assert (
        body["results"][1]["detail"] == "events.1.log_group: may not contain '..' or '.' segments"
    )
    assert (
        body["results"][3]["detail"] == "events.3.log_group: may not start with 'aws/' (any case)"
    )
    assert body["results"][4]["detail"].startswith("events.4.log_stream: '_rejected' is reserved")
    written = [e for commit in writer.commits for e in commit]
    assert {(e.event_id, e.log_group, e.log_stream) for e in written} >= {
        ("e0", "acme/g", "s"),
        ("e2", "acme/g", "s"),
        ("e5", "acme/g", "s"),
    }
    assert not [e for e in written if e.event_id in ("e1", "e3", "e4")], "never under its name"
    reports = {e.event_id: e for e in written if e.log_group == "acme/_cloudlog"}
    assert sorted(reports) == ["e1.rejected", "e3.rejected", "e4.rejected"]
    assert {e.log_stream for e in reports.values()} == {"_rejected"}
    report = json.loads(reports["e1.rejected"].message)
    assert report == {
        "event_id": "e1",
        "reason": "forbidden_name",
        "detail": "events.1.log_group: may not contain '..' or '.' segments",
        "log_group": "../other",
        "log_stream": "s",
        "timestamp": 1_700_000_000_001,
        "message": "m",
        "message_truncated": False,
    }


def test_a_batch_of_refused_names_only_is_answered_all_rejected_and_reported() -> None:
    writer = FakeWriter()
    events = [batch_event(0) | {"log_group": "a//b"}, batch_event(1) | {"log_stream": "a:b"}]
    with running(writer) as client:
        response = client.post("/v1/logs", json={"events": events})
    assert response.status_code == 200
    assert response.json() == {
        "written": 0,
        "rejected": 2,
        "results": [
            {
                "event_id": "e0",
                "status": "rejected",
                "reason": "forbidden_name",
                "detail": (
                    "events.0.log_group: may not start with '//', end with '/' or contain '//'"
                ),
            },
            {
                "event_id": "e1",
                "status": "rejected",
                "reason": "forbidden_name",
                "detail": "events.1.log_stream: may not contain ':'",
            },
        ],
    }
    written = [e for commit in writer.commits for e in commit]
    assert [(e.event_id, e.log_group, e.log_stream) for e in written] == [
        ("e0.rejected", "acme/_cloudlog", "_rejected"),
        ("e1.rejected", "acme/_cloudlog", "_rejected"),
    ]


def test_a_redelivered_mixed_batch_reports_its_refused_event_once() -> None:
    writer = FakeWriter()
    events = [batch_event(0), batch_event(1) | {"log_group": "aws/x"}]
    with running(writer) as client:
        first = client.post("/v1/logs", json={"events": events}).json()
        again = client.post("/v1/logs", json={"events": events}).json()
    assert (first["written"], first["rejected"]) == (again["written"], again["rejected"]) == (1, 1)
    assert [r["status"] for r in again["results"]] == ["written", "rejected"]
    assert again["results"][1]["reason"] == "forbidden_name"
    written = [e.event_id for commit in writer.commits for e in commit]
    assert sorted(written) == ["e0", "e1.rejected"], "each written once, the report too"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("/ecs/shop", "acme/ecs/shop"),
        ("ecs/shop", "acme/ecs/shop"),
        ("/app", "acme/app"),
        ("/a.b-c_d#e/f", "acme/a.b-c_d#e/f"),
    ],
)
def test_a_leading_slash_means_the_same_name_under_the_prefix(given: str, stored: str) -> None:
    writer = FakeWriter()
    with running(writer) as client:
        batch = client.post("/v1/logs", json={"events": [batch_event(0) | {"log_group": given}]})
        seed = client.post(
            "/logs", json={"log_group": given, "log_stream": "s", "log_message": "x"}
        )
    assert batch.json()["written"] == 1
    assert seed.status_code == 200
    assert {e.log_group for commit in writer.commits for e in commit} == {stored}


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("/", "must not be empty"),
        ("//ecs", "may not start with '//'"),
        ("/ecs/", "end with '/'"),
        ("/aws/lambda/x", "may not start with 'aws/'"),
        ("/AWS/x", "may not start with 'aws/'"),
        ("/../x", "'..'"),
        ("/./x", "'..' or '.' segments"),
    ],
)
def test_a_leading_slash_does_not_open_a_way_around_the_rules(given: str, rule: str) -> None:
    writer = FakeWriter()
    with running(writer) as client:
        batch = client.post("/v1/logs", json={"events": [batch_event(0) | {"log_group": given}]})
        seed = client.post(
            "/logs", json={"log_group": given, "log_stream": "s", "log_message": "x"}
        )
    (result,) = batch.json()["results"]
    assert (result["status"], result["reason"]) == ("rejected", "forbidden_name")
    assert result["detail"].startswith("events.0.log_group: ") and rule in result["detail"]
    assert seed.status_code == 403, "the seed contract keeps its 403"
    assert seed.json()["detail"].startswith("log_group: ") and rule in seed.json()["detail"]
    assert {e.log_group for commit in writer.commits for e in commit} == {"acme/_cloudlog"}


def test_the_seed_contract_still_answers_a_refused_name_with_a_403_naming_the_field() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        response = client.post(
            "/logs", json={"log_group": "../x", "log_stream": "s", "log_message": "x"}
        )
    assert response.status_code == 403
    assert response.json()["detail"] == "log_group: may not contain '..' or '.' segments"
    assert writer.commits == []
