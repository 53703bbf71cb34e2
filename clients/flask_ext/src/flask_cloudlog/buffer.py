"""The bounded event buffer: cloudlog_logging.buffer (kept here for existing imports)."""

from cloudlog_logging.buffer import (
    EVENT_OVERHEAD_ESTIMATE,
    BufferStats,
    EventBuffer,
    estimated_size,
)

__all__ = ["EVENT_OVERHEAD_ESTIMATE", "BufferStats", "EventBuffer", "estimated_size"]
