"""How an event becomes the text stored in CloudWatch Logs: one JSON object per line.

JSON because CloudWatch Logs Insights discovers the fields of JSON events by itself.
Fixed keys first; the app's structured fields stay apart under ``fields`` so that no
field can overwrite the level or the message.
"""

from __future__ import annotations

import json
from typing import Any


def render_message(
    *,
    level: str,
    message: str,
    event_id: str,
    logger: str | None = None,
    fields: dict[str, Any] | None = None,
) -> str:
    document: dict[str, Any] = {"level": level, "message": message, "event_id": event_id}
    if logger:
        document["logger"] = logger
    if fields:
        document["fields"] = fields
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)
