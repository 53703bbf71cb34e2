from __future__ import annotations

import pytest
from botocore.exceptions import (
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from writer_fakes import client_error

from cloudlog_writer.errors import (
    ErrorKind,
    classify,
    describe,
    expected_sequence_token,
    reject_reason,
)
from cloudlog_writer.models import RejectReason


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ThrottlingException", 400, ErrorKind.RETRIABLE),
        ("ServiceUnavailableException", 503, ErrorKind.RETRIABLE),
        ("OperationAbortedException", 400, ErrorKind.RETRIABLE),
        ("SomethingNew", 500, ErrorKind.RETRIABLE),  # any 5xx
        ("SomethingNew", 502, ErrorKind.RETRIABLE),
        ("ResourceNotFoundException", 400, ErrorKind.NOT_FOUND),
        ("ResourceAlreadyExistsException", 400, ErrorKind.ALREADY_EXISTS),
        ("InvalidSequenceTokenException", 400, ErrorKind.SEQUENCE_TOKEN),
        ("DataAlreadyAcceptedException", 400, ErrorKind.ALREADY_ACCEPTED),
        ("InvalidParameterException", 400, ErrorKind.PERMANENT),
        ("AccessDeniedException", 400, ErrorKind.PERMANENT),
        ("UnrecognizedClientException", 400, ErrorKind.PERMANENT),
        ("LimitExceededException", 400, ErrorKind.PERMANENT),
        ("SomethingNew", 404, ErrorKind.PERMANENT),  # other 4xx
    ],
)
def test_client_errors(code: str, status: int, kind: ErrorKind) -> None:
    assert classify(client_error(code, status)) is kind


def test_transport_errors_are_retriable() -> None:
    assert classify(EndpointConnectionError(endpoint_url="http://x")) is ErrorKind.RETRIABLE
    assert classify(ConnectTimeoutError(endpoint_url="http://x")) is ErrorKind.RETRIABLE
    assert classify(ReadTimeoutError(endpoint_url="http://x")) is ErrorKind.RETRIABLE


def test_client_side_and_unknown_errors_are_permanent() -> None:
    assert classify(ParamValidationError(report="bad")) is ErrorKind.PERMANENT
    assert classify(NoCredentialsError()) is ErrorKind.PERMANENT
    assert classify(RuntimeError("bug")) is ErrorKind.PERMANENT


def test_reject_reasons() -> None:
    assert reject_reason(client_error("AccessDeniedException")) is RejectReason.ACCESS_DENIED
    assert reject_reason(NoCredentialsError()) is RejectReason.ACCESS_DENIED
    assert reject_reason(client_error("InvalidParameterException")) is RejectReason.INVALID
    assert reject_reason(client_error("ThrottlingException")) is RejectReason.RETRIES_EXHAUSTED


def test_expected_sequence_token_from_field_message_or_null() -> None:
    modeled = client_error("InvalidSequenceTokenException", expectedSequenceToken="495")
    assert expected_sequence_token(modeled) == "495"
    in_message = client_error("InvalidSequenceTokenException")
    in_message.response["Error"]["Message"] = (
        "The given sequenceToken is invalid. The next expected sequenceToken is: 4961"
    )
    assert expected_sequence_token(in_message) == "4961"
    null = client_error("InvalidSequenceTokenException")
    null.response["Error"]["Message"] = "The next expected sequenceToken is: null"
    assert expected_sequence_token(null) is None
    assert expected_sequence_token(RuntimeError()) is None


def test_describe() -> None:
    assert describe(client_error("ThrottlingException")).startswith("ThrottlingException:")
    assert describe(ValueError("boom")) == "ValueError: boom"
