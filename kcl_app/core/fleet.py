"""The fleet's work, from the lease table: what is left to process, who holds it, who reports it.

Pure: no I/O. The supervisor of ``tablesync run`` reads the lease table (adapters/leases.py),
hands the leases to :func:`figures`, and publishes them. The scaling policy of infra/worker.yaml
follows ``LeasesToProcess``; :func:`simulate_target_tracking` is the model of that policy the
tests drive through a day of resharding.

Definitions (KCL keeps one lease per shard it knows, parents included):

- a lease is *finished* when its checkpoint is ``SHARD_END`` (a closed shard fully processed);
- a lease is a *draining parent* when it is not finished and another lease names it as a parent
  (the shard was split or merged: KCL processes the parent to its end before its children);
- a *waiting child* is unfinished and has a parent that is still draining (its record
  processor starts only when the parents end);
- the other unfinished leases are *ready*; ``open_shards = ready + waiting children``.

``leases_to_process`` is what the fleet must be sized for: the most record processors that will
run at once. Within one reshard (a family: draining parents and their waiting children) the
parents run first, then the children, never both, so a family needs ``max(parents, children)``:
``leases_to_process = ready + sum over families of max(draining, waiting)``. A split of N shards
asks for 2N at once (the capacity is there when the parents end, not minutes later), a merge
keeps the capacity of its N parents until they have ended, and neither asks for parents +
children (which would scale out during a merge only to scale in again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SHARD_END = "SHARD_END"


@dataclass(frozen=True)
class Lease:
    """One row of the KCL lease table, as far as the fleet's figures need it."""

    shard: str
    owner: str | None
    checkpoint: str | None
    parents: tuple[str, ...] = ()
    lease_counter: int = 0
    sub_sequence: int = 0
    owner_switches: int = 0

    @property
    def finished(self) -> bool:
        return self.checkpoint == SHARD_END


@dataclass(frozen=True)
class FleetFigures:
    """The fleet-level figures (the same for every worker that reads the same table)."""

    open_shards: int
    draining_parents: int
    waiting_children: int
    leases_to_process: int
    finished: int
    leases_held: int
    workers: int
    held_by: Mapping[str, int]


def figures(leases: Iterable[Lease]) -> FleetFigures:
    """Aggregate the lease table (see the module doc). ``held_by`` counts the unfinished leases
    per owner, draining parents included (a finished lease costs no process, whoever's name is on
    it); ``leases_held`` is their sum."""
    rows = list(leases)
    unfinished = {lease.shard: lease for lease in rows if not lease.finished}
    named_parents = {parent for lease in unfinished.values() for parent in lease.parents}
    draining = {shard for shard in unfinished if shard in named_parents}
    waiting = {shard for shard, lease in unfinished.items()
               if shard not in draining and any(p in draining for p in lease.parents)}
    ready = len(unfinished) - len(draining) - len(waiting)
    # families: the connected parent/child links among unfinished leases (union-find)
    root: dict[str, str] = {}

    def find(shard: str) -> str:
        while root.setdefault(shard, shard) != shard:
            root[shard] = root[root[shard]]
            shard = root[shard]
        return shard

    for shard in draining | waiting:
        for parent in unfinished[shard].parents:
            if parent in draining:
                root[find(parent)] = find(shard)
    family_parents: dict[str, int] = {}
    family_children: dict[str, int] = {}
    for shard in draining:
        family_parents[find(shard)] = family_parents.get(find(shard), 0) + 1
    for shard in waiting:
        family_children[find(shard)] = family_children.get(find(shard), 0) + 1
    families = set(family_parents) | set(family_children)
    held: dict[str, int] = {}
    for lease in unfinished.values():
        if lease.owner:
            held[lease.owner] = held.get(lease.owner, 0) + 1
    return FleetFigures(
        open_shards=ready + len(waiting),
        draining_parents=len(draining),
        waiting_children=len(waiting),
        leases_to_process=ready + sum(max(family_parents.get(f, 0), family_children.get(f, 0))
                                      for f in families),
        finished=len(rows) - len(unfinished),
        leases_held=sum(held.values()),
        workers=len({lease.owner for lease in rows if lease.owner}),
        held_by=dict(sorted(held.items())),
    )


def reporter(leases: Iterable[Lease]) -> str | None:
    """The one worker that publishes the fleet-level figures: the owner of the lexicographically
    smallest unfinished lease key (an unfinished lease is renewed by a live worker, or taken over
    within the failover time; a finished one may still carry a departed worker's name). Every
    worker reading the same table elects the same one. While a lease moves two workers may both
    believe it for one period; they publish the same figures (read from the same table), so a
    Maximum statistic stays right. None when no unfinished lease has an owner."""
    owned = sorted((lease.shard, lease.owner) for lease in leases if lease.owner and not lease.finished)
    return owned[0][1] if owned else None


