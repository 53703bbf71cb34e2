"""The ``cloudlog`` command line."""

from __future__ import annotations

import contextlib
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from cloudlog_ingest.tenants import TenantStore

# Other distributions add commands here (cloudlog-devtools: `emulator`, `dev`).
COMMANDS_ENTRY_POINT_GROUP = "cloudlog_cli.commands"


class CloudlogGroup(click.Group):
    """Runs every command so that an error the user can fix is one line (cloudlog_cli.errors);
    ``cloudlog --debug ...`` shows the traceback instead."""

    def invoke(self, ctx: click.Context) -> Any:
        from cloudlog_cli.errors import user_error

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = user_error(exc)
            if message is None or ctx.params.get("debug"):
                raise
            raise click.ClickException(message) from None


@click.group(cls=CloudlogGroup)
@click.version_option(package_name="cloudlog-cli")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """cloudlog: Flask logs to AWS CloudWatch Logs through SQS, Celery and an ingest service.

    \b
    Where AWS is: CLOUDLOG_AWS_ENDPOINT_URL (unset: real AWS and its credentials).
    Next to `cloudlog dev` (or `make dev`):
      export CLOUDLOG_AWS_ENDPOINT_URL=http://127.0.0.1:4566
      cloudlog tail local/cloudlog/demo --follow
    """


@cli.command(short_help="Run the ingest service.")
@click.option(
    "--host", default=None, help="Bind address [default: CLOUDLOG_INGEST_HOST or 127.0.0.1]."
)
@click.option(
    "--port", type=int, default=None, help="Port [default: CLOUDLOG_INGEST_PORT or 8080]."
)
def ingest(host: str | None, port: int | None) -> None:
    """Run the ingest service (FastAPI under uvicorn). Logs are JSON lines on stdout."""
    from cloudlog_ingest.serve import serve

    serve(host=host, port=port)


@cli.command(short_help="Run a Celery worker (SQS to ingest).")
@click.option("--concurrency", type=int, default=None, help="Worker threads [default: 4].")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int | None, loglevel: str) -> None:
    """Run a Celery worker that consumes the SQS queue and delivers batches to ingest."""
    from cloudlog_worker.worker import run_worker

    run_worker(concurrency=concurrency, loglevel=loglevel)


@cli.command(short_help="Print events read back from CloudWatch.")
@click.argument("group")
@click.option("--stream", default=None, help="Only this stream.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--raw", is_flag=True, help="Print messages as stored (JSON), not formatted.")
def tail(group: str, stream: str | None, follow: bool, raw: bool) -> None:
    """Print events of GROUP read back from CloudWatch Logs.

    GROUP is the stored name: an app's CLOUDLOG_LOG_GROUP lands under its tenant's prefix
    (`cloudlog dev`: local/), so shop/web is read as local/shop/web. A group that does not
    exist is an error (exit 1) naming similar groups. Reads CLOUDLOG_AWS_ENDPOINT_URL, e.g.
    http://127.0.0.1:4566 next to `cloudlog dev`.
    """
    from cloudlog_cli.tail import GroupNotFound, check_group
    from cloudlog_cli.tail import tail as run_tail
    from cloudlog_core.aws import AwsSettings, make_client

    client = make_client("logs", AwsSettings())
    try:
        check_group(client, group)
    except GroupNotFound as exc:
        raise click.ClickException(str(exc)) from None
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --follow quietly
        run_tail(
            client,
            group,
            stream=stream,
            follow=follow,
            raw=raw,
            emit=click.echo,
        )


@cli.group(short_help="Create, list, revoke and rotate tenants.")
def tenant() -> None:
    """The tenant registry: who may write, where, how fast. The DynamoDB table
    CLOUDLOG_TENANTS_TABLE if set (shared by every ingest replica), else the file
    CLOUDLOG_TENANTS_PATH (one node)."""


def _registry() -> TenantStore:
    """The registry, or a one-line error: a corrupt file is refused, never overwritten; a
    table that does not answer is named with the reason."""
    from cloudlog_ingest.tenant_table import open_tenant_store
    from cloudlog_ingest.tenants import RegistryCorrupt, RegistryUnavailable

    try:
        return open_tenant_store()
    except (RegistryCorrupt, RegistryUnavailable) as exc:
        raise click.ClickException(_refusal(exc)) from None


def _refusal(exc: Exception) -> str:
    from cloudlog_ingest.tenants import RegistryCorrupt

    if isinstance(exc, RegistryCorrupt):
        return f"{exc}; not changed: restore it from a backup or fix it by hand"
    return str(exc)


