"""The tenant registry: who may write, under which log group prefix, how fast.

A JSON file (``CLOUDLOG_TENANTS_PATH``), mode 0600 in a folder of mode 0700 when cloudlog
creates them. Per tenant: a name,
the SHA-256 of its API key (the key itself is printed once at creation and never stored or
logged), its log group prefix, an event rate and burst, and optional retention, tags and KMS
key for the groups it creates. Prefixes never overlap, compared without regard to case, so no
tenant's groups can fall under another's prefix.

This module is the file store (single node, development). With ``CLOUDLOG_TENANTS_TABLE`` set,
the registry is a DynamoDB table instead (tenant_table.py), which every replica sees:
``tenant_table.open_tenant_store`` picks one. Both answer the same ``TenantStore`` interface.

Writers (``create``, ``revoke``, ``rotate``: the ``cloudlog tenant`` commands) serialise on an
exclusive ``flock`` of a lock file beside the registry (``tenants.json.lock``), re-read the file
under the lock, change it, and write it to a temporary file of their own, fsynced, renamed over the
registry, so readers see the old file or the new one, never a mix, and no writer's change is
lost. A registry that does not parse is never overwritten: writers refuse it (RegistryCorrupt).
Ingest, reloading, keeps its last good registry and reports the problem (``problem``) instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KEY_PREFIX = "cl_"
KEY_RANDOM_BYTES = 32  # 256 bits of entropy (secrets.token_urlsafe)
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")
# A prefix is a group-name start: ASCII letters, digits and . - _ / #, ending in "/".
PREFIX = re.compile(r"[A-Za-z0-9][.\-_#A-Za-z0-9]*(/[.\-_#A-Za-z0-9]+)*/")
MAX_PREFIX_LENGTH = 256  # leaves at least 256 of the 512 characters of a group name
DEFAULT_RATE = 2_000.0  # events per second
DEFAULT_BURST = 20_000  # events
DEFAULT_LOCK_TIMEOUT_SECONDS = 10.0
FILE_MODE = 0o600
FOLDER_MODE = 0o700
KEY_SHA256 = re.compile(r"[0-9a-f]{64}")

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class TenantSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLOUDLOG_", extra="ignore")

    tenants_path: Path = Path(".cloudlog-state/tenants.json")
    # How often ingest looks for changes to the file (revocations take effect within this).
    tenants_reload_seconds: float = Field(default=1.0, gt=0, le=3600)
    # How long `cloudlog tenant create|revoke|rotate` waits for another writer to finish.
    tenants_lock_timeout_seconds: float = Field(default=DEFAULT_LOCK_TIMEOUT_SECONDS, gt=0)
    # A DynamoDB table holding the registry (tenant_table.py), shared by every replica;
    # unset or empty: the file at tenants_path (one node).
    tenants_table: str | None = None

    @field_validator("tenants_table", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


class TenantError(ValueError):
    pass


class RegistryCorrupt(TenantError):
    """The registry file exists but is not a registry (truncated, not JSON, wrong shape)."""


class RegistryLocked(TenantError):
    """Another writer held the registry's lock for longer than the timeout."""


class RegistryUnavailable(TenantError):
    """The registry's store (the DynamoDB table) did not answer or refused the request."""


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


_TENANT_FIELDS = frozenset(f.name for f in fields(Tenant))
_REQUIRED_FIELDS = frozenset({"name", "key_sha256", "log_group_prefix"})
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "rate": (int, float),
    "burst": (int,),
    "retention_days": (int, type(None)),
    "kms_key_id": (str, type(None)),
    "created_at": (int, float),
}


def _tenant_from(entry: Any, index: int) -> Tenant:
    if not isinstance(entry, dict):
        raise ValueError(f"tenants[{index}] is not an object")
    missing = _REQUIRED_FIELDS - entry.keys()
    unknown = entry.keys() - _TENANT_FIELDS
    if missing or unknown:
        what = f"lacks {sorted(missing)}" if missing else f"has unknown fields {sorted(unknown)}"
        raise ValueError(f"tenants[{index}] {what}")
    name, digest = entry["name"], entry["key_sha256"]
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        raise ValueError(f"tenants[{index}] has an invalid name")
    if not isinstance(digest, str) or not KEY_SHA256.fullmatch(digest):
        raise ValueError(f"tenant {name!r} has an invalid key_sha256")
    if not isinstance(entry["log_group_prefix"], str) or not entry["log_group_prefix"]:
        raise ValueError(f"tenant {name!r} has an invalid log_group_prefix")
    if not isinstance(entry.get("revoked", False), bool):
        raise ValueError(f"tenant {name!r} has an invalid revoked")
    for key, kinds in _FIELD_TYPES.items():
        value = entry.get(key)
        if key in entry and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise ValueError(f"tenant {name!r} has an invalid {key}")
    tags = entry.get("tags", {})
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ValueError(f"tenant {name!r} has invalid tags")
    return Tenant(**entry)