def desired_workers(leases_to_process: int, shards_per_worker: int, min_size: int, max_size: int) -> int:
    """``ceil(leases / shards_per_worker)`` within [min_size, max_size], never below 2 (one
    worker lost must cost a lease failover, not an outage)."""
    if shards_per_worker < 1:
        raise ValueError(f"shards_per_worker must be at least 1, got {shards_per_worker}")
    if max_size < max(2, min_size):
        raise ValueError(f"max_size {max_size} is below the floor max(2, min_size={min_size})")
    needed = math.ceil(max(leases_to_process, 0) / shards_per_worker)
    return min(max_size, max(2, min_size, needed))


# ----------------------------------------------------------------------------- policy model


@dataclass(frozen=True)
class TargetTrackingPolicy:
    """The parameters of the worker group's lease policy (read from infra/worker.yaml by the
    tests). ``scale_out_minutes``/``scale_in_minutes`` are the consecutive one-minute breaches
    after which target tracking acts (its managed alarms: 3 out of 3 and 15 out of 15)."""

    shards_per_worker: int
    min_size: int
    max_size: int
    warmup_minutes: int
    scale_out_minutes: int = 3
    scale_in_minutes: int = 15


@dataclass(frozen=True)
class Minute:
    """The group at the end of one simulated minute."""

    leases: int
    desired: int
    counted: int  # instances past their warm-up (the only ones the metric divides by)


def simulate_target_tracking(leases: Sequence[int], policy: TargetTrackingPolicy,
                             initial: int | None = None) -> list[Minute]:
    """Drive the lease policy minute by minute over ``leases`` (LeasesToProcess per minute).

    Model of target tracking on ``LeasesToProcess / counted instances`` with target
    ``shards_per_worker``: the metric divides by the instances past their warm-up only; it scales
    out after ``scale_out_minutes`` consecutive minutes above the target, to the proportional
    capacity ``ceil(leases / shards_per_worker)`` (warming instances are part of that capacity,
    so the same shortfall never launches twice); it scales in after ``scale_in_minutes``
    consecutive minutes in which that capacity is below the current one, never while an
    instance is warming up. Always within [max(2, min_size), max_size]. Pure and deterministic.
    """
    floor = max(2, policy.min_size)
    desired = initial if initial is not None else floor
    desired = min(policy.max_size, max(floor, desired))
    warm_minutes = max(policy.warmup_minutes, 0)
    ready_at = [-warm_minutes] * desired  # the initial instances count from the start
    high = low = 0
    out: list[Minute] = []
    for minute, load in enumerate(leases):
        counted = sum(1 for at in ready_at if at + warm_minutes <= minute)
        warming = counted < len(ready_at)
        target = desired_workers(load, policy.shards_per_worker, policy.min_size, policy.max_size)
        metric = load / counted if counted else float(load)
        high = high + 1 if metric > policy.shards_per_worker else 0
        low = low + 1 if target < desired else 0
        if high >= policy.scale_out_minutes and target > desired:
            ready_at += [minute] * (target - desired)
            desired, high, low = target, 0, 0
        elif low >= policy.scale_in_minutes and not warming:
            # The newest instances go first: they are the ones still least settled.
            ready_at = sorted(ready_at)[:target]
            desired, high, low = target, 0, 0
        counted = sum(1 for at in ready_at if at + warm_minutes <= minute)
        out.append(Minute(leases=load, desired=desired, counted=counted))
    return out


def reshard_timeline(events: Sequence[tuple[int, int, int]], minutes: int,
                     initial_shards: int) -> list[tuple[int, int]]:
    """``(open shards, draining parents)`` per minute for a stream that reshards all its shards
    at once: ``events`` are ``(minute, new_open_shards, drain_minutes)``; from ``minute`` the old
    open shards are draining parents for ``drain_minutes`` while the new ones wait for them.
    (With every shard resharded, LeasesToProcess is ``max(open, draining)``.)"""
    out: list[tuple[int, int]] = []
    open_shards, draining, drain_until = initial_shards, 0, -1
    pending = sorted(events)
    for minute in range(minutes):
        while pending and pending[0][0] == minute:
            _, new_open, drain = pending.pop(0)
            # a reshard during a drain: the waiting children become the parents (conservative)
            draining = max(open_shards, draining if minute < drain_until else 0)
            open_shards, drain_until = new_open, minute + drain
        if minute >= drain_until:
            draining = 0
        out.append((open_shards, draining))
    return out
