"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

# Never let a test reach a real AWS account, whatever the developer's environment holds.
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_var, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"  # noqa: S105 - dummy credentials for the emulator
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_ACCOUNT_ID_ENDPOINT_MODE"] = "disabled"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real-daemon tests first (in their own order), then the rest: they are the longest (30-90 s
    each, mostly waiting on the KCL's timings), so on two workers (`make test`) they start at once
    and the quick tests fill the gaps, instead of one long test ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("daemon") is None)


class FakeClock:
    """A clock that advances when slept on: retries and budgets without real waiting."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self._now += seconds
            self._mono += seconds

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def moto() -> Iterator[None]:
    """In-process moto with tablesync's emulator fixes installed."""
    from moto import mock_aws

    from tablesync_local import moto_fixes  # the oracle: never fall back to unpatched moto

    moto_fixes.install()
    with mock_aws():
        yield
