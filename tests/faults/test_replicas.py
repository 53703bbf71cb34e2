"""Three ingest replicas behind HAProxy, sharing the idempotency table in DynamoDB (the
emulator's), two workers: one replica kill -9'ed while it writes, one worker kill -9'ed; every
one of 20,000 numbered lines arrives exactly once, the last within 90 s of the first kill.

Also measures what the idempotency costs: DynamoDB requests per 1,000 events, from the
replicas' ``cloudlog_ingest_dynamodb_requests_total`` (the killed replica's as last scraped).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from cloudlog_core.aws import AwsSettings
from cloudlog_devtools.localpipeline import WORKER_READY_TEXT, LocalPipeline
from cloudlog_devtools.processes import ManagedProcess, cloudlog_command, free_port
from cloudlog_ingest.idempotency import ensure_idempotency_table, make_dynamodb_client
from tests.faults.harness import (
    FAULT_ENV,
    NumberedLines,
    assert_exactly_once,
    read_line_counts,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is not installed (apt-get install -y haproxy): the replicas' load balancer",
    ),
]

LINES = 20_000
RATE = 1_000.0  # lines a second: a 20-second run
REPLICAS = 3
LEASE_SECONDS = 10
TABLE = "cloudlog-idempotency-test"
DEADLINE_AFTER_KILL = 90.0
REQUESTS = re.compile(r'^cloudlog_ingest_dynamodb_requests_total\{op="(\w+)"\} ([0-9.e+]+)$', re.M)
PENDING = re.compile(r"^cloudlog_ingest_pending_events ([0-9.e+]+)$", re.M)

HAPROXY_CONFIG = """
global
    maxconn 1024
