"""Redrive: re-apply a target's parked changes through the fenced path.

Safe at any time and any number of times: each parked change is applied with its original
version, so one that a newer change has superseded is a stale no-op. An entry is removed from
the store only once it is settled (applied, stale, duplicate, or parked again with a fresh
reason, in which case the new entry replaces it). Entries are replayed in batches; the entries of a
batch that are left unsettled (their re-parking failed, or the batch raised) are tried again one by
one, so that one entry's failure never keeps the others in the store. A settled entry of that batch
is counted once per pass that settled or re-parked it.

Replaying an old change is only safe while the fence still remembers every newer change of its
key. In `exact` mode a delete's tombstone lives for the tombstone TTL; once it has expired, a
replayed older put would re-create an item the source has deleted. So an entry older than the
target's tombstone TTL is not replayed: its key is settled from the source's current item through
the verifier's fenced repair (`reread`). `inline` mode keeps no tombstones at all, so every entry
of an inline target is settled that way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kcl_app.core.attrs import Item
from kcl_app.core.errors import PoisonRecord
from kcl_app.core.records import RawRecord, decode
from kcl_app.core.versions import Precision
from kcl_app.pipeline import Pipeline
from kcl_app.ports import Clock, DeadLetterSink

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
    unreadable: int = 0  # entries the store could not parse: skipped, kept, and named in `skipped`
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reread:
    """Settles an entry from the source instead of replaying it, when replaying is no longer safe.

    `repair(key)` makes the target hold the source's current item for `key` (fenced), returning
    "repaired", "superseded" (a newer change got there first: settled too) or "failed"; None
    leaves such entries in the store (the stream-wide stores, whose records concern every target:
    `verify --repair` or a backfill settles their keys). `max_age_seconds` None means every entry
    is re-read (inline mode)."""

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


def redrive(pipeline: Pipeline, sink: DeadLetterSink, target: str, batch_size: int = 500,
            reread: Reread | None = None,
            progress: Callable[[RedriveReport], None] | None = None,
            stream_wide: bool = False) -> RedriveReport:
    """Re-apply the entries of `target`'s store; `progress(report so far)` after each step.

    `stream_wide`: `target` is `_poison` or `_unmapped`, whose records go through the whole
    pipeline again (every target; those still undecodable or unmapped are parked anew)."""
    report = RedriveReport(target)
    batch: list[tuple[str, RawRecord]] = []

    def run(entries: list[tuple[str, RawRecord]]) -> list[tuple[str, RawRecord]]:
        """Process `entries` together; remove the settled ones; return those left unsettled."""
        try:
            result = pipeline.process([raw for _, raw in entries], only=None if stream_wide else [target])
        except Exception:  # the pipeline should not raise; if it does, nothing of this batch is settled
            log.exception("redrive %s: a batch of %d entries raised", target, len(entries))
            return entries
        for counts in result.targets.values():
            report.applied += counts.applied
            report.stale += counts.stale + counts.duplicate + counts.coalesced
            report.still_failing += counts.parked
        if stream_wide:
            report.still_failing += result.poison + result.unmapped
        settled = [handle for i, (handle, _) in enumerate(entries) if i not in result.unsettled]
        sink.remove(target, settled)
        report.removed += len(settled)
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
        raw = RawRecord(entry.data, entry.sequence_number, shard_id=entry.shard_id)
        key = reread.key_to_reread(raw) if reread else None
        if reread is not None and key is not None:
            flush()  # what came before this entry in the store lands first
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
    log.info("redrive %s: %s", target, report)
    return report