def parse_registry(text: str) -> dict[str, Tenant]:
    """The tenants in a registry document; ValueError saying what is wrong with it."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("tenants"), list):
        raise ValueError('not a registry: expected {"tenants": [...]}')
    tenants: dict[str, Tenant] = {}
    for index, entry in enumerate(document["tenants"]):
        tenant = _tenant_from(entry, index)
        if tenant.name in tenants:
            raise ValueError(f"tenant {tenant.name!r} appears twice")
        tenants[tenant.name] = tenant
    return tenants


def _read(path: Path) -> dict[str, Tenant] | None:
    """The registry's tenants; None when there is no file; RegistryCorrupt when unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryCorrupt(f"tenant registry {path} cannot be read: {exc.strerror}") from None
    try:
        return parse_registry(data.decode("utf-8"))
    except UnicodeDecodeError:
        reason = "not UTF-8"
    except ValueError as exc:
        reason = str(exc)
    raise RegistryCorrupt(f"tenant registry {path} is corrupt: {reason}")


def _ensure_folder(folder: Path) -> None:
    """Create the registry's folder (0700) if it is missing; leave an existing one alone."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=FOLDER_MODE)
    except FileExistsError:
        return
    os.chmod(folder, FOLDER_MODE)  # mkdir's mode is subject to the umask


@contextlib.contextmanager
def registry_lock(path: Path, timeout_seconds: float) -> Iterator[None]:
    """Hold an exclusive flock on ``<registry>.lock`` (beside it) or raise RegistryLocked."""
    _ensure_folder(path.parent)
    lock_path = path.with_name(path.name + ".lock")
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        deadline = time.monotonic() + timeout_seconds
        delay = 0.005
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() >= deadline:
                raise RegistryLocked(
                    f"tenant registry {path} is locked by another writer "
                    f"(waited {timeout_seconds:g} s for {lock_path}); try again"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _write_atomically(path: Path, tenants: dict[str, Tenant]) -> None:
    """A temporary file of this writer's own (0600), fsynced, renamed over ``path``."""
    document = {"tenants": [asdict(tenant) for tenant in tenants.values()]}
    data = json.dumps(document, indent=2, sort_keys=True).encode()
    # mkstemp: a new name (O_EXCL), mode 0600, in the same folder so the rename is atomic.
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def _overlap(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a.startswith(b) or b.startswith(a)


def new_tenant(
    name: str,
    *,
    log_group_prefix: str | None = None,
    rate: float = DEFAULT_RATE,
    burst: int = DEFAULT_BURST,
    retention_days: int | None = None,
    kms_key_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[Tenant, str]:
    """A new tenant (checked on its own: name, prefix, rate) and its API key; every store's
    ``create`` then checks it against the others (name taken, prefixes overlapping)."""
    if not TENANT_NAME.fullmatch(name):
        raise TenantError(
            "tenant name must be 1-63 characters: lowercase letters, digits and -, "
            "starting with a letter or digit"
        )
    prefix = log_group_prefix if log_group_prefix is not None else f"{name}/"
    if len(prefix) > MAX_PREFIX_LENGTH or not PREFIX.fullmatch(prefix) or ".." in prefix:
        raise TenantError(
            f"log group prefix must be at most {MAX_PREFIX_LENGTH} characters of letters, "
            "digits and . - _ # in /-separated parts, ending in '/', e.g. 'acme/'"
        )
    if prefix.lower().startswith("aws/"):
        raise TenantError("log group prefix may not start with 'aws/'")
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
    return tenant, api_key


def check_addable(tenants: dict[str, Tenant], tenant: Tenant) -> None:
    """TenantError unless ``tenant`` can join ``tenants``: a new name, and a prefix that
    overlaps no other tenant's (revoked ones included: their groups stay theirs)."""
    if tenant.name in tenants:
        raise TenantError(f"tenant {tenant.name!r} exists already")
    for other in tenants.values():
        if _overlap(tenant.log_group_prefix, other.log_group_prefix):
            raise TenantError(
                f"log group prefix {tenant.log_group_prefix!r} overlaps tenant "
                f"{other.name!r}'s {other.log_group_prefix!r}"
            )


class TenantStore(Protocol):
    """The registry as ingest and the ``cloudlog tenant`` commands use it, whatever holds it.

    Reads answer from memory (the view taken at the last ``reload``); writes go to the store
    and are atomic there. ``problem``: why the last reload failed (the last good view is kept)."""

    problem: str | None

    @property
    def source(self) -> str: ...

    def reload(self) -> bool: ...

    def tenants(self) -> list[Tenant]: ...

    def get(self, name: str) -> Tenant | None: ...

    def authenticate(self, api_key: str) -> Tenant | None: ...

    def owner_of(self, group: str) -> Tenant | None: ...

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
    ) -> tuple[Tenant, str]: ...

    def revoke(self, name: str) -> Tenant: ...

    def rotate(self, name: str) -> tuple[Tenant, str]: ...


class TenantRegistry:
    """The tenants in memory, loaded from one file; every change goes through the file, under
    its lock (``create``, ``revoke``)."""

    def __init__(
        self, path: Path, *, lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS
    ) -> None:
        self.path = path
        self.lock_timeout_seconds = lock_timeout_seconds
        self._tenants: dict[str, Tenant] = {}
        self._by_hash: dict[str, Tenant] = {}
        self._signature: tuple[int, ...] | None = None
        # Why the file could not be taken at the last reload (the last good tenants are kept).
        self.problem: str | None = None

    @classmethod
    def load(
        cls, path: Path, *, lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS
    ) -> TenantRegistry:
        """The registry in ``path`` (no file: no tenants). RegistryCorrupt if it is not one."""
        registry = cls(path, lock_timeout_seconds=lock_timeout_seconds)
        signature = registry._stat()
        registry._use(_read(path) or {}, signature)
        return registry

    def _stat(self) -> tuple[int, ...] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)

    def _use(self, tenants: dict[str, Tenant], signature: tuple[int, ...] | None) -> None:
        self._tenants = tenants
        self._by_hash = {t.key_sha256: t for t in tenants.values() if not t.revoked}
        self._signature = signature
        if self.problem is not None:
            logger.info("tenant registry %s is readable again", self.path)
            self.problem = None

    def reload(self) -> bool:
        """Re-read the file if it changed since the last read. True if new tenants were taken.

        A file that cannot be read or parsed leaves the last good tenants in place: the reason
        is kept in ``problem`` and logged once per distinct failure."""
        signature = self._stat()  # before reading: a change after it is seen next time
        if signature == self._signature:
            return False
        try:
            tenants = _read(self.path)
        except RegistryCorrupt as exc:
            self._signature = signature
            if str(exc) != self.problem:
                logger.error(
                    "%s; keeping the last good registry (%d tenants)", exc, len(self._tenants)
                )
                self.problem = str(exc)
            return False
        self._use(tenants or {}, signature)
        return True

    def _modify(self, change: Callable[[dict[str, Tenant]], _T]) -> _T:
        """Read-modify-write under the lock: re-read the file, apply ``change`` to its tenants,
        write them atomically. A corrupt file is refused (RegistryCorrupt), never overwritten;
        a ``change`` that raises writes nothing."""
        with registry_lock(self.path, self.lock_timeout_seconds):
            signature = self._stat()
            current = _read(self.path) or {}
            self._use(current, signature)  # the freshest view, even if the change is refused
            tenants = dict(current)
            result = change(tenants)
            _write_atomically(self.path, tenants)
            self._use(tenants, self._stat())
            return result

    @property
    def source(self) -> str:
        return str(self.path)

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
        """Add a tenant; returns it with its new API key (shown once, never stored).

        Checked against the file as it is under the lock, not this object's older view."""
        tenant, api_key = new_tenant(
            name,
            log_group_prefix=log_group_prefix,
            rate=rate,
            burst=burst,
            retention_days=retention_days,
            kms_key_id=kms_key_id,
            tags=tags,
        )

        def add(tenants: dict[str, Tenant]) -> None:
            check_addable(tenants, tenant)
            tenants[name] = tenant

        self._modify(add)
        return tenant, api_key

    def revoke(self, name: str) -> Tenant:
        """Mark a tenant revoked, in the file (under the lock) and here."""

        def mark(tenants: dict[str, Tenant]) -> Tenant:
            tenant = tenants.get(name)
            if tenant is None:
                raise TenantError(f"no tenant {name!r}")
            revoked = Tenant(**{**asdict(tenant), "revoked": True})
            tenants[name] = revoked
            return revoked

        return self._modify(mark)

    def rotate(self, name: str) -> tuple[Tenant, str]:
        """Give an active tenant a new API key (returned, shown once); the old one stops
        working when ingest next reloads. In the file (under the lock) and here."""
        api_key = new_api_key()

        def replace_key(tenants: dict[str, Tenant]) -> Tenant:
            tenant = tenants.get(name)
            if tenant is None:
                raise TenantError(f"no tenant {name!r}")
            if tenant.revoked:
                raise TenantError(f"tenant {name!r} is revoked; its key cannot be rotated")
            rotated = Tenant(**{**asdict(tenant), "key_sha256": hash_key(api_key)})
            tenants[name] = rotated
            return rotated

        return self._modify(replace_key), api_key
