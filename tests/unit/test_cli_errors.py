"""``cloudlog``: errors a user can cause are one line saying what to do; ``--debug`` shows the
traceback; the top-level help fits and names the endpoint variable; `tail` of a missing group."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from click.testing import CliRunner
from moto import mock_aws

from cloudlog_cli.cli import _add_plugin_commands, cli
from cloudlog_cli.errors import user_error


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("CLOUDLOG_AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _add_plugin_commands()
    return CliRunner()


@pytest.mark.parametrize("args", [["tail", "shop/web"], ["dlq", "list"]])
def test_no_credentials_is_one_line_naming_the_endpoint_variable(
    runner: CliRunner, args: list[str]
) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: no AWS credentials")
    assert "CLOUDLOG_AWS_ENDPOINT_URL=http://127.0.0.1:4566" in line


def test_debug_shows_the_traceback(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--debug", "tail", "shop/web"])
    assert isinstance(result.exception, NoCredentialsError)


def test_endpoint_down_is_one_line(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDLOG_AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    result = runner.invoke(cli, ["tail", "shop/web"])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert "cannot reach the AWS endpoint http://127.0.0.1:9" in line
    assert "cloudlog dev" in line


def client_error(code: str, message: str = "no") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "FilterLogEvents")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("UnrecognizedClientException"), "AWS refused the credentials"),
        (client_error("AccessDeniedException"), "AWS refused the credentials"),
        (client_error("AWS.SimpleQueueService.NonExistentQueue"), "SQS queue does not exist"),
        (client_error("ResourceNotFoundException", "gone"), "not found at"),
        (client_error("ThrottlingException", "slow down"), "AWS answered ThrottlingException"),
        (EndpointConnectionError(endpoint_url="http://x:1"), "cannot reach the AWS endpoint"),
        (NoCredentialsError(), "no AWS credentials"),
    ],
)
def test_user_errors_map_to_one_line(exc: Exception, expected: str) -> None:
    message = user_error(exc)
    assert message is not None and expected in message and "\n" not in message


def test_a_bug_is_not_disguised() -> None:
    assert user_error(ZeroDivisionError()) is None


@pytest.fixture
def logs(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("logs", region_name="us-east-1")
        for group in ("local/cloudlog/demo", "local/shop/web", "other/thing"):
            client.create_log_group(logGroupName=group)
        yield client


@pytest.mark.parametrize("follow", [[], ["--follow"]])
def test_tail_of_a_missing_group_names_similar_ones(
    runner: CliRunner, logs: Any, follow: list[str]
) -> None:
    result = runner.invoke(cli, ["tail", "cloudlog/demo", *follow])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "log group 'cloudlog/demo' does not exist" in line
    assert "did you mean local/cloudlog/demo?" in line


def test_tail_of_an_unknown_group_without_similar_ones(runner: CliRunner, logs: Any) -> None:
    result = runner.invoke(cli, ["tail", "nothing/like/it"])
    assert result.exit_code == 1
    assert "did you mean" not in result.output and "does not exist" in result.output


def test_tail_of_an_existing_group(runner: CliRunner, logs: Any) -> None:
    logs.create_log_stream(logGroupName="local/shop/web", logStreamName="web")
    logs.put_log_events(
        logGroupName="local/shop/web",
        logStreamName="web",
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "hello"}],
    )
    result = runner.invoke(cli, ["tail", "local/shop/web"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith(" web hello\n")


def test_top_level_help_fits_and_names_the_endpoint_variable(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    assert "CLOUDLOG_AWS_ENDPOINT_URL" in result.output
    commands = result.output.split("Commands:", 1)[1].strip().splitlines()
    assert {line.split()[0] for line in commands} >= {"dev", "emulator", "tail", "push", "dlq"}
    assert not any(line.rstrip().endswith("...") for line in commands), commands
    assert "--debug" in result.output
