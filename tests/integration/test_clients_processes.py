"""cloudlog_logging in real processes, read back from CloudWatch Logs: a plain script configured
with dictConfig, a structlog script, a line in an OpenTelemetry span, the user's own Celery
worker on the emulator's SQS (its own queue), and a FastAPI app under uvicorn with the ASGI
middleware. One pipeline (the ``pipeline`` fixture) serves them all."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from cloudlog_core.aws import AwsSettings
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import LOOPBACK, ManagedProcess, free_port
from cloudlog_wire.broker import BrokerSettings, celery_broker_config
from tests.conftest import read_stream, wait_for

pytestmark = pytest.mark.integration

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_block(test_name: str) -> str:
    """The README's python block marked as tested by ``test_name`` of this file."""
    marker = f"<!-- tested: tests/integration/test_clients_processes.py::{test_name} -->"
    match = re.search(re.escape(marker) + r"\s*```python\n(.*?)^```", README, re.M | re.S)
    assert match, test_name
    return match.group(1)


def child_env(pipeline: LocalPipeline, folder: Path, group: str, **extra: str) -> dict[str, str]:
    """What a user's process is given: the endpoint and CLOUDLOG_* settings, nothing else."""
    return {
        **pipeline.env,
        "CLOUDLOG_AWS_ENDPOINT_URL": pipeline.sqs_endpoint_url,
        "CLOUDLOG_LOG_GROUP": group,
        "CLOUDLOG_FLUSH_INTERVAL": "0.05",
        "PYTHONPATH": str(folder),
        **extra,
    }


def run_script(pipeline: LocalPipeline, folder: Path, group: str, code: str) -> str:
    script = folder / f"job_{uuid.uuid4().hex[:6]}.py"
    script.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [sys.executable, str(script)],
        env=child_env(pipeline, folder, group),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def read_documents(
    logs_client: Any, pipeline: LocalPipeline, group: str, stream: str, count: int
) -> list[dict[str, Any]]:
    events = wait_for(
        lambda: (
            (found := read_stream(logs_client, pipeline.stored_group(group), stream))
            and len(found) >= count
            and found
        ),
        what=f"{count} events in {group}/{stream}",
    )
    assert len(events) == count, "each line exactly once"
    return [json.loads(event["message"]) for event in events]


def test_a_script_configured_with_dict_config_ships_its_lines_at_exit(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str, tmp_path: Path
) -> None:
    # No flush in the script: the handler's lines are published at exit.
    run_script(
        pipeline,
        tmp_path,
        unique_group,
        """
        import logging, logging.config
        from cloudlog_logging import context

        logging.config.dictConfig({
            "version": 1,
            "handlers": {"cloudlog": {"class": "cloudlog_logging.CloudLogHandler",
                                      "log_stream": "nightly", "flush_interval": 60,
                                      "level": "DEBUG"}},
            "root": {"handlers": ["cloudlog"], "level": "DEBUG"},
        })
        log = logging.getLogger("jobs.export")
        context.bind(job="export")
        log.debug("started")
        log.warning("%d rows skipped", 3, extra={"table": "orders"})
        logging.getLogger("botocore.hooks").warning("not shipped: the delivery path's own")
        """,
    )
    started, skipped = read_documents(logs_client, pipeline, unique_group, "nightly", 2)
    assert (started["level"], started["message"], started["logger"]) == (
        "debug",
        "started",
        "jobs.export",
    )
    assert started["fields"] == {"job": "export"}
    assert (skipped["level"], skipped["message"]) == ("warning", "3 rows skipped")
    assert skipped["fields"] == {"job": "export", "table": "orders"}


def test_the_readme_dict_config_example_ships_its_line(
    pipeline: LocalPipeline, logs_client: Any, tmp_path: Path
) -> None:
    stream = f"readme-{uuid.uuid4().hex[:8]}"  # the example names its group, not its stream
    code = readme_block("test_the_readme_dict_config_example_ships_its_line")
    env_group = "unused/by-the-example"
    script = tmp_path / "readme_job.py"
    script.write_text(code)
    subprocess.run(
        [sys.executable, str(script)],
        env=child_env(pipeline, tmp_path, env_group, CLOUDLOG_LOG_STREAM=stream),
        check=True,
        timeout=60,
    )
    [doc] = read_documents(logs_client, pipeline, "batch/jobs", stream, 1)
    assert (doc["level"], doc["message"], doc["fields"]) == (
        "warning",
        "3 rows skipped",
        {"table": "orders"},
    )


def test_a_structlog_script_ships_its_keys_as_fields(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str, tmp_path: Path
) -> None:
    pytest.importorskip("structlog")
    run_script(
        pipeline,
        tmp_path,
        unique_group,
        """
        import logging, structlog
        import cloudlog_logging, cloudlog_logging.structlog

        cloudlog_logging.install(log_stream="structlog")
        cloudlog_logging.structlog.configure(structlog.processors.add_log_level)
        structlog.contextvars.bind_contextvars(run="r-1")
        structlog.get_logger("jobs.report").info("report sent", pages=3, to=["ops"])
        """,
    )
    [doc] = read_documents(logs_client, pipeline, unique_group, "structlog", 1)
    assert (doc["level"], doc["message"], doc["logger"]) == ("info", "report sent", "jobs.report")
    assert doc["fields"] == {"run": "r-1", "pages": 3, "to": ["ops"]}


