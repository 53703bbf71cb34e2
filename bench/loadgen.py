"""The application under load: a Flask app whose requests log numbered lines through one of the
three systems, driven in-process with Flask's test client (no HTTP server in the way).

``python -m bench.loadgen --system cloudlog --endpoint URL --group G --stream S --out F.json``
either paces one line per request (``--rate``, ``--duration``), timing every log call inside the
request, or logs as fast as it can, ``--lines-per-request`` lines per request (``--rate 0``).
It writes what it did to ``--out`` as JSON and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from flask import Flask
from flask.logging import default_handler

from bench.common import CREDENTIALS, REGION, make_line, percentile

EMIT_QUANTILES = [i / 200 for i in range(1, 200)] + [0.995, 0.999]


class Emitter:
    """The Flask app, its handler, and counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.system: str = args.system
        self.app = Flask(f"bench-{self.system}")
        self.app.logger.setLevel(logging.INFO)
        self.next_seq: int = args.start_seq
        self.warmup = False
        self.emit_ns: list[int] = []
        self.timing = True
        self.first_emit = 0.0
        self.last_emit = 0.0
        self._flush: Any = None
        self._stats: Any = None
        self._attach(args)
        # Flask's own stderr handler would write every line to the terminal: not what we measure.
        self.app.logger.removeHandler(default_handler)
        self.app.logger.propagate = False
        logger = self.app.logger

        @self.app.get("/log")
        def log_one() -> str:
            seq = self.next_seq
            self.next_seq += 1
            line = make_line(seq, time.time(), warmup=self.warmup)
            started = time.perf_counter_ns()
            logger.info(line)
            if self.timing:  # a soak keeps none: the list would grow by 2,000 a second
                self.emit_ns.append(time.perf_counter_ns() - started)
            return "ok"

        @self.app.get("/burst/<int:count>")
        def log_many(count: int) -> str:
            for _ in range(count):
                seq = self.next_seq
                self.next_seq += 1
                logger.info(make_line(seq, time.time()))
            return "ok"

        self.client = self.app.test_client()

    def _attach(self, args: argparse.Namespace) -> None:
        if self.system == "cloudlog":
            from flask_cloudlog import CloudLog

            options = json.loads(args.options or "{}")
            CloudLog(
                self.app,
                aws_endpoint_url=args.endpoint,
                log_group=args.group,
                log_stream=args.stream,
                **options,
            )
            state = self.app.extensions["cloudlog"]
            self._flush = lambda: state.flush(120.0)
            self._stats = state.stats
        elif self.system == "watchtower":
            import boto3
            import watchtower

            client = boto3.client(
                "logs",
                endpoint_url=args.endpoint,
                region_name=REGION,
                aws_access_key_id=CREDENTIALS["aws_access_key_id"],
                aws_secret_access_key=CREDENTIALS["aws_secret_access_key"],
            )
            handler = watchtower.CloudWatchLogHandler(
                log_group_name=args.group, log_stream_name=args.stream, boto3_client=client
            )
            self.app.logger.addHandler(handler)
            self._flush = handler.flush
        elif self.system == "naive":
            from bench.naive.client import NaiveLogHandler

            self.app.logger.addHandler(NaiveLogHandler(args.group, args.stream))
        else:
            raise SystemExit(f"unknown system {self.system!r}")

    def flush(self) -> None:
        if self._flush is not None:
            self._flush()

    def paced(self, rate: float, duration: float, warmup: bool = False) -> int:
        """One line per request at ``rate`` lines/s for ``duration`` s (falls behind if slow)."""
        self.warmup = warmup
        interval = 1.0 / rate
        count = int(rate * duration)
        began = time.monotonic()
        deadline = began + duration
        done = 0
        if not warmup:
            self.first_emit = time.time()
        while done < count:
            self.client.get("/log")
            done += 1
            now = time.monotonic()
            if now >= deadline:
                break
            pause = began + done * interval - now
            if pause > 0:
                time.sleep(pause)
        if not warmup:
            self.last_emit = time.time()
        return done

    def burst(self, count: int, per_request: int, duration: float) -> int:
        """``count`` lines as fast as possible, ``per_request`` per request, within ``duration``."""
        self.first_emit = time.time()
        deadline = time.monotonic() + duration
        done = 0
        while done < count and time.monotonic() < deadline:
            step = min(per_request, count - done)
            self.client.get(f"/burst/{step}")
            done += step
        self.last_emit = time.time()
        return done


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--system", required=True)
    parser.add_argument("--endpoint", required=True, help="AWS endpoint (the counting proxy)")
    parser.add_argument("--group", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="lines/s; 0: as fast as possible")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds, at most")
    parser.add_argument("--count", type=int, default=0, help="lines, for --rate 0")
    parser.add_argument("--lines-per-request", type=int, default=100)
    parser.add_argument("--start-seq", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=0, help="lines logged and flushed first")
    parser.add_argument("--options", default="", help="JSON: CloudLog(...) options")
    parser.add_argument("--no-timing", action="store_true", help="keep no per-call timings")
    args = parser.parse_args()

    emitter = Emitter(args)
    emitter.timing = not args.no_timing
    if args.warmup:
        emitter.paced(max(args.rate, 200.0), args.warmup / max(args.rate, 200.0), warmup=True)
        emitter.flush()
        time.sleep(1.0)
        emitter.emit_ns.clear()
        emitter.next_seq = args.start_seq
    print("measuring", flush=True)  # the driver starts counting requests here
    if args.rate > 0:
        emitted = emitter.paced(args.rate, args.duration)
    else:
        emitted = emitter.burst(args.count, args.lines_per_request, args.duration)
    emit_end = time.time()
    emitter.flush()
    flushed_at = time.time()
    samples = [ns / 1000 for ns in emitter.emit_ns]
    result: dict[str, Any] = {
        "system": args.system,
        "pid": os.getpid(),
        "emitted": emitted,
        "start_seq": args.start_seq,
        "first_emit": emitter.first_emit,
        "last_emit": emitter.last_emit,
        "emit_end": emit_end,
        "flushed_at": flushed_at,
        "achieved_rate": emitted / max(1e-9, emitter.last_emit - emitter.first_emit),
        "emit_samples": len(samples),
        "emit_us_p50": percentile(samples, 0.50),
        "emit_us_p99": percentile(samples, 0.99),
        "emit_us_mean": sum(samples) / len(samples) if samples else None,
        "emit_us_quantiles": [percentile(samples, q) for q in EMIT_QUANTILES] if samples else [],
        "stats": emitter._stats() if emitter._stats else None,
        "cpu_s": sum(os.times()[:2]),
    }
    args.out.write_text(json.dumps(result))
    print(f"loadgen done: {emitted} lines", flush=True)


if __name__ == "__main__":
    main()
