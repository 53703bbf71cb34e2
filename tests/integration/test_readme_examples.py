"""The README's examples, run as written next to a real ``cloudlog dev`` (free ports, its own
log folder): only the default ports and the ``.venv/bin/`` prefix are replaced by this run's.

Blocks are found by the ``<!-- tested: tests/integration/test_readme_examples.py::NAME -->``
marker before them (tests/unit/test_readme.py checks every block is tested or illustrative).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.processes import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
VENV_BIN = str(Path(sys.executable).parent) + "/"
DEFAULT_ENDPOINT = "http://127.0.0.1:4566"


def readme_blocks_of(name: str) -> list[tuple[str, str]]:
    """(language, body) of the blocks marked as run by the test ``name``, in README order."""
    marker = f"<!-- tested: tests/integration/test_readme_examples.py::{name} -->"
    found = re.findall(re.escape(marker) + r"\s*```(\w+)\n(.*?)^```", README, re.M | re.S)
    assert found, f"no README block is marked {marker}"
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """A user's shell: no CLOUDLOG_* and no AWS credentials (the README says none are needed)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLOUDLOG_", "AWS_")) and key != "PYTHONPATH"
    }
    env.update(AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull, **extra)
    return env


class RunningDev:
    """``cloudlog dev`` as a child process, its stdout collected line by line."""

    def __init__(self, log_dir: Path) -> None:
        self.emulator_port, self.ingest_port, self.app_port = free_port(), free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.emulator_port}"
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloudlog_cli",
                "dev",
                f"--emulator-port={self.emulator_port}",
                f"--ingest-port={self.ingest_port}",
                f"--app-port={self.app_port}",
                f"--log-dir={log_dir}",
                "--duration=600",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            assert self.process.poll() is None, "\n".join(self.lines)
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDev]:
    running = RunningDev(tmp_path_factory.mktemp("dev") / "cloudlog-dev")
    try:
        running.wait_for(r"^reading back from CloudWatch Logs group ")
        yield running
    finally:
        assert running.stop() == 0, "\n".join(running.lines)


def as_run_here(text: str, dev: RunningDev) -> str:
    return text.replace(DEFAULT_ENDPOINT, dev.endpoint).replace(".venv/bin/", VENV_BIN)


def test_flask_section_next_to_cloudlog_dev(dev: RunningDev, tmp_path: Path) -> None:
    """ "Using it in a Flask app": shop.py and the shell lines, exactly as written."""
    (python_lang, shop), (sh_lang, shell) = readme_blocks_of(
        "test_flask_section_next_to_cloudlog_dev"
    )
    assert (python_lang, sh_lang) == ("python", "sh")
    (tmp_path / "shop.py").write_text(shop)
    lines = [line for line in as_run_here(shell, dev).splitlines() if line.strip()]
    tail_line = lines[-1]
    assert "cloudlog tail " in tail_line and "--follow" not in tail_line.split("#")[0]
    env = clean_env()
    started = time.monotonic()
    setup = subprocess.run(
        ["bash", "-euc", "\n".join(lines[:-1])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "Unable to locate credentials" not in setup.stderr
    assert time.monotonic() - started < 15, "the app waited at exit: it could not publish"
    deadline = time.monotonic() + 60
    while True:  # the worker delivers within a second or two
        tail = subprocess.run(
            ["bash", "-euc", "\n".join([*lines[:1], tail_line])],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "checkout for order-17" in tail.stdout and "stock low" in tail.stdout:
            break
        assert time.monotonic() < deadline, tail.stdout + tail.stderr
        time.sleep(1)
    assert re.search(r" INFO +checkout for order-17 .*total=12\.5", tail.stdout), tail.stdout
    assert re.search(r" WARNING +stock low .*sku=\"A-17\"", tail.stdout), tail.stdout

    # The README's sample of what is stored: the same keys, level and logger as the real events.
    group = re.search(r"cloudlog tail (\S+)", tail_line)
    assert group is not None
    logs = make_client("logs", AwsSettings(aws_endpoint_url=dev.endpoint))
    stored = {
        document["message"]: document
        for event in logs.filter_log_events(logGroupName=group.group(1))["events"]
        for document in [json.loads(event["message"])]
    }
    for sample in readme_samples():
        real = stored[sample["message"]]
        assert set(real) == set(sample), (sample, real)
        assert set(real["fields"]) == set(sample["fields"]), (sample, real)
        assert (real["level"], real.get("logger")) == (sample["level"], sample.get("logger"))


def readme_samples() -> list[dict[str, Any]]:
    section = README.split("What lands in CloudWatch is one JSON object per event", 1)[1]
    body = re.search(r"```json\n(.*?)^```", section, re.M | re.S)
    assert body is not None
    decoder, text, samples = json.JSONDecoder(), body.group(1), []
    position = 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        sample, position = decoder.raw_decode(text, position)
        samples.append(sample)
    assert len(samples) == 2
    return samples


def test_dev_tail_command_reads_the_demo(dev: RunningDev) -> None:
    """The README's ``cloudlog tail ... --follow`` for `make dev`'s demo prints its lines."""
    ((language, body),) = readme_blocks_of("test_dev_tail_command_reads_the_demo")
    assert language == "sh"
    follow = subprocess.Popen(
        ["bash", "-euc", as_run_here(body.strip(), dev)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: stopped below by that group's id
    )
    try:
        assert follow.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = follow.stdout.readline()
            seen.append(line)
            if re.search(r" web INFO +order \d+ paid ", line):
                break
            assert line, "".join(seen)
        else:
            raise AssertionError("".join(seen))
    finally:
        os.killpg(follow.pid, signal.SIGINT)  # bash and the cloudlog it started
        follow.wait(timeout=20)


def test_tenants_block_runs(tmp_path: Path) -> None:
    """The Tenants section's commands, against a registry of the test's own."""
    ((language, body),) = readme_blocks_of("test_tenants_block_runs")
    assert language == "sh"
    env = clean_env(
        PATH=VENV_BIN + os.pathsep + os.environ["PATH"],
        CLOUDLOG_TENANTS_PATH=str(tmp_path / "tenants.json"),
    )
    result = subprocess.run(
        ["bash", "-euc", body], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    created, listed, revoked = (json.loads(line) for line in result.stdout.splitlines())
    assert created["name"] == "acme" and created["api_key"].startswith("cl_")
    assert created["log_group_prefix"] == "acme/" and listed["name"] == "acme"
    assert "api_key" not in listed and revoked["name"] == "acme"
