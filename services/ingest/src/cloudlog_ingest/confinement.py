"""Confinement: the log group a tenant names is resolved under its own prefix, or refused.

A tenant names groups relative to its prefix: ``app/web`` from tenant ``acme`` (prefix
``acme/``) is ``acme/app/web``. Whatever could leave the prefix, or look like another name, is
refused before anything is created or written: ``..`` and ``.`` segments, empty segments
(leading, doubled or trailing slashes), a leading ``aws/``, characters outside CloudWatch's
ASCII set (look-alike Unicode, full-width dots), names that would pass 512 characters with the
prefix, and in streams ``:``, ``*``, control, format (bidi, zero-width) and line separator
characters, and the reserved ``_rejected`` however it is spelled (case, compatibility forms,
invisible characters, surrounding spaces, look-alike letters from other scripts).
Refusals never mention any other tenant or group.
"""

from __future__ import annotations

import unicodedata
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


def _is_default_ignorable(char: str) -> bool:
    """Unicode's Default_Ignorable_Code_Point, near enough: format characters (Cf: zero-width
    spaces and joiners, bidi marks, soft hyphen...) plus the few others the property lists
    (combining grapheme joiner, Hangul fillers, variation selectors, Mongolian selectors)."""
    code = ord(char)
    return (
        unicodedata.category(char) == "Cf"
        or code in _OTHER_DEFAULT_IGNORABLE
        or 0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
        or 0x180B <= code <= 0x180F
    )


_OTHER_DEFAULT_IGNORABLE = frozenset({0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0})
# Characters a stream name may not hold: controls (Cc, C0 and C1), format characters (Cf,
# which hold the bidi overrides and isolates, zero-width spaces, the BOM), line and paragraph
# separators (Zl, Zp) and lone surrogates (Cs): they hide or reorder what a reader sees.
REFUSED_STREAM_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _skeleton(name: str) -> str:
    """What ``name`` reads as: NFKC, case-folded, default-ignorables removed, trimmed."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    folded = "".join(char for char in folded if not _is_default_ignorable(char))
    return unicodedata.normalize("NFKC", folded).strip()


def looks_like_reserved(name: str, reserved: str = REJECTED_STREAM) -> bool:
    """Whether ``name`` reads as ``reserved``: equal once normalised (``_skeleton``), or equal
    but for non-ASCII characters standing where ``reserved`` has its (ASCII) letters: a
    Cyrillic ``\\u0435`` or a Greek ``\\u03bf`` for a Latin ``e`` or ``o``, from any script."""
    skeleton = _skeleton(name)
    if skeleton == reserved:
        return True
    return len(skeleton) == len(reserved) and all(
        char == wanted or not char.isascii()
        for char, wanted in zip(skeleton, reserved, strict=True)
    )


def check_stream(name: str, *, field: str) -> str:
    """CloudWatch's own stream rules, then cloudlog's: no control, format or separator
    characters, nothing that reads as ``_rejected``."""
    if (problem := stream_name_problem(name)) is not None:
        raise Refusal(field, problem)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise Refusal(field, "may not contain control characters")
    if not name.isascii() and any(
        unicodedata.category(char) in REFUSED_STREAM_CATEGORIES for char in name
    ):
        raise Refusal(
            field,
            "may not contain control, format (bidirectional, zero-width) "
            "or line separator characters",
        )
    if name == REJECTED_STREAM or looks_like_reserved(name):
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
