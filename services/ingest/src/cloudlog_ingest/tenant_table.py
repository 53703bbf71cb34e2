"""The tenant registry in a DynamoDB table (``CLOUDLOG_TENANTS_TABLE``), shared by every replica.

One table, partition key ``pk`` (string), no sort key. Items:

* ``tenant#<name>``: one tenant, its fields as attributes (``key_sha256``: only the SHA-256 of
  its API key, never the key).
* ``prefix#<lowercased prefix>`` -> ``tenant``: the tenant's claim on its log group prefix.
* ``key#<sha256>`` -> ``tenant``: the active key's hash (removed on revoke, replaced on rotate).
* ``registry#version`` -> ``v``: a number every write raises, in the same transaction.

Every write is one ``TransactWriteItems``, all of it or none of it:

* create: the version item ``SET v = v + 1`` on the condition that ``v`` is still the value read
  before the tenants were read (``attribute_not_exists`` for the first), plus the tenant, claim
  and key items, each ``attribute_not_exists(pk)``. The name and the overlap of prefixes
  (case-insensitive, neither a prefix of the other) are checked against the tenants read at
  that version; as every write raises the version, two creates that read the same registry
  cannot both commit: the loser re-reads (and then sees the winner's prefix) and tries again.
  The claim item also refuses an exactly equal prefix by itself.
* revoke: the tenant ``SET revoked = true`` on the condition that its key hash is the one read,
  the key item deleted, the version raised (``ADD v 1``).
* rotate: the tenant's ``key_sha256`` replaced on the condition that it is the one read and the
  tenant is not revoked, the old key item deleted, the new one put (``attribute_not_exists``),
  the version raised.

A write that loses a race (its condition fails, or DynamoDB reports a conflicting transaction)
is retried from a fresh read until ``write_timeout_seconds``; a name taken or a prefix
overlapping is a TenantError with the reason, nothing written.

Readers (ingest) keep the tenants in memory: every ``CLOUDLOG_TENANTS_RELOAD_SECONDS`` they read
the version item (``GetItem``, strongly consistent) and only when it changed read the tenant
items (``Scan``, strongly consistent). The version is read before the tenants, so a change
committed during the scan is seen at the next poll. A table that does not answer, or holds an
item that is not a tenant, leaves the last good tenants in place, with the reason in
``problem`` (``/readyz`` degraded), as a corrupt registry file does.
"""

from __future__ import annotations

import hmac
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_ingest.tenants import (
    DEFAULT_BURST,
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DEFAULT_RATE,
    RegistryCorrupt,
    RegistryLocked,
    RegistryUnavailable,
    Tenant,
    TenantError,
    TenantRegistry,
    TenantSettings,
    TenantStore,
    _tenant_from,
    check_addable,
    hash_key,
    new_api_key,
    new_tenant,
)

DEFAULT_TENANTS_TABLE = "cloudlog-tenants"
VERSION_PK = "registry#version"
TENANT_PK = "tenant#"
PREFIX_PK = "prefix#"
KEY_PK = "key#"
# DynamoDB calls are short; a replica that cannot reach the table keeps its last good view.
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 3.0
MAX_ATTEMPTS = 2

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class _Lost(Exception):
    """A write's condition failed because another write came first: read again and retry."""


def dynamodb_client(settings: AwsSettings | None = None) -> Any:
    return make_client(
        "dynamodb",
        settings or AwsSettings(),
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_attempts=MAX_ATTEMPTS,
    )


def ensure_tenant_table(client: Any, table: str) -> bool:
    """Create the table (pay per request, encrypted) if it is missing; True if created.

    For the emulator and LocalStack; on AWS the CloudFormation template creates it."""
    try:
        client.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
            SSESpecification={"Enabled": True},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceInUseException":
            return False
        raise
    client.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc) or type(exc).__name__


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# -- items <-> tenants -------------------------------------------------------------------------


def _to_attribute(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int | float):
        return {"N": repr(value)}
    if isinstance(value, Mapping):
        return {"M": {str(k): _to_attribute(v) for k, v in value.items()}}
    raise TypeError(f"cannot store {type(value).__name__}")


