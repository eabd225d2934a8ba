"""Per-target lanes inside one shard process: a failing target never slows the others.

Contract (what the record processor relies on), in numbered steps:

1. `submit(records)` runs the pipeline's steps 1-3 (decode, route, plan) in the caller's thread,
   then hands each target its writes. Each target has ONE lane (a single worker thread), so a
   target's jobs run in order, each within the target's own retry budget, counted from the moment
   the lane starts the job (a job queued behind a slow one is not charged for the wait).
2. Admission per target (`kcl_app.core.health`): a paused target, or an open one whose probe is
   not due, gets its writes parked at once (durably, in a separate small pool, never queued behind
   the lane); so does a target that is not healthy and already has `max_backlog` writes in flight
   (memory stays bounded). Otherwise the job goes to the lane, where `admit()` is asked again when
   it starts: a job queued while the target opened is parked then, without being sent. The job
   that finds an open target's probe due is its probe (claimed at submit, so that the background
   probe of 9 cannot take the turn from it). A probe's writes get a short budget (`probe_budget`),
   so that a silent target costs little per probe, whether live or from the parked changes.
3. `wait(batch)` waits for the lanes of HEALTHY targets only, and for the writes parked at once
   (local and quick). Once the first healthy target has settled, the others get `patience` seconds
   more (None: until they settle); a healthy lane still busy then is marked `failing`: the shard
   stops waiting for it; its writes keep going in the background, within their budget, and it is
   waited for again once a job of it settles with none queued behind (it has caught up). A target
   is given up on only when it is slower than another: alone, or when all are equally slow (a
   catch-up reading full pages), the targets are waited for, so that the shard is paced by them
   instead of piling writes up to `max_backlog` and parking the rest.
4. `checkpointable()` returns the last record settled in EVERY target: batches are settled in the
   order they were submitted; a batch is settled once every target's job is done (applied, stale,
   duplicate, or durably parked). The processor checkpoints that record, which may be earlier than
   the batch it has just been given (the KCL accepts an earlier sequence number in a later call).
   If parking failed for a record, `stuck` is True: nothing past it may ever be checkpointed.
5. A crash re-delivers everything past the last checkpoint; the fence makes re-applying harmless.
6. `drain()` waits for every lane (shard end: each job is bounded by its budget and parking);
   `stop()` (lease lost) cancels what has not started and checkpoints nothing.
7. A target's write-rate cap (`max_writes_per_second`) is a token bucket in its lane: the lane
   waits before a job whose writes exceed it; the other lanes do not.
8. Self-healing: when a target comes back after being open (its probe succeeded), and while it is
   not open (every `heal_interval` seconds, or `heal_retry` after a round that found entries or did
   not get the turn), `heal(target)` is started on a background thread (one per target at a time)
   from `tick()`: it re-applies the target's parked entries at a bounded rate (see
   `kcl_app.redrive.auto_redrive`, which decides which process drains which entries). A target
   that recovers is busy (its live changes and its backlog) and may read as failing meanwhile: its
   heal must go on then, or it never catches up while the traffic lasts.
9. Background duties (a thread, once a second, no traffic needed): heals as in 8, the state
   metrics, and the probe of an open target whose probe is due, made with up to `probe_entries` of
   its own parked changes (replayed through the fenced path): settled -> healthy; failing -> open.
Waits (3, 6) are real time: they synchronise threads. Budgets and probe schedules use the clock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field

from kcl_app.core.health import RateCap, TargetHealth
from kcl_app.core.plan import TargetPlan
from kcl_app.core.records import RawRecord
from kcl_app.pipeline import Pipeline, Prepared
from kcl_app.ports import Clock, Metrics

log = logging.getLogger("tablesync.lanes")


@dataclass
class LaneBatch:
    prepared: Prepared
    futures: dict[str, Future[set[int]]] = field(default_factory=dict)
    parking: set[str] = field(default_factory=set)  # targets whose writes are parked at once (always waited for)

    @property
    def done(self) -> bool:
        return all(f.done() for f in self.futures.values())


@dataclass(frozen=True)
class LaneSettings:
    """How lanes behave. The record processor's are `compose.build_lanes`'s (patience 0.5 s, the rest
    these defaults); they are not configuration keys."""

    patience: float | None = None  # seconds a healthy target gets after the fastest settled; None: no limit
    max_backlog: int = 10_000  # writes in flight per unhealthy target before new ones are parked at once
    probe_base: float = 2.0
    probe_cap: float = 15.0
    probe_budget: float = 6.0  # the retry budget of a probe's writes (at most the target's own)
    heal_interval: float = 30.0  # between rounds that found nothing to re-apply
    heal_retry: float = 3.0  # after a round that found entries, or did not get the turn
    probe_entries: int = 10  # parked changes replayed to probe an open target when no batch does
    background_interval: float = 1.0  # real seconds between background duties (probes, heals, metrics)
    metrics_interval: float = 10.0


class Lanes:
    def __init__(self, pipeline: Pipeline, clock: Clock, metrics: Metrics, settings: LaneSettings | None = None,
                 *, paused: Callable[[], Collection[str]] = lambda: (),
                 heal: Callable[..., object] | None = None,
                 rate_caps: Mapping[str, float | None] | None = None) -> None:
        self.pipeline = pipeline
        self.clock = clock
        self.metrics = metrics
        self.settings = settings or LaneSettings()
        self.paused = paused
        self.heal = heal
        names = [r.name for r in pipeline.rules]
        s = self.settings
        self.health = {n: TargetHealth(clock.monotonic, s.probe_base, s.probe_cap) for n in names}
        self.backlog = dict.fromkeys(names, 0)
        self.caps = {n: RateCap(clock.monotonic, rate) for n, rate in (rate_caps or {}).items() if rate}
        self._lanes = {n: ThreadPoolExecutor(1, thread_name_prefix=f"ts-lane-{n}") for n in names}
        self._parker = ThreadPoolExecutor(2, thread_name_prefix="ts-park")
        self._batches: deque[LaneBatch] = deque()
        self._lock = threading.Lock()
        self._healing: dict[str, threading.Thread] = {}
        self._heal_due = dict.fromkeys(names, 0.0)
        self._metrics_due = 0.0
        self._stopped = threading.Event()
        self._timer = threading.Thread(target=self._background, name="ts-lanes", daemon=True)
        self._timer.start()

    def _background(self) -> None:
        """Once a second, without waiting for traffic: probes, heals and the state metrics (`tick`)."""
        while not self._stopped.wait(self.settings.background_interval):
            try:
                self.tick()
            except Exception:  # the background duties never stop the shard
                log.warning("lanes: background duties failed", exc_info=True)

    # -- 1-2 hand each target its writes ---------------------------------------------------------
    def submit(self, records: Sequence[RawRecord]) -> LaneBatch:
        prepared = self.pipeline.prepare(records)  # may raise: the processor parks the batch whole
        paused = set(self.paused())
        batch = LaneBatch(prepared)
        for name in prepared.result.targets:
            writes = len(prepared.plans.get(name, TargetPlan()).writes)
            health = self.health[name]
            with self._lock:
                resumed = health.paused and name not in paused
                health.paused = name in paused
                if resumed:
                    self._heal_due[name] = 0.0  # caught up at once (tick) after a resume
                reason = self._refusal(name, writes)
                # an open target whose probe is due: this job is its probe, claimed here, before the
                # background duties (`tick`) could claim it for a probe from the parked changes
                probe = reason is None and health.state == "open" and health.admit() == "probe"
                if reason is None:
                    self.backlog[name] += writes
            if reason is None:
                batch.futures[name] = self._lanes[name].submit(self._send, prepared, name, writes, probe)
            else:
                batch.futures[name] = self._parker.submit(self._park, prepared, name, reason)
                batch.parking.add(name)
        with self._lock:
            self._batches.append(batch)
        return batch

    def _refusal(self, name: str, writes: int) -> str | None:
        """Why the target's writes of a new batch are parked at once (None: they are sent). Under the lock."""
        health = self.health[name]
        if health.paused:
            return f"target {name} is paused by the operator; parked without sending"
        if health.state == "open" and self.clock.monotonic() < health.next_probe:
            return f"target {name} is open (last error: {health.last_error}); parked without sending"
        if not health.waited_for and writes and self.backlog[name] + writes > self.settings.max_backlog:
            return (f"target {name} is {health.state} with {self.backlog[name]} writes in flight "
                    f"(bound {self.settings.max_backlog}); parked without sending")
        return None

    def _send(self, prepared: Prepared, name: str, writes: int, probe: bool = False) -> set[int]:
        health = self.health[name]
        try:
            with self._lock:
                admission = "probe" if probe else health.admit()
                last_error = health.last_error
            if admission == "park":
                why = "paused by the operator" if health.paused else f"open (last error: {last_error})"
                return self._park(prepared, name, f"target {name} is {why}; parked without sending")
            if admission == "probe":
                log.info("target %s: probing with a batch of %d writes", name, writes)
            cap = self.caps.get(name)
            pause = cap.delay(writes) if cap is not None else 0.0
            if pause > 0:  # the target's write-rate cap: the lane waits, the other targets do not
                self.clock.sleep(pause)
            budget = self.pipeline.budgets[name]
            if admission == "probe":  # a probe is short: a silent target must not hold the lane a whole budget
                budget = min(budget, self.settings.probe_budget)
            deadline = self.clock.monotonic() + budget
            try:
                unsettled = self.pipeline.settle_target(prepared, name, deadline)
            except Exception as exc:  # an engine defect: park this target's writes with it as the reason
                log.exception("target %s: engine failed on a job; parking its writes", name)
                return self._park(prepared, name, f"engine failed on the target's writes ({type(exc).__name__})")
            counts = prepared.result.targets[name]
            spent = counts.spent
            answered = counts.applied + counts.stale + counts.duplicate
            if not spent and writes and not answered and counts.parked:
                spent = "no write of the job was answered"  # e.g. every call raised: not a healthy target
            with self._lock:
                before, state = health.recovered, health.state
                if spent:
                    health.spent(spent)
                else:  # behind: jobs queued after this one (this job's writes still count in the backlog)
                    health.succeeded(behind=self.backlog[name] > writes)
                recovered = health.recovered != before
            if spent and state != "open" and state != "probing":
                log.warning("target %s: retry budget spent (%s); its changes park at once until a probe "
                            "succeeds", name, spent)
            elif spent:
                log.info("target %s: probe failed (%s); next probe in %.1f s", name, spent,
                         health.next_probe - self.clock.monotonic())
            if recovered:
                log.warning("target %s: healthy again after %s; re-applying its parked changes", name,
                            "a probe")
                self._start_heal(name)
            return unsettled
        finally:
            with self._lock:
                self.backlog[name] -= writes

    def _park(self, prepared: Prepared, name: str, reason: str) -> set[int]:
        try:
            return self.pipeline.settle_target(prepared, name, 0.0, park_reason=reason)
        except Exception:  # cannot even park: nothing of this batch may be checkpointed
            log.critical("target %s: parking failed with an engine error", name, exc_info=True)
            unsettled = set(range(len(prepared.records)))
            with self._lock:
                prepared.unsettled |= unsettled
            return unsettled

    # -- 3 wait for the healthy targets only -----------------------------------------------------
    def wait(self, batch: LaneBatch) -> None:
        """Wait for `batch` (step 3). The patience protects the other targets from a slow one, so it
        starts when the first healthy target that was sent writes has settled: a target is only given
        up on when it is slower than another. Alone (or all equally slow, as in a catch-up), the healthy
        targets are waited for until they settle; each job is bounded by its retry budget."""
        for name in batch.parking:  # parking is local and quick: always waited for
            wait_for([batch.futures[name]])
        waiting = {name: f for name, f in batch.futures.items()
                   if name not in batch.parking and self.health[name].waited_for}
        if not waiting:
            return
        patience = self.settings.patience
        if patience is None or len(waiting) == 1:
            wait_for(list(waiting.values()))
            return
        done, pending = wait_for(list(waiting.values()), return_when=FIRST_COMPLETED)
        if not pending:
            return
        done, pending = wait_for(pending, timeout=patience)
        for name, future in waiting.items():
            if future in pending:
                with self._lock:
                    changed = self.health[name].slow()
                if changed:
                    log.info("target %s: still writing %.2f s after the fastest target settled; not waiting "
                             "for it until it settles", name, patience)

    # -- 4 what may be checkpointed --------------------------------------------------------------
    def checkpointable(self) -> tuple[RawRecord | None, bool]:
        """(the last record settled in every target since the previous call, stuck)."""
        last: RawRecord | None = None
        while True:
            with self._lock:
                if not self._batches or not self._batches[0].done:
                    return last, False
                batch = self._batches.popleft()
            result = self.pipeline.finish(batch.prepared)
            if result.checkpoint_index >= 0:
                last = batch.prepared.records[result.checkpoint_index]
            if not result.complete:
                return last, True

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._batches)

    # -- 6 shard end, lease loss ---------------------------------------------------------------
    def drain(self) -> None:
        with self._lock:
            futures = [f for b in self._batches for f in b.futures.values()]
        wait_for(futures)

    def stop(self) -> None:
        self._stopped.set()
        for lane in self._lanes.values():
            lane.shutdown(wait=False, cancel_futures=True)
        self._parker.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._stopped.set()
        for lane in self._lanes.values():
            lane.shutdown(wait=True)
        self._parker.shutdown(wait=True)

    # -- 7 self-healing and visible state --------------------------------------------------------
    def tick(self) -> None:
        """After each batch and once a second: start due heals of healthy targets and due probes of
        open ones, emit the per-target state metrics."""
        now = self.clock.monotonic()
        for name, health in self.health.items():
            if health.state in ("healthy", "failing") and not health.paused and now >= self._heal_due[name]:
                self._start_heal(name)
            elif health.state == "open" and not health.paused and now >= health.next_probe:
                self._start_probe(name)
        if now < self._metrics_due:
            return
        self._metrics_due = now + self.settings.metrics_interval
        for name, health in self.health.items():
            with self._lock:
                counters = {"State": float(health.code), "LaneBacklog": float(self.backlog[name]),
                            "OpenSeconds": health.open_seconds()}
            try:
                self.metrics.emit({"Target": name}, counters)
            except Exception:  # metrics never stop a shard
                log.warning("target %s: state metrics not emitted", name, exc_info=True)

    def _start_heal(self, name: str) -> None:
        def claim() -> bool:
            self._heal_due[name] = self.clock.monotonic() + self.settings.heal_interval
            return True

        self._start_duty(name, "heal", self._heal_one, claim)

    def _start_probe(self, name: str) -> None:
        """Probe an open target with a few of its own parked changes (no live traffic is needed)."""
        self._start_duty(name, "probe", self._probe_one, lambda: self.health[name].admit() == "probe")

    def _start_duty(self, name: str, kind: str, work: Callable[[Callable[..., object], str], None],
                    claim: Callable[[], bool]) -> None:
        """Run `work(heal, name)` on a thread of its own: one heal or probe per target at a time, and
        only if `claim()` (asked under the lock, once none is running) agrees."""
        if self.heal is None:
            return
        with self._lock:
            running = self._healing.get(name)
            if running is not None and running.is_alive() or not claim():
                return
            thread = threading.Thread(target=work, args=(self.heal, name), name=f"ts-{kind}-{name}", daemon=True)
            self._healing[name] = thread
        thread.start()

    def _probe_one(self, heal: Callable[..., object], name: str) -> None:
        health = self.health[name]
        try:
            report = heal(name, self.settings.probe_entries, self.settings.probe_budget)
        except Exception:  # noqa: BLE001 - a probe that raised proved nothing
            log.warning("target %s: probe from the parked changes failed", name, exc_info=True)
            report = None
        settled = getattr(report, "removed", 0) if report is not None else 0
        failing = getattr(report, "still_failing", 0) if report is not None else 0
        with self._lock:
            if settled and not failing:
                health.succeeded()
            elif failing:
                health.spent(f"probe: {failing} parked changes still failing")
            else:
                health.release()  # nothing to probe with, or another process has the turn
            recovered = health.state == "healthy"
        if recovered:
            log.warning("target %s: healthy again (probed with its parked changes); re-applying the rest", name)
            with self._lock:
                self._heal_due[name] = 0.0

    def _heal_one(self, heal: Callable[..., object], name: str) -> None:
        """One round. Another round comes soon (`heal_retry`) when this one found entries (more may
        have been parked meanwhile) or did not get the turn (another process drains); otherwise
        after `heal_interval`."""
        again = True
        try:
            report = heal(name)
            again = report is None or bool(getattr(report, "read", 0))
        except Exception:  # healing tries again later; it must never stop the shard
            log.warning("target %s: re-applying parked changes failed; trying again later", name, exc_info=True)
        with self._lock:
            delay = self.settings.heal_retry if again else self.settings.heal_interval
            self._heal_due[name] = self.clock.monotonic() + delay

    def healing(self, name: str) -> threading.Thread | None:
        return self._healing.get(name)
