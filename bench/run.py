"""``python -m bench``: the three systems side by side, then the report.

Per system, on a fresh emulator behind a counting ``AwsProxy``:

1. latency: the app logs 2,000 lines/s (one per Flask request, every log call timed) for
   ``LATENCY_SECONDS``; a reader polls CloudWatch every ``POLL_S`` for when each line is readable.
   Gives emit_us_*, latency_s_*, aws_requests_per_1k_events.
2. throughput: the app logs ``THROUGHPUT_LINES`` as fast as it can (100 lines per request); the
   stream's stored line count is polled; the rate between 10 % and 90 % of the lines readable is
   the sustained rate. Every line is then read back once to check none is lost or duplicated.
3. cloudlog only: a soak at 2,000 lines/s sampling each process's RSS.

Once per run: the ceiling, the emulator's own PutLogEvents rate with 10,000-event batches.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from bench.common import LINE_CHARS, RESULTS_DIR, Progress, percentile
from bench.profile import start_py_spy, summarize
from bench.reader import StreamReader, first_line_length, read_all, stored_bytes
from bench.report import write_reports
from bench.systems import (
    LOG_GROUP,
    SYSTEMS,
    RssSampler,
    SystemRun,
    logs_client,
    start_emulator,
    start_system,
    stop_tree,
)
from cloudlog_devtools.awsproxy import AwsProxy
from cloudlog_devtools.processes import LOOPBACK, ManagedProcess, free_port

LATENCY_RATE = 2_000.0  # lines/s
LATENCY_SECONDS = 20.0
WARMUP_LINES = 400
POLL_S = 0.1  # latency reader: one GetLogEvents poll (plus its pages) every 0.1 s
# throughput: storedBytes once a second, every 0.1 s past 90 %. DescribeLogStreams walks every
# event of the stream in moto: polling faster slows the emulator measurably at 300,000 events.
COUNT_POLL_S = 1.0
DRAIN_S = {"cloudlog": 30.0, "watchtower": 30.0, "naive": 30.0}
THROUGHPUT_LINES = {"cloudlog": 300_000, "watchtower": 300_000, "naive": 1_000_000}
THROUGHPUT_WINDOW_S = {"cloudlog": 90.0, "watchtower": 90.0, "naive": 25.0}
THROUGHPUT_WAIT_S = 120.0  # after the app finished, at most this long for the rest
SETTLE_S = 10.0  # ... and no longer than this once the count stopped growing
CEILING_BATCHES = 20
CEILING_EVENTS = 10_000
# 10,000 events of 78 characters (+26 bytes each) fill a batch to just under 1 MiB, so the
# ceiling batches are within every PutLogEvents limit.
CEILING_MESSAGE_CHARS = 78
SOAK_RATE = 2_000.0
SOAK_SAMPLE_S = 5.0


def _wait_exit(process: ManagedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.stop(grace=5.0)


def _load_result(path: Path) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(path.read_text())
        return result
    except (OSError, ValueError):
        return {"emitted": 0}


def _censored_percentile(
    latencies: list[float], censored_at: list[float], fraction: float
) -> tuple[float, bool]:
    """Percentile over every emitted line; a line never read counts as at least its wait."""
    if not latencies and not censored_at:
        return math.nan, False
    exact = percentile(latencies + [math.inf] * len(censored_at), fraction)
    if math.isfinite(exact):
        return exact, False
    return percentile(latencies + censored_at, fraction), True


def latency_phase(run: SystemRun, sampler: RssSampler, progress: Progress) -> dict[str, Any]:
    stream = "latency"
    out = run.log_dir / "latency.json"
    reader = StreamReader(logs_client(run.emulator_url), run.stored_group(LOG_GROUP), stream)
    args = ["--rate", str(LATENCY_RATE), "--duration", str(LATENCY_SECONDS)]
    app = run.loadgen("app-latency", out, stream, *args, "--warmup", str(WARMUP_LINES))
    sampler.watch("app", app.pid)
    readable: dict[int, tuple[float, float]] = {}  # seq -> (emitted_at, readable_at)
    began: float | None = None
    deadline = time.monotonic() + LATENCY_SECONDS + 90
    while app.alive() and time.monotonic() < deadline:
        if began is None and "measuring" in app.log_text():
            run.proxy.reset_counts()
            began = time.time()
        for seq, emitted_at, readable_at in reader.poll():
            readable[seq] = (emitted_at, readable_at)
        progress.status(f"{run.name}: latency at {LATENCY_RATE:,.0f}/s, {len(readable):,} readable")
        time.sleep(POLL_S)
    _wait_exit(app, 30)
    result = _load_result(out)
    emitted = int(result.get("emitted", 0))
    drain_deadline = time.monotonic() + DRAIN_S[run.name]
    while len(readable) < emitted and time.monotonic() < drain_deadline:
        for seq, emitted_at, readable_at in reader.poll():
            readable[seq] = (emitted_at, readable_at)
        progress.status(f"{run.name}: latency drain, {len(readable):,} of {emitted:,} readable")
        time.sleep(POLL_S)
    ended = time.time()
    counts = run.proxy.counts()
    sampler.forget("app")
    latencies = [r - e for seq, (e, r) in readable.items() if seq < emitted]
    first_emit = float(result.get("first_emit") or ended)
    # A line never read: it waited at least from its (paced) emit time until the end.
    unread = emitted - len(latencies)
    step = 1.0 / float(result.get("achieved_rate") or LATENCY_RATE)
    read_seqs = set(readable)
    censored = [ended - (first_emit + seq * step) for seq in range(emitted) if seq not in read_seqs]
    p50, censored50 = _censored_percentile(latencies, censored, 0.50)
    p99, censored99 = _censored_percentile(latencies, censored, 0.99)
    total_requests = sum(counts.values())
    progress.done(
        f"{run.name}: latency p50 {p50:.3f} s, p99 {p99:.3f} s; emit p50 "
        f"{result.get('emit_us_p50', math.nan):.1f} us; {len(latencies):,}/{emitted:,} read"
    )
    return {
        "emitted": emitted,
        "achieved_rate": result.get("achieved_rate"),
        "readable": len(latencies),
        "unread": unread,
        "latency_s_p50": p50,
        "latency_s_p99": p99,
        "latency_censored": censored50 or censored99,
        "latency_s_quantiles": [percentile(latencies, q / 100) for q in range(1, 100)]
        if latencies
        else [],
        "emit_us_p50": result.get("emit_us_p50"),
        "emit_us_p99": result.get("emit_us_p99"),
        "emit_us_mean": result.get("emit_us_mean"),
        "emit_us_quantiles": result.get("emit_us_quantiles", []),
        "emit_samples": result.get("emit_samples"),
        "window_s": ended - (began or first_emit),
        "requests": counts,
        "requests_total": total_requests,
        "aws_requests_per_1k_events": 1000 * total_requests / max(1, len(latencies)),
        "reader_polls": reader.polls,
        "reader_repairs": reader.repairs,
        "app_stats": result.get("stats"),
    }


def _sustained_rate(series: list[tuple[float, int]]) -> tuple[float, float, float]:
    """(rate between 10 % and 90 % of the final count, t10, t90)."""
    final = series[-1][1] if series else 0
    if final <= 0:
        return 0.0, math.nan, math.nan

    def time_at(level: float) -> float:
        for (t0, n0), (t1, n1) in itertools.pairwise(series):
            if n1 >= level:
                if n1 == n0:
                    return t1
                return t0 + (t1 - t0) * (level - n0) / (n1 - n0)
        return series[-1][0]

    t10, t90 = time_at(0.1 * final), time_at(0.9 * final)
    if t90 <= t10:
        return 0.0, t10, t90
    return 0.8 * final / (t90 - t10), t10, t90


def throughput_phase(
    run: SystemRun,
    sampler: RssSampler,
    progress: Progress,
    producers: int,
    profile_dir: Path | None,
) -> dict[str, Any]:
    stream = "throughput"
    group = run.stored_group(LOG_GROUP)
    logs = logs_client(run.emulator_url)
    target = THROUGHPUT_LINES[run.name]
    window = THROUGHPUT_WINDOW_S[run.name]
    per_app = target // producers
    apps: list[tuple[ManagedProcess, Path]] = []
    cpu_before = sampler.cpu_seconds()
    driver_before = sum(os.times()[:2])
    run.proxy.reset_counts()
    for index in range(producers):
        out = run.log_dir / f"throughput-{index}.json"
        args = ["--rate", "0", "--count", str(per_app), "--duration", str(window)]
        args += ["--start-seq", str(index * per_app), "--lines-per-request", "100"]
        app = run.loadgen(f"app-burst-{index}", out, stream, *args, burst=True)
        sampler.watch("app", app.pid)
        apps.append((app, out))
    spies = []
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        watched = dict(run.processes)
        watched["app"] = apps[0][0]
        for name, process in watched.items():
            spy = start_py_spy(
                f"{run.name}-{name}",
                process.pid,
                profile_dir / f"{run.name}-{name}.txt",
                min(window, 25.0),
                run.log_dir,
            )
            if spy is not None:
                spies.append(spy)
    line_length: int | None = None
    series: list[tuple[float, int]] = []
    emitted: int | None = None
    finished_at: float | None = None
    last_change = time.monotonic()
    hard_deadline = time.monotonic() + window + THROUGHPUT_WAIT_S + 60
    while time.monotonic() < hard_deadline:
        size = stored_bytes(logs, group, stream)
        if line_length is None and size:
            line_length = first_line_length(logs, group, stream)
        count = size // line_length if line_length else 0
        series.append((time.time(), count))
        if emitted is None and not any(app.alive() for app, _ in apps):
            emitted = sum(int(_load_result(out).get("emitted", 0)) for _, out in apps)
            finished_at = time.monotonic()
        goal = emitted if emitted is not None else target
        progress.status(f"{run.name}: throughput, {count:,} of {goal:,} readable")
        if emitted is not None and count >= emitted:
            break
        if finished_at is not None and time.monotonic() - finished_at > _drain_after(run.name):
            break
        if len(series) > 1 and series[-1][1] != series[-2][1]:
            last_change = time.monotonic()
        if finished_at is not None and time.monotonic() - max(last_change, finished_at) > SETTLE_S:
            break  # nothing more arrives: lines were lost (watchtower drops some, see docs)
        time.sleep(COUNT_POLL_S if count < 0.9 * goal else 0.1)
    counts = run.proxy.counts()
    cpu_after = sampler.cpu_seconds()
    driver_cpu = sum(os.times()[:2]) - driver_before
    for app, _ in apps:
        app.stop(grace=5.0)
    for spy in spies:
        _wait_exit(spy, 40)
    sampler.forget("app")
    results = [_load_result(out) for _, out in apps]
    if emitted is None:
        emitted = sum(int(r.get("emitted", 0)) for r in results)
    rate, t10, t90 = _sustained_rate(series)
    first_emit = min((float(r.get("first_emit") or math.inf) for r in results), default=math.inf)
    final = series[-1][1] if series else 0
    overall = final / (series[-1][0] - first_emit) if series and math.isfinite(first_emit) else 0
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    cpu["app"] = sum(float(r.get("cpu_s", 0.0)) for r in results)
    cpu["driver (proxy, poller)"] = driver_cpu
    progress.status(f"{run.name}: throughput, reading every line back once")
    seen, lengths = read_all(logs, group, stream)
    total_requests = sum(counts.values())
    progress.done(
        f"{run.name}: throughput {rate:,.0f} events/s sustained ({overall:,.0f} overall), "
        f"{len(seen):,} of {emitted:,} lines read back"
    )
    return {
        "emitted": emitted,
        "producers": producers,
        "events_per_s": rate,
        "events_per_s_overall": overall,
        "t10": t10 - first_emit if math.isfinite(first_emit) else None,
        "t90": t90 - first_emit if math.isfinite(first_emit) else None,
        "readable": final,
        "read_back_unique": len(seen),
        "read_back_duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "lost": emitted - len(seen),
        "line_lengths": sorted(lengths),
        "series": [(t - first_emit, n) for t, n in series] if math.isfinite(first_emit) else [],
        "requests": counts,
        "requests_total": total_requests,
        "aws_requests_per_1k_events": 1000 * total_requests / max(1, final),
        "app_emit_rate": sum(
            float(r.get("emitted", 0)) / max(1e-9, r["last_emit"] - r["first_emit"])
            for r in results
            if r.get("first_emit")
        ),
        "app_stats": [r.get("stats") for r in results],
        "cpu_s": cpu,
        "cpu_us_per_event": {name: 1e6 * s / max(1, final) for name, s in cpu.items()},
    }


def _drain_after(system: str) -> float:
    # The naive design keeps a backlog it cannot drain in any reasonable time: its rate is the
    # slope over the window, so stop soon after the app stops.
    return 5.0 if system == "naive" else THROUGHPUT_WAIT_S


def soak_phase(
    run: SystemRun, sampler: RssSampler, progress: Progress, seconds: float
) -> dict[str, Any]:
    stream = "soak"
    group = run.stored_group(LOG_GROUP)
    logs = logs_client(run.emulator_url)
    out = run.log_dir / "soak.json"
    args = ["--rate", str(SOAK_RATE), "--duration", str(seconds), "--no-timing"]
    app = run.loadgen("app-soak", out, stream, *args)
    sampler.watch("app", app.pid)
    began = time.time()
    line_length: int | None = None
    backlog: list[tuple[float, int, int]] = []  # (t, expected emitted, readable)
    deadline = time.monotonic() + seconds + 60
    next_check = 0.0
    while app.alive() and time.monotonic() < deadline:
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + SOAK_SAMPLE_S
            size = stored_bytes(logs, group, stream)
            if line_length is None and size:
                line_length = first_line_length(logs, group, stream)
            count = size // line_length if line_length else 0
            elapsed = time.time() - began
            backlog.append((elapsed, int(min(elapsed, seconds) * SOAK_RATE), count))
        elapsed = time.time() - began
        progress.status(
            f"{run.name}: soak at {SOAK_RATE:,.0f}/s, {elapsed:,.0f} of {seconds:,.0f} s, "
            f"{backlog[-1][2] if backlog else 0:,} readable"
        )
        time.sleep(0.5)
    _wait_exit(app, 30)
    sampler.sample_now()
    sampler.forget("app")
    result = _load_result(out)
    memory: dict[str, Any] = {}
    for name in sorted({name for _, name, _ in sampler.samples}):
        points = [(t - began, mb) for t, name_, mb in sampler.samples if name_ == name]
        points = [(t, mb) for t, mb in points if 0 <= t <= seconds + 5]
        if len(points) < 3:
            continue
        memory[name] = _memory_trend(points, seconds)
    progress.done(
        f"{run.name}: soak {seconds:.0f} s: "
        + ", ".join(f"{n} {m['slope_mb_per_min']:+.2f} MB/min" for n, m in memory.items())
    )
    return {
        "seconds": seconds,
        "rate": SOAK_RATE,
        "emitted": result.get("emitted"),
        "memory": memory,
        "backlog": backlog,
        "app_stats": result.get("stats"),
    }


def _memory_trend(points: list[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """Start (first 10 s after the first 10), end (last 10 s), peak, and the least-squares slope
    over the last 80 % of the run (start-up allocation left out), in MB per minute."""
    start = [mb for t, mb in points if 10 <= t <= 20] or [points[0][1]]
    end = [mb for t, mb in points if t >= points[-1][0] - 10]
    tail = [(t, mb) for t, mb in points if t >= 0.2 * seconds]
    slope = 0.0
    if len(tail) >= 2:
        mean_t = sum(t for t, _ in tail) / len(tail)
        mean_m = sum(m for _, m in tail) / len(tail)
        var = sum((t - mean_t) ** 2 for t, _ in tail)
        if var > 0:
            slope = sum((t - mean_t) * (m - mean_m) for t, m in tail) / var * 60
    return {
        "start_mb": sum(start) / len(start),
        "end_mb": sum(end) / len(end),
        "peak_mb": max(mb for _, mb in points),
        "slope_mb_per_min": slope,
        "series": points,
    }


def ceiling(log_dir: Path, progress: Progress) -> dict[str, Any]:
    """The emulator's own PutLogEvents rate, 10,000-event batches, one client; then the same
    through the counting proxy, to show what the proxy costs."""
    port = free_port()
    emulator = start_emulator(port, log_dir)
    url = f"http://{LOOPBACK}:{port}"
    try:
        direct = _put_rate(url, "direct", CEILING_BATCHES, progress)
        with AwsProxy(url, strict=False) as proxy:
            proxied = _put_rate(proxy.url, "proxied", CEILING_BATCHES // 2, progress)
    finally:
        stop_tree(emulator)
    progress.done(
        f"ceiling: {direct:,.0f} events/s direct, {proxied:,.0f} through the counting proxy"
    )
    return {
        "ceiling_events_per_s": direct,
        "through_proxy_events_per_s": proxied,
        "proxy_overhead": 1 - proxied / direct if direct else None,
        "batch_events": CEILING_EVENTS,
        "message_chars": CEILING_MESSAGE_CHARS,
    }


def _put_rate(url: str, stream: str, batches: int, progress: Progress) -> float:
    logs = logs_client(url)
    group = "bench/ceiling"
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    message = "c" * CEILING_MESSAGE_CHARS
    base = int(time.time() * 1000)
    payloads = [
        [{"timestamp": base + b, "message": message} for _ in range(CEILING_EVENTS)]
        for b in range(batches)
    ]
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=payloads[0][:10])
    started = time.perf_counter()
    for index, events in enumerate(payloads):
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
        progress.status(f"ceiling ({stream}): batch {index + 1} of {batches}")
    return batches * CEILING_EVENTS / (time.perf_counter() - started)


def bench_system(
    name: str,
    out_dir: Path,
    progress: Progress,
    *,
    producers: int,
    soak_seconds: float,
    profile: bool,
) -> dict[str, Any]:
    sampler = RssSampler(interval=1.0).start()
    progress.status(f"{name}: starting")
    try:
        with start_system(name, out_dir / "logs" / name) as run:
            for process_name, process in run.processes.items():
                sampler.watch(process_name, process.pid)
            progress.done(f"{name}: started ({', '.join(run.processes)})")
            latency = latency_phase(run, sampler, progress)
            profile_dir = out_dir / "profiles" if profile else None
            throughput = throughput_phase(run, sampler, progress, producers, profile_dir)
            soak = soak_phase(run, sampler, progress, soak_seconds) if soak_seconds else None
            sampler.sample_now()
    finally:
        sampler.stop()
    return {
        "emit_us_p50": latency["emit_us_p50"],
        "emit_us_p99": latency["emit_us_p99"],
        "events_per_s": throughput["events_per_s"],
        "latency_s_p50": latency["latency_s_p50"],
        "latency_s_p99": latency["latency_s_p99"],
        "aws_requests_per_1k_events": latency["aws_requests_per_1k_events"],
        "peak_rss_mb": {k: round(v, 1) for k, v in sorted(sampler.peaks.items())},
        "details": {"latency": latency, "throughput": throughput, "soak": soak},
    }


def _shrink() -> None:
    """``--quick``: every phase a few seconds, to check the harness itself."""
    global LATENCY_SECONDS, THROUGHPUT_LINES, THROUGHPUT_WINDOW_S, CEILING_BATCHES
    LATENCY_SECONDS = 5.0
    THROUGHPUT_LINES = {"cloudlog": 30_000, "watchtower": 30_000, "naive": 100_000}
    THROUGHPUT_WINDOW_S = {"cloudlog": 30.0, "watchtower": 30.0, "naive": 8.0}
    CEILING_BATCHES = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument(
        "--soak", type=float, default=60.0, help="cloudlog soak seconds (0: none; 300: 5 min)"
    )
    parser.add_argument("--producers", type=int, default=1, help="app processes in throughput")
    parser.add_argument("--profile", action="store_true", help="py-spy during throughput")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="smoke test: short phases")
    parser.add_argument(
        "--lines", type=int, default=0, help="throughput lines (cloudlog, watchtower)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        _shrink()
    if args.lines:
        THROUGHPUT_LINES.update(cloudlog=args.lines, watchtower=args.lines)
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    started = time.time()
    report: dict[str, Any] = {}
    report.update(ceiling(args.out / "logs" / "ceiling", progress))
    report["systems"] = {}
    for name in systems:
        report["systems"][name] = bench_system(
            name,
            args.out,
            progress,
            producers=args.producers,
            soak_seconds=args.soak if name == "cloudlog" else 0,
            profile=args.profile,
        )
    report["run"] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "line_chars": LINE_CHARS,
        "latency_rate": LATENCY_RATE,
        "latency_seconds": LATENCY_SECONDS,
        "poll_s": POLL_S,
        "throughput_lines": THROUGHPUT_LINES,
    }
    paths = write_reports(report, args.out)
    if args.profile:
        for raw in sorted((args.out / "profiles").glob("*.txt")):
            summary = summarize(raw)
            raw.with_suffix(".summary").write_text(summary + "\n")
    progress.done(f"done in {report['run']['seconds']:.0f} s: " + ", ".join(map(str, paths)))
    return 0
