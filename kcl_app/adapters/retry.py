"""The AWS edge of the retry policy: the only place that maps botocore exceptions to the core's
`ErrorInfo` (code, HTTP status, message, origin). The policy itself is `kcl_app.core.retry`."""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from kcl_app.core.retry import Backoff, ErrorInfo, Kind
from kcl_app.core.retry import classify as classify_info

__all__ = ["Backoff", "Kind", "classify", "describe", "error_code"]


def describe(exc: BaseException) -> ErrorInfo:
    """What the policy needs to know of an exception raised while calling AWS (or building the call)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return ErrorInfo(str(error.get("Code", "ClientError")), status, str(error.get("Message", "")))
    if isinstance(exc, ParamValidationError):  # refused before sending: the request itself is wrong
        return ErrorInfo(type(exc).__name__, 0, str(exc), "local")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):  # like an expired token
        return ErrorInfo(type(exc).__name__, 0, str(exc), "service")
    if isinstance(exc, BotoCoreError):  # no answer: connection, timeout
        return ErrorInfo(type(exc).__name__, 0, str(exc), "transport")
    return ErrorInfo(type(exc).__name__, 0, repr(exc), "local")


def error_code(exc: BaseException) -> str:
    return describe(exc).code


def classify(exc: BaseException) -> Kind:
    """The core classification of an exception (see `kcl_app.core.retry.classify`)."""
    return classify_info(describe(exc))
