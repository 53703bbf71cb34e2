from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from moto import mock_aws

from cloudlog_core.aws import AwsSettings
from cloudlog_devtools.processes import free_port
from cloudlog_ingest.bodylimit import BodySizeLimit
from cloudlog_ingest.confinement import Refusal, check_stream, resolve_group
from cloudlog_ingest.quotas import Quotas, TokenBucket
from cloudlog_ingest.tenant_table import (
    DynamoTenantStore,
    dynamodb_client,
    ensure_tenant_table,
    open_tenant_store,
    tenant_from_item,
)
from cloudlog_ingest.tenants import (
    RegistryCorrupt,
    RegistryLocked,
    RegistryUnavailable,
    TenantError,
    TenantRegistry,
    TenantSettings,
    hash_key,
    registry_lock,
)


def test_the_key_is_returned_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    registry = TenantRegistry.load(path)
    tenant, key = registry.create("acme", retention_days=7, tags={"t": "1"})
    text = path.read_text()
    assert key.startswith("cl_") and key not in text
    assert hash_key(key) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reloaded = TenantRegistry.load(path)
    assert reloaded.authenticate(key) == tenant
    assert reloaded.authenticate(key + "x") is None
    assert tenant.log_group_prefix == "acme/"
    assert "key_sha256" not in tenant.public()


def test_revoked_keys_stop_authenticating_in_other_processes_views(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    writer_view, reader_view = TenantRegistry.load(path), TenantRegistry.load(path)
    _, key = writer_view.create("acme")
    assert reader_view.reload() and reader_view.authenticate(key) is not None
    writer_view.revoke("acme")
    assert reader_view.reload() and reader_view.authenticate(key) is None
    assert not reader_view.reload(), "unchanged file: no re-read"


@pytest.mark.parametrize(
    ("first", "second"),
    [("acme/", "acme/"), ("acme/", "ACME/"), ("acme/", "acme/eu/"), ("acme/eu/", "Acme/")],
)
def test_prefixes_may_not_overlap_in_any_case(tmp_path: Path, first: str, second: str) -> None:
    registry = TenantRegistry.load(tmp_path / "t.json")
    registry.create("one", log_group_prefix=first)
    with pytest.raises(TenantError, match="overlaps"):
        registry.create("two", log_group_prefix=second)


@pytest.mark.parametrize(
    "prefix",
    ["acme", "/acme/", "acme//", "aws/", "AWS/x/", "a/../", "ac me/", "é/", "x" * 300 + "/"],
)
def test_bad_prefixes_are_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(TenantError):
        TenantRegistry.load(tmp_path / "t.json").create("one", log_group_prefix=prefix)


@pytest.mark.parametrize("name", ["", "Acme", "-x", "a" * 64, "a_b", "a/b"])
def test_bad_tenant_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(TenantError, match="tenant name"):
        TenantRegistry.load(tmp_path / "t.json").create(name)


@pytest.fixture
def acme(tmp_path: Path) -> object:
    tenant, _ = TenantRegistry.load(tmp_path / "t.json").create("acme")
    return tenant


@pytest.mark.parametrize(
    "name",
    [
        "", "..", ".", "../x", "a/../b", "a/./b", "a..b", "//a", "/", "a/", "a//b", "aws/x",
        "AWS/x", "a b", "\uff0e\uff0e", "\u0430cme", "a\u200bb", "a\x00b", "x" * 508,
    ],
)  # fmt: skip
def test_confinement_refuses_every_escape_and_look_alike(acme: object, name: str) -> None:
    with pytest.raises(Refusal) as refusal:
        resolve_group(acme, name, field="log_group")  # type: ignore[arg-type]
    assert refusal.value.field == "log_group"


@pytest.mark.parametrize("name", ["app", "app/web", "a.b-c_d#e", "ACME/x", "x" * 507])
def test_confinement_resolves_under_the_prefix(acme: object, name: str) -> None:
    assert resolve_group(acme, name, field="g") == "acme/" + name  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", ["", "a:b", "a*b", "a\nb", "_rejected", "s" * 513])
def test_stream_refusals(stream: str) -> None:
    with pytest.raises(Refusal):
        check_stream(stream, field="log_stream")


def test_token_bucket_admits_a_burst_then_charges_debt() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=5, clock=lambda: now[0])
    assert bucket.take(5) == 0
    assert bucket.take(1) == pytest.approx(0.1)  # empty: wait for one token
    now[0] += 0.1
    assert bucket.take(30) == 0  # one token: admitted, 29 in debt
    assert bucket.take(1) == pytest.approx(3.0)
    now[0] += 3.0
    assert bucket.take(1) == 0


