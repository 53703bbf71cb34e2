"""What an error from CloudWatch Logs means for the writer: *what* to do, not *how* to retry."""

from __future__ import annotations

import re
from enum import Enum
from typing import Final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from .models import RejectReason
from .observer import RetryCause


class ErrorKind(Enum):
    RETRIABLE = "retriable"  # back off and try again
    NOT_FOUND = "not_found"  # group or stream missing: forget cache entry, create, retry
    ALREADY_EXISTS = "already_exists"  # a create that found the resource: success
    SEQUENCE_TOKEN = "sequence_token"  # legacy endpoint wants expectedSequenceToken: retry
    ALREADY_ACCEPTED = "already_accepted"  # legacy endpoint has this batch already: success
    PERMANENT = "permanent"  # report per event, never retry


RETRIABLE_CODES: Final = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
        "OperationAbortedException",  # concurrent create/delete on the same resource
    }
)
THROTTLING_CODES: Final = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
ACCESS_DENIED_CODES: Final = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "MissingAuthenticationToken",
    }
)
_CODE_KINDS: Final = {
    "ResourceNotFoundException": ErrorKind.NOT_FOUND,
    "ResourceAlreadyExistsException": ErrorKind.ALREADY_EXISTS,
    "InvalidSequenceTokenException": ErrorKind.SEQUENCE_TOKEN,
    "DataAlreadyAcceptedException": ErrorKind.ALREADY_ACCEPTED,
}
_TOKEN_IN_MESSAGE: Final = re.compile(r"sequenceToken(?: is)?:\s*(\S+)")


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def classify(exc: BaseException) -> ErrorKind:
    if isinstance(exc, ClientError):
        code = error_code(exc) or ""
        if code in _CODE_KINDS:
            return _CODE_KINDS[code]
        if code in RETRIABLE_CODES:
            return ErrorKind.RETRIABLE
        status = _status(exc)
        if status is not None and (status >= 500 or status == 429):
            return ErrorKind.RETRIABLE
        return ErrorKind.PERMANENT
    if isinstance(exc, ConnectionError | HTTPClientError):
        # Endpoint unreachable, connect/read timeouts, connection reset mid-response.
        return ErrorKind.RETRIABLE
    if isinstance(exc, ParamValidationError | NoCredentialsError | PartialCredentialsError):
        return ErrorKind.PERMANENT
    if isinstance(exc, BotoCoreError):
        # Other transport-level failures (incomplete reads, checksum mismatch): worth a retry.
        return ErrorKind.RETRIABLE
    return ErrorKind.PERMANENT


def retry_cause(exc: BaseException) -> RetryCause:
    """Which kind of RETRIABLE error this is, for the retry counters."""
    if isinstance(exc, ClientError):
        if error_code(exc) in THROTTLING_CODES or _status(exc) == 429:
            return RetryCause.THROTTLED
        return RetryCause.SERVER_ERROR
    return RetryCause.CONNECTION


def reject_reason(exc: BaseException) -> RejectReason:
    """Why events failed by a PERMANENT error (or by a RETRIABLE one past its budget)."""
    if classify(exc) is ErrorKind.RETRIABLE:
        return RejectReason.RETRIES_EXHAUSTED
    if error_code(exc) in ACCESS_DENIED_CODES or isinstance(
        exc, NoCredentialsError | PartialCredentialsError
    ):
        return RejectReason.ACCESS_DENIED
    return RejectReason.INVALID


def describe(exc: BaseException) -> str:
    """A short detail string for EventResult."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'ClientError')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def expected_sequence_token(exc: BaseException) -> str | None:
    """``expectedSequenceToken`` from InvalidSequenceToken / DataAlreadyAccepted errors.

    botocore puts modeled error fields at the top of ``response``; some endpoints only say it
    in the message ("The next expected sequenceToken is: 4956..."). ``null`` means none.
    """
    if not isinstance(exc, ClientError):
        return None
    token = exc.response.get("expectedSequenceToken") or exc.response.get("Error", {}).get(
        "expectedSequenceToken"
    )
    if not token:
        match = _TOKEN_IN_MESSAGE.search(str(exc.response.get("Error", {}).get("Message", "")))
        token = match.group(1) if match else None
    if token in (None, "null", "None"):
        return None
    return str(token)
