"""``cloudlog dev``: the whole pipeline on the embedded endpoint, a demo app, live read-back.

Starts the emulator, ingest and a worker as child processes, serves the demo Flask app on a thread,
requests it every second, and prints events as they are read back from CloudWatch Logs. Ctrl-C
(or ``--duration``) stops everything: the app flushes, then worker, ingest, emulator, by pid.

Before it changes anything (the tenant registry in ``--log-dir`` above all), it takes an exclusive
lock on ``<log-dir>/dev.lock`` for its lifetime and checks that its ports are free; a second
``cloudlog dev`` is refused with one message naming the running one and the flags to run beside it.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

import httpx
from werkzeug.serving import make_server

from cloudlog_cli.tail import Follower, format_event
from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.demo import DEMO_LOG_GROUP, create_demo_app
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import LOOPBACK, ProcessFailed, free_port, port_in_use

REQUEST_INTERVAL_S = 1.0
LOCK_FILE_NAME = "dev.lock"


class AlreadyRunning(RuntimeError):
    """Another ``cloudlog dev`` holds the log folder or a port: nothing was changed."""


def _second_instance_hint(log_dir: Path) -> str:
    emulator, ingest, app = free_port(), free_port(), free_port()
    other_dir = log_dir.with_name(log_dir.name + "-2")
    return (
        "to run a second one beside it: cloudlog dev "
        f"--emulator-port {emulator} --ingest-port {ingest} --app-port {app} "
        f"--log-dir {shlex.quote(str(other_dir))}"
    )


def acquire_lock(log_dir: Path, *, ports: dict[str, int]) -> IO[str]:
    """An exclusive, non-blocking ``flock`` on ``<log_dir>/dev.lock``, held while the file stays
    open; the file then says who holds it (pid, ports). Raises :class:`AlreadyRunning`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    lock_path = log_dir / LOCK_FILE_NAME
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        try:
            info = json.loads(holder)
            who = f"pid {info['pid']}, " + ", ".join(
                f"{name} port {port}" for name, port in info["ports"].items()
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            who = "pid unknown"
        raise AlreadyRunning(
            f"another cloudlog dev is running with log folder {log_dir} ({who}); "
            f"nothing was changed; {_second_instance_hint(log_dir)}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "ports": ports}) + "\n")
    handle.flush()
    return handle


def check_ports(ports: dict[str, int], log_dir: Path) -> None:
    busy = [f"{name} port {port}" for name, port in ports.items() if port_in_use(port)]
    if busy:
        raise AlreadyRunning(
            f"{', '.join(busy)} already in use on {LOOPBACK} (another cloudlog dev?); "
            f"nothing was changed; {_second_instance_hint(log_dir)}"
        )


def second_terminal_text(pipeline: LocalPipeline, groups: list[str]) -> str:
    """What another terminal needs to use this pipeline, printed once at start."""
    endpoint = pipeline.emulator_url
    tenants_path = pipeline.env["CLOUDLOG_TENANTS_PATH"]
    stored = [pipeline.stored_group(group) for group in groups]
    return "\n".join(
        [
            "for another terminal:",
            f"  export CLOUDLOG_AWS_ENDPOINT_URL={endpoint}   # SQS + CloudWatch Logs",
            f"  ingest URL  {pipeline.ingest_url}",
            f"  tenant      {pipeline.tenant.name} (prefix {pipeline.tenant.log_group_prefix}), "
            f"key {pipeline.api_key}  (the worker sends it: apps need no CLOUDLOG_API_KEY)",
            f"  tenants     CLOUDLOG_TENANTS_PATH={shlex.quote(tenants_path)} cloudlog tenant list",
            f"  groups      an app's CLOUDLOG_LOG_GROUP G lands in "
            f"{pipeline.tenant.log_group_prefix}G; this demo writes {', '.join(stored)}",
            f"  read back   CLOUDLOG_AWS_ENDPOINT_URL={endpoint} "
            f"cloudlog tail {stored[0]} --follow",
        ]
    )


def run_dev(
    *,
    emulator_port: int,
    ingest_port: int,
    app_port: int,
    duration: float | None,
    log_dir: Path,
) -> int:
    ports = {"emulator": emulator_port, "ingest": ingest_port, "app": app_port}
    try:
        lock = acquire_lock(log_dir, ports=ports)  # before the registry is touched
        try:
            check_ports(ports, log_dir)
        except AlreadyRunning:
            lock.close()
            raise
    except AlreadyRunning as exc:
        print(f"cloudlog dev: refused: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_locked(
            emulator_port=emulator_port,
            ingest_port=ingest_port,
            app_port=app_port,
            duration=duration,
            log_dir=log_dir,
        )
    finally:
        lock.close()  # releases the flock


def _run_locked(
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
    say(f"cloudlog dev (pid {os.getpid()}): child processes log to {log_dir}/", flush=True)
    app_server = None
    app = None
    try:
        pipeline.start_emulator()
        say(f"  emulator   {pipeline.emulator_url}  (SQS + CloudWatch Logs, moto)", flush=True)
        pipeline.start_ingest()
        say(f"  ingest     {pipeline.ingest_url}  (/readyz; /metrics with its token)", flush=True)
        say(f"             metrics token {pipeline.ingest_metrics_token}", flush=True)
        pipeline.start_worker()
        metrics = pipeline.worker_metrics_url
        say(f"  worker     celery, consuming the SQS queue  (metrics {metrics})", flush=True)

        app = create_demo_app(aws_endpoint_url=pipeline.emulator_url, flush_interval=0.2)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines
        app_server = make_server(LOOPBACK, app_port, app, threaded=True)
        threading.Thread(target=app_server.serve_forever, name="demo-app", daemon=True).start()
        app_url = f"http://{LOOPBACK}:{app_port}"
        say(f"  demo app   {app_url}  (GET /checkout/<n>, GET /fail)", flush=True)
        say(second_terminal_text(pipeline, [DEMO_LOG_GROUP]), flush=True)
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
