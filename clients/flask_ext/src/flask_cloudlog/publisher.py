"""Publishing a batch as a Celery task: cloudlog_logging.publisher (kept for existing imports)."""

from cloudlog_logging.publisher import CeleryPublisher, shared_celery

__all__ = ["CeleryPublisher", "shared_celery"]
