"""infra/aws/cloudlog.yaml: cfn-lint clean, and every IAM policy exactly as narrow as intended."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

from cloudlog_wire.broker import DEFAULT_DEAD_LETTER_QUEUE_NAME, DEFAULT_QUEUE_NAME, BrokerSettings

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "aws" / "cloudlog.yaml"

QUEUE_ARN = {"Fn::GetAtt": ["Queue", "Arn"]}
LOG_GROUP_ARN = (
    "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:${TenantLogGroupPrefix}*"
)
DEAD_LETTER_QUEUE_ARN = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
TENANTS_TABLE_ARN = {"Fn::GetAtt": ["TenantsTable", "Arn"]}
IDEMPOTENCY_TABLE_ARN = {"Fn::GetAtt": ["IdempotencyTable", "Arn"]}
# policy resource -> its statements, each (exact actions, exact resources)
EXPECTED_POLICIES: dict[str, list[tuple[set[str], list[Any]]]] = {
    "AppPublishPolicy": [({"sqs:SendMessage", "sqs:GetQueueUrl"}, [QUEUE_ARN])],
    "WorkerConsumePolicy": [
        (
            {
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
            },
            [QUEUE_ARN],
        ),
        # the worker dead-letters a refused batch itself, with its cause (cloudlog_worker.tasks)
        ({"sqs:SendMessage", "sqs:GetQueueUrl"}, [DEAD_LETTER_QUEUE_ARN]),
    ],
    "IngestWritePolicy": [
        (
            {
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "logs:PutRetentionPolicy",
                "logs:TagResource",
                "logs:TagLogGroup",
                "logs:GetLogEvents",  # crash recovery reads back (cloudlog_ingest/journal.py)
            },
            [{"Fn::Sub": LOG_GROUP_ARN}, {"Fn::Sub": LOG_GROUP_ARN + ":log-stream:*"}],
        )
    ],
    # the tenant table: ingest only reads it; writes are the operators' (cloudlog tenant ...)
    "IngestTenantsReadPolicy": [
        ({"dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"}, [TENANTS_TABLE_ARN])
    ],
    # batch claims and done marks (cloudlog_ingest/idempotency.py)
    "IngestIdempotencyPolicy": [
        (
            {"dynamodb:PutItem", "dynamodb:BatchWriteItem", "dynamodb:DeleteItem"},
            [IDEMPOTENCY_TABLE_ARN],
        )
    ],
    "TenantAdminPolicy": [
        (
            {
                "dynamodb:GetItem",
                "dynamodb:Scan",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
            },
            [TENANTS_TABLE_ARN],
        )
    ],
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode(str(TEMPLATE))
    assert not problems, [str(problem) for problem in problems]
    assert isinstance(decoded, dict)
    return decoded


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def plain(value: Any) -> Any:
    """cfn-lint's decoded nodes as plain dicts, lists and strings, for exact comparison."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    return value


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def test_cfn_lint_reports_nothing_not_even_informational() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(include_checks=["I"]))
    assert [str(match) for match in matches] == []


def test_parameters_and_their_defaults_match_the_application(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert set(parameters) == {
        "QueueName",
        "TenantLogGroupPrefix",
        "VisibilityTimeout",
        "MaxReceiveCount",
        "MessageRetention",
    }
    broker = BrokerSettings()
    assert parameters["QueueName"]["Default"] == DEFAULT_QUEUE_NAME
    assert f"{DEFAULT_QUEUE_NAME}-dlq" == DEFAULT_DEAD_LETTER_QUEUE_NAME
    assert parameters["VisibilityTimeout"]["Default"] == broker.visibility_timeout == 30
    assert parameters["MaxReceiveCount"]["Default"] == broker.max_receive_count == 5
    assert parameters["TenantLogGroupPrefix"]["Default"] == "cloudlog/"
    assert 60 <= parameters["MessageRetention"]["Default"] <= 1_209_600


@pytest.mark.parametrize(
    ("prefix", "allowed"),
    [("cloudlog/", True), ("acme_tenants/", True), ("aws/lambda/", False), ("bad prefix", False)],
)
def test_tenant_prefix_pattern(template: dict[str, Any], prefix: str, allowed: bool) -> None:
    pattern = template["Parameters"]["TenantLogGroupPrefix"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, prefix)) is allowed


def test_queue_dead_letters_into_its_own_dlq(template: dict[str, Any]) -> None:
    queues = resources_of_type(template, "AWS::SQS::Queue")
    assert set(queues) == {"Queue", "DeadLetterQueue"}
    queue = plain(queues["Queue"]["Properties"])
    assert queue["QueueName"] == {"Ref": "QueueName"}
    assert queue["VisibilityTimeout"] == {"Ref": "VisibilityTimeout"}
    assert queue["MessageRetentionPeriod"] == {"Ref": "MessageRetention"}
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    dlq = plain(queues["DeadLetterQueue"]["Properties"])
    assert dlq["QueueName"] == {"Fn::Sub": "${QueueName}-dlq"}
    assert dlq["MessageRetentionPeriod"] == 1_209_600
    assert dlq["RedriveAllowPolicy"]["redrivePermission"] == "byQueue"
    for resource in queues.values():
        assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"


