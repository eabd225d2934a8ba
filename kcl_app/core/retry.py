"""The one retry policy: error classification by code and status, backoff with full jitter, and a
deadline-bounded attempt loop. Pure: no AWS SDK here; the adapter edge maps an exception to an
`ErrorInfo` (see `kcl_app.adapters.retry.describe`).

Classification (every retry loop of the package uses it):

* `transient`: throttling, conflicts, 5xx, connection and timeout errors. Retried with backoff.
* `unavailable`: the service answered that it cannot serve us now (table gone, role revoked,
  credentials expired, any other 4xx). Writes retry it within their budget, then park, so that
  one bad target never stalls the others; reads give up at once (the caller reports it).
* `invalid`: the request itself is refused (a malformed or oversized item, a local exception while
  building or sending it). Never retried: the offending write is isolated and parked.

Full jitter (sleep = uniform(0, min(cap, base * 2**attempt))) spreads the retries of many workers
hitting the same throttled table; see the AWS Architecture Blog, "Exponential Backoff And Jitter".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

Kind = Literal["transient", "unavailable", "invalid"]
Origin = Literal["service", "transport", "local"]

TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "TransactionConflictException",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)
# The target cannot be written right now (table gone, role revoked, credentials expired). Listed for
# the reader and the tests: every code not named above or below classifies the same way.
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
# The request itself is wrong: sending it again cannot help.
INVALID_CODES = frozenset(
    {
        "ValidationException",
        "ItemCollectionSizeLimitExceededException",
        "SerializationException",
    }
)
# Codes of one action inside TransactionCanceledException.CancellationReasons.
REASON_INVALID = frozenset({"ValidationError", "ItemCollectionSizeLimitExceeded"})
REASON_NONE = frozenset({"None", ""})

# What a loop retries: writes retry outages within their budget, reads only transient errors.
WRITES: frozenset[Kind] = frozenset({"transient", "unavailable"})
READS: frozenset[Kind] = frozenset({"transient"})


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as the policy sees it. `origin`: the service answered (`service`), the request never
    got an answer (`transport`: connection, timeout), or it failed in this process (`local`)."""

    code: str
    status: int = 0
    message: str = ""
    origin: Origin = "service"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


def classify(error: ErrorInfo) -> Kind:
    """transient: retry with backoff; unavailable: retry within a write budget, then park; invalid: park now."""
    if error.origin == "transport":
        return "transient"
    if error.origin == "local":
        return "invalid"
    if error.code in INVALID_CODES:
        return "invalid"
    if error.code in TRANSIENT_CODES or error.status >= 500:
        return "transient"
    return "unavailable"  # UNAVAILABLE_CODES, and any other refusal the service gives


def classify_reason(code: str) -> Literal["ok", "condition", "invalid", "transient"]:
    """One action's cancellation reason: passed (`ok`, cancelled only because another action failed),
    its condition failed, it is refused for good, or it may pass later (conflict, throttling)."""
    if code in REASON_NONE:
        return "ok"
    if code == "ConditionalCheckFailed":
        return "condition"
    if code in REASON_INVALID:
        return "invalid"
    return "transient"


class Sleeper(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class Backoff:
    """Delays for attempt 0, 1, 2, ... : uniform(0, min(cap, base * 2**attempt))."""

    def __init__(self, base: float = 0.05, cap: float = 5.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, min(self.cap, self.base * (2 ** min(attempt, 30))))

    def wait(self, clock: Sleeper, attempt: int, deadline: float) -> bool:
        """Sleep before the next attempt; False (without sleeping) when the deadline would pass."""
        pause = self.delay(attempt)
        if clock.monotonic() + pause >= deadline:
            return False
        clock.sleep(pause)
        return True


class RetryBudgetSpent(Exception):
    """The deadline passed (or the error is not retried) before an attempt succeeded; carries the last error."""

    def __init__(self, last: ErrorInfo, attempts: int, cause: BaseException | None = None) -> None:
        super().__init__(f"gave up after {attempts} attempts; last error {last}")
        self.last = last
        self.attempts = attempts
        self.cause = cause


T = TypeVar("T")


def until(clock: Sleeper, deadline: float, attempt: Callable[[], T], describe: Callable[[BaseException], ErrorInfo],
          *, backoff: Backoff, retry_on: Collection[Kind] = WRITES,
          exceptions: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """Call `attempt()` until it returns, pausing per `backoff` after each error whose kind is in
    `retry_on`. Raises RetryBudgetSpent (from the last exception) when an error is not retried or
    the next pause would pass `deadline`."""
    tries = 0
    while True:
        try:
            return attempt()
        except exceptions as exc:
            info = describe(exc)
            if classify(info) not in retry_on or not backoff.wait(clock, tries, deadline):
                raise RetryBudgetSpent(info, tries + 1, exc) from exc
            tries += 1
