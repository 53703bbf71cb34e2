"""``cloudlog dev``: the whole pipeline on the embedded endpoint, a demo app, live read-back.

Starts the emulator, ingest and a worker as child processes, serves the demo Flask app on a thread,
requests it every second, and prints events as they are read back from CloudWatch Logs. Ctrl-C
(or ``--duration``) stops everything: the app flushes, then worker, ingest, emulator, by pid.
"""

from __future__ import annotations

import itertools
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx
from werkzeug.serving import make_server

from cloudlog_cli.tail import Follower, format_event
from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.demo import DEMO_LOG_GROUP, create_demo_app
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import LOOPBACK, ProcessFailed

REQUEST_INTERVAL_S = 1.0


def run_dev(
    *,
    emulator_port: int,
    ingest_port: int,
    app_port: int,
    duration: float | None,
    log_dir: Path,
) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    say = print
    pipeline = LocalPipeline(log_dir=log_dir, emulator_port=emulator_port, ingest_port=ingest_port)
    say(f"cloudlog dev: logs of the child processes go to {log_dir}/", flush=True)
    app_server = None
    app = None
    try:
        pipeline.start_emulator()
        say(f"  emulator   {pipeline.emulator_url}  (SQS + CloudWatch Logs, moto)", flush=True)
        pipeline.start_ingest()
        say(f"  ingest     {pipeline.ingest_url}  (/readyz, /metrics)", flush=True)
        pipeline.start_worker()
        metrics = pipeline.worker_metrics_url
        say(f"  worker     celery, consuming the SQS queue  (metrics {metrics})", flush=True)

        app = create_demo_app(aws_endpoint_url=pipeline.emulator_url, flush_interval=0.2)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines
        app_server = make_server(LOOPBACK, app_port, app, threaded=True)
        threading.Thread(target=app_server.serve_forever, name="demo-app", daemon=True).start()
        app_url = f"http://{LOOPBACK}:{app_port}"
        say(f"  demo app   {app_url}  (GET /checkout/<n>, GET /fail)", flush=True)
        say(
            f"reading back from CloudWatch Logs group {pipeline.stored_group(DEMO_LOG_GROUP)} "
            f"(tenant {pipeline.tenant.name!r}; Ctrl-C to stop):",
            flush=True,
        )

        logs = make_client("logs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))
        follower = Follower(logs, pipeline.stored_group(DEMO_LOG_GROUP))
        started = time.monotonic()
        next_request = started
        orders = itertools.count(1)
        with httpx.Client(base_url=app_url, timeout=5.0) as http:
            while not stop.is_set():
                if duration is not None and time.monotonic() - started > duration:
                    break
                if time.monotonic() >= next_request:
                    order = next(orders)
                    http.get("/fail" if order % 7 == 0 else f"/checkout/{order}")
                    next_request += REQUEST_INTERVAL_S
                for event in follower.poll():
                    say(format_event(event), flush=True)
                stop.wait(0.25)
        return 0
    except ProcessFailed as exc:
        print(f"cloudlog dev: {exc}", file=sys.stderr)
        return 1
    finally:
        say("stopping ...", flush=True)
        if app_server is not None:
            app_server.shutdown()
        if app is not None:
            app.extensions["cloudlog"].close()  # publish what the demo logged last
        pipeline.stop()
        say("stopped: emulator, ingest and worker have exited", flush=True)
