"""The run's outputs: ``latest.json`` (the figures), ``details.json`` (everything measured),
``latest.md`` (a table) and PNG plots, all in ``bench/results/``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FIGURES = (
    "emit_us_p50",
    "emit_us_p99",
    "events_per_s",
    "latency_s_p50",
    "latency_s_p99",
    "aws_requests_per_1k_events",
    "peak_rss_mb",
)
COLORS = {"cloudlog": "#1f77b4", "watchtower": "#2ca02c", "naive": "#d62728"}


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3) if abs(value) < 100 else round(value, 1)
    return value


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """latest.json: the figures per system, without the series behind them."""
    systems: dict[str, Any] = {}
    for name, result in report["systems"].items():
        figures = {key: _round(result[key]) for key in FIGURES}
        latency = result["details"]["latency"]
        throughput = result["details"]["throughput"]
        figures["latency_censored"] = latency["latency_censored"]
        figures["latency_run_lines_per_s"] = _round(latency["achieved_rate"])
        figures["events_per_s_overall"] = _round(throughput["events_per_s_overall"])
        figures["aws_requests_per_1k_events_burst"] = _round(
            throughput["aws_requests_per_1k_events"]
        )
        figures["lost"] = throughput["lost"]
        figures["duplicates"] = throughput["read_back_duplicates"]
        soak = result["details"].get("soak")
        if soak:
            figures["soak"] = {
                "seconds": soak["seconds"],
                "rate": soak["rate"],
                "memory": {
                    process: {k: _round(v) for k, v in trend.items() if k != "series"}
                    for process, trend in soak["memory"].items()
                },
            }
        systems[name] = figures
    return _clean(
        {
            "ceiling_events_per_s": _round(report["ceiling_events_per_s"]),
            "ceiling_through_proxy_events_per_s": _round(report["through_proxy_events_per_s"]),
            "systems": systems,
            "run": report["run"],
        }
    )


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(latest: dict[str, Any]) -> str:
    systems = latest["systems"]
    names = list(systems)
    rows = [
        ("emit_us_p50 (µs)", "emit_us_p50", 1),
        ("emit_us_p99 (µs)", "emit_us_p99", 1),
        ("events_per_s", "events_per_s", 0),
        ("lines/s the app reached in the latency run", "latency_run_lines_per_s", 0),
        ("latency_s_p50 at 2,000 lines/s", "latency_s_p50", 2),
        ("latency_s_p99 at 2,000 lines/s", "latency_s_p99", 2),
        ("aws_requests_per_1k_events at 2,000 lines/s", "aws_requests_per_1k_events", 2),
        ("aws_requests_per_1k_events, burst", "aws_requests_per_1k_events_burst", 2),
        ("lines lost / duplicated (burst)", None, 0),
    ]
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, digits in rows:
        cells = []
        for name in names:
            figures = systems[name]
            if key is None:
                cells.append(f"{figures['lost']} / {figures['duplicates']}")
                continue
            cell = _fmt(figures.get(key), digits)
            if key.startswith("latency") and figures.get("latency_censored"):
                cell = "≥ " + cell
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    processes = sorted({p for name in names for p in systems[name]["peak_rss_mb"]})
    for process in processes:
        cells = [_fmt(systems[name]["peak_rss_mb"].get(process), 0) for name in names]
        lines.append(f"| peak_rss_mb {process} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"ceiling_events_per_s (emulator PutLogEvents, 10,000-event batches, one client): "
        f"**{_fmt(latest['ceiling_events_per_s'])}**; through the counting proxy: "
        f"{_fmt(latest['ceiling_through_proxy_events_per_s'])}."
    )
    soak = systems.get("cloudlog", {}).get("soak")
    if soak:
        lines += [
            "",
            f"cloudlog soak, {soak['seconds']:.0f} s at {soak['rate']:,.0f} lines/s:",
            "",
            "| process | start MB | end MB | peak MB | slope MB/min |",
            "|---|---:|---:|---:|---:|",
        ]
        for process, m in soak["memory"].items():
            lines.append(
                f"| {process} | {_fmt(m['start_mb'], 1)} | {_fmt(m['end_mb'], 1)} | "
                f"{_fmt(m['peak_mb'], 1)} | {m['slope_mb_per_min']:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def _plot_cdfs(report: dict[str, Any], key: str, xlabel: str, path: Path, log: bool) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, result in report["systems"].items():
        values = [v for v in result["details"]["latency"].get(key, []) if v is not None]
        if not values:
            continue
        fractions = (
            [i / 200 for i in range(1, 200)] + [0.995, 0.999]
            if len(values) == 201
            else [(i + 1) / (len(values) + 1) for i in range(len(values))]
        )
        rate = result["details"]["latency"].get("achieved_rate") or 0
        label = f"{name} ({rate:,.0f} lines/s)" if key.startswith("latency") else name
        ax.plot(values, fractions, label=label, color=COLORS.get(name), linewidth=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of lines")
    if log:
        ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_throughput(report: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, result in report["systems"].items():
        series = result["details"]["throughput"].get("series") or []
        if series:
            rate = result["events_per_s"]
            ax.plot(
                [t for t, _ in series],
                [n for _, n in series],
                label=f"{name}: {rate:,.0f} events/s",
                color=COLORS.get(name),
                linewidth=2,
            )
    ax.set_xlabel("seconds since the first log call")
    ax.set_ylabel("lines readable in CloudWatch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bars(latest: dict[str, Any], path: Path) -> None:
    systems = latest["systems"]
    names = list(systems)
    colors = [COLORS.get(n, "grey") for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    panels = [
        ("events_per_s", "events/s end to end (log)", True),
        ("aws_requests_per_1k_events", "AWS requests per 1,000 events (log)", True),
        ("emit_us_p50", "log call inside a request, p50 (µs, log)", True),
    ]
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        values = [systems[n].get(key) or 0 for n in names]
        bars = ax.bar(names, values, color=colors)
        ax.bar_label(bars, labels=[_fmt(v, 1 if v < 100 else 0) for v in values], fontsize=8)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        if key == "events_per_s" and latest.get("ceiling_events_per_s"):
            ceiling = latest["ceiling_events_per_s"]
            ax.axhline(ceiling, color="black", linestyle="--", linewidth=1)
            ax.text(-0.4, ceiling * 1.1, f"ceiling {ceiling:,.0f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_soak(report: dict[str, Any], path: Path) -> bool:
    soak = report["systems"].get("cloudlog", {}).get("details", {}).get("soak")
    if not soak:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for process, trend in soak["memory"].items():
        series = trend["series"]
        ax.plot(
            [t for t, _ in series],
            [mb for _, mb in series],
            label=f"{process} ({trend['slope_mb_per_min']:+.2f} MB/min)",
        )
    ax.set_xlabel(f"seconds at {soak['rate']:,.0f} lines/s")
    ax.set_ylabel("RSS (MB)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_reports(report: dict[str, Any], out: Path) -> list[Path]:
    latest = summary(report)
    paths = [out / "latest.json", out / "details.json", out / "latest.md"]
    paths[0].write_text(json.dumps(latest, indent=2) + "\n")
    paths[1].write_text(json.dumps(_clean(report)) + "\n")
    paths[2].write_text(markdown(latest))
    plots = {
        "emit.png": lambda p: _plot_cdfs(
            report, "emit_us_quantiles", "log call inside a Flask request (µs)", p, log=True
        ),
        "latency.png": lambda p: _plot_cdfs(
            report, "latency_s_quantiles", "seconds from log call to readable", p, log=True
        ),
        "throughput.png": lambda p: _plot_throughput(report, p),
        "summary.png": lambda p: _plot_bars(latest, p),
    }
    for name, plot in plots.items():
        plot(out / name)
        paths.append(out / name)
    if _plot_soak(report, out / "soak_rss.png"):
        paths.append(out / "soak_rss.png")
    return paths
