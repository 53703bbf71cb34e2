"""Confinement: the log group a tenant names is resolved under its own prefix, or refused.

A tenant names groups relative to its prefix: ``app/web`` from tenant ``acme`` (prefix
``acme/``) is ``acme/app/web``. One leading ``/``, AWS's own convention (``/ecs/shop``), means
the same name relative to the prefix: ``/ecs/shop`` is ``acme/ecs/shop``. Whatever could leave
the prefix, or look like another name, is refused before anything is created or written:
``..`` and ``.`` segments, empty segments (doubled or trailing slashes, a leading ``//``), a
leading ``aws/`` (after the ``/``), characters outside CloudWatch's ASCII set (look-alike
Unicode, full-width dots), names that would pass 512 characters with the prefix, and in streams
``:``, ``*``, control, format (bidi, zero-width) and line separator characters, and the
reserved ``_rejected`` however it is spelled (case, compatibility forms, invisible characters,
surrounding spaces, look-alike letters from other scripts). The rules that do not depend on the
prefix live in cloudlog_core.names, which the Flask extension applies at ``init_app``.
Refusals never mention any other tenant or group.

In ``POST /v1/logs`` a refused event is answered alone (``confine_each``): it is rejected with
reason ``forbidden_name`` and reported to the tenant's own ``<prefix>_cloudlog`` group, stream
``_rejected`` (``refusals_group``), while the rest of its batch is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cloudlog_core.names import (
    MAX_NAME_LENGTH,
    REFUSED_STREAM_CATEGORIES,
    REJECTED_STREAM,
    looks_like_reserved,
    relative_group_name,
    relative_group_problem,
    stream_problem,
)
from cloudlog_ingest.tenants import Tenant

__all__ = [
    "REFUSALS_GROUP",
    "REFUSED_STREAM_CATEGORIES",
    "REJECTED_STREAM",
    "Refusal",
    "check_stream",
    "confine_all",
    "confine_each",
    "looks_like_reserved",
    "refusals_group",
    "resolve_group",
]

# The group, under each tenant's prefix, whose ``_rejected`` stream holds the events refused
# for their names: a refused group cannot hold its own report.
REFUSALS_GROUP = "_cloudlog"


@dataclass(frozen=True, slots=True)
class Refusal(Exception):
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def resolve_group(tenant: Tenant, name: str, *, field: str) -> str:
    if (problem := relative_group_problem(name)) is not None:
        raise Refusal(field, problem)
    resolved = tenant.log_group_prefix + relative_group_name(name)
    if len(resolved) > MAX_NAME_LENGTH:
        room = MAX_NAME_LENGTH - len(tenant.log_group_prefix)
        raise Refusal(field, f"may be at most {room} characters (under your prefix)")
    return resolved


def refusals_group(tenant: Tenant) -> str:
    """Where the events refused for their names are reported (stream ``_rejected``)."""
    return tenant.log_group_prefix + REFUSALS_GROUP


def check_stream(name: str, *, field: str) -> str:
    """CloudWatch's own stream rules, then cloudlog's: no control, format or separator
    characters, nothing that reads as ``_rejected``."""
    if (problem := stream_problem(name)) is not None:
        raise Refusal(field, problem)
    return name


def confine_each(
    tenant: Tenant, names: Iterable[tuple[str, str]], *, field_prefix: str = ""
) -> list[tuple[str, str] | Refusal]:
    """For each (group, stream) of ``names``, in order: the resolved pair, or its refusal
    naming its place (``field_prefix`` + index, e.g. ``events.3.log_group``; the group is
    checked first). Each distinct pair is checked once."""
    checked: dict[tuple[str, str], tuple[str, str] | Refusal] = {}
    outcomes: list[tuple[str, str] | Refusal] = []
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
            outcome = Refusal(f"{field_prefix}{index}.{outcome.field}", outcome.reason)
        outcomes.append(outcome)
    return outcomes


def confine_all(
    tenant: Tenant, names: Iterable[tuple[str, str]], *, field_prefix: str = ""
) -> list[tuple[str, str]]:
    """The resolved (group, stream) for each (group, stream) of ``names``, in order; the first
    refused one is refused naming its place (``field_prefix`` + index)."""
    resolved: list[tuple[str, str]] = []
    for outcome in confine_each(tenant, names, field_prefix=field_prefix):
        if isinstance(outcome, Refusal):
            raise outcome
        resolved.append(outcome)
    return resolved
