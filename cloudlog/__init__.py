"""cloudlog: Flask logs to AWS CloudWatch Logs through SQS, Celery and an ingest service."""

__version__ = "0.1.0"
