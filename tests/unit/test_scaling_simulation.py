"""The worker group's lease policy, simulated over a day of an ON_DEMAND stream that doubles and
halves its shards. Every number of the model is read from infra/worker.yaml (the defaults of the
parameters the policy and the group use), so the template and this proof cannot drift apart."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kcl_app.core.fleet import (
    Minute,
    TargetTrackingPolicy,
    desired_workers,
    reshard_timeline,
    simulate_target_tracking,
)
from tests.infra.policy import load

DAY = 24 * 60
# (minute, open shards after the reshard, minutes the parents take to drain)
ON_DEMAND_DAY = [
    (7 * 60, 8, 10),     # morning traffic: 4 -> 8, the parents 10 min behind
    (10 * 60, 16, 25),   # peak: 8 -> 16 while catching up (a long drain)
    (13 * 60, 32, 2),    # a short burst doubles again, parents caught up (short drain) ...
    (13 * 60 + 40, 16, 2),  # ... and the stream halves 40 min later
    (18 * 60, 8, 40),    # evening: merges, the parents 40 min behind
    (22 * 60, 4, 5),
]


def _ref(value: Any) -> str:
    assert isinstance(value, dict) and set(value) == {"Ref"}, value
    return str(value["Ref"])


@pytest.fixture(scope="module")
def policy() -> TargetTrackingPolicy:
    template = load("worker.yaml")
    params, resources = template["Parameters"], template["Resources"]
    group = resources["WorkerGroup"]["Properties"]
    lease = resources["LeaseScalingPolicy"]["Properties"]
    # the model is the template's: target tracking, on the leases metric, with these parameters
    assert lease["PolicyType"] == "TargetTrackingScaling"
    config = lease["TargetTrackingConfiguration"]
    names = {q["Id"]: q for q in config["CustomizedMetricSpecification"]["Metrics"]}
    assert names["leases"]["MetricStat"]["Metric"]["MetricName"] == "LeasesToProcess"

    def default(value: Any) -> int:
        return int(params[_ref(value)]["Default"])

    return TargetTrackingPolicy(
        shards_per_worker=default(config["TargetValue"]),
        min_size=default(group["MinSize"]),
        max_size=default(group["MaxSize"]),
        warmup_minutes=math.ceil(default(group["DefaultInstanceWarmup"]) / 60),
    )


def _day(policy: TargetTrackingPolicy) -> tuple[list[tuple[int, int]], list[Minute]]:
    shards = reshard_timeline(ON_DEMAND_DAY, DAY, initial_shards=4)
    # every shard reshards at once: a family per parent, LeasesToProcess = max(open, draining)
    return shards, simulate_target_tracking([max(o, d) for o, d in shards], policy)


def _need(policy: TargetTrackingPolicy, leases: int) -> int:
    return desired_workers(leases, policy.shards_per_worker, policy.min_size, policy.max_size)


def test_the_template_numbers_make_a_meaningful_day(policy: TargetTrackingPolicy) -> None:
    shards, minutes = _day(policy)
    peak = max(max(o, d) for o, d in shards)
    # the day spans the whole group: from the floor (4 shards) to MaxSize (the 32-shard burst)
    assert _need(policy, 4) == max(2, policy.min_size) < _need(policy, 16) < policy.max_size
    assert math.ceil(peak / policy.shards_per_worker) == policy.max_size == max(m.desired for m in minutes)


def test_desired_capacity_stays_within_the_group_bounds(policy: TargetTrackingPolicy) -> None:
    _, minutes = _day(policy)
    assert all(max(2, policy.min_size) <= m.desired <= policy.max_size for m in minutes)
    assert all(m.counted <= m.desired for m in minutes)


def test_more_work_is_followed_within_the_scale_out_evaluation(policy: TargetTrackingPolicy) -> None:
    shards, minutes = _day(policy)
    need = [_need(policy, max(o, d)) for o, d in shards]
    k = policy.scale_out_minutes
    for t in range(k - 1, DAY):
        # a need sustained over the last k minutes is met
        assert minutes[t].desired >= min(need[t - k + 1:t + 1]), t


def test_never_below_what_the_draining_parents_need(policy: TargetTrackingPolicy) -> None:
    shards, minutes = _day(policy)
    drains = [t for t, (_, draining) in enumerate(shards) if draining]
    assert drains  # the day has drains
    for t in drains:
        # no scale-in while parents drain, and once the drain lasted the evaluation, it is covered
        assert minutes[t].desired >= minutes[t - 1].desired, t
        open_t, draining_t = shards[t]
        sustained = all(shards[s] == (open_t, draining_t) for s in range(t - policy.scale_out_minutes + 1, t + 1))
        if sustained:
            assert minutes[t].desired >= _need(policy, draining_t), t


def test_scale_in_waits_the_cool_down_and_does_not_flap_during_a_reshard(policy: TargetTrackingPolicy) -> None:
    _, minutes = _day(policy)
    changes = [(t, m.desired - minutes[t - 1].desired)
               for t, m in enumerate(minutes) if t and m.desired != minutes[t - 1].desired]
    events = [e[0] for e in ON_DEMAND_DAY]
    # a scale-in comes only after scale_in_minutes in which the need stayed below the capacity
    for t, delta in changes:
        if delta < 0:
            window = minutes[t - policy.scale_in_minutes + 1:t + 1]
            assert all(_need(policy, m.leases) < minutes[t - policy.scale_in_minutes].desired for m in window), t
    # no flap: from one reshard to the next the capacity only rises or only falls
    for start, end in zip(events, [*events[1:], DAY], strict=True):
        window = [m.desired for m in minutes[start - 1:end]]
        rising = all(a <= b for a, b in zip(window, window[1:], strict=False))
        falling = all(a >= b for a, b in zip(window, window[1:], strict=False))
        assert rising or falling, (start, window)
    # the 2-minute drains never cost a scale-out of their own (shorter than the evaluation)
    burst = ON_DEMAND_DAY[2][0]
    assert minutes[burst + 1].desired == minutes[burst - 1].desired


def test_each_quiet_period_ends_at_exactly_the_needed_capacity(policy: TargetTrackingPolicy) -> None:
    shards, minutes = _day(policy)
    settle = policy.scale_out_minutes + policy.warmup_minutes + policy.scale_in_minutes + 1
    boundaries = [e[0] for e in ON_DEMAND_DAY] + [DAY]
    starts = [0, *[e[0] for e in ON_DEMAND_DAY]]
    checked = 0
    for start, end in zip(starts, boundaries, strict=True):
        last = end - 1
        if end - start > settle + 30:  # long enough after the drain to have settled
            assert minutes[last].desired == _need(policy, sum(shards[last])), (start, end)
            assert minutes[last].counted == minutes[last].desired
            checked += 1
    assert checked >= 5


def test_new_workers_count_only_after_their_warm_up(policy: TargetTrackingPolicy) -> None:
    _, minutes = _day(policy)
    up = next(t for t, m in enumerate(minutes) if t and m.desired > minutes[t - 1].desired)
    before = minutes[up - 1].counted
    assert all(minutes[t].counted == before for t in range(up, up + policy.warmup_minutes))
    assert minutes[up + policy.warmup_minutes].counted == minutes[up].desired


def test_the_model_refuses_impossible_bounds() -> None:
    with pytest.raises(ValueError, match="shards_per_worker"):
        desired_workers(4, 0, 2, 4)
    with pytest.raises(ValueError, match="max_size"):
        desired_workers(4, 2, 3, 2)
    assert desired_workers(0, 4, 0, 4) == 2  # never below 2
    assert desired_workers(1000, 4, 2, 8) == 8
