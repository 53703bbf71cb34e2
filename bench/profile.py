"""py-spy on the running processes during a phase, and a text summary of where time went.

py-spy attaches by pid without stopping the target (``--nonblocking``) and writes collapsed
stacks (``--format raw``); ``summarize`` turns them into the functions that used the most time,
by their own time and including what they call.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

from cloudlog_devtools.processes import ManagedProcess


def py_spy_path() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_py_spy(
    name: str, pid: int, out: Path, duration: float, log_dir: Path
) -> ManagedProcess | None:
    binary = py_spy_path()
    if binary is None:
        return None
    command = [binary, "record", "--pid", str(pid), "--rate", "100", "--nonblocking"]
    command += [
        "--subprocesses",
        "--duration",
        str(int(duration)),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return ManagedProcess(f"py-spy-{name}", command, log_dir=log_dir).start()


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{function} ({short})"


def summarize(raw: Path, top: int = 25) -> str:
    """The functions with the most samples: self time and total time (including callees)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";") if frame]
        # With --subprocesses the first frame names the process.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    lines = [f"{raw.name}: {samples} samples at 100 Hz (on CPU; py-spy leaves idle threads out)"]
    lines.append("  own time:")
    lines += [f"    {100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  total time (with callees):")
    lines += [f"    {100 * n / samples:5.1f}%  {name}" for name, n in total.most_common(top)]
    return "\n".join(lines)
