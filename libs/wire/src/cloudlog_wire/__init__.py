"""The queue contract of producers, the worker and ``cloudlog dlq``: task, payload, broker."""
