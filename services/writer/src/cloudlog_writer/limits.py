"""CloudWatch Logs limits, each with its source.

Sources:
- PutLogEvents API reference (docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/
  API_PutLogEvents.html), "The batch of events must satisfy the following constraints".
- Name rules (CreateLogGroup / CreateLogStream) are in cloudlog/names.py, shared by every part.
- PutRetentionPolicy API reference for the allowed retention values.
"""

from __future__ import annotations

from typing import Final

# PutLogEvents: "The maximum batch size is 1,048,576 bytes. This size is calculated as the sum
# of all event messages in UTF-8, plus 26 bytes for each log event."
MAX_BATCH_BYTES: Final = 1_048_576
EVENT_OVERHEAD_BYTES: Final = 26

# PutLogEvents: "The maximum number of log events in a batch is 10,000."
MAX_BATCH_EVENTS: Final = 10_000

# PutLogEvents: "the time span in a single batch cannot exceed 24 hours".
MAX_BATCH_SPAN_MS: Final = 24 * 60 * 60 * 1000

# PutLogEvents: events "more than 14 days in the past" are rejected (tooOldLogEventEndIndex).
MAX_EVENT_AGE_MS: Final = 14 * 24 * 60 * 60 * 1000

# PutLogEvents: events "more than 2 hours in the future" are rejected (tooNewLogEventStartIndex).
MAX_FUTURE_MS: Final = 2 * 60 * 60 * 1000

# PutLogEvents: "Each log event can be no larger than 1 MB" (raised from 256 KB in April 2025).
# Counted like the batch: message UTF-8 bytes + EVENT_OVERHEAD_BYTES <= this value.
DEFAULT_MAX_EVENT_BYTES: Final = 1_048_576
# The older documented limit, still held by some endpoints: 256 KB.
LEGACY_MAX_EVENT_BYTES: Final = 262_144

# InputLogEvent.message: "Length Constraints: Minimum length of 1."
MIN_MESSAGE_CHARS: Final = 1

# PutRetentionPolicy: retentionInDays must be one of these values.
RETENTION_DAYS: Final = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
     3288, 3653}
)  # fmt: skip

MS_PER_DAY: Final = 24 * 60 * 60 * 1000


def event_size(message: str) -> int:
    """Bytes one event counts toward a PutLogEvents batch."""
    return len(message.encode("utf-8")) + EVENT_OVERHEAD_BYTES