def test_quotas_follow_a_changed_rate(tmp_path: Path) -> None:
    registry = TenantRegistry.load(tmp_path / "t.json")
    tenant, _ = registry.create("acme", rate=1, burst=1)
    quotas = Quotas(clock=lambda: 0.0)
    assert quotas.admit(tenant, 1) == 0
    assert quotas.admit(tenant, 1) == 1
    faster = dataclasses.replace(tenant, rate=100.0, burst=100)
    assert quotas.admit(faster, 1) == 0


def test_body_limit_refuses_a_chunked_body_past_the_limit() -> None:
    app = FastAPI()

    @app.post("/echo")
    async def echo(payload: dict[str, str]) -> dict[str, str]:
        return payload

    limited = BodySizeLimit(app, max_bytes=1024)  # type: ignore[arg-type]
    client = TestClient(limited)  # type: ignore[arg-type]
    small = client.post("/echo", json={"a": "b"})
    assert small.json() == {"a": "b"}

    def chunks() -> object:
        for _ in range(10):
            yield json.dumps({"a": "x" * 200}).encode()

    chunked = client.post("/echo", content=chunks())  # type: ignore[arg-type]
    assert chunked.status_code == 413
    declared = client.post("/echo", content=b"x" * 2000)
    assert declared.status_code == 413


# Issue 14: locking, corrupt files, file modes.

CORRUPT_DOCUMENTS = [
    '{"tenants": [{"name": "acme", "key_sha',  # truncated
    "",
    "[]",
    '{"tenants": [{"name": "acme"}]}',
    '{"tenants": [{"name": "acme", "key_sha256": "x", "log_group_prefix": "acme/"}]}',
    '{"tenants": "acme"}',
]


@pytest.mark.parametrize("document", CORRUPT_DOCUMENTS)
def test_a_corrupt_file_keeps_the_last_good_tenants_and_is_logged_once(
    tmp_path: Path, document: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.json"
    _, key = TenantRegistry.load(path).create("acme")
    reader = TenantRegistry.load(path)
    path.write_text(document)
    with caplog.at_level(logging.ERROR, logger="cloudlog_ingest.tenants"):
        assert not reader.reload()
        assert not reader.reload()
        path.write_text(document)  # rewritten, same fault: not logged again
        assert not reader.reload()
    assert reader.authenticate(key) is not None, "the last good registry is kept"
    assert reader.problem is not None and str(path) in reader.problem
    assert len(caplog.records) == 1 and "keeping the last good registry" in caplog.text
    path.unlink()
    TenantRegistry.load(path).create("acme")
    assert reader.reload() and reader.problem is None


@pytest.mark.parametrize("document", CORRUPT_DOCUMENTS)
def test_writers_refuse_a_corrupt_file_and_leave_it_as_it_is(tmp_path: Path, document: str) -> None:
    path = tmp_path / "tenants.json"
    registry = TenantRegistry.load(path)
    registry.create("acme")
    path.write_text(document)
    with pytest.raises(RegistryCorrupt, match="is corrupt"):
        registry.create("other")
    with pytest.raises(RegistryCorrupt, match="is corrupt"):
        registry.revoke("acme")
    with pytest.raises(RegistryCorrupt, match="is corrupt"):
        TenantRegistry.load(path)
    assert path.read_text() == document
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tenants.json", "tenants.json.lock"]


def test_a_writer_rereads_the_file_under_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    first, second = TenantRegistry.load(path), TenantRegistry.load(path)
    _, key_a = first.create("a")
    _, key_b = second.create("b")  # second's view predates "a": "a" must survive
    second.revoke("a")
    final = TenantRegistry.load(path)
    assert final.authenticate(key_b) is not None and final.authenticate(key_a) is None
    with pytest.raises(TenantError, match="exists already"):
        first.create("b")
    with pytest.raises(TenantError, match="overlaps"):
        first.create("c", log_group_prefix="B/")


def test_a_held_lock_times_out_with_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    registry = TenantRegistry.load(path, lock_timeout_seconds=0.2)
    registry.create("acme")
    before = path.read_bytes()
    with registry_lock(path, 1.0):
        started = time.monotonic()
        with pytest.raises(RegistryLocked, match="locked by another writer"):
            registry.create("other")
        assert 0.2 <= time.monotonic() - started < 2
    assert path.read_bytes() == before
    registry.create("other")


def test_a_registry_cloudlog_creates_is_0600_in_a_0700_folder(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deeper" / "tenants.json"
    old_umask = os.umask(0o022)
    try:
        TenantRegistry.load(path).create("acme")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((path.parent / "tenants.json.lock").stat().st_mode) == 0o600


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    TenantRegistry.load(tmp_path / "tenants.json").create("acme")
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "tenants.json").stat().st_mode) == 0o600


