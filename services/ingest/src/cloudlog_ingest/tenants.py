"""The tenant registry: who may write, under which log group prefix, how fast.

A JSON file (``CLOUDLOG_TENANTS_PATH``), written atomically with mode 0600. Per tenant: a name,
the SHA-256 of its API key (the key itself is printed once at creation and never stored or
logged), its log group prefix, an event rate and burst, and optional retention, tags and KMS
key for the groups it creates. Prefixes never overlap, compared without regard to case, so no
tenant's groups can fall under another's prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

KEY_PREFIX = "cl_"
KEY_RANDOM_BYTES = 32  # 256 bits of entropy (secrets.token_urlsafe)
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")
# A prefix is a group-name start: ASCII letters, digits and . - _ / #, ending in "/".
PREFIX = re.compile(r"[A-Za-z0-9][.\-_#A-Za-z0-9]*(/[.\-_#A-Za-z0-9]+)*/")
MAX_PREFIX_LENGTH = 256  # leaves at least 256 of the 512 characters of a group name
DEFAULT_RATE = 2_000.0  # events per second
DEFAULT_BURST = 20_000  # events


class TenantSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLOUDLOG_", extra="ignore")

    tenants_path: Path = Path(".cloudlog-state/tenants.json")
    # How often ingest looks for changes to the file (revocations take effect within this).
    tenants_reload_seconds: float = Field(default=1.0, gt=0, le=3600)


class TenantError(ValueError):
    pass


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    key_sha256: str
    log_group_prefix: str
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    retention_days: int | None = None
    kms_key_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    revoked: bool = False
    created_at: float = 0.0

    def public(self) -> dict[str, Any]:
        """What ``tenant list`` shows: everything but the key's hash."""
        shown = asdict(self)
        del shown["key_sha256"]
        return shown


def _overlap(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a.startswith(b) or b.startswith(a)


class TenantRegistry:
    """The tenants in memory, loaded from and saved to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tenants: dict[str, Tenant] = {}
        self._by_hash: dict[str, Tenant] = {}
        self._mtime_ns: int | None = None

    @classmethod
    def load(cls, path: Path) -> TenantRegistry:
        registry = cls(path)
        registry.reload()
        return registry

    def reload(self) -> bool:
        """Read the file if it changed since the last read. True if it was read."""
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime_ns = None
        if mtime_ns == self._mtime_ns:
            return False
        tenants: dict[str, Tenant] = {}
        if mtime_ns is not None:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            for entry in document.get("tenants", []):
                tenant = Tenant(**entry)
                tenants[tenant.name] = tenant
        self._tenants = tenants
        self._by_hash = {t.key_sha256: t for t in tenants.values() if not t.revoked}
        self._mtime_ns = mtime_ns
        return True

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"tenants": [asdict(tenant) for tenant in self._tenants.values()]}
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        self._mtime_ns = self.path.stat().st_mtime_ns

    def tenants(self) -> list[Tenant]:
        return list(self._tenants.values())

    def get(self, name: str) -> Tenant | None:
        return self._tenants.get(name)

    def authenticate(self, api_key: str) -> Tenant | None:
        """The active tenant whose key this is, compared in constant time."""
        digest = hash_key(api_key)
        tenant = self._by_hash.get(digest)
        if tenant is None or not hmac.compare_digest(tenant.key_sha256, digest):
            return None
        return tenant

    def owner_of(self, group: str) -> Tenant | None:
        """The tenant whose prefix holds ``group`` (prefixes never overlap)."""
        for tenant in self._tenants.values():
            if group.startswith(tenant.log_group_prefix):
                return tenant
        return None

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
        if not TENANT_NAME.fullmatch(name):
            raise TenantError(
                "tenant name must be 1-63 characters: lowercase letters, digits and -, "
                "starting with a letter or digit"
            )
        if name in self._tenants:
            raise TenantError(f"tenant {name!r} exists already")
        prefix = log_group_prefix if log_group_prefix is not None else f"{name}/"
        if len(prefix) > MAX_PREFIX_LENGTH or not PREFIX.fullmatch(prefix) or ".." in prefix:
            raise TenantError(
                f"log group prefix must be at most {MAX_PREFIX_LENGTH} characters of letters, "
                "digits and . - _ # in /-separated parts, ending in '/', e.g. 'acme/'"
            )
        if prefix.lower().startswith("aws/"):
            raise TenantError("log group prefix may not start with 'aws/'")
        for other in self._tenants.values():
            if _overlap(prefix, other.log_group_prefix):
                raise TenantError(
                    f"log group prefix {prefix!r} overlaps tenant {other.name!r}'s "
                    f"{other.log_group_prefix!r}"
                )
        if rate <= 0 or burst < 1:
            raise TenantError("rate must be positive and burst at least 1")
        api_key = new_api_key()
        tenant = Tenant(
            name=name,
            key_sha256=hash_key(api_key),
            log_group_prefix=prefix,
            rate=rate,
            burst=burst,
            retention_days=retention_days,
            kms_key_id=kms_key_id,
            tags=dict(tags or {}),
            created_at=time.time(),
        )
        self._tenants[name] = tenant
        self._by_hash[tenant.key_sha256] = tenant
        self.save()
        return tenant, api_key

    def revoke(self, name: str) -> Tenant:
        tenant = self._tenants.get(name)
        if tenant is None:
            raise TenantError(f"no tenant {name!r}")
        revoked = Tenant(**{**asdict(tenant), "revoked": True})
        self._tenants[name] = revoked
        self._by_hash.pop(tenant.key_sha256, None)
        self.save()
        return revoked
