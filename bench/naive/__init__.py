"""The naive decoupled design of the seed write-up, reproduced as the baseline.

Flask app -> one Celery task per log line (SQS) -> worker: one HTTP POST per line ->
FastAPI ``POST /logs`` -> background task: describe-or-create group and stream, put one event.
"""