defaults
    mode http
    retries 0
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend ingest
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /healthz
    default-server inter 500ms fall 2 rise 1
{servers}
"""


def start_haproxy(tmp_path: Path, port: int, replica_ports: list[int]) -> subprocess.Popen[bytes]:
    servers = "\n".join(f"    server r{n} 127.0.0.1:{p} check" for n, p in enumerate(replica_ports))
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    haproxy = shutil.which("haproxy")
    assert haproxy is not None
    log = (tmp_path / "haproxy.log").open("wb")
    return subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=log)


class Scraper:
    """Scrapes every replica's metrics in the background, keeping each one's last answer."""

    def __init__(self, urls: list[str], headers: dict[str, str]) -> None:
        self.urls = urls
        self.headers = headers
        self.last: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def scrape(self, url: str) -> str | None:
        try:
            text = httpx.get(url, headers=self.headers, timeout=2).text
        except httpx.HTTPError:
            return None
        self.last[url] = text
        return text

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for url in self.urls:
                self.scrape(url)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def requests(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for text in self.last.values():
            for op, value in REQUESTS.findall(text):
                total[op] = total.get(op, 0.0) + float(value)
        return total


def test_replicas_share_idempotency_through_kills(tmp_path: Path) -> None:
    replica_ports = [free_port() for _ in range(REPLICAS)]
    lb_port = free_port()
    pipeline = LocalPipeline(
        log_dir=tmp_path / "logs",
        emulator_port=free_port(),
        ingest_port=lb_port,  # the workers' CLOUDLOG_INGEST_URL: the load balancer
        extra_env={
            **FAULT_ENV,
            "CLOUDLOG_INGEST_IDEMPOTENCY_TABLE": TABLE,
            "CLOUDLOG_INGEST_IDEMPOTENCY_LEASE_SECONDS": str(LEASE_SECONDS),
        },
    )
    replicas: list[ManagedProcess] = []
    workers: list[ManagedProcess] = []
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        pipeline.start_emulator()
        # The emulator creates the table CLOUDLOG_INGEST_IDEMPOTENCY_TABLE names: nothing to add.
        assert not ensure_idempotency_table(
            make_dynamodb_client(AwsSettings(aws_endpoint_url=pipeline.emulator_url)), TABLE
        )
        for n, port in enumerate(replica_ports):
            replicas.append(
                ManagedProcess(
                    f"ingest{n}",
                    cloudlog_command("ingest", "--port", str(port)),
                    env=pipeline.env,
                    log_dir=pipeline.log_dir,
                ).start()
            )
        for replica, port in zip(replicas, replica_ports, strict=True):
            replica.wait_until_ready(f"http://127.0.0.1:{port}/healthz", timeout=60)
        haproxy = start_haproxy(tmp_path, lb_port, replica_ports)
        for n in range(2):
            env = {**pipeline.env, "CLOUDLOG_WORKER_METRICS_PORT": str(free_port())}
            workers.append(
                ManagedProcess(
                    f"worker{n}",
                    cloudlog_command("worker", "--concurrency", "4", "--loglevel", "INFO"),
                    env=env,
                    log_dir=pipeline.log_dir,
                ).start()
            )
        for worker in workers:
            worker.wait_for_log(WORKER_READY_TEXT, timeout=60)

        metrics_urls = [f"http://127.0.0.1:{port}/metrics" for port in replica_ports]
        lines = NumberedLines(pipeline.emulator_url, batch_max_events=1_000, flush_interval=2.0)
        group = pipeline.stored_group(lines.group)
        with Scraper(metrics_urls, pipeline.ingest_metrics_headers) as scraper:
            with lines.emitting_in_background(LINES, RATE):
                time.sleep(6)
                # kill -9 a replica while it writes: one with events in its pipeline.
                victim = None
                deadline = time.monotonic() + 10
                while victim is None and time.monotonic() < deadline:
                    for replica, url in zip(replicas, metrics_urls, strict=True):
                        text = scraper.scrape(url) or ""
                        found = PENDING.search(text)
                        if found and float(found[1]) > 0:
                            victim = replica
                            break
                assert victim is not None, "no replica was writing"
                victim.kill()
                killed_at = time.monotonic()
                time.sleep(4)
                workers[0].kill()
            assert lines.close(), lines.state.stats()
            logs = pipeline_logs(pipeline)
            counts = read_line_counts(logs, group, lines.stream)
            while time.monotonic() - killed_at < DEADLINE_AFTER_KILL and (
                len(counts) < LINES or sum(counts.values()) < LINES
            ):
                time.sleep(0.5)
                counts = read_line_counts(logs, group, lines.stream)
            complete_after = time.monotonic() - killed_at
            time.sleep(3)  # late duplicates would show by now
            counts = read_line_counts(logs, group, lines.stream)
            for url in metrics_urls:
                scraper.scrape(url)
            used = scraper.requests()
        assert_exactly_once(counts, LINES)
        assert complete_after <= DEADLINE_AFTER_KILL, complete_after
        per_thousand = sum(used.values()) / (LINES / 1_000)
        survivors_log = "".join(r.log_text() for r in replicas if r is not victim)
        print(
            f"\nall {LINES} lines once, complete {complete_after:.1f} s after the replica's kill; "
            f"DynamoDB requests {used} = {per_thousand:.2f} per 1,000 events; "
            f"takeovers seen: {survivors_log.count('took over batch')}"
        )
        # Steady state is one claim per 1,000-event task, each carrying the previous batch's done
        # mark (tests/unit/test_idempotency.py); a 20-second run also pays for the last done
        # marks of each replica, the takeover and the refused claims of retried batches.
        assert per_thousand <= 1.5, used
    finally:
        for worker in workers:
            worker.stop()
        if haproxy is not None:
            haproxy.send_signal(signal.SIGTERM)
            haproxy.wait(timeout=10)
        for replica in replicas:
            replica.stop()
        pipeline.stop()


def pipeline_logs(pipeline: LocalPipeline) -> object:
    from cloudlog_core.aws import make_client

    return make_client("logs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))
