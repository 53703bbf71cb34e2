"""What every part of the benchmark shares: the numbered line, percentiles, the progress line."""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# Every line has the same length, so a stream's storedBytes divided by one stored line's
# length counts its lines cheaply. 120 characters: a typical application log line.
LINE_CHARS = 120
_LINE_RE = re.compile(r"(seq|wup)=(\d{10}) t=(\d{10}\.\d{6})")


def make_line(seq: int, emitted_at: float, *, warmup: bool = False) -> str:
    """``bench seq=0000000042 t=1732437000.123456 xxx...``: the number and the emit time."""
    head = f"bench {'wup' if warmup else 'seq'}={seq:010d} t={emitted_at:.6f} "
    return head + "x" * (LINE_CHARS - len(head))


def parse_line(stored: str) -> tuple[int, float] | None:
    """(seq, emit time) of a measured line inside whatever the system stored; None otherwise
    (warm-up lines, anything else)."""
    match = _LINE_RE.search(stored)
    if match is None or match.group(1) != "seq":
        return None
    return int(match.group(2)), float(match.group(3))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (need not be sorted); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


class Progress:
    """One status line, rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._started = time.monotonic()
        self._last_plain = 0.0
        self._width = 0

    def _stamp(self) -> str:
        elapsed = int(time.monotonic() - self._started)
        return f"[{elapsed // 60:2d}:{elapsed % 60:02d}]"

    def status(self, text: str) -> None:
        line = f"{self._stamp()} {text}"
        if self._tty:
            padded = line.ljust(self._width)
            self._width = len(line)
            sys.stderr.write("\r" + padded[:160])
            sys.stderr.flush()
        elif time.monotonic() - self._last_plain >= 5.0:
            self._last_plain = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        line = f"{self._stamp()} {text}"
        if self._tty:
            sys.stderr.write("\r" + line.ljust(self._width)[:160] + "\n")
            self._width = 0
        else:
            print(line, file=sys.stderr)
        sys.stderr.flush()