def _from_attribute(attribute: Mapping[str, Any]) -> Any:
    if "S" in attribute:
        return attribute["S"]
    if "BOOL" in attribute:
        return bool(attribute["BOOL"])
    if "N" in attribute:
        text = str(attribute["N"])
        return float(text) if any(c in text for c in ".eE") else int(text)
    if "M" in attribute:
        return {k: _from_attribute(v) for k, v in attribute["M"].items()}
    if "NULL" in attribute:
        return None
    raise ValueError(f"unexpected attribute type {sorted(attribute)}")


def tenant_item(tenant: Tenant) -> dict[str, Any]:
    """The tenant's item: its fields (``None`` ones left out), with ``pk``."""
    item = {"pk": {"S": TENANT_PK + tenant.name}}
    for key, value in asdict(tenant).items():
        if value is not None:
            item[key] = _to_attribute(value)
    return item


def tenant_from_item(item: Mapping[str, Any]) -> Tenant:
    """ValueError if the item is not a valid tenant."""
    fields = {k: _from_attribute(v) for k, v in item.items() if k != "pk"}
    if isinstance(fields.get("rate"), int):
        fields["rate"] = float(fields["rate"])
    tenant = _tenant_from(fields, 0)
    if item.get("pk") != {"S": TENANT_PK + tenant.name}:
        raise ValueError(f"item {item.get('pk')} does not hold tenant {tenant.name!r}")
    return tenant


