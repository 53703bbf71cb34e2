"""Tenants against the real ingest server: isolation, authentication, quotas, limits, reports.

Two tenants, alpha and beta, are added to the pipeline's registry; ingest picks them up within
its reload interval. Every trick alpha tries must leave beta's prefix untouched.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_ingest.tenants import TenantRegistry
from tests.conftest import log_event, read_stream, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Tenants:
    alpha_prefix: str
    beta_prefix: str
    alpha_key: str
    beta_key: str
    registry: TenantRegistry


@pytest.fixture(scope="module")
def tenants(pipeline: LocalPipeline) -> Iterator[Tenants]:
    suffix = uuid.uuid4().hex[:6]
    registry = TenantRegistry.load(pipeline.log_dir / "tenants.json")
    alpha, alpha_key = registry.create(f"alpha-{suffix}", rate=1e6, burst=10**6)
    beta, beta_key = registry.create(
        f"beta-{suffix}", rate=1e6, burst=10**6, retention_days=30, tags={"team": "beta"}
    )
    time.sleep(1.2)  # ingest re-reads the registry at most once a second
    yield Tenants(alpha.log_group_prefix, beta.log_group_prefix, alpha_key, beta_key, registry)


def post_batch(
    pipeline: LocalPipeline, key: str, events: list[dict[str, Any]], **kwargs: Any
) -> httpx.Response:
    return httpx.post(
        f"{pipeline.ingest_url}/v1/logs",
        json={"events": events},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        **kwargs,
    )


def all_groups(logs_client: Any) -> list[str]:
    pages = logs_client.get_paginator("describe_log_groups").paginate()
    return [group["logGroupName"] for page in pages for group in page["logGroups"]]


def tricks(beta_prefix: str) -> list[str]:
    beta = beta_prefix.rstrip("/")
    return [
        f"../{beta}/app",
        "..",
        f"app/../../{beta}/app",
        f"//{beta}/app",
        f"/../{beta}/app",
        f"app//{beta}",
        "app/",
        f"./{beta}",
        f"aws/{beta}",
        f"AWS/{beta}",
        f"\uff0e\uff0e/{beta}/app",  # full-width dots
        f"{beta[0]}\u0435{beta[2:]}/app",  # Cyrillic e for Latin e
        f"{beta}\u200b/app",  # zero-width space
        f"{beta}\x00/app",
        "x" * 600,
        "",
    ]


def test_a_tenant_cannot_write_to_or_create_another_tenants_groups(
    pipeline: LocalPipeline, logs_client: Any, tenants: Tenants
) -> None:
    beta_group = tenants.beta_prefix + "app"
    assert post_batch(pipeline, tenants.beta_key, [log_event("app")]).json()["written"] == 1
    before = set(all_groups(logs_client))

    # A refused name rejects its event alone (200, per event), never with a word about beta.
    for trick in tricks(tenants.beta_prefix):
        response = post_batch(pipeline, tenants.alpha_key, [log_event(trick), log_event("mine")])
        assert response.status_code == 200, (trick, response.text)
        refused, mine = response.json()["results"]
        assert (refused["status"], refused["reason"]) == ("rejected", "forbidden_name"), trick
        assert refused["detail"].startswith("events.0.log_group: ")
        assert mine["status"] == "written"
        assert tenants.beta_prefix.rstrip("/") not in response.text  # learns nothing of beta
    for stream in ("a:b", "a*b", "_rejected", "x\ny", ""):
        response = post_batch(pipeline, tenants.alpha_key, [log_event("app", stream=stream)])
        assert response.status_code == 200, (stream, response.text)
        (refused,) = response.json()["results"]
        assert (refused["status"], refused["reason"]) == ("rejected", "forbidden_name"), stream
        assert refused["detail"].startswith("events.0.log_stream: ")
    seed = httpx.post(
        f"{pipeline.ingest_url}/logs",
        json={"log_group": f"../{tenants.beta_prefix}app", "log_stream": "s", "log_message": "x"},
        headers={"Authorization": f"Bearer {tenants.alpha_key}"},
    )
    assert seed.status_code == 403

    # What does get through is alpha's own: a name that spells beta's prefix lands under alpha's.
    spelled = post_batch(pipeline, tenants.alpha_key, [log_event(tenants.beta_prefix + "app")])
    assert spelled.json()["written"] == 1
    cased = post_batch(
        pipeline, tenants.alpha_key, [log_event(tenants.beta_prefix.upper() + "app")]
    )
    assert cased.json()["written"] == 1
    # A leading "/" is AWS's convention, not a way out: the same name under alpha's prefix.
    slashed = post_batch(
        pipeline, tenants.alpha_key, [log_event("/" + tenants.beta_prefix + "app")]
    )
    assert slashed.json()["written"] == 1

    created = set(all_groups(logs_client)) - before
    assert created == {
        tenants.alpha_prefix + "mine",
        tenants.alpha_prefix + "_cloudlog",  # where alpha reads what was refused, and why
        tenants.alpha_prefix + tenants.beta_prefix + "app",
        tenants.alpha_prefix + tenants.beta_prefix.upper() + "app",
    }
    assert (
        len(read_stream(logs_client, tenants.alpha_prefix + tenants.beta_prefix + "app", "s")) == 2
    )
    assert len(read_stream(logs_client, beta_group, "s")) == 1, "beta's stream holds beta's only"


def test_the_same_event_id_from_two_tenants_is_two_events(
    pipeline: LocalPipeline, logs_client: Any, tenants: Tenants
) -> None:
    shared = {"event_id": f"shared-{uuid.uuid4().hex[:8]}"}
    beta = post_batch(pipeline, tenants.beta_key, [log_event("ids", **shared)]).json()
    alpha = post_batch(pipeline, tenants.alpha_key, [log_event("ids", **shared)]).json()
    assert beta["results"][0]["detail"] is None and alpha["results"][0]["detail"] is None
    assert len(read_stream(logs_client, tenants.beta_prefix + "ids", "s")) == 1
    assert len(read_stream(logs_client, tenants.alpha_prefix + "ids", "s")) == 1


def test_groups_a_tenant_creates_get_its_retention_and_tags(
    pipeline: LocalPipeline, logs_client: Any, tenants: Tenants
) -> None:
    assert post_batch(pipeline, tenants.beta_key, [log_event("kept")]).json()["written"] == 1
    group = tenants.beta_prefix + "kept"
    described = logs_client.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert described[0]["retentionInDays"] == 30
    arn = described[0]["arn"].removesuffix(":*")
    assert logs_client.list_tags_for_resource(resourceArn=arn)["tags"] == {"team": "beta"}


def test_rejected_events_are_reported_to_the_tenants_own_rejected_stream(
    pipeline: LocalPipeline, logs_client: Any, tenants: Tenants
) -> None:
    stale = log_event("audit", message="from last month")
    stale["timestamp"] -= 30 * 24 * 3600 * 1000
    body = post_batch(pipeline, tenants.alpha_key, [stale, log_event("audit")]).json()
    assert [r["status"] for r in body["results"]] == ["rejected", "written"]
    reports = wait_for(
        lambda: read_stream(logs_client, tenants.alpha_prefix + "audit", "_rejected"),
        what="the rejection report",
    )
    report = json.loads(reports[0]["message"])
    assert report["event_id"] == stale["event_id"] and report["reason"] == "too_old"
    # The report quotes the event as it would have been stored (cloudlog's JSON line).
    assert json.loads(report["message"])["message"] == "from last month"
    assert report["message_truncated"] is False


def test_a_revoked_key_is_refused_within_the_reload_interval(
    pipeline: LocalPipeline, tenants: Tenants
) -> None:
    registry = TenantRegistry.load(pipeline.log_dir / "tenants.json")
    doomed, key = registry.create(f"gone-{uuid.uuid4().hex[:6]}")
    time.sleep(1.2)
    assert post_batch(pipeline, key, [log_event("x")]).status_code == 200
    registry.revoke(doomed.name)
    time.sleep(1.2)
    assert post_batch(pipeline, key, [log_event("x")]).status_code == 401


def test_over_the_rate_is_a_429_with_retry_after(pipeline: LocalPipeline) -> None:
    registry = TenantRegistry.load(pipeline.log_dir / "tenants.json")
    _, key = registry.create(f"slow-{uuid.uuid4().hex[:6]}", rate=5, burst=10)
    time.sleep(1.2)
    first = post_batch(pipeline, key, [log_event("q") for _ in range(30)])  # admitted, into debt
    second = post_batch(pipeline, key, [log_event("q")])
    assert first.status_code == 200
    assert second.status_code == 429
    assert 1 <= int(second.headers["Retry-After"]) <= 5


def test_body_and_field_limits(pipeline: LocalPipeline, tenants: Tenants) -> None:
    huge = post_batch(
        pipeline, tenants.alpha_key, [log_event("l", message="x" * (17 * 1024 * 1024))]
    )
    assert huge.status_code == 413
    fields = post_batch(
        pipeline, tenants.alpha_key, [log_event("l", fields={"blob": "y" * 70_000})]
    )
    assert fields.status_code == 422
    assert fields.json()["errors"][0].startswith("events.0.fields: ")
    assert "65536 bytes" in fields.json()["errors"][0]
    logger = post_batch(pipeline, tenants.alpha_key, [log_event("l", logger="z" * 300)])
    assert logger.json()["errors"] == ["events.0.logger: String should have at most 256 characters"]
