"""The seed's FastAPI logger service: ``POST /logs`` answers at once and writes in a background
task that checks (and creates) the group and the stream, then puts the single event.

Run it: ``NAIVE_AWS_ENDPOINT_URL=http://127.0.0.1:4566 uvicorn bench.naive.app:app --port 8090``.
"""

from __future__ import annotations

import contextlib
import os
import time
from enum import StrEnum
from typing import Any

import boto3
from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel

app = FastAPI(title="naive logger service")
cloudwatch: Any = boto3.client(
    "logs",
    endpoint_url=os.environ.get("NAIVE_AWS_ENDPOINT_URL") or None,
    region_name="us-east-1",
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
)


class Level(StrEnum):
    INFO = "info"
    ERROR = "error"
    DEBUG = "debug"
    WARNING = "warning"
    CRITICAL = "critical"


class LogPayload(BaseModel):
    log_group: str
    log_stream: str
    log_message: str
    level: Level


def write_log_to_cloudwatch(payload: LogPayload) -> None:
    """Checks for the log group and stream, creates them if missing, pushes the message."""
    groups = cloudwatch.describe_log_groups(logGroupNamePrefix=payload.log_group)["logGroups"]
    if not any(group["logGroupName"] == payload.log_group for group in groups):
        with contextlib.suppress(cloudwatch.exceptions.ResourceAlreadyExistsException):
            cloudwatch.create_log_group(logGroupName=payload.log_group)
    streams = cloudwatch.describe_log_streams(
        logGroupName=payload.log_group, logStreamNamePrefix=payload.log_stream
    )["logStreams"]
    if not any(stream["logStreamName"] == payload.log_stream for stream in streams):
        with contextlib.suppress(cloudwatch.exceptions.ResourceAlreadyExistsException):
            cloudwatch.create_log_stream(
                logGroupName=payload.log_group, logStreamName=payload.log_stream
            )
    cloudwatch.put_log_events(
        logGroupName=payload.log_group,
        logStreamName=payload.log_stream,
        logEvents=[{"timestamp": int(time.time() * 1000), "message": payload.log_message}],
    )


@app.post("/logs")
async def push_log(payload: LogPayload, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(write_log_to_cloudwatch, payload)
    return {"status": "queued"}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
