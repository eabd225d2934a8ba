"""One batch of stream records through the engine, in numbered steps, talking only to ports.

Contract (what a caller may rely on): `process` returns a BatchResult whose `checkpoint_index`
is the highest record index such that this record and every one before it has been applied to
every target it is routed to, or durably parked with its reason. If parking itself fails, the
records concerned (and all after them) are left unsettled, and the caller must not checkpoint
past them. `process` does not raise for AWS errors, malformed records or user transform errors.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from kcl_app.core.checks import DEFAULT_CHECKS, RecordChecks
from kcl_app.core.errors import ParkFailed, PoisonRecord
from kcl_app.core.plan import TargetPlan, TargetRule, Write, plan_batch, safe_checkpoint
from kcl_app.core.records import Change, RawRecord, decode
from kcl_app.core.retry import WRITES, Backoff, ErrorInfo, RetryBudgetSpent, until
from kcl_app.core.versions import Precision
from kcl_app.ports import ApplyResult, Clock, DeadLetter, DeadLetterSink, Metrics, TargetWriter

log = logging.getLogger("tablesync.pipeline")

POISON_STORE = "_poison"
UNMAPPED_STORE = "_unmapped"
PARK_ATTEMPTS = 5
# How the writers word a failure caused by a spent budget (not by the item): the target is down.
BUDGET_SPENT = "retry budget spent"


@dataclass
class TargetCounts:
    applied: int = 0
    stale: int = 0
    duplicate: int = 0
    coalesced: int = 0
    parked: int = 0
    retries: int = 0
    ttl_skipped: int = 0
    lag_ms: list[float] = field(default_factory=list)
    spent: str = ""  # a write failed because the target's budget was spent: the first such reason


@dataclass
class BatchResult:
    size: int
    checkpoint_index: int
    targets: dict[str, TargetCounts]
    poison: int = 0
    unmapped: int = 0
    unsettled: frozenset[int] = frozenset()

    @property
    def complete(self) -> bool:
        return self.checkpoint_index == self.size - 1


@dataclass
class Prepared:
    """A batch after steps 1-3: its plans per target, and the record indexes not settled so far."""

    records: Sequence[RawRecord]
    result: BatchResult
    plans: dict[str, TargetPlan]
    unsettled: set[int]
    sink: DeadLetterSink | None = None  # where this batch parks (None: the pipeline's own store)
    started_ms: float = 0.0  # when the engine was given the batch (epoch ms): ApplyMs counts from it


class Pipeline:
    def __init__(
        self,
        rules: Sequence[TargetRule],
        writers: Mapping[str, TargetWriter],
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        clock: Clock,
        *,
        retry_budget_seconds: Mapping[str, float] | float = 30.0,
        unmapped: Literal["skip", "park"] = "skip",
        precision: Precision = "auto",
        backoff: Backoff | None = None,
        checks: RecordChecks = DEFAULT_CHECKS,
    ) -> None:
        missing = {r.name for r in rules} - set(writers)
        if missing:
            raise ValueError(f"no writer for targets {sorted(missing)}")
        self.rules = list(rules)
        self.writers = dict(writers)
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.clock = clock
        self.unmapped = unmapped
        self.precision = precision
        self.checks = checks
        self.backoff = backoff or Backoff(base=0.1, cap=2.0)
        self._tables = {r.source_table for r in rules}
        if isinstance(retry_budget_seconds, int | float):
            self.budgets = {r.name: float(retry_budget_seconds) for r in rules}
        else:
            self.budgets = {r.name: float(retry_budget_seconds.get(r.name, 30.0)) for r in rules}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, len(self.writers)), thread_name_prefix="ts-target")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def process(self, records: Sequence[RawRecord], only: Iterable[str] | None = None,
                budget: float | None = None, sink: DeadLetterSink | None = None) -> BatchResult:
        """Apply a batch to every target (or to the targets named in `only`, for redrive), waiting for
        each. `budget` caps every target's retry budget (a probe of a target that may still be down);
        `sink` parks this batch's failures there instead of the pipeline's store (a redrive's wrapper,
        while the stream's own batches keep parking into the store, on the same pipeline)."""
        prepared = self.prepare(records, only, sink)
        # 4-5 apply to every target concurrently, each within its own retry budget; park what fails
        start = self.clock.monotonic()
        futures = {name: self._pool.submit(self.settle_target, prepared, name,
                                           start + min(self.budgets[name], budget if budget is not None
                                                       else self.budgets[name]))
                   for name in prepared.result.targets}
        for future in futures.values():
            future.result()  # settle_target adds what it could not settle to prepared.unsettled
        return self.finish(prepared)


    def prepare(self, records: Sequence[RawRecord], only: Iterable[str] | None = None,
                sink: DeadLetterSink | None = None) -> Prepared:
        """Steps 1-3: decode, route, park what is poison or unmapped, plan per target."""
        started_ms = self.clock.now() * 1000.0
        rules = self.rules if only is None else [r for r in self.rules if r.name in set(only)]
        result = BatchResult(len(records), -1, {r.name: TargetCounts() for r in rules})
        unsettled: set[int] = set()

        # 1 decode; undecodable records are parked as poison with their raw bytes
        changes: list[tuple[int, Change]] = []
        poison: list[tuple[int, DeadLetter]] = []
        unmapped: list[tuple[int, DeadLetter]] = []
        unmapped_tables: set[str] = set()
        now_ms = started_ms  # bounds the version of a record whose arrival is unknown
        for index, raw in enumerate(records):
            try:
                change = decode(raw, self.precision, self.checks, now_ms)
            except PoisonRecord as exc:
                poison.append((index, self._letter(POISON_STORE, f"undecodable record: {exc}", raw)))
                continue
            # 2 route: records of tables no target wants are counted, and skipped or parked
            if change.table not in self._tables:
                result.unmapped += 1
                unmapped_tables.add(change.table)
                if self.unmapped == "park":
                    unmapped.append((index, self._letter(UNMAPPED_STORE, f"no target for table {change.table!r}", raw)))
                continue
            changes.append((index, change))
        result.poison = len(poison)
        stuck = self._park(poison + unmapped, sink=sink)  # a failure is logged there, once
        unsettled |= stuck
        if poison and not stuck:
            log.error("parked %d undecodable records, first: %s", len(poison), poison[0][1].reason)
        parking = self.unmapped == "park"
        if result.unmapped and not (parking and stuck):
            log.log(logging.WARNING if parking else logging.INFO, "%s %d records of tables no target wants: %s",
                    "parked" if parking else "skipped", result.unmapped, ", ".join(sorted(unmapped_tables)))

        # 3 plan: coalesce per (target, key) to the newest version; shape per target
        try:
            plans = plan_batch(changes, rules)
        except Exception:  # a defect the plan did not foresee: find the changes that cause it, alone
            log.exception("planning the batch failed; planning its changes one by one")
            plans, bad = _plan_each(changes, rules)
            unplanned = [(i, self._letter(POISON_STORE, f"cannot plan the change ({why})", c.raw, c))
                         for i, c, why in bad]
            result.poison += len(unplanned)
            unsettled |= self._park(unplanned, sink=sink)
        return Prepared(records, result, plans, unsettled, sink, started_ms)

    def finish(self, prepared: Prepared) -> BatchResult:
        """6 the checkpoint: the last record with everything up to it settled; 7 the stream's metrics."""
        result = prepared.result
        result.unsettled = frozenset(prepared.unsettled)
        result.checkpoint_index = safe_checkpoint(len(prepared.records), prepared.unsettled)
        if result.poison or result.unmapped:
            self.metrics.emit({"Target": "_stream"}, {"Poison": result.poison, "Unmapped": result.unmapped})
        return result

    def settle_target(self, prepared: Prepared, name: str, deadline: float, park_reason: str | None = None
                      ) -> set[int]:
        """Steps 4-5 for one target: apply its plan within `deadline` (or, with `park_reason`, send
        nothing and park every write with that reason), park what fails, emit the target's metrics.
        Returns the record indexes left unsettled (parking failed). Safe to call from any thread."""
        plan = prepared.plans.get(name, TargetPlan())
        if park_reason is None:
            applied = self._apply(name, plan, deadline)
        else:
            applied = ApplyResult(failed=[(w, park_reason) for w in plan.writes])
        now_ms = self.clock.now() * 1000.0
        counts = prepared.result.targets[name]
        counts.applied = len(applied.applied)
        counts.stale = len(applied.stale)
        counts.duplicate = len(applied.duplicate)
        counts.coalesced = plan.coalesced
        counts.retries = applied.retries
        counts.ttl_skipped = plan.skipped_ttl
        counts.lag_ms = [now_ms - w.change.version.micros / 1000.0 for w in applied.applied]
        counts.spent = next((why for _, why in applied.failed if why.startswith(BUDGET_SPENT)), "")

        # 5 park what the target cannot take (rejected by the plan, or failed in the budget)
        letters = [(r.records, self._letter(name, r.reason, r.change.raw, r.change)) for r in plan.rejected]
        letters += [(w.records, self._letter(name, why, w.change.raw, w.change)) for w, why in applied.failed]
        if letters and park_reason is None:
            reasons = Counter(letter.reason for _, letter in letters)
            summary = "; ".join(f"{n} x {why}" for why, n in reasons.most_common(3))
            log.warning("target %s: parking %d changes: %s", name, len(letters), summary)
        counts.parked = len(letters)
        flat = [(i, letter) for idx, letter in letters for i in idx]
        unsettled = self._park(flat, dedupe=True, sink=prepared.sink)
        with self._lock:
            prepared.unsettled |= unsettled

        # 7 metrics, one EMF document per target. LagMs: source write -> applied, per change; ApplyMs:
        # batch given to the engine -> settled in this target, per batch (the processor's DeliveryMs is
        # the part before: arrival in the stream -> given to the processor)
        self.metrics.emit(
            {"Target": name},
            {"Applied": counts.applied, "StaleSkipped": counts.stale, "Duplicates": counts.duplicate,
             "Coalesced": counts.coalesced, "Parked": counts.parked, "Retries": counts.retries},
            {"LagMs": counts.lag_ms, "ApplyMs": [now_ms - prepared.started_ms] if plan.writes else []},
        )
        return unsettled

    def park_all(self, records: Sequence[RawRecord], reason: str) -> BatchResult:
        """Park a whole batch as poison with one reason (the processor's answer to an engine defect
        on a batch: it is settled, never retried forever). Unparkable records are left unsettled."""
        letters = [(i, self._letter(POISON_STORE, reason, raw)) for i, raw in enumerate(records)]
        unsettled = self._park(letters)
        return BatchResult(len(records), safe_checkpoint(len(records), unsettled), {}, poison=len(records),
                           unsettled=frozenset(unsettled))

    def _apply(self, name: str, plan: TargetPlan, deadline: float) -> ApplyResult:
        if not plan.writes:
            return ApplyResult()
        return self._isolate(name, list(plan.writes), deadline, first=True)

    def _isolate(self, name: str, writes: list[Write], deadline: float, first: bool = False) -> ApplyResult:
        """Apply `writes`; if the writer raises (a bug, a malformed item), split them in halves until
        the write that raises stands alone: only that one fails, with the exception as its reason."""
        try:
            return self.writers[name].apply(writes, deadline)
        except Exception as exc:  # a writer bug must park, not lose or crash the shard
            if first:
                log.exception("target %s: writer raised; isolating the writes that raise", name)
            if len(writes) == 1:
                return ApplyResult(failed=[(writes[0], f"writer error: {exc!r}")])
            half = len(writes) // 2
            result = self._isolate(name, writes[:half], deadline)
            result.merge(self._isolate(name, writes[half:], deadline))
            return result

    def _letter(self, store: str, reason: str, raw: RawRecord | None, change: Change | None = None) -> DeadLetter:
        raw = raw or RawRecord(b"", "")
        return DeadLetter(
            store=store,
            reason=reason,
            data=raw.data,
            sequence_number=raw.sequence_number,
            shard_id=raw.shard_id,
            parked_at=self.clock.now(),
            key_id=change.key_id if change else "",
            version=change.version.token() if change else "",
        )

    def _park(self, letters: Sequence[tuple[int, DeadLetter]], dedupe: bool = False,
              sink: DeadLetterSink | None = None) -> set[int]:
        """Park durably (into `sink`, else the pipeline's store); returns the record indexes that
        could NOT be parked (empty on success)."""
        store = sink if sink is not None else self.dead_letters
        if not letters:
            return set()
        unique: list[DeadLetter] = []
        seen: set[int] = set()
        for _, letter in letters:
            if dedupe and id(letter) in seen:
                continue
            seen.add(id(letter))
            unique.append(letter)
        try:
            until(self.clock, self.clock.monotonic() + 10.0, lambda: store.park(unique),
                  lambda exc: ErrorInfo("ParkFailed", 0, str(exc)), backoff=self.backoff, retry_on=WRITES,
                  exceptions=(ParkFailed,))
            return set()
        except RetryBudgetSpent as spent:
            log.critical("cannot park %d entries, nothing past them will be checkpointed: %s",
                         len(unique), spent.last.message)
            return {i for i, _ in letters}


def _plan_each(changes: Sequence[tuple[int, Change]], rules: Sequence[TargetRule]
               ) -> tuple[dict[str, TargetPlan], list[tuple[int, Change, str]]]:
    """Find the changes that fail to plan alone (returned with the exception's type), then plan the
    others together (coalesced as usual). If even that fails, every change is returned as failed."""
    good: list[tuple[int, Change]] = []
    bad: list[tuple[int, Change, str]] = []
    for index, change in changes:
        try:
            plan_batch([(index, change)], rules)
        except Exception as exc:  # noqa: BLE001 - this change alone is the defect: it is parked
            bad.append((index, change, type(exc).__name__))
        else:
            good.append((index, change))
    try:
        return plan_batch(good, rules), bad
    except Exception as exc:  # noqa: BLE001 - no change alone fails, only together: park them all
        return {rule.name: TargetPlan() for rule in rules}, bad + [(i, c, type(exc).__name__) for i, c in good]
