"""How an event becomes the text stored in CloudWatch Logs: one JSON object per line.

JSON because CloudWatch Logs Insights discovers the fields of JSON events by itself.
Fixed keys first; the app's structured fields stay apart under ``fields`` so that no
field can overwrite the level or the message.

The text is exactly ``json.dumps(document, ensure_ascii=False, separators=(",", ":"),
default=str)``, assembled without a new encoder per event: strings through the encoder
``json.dumps`` itself uses for them, ``fields`` through one module-level C encoder.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # json.dumps' string encoder with ensure_ascii=False
from typing import Any

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
# The C encoder json.dumps builds per call, built once. Without a markers dict: no check for
# circular references, which values parsed from JSON cannot have.
_make_encoder = json.encoder.c_make_encoder  # type: ignore[attr-defined]
_encode_compact = (
    _make_encoder(None, str, encode_basestring, None, ":", ",", False, False, True)
    if _make_encoder is not None
    else None
)


def encode_fields(fields: dict[str, Any]) -> str:
    """``fields`` as compact JSON, as they appear in the stored line."""
    if _encode_compact is None:  # a Python without the json C accelerator
        return _COMPACT.encode(fields)
    return "".join(_encode_compact(fields, 0))


def render_event(
    level: str, message: str, event_id: str, logger: str | None, fields_json: str | None
) -> str:
    """The stored line, given ``fields`` already encoded (``encode_fields``), or None for none."""
    logger_part = ',"logger":' + encode_basestring(logger) if logger else ""
    fields_part = ',"fields":' + fields_json if fields_json is not None else ""
    return (
        f'{{"level":{encode_basestring(level)},"message":{encode_basestring(message)},'
        f'"event_id":{encode_basestring(event_id)}{logger_part}{fields_part}}}'
    )


def render_message(
    *,
    level: str,
    message: str,
    event_id: str,
    logger: str | None = None,
    fields: dict[str, Any] | None = None,
) -> str:
    return render_event(level, message, event_id, logger, encode_fields(fields) if fields else None)