def test_the_tenant_table_is_retained_encrypted_and_recoverable(
    template: dict[str, Any],
) -> None:
    tables = resources_of_type(template, "AWS::DynamoDB::Table")
    assert set(tables) == {"TenantsTable", "IdempotencyTable"}
    table = tables["TenantsTable"]
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    properties = plain(table["Properties"])
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert properties["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"] == {"SSEEnabled": True}
    assert properties["DeletionProtectionEnabled"] is True
    assert "GlobalSecondaryIndexes" not in properties
    outputs = plain(template["Outputs"])
    assert outputs["TenantsTableName"]["Value"] == {"Ref": "TenantsTable"}


def test_the_idempotency_table_expires_its_records(template: dict[str, Any]) -> None:
    table = resources_of_type(template, "AWS::DynamoDB::Table")["IdempotencyTable"]
    properties = plain(table["Properties"])
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert properties["SSESpecification"] == {"SSEEnabled": True}
    outputs = plain(template["Outputs"])
    assert outputs["IdempotencyTableName"]["Value"] == {"Ref": "IdempotencyTable"}


def test_only_the_expected_managed_policies_grant_anything(template: dict[str, Any]) -> None:
    iam = {
        name: resource["Type"]
        for name, resource in template["Resources"].items()
        if resource["Type"].startswith("AWS::IAM::")
    }
    assert iam == dict.fromkeys(EXPECTED_POLICIES, "AWS::IAM::ManagedPolicy")
    # The queue policy only denies (plain http); it allows nothing.
    for resource in resources_of_type(template, "AWS::SQS::QueuePolicy").values():
        statements = resource["Properties"]["PolicyDocument"]["Statement"]
        assert {statement["Effect"] for statement in statements} == {"Deny"}


@pytest.mark.parametrize("policy", sorted(EXPECTED_POLICIES))
def test_policy_has_exactly_its_actions_on_exactly_its_resources(
    template: dict[str, Any], policy: str
) -> None:
    document = template["Resources"][policy]["Properties"]["PolicyDocument"]
    found = []
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, "no NotAction etc."
        statement_actions = [str(action) for action in as_list(statement["Action"])]
        assert all("*" not in action and "?" not in action for action in statement_actions)
        resources = plain(as_list(statement["Resource"]))
        assert "*" not in resources
        found.append((set(statement_actions), resources))
    assert found == EXPECTED_POLICIES[policy]


def iam_match(pattern: str, arn: str) -> bool:
    """IAM resource matching: ``*`` is any run of characters (``:`` included), ``?`` one."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, arn) is not None


def substituted(text: str, prefix: str) -> str:
    values = {
        "AWS::Partition": "aws",
        "AWS::Region": "eu-west-1",
        "AWS::AccountId": "123456789012",
        "TenantLogGroupPrefix": prefix,
    }
    return re.sub(r"\$\{([^}]+)\}", lambda match: values[match.group(1)], text)


@pytest.mark.parametrize(
    ("arn", "allowed"),
    [
        ("arn:aws:logs:eu-west-1:123456789012:log-group:cloudlog/acme/web", True),
        ("arn:aws:logs:eu-west-1:123456789012:log-group:cloudlog/acme/web:*", True),
        ("arn:aws:logs:eu-west-1:123456789012:log-group:cloudlog/acme:log-stream:web-1", True),
        ("arn:aws:logs:eu-west-1:123456789012:log-group:other/acme", False),
        ("arn:aws:logs:eu-west-1:123456789012:log-group:aws/lambda/x", False),
        ("arn:aws:logs:eu-west-1:123456789012:log-group:cloudlo", False),
        ("arn:aws:logs:us-east-1:123456789012:log-group:cloudlog/acme", False),
        ("arn:aws:logs:eu-west-1:999999999999:log-group:cloudlog/acme", False),
    ],
)
def test_ingest_reaches_only_log_groups_under_the_prefix(
    template: dict[str, Any], arn: str, allowed: bool
) -> None:
    statement = template["Resources"]["IngestWritePolicy"]["Properties"]["PolicyDocument"][
        "Statement"
    ][0]
    patterns = [substituted(resource["Fn::Sub"], "cloudlog/") for resource in statement["Resource"]]
    assert any(iam_match(pattern, arn) for pattern in patterns) is allowed


def test_outputs_name_the_queues_and_every_policy(template: dict[str, Any]) -> None:
    outputs = plain(template["Outputs"])
    assert outputs["QueueUrl"]["Value"] == {"Ref": "Queue"}
    assert outputs["QueueArn"]["Value"] == QUEUE_ARN
    assert outputs["DeadLetterQueueArn"]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    for policy in EXPECTED_POLICIES:
        assert outputs[f"{policy}Arn"]["Value"] == {"Ref": policy}
