"""The one retry policy (kcl_app.core.retry): classification, full-jitter backoff, the bounded loop."""

from __future__ import annotations

import random

import pytest

from kcl_app.core.retry import (
    READS,
    WRITES,
    Backoff,
    ErrorInfo,
    RetryBudgetSpent,
    classify,
    classify_reason,
    until,
)
from tests.conftest import FakeClock


@pytest.mark.parametrize(("error", "kind"), [
    (ErrorInfo("ValidationException", 400), "invalid"),
    (ErrorInfo("ItemCollectionSizeLimitExceededException", 400), "invalid"),
    (ErrorInfo("SerializationException", 400), "invalid"),
    (ErrorInfo("ThrottlingException", 400), "transient"),
    (ErrorInfo("ProvisionedThroughputExceededException", 400), "transient"),
    (ErrorInfo("TransactionConflictException", 400), "transient"),
    (ErrorInfo("SomethingNew", 503), "transient"),
    (ErrorInfo("InternalServerError", 500), "transient"),
    (ErrorInfo("ResourceNotFoundException", 400), "unavailable"),
    (ErrorInfo("AccessDeniedException", 400), "unavailable"),
    (ErrorInfo("ExpiredTokenException", 400), "unavailable"),
    (ErrorInfo("SomethingNew", 400), "unavailable"),
    (ErrorInfo("EndpointConnectionError", origin="transport"), "transient"),
    (ErrorInfo("TypeError", origin="local"), "invalid"),
    (ErrorInfo("RecursionError", origin="local"), "invalid"),
])
def test_classification_by_code_status_and_origin(error: ErrorInfo, kind: str) -> None:
    assert classify(error) == kind


def test_cancellation_reasons() -> None:
    assert [classify_reason(c) for c in ("None", "", "ConditionalCheckFailed", "ValidationError",
                                         "ItemCollectionSizeLimitExceeded", "TransactionConflict",
                                         "ThrottlingError")] == \
        ["ok", "ok", "condition", "invalid", "invalid", "transient", "transient"]


def test_full_jitter_stays_within_the_capped_exponential() -> None:
    backoff = Backoff(base=0.1, cap=2.0, rng=random.Random(5))
    for attempt in range(40):
        assert 0.0 <= backoff.delay(attempt) <= min(2.0, 0.1 * 2 ** attempt)
    assert max(backoff.delay(10) for _ in range(200)) > 1.0  # the whole range is used


def test_until_returns_after_transient_errors() -> None:
    clock = FakeClock()
    answers: list[object] = [ConnectionError("reset"), ConnectionError("reset"), "done"]

    def attempt() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    got = until(clock, clock.monotonic() + 10, attempt, lambda e: ErrorInfo(type(e).__name__, origin="transport"),
                backoff=Backoff(rng=random.Random(1)))
    assert got == "done" and len(clock.slept) == 2


def test_until_gives_up_at_the_deadline_with_the_last_error() -> None:
    clock = FakeClock()
    start = clock.monotonic()
    calls = []

    def attempt() -> None:
        calls.append(clock.monotonic())
        raise RuntimeError(f"throttled #{len(calls)}")

    with pytest.raises(RetryBudgetSpent) as caught:
        until(clock, start + 5.0, attempt, lambda e: ErrorInfo("ThrottlingException", 400, str(e)),
              backoff=Backoff(base=0.05, cap=1.0, rng=random.Random(2)))
    spent = caught.value
    assert spent.attempts == len(calls) > 3
    assert spent.last.message == f"throttled #{len(calls)}"  # the last error, not the first
    assert isinstance(spent.cause, RuntimeError) and spent.__cause__ is spent.cause
    assert clock.monotonic() < start + 5.0  # never slept past the deadline


@pytest.mark.parametrize(("kind_of", "retry_on", "calls"), [
    (ErrorInfo("ValidationException", 400), WRITES, 1),
    (ErrorInfo("ResourceNotFoundException", 400), READS, 1),
])
def test_until_does_not_retry_what_the_loop_does_not_retry(kind_of: ErrorInfo, retry_on: frozenset[str],
                                                            calls: int) -> None:
    clock = FakeClock()
    made: list[int] = []

    def attempt() -> None:
        made.append(1)
        raise RuntimeError("no")

    with pytest.raises(RetryBudgetSpent) as caught:
        until(clock, clock.monotonic() + 60, attempt, lambda e: kind_of, backoff=Backoff(), retry_on=retry_on)
    assert len(made) == calls and caught.value.last == kind_of and clock.slept == []


def test_every_listed_code_classifies_as_its_list_says() -> None:
    from kcl_app.core.retry import INVALID_CODES, TRANSIENT_CODES, UNAVAILABLE_CODES

    for codes, kind in ((TRANSIENT_CODES, "transient"), (UNAVAILABLE_CODES, "unavailable"), (INVALID_CODES, "invalid")):
        assert {classify(ErrorInfo(code, 400)) for code in codes} == {kind}
    assert not (TRANSIENT_CODES & UNAVAILABLE_CODES or TRANSIENT_CODES & INVALID_CODES
                or UNAVAILABLE_CODES & INVALID_CODES)
