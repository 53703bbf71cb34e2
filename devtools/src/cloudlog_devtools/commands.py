"""``cloudlog emulator`` and ``cloudlog dev``, added to the ``cloudlog`` command by entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cloudlog_devtools.emulator import DEFAULT_EMULATOR_PORT

DEFAULT_APP_PORT = 5000


@click.command(short_help="Run the embedded AWS endpoint (moto).")
@click.option("--port", default=DEFAULT_EMULATOR_PORT, show_default=True, help="Port on 127.0.0.1.")
def emulator(port: int) -> None:
    """Run the embedded AWS endpoint (moto: SQS + CloudWatch Logs) and create the queues.

    Point the other commands at it with CLOUDLOG_AWS_ENDPOINT_URL=http://127.0.0.1:PORT.
    """
    from cloudlog_core.logging_json import configure_json_logging
    from cloudlog_devtools.emulator import run_emulator

    configure_json_logging("INFO")
    run_emulator(port)


@click.command(short_help="Run the whole pipeline locally with a demo app.")
@click.option("--emulator-port", default=DEFAULT_EMULATOR_PORT, show_default=True)
@click.option("--ingest-port", default=8080, show_default=True)
@click.option("--app-port", default=DEFAULT_APP_PORT, show_default=True)
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    default=Path(".cloudlog-dev"),
    show_default=True,
    help="Children's logs, the dev tenant registry, the journal and dev.lock.",
)
def dev(
    emulator_port: int, ingest_port: int, app_port: int, duration: float | None, log_dir: Path
) -> None:
    """Run the whole pipeline with a demo app and print events read back from CloudWatch.

    Emulator, ingest and worker run as child processes; Ctrl-C (or --duration) stops them all.
    At start it prints what another terminal needs: CLOUDLOG_AWS_ENDPOINT_URL, the dev tenant and
    its key, CLOUDLOG_TENANTS_PATH and a ready `cloudlog tail` command. One instance per
    --log-dir (it holds a lock on <log-dir>/dev.lock); a second one beside it needs its own
    --emulator-port, --ingest-port, --app-port and --log-dir.
    """
    from cloudlog_devtools.dev import run_dev

    sys.exit(
        run_dev(
            emulator_port=emulator_port,
            ingest_port=ingest_port,
            app_port=app_port,
            duration=duration,
            log_dir=log_dir,
        )
    )
