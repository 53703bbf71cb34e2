"""Validation of CloudWatch Logs group and stream names, with messages that say what is wrong.

Rules from the CloudWatch Logs API reference (CreateLogGroup, CreateLogStream), then cloudlog's
own for names a tenant gives relative to its prefix (``relative_group_problem``,
``stream_problem``): the ones that do not depend on the prefix, so that ingest (confinement.py)
and the Flask extension judge a name the same way, the extension at ``init_app``.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_LENGTH = 512  # CreateLogGroup / CreateLogStream: 1-512 characters
LOG_GROUP_PATTERN = re.compile(r"[.\-_/#A-Za-z0-9]+")
RESERVED_GROUP_PREFIX = "aws/"
FORBIDDEN_STREAM_CHARS = (":", "*")
# The stream of each group where cloudlog reports what it refused: no tenant may write it.
REJECTED_STREAM = "_rejected"
# Characters a stream name may not hold: controls (Cc, C0 and C1), format characters (Cf,
# which hold the bidi overrides and isolates, zero-width spaces, the BOM), line and paragraph
# separators (Zl, Zp) and lone surrogates (Cs): they hide or reorder what a reader sees.
REFUSED_STREAM_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_OTHER_DEFAULT_IGNORABLE = frozenset({0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0})


def check_log_group(name: str) -> str:
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"log group name must be 1-{MAX_NAME_LENGTH} characters")
    if not LOG_GROUP_PATTERN.fullmatch(name):
        raise ValueError("log group name may contain only letters, digits and . - _ / #")
    if name.startswith(RESERVED_GROUP_PREFIX):
        raise ValueError(f"log group name may not start with {RESERVED_GROUP_PREFIX!r}")
    return name


def relative_group_name(name: str) -> str:
    """The name under the tenant's prefix that ``name`` means: a leading ``/`` (AWS's own
    convention, ``/ecs/shop``) is dropped, so ``/ecs/shop`` and ``ecs/shop`` are one group."""
    return name[1:] if name.startswith("/") else name


def relative_group_problem(name: str) -> str | None:
    """Why a group named relative to a tenant's prefix is refused, whatever the prefix
    ("may not start with 'aws/'"), or None. One leading ``/`` is allowed
    (``relative_group_name``); the length under the prefix is ingest's to check."""
    name = relative_group_name(name)
    if not name:
        return "must not be empty"
    if not name.isascii() or not LOG_GROUP_PATTERN.fullmatch(name):
        return "may contain only ASCII letters, digits and . - _ / #"
    if name.lower().startswith(RESERVED_GROUP_PREFIX):
        return f"may not start with {RESERVED_GROUP_PREFIX!r} (any case)"
    segments = name.split("/")
    if any(segment == "" for segment in segments):
        return "may not start with '//', end with '/' or contain '//'"
    if any(segment in (".", "..") for segment in segments) or ".." in name:
        return "may not contain '..' or '.' segments"
    if len(name) > MAX_NAME_LENGTH:
        return f"may be at most {MAX_NAME_LENGTH} characters"
    return None


def stream_name_problem(name: str) -> str | None:
    """What CloudWatch would refuse in a stream name ("may not contain ':'"), or None."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1-{MAX_NAME_LENGTH} characters"
    for char in FORBIDDEN_STREAM_CHARS:
        if char in name:
            return f"may not contain {char!r}"
    return None


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


def stream_problem(name: str) -> str | None:
    """Why cloudlog refuses a tenant's stream name, or None: CloudWatch's rules
    (``stream_name_problem``), then no control, format or separator characters, and nothing
    that reads as ``_rejected``."""
    if (problem := stream_name_problem(name)) is not None:
        return problem
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        return "may not contain control characters"
    if not name.isascii() and any(
        unicodedata.category(char) in REFUSED_STREAM_CATEGORIES for char in name
    ):
        return (
            "may not contain control, format (bidirectional, zero-width) "
            "or line separator characters"
        )
    if name == REJECTED_STREAM or looks_like_reserved(name):
        return f"{REJECTED_STREAM!r} is reserved for cloudlog's own reports"
    return None


def check_log_stream(name: str) -> str:
    if (problem := stream_name_problem(name)) is not None:
        raise ValueError(f"log stream name {problem}")
    return name


def valid_group_name(name: str) -> bool:
    try:
        check_log_group(name)
    except ValueError:
        return False
    return True


def valid_stream_name(name: str) -> bool:
    try:
        check_log_stream(name)
    except ValueError:
        return False
    return True
