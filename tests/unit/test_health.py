"""The per-target circuit (core.health) on an injected clock, and the write-rate cap."""

from __future__ import annotations

from kcl_app.core.health import RateCap, TargetHealth


class Tick:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_healthy_failing_open_probing_healthy() -> None:
    now = Tick()
    h = TargetHealth(now, probe_base=2.0, probe_cap=8.0)
    assert h.admit() == "send" and h.waited_for
    h.slow()
    assert h.state == "failing" and not h.waited_for and h.admit() == "send"
    h.spent("retry budget spent; last error X")
    assert h.state == "open" and h.admit() == "park" and h.opened_at == 100.0
    now.t = 101.9
    assert h.admit() == "park"
    now.t = 102.0
    assert h.admit() == "probe" and h.state == "probing"
    assert h.admit() == "park"  # one probe at a time
    h.spent("again")  # the probe failed: the next delay doubles
    assert h.state == "open" and h.next_probe == 106.0 and h.open_seconds() == 2.0
    now.t = 106.0
    assert h.admit() == "probe"
    h.succeeded()
    assert h.state == "healthy" and h.recovered == 1 and h.failures == 0 and h.open_seconds() == 0.0


def test_probe_delays_are_capped_and_a_failing_target_that_settles_is_healthy_without_a_recovery() -> None:
    now = Tick()
    h = TargetHealth(now, probe_base=2.0, probe_cap=5.0)
    for _ in range(10):
        h.spent("x")
    assert h.next_probe - now.t == 5.0
    g = TargetHealth(now)
    g.slow()
    g.succeeded()
    assert g.state == "healthy" and g.recovered == 0


def test_paused_parks_everything_and_has_its_own_code() -> None:
    now = Tick()
    h = TargetHealth(now)
    h.paused = True
    assert h.admit() == "park" and not h.waited_for and h.code == 4
    h.paused = False
    assert h.admit() == "send" and h.code == 0


def test_rate_cap_is_a_token_bucket() -> None:
    now = Tick()
    cap = RateCap(now, 10.0)
    assert cap.delay(10) == 0.0  # a full bucket: one second's worth at once
    assert cap.delay(5) == 0.5
    now.t += 0.5
    assert cap.delay(5) == 0.5
    now.t += 10.0
    assert cap.delay(1) == 0.0  # refilled, never beyond one second's worth
    assert cap.delay(9) == 0.0 and cap.delay(1) == 0.1


def test_a_target_not_waited_for_is_waited_for_again_only_once_it_has_caught_up() -> None:
    now = Tick()
    h = TargetHealth(now)
    h.slow()
    h.succeeded(behind=True)  # settled, but jobs are queued behind it: still not waited for
    assert h.state == "failing" and not h.waited_for
    h.succeeded(behind=False)
    assert h.state == "healthy" and h.waited_for
    h.succeeded(behind=True)  # a healthy target with a queue was never slow: it stays healthy
    assert h.state == "healthy"
    h.spent("x")
    now.t += 2.0
    assert h.admit() == "probe"
    h.succeeded(behind=True)  # recovered, with live jobs queued behind the probe
    assert h.state == "failing" and h.recovered == 1 and h.admit() == "send" and h.failures == 0
    h.succeeded()
    assert h.state == "healthy" and h.recovered == 1
