"""Where an event goes: its (log group, log stream). The writer partitions by it while admitting
events (writer.py ``_admit``), keeping input order within each stream."""

from __future__ import annotations

StreamKey = tuple[str, str]
