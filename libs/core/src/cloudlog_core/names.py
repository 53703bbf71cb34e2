"""Validation of CloudWatch Logs group and stream names, with messages that say what is wrong.

Rules from the CloudWatch Logs API reference (CreateLogGroup, CreateLogStream).
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 512  # CreateLogGroup / CreateLogStream: 1-512 characters
LOG_GROUP_PATTERN = re.compile(r"[.\-_/#A-Za-z0-9]+")
RESERVED_GROUP_PREFIX = "aws/"
FORBIDDEN_STREAM_CHARS = (":", "*")


def check_log_group(name: str) -> str:
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"log group name must be 1-{MAX_NAME_LENGTH} characters")
    if not LOG_GROUP_PATTERN.fullmatch(name):
        raise ValueError("log group name may contain only letters, digits and . - _ / #")
    if name.startswith(RESERVED_GROUP_PREFIX):
        raise ValueError(f"log group name may not start with {RESERVED_GROUP_PREFIX!r}")
    return name


def stream_name_problem(name: str) -> str | None:
    """What CloudWatch would refuse in a stream name ("may not contain ':'"), or None."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1-{MAX_NAME_LENGTH} characters"
    for char in FORBIDDEN_STREAM_CHARS:
        if char in name:
            return f"may not contain {char!r}"
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
