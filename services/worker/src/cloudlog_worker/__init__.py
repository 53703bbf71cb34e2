"""The Celery worker: takes a batch off SQS and delivers it to ingest (``cloudlog-worker``)."""
