"""Errors a user can cause, as one line that says what to do (``--debug`` shows the traceback).

The ``cloudlog`` group runs every command through :func:`user_error`: an exception it knows
(no credentials, endpoint down, unknown group or queue, refused credentials) becomes a
``click.ClickException`` with that line; anything else propagates as it is.
"""

from __future__ import annotations

import os

ENDPOINT_VARIABLE = "CLOUDLOG_AWS_ENDPOINT_URL"
# Codes AWS (and emulators) answer with when it refuses the credentials or the signature.
REFUSED_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "AccessDenied",
        "AccessDeniedException",
        "MissingAuthenticationToken",
    }
)
QUEUE_MISSING_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def _endpoint() -> str:
    return os.environ.get(ENDPOINT_VARIABLE) or "real AWS (CLOUDLOG_AWS_ENDPOINT_URL is unset)"


def user_error(exc: BaseException) -> str | None:
    """One line for an error the user can fix, or None for a bug (shown as a traceback)."""
    try:
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
        )
    except ImportError:  # pragma: no cover - botocore comes with cloudlog-core
        return None
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return (
            f"no AWS credentials: for `cloudlog dev`'s emulator set {ENDPOINT_VARIABLE}="
            "http://127.0.0.1:4566 (dummy credentials are then used); for AWS configure "
            "credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a role)"
        )
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        url = getattr(exc, "kwargs", {}).get("endpoint_url") or _endpoint()
        return (
            f"cannot reach the AWS endpoint {url}: is `cloudlog dev` (or `cloudlog emulator`) "
            f"running? Check {ENDPOINT_VARIABLE}"
        )
    if isinstance(exc, NoRegionError):
        return "no AWS region: set CLOUDLOG_AWS_REGION (or AWS_REGION)"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        operation = exc.operation_name
        if code in REFUSED_CREDENTIAL_CODES:
            return (
                f"AWS refused the credentials for {operation} at {_endpoint()} ({code}: "
                f"{message}): check AWS_PROFILE / AWS_ACCESS_KEY_ID and their permissions, "
                f"or {ENDPOINT_VARIABLE}"
            )
        if code in QUEUE_MISSING_CODES:
            return (
                f"the SQS queue does not exist at {_endpoint()}: check CLOUDLOG_QUEUE_NAME / "
                f"CLOUDLOG_DEAD_LETTER_QUEUE_NAME and {ENDPOINT_VARIABLE} (`cloudlog emulator` "
                "creates them)"
            )
        if code == "ResourceNotFoundException":
            return f"not found at {_endpoint()}: {message} ({operation})"
        return f"AWS answered {code} to {operation} at {_endpoint()}: {message}"
    return None