def test_a_line_in_an_opentelemetry_span_carries_its_trace_and_span_ids(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str, tmp_path: Path
) -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    printed = run_script(
        pipeline,
        tmp_path,
        unique_group,
        """
        import json, logging
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        import cloudlog_logging

        cloudlog_logging.install(log_stream="traced")
        trace.set_tracer_provider(TracerProvider())
        log = logging.getLogger("jobs.traced")
        with trace.get_tracer("job").start_as_current_span("sync") as span:
            log.info("in the span")
            ids = span.get_span_context()
        log.info("after the span")
        print(json.dumps({"trace": format(ids.trace_id, "032x"),
                          "span": format(ids.span_id, "016x")}))
        """,
    )
    ids = json.loads(printed)
    inside, after = read_documents(logs_client, pipeline, unique_group, "traced", 2)
    assert inside["fields"]["trace_id"] == ids["trace"]
    assert inside["fields"]["span_id"] == ids["span"]
    assert inside["fields"]["xray_trace_id"] == f"1-{ids['trace'][:8]}-{ids['trace'][8:]}"
    assert "trace_id" not in after.get("fields", {})


USER_CELERY_APP = """
import logging, os
from celery import Celery
from celery.utils.log import get_task_logger
from cloudlog_core.aws import AwsSettings
from cloudlog_wire.broker import BrokerSettings, celery_broker_config
from cloudlog_logging.celery import ship_task_logs

app = Celery("usershop")
app.conf.update(celery_broker_config(
    BrokerSettings(queue_name=os.environ["USER_QUEUE"]),
    AwsSettings(aws_endpoint_url=os.environ["CLOUDLOG_AWS_ENDPOINT_URL"]),
))
ship_task_logs(app, log_stream="tasks")
task_log = get_task_logger(__name__)
plain_log = logging.getLogger("usershop.billing")


@app.task(name="usershop.charge")
def charge(order: int) -> None:
    task_log.info("charging order %s", order)
    plain_log.warning("card expires soon", extra={"order": order})
"""


def test_the_users_celery_worker_ships_task_logs_with_task_name_and_id(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str, tmp_path: Path
) -> None:
    queue = f"usershop-{uuid.uuid4().hex[:8]}"
    (tmp_path / "usertasks.py").write_text(USER_CELERY_APP)
    worker = ManagedProcess(
        "user-celery",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "usertasks",
            "worker",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ],
        env=child_env(pipeline, tmp_path, unique_group, USER_QUEUE=queue),
        log_dir=tmp_path,
        cwd=tmp_path,
    ).start()
    try:
        worker.wait_for_log("ready.", timeout=60)
        from celery import Celery

        sender = Celery("usershop-client", set_as_current=False)
        sender.conf.update(
            celery_broker_config(
                BrokerSettings(queue_name=queue),
                AwsSettings(aws_endpoint_url=pipeline.sqs_endpoint_url),
            )
        )
        task_ids = [sender.send_task("usershop.charge", args=[n], queue=queue).id for n in (1, 2)]
        documents = read_documents(logs_client, pipeline, unique_group, "tasks", 4)
    finally:
        worker.stop()
    by_order = sorted(documents, key=lambda doc: doc["message"])
    assert [doc["message"] for doc in by_order] == [
        "card expires soon",
        "card expires soon",
        "charging order 1",
        "charging order 2",
    ]
    for doc in documents:
        assert doc["fields"]["task_name"] == "usershop.charge"
        assert doc["fields"]["task_id"] in task_ids
    charged = {doc["message"]: doc["fields"]["task_id"] for doc in by_order[2:]}
    assert charged == {"charging order 1": task_ids[0], "charging order 2": task_ids[1]}


# The README's example, and two routes more.
USER_ASGI_APP = readme_block("test_a_fastapi_app_under_uvicorn_ships_lines_with_the_request_id")
USER_ASGI_APP += """

@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/sync")
def sync() -> dict[str, str]:  # runs in the thread pool, with the request's context
    log.info("synced")
    return {"status": "ok"}
"""


def test_a_fastapi_app_under_uvicorn_ships_lines_with_the_request_id(
    pipeline: LocalPipeline, logs_client: Any, unique_group: str, tmp_path: Path
) -> None:
    (tmp_path / "usersvc.py").write_text(USER_ASGI_APP)
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    server = ManagedProcess(
        "user-uvicorn",
        [sys.executable, "-m", "uvicorn", "usersvc:app", "--host", LOOPBACK, "--port", str(port)],
        env=child_env(pipeline, tmp_path, unique_group),
        log_dir=tmp_path,
        cwd=tmp_path,
    ).start()
    try:
        server.wait_until_ready(f"{base}/healthz", timeout=30)
        given = urllib.request.Request(f"{base}/orders/7", headers={"X-Request-ID": "req-77"})
        with urllib.request.urlopen(given, timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(
            urllib.request.Request(f"{base}/sync", method="POST"), timeout=10
        ) as response:
            assert response.status == 200
        documents = read_documents(logs_client, pipeline, unique_group, "web", 2)
    finally:
        server.stop()
    by_message = {doc["message"]: doc["fields"] for doc in documents}
    assert by_message["order 7"] == {"request_id": "req-77", "path": "/orders/7", "method": "GET"}
    synced = by_message["synced"]
    assert synced["path"] == "/sync" and synced["method"] == "POST"
    assert synced["request_id"] and synced["request_id"] != "req-77"
