"""The process's one dispatcher thread: cloudlog_logging.delivery (kept for existing imports)."""

from cloudlog_logging.delivery import ProcessDispatcher, process_dispatcher

__all__ = ["ProcessDispatcher", "process_dispatcher"]
