"""Field values made JSON-safe, so a batch never fails to encode."""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 8


def json_safe(value: Any, depth: int = 0) -> Any:
    """Keep JSON types; turn anything else into its ``repr`` so a batch never fails to encode."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth >= MAX_JSON_DEPTH:
        return repr(value)
    if isinstance(value, dict):
        return {str(key): json_safe(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item, depth + 1) for item in value]
    return repr(value)
