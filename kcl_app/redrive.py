"""Redrive: re-apply a target's parked changes through the fenced path.

Safe at any time and any number of times: each parked change is applied with its original
version, so one that a newer change has superseded is a stale no-op. An entry is removed from
the store only once it is settled (applied, stale, duplicate, or parked again with a fresh
reason, in which case the new entry replaces it). Entries are replayed in batches; the entries of a
batch that are left unsettled (their re-parking failed, or the batch raised) are tried again one by
one, so that one entry's failure never keeps the others in the store. A settled entry of that batch
is counted once per pass that settled or re-parked it.

Replaying an old change is only safe while the fence still remembers every newer change of its
key. A delete's tombstone (the ledger's in `exact` mode, the tombstone table's in `inline` mode)
lives for the tombstone TTL; once it has expired, a
replayed older put would re-create an item the source has deleted. So an entry older than the
target's tombstone TTL is not replayed: its key is settled from the source's current item through
the verifier's fenced repair (`reread`).

A change that fails again is parked again as a further attempt of its entry: it keeps the entry's
first parked time, its attempt count goes up by one, and the report counts it as `reparked` (not
as removed). `dry_run` replays nothing and touches neither the store nor the target: each entry is
classified (would apply, would skip as stale, would re-read from the source, would be left, would
park again as undecodable) from a consistent read of the target's fence.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from kcl_app.core.attrs import Item
from kcl_app.core.errors import PoisonRecord
from kcl_app.core.records import RawRecord, decode
from kcl_app.core.versions import Precision, Version
from kcl_app.pipeline import BatchResult, Pipeline
from kcl_app.ports import Clock, DeadLetter, DeadLetterSink, Metrics

log = logging.getLogger("tablesync.redrive")

# The source's timestamp and this machine's clock may disagree a little: re-read a little early.
CLOCK_SKEW_SECONDS = 600.0


@dataclass
class RedriveReport:
    target: str
    read: int = 0
    applied: int = 0
    stale: int = 0
    reread: int = 0
    left_too_old: int = 0
    still_failing: int = 0
    removed: int = 0
    reparked: int = 0  # failed again: the entry was parked again (first time kept, one more attempt)
    unreadable: int = 0  # entries the store could not parse: skipped, kept, and named in `skipped`
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reread:
    """Settles an entry from the source instead of replaying it, when replaying is no longer safe.

    `repair(key)` makes the target hold the source's current item for `key` (fenced), returning
    "repaired", "superseded" (a newer change got there first: settled too) or "failed"; None
    leaves such entries in the store (the stream-wide stores, whose records concern every target:
    `verify --repair` or a backfill settles their keys). `max_age_seconds` None means every entry
    is re-read."""

    repair: Callable[[Item], str] | None
    clock: Clock
    max_age_seconds: float | None
    precision: Precision = "auto"

    def key_to_reread(self, raw: RawRecord) -> Item | None:
        try:
            change = decode(raw, self.precision)
        except PoisonRecord:
            return None  # replayed: the pipeline parks it again with its reason
        if self.max_age_seconds is None:
            return change.key
        age = self.clock.now() - change.version.micros / 1e6
        return change.key if age >= self.max_age_seconds - CLOCK_SKEW_SECONDS else None


class _Attempts:
    """Wraps the sink the pipeline parks into, for the time of a redrive: an entry the pipeline parks
    again for a record being redriven becomes a further attempt of the entry it came from."""

    def __init__(self, inner: DeadLetterSink) -> None:
        self.inner = inner
        self.pending: dict[str, DeadLetter] = {}  # entry id -> the entry read, for this batch
        self.reparked: set[str] = set()  # entry ids parked again by this batch

    def park(self, entries: Sequence[DeadLetter]) -> None:
        again = []
        for entry in entries:
            earlier = self.pending.get(entry.entry_id)  # the same record, parked again in the same store
            if earlier is not None:
                entry = entry.reparked(entry.reason, entry.parked_at, earlier)
            again.append(entry)
        self.inner.park(again)
        self.reparked.update(e.entry_id for e in again)

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        return self.inner.read(store)

    def remove(self, store: str, handles: Sequence[str]) -> None:
        self.inner.remove(store, handles)


def redrive(pipeline: Pipeline, sink: DeadLetterSink, target: str, batch_size: int = 500,
            reread: Reread | None = None,
            progress: Callable[[RedriveReport], None] | None = None,
            stream_wide: bool = False, budget: float | None = None) -> RedriveReport:
    """Re-apply the entries of `target`'s store; `progress(report so far)` after each step.

    `stream_wide`: `target` is `_poison` or `_unmapped`, whose records go through the whole
    pipeline again (every target; those still undecodable or unmapped are parked anew).
    `budget` caps the targets' retry budget per batch (a probe is short)."""
    report = RedriveReport(target)
    batch: list[tuple[str, RawRecord]] = []
    attempts = _Attempts(getattr(pipeline, "dead_letters", sink))
    by_handle: dict[str, DeadLetter] = {}

    def run(entries: list[tuple[str, RawRecord]]) -> list[tuple[str, RawRecord]]:
        """Process `entries` together; remove the settled ones; return those left unsettled."""
        attempts.reparked.clear()
        attempts.pending.update((by_handle[h].entry_id, by_handle[h]) for h, _ in entries)
        try:
            result = _process(pipeline, attempts, [raw for _, raw in entries], None if stream_wide else [target],
                              budget)
        except Exception:  # the pipeline should not raise; if it does, nothing of this batch is settled
            log.exception("redrive %s: a batch of %d entries raised", target, len(entries))
            return entries
        finally:
            attempts.pending.clear()
        for counts in result.targets.values():
            report.applied += counts.applied
            report.stale += counts.stale + counts.duplicate + counts.coalesced
            report.still_failing += counts.parked
        if stream_wide:
            report.still_failing += result.poison + result.unmapped
        settled = [handle for i, (handle, _) in enumerate(entries) if i not in result.unsettled]
        sink.remove(target, settled)
        again = sum(1 for h in settled if by_handle[h].entry_id in attempts.reparked)
        report.reparked += again
        report.removed += len(settled) - again
        for handle, _ in entries:
            by_handle.pop(handle, None)
        return [entry for i, entry in enumerate(entries) if i in result.unsettled]

    def flush() -> None:
        if not batch:
            return
        left = run(list(batch))
        if left and len(batch) > 1:  # one entry's failure must not keep the others: each is tried alone
            left = [entry for one in left for entry in run([one])]
        if left:
            log.warning("redrive %s: %d entries could not be settled, kept for the next run", target, len(left))
        batch.clear()
        if progress is not None:
            progress(report)

    for handle, entry in sink.read(target):
        report.read += 1
        by_handle[handle] = entry
        raw = RawRecord(entry.data, entry.sequence_number, shard_id=entry.shard_id)
        key = reread.key_to_reread(raw) if reread else None
        if reread is not None and key is not None:
            flush()  # what came before this entry in the store lands first
            by_handle.pop(handle, None)
            if reread.repair is None:
                report.left_too_old += 1
            elif reread.repair(key) in ("repaired", "superseded"):
                report.reread += 1
                sink.remove(target, [handle])
                report.removed += 1
            else:
                report.still_failing += 1  # kept as it is, for the next run
            if progress is not None:
                progress(report)
            continue
        batch.append((handle, raw))
        if len(batch) >= batch_size:
            flush()
    flush()
    # entries the store could not parse (bad JSON or base64, missing or forged fields, a payload
    # pointer outside the configured bucket): the sink logged and kept each one; report them
    unreadable = getattr(sink, "unreadable", None)
    for handle, why in unreadable(target) if callable(unreadable) else []:
        report.unreadable += 1
        report.skipped.append(f"{handle}: {why}")
    log.info("redrive %s: read %d, applied %d, stale %d, re-read %d, left as too old %d, re-parked %d, "
             "still failing %d, removed %d, unreadable %d", target, report.read, report.applied, report.stale,
             report.reread, report.left_too_old, report.reparked, report.still_failing, report.removed,
             report.unreadable)
    return report


