"""The embedded AWS endpoint: moto's server on loopback, serving SQS, CloudWatch Logs and
DynamoDB (the tenant and idempotency tables, by default and as CLOUDLOG_* settings name them)."""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from moto.server import ThreadedMotoServer

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_ingest.idempotency import DEFAULT_IDEMPOTENCY_TABLE, ensure_idempotency_table
from cloudlog_ingest.settings import IngestSettings
from cloudlog_ingest.tenant_table import DEFAULT_TENANTS_TABLE, ensure_tenant_table
from cloudlog_ingest.tenants import TenantSettings
from cloudlog_wire.broker import BrokerSettings, ensure_queues

DEFAULT_EMULATOR_PORT = 4566
LOOPBACK = "127.0.0.1"
READY_TEXT = "emulator ready"  # LocalPipeline waits for this in the emulator's output
logger = logging.getLogger(__name__)


# moto's DynamoDB operations, serialised: moto answers requests on many threads and a
# transaction there checks its conditions, then applies its items one by one (undoing them on
# failure), so without this two transactions could both pass, and a read could see half of one.
# DynamoDB itself runs transactions serialisably (tenant_table.py relies on it).
_DYNAMODB_OPERATIONS = (
    "put_item",
    "get_item",
    "update_item",
    "delete_item",
    "query",
    "scan",
    "batch_get_item",
    "batch_write_item",
    "transact_write_items",
    "transact_get_items",
    "execute_statement",
    "execute_transaction",
    "batch_execute_statement",
)
_dynamodb_lock = threading.RLock()


def _serialised(operation: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(operation)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _dynamodb_lock:
            return operation(*args, **kwargs)

    run.__cloudlog_serialised__ = True  # type: ignore[attr-defined]
    return run


def serialise_dynamodb() -> None:
    """Make moto's DynamoDB run one operation at a time, as one table would appear to."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in _DYNAMODB_OPERATIONS:
        operation = getattr(DynamoDBBackend, name, None)
        if operation is not None and not getattr(operation, "__cloudlog_serialised__", False):
            setattr(DynamoDBBackend, name, _serialised(operation))


def tenant_tables() -> list[str]:
    """The tenant tables to create: the default name and CLOUDLOG_TENANTS_TABLE's, if other."""
    configured = TenantSettings().tenants_table
    return sorted({DEFAULT_TENANTS_TABLE, *([configured] if configured else [])})


def idempotency_tables() -> list[str]:
    """The idempotency tables to create: the default name and the configured one, if other."""
    configured = IngestSettings().idempotency_table
    return sorted({DEFAULT_IDEMPOTENCY_TABLE, *([configured] if configured else [])})


def start_emulator(port: int = DEFAULT_EMULATOR_PORT) -> tuple[ThreadedMotoServer, str]:
    """Start moto on 127.0.0.1:port and create the pipeline's queues, tenant and idempotency
    tables.
    Returns (server, url)."""
    # werkzeug logs one line per request; on a busy pipeline that is noise, not information.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    serialise_dynamodb()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    url = f"http://{LOOPBACK}:{port}"
    settings = AwsSettings(aws_endpoint_url=url)
    ensure_queues(make_client("sqs", settings), BrokerSettings())
    dynamodb = make_client("dynamodb", settings)
    for table in tenant_tables():
        ensure_tenant_table(dynamodb, table)
    for table in idempotency_tables():
        ensure_idempotency_table(dynamodb, table)
    return server, url


def run_emulator(port: int = DEFAULT_EMULATOR_PORT) -> None:
    """Run until SIGINT or SIGTERM. Says so on its logger when ready (``READY_TEXT``)."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server, url = start_emulator(port)
    broker = BrokerSettings()
    logger.info(
        "%s on %s (SQS + CloudWatch Logs + DynamoDB; queues %s, %s; tenant tables %s; "
        "idempotency tables %s)",
        READY_TEXT,
        url,
        broker.queue_name,
        broker.dead_letter_queue_name,
        ", ".join(tenant_tables()),
        ", ".join(idempotency_tables()),
    )
    try:
        while not stop.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    finally:
        server.stop()
        logger.info("emulator stopped")
