"""Confinement: the log group a tenant names is resolved under its own prefix, or refused.

A tenant names groups relative to its prefix: ``app/web`` from tenant ``acme`` (prefix
``acme/``) is ``acme/app/web``. Whatever could leave the prefix, or look like another name, is
refused before anything is created or written: ``..`` and ``.`` segments, empty segments
(leading, doubled or trailing slashes), a leading ``aws/``, characters outside CloudWatch's
ASCII set (look-alike Unicode, full-width dots), names that would pass 512 characters with the
prefix, and in streams ``:``, ``*``, control characters and the reserved ``_rejected``.
Refusals never mention any other tenant or group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cloudlog_core.names import (
    LOG_GROUP_PATTERN,
    MAX_NAME_LENGTH,
    RESERVED_GROUP_PREFIX,
    stream_name_problem,
)
from cloudlog_ingest.tenants import Tenant

REJECTED_STREAM = "_rejected"  # where a tenant reads what was refused (see pipeline.py)


@dataclass(frozen=True, slots=True)
class Refusal(Exception):
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def resolve_group(tenant: Tenant, name: str, *, field: str) -> str:
    if not name:
        raise Refusal(field, "must not be empty")
    if not name.isascii() or not LOG_GROUP_PATTERN.fullmatch(name):
        raise Refusal(field, "may contain only ASCII letters, digits and . - _ / #")
    if name.lower().startswith(RESERVED_GROUP_PREFIX):
        raise Refusal(field, f"may not start with {RESERVED_GROUP_PREFIX!r}")
    segments = name.split("/")
    if any(segment == "" for segment in segments):
        raise Refusal(field, "may not start or end with '/' or contain '//'")
    if any(segment in (".", "..") for segment in segments) or ".." in name:
        raise Refusal(field, "may not contain '..' or '.' segments")
    resolved = tenant.log_group_prefix + name
    if len(resolved) > MAX_NAME_LENGTH:
        room = MAX_NAME_LENGTH - len(tenant.log_group_prefix)
        raise Refusal(field, f"may be at most {room} characters (under your prefix)")
    return resolved


def check_stream(name: str, *, field: str) -> str:
    """CloudWatch's own stream rules, then cloudlog's: no control characters, no ``_rejected``."""
    if (problem := stream_name_problem(name)) is not None:
        raise Refusal(field, problem)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise Refusal(field, "may not contain control characters")
    if name == REJECTED_STREAM:
        raise Refusal(field, f"{REJECTED_STREAM!r} is reserved for cloudlog's own reports")
    return name


def confine_all(
    tenant: Tenant, names: Iterable[tuple[str, str]], *, field_prefix: str = ""
) -> list[tuple[str, str]]:
    """The resolved (group, stream) for each (group, stream) of ``names``, in order. Each
    distinct pair is checked once; the first refused one is refused naming its place
    (``field_prefix`` + index, e.g. ``events.3.log_group``)."""
    checked: dict[tuple[str, str], tuple[str, str] | Refusal] = {}
    resolved: list[tuple[str, str]] = []
    for index, pair in enumerate(names):
        outcome = checked.get(pair)
        if outcome is None:
            try:
                outcome = (
                    resolve_group(tenant, pair[0], field="log_group"),
                    check_stream(pair[1], field="log_stream"),
                )
            except Refusal as refusal:
                outcome = refusal
            checked[pair] = outcome
        if isinstance(outcome, Refusal):
            raise Refusal(f"{field_prefix}{index}.{outcome.field}", outcome.reason)
        resolved.append(outcome)
    return resolved
