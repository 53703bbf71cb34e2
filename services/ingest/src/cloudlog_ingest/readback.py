"""Which events of a stream are already in CloudWatch: used to recover an unfinished commit."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from cloudlog_writer.splitting import parse_marker

MAX_READ_BACK_PAGES = 10_000  # a bound on one recovery read (10,000 events a page at most)


def event_ids_in_stream(
    client: Any, group: str, stream: str, start_ms: int, end_ms: int
) -> set[str]:
    """Event ids stored in ``group``/``stream`` with timestamps in [start_ms, end_ms].

    An event split into parts counts only when every part is there: a partial one is written
    again, and readers drop the duplicate parts when they reassemble.
    """
    whole: set[str] = set()
    parts: dict[str, set[int]] = defaultdict(set)
    counts: dict[str, int] = {}
    kwargs: dict[str, Any] = {
        "logGroupName": group,
        "logStreamName": stream,
        "startTime": start_ms,
        "endTime": end_ms + 1,  # GetLogEvents' endTime is exclusive
        "startFromHead": True,
    }
    try:
        for _ in range(MAX_READ_BACK_PAGES):
            page = client.get_log_events(**kwargs)
            for event in page["events"]:
                message: str = event["message"]
                part = parse_marker(message)
                if part is not None:
                    index, count, event_id, _ = part
                    parts[event_id].add(index)
                    counts[event_id] = count
                    continue
                try:
                    document = json.loads(message)
                except ValueError:
                    continue
                if isinstance(document, dict) and isinstance(document.get("event_id"), str):
                    whole.add(document["event_id"])
            token = page.get("nextForwardToken")
            if not page["events"] or token is None or token == kwargs.get("nextToken"):
                break
            kwargs["nextToken"] = token
    except client.exceptions.ResourceNotFoundException:
        return whole
    whole.update(event_id for event_id, seen in parts.items() if len(seen) == counts[event_id])
    return whole
