"""The ingest service: authenticates, validates and writes log events through the writer."""