def _process(pipeline: Pipeline, sink: _Attempts, records: list[RawRecord], only: list[str] | None,
             budget: float | None = None) -> BatchResult:
    """`pipeline.process`, parking this batch into `sink` (the pipeline's own store, wrapped). The
    pipeline itself is not changed: the self-healing replays on the stream worker's own pipeline,
    whose live batches keep parking into the store meanwhile."""
    return pipeline.process(records, only=only, budget=budget, sink=sink)


# ----------------------------------------------------------------------------- dry run

Verdict = str  # "apply" | "stale" | "reread" | "left" | "poison" | "unknown"


@dataclass
class PlannedEntry:
    """What a redrive would do with one entry (`verdict`) and why (`detail`)."""

    handle: str
    entry_id: str
    key_id: str
    version: str
    attempts: int
    first_parked_at: float
    verdict: Verdict
    detail: str = ""


@dataclass
class DryRunReport:
    target: str
    read: int = 0
    would_apply: int = 0
    would_skip_stale: int = 0
    would_reread: int = 0
    would_leave: int = 0
    would_park_again: int = 0
    unknown: int = 0
    unreadable: int = 0
    entries: list[PlannedEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def dry_run(sink: DeadLetterSink, target: str, *, seen: Callable[[Item, str], Version | None] | None,
            reread: Reread | None = None, precision: Precision = "auto", max_listed: int = 1000) -> DryRunReport:
    """What `redrive` would do with each entry of `target`'s store, changing nothing.

    `seen(key, key_id)` is the version the target's fence holds for the key (None: never seen; the
    callable raises when the target cannot be read: the entry is then `unknown`). None as `seen`
    (a stream-wide store) classifies decodable entries as `unknown`: every target would decide."""
    report = DryRunReport(target)
    handles: list[str] = []
    try:
        for handle, entry in sink.read(target):
            handles.append(handle)
            report.read += 1
            raw = RawRecord(entry.data, entry.sequence_number, shard_id=entry.shard_id)
            verdict, detail = _classify(raw, seen, reread, precision)
            setattr(report, _COUNTERS[verdict], getattr(report, _COUNTERS[verdict]) + 1)
            if len(report.entries) < max_listed:
                report.entries.append(PlannedEntry(handle, entry.entry_id, entry.key_id, entry.version,
                                                   entry.attempts, entry.first_parked, verdict, detail))
    finally:
        release = getattr(sink, "release", None)
        if callable(release):
            release(target, handles)
    unreadable = getattr(sink, "unreadable", None)
    for handle, why in unreadable(target) if callable(unreadable) else []:
        report.unreadable += 1
        report.skipped.append(f"{handle}: {why}")
    return report


_COUNTERS = {"apply": "would_apply", "stale": "would_skip_stale", "reread": "would_reread",
             "left": "would_leave", "poison": "would_park_again", "unknown": "unknown"}


def _classify(raw: RawRecord, seen: Callable[[Item, str], Version | None] | None, reread: Reread | None,
              precision: Precision) -> tuple[Verdict, str]:
    try:
        change = decode(raw, precision)
    except PoisonRecord as exc:
        return "poison", f"undecodable: {exc}"
    if reread is not None and reread.key_to_reread(raw) is not None:
        if reread.repair is None:
            return "left", "older than the tombstone TTL: settle it with verify --repair or a backfill"
        return "reread", "older than the tombstone TTL: settled from the source's item"
    if seen is None:
        return "unknown", "replayed through every target"
    try:
        held = seen(change.key, change.key_id)
    except Exception as exc:  # the target cannot be read: a redrive would retry, then park again
        return "unknown", f"the target could not be read ({type(exc).__name__}: {exc})"
    if held is None or change.version > held:
        return "apply", "newer than what the target holds" if held else "the target has never seen this key"
    return "stale", "the target holds this version or a newer one"


# -- self-healing ---------------------------------------------------------------------------------
#
# Which process drains which entries, and why nothing is lost or harmfully applied twice:
#
# 1. Every shard process whose lane of a target is healthy runs `auto_redrive` for that target when
#    the target comes back after being open, and every heal interval while it stays healthy. It
#    drains the target's WHOLE store (entries of every shard, of earlier processes, of a worker that
#    is gone), because an entry's shard may no longer be leased by anyone (a closed parent shard).
# 2. Processes of one machine take turns: a non-blocking lock on a per-store file under `lock_dir`
#    lets one of them drain; the others skip that round. Across machines, the store's claim
#    semantics split the work: an SQS message received by one reader is invisible to the others
#    for its visibility timeout; a directory store belongs to one machine.
# 3. An entry is removed only once it is settled (applied, stale, duplicate, or parked again with
#    a fresh reason), exactly as a manual `tablesync redrive` does, which may run at the same time.
#    If two readers ever replay the same entry (a visibility timeout that ran out, a manual redrive
#    beside an automatic one), the fence makes the second a `duplicate`/`stale` no-op, and removing
#    an entry twice is harmless; an entry too old to replay is settled from the source's current
#    item (Reread), which is fenced too. So a duplicate can only cost a write, never a wrong item.
# 4. The pace is bounded (`rate` entries per second, the clock's sleep between batches), so that the
#    recovering target's live changes keep their lag.


class _Observed:
    """The sink as redrive sees it, noting the oldest `parked_at` it reads (for the metrics)."""

    def __init__(self, sink: DeadLetterSink, limit: int | None = None) -> None:
        self.sink = sink
        self.limit = limit
        self.oldest: float | None = None

    def park(self, entries: Sequence[DeadLetter]) -> None:
        self.sink.park(entries)

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        for n, (handle, entry) in enumerate(self.sink.read(store)):
            if self.limit is not None and n >= self.limit:
                return
            self.oldest = entry.parked_at if self.oldest is None else min(self.oldest, entry.parked_at)
            yield handle, entry

    def remove(self, store: str, handles: Sequence[str]) -> None:
        self.sink.remove(store, handles)

    def unreadable(self, store: str) -> list[tuple[str, str]]:
        skipped = getattr(self.sink, "unreadable", None)
        return list(skipped(store)) if callable(skipped) else []


class HostLock:
    """A non-blocking exclusive lock on `<lock_dir>/<name>.lock` (flock): one holder per machine."""

    def __init__(self, lock_dir: str, name: str) -> None:
        import hashlib

        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        digest = hashlib.sha256(name.encode("utf-8", "backslashreplace")).hexdigest()[:24]
        self.path = os.path.join(lock_dir, f"heal-{digest}.lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def auto_redrive(pipeline: Pipeline, sink: DeadLetterSink, target: str, *, clock: Clock, rate: float,
                 lock_dir: str, reread: Reread | None = None, metrics: Metrics | None = None,
                 lock_name: str | None = None, limit: int | None = None,
                 budget: float | None = None) -> RedriveReport | None:
    """Re-apply `target`'s parked entries at most `rate` entries per second (the self-healing entry
    point; see the notes above for who drains what). None when another process here holds the turn.
    `lock_name` names the store (e.g. the config file and target) for the per-machine turn;
    `limit` stops after that many entries and `budget` caps the retry budget (a probe of a target
    that may still be down)."""
    lock = HostLock(lock_dir, lock_name or f"{type(sink).__name__}:{target}")
    if not lock.acquire():
        return None
    try:
        started = clock.monotonic()
        batch_size = max(1, min(100, int(rate)))

        def pace(report: RedriveReport) -> None:
            wait = started + report.read / rate - clock.monotonic()
            if wait > 0:
                clock.sleep(wait)

        observed = _Observed(sink, limit)
        report = redrive(pipeline, observed, target, batch_size=batch_size, reread=reread, progress=pace,
                         budget=budget)
    finally:
        lock.release()
    if metrics is not None:
        depth = getattr(sink, "depth", None)
        counters: dict[str, float] = {"AutoRedriven": float(report.removed)}
        try:
            if callable(depth):
                counters["ParkedBacklog"] = float(depth(target))
        except Exception:  # noqa: BLE001 - a figure, never a reason to fail the heal
            log.debug("redrive %s: depth unknown", target, exc_info=True)
        if observed.oldest is not None:  # the oldest entry this round found, settled or not
            counters["OldestParkedAgeSeconds"] = max(0.0, clock.now() - observed.oldest)
        metrics.emit({"Target": target}, counters)
    if report.read:
        log.info("target %s: re-applied parked changes automatically: %s", target, report)
    return report
