"""The ``cloudlog`` command line: ingest, worker, tenants, tail, push and the dead-letter queue."""
