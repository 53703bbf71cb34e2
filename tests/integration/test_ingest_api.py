"""The ingest service's HTTP contract, against a real uvicorn server and the emulator."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from cloudlog_devtools.localpipeline import LocalPipeline
from tests.conftest import read_stream, wait_for

pytestmark = pytest.mark.integration


def auth(pipeline: LocalPipeline) -> dict[str, str]:
    return {"Authorization": f"Bearer {pipeline.api_key}"}


def test_seed_contract_answers_queued_and_the_line_lands(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str
) -> None:
    response = httpx.post(
        f"{pipeline.ingest_url}/logs",
        headers=auth(pipeline),
        json={
            "log_group": unique_group,
            "log_stream": "seed",
            "log_message": "hello from the seed contract",
            "level": "warning",
        },
    )
    assert response.status_code == 200
    assert response.json() == {"status": "queued"}

    events = wait_for(
        lambda: read_stream(logs_client, pipeline.stored_group(unique_group), "seed"),
        what="the seed event",
    )
    assert len(events) == 1
    document = json.loads(events[0]["message"])
    assert document["message"] == "hello from the seed contract"
    assert document["level"] == "warning"


def test_batch_answers_only_after_the_events_are_written(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str
) -> None:
    now = int(time.time() * 1000)
    ids = [uuid.uuid4().hex for _ in range(3)]
    events = [
        {
            "event_id": ids[i],
            "timestamp": now + i,
            "log_group": unique_group,
            "log_stream": "batch",
            "message": f"line {i}",
            "level": "info",
            "fields": {"n": i},
        }
        for i in range(3)
    ]
    response = httpx.post(
        f"{pipeline.ingest_url}/v1/logs",
        json={"events": events},
        headers=auth(pipeline),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["written"] == 3 and body["rejected"] == 0
    assert [result["event_id"] for result in body["results"]] == ids
    assert {result["status"] for result in body["results"]} == {"written"}

    # No polling: the answer came after the write, so the events are readable now.
    stored = read_stream(logs_client, pipeline.stored_group(unique_group), "batch")
    assert [json.loads(event["message"])["message"] for event in stored] == [
        "line 0",
        "line 1",
        "line 2",
    ]
    assert [event["timestamp"] for event in stored] == [now, now + 1, now + 2]


def test_batch_reports_too_old_events_rejected_per_event(
    pipeline: LocalPipeline, unique_group: str
) -> None:
    now = int(time.time() * 1000)
    fifteen_days_ms = 15 * 24 * 3600 * 1000
    events = [
        {
            "event_id": "fresh-1",
            "timestamp": now,
            "log_group": unique_group,
            "log_stream": "mixed",
            "message": "fresh",
        },
        {
            "event_id": "stale-1",
            "timestamp": now - fifteen_days_ms,
            "log_group": unique_group,
            "log_stream": "mixed",
            "message": "stale",
        },
    ]
    body = httpx.post(
        f"{pipeline.ingest_url}/v1/logs",
        json={"events": events},
        headers=auth(pipeline),
        timeout=30,
    ).json()
    by_id = {result["event_id"]: result for result in body["results"]}
    assert by_id["fresh-1"]["status"] == "written"
    assert by_id["stale-1"]["status"] == "rejected"
    assert by_id["stale-1"]["reason"] == "too_old"
    assert (body["written"], body["rejected"]) == (1, 1)


VALID_SEED = {"log_group": "app/x", "log_stream": "s", "log_message": "m", "level": "info"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"log_message": ""}, "log_message"),
        ({"level": "loud"}, "level"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    pipeline: LocalPipeline, change: dict[str, str], field: str
) -> None:
    response = httpx.post(
        f"{pipeline.ingest_url}/logs", json={**VALID_SEED, **change}, headers=auth(pipeline)
    )
    assert response.status_code == 422
    body = response.json()
    assert [error["loc"][-1] for error in body["detail"]] == [field]
    assert body["errors"][0].startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"log_group": "bad group!"}, "log_group"),
        ({"log_group": "aws/lambda/x"}, "log_group"),
        ({"log_group": "g" * 513}, "log_group"),
        ({"log_stream": "a:b"}, "log_stream"),
        ({"log_stream": "a*b"}, "log_stream"),
        ({"log_stream": ""}, "log_stream"),
    ],
)
def test_a_refused_group_or_stream_name_is_a_403_naming_the_field(
    pipeline: LocalPipeline, change: dict[str, str], field: str
) -> None:
    """Names are checked against the tenant's namespace after authentication (issue 5)."""
    response = httpx.post(
        f"{pipeline.ingest_url}/logs", json={**VALID_SEED, **change}, headers=auth(pipeline)
    )
    assert response.status_code == 403
    assert response.json()["detail"].startswith(f"{field}: ")


def test_without_a_valid_key_every_endpoint_is_a_401(pipeline: LocalPipeline) -> None:
    for headers in ({}, {"Authorization": "Bearer cl_wrong"}, {"Authorization": "Basic eA=="}):
        seed = httpx.post(f"{pipeline.ingest_url}/logs", json=VALID_SEED, headers=headers)
        batch = httpx.post(f"{pipeline.ingest_url}/v1/logs", json={"events": []}, headers=headers)
        assert (seed.status_code, batch.status_code) == (401, 401)
        assert seed.headers["WWW-Authenticate"] == "Bearer"


def test_bad_event_in_a_batch_is_a_422_naming_its_position(pipeline: LocalPipeline) -> None:
    event = {
        "event_id": "e1",
        "timestamp": 1,
        "log_group": "app/x",
        "log_stream": "s",
        "message": "",
    }
    response = httpx.post(
        f"{pipeline.ingest_url}/v1/logs", json={"events": [event]}, headers=auth(pipeline)
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        "events.0.message: String should have at least 1 character"
    ]


def test_healthz(pipeline: LocalPipeline) -> None:
    response = httpx.get(f"{pipeline.ingest_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