@dataclass(frozen=True)
class _View:
    """One consistent picture of the tenants, swapped whole (readers never see a mix)."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    by_hash: dict[str, Tenant] = field(default_factory=dict)

    @classmethod
    def of(cls, tenants: dict[str, Tenant]) -> _View:
        return cls(tenants, {t.key_sha256: t for t in tenants.values() if not t.revoked})


class DynamoTenantStore:
    """The tenants of one DynamoDB table, in memory; writes are conditional transactions."""

    def __init__(
        self,
        table: str,
        client: Any | None = None,
        *,
        write_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.client = client if client is not None else dynamodb_client()
        self.write_timeout_seconds = write_timeout_seconds
        self._clock = clock
        self._view = _View()
        self._version: int | None = None  # None: never loaded
        self._reload_lock = threading.Lock()
        self.problem: str | None = None

    @classmethod
    def load(
        cls,
        table: str,
        client: Any | None = None,
        *,
        write_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    ) -> DynamoTenantStore:
        """The registry in ``table`` (empty table: no tenants). RegistryUnavailable when the
        table cannot be read, RegistryCorrupt when it holds an item that is not a tenant."""
        store = cls(table, client, write_timeout_seconds=write_timeout_seconds)
        try:
            version = store._read_version()
            store._use(store._scan(), version)
        except (ClientError, BotoCoreError) as exc:
            raise RegistryUnavailable(
                f"tenant table {table} cannot be read: {_describe(exc)}"
            ) from None
        return store

    @property
    def source(self) -> str:
        return f"DynamoDB table {self.table}"

    # -- reading ---------------------------------------------------------------------------

    def _read_version(self) -> int:
        answer = self.client.get_item(
            TableName=self.table, Key={"pk": {"S": VERSION_PK}}, ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            return 0
        return int(item["v"]["N"])

    def _scan(self) -> dict[str, Tenant]:
        """Every tenant item (strongly consistent). RegistryCorrupt for an item that is not one."""
        tenants: dict[str, Tenant] = {}
        request: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "FilterExpression": "begins_with(pk, :tenant)",
            "ExpressionAttributeValues": {":tenant": {"S": TENANT_PK}},
        }
        while True:
            page = self.client.scan(**request)
            for item in page.get("Items", []):
                try:
                    tenant = tenant_from_item(item)
                except ValueError as exc:
                    raise RegistryCorrupt(
                        f"tenant table {self.table} holds an invalid item "
                        f"{item.get('pk', {}).get('S', '?')!r}: {exc}"
                    ) from None
                tenants[tenant.name] = tenant
            if "LastEvaluatedKey" not in page:
                return tenants
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _use(self, tenants: dict[str, Tenant], version: int) -> None:
        self._view = _View.of(tenants)
        self._version = version
        if self.problem is not None:
            logger.info("tenant table %s is readable again", self.table)
            self.problem = None

    def _trouble(self, reason: str) -> None:
        if reason != self.problem:
            logger.error(
                "%s; keeping the last good registry (%d tenants)",
                reason,
                len(self._view.tenants),
            )
            self.problem = reason

    def reload(self) -> bool:
        """Read the version item; if it changed, read the tenants. True if new tenants were
        taken. A table that cannot be read, or holds an invalid item, leaves the last good
        tenants in place: the reason is kept in ``problem`` and logged once per failure."""
        with self._reload_lock:
            try:
                version = self._read_version()
                if version == self._version and self.problem is None:
                    return False
                tenants = self._scan()
            except (ClientError, BotoCoreError) as exc:
                self._trouble(f"tenant table {self.table} cannot be read: {_describe(exc)}")
                return False
            except RegistryCorrupt as exc:
                self._trouble(str(exc))
                return False
            self._use(tenants, version)
            return True

    def tenants(self) -> list[Tenant]:
        return list(self._view.tenants.values())

    def get(self, name: str) -> Tenant | None:
        return self._view.tenants.get(name)

    def authenticate(self, api_key: str) -> Tenant | None:
        """The active tenant whose key this is, compared in constant time (from memory: the
        table's ``key#`` items are the same map, for lookups from outside ingest)."""
        digest = hash_key(api_key)
        tenant = self._view.by_hash.get(digest)
        if tenant is None or not hmac.compare_digest(tenant.key_sha256, digest):
            return None
        return tenant

    def owner_of(self, group: str) -> Tenant | None:
        for tenant in self._view.tenants.values():
            if group.startswith(tenant.log_group_prefix):
                return tenant
        return None

    # -- writing ---------------------------------------------------------------------------

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        """``attempt`` until it does not lose a race, or ``write_timeout_seconds`` pass."""
        deadline = self._clock() + self.write_timeout_seconds
        tries = 0
        while True:
            tries += 1
            try:
                return attempt()
            except _Lost:
                pass
            except (ClientError, BotoCoreError) as exc:
                raise RegistryUnavailable(
                    f"tenant table {self.table}: {_describe(exc)}; nothing was changed"
                ) from None
            if self._clock() >= deadline:
                raise RegistryLocked(
                    f"tenant table {self.table} kept changing under this write for "
                    f"{self.write_timeout_seconds:g} s ({tries} tries); try again"
                )
            # Jittered, growing pauses: concurrent writers spread out instead of colliding.
            time.sleep(random.uniform(0.005, min(0.02 * tries, 0.25)))

    def _transact(self, items: list[dict[str, Any]], what: list[str]) -> None:
        """One TransactWriteItems. _Lost when a condition failed or a transaction conflicted;
        TenantError when only ``what``'s named items (not the version) refused."""
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "TransactionConflictException":
                raise _Lost from None
            if code != "TransactionCanceledException":
                raise
            reasons = [
                str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", [])
            ]
            refused = [
                name
                for name, reason in zip(what, reasons, strict=False)
                if reason == "ConditionalCheckFailed"
            ]
            if refused and "version" not in refused and "tenant" not in refused:
                # The registry did not move, yet a claim stands: an item without its tenant.
                raise TenantError(
                    f"tenant table {self.table} refused the write: {', '.join(refused)} "
                    "already taken (an item left without its tenant?); nothing was changed"
                ) from None
            raise _Lost from None

    def _version_bump(self, expected: int | None) -> dict[str, Any]:
        """Raise the version; with ``expected``, only if it is still that (create)."""
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": {"S": VERSION_PK}},
        }
        if expected is None:
            update["UpdateExpression"] = "ADD v :one"
            update["ExpressionAttributeValues"] = {":one": {"N": "1"}}
        elif expected == 0:
            update["UpdateExpression"] = "SET v = :next"
            update["ConditionExpression"] = "attribute_not_exists(pk)"
            update["ExpressionAttributeValues"] = {":next": {"N": "1"}}
        else:
            update["UpdateExpression"] = "SET v = :next"
            update["ConditionExpression"] = "v = :seen"
            update["ExpressionAttributeValues"] = {
                ":next": {"N": str(expected + 1)},
                ":seen": {"N": str(expected)},
            }
        return {"Update": update}

    def _put_new(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def _claim(self, pk: str, tenant: str) -> dict[str, Any]:
        return self._put_new({"pk": {"S": pk}, "tenant": {"S": tenant}})

    def create(
        self,
        name: str,
        *,
        log_group_prefix: str | None = None,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        retention_days: int | None = None,
        kms_key_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> tuple[Tenant, str]:
        """Add a tenant; returns it with its new API key (shown once, never stored)."""
        tenant, api_key = new_tenant(
            name,
            log_group_prefix=log_group_prefix,
            rate=rate,
            burst=burst,
            retention_days=retention_days,
            kms_key_id=kms_key_id,
            tags=tags,
        )

        def attempt() -> None:
            version = self._read_version()
            current = self._scan()
            self._use(current, version)
            check_addable(current, tenant)  # at ``version``; the transaction holds it to that
            self._transact(
                [
                    self._version_bump(version),
                    self._put_new(tenant_item(tenant)),
                    self._claim(PREFIX_PK + tenant.log_group_prefix.lower(), name),
                    self._claim(KEY_PK + tenant.key_sha256, name),
                ],
                ["version", "tenant", f"prefix {tenant.log_group_prefix!r}", "key"],
            )
            self._use({**current, name: tenant}, version + 1)

        self._retrying(attempt)
        return tenant, api_key

    def _read_tenant(self, name: str) -> Tenant:
        answer = self.client.get_item(
            TableName=self.table, Key={"pk": {"S": TENANT_PK + name}}, ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            raise TenantError(f"no tenant {name!r}")
        try:
            return tenant_from_item(item)
        except ValueError as exc:
            raise RegistryCorrupt(
                f"tenant table {self.table}: item {TENANT_PK + name!r} is invalid: {exc}"
            ) from None

    def _update_tenant(
        self, tenant: Tenant, expression: str, values: dict[str, Any], condition: str
    ) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"pk": {"S": TENANT_PK + tenant.name}},
                "UpdateExpression": expression,
                "ConditionExpression": f"key_sha256 = :seen_key AND {condition}",
                "ExpressionAttributeValues": {
                    ":seen_key": {"S": tenant.key_sha256},
                    **values,
                },
            }
        }

    def _delete(self, pk: str) -> dict[str, Any]:
        return {"Delete": {"TableName": self.table, "Key": {"pk": {"S": pk}}}}

    def revoke(self, name: str) -> Tenant:
        """Mark the tenant revoked and drop its key item, in one transaction."""

        def attempt() -> Tenant:
            tenant = self._read_tenant(name)
            if tenant.revoked:
                return tenant
            self._transact(
                [
                    self._update_tenant(
                        tenant,
                        "SET revoked = :yes",
                        {":yes": {"BOOL": True}, ":no": {"BOOL": False}},
                        "revoked = :no",
                    ),
                    self._delete(KEY_PK + tenant.key_sha256),
                    self._version_bump(None),
                ],
                ["tenant", "key", "version"],
            )
            return Tenant(**{**asdict(tenant), "revoked": True})

        revoked = self._retrying(attempt)
        self._version = None  # the next reload reads the tenants again
        return revoked

    def rotate(self, name: str) -> tuple[Tenant, str]:
        """Give an active tenant a new API key (returned, shown once); the old one stops
        working at each replica's next reload. One transaction."""
        api_key = new_api_key()
        digest = hash_key(api_key)

        def attempt() -> Tenant:
            tenant = self._read_tenant(name)
            if tenant.revoked:
                raise TenantError(f"tenant {name!r} is revoked; its key cannot be rotated")
            self._transact(
                [
                    self._update_tenant(
                        tenant,
                        "SET key_sha256 = :new_key",
                        {":new_key": {"S": digest}, ":no": {"BOOL": False}},
                        "revoked = :no",
                    ),
                    self._delete(KEY_PK + tenant.key_sha256),
                    self._claim(KEY_PK + digest, name),
                    self._version_bump(None),
                ],
                ["tenant", "old key", "new key", "version"],
            )
            return Tenant(**{**asdict(tenant), "key_sha256": digest})

        rotated = self._retrying(attempt)
        self._version = None
        return rotated, api_key


def open_tenant_store(settings: TenantSettings | None = None) -> TenantStore:
    """The registry the settings name: the DynamoDB table (``CLOUDLOG_TENANTS_TABLE``) if set,
    else the file (``CLOUDLOG_TENANTS_PATH``). Loaded: RegistryCorrupt, RegistryUnavailable."""
    settings = settings or TenantSettings()
    if settings.tenants_table:
        return DynamoTenantStore.load(
            settings.tenants_table, write_timeout_seconds=settings.tenants_lock_timeout_seconds
        )
    return TenantRegistry.load(
        settings.tenants_path, lock_timeout_seconds=settings.tenants_lock_timeout_seconds
    )
