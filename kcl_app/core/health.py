"""The health of one target as a shard process sees it, kept across batches. Pure: the clock is injected.

States and transitions (each transition is one method call; nothing else changes the state):

1. `healthy`: every write is sent, and the shard waits (a short patience) for the target's lane.
2. `failing`: the lane has work older than the patience (`slow()`): the shard stops waiting for it;
   its writes are still sent, in the background, within their budget. A job that settles without a
   spent budget (`succeeded()`) brings it back to `healthy` once the lane has caught up (no job
   queued behind it); until then it stays `failing`, so that a target working through a backlog is
   not waited for on every other batch.
3. `open`: a budget was spent (`spent()`): new writes of the target are parked at once (durably),
   never sent, until the next probe is due. Probe delays grow from `probe_base` to `probe_cap`.
4. `probing`: `admit()` found the probe due and let ONE job through (its real writes are the probe;
   every other job still parks). Its success -> `healthy`, or `failing` while jobs are queued behind
   it (`recovered` counts the recovery, which starts the self-healing of the parked backlog); its
   failure -> `open` with a longer delay.

`paused` (the operator's `tablesync pause`) overrides all of them: everything parks, nothing is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["healthy", "failing", "open", "probing"]
Admission = Literal["send", "probe", "park"]
STATE_CODES: dict[State, int] = {"healthy": 0, "failing": 1, "probing": 2, "open": 3}
PAUSED_CODE = 4  # the `State` metric of a paused target, whatever its circuit


@dataclass
class TargetHealth:
    """One target's circuit. `clock()` is monotonic seconds (injected: tests drive it by hand)."""

    clock: Callable[[], float]
    probe_base: float = 2.0
    probe_cap: float = 15.0
    state: State = "healthy"
    paused: bool = False
    opened_at: float | None = None
    next_probe: float = 0.0
    failures: int = 0  # consecutive spent budgets (probe delays grow with it)
    recovered: int = 0  # times the target came back after being open
    last_error: str = ""

    def admit(self) -> Admission:
        """What to do with the next job of writes: send it, send it as the probe, or park it now."""
        if self.paused:
            return "park"
        if self.state == "open":
            if self.clock() >= self.next_probe:
                self.state = "probing"
                return "probe"
            return "park"
        if self.state == "probing":
            return "park"  # one probe at a time
        return "send"

    def release(self) -> None:
        """A probe that proved nothing (no write to probe with): back to open, probed again soon."""
        if self.state == "probing":
            self.state = "open"
            self.next_probe = self.clock() + self.probe_base

    def slow(self) -> bool:
        """The shard's patience for this target ran out with work still in flight. True when this
        changed the state (healthy -> failing)."""
        if self.state == "healthy":
            self.state = "failing"
            return True
        return False

    def succeeded(self, behind: bool = False) -> None:
        """A sent job settled within its budget (applied, stale, or refused item by item). `behind`:
        more jobs of the target are queued after it; a target that was not waited for stays so."""
        if self.state in ("open", "probing"):
            self.recovered += 1
        self.state = "failing" if behind and self.state != "healthy" else "healthy"
        self.failures = 0
        self.opened_at = None
        self.last_error = ""

    def spent(self, error: str) -> None:
        """A sent job spent its budget: open the circuit (or keep it open) and schedule a probe."""
        now = self.clock()
        self.failures += 1
        self.last_error = error
        if self.opened_at is None:
            self.opened_at = now
        self.state = "open"
        self.next_probe = now + min(self.probe_cap, self.probe_base * 2 ** min(self.failures - 1, 20))

    def open_seconds(self) -> float:
        """How long the target has been open (or probing) without a success; 0 when it is not."""
        return 0.0 if self.opened_at is None else max(0.0, self.clock() - self.opened_at)

    @property
    def waited_for(self) -> bool:
        """The shard waits (its patience) for this target's lane only while it is healthy."""
        return self.state == "healthy" and not self.paused

    @property
    def code(self) -> int:
        """The state as a number for metrics: 0 healthy, 1 failing, 2 probing, 3 open, 4 paused."""
        return PAUSED_CODE if self.paused else STATE_CODES[self.state]


@dataclass
class RateCap:
    """A token bucket of `rate` writes per second (burst: one second's worth). `delay(n)` takes n
    tokens and returns how long to wait before sending them (0 when they are available now)."""

    clock: Callable[[], float]
    rate: float
    tokens: float | None = None  # None until first used: then a full bucket
    stamp: float = 0.0

    def delay(self, n: int) -> float:
        now = self.clock()
        if self.tokens is None:
            self.tokens, self.stamp = self.rate, now
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
