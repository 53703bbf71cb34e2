"""Starting and stopping the three systems, each on a fresh emulator behind a counting proxy.

Every child is a ``ManagedProcess`` stopped by its pid (its own children, such as Celery's
prefork pool, by theirs); every wait is bounded.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psutil

from bench.common import CREDENTIALS, REGION
from cloudlog_devtools.awsproxy import AwsProxy
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import (
    LOOPBACK,
    ManagedProcess,
    cloudlog_command,
    free_port,
    pipeline_env,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("cloudlog", "naive", "watchtower")
LOG_GROUP = "bench/app"

# cloudlog's processes, configured through the documented CLOUDLOG_* settings only.
CLOUDLOG_ENV = {
    # The bench keeps no journal across runs; it still journals (fsync) every commit.
    "CLOUDLOG_INGEST_LOG_LEVEL": "warning",
    "CLOUDLOG_WAIT_TIME_SECONDS": "10",
}
# The Flask extension's options (CloudLog(app, **options)); see docs/benchmarks.md for why.
CLOUDLOG_APP_OPTIONS: dict[str, Any] = {
    # SQS takes 1 MiB messages (AWS since 2025, moto's default queue). A task is compressed
    # JSON (zlib, ~27x on these lines), so the event count, not the message size, bounds it:
    # 5,000 events are ~60 KB on SQS and ~1.7 MB of JSON POSTed to ingest.
    "max_task_bytes": 1_048_576,
    "batch_max_events": 5_000,
    # Room for several full batches while one is published (the default holds 10,000).
    "buffer_max_events": 50_000,
    "flush_interval": 1.0,
}
# For the throughput burst the app must not drop what it cannot ship yet: block instead.
CLOUDLOG_BURST_OPTIONS: dict[str, Any] = {"overflow_policy": "block", "block_timeout": 10.0}


def logs_client(endpoint_url: str) -> Any:
    return boto3.client(
        "logs",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=CREDENTIALS["aws_secret_access_key"],
    )


@dataclass
class SystemRun:
    """A started system: where its AWS endpoint is, how to start its app, what to watch."""

    name: str
    emulator_url: str
    proxy: AwsProxy
    log_dir: Path
    app_env: dict[str, str]
    app_options: dict[str, Any]
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    stored_group: Callable[[str], str] = lambda group: group

    def loadgen(
        self, label: str, out: Path, stream: str, *args: str, burst: bool = False
    ) -> ManagedProcess:
        options = dict(self.app_options)
        if burst and self.name == "cloudlog":
            options.update(CLOUDLOG_BURST_OPTIONS)
        command = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--system",
            self.name,
            "--endpoint",
            self.proxy.url,
            "--group",
            LOG_GROUP,
            "--stream",
            stream,
            "--out",
            str(out),
            "--options",
            json.dumps(options),
            *args,
        ]
        process = ManagedProcess(label, command, env=self.app_env, log_dir=self.log_dir)
        process.cwd = REPO_ROOT
        return process.start()


def stop_tree(process: ManagedProcess | None, grace: float = 10.0) -> None:
    """Stop a child by its pid, then any of its own children still alive, by theirs."""
    if process is None or process.process is None:
        return
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    process.stop(grace=grace)
    for child in children:
        try:
            child.terminate()
            child.wait(timeout=5)
        except psutil.TimeoutExpired:
            child.kill()
        except psutil.Error:
            pass


def start_emulator(port: int, log_dir: Path) -> ManagedProcess:
    url = f"http://{LOOPBACK}:{port}"
    emulator = ManagedProcess(
        "emulator",
        cloudlog_command("emulator", "--port", str(port)),
        env=pipeline_env(url, "http://127.0.0.1:1"),
        log_dir=log_dir,
    ).start()
    emulator.wait_for_log("emulator ready", timeout=30)
    return emulator


@contextmanager
def start_system(name: str, log_dir: Path) -> Iterator[SystemRun]:
    log_dir.mkdir(parents=True, exist_ok=True)
    emulator_port = free_port()
    emulator_url = f"http://{LOOPBACK}:{emulator_port}"
    proxy = AwsProxy(emulator_url, strict=False).start()
    started: list[ManagedProcess] = []
    pipeline: LocalPipeline | None = None
    try:
        if name == "cloudlog":
            pipeline = LocalPipeline(
                log_dir=log_dir,
                emulator_port=emulator_port,
                ingest_port=free_port(),
                sqs_endpoint_url=proxy.url,
                logs_endpoint_url=proxy.url,
                extra_env=CLOUDLOG_ENV,
            )
            pipeline.start()
            assert pipeline.emulator and pipeline.ingest and pipeline.worker
            run = SystemRun(
                name,
                emulator_url,
                proxy,
                log_dir,
                # The app process gets the pipeline's environment (API key, tenant, region).
                app_env=dict(pipeline.env),
                app_options=dict(CLOUDLOG_APP_OPTIONS),
                processes={
                    "emulator": pipeline.emulator,
                    "ingest": pipeline.ingest,
                    "worker": pipeline.worker,
                },
            )
            run.stored_group = pipeline.stored_group
        else:
            emulator = start_emulator(emulator_port, log_dir)
            started.append(emulator)
            env = pipeline_env(proxy.url, "http://127.0.0.1:1")
            run = SystemRun(name, emulator_url, proxy, log_dir, app_env=env, app_options={})
            run.processes["emulator"] = emulator
            if name == "naive":
                api_port = free_port()
                env.update(
                    {
                        "NAIVE_AWS_ENDPOINT_URL": proxy.url,
                        "NAIVE_BROKER_URL": f"sqs://testing:testing@{LOOPBACK}:{proxy.port}",
                        "NAIVE_LOGGER_URL": f"http://{LOOPBACK}:{api_port}",
                    }
                )
                api = ManagedProcess(
                    "naive-api",
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "bench.naive.app:app",
                        "--host",
                        LOOPBACK,
                        "--port",
                        str(api_port),
                        "--log-level",
                        "warning",
                    ],
                    env=env,
                    log_dir=log_dir,
                    cwd=REPO_ROOT,
                ).start()
                started.append(api)
                api.wait_until_ready(f"http://{LOOPBACK}:{api_port}/healthz", timeout=30)
                worker = ManagedProcess(
                    "naive-worker",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "bench.naive.tasks",
                        "worker",
                        "--loglevel",
                        "INFO",
                        "--without-mingle",
                        "--without-gossip",
                    ],
                    env=env,
                    log_dir=log_dir,
                    cwd=REPO_ROOT,
                ).start()
                started.append(worker)
                worker.wait_for_log("ready.", timeout=60)
                run.processes.update({"ingest": api, "worker": worker})
            elif name != "watchtower":
                raise ValueError(f"unknown system {name!r}")
        yield run
    finally:
        if pipeline is not None:
            for process in (pipeline.worker, pipeline.ingest, pipeline.emulator):
                stop_tree(process)
        for process in reversed(started):
            stop_tree(process)
        proxy.stop()


class RssSampler:
    """Samples the resident memory of named processes (each with its children) on a thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[tuple[float, str, float]] = []  # (time, name, MB)
        self.peaks: dict[str, float] = {}
        self._pids: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._pids.setdefault(name, []).append(pid)

    def forget(self, name: str) -> None:
        with self._lock:
            self._pids.pop(name, None)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds so far of each watched process (with its children)."""
        with self._lock:
            watched = {name: list(pids) for name, pids in self._pids.items()}
        return {name: sum(_tree_cpu(pid) for pid in pids) for name, pids in watched.items()}

    def sample_now(self) -> None:
        now = time.time()
        with self._lock:
            watched = {name: list(pids) for name, pids in self._pids.items()}
        for name, pids in watched.items():
            largest = 0.0
            for pid in pids:
                largest = max(largest, _tree_rss_mb(pid))
            if largest <= 0:
                continue
            with self._lock:
                self.samples.append((now, name, largest))
                self.peaks[name] = max(self.peaks.get(name, 0.0), largest)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_now()


def _tree_cpu(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for each in processes:
        with suppress(psutil.Error):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def _tree_rss_mb(pid: int) -> float:
    """RSS of a process plus its children (Celery's prefork pool), in MB; 0 if it is gone."""
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with suppress(psutil.Error):
                total += child.memory_info().rss
    except psutil.Error:
        return 0.0
    return total / (1024 * 1024)
