"""The embedded AWS endpoint: moto's server on loopback, serving SQS and CloudWatch Logs."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from moto.server import ThreadedMotoServer

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_wire.broker import BrokerSettings, ensure_queues

DEFAULT_EMULATOR_PORT = 4566
LOOPBACK = "127.0.0.1"
READY_TEXT = "emulator ready"  # LocalPipeline waits for this in the emulator's output
logger = logging.getLogger(__name__)


def start_emulator(port: int = DEFAULT_EMULATOR_PORT) -> tuple[ThreadedMotoServer, str]:
    """Start moto on 127.0.0.1:port and create the pipeline's queues. Returns (server, url)."""
    # werkzeug logs one line per request; on a busy pipeline that is noise, not information.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    url = f"http://{LOOPBACK}:{port}"
    ensure_queues(make_client("sqs", AwsSettings(aws_endpoint_url=url)), BrokerSettings())
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
        "%s on %s (SQS + CloudWatch Logs; queues %s, %s)",
        READY_TEXT,
        url,
        broker.queue_name,
        broker.dead_letter_queue_name,
    )
    try:
        while not stop.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    finally:
        server.stop()
        logger.info("emulator stopped")
