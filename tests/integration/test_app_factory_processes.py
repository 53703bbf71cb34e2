"""An app-factory test suite (24 tests, a new app per test, ``CloudLog(app)`` in the factory) run
as a real process: how long the process takes to exit after its last test, and what arrives.

Issue 19: without these changes such a suite took 92 s to exit with nothing configured and
113 s with an unreachable endpoint, each app waiting its own shutdown timeout in turn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import free_port
from tests.conftest import read_stream, wait_for

pytestmark = pytest.mark.integration

APPS = 24
LINES_PER_APP = 3

SUITE_CONFTEST = textwrap.dedent(
    """
    import atexit
    import json
    import os
    import time
    from pathlib import Path

    # Registered before cloudlog registers its own exit hook, so (last in, first out) it runs
    # after it: the stamp is when cloudlog's exit work is over, before the interpreter tears
    # down, which on a loaded machine can take seconds of its own.
    atexit.register(lambda: Path(os.environ["SUITE_EXIT_FILE"]).write_text(repr(time.time())))

    import pytest
    from flask import Flask

    from flask_cloudlog import CloudLog


    def create_app(config):
        app = Flask("factory_app")
        app.config.update(config)
        CloudLog(app)

        @app.get("/work/<int:n>")
        def work(n):
            for line in range(int(os.environ["SUITE_LINES"])):
                app.logger.info("%s app %d line %d", os.environ["SUITE_TOKEN"], n, line)
            return "ok"

        return app


    @pytest.fixture
    def app():
        return create_app(json.loads(os.environ["SUITE_CONFIG"]))


    @pytest.fixture(scope="session", autouse=True)
    def stamp_the_end():
        yield
        Path(os.environ["SUITE_DONE_FILE"]).write_text(repr(time.time()))
    """
)

SUITE_TESTS = textwrap.dedent(
    """
    import os

    import pytest


    @pytest.mark.parametrize("n", range(int(os.environ["SUITE_APPS"])))
    def test_work(app, n):
        assert app.test_client().get(f"/work/{n}").status_code == 200
        state = app.extensions["cloudlog"]
        if not state.delivering:
            token = os.environ["SUITE_TOKEN"]
            assert [e["message"] for e in state.captured][-1].startswith(f"{token} app {n} ")
    """
)


def run_suite(tmp_path: Path, config: dict[str, Any]) -> tuple[float, float, str, str]:
    """Runs the suite; returns (how long exit waited after the last test, until cloudlog's
    exit work was over; the whole run; token; stderr)."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(SUITE_CONFTEST)
    (suite / "test_factory.py").write_text(SUITE_TESTS)
    (suite / "pytest.ini").write_text("[pytest]\n")
    done_file = tmp_path / "done"
    exit_file = tmp_path / "exit"
    token = f"tok-{uuid.uuid4().hex[:8]}"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CLOUDLOG_", "PYTEST_", "AWS_"))
    }
    env.update(
        SUITE_CONFIG=json.dumps(config),
        SUITE_DONE_FILE=str(done_file),
        SUITE_EXIT_FILE=str(exit_file),
        SUITE_TOKEN=token,
        SUITE_APPS=str(APPS),
        SUITE_LINES=str(LINES_PER_APP),
    )
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "."],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ended = time.time()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{APPS} passed" in result.stdout, result.stdout
    last_test_done = float(done_file.read_text())
    exit_work_done = float(exit_file.read_text())
    print(f"process gone {ended - last_test_done:.2f} s after its last test")
    return exit_work_done - last_test_done, ended - started, token, result.stderr


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    return free_port()


def test_under_testing_with_nothing_configured_the_process_ends_at_once(tmp_path: Path) -> None:
    lag, whole, _, stderr = run_suite(tmp_path, {"TESTING": True})
    print(f"nothing configured, TESTING: exit {lag:.2f} s after the last test, run {whole:.2f} s")
    assert lag < 1.0
    assert "gave up" not in stderr


def test_an_unreachable_endpoint_costs_at_most_the_shutdown_timeout_once(tmp_path: Path) -> None:
    shutdown_timeout = 2.0
    config = {
        "TESTING": True,
        "CLOUDLOG_ENABLED": True,
        "CLOUDLOG_AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "CLOUDLOG_SHUTDOWN_TIMEOUT": shutdown_timeout,
        "CLOUDLOG_FLUSH_INTERVAL": 0.05,
    }
    lag, whole, _, stderr = run_suite(tmp_path, config)
    print(f"unreachable endpoint: exit {lag:.2f} s after the last test, run {whole:.2f} s")
    assert lag < shutdown_timeout + 1.0
    gave_up = [line for line in stderr.splitlines() if "gave up on" in line]
    assert len(gave_up) == 1, stderr[-3000:]
    assert f"gave up on {APPS * LINES_PER_APP} events at shutdown" in gave_up[0]


def test_every_line_of_every_app_arrives_through_the_pipeline(
    tmp_path: Path, pipeline: LocalPipeline, logs_client: Any, unique_group: str
) -> None:
    config = {
        "TESTING": True,  # with an endpoint given, delivery is on under test
        "CLOUDLOG_AWS_ENDPOINT_URL": pipeline.emulator_url,
        "CLOUDLOG_LOG_GROUP": unique_group,
        "CLOUDLOG_LOG_STREAM": "factory",
        "CLOUDLOG_FLUSH_INTERVAL": 0.05,
        "CLOUDLOG_SHUTDOWN_TIMEOUT": 10.0,
    }
    lag, whole, token, stderr = run_suite(tmp_path, config)
    print(f"pipeline: exit {lag:.2f} s after the last test, run {whole:.2f} s")
    assert "gave up" not in stderr, stderr[-3000:]
    expected = {
        f"{token} app {n} line {line}" for n in range(APPS) for line in range(LINES_PER_APP)
    }
    group = pipeline.stored_group(unique_group)

    def arrived() -> list[str]:
        messages = [
            json.loads(e["message"])["message"] for e in read_stream(logs_client, group, "factory")
        ]
        return messages if set(messages) >= expected else []

    messages = wait_for(arrived, timeout=60, what=f"{len(expected)} lines in CloudWatch")
    assert sorted(messages) == sorted(expected), "each line exactly once"
    assert lag < 10.0 + 1.0
