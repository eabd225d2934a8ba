"""Retry policy at the AWS edge: exponential backoff with full jitter, and error classification.

Full jitter (sleep = uniform(0, min(cap, base * 2**attempt))) spreads retries of many workers
hitting the same throttled table; see the AWS Architecture Blog, "Exponential Backoff And Jitter".
"""

from __future__ import annotations

import random
from typing import Literal

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.ports import Clock

Kind = Literal["transient", "unavailable", "invalid"]

TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)
# The target cannot be written right now (table gone, role revoked, credentials expired): retried
# until the budget is spent, then parked, so that one bad target never stalls the others.
UNAVAILABLE_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "ResourceInUseException",
    }
)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def classify(exc: BaseException) -> Kind:
    """transient: retry with backoff; unavailable: retry within budget, then park; invalid: park now."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in TRANSIENT_CODES or status >= 500:
            return "transient"
        if code == "ValidationException":
            return "invalid"
        return "unavailable"
    if isinstance(exc, BotoCoreError):
        return "transient"
    return "unavailable"


class Backoff:
    """Delays for attempt 0, 1, 2, ... : uniform(0, min(cap, base * 2**attempt))."""

    def __init__(self, base: float = 0.05, cap: float = 5.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, min(self.cap, self.base * (2 ** min(attempt, 30))))

    def wait(self, clock: Clock, attempt: int, deadline: float) -> bool:
        """Sleep before the next attempt; False (without sleeping) when the deadline would pass."""
        pause = self.delay(attempt)
        if clock.monotonic() + pause >= deadline:
            return False
        clock.sleep(pause)
        return True