@tenant.command("create")
@click.argument("name")
@click.option("--prefix", default=None, help="Log group prefix [default: NAME/].")
@click.option("--rate", type=float, default=None, help="Events per second [default: 2000].")
@click.option("--burst", type=int, default=None, help="Events at once [default: 20000].")
@click.option("--retention-days", type=int, default=None, help="Retention of groups it creates.")
@click.option("--kms-key-id", default=None, help="KMS key of groups it creates.")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE tag of groups it creates.")
def tenant_create(
    name: str,
    prefix: str | None,
    rate: float | None,
    burst: int | None,
    retention_days: int | None,
    kms_key_id: str | None,
    tags: tuple[str, ...],
) -> None:
    """Add a tenant and print its API key, once: only its SHA-256 is stored."""
    import json

    from cloudlog_ingest.tenants import DEFAULT_BURST, DEFAULT_RATE, TenantError

    parsed_tags = {}
    for tag in tags:
        key, separator, value = tag.partition("=")
        if not separator or not key:
            raise click.BadParameter(f"{tag!r} is not KEY=VALUE", param_hint="--tag")
        parsed_tags[key] = value
    registry = _registry()
    try:
        created, api_key = registry.create(
            name,
            log_group_prefix=prefix,
            rate=DEFAULT_RATE if rate is None else rate,
            burst=DEFAULT_BURST if burst is None else burst,
            retention_days=retention_days,
            kms_key_id=kms_key_id,
            tags=parsed_tags,
        )
    except TenantError as exc:  # also RegistryCorrupt, RegistryLocked: nothing was written
        raise click.ClickException(_refusal(exc)) from None
    click.echo(json.dumps({**created.public(), "api_key": api_key}))
    click.echo("Keep the api_key now: it is not stored and cannot be shown again.", err=True)


@tenant.command("list")
def tenant_list() -> None:
    """One JSON line per tenant (no keys, no key hashes)."""
    import json

    for entry in _registry().tenants():
        click.echo(json.dumps(entry.public()))


@tenant.command("revoke")
@click.argument("name")
def tenant_revoke(name: str) -> None:
    """Revoke a tenant's key; ingest refuses it within CLOUDLOG_TENANTS_RELOAD_SECONDS."""
    import json

    from cloudlog_ingest.tenants import TenantError

    try:
        revoked = _registry().revoke(name)
    except TenantError as exc:  # also RegistryCorrupt, RegistryLocked: nothing was written
        raise click.ClickException(_refusal(exc)) from None
    click.echo(json.dumps(revoked.public()))


@tenant.command("rotate")
@click.argument("name")
def tenant_rotate(name: str) -> None:
    """Give a tenant a new API key and print it, once; the old key is refused within
    CLOUDLOG_TENANTS_RELOAD_SECONDS."""
    import json

    from cloudlog_ingest.tenants import TenantError

    try:
        rotated, api_key = _registry().rotate(name)
    except TenantError as exc:  # also RegistryCorrupt, RegistryLocked: nothing was written
        raise click.ClickException(_refusal(exc)) from None
    click.echo(json.dumps({**rotated.public(), "api_key": api_key}))
    click.echo("Keep the api_key now: it is not stored and cannot be shown again.", err=True)