def test_rotate_replaces_the_key_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    registry = TenantRegistry.load(path)
    tenant, old = registry.create("acme")
    other_view = TenantRegistry.load(path)
    rotated, new = registry.rotate("acme")
    assert new != old and rotated.key_sha256 == hash_key(new)
    assert dataclasses.replace(rotated, key_sha256=tenant.key_sha256) == tenant
    text = path.read_text()
    assert new not in text and hash_key(old) not in text and hash_key(new) in text
    assert registry.authenticate(old) is None and registry.authenticate(new) == rotated
    assert other_view.authenticate(old) == tenant
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime, whatever the clock's grain
    assert other_view.reload()
    assert other_view.authenticate(old) is None and other_view.authenticate(new) == rotated


def test_rotate_refuses_unknown_and_revoked_tenants(tmp_path: Path) -> None:
    registry = TenantRegistry.load(tmp_path / "tenants.json")
    with pytest.raises(TenantError, match="no tenant 'nobody'"):
        registry.rotate("nobody")
    registry.create("acme")
    registry.revoke("acme")
    with pytest.raises(TenantError, match="is revoked"):
        registry.rotate("acme")


# -- the DynamoDB store (tenant_table.py), on moto in this process ----------------------------


class _CountingClient:
    """A DynamoDB client that counts calls and may run something before a transaction."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []
        self.before_transaction: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(**kwargs: Any) -> Any:
            self.calls.append(name)
            if name == "transact_write_items" and self.before_transaction:
                self.before_transaction.pop(0)()
            return method(**kwargs)

        return call


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        assert ensure_tenant_table(client, "t") is True
        assert ensure_tenant_table(client, "t") is False
        yield client


def test_table_store_creates_rotates_revokes_with_hashes_only(dynamodb: Any) -> None:
    store = DynamoTenantStore.load("t", dynamodb)
    tenant, key = store.create("acme", retention_days=7, tags={"t": "1"}, rate=1.5)
    items = {item["pk"]["S"]: item for item in dynamodb.scan(TableName="t")["Items"]}
    assert set(items) == {
        "registry#version",
        "tenant#acme",
        "prefix#acme/",
        f"key#{hash_key(key)}",
    }
    assert key not in json.dumps(items)
    assert tenant_from_item(items["tenant#acme"]) == tenant
    reader = DynamoTenantStore.load("t", dynamodb)
    assert reader.authenticate(key) == tenant and reader.source == "DynamoDB table t"

    rotated, new = store.rotate("acme")
    assert reader.reload()
    assert reader.authenticate(key) is None and reader.authenticate(new) == rotated
    keys = [pk for pk in (i["pk"]["S"] for i in dynamodb.scan(TableName="t")["Items"])]
    assert f"key#{hash_key(new)}" in keys and f"key#{hash_key(key)}" not in keys

    revoked = store.revoke("acme")
    assert revoked.revoked and store.revoke("acme").revoked  # again: no change, no error
    assert reader.reload() and reader.authenticate(new) is None
    assert not any(
        pk.startswith("key#")
        for pk in (i["pk"]["S"] for i in dynamodb.scan(TableName="t")["Items"])
    )
    with pytest.raises(TenantError, match="is revoked"):
        store.rotate("acme")
    with pytest.raises(TenantError, match="no tenant 'nobody'"):
        store.revoke("nobody")
    with pytest.raises(TenantError, match="overlaps tenant 'acme'"):
        store.create("other", log_group_prefix="ACME/sub/")  # the revoked keep their prefix


def test_table_store_reads_the_tenants_only_when_the_version_moved(dynamodb: Any) -> None:
    counting = _CountingClient(dynamodb)
    reader = DynamoTenantStore.load("t", counting)
    writer = DynamoTenantStore.load("t", dynamodb)
    counting.calls.clear()
    assert not reader.reload() and not reader.reload()
    assert counting.calls == ["get_item", "get_item"]
    writer.create("acme")
    assert reader.reload()
    assert counting.calls[2:] == ["get_item", "scan"]
    assert [t.name for t in reader.tenants()] == ["acme"]


def test_a_create_that_loses_the_race_rereads_and_then_refuses_the_overlap(dynamodb: Any) -> None:
    counting = _CountingClient(dynamodb)
    store = DynamoTenantStore.load("t", counting)
    rival = DynamoTenantStore.load("t", dynamodb)
    # Between this writer's read and its transaction, another writer takes an overlapping prefix.
    counting.before_transaction.append(lambda: rival.create("first", log_group_prefix="shop/"))
    with pytest.raises(TenantError, match="overlaps tenant 'first'"):
        store.create("second", log_group_prefix="SHOP/eu/")
    assert counting.calls.count("transact_write_items") == 1  # refused on the re-read
    assert [t.name for t in DynamoTenantStore.load("t", dynamodb).tenants()] == ["first"]
    # A rival that does not overlap: the loser retries and both are in.
    counting.before_transaction.append(lambda: rival.create("third"))
    store.create("fourth")
    assert {t.name for t in DynamoTenantStore.load("t", dynamodb).tenants()} == {
        "first",
        "third",
        "fourth",
    }


def test_a_claim_without_its_tenant_is_a_clear_error_not_a_retry_loop(dynamodb: Any) -> None:
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "prefix#shop/"}, "tenant": {"S": "gone"}})
    store = DynamoTenantStore.load("t", dynamodb, write_timeout_seconds=2)
    with pytest.raises(TenantError, match="prefix 'shop/' already taken"):
        store.create("shop")


def test_an_unreachable_or_invalid_table_keeps_the_last_good_tenants(
    dynamodb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = DynamoTenantStore.load("t", dynamodb)
    _, key = store.create("acme")
    reader = DynamoTenantStore.load("t", dynamodb)
    reader.client = dynamodb_client(AwsSettings(aws_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with caplog.at_level(logging.ERROR):
        assert not reader.reload() and not reader.reload()
    assert reader.problem is not None and "tenant table t cannot be read" in reader.problem
    assert reader.authenticate(key) is not None
    assert sum("keeping the last good registry" in r.message for r in caplog.records) == 1
    reader.client = dynamodb
    assert reader.reload() and reader.problem is None

    dynamodb.put_item(
        TableName="t", Item={"pk": {"S": "tenant#bad"}, "name": {"S": "bad"}}
    )  # no key hash, no prefix
    with pytest.raises(RegistryCorrupt, match="invalid item 'tenant#bad'"):
        store.create("other")  # writers refuse a registry that does not parse
    dynamodb.update_item(
        TableName="t",
        Key={"pk": {"S": "registry#version"}},
        UpdateExpression="ADD v :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    assert not reader.reload()
    assert reader.problem is not None and "invalid item 'tenant#bad'" in reader.problem
    assert reader.authenticate(key) is not None
    with pytest.raises(RegistryUnavailable, match="cannot be read"):
        DynamoTenantStore.load(
            "t", dynamodb_client(AwsSettings(aws_endpoint_url=f"http://127.0.0.1:{free_port()}"))
        )


def test_the_setting_picks_the_store(dynamodb: Any, tmp_path: Path) -> None:
    settings = TenantSettings(tenants_path=tmp_path / "tenants.json", tenants_table="")
    assert isinstance(open_tenant_store(settings), TenantRegistry)