@cli.group(short_help="List and replay dead-lettered batches.")
def dlq() -> None:
    """The dead-letter queue: batches the worker gave up on."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, help="At most this many messages.")
def dlq_list(limit: int) -> None:
    """Print one JSON object per dead-lettered batch (they stay in the queue)."""
    import json

    from cloudlog_cli.dlq import list_dead_letters
    from cloudlog_core.aws import AwsSettings, make_client
    from cloudlog_wire.broker import BrokerSettings

    sqs = make_client("sqs", AwsSettings())
    for letter in list_dead_letters(sqs, BrokerSettings(), limit):
        click.echo(json.dumps(letter.as_dict()))


@dlq.command("replay")
@click.option("--limit", default=1000, show_default=True, help="At most this many messages.")
@click.option(
    "--key",
    "key_mode",
    type=click.Choice(["keep", "worker"]),
    default="keep",
    show_default=True,
    help="Which key replayed batches carry: keep, each its own (a batch is only ever written as "
    "the tenant that sent it); worker drops them, so the worker's CLOUDLOG_API_KEY applies: "
    "only for batches of the worker's own tenant.",
)
def dlq_replay(limit: int, key_mode: str) -> None:
    """Send dead-lettered batches back to the queue with a fresh retry budget."""
    import json

    from cloudlog_cli.dlq import replay
    from cloudlog_core.aws import AwsSettings, make_client
    from cloudlog_wire.broker import BrokerSettings

    moved = replay(make_client("sqs", AwsSettings()), BrokerSettings(), limit, key_mode)
    click.echo(json.dumps({"replayed": moved}))


@cli.command(short_help="Backfill a file into one log stream.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option(
    "--group",
    required=True,
    help="Log group (created if missing): the stored name as it is, e.g. local/shop/import; "
    "with --tenant, relative to that tenant's prefix.",
)
@click.option(
    "--tenant",
    "tenant_name",
    default=None,
    help="Put --group under this tenant's prefix from the registry (CLOUDLOG_TENANTS_PATH), "
    "as ingest does for an app: --tenant local --group shop/import writes local/shop/import.",
)
@click.option("--stream", required=True, help="Log stream (created if missing).")
@click.option(
    "--max-event-bytes",
    type=click.IntRange(1024, 1_048_576),
    default=None,
    help="Largest event before it is split into parts [default: CLOUDLOG_WRITER_MAX_EVENT_BYTES "
    "or 1048576; 262144 for endpoints still holding 256 KB].",
)
def push(
    file: Path, group: str, tenant_name: str | None, stream: str, max_event_bytes: int | None
) -> None:
    """Backfill FILE into one log stream, through the writer, for importing old logs.

    Writes straight to CloudWatch Logs (CLOUDLOG_AWS_ENDPOINT_URL and AWS credentials; no
    ingest, no tenant key). --group is the stored name, the one `cloudlog tail` takes; give
    --tenant NAME to name it relative to a tenant's prefix, as an app does. The report names
    the group written to.

    \b
    Each line is one event:
      {"timestamp": 1718000000000, "message": "..."}   JSON object; timestamp in ms since the
                                                       epoch or ISO-8601 (UTC if no offset)
      anything else                                    plain text, stamped with the current time
    A non-string "message" is stored as compact JSON; other keys are ignored.
    Blank lines (empty or whitespace only) are skipped and counted ("blank"), not rejected.
    A line that cannot become an event (bad JSON, no usable timestamp or message, not UTF-8,
    over 16 MiB), and an event CloudWatch refuses (too_old, too_new, ...), is reported and the
    push goes on. Event ids come from the line's number and bytes: the same file gives the
    same ids. The file is read in chunks of 10,000 events, never whole.

    \b
    Prints one JSON object on stdout when done:
      {"group": G, "stream": S, "written": N,
       "rejected": [{"line": L, "reason": "...", "detail": "..."}], "blank": B, "lines": T}
    Lines are numbered from 1. Progress goes to stderr when it is a terminal.
    Exit status 0 when every line was written, rejected or blank; 1 when events could be
    neither written nor rejected (endpoint unreachable, access denied: the JSON then adds
    "failed" and "not_attempted_from_line"); 2 for bad arguments or a missing file.
    """
    from cloudlog_cli.push import run_push
    from cloudlog_core.names import check_log_group, check_log_stream

    if tenant_name is not None:
        group = _tenant_group(tenant_name, group)
    for check, name, param in (
        (check_log_group, group, "--group"),
        (check_log_stream, stream, "--stream"),
    ):
        try:
            check(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=param) from None
    sys.exit(run_push(file, group, stream, max_event_bytes=max_event_bytes))


def _tenant_group(tenant_name: str, group: str) -> str:
    """``group`` under the tenant's prefix, checked as ingest checks an app's group."""
    from cloudlog_ingest.confinement import Refusal, resolve_group

    registry = _registry()
    found = registry.get(tenant_name)
    if found is None:
        raise click.BadParameter(
            f"no tenant {tenant_name!r} in the registry {registry.source} "
            "(CLOUDLOG_TENANTS_TABLE or CLOUDLOG_TENANTS_PATH; see `cloudlog tenant list`)",
            param_hint="--tenant",
        )
    try:
        return resolve_group(found, group, field="--group")
    except Refusal as exc:
        raise click.BadParameter(exc.reason, param_hint="--group") from None


def _add_plugin_commands() -> None:
    for entry_point in entry_points(group=COMMANDS_ENTRY_POINT_GROUP):
        command = entry_point.load()
        if isinstance(command, click.Command) and command.name not in cli.commands:
            cli.add_command(command)


def main() -> None:
    _add_plugin_commands()
    cli()
