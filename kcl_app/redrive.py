"""Redrive: re-apply a target's parked changes through the fenced path.

Safe at any time and any number of times: each parked change is applied with its original
version, so one that a newer change has superseded is a stale no-op. An entry is removed from
the store only once it is settled (applied, stale, duplicate, or parked again with a fresh
reason, in which case the new entry replaces it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kcl_app.core.records import RawRecord
from kcl_app.pipeline import Pipeline
from kcl_app.ports import DeadLetterSink

log = logging.getLogger("tablesync.redrive")


@dataclass
class RedriveReport:
    target: str
    read: int = 0
    applied: int = 0
    stale: int = 0
    still_failing: int = 0
    removed: int = 0


def redrive(pipeline: Pipeline, sink: DeadLetterSink, target: str, batch_size: int = 500) -> RedriveReport:
    report = RedriveReport(target)
    batch: list[tuple[str, RawRecord]] = []

    def flush() -> None:
        if not batch:
            return
        records = [raw for _, raw in batch]
        result = pipeline.process(records, only=[target])
        counts = result.targets[target]
        report.applied += counts.applied
        report.stale += counts.stale + counts.duplicate + counts.coalesced
        report.still_failing += counts.parked
        settled = [handle for i, (handle, _) in enumerate(batch) if i <= result.checkpoint_index]
        sink.remove(target, settled)
        report.removed += len(settled)
        batch.clear()

    for handle, entry in sink.read(target):
        report.read += 1
        batch.append((handle, RawRecord(entry.data, entry.sequence_number, shard_id=entry.shard_id)))
        if len(batch) >= batch_size:
            flush()
    flush()
    log.info("redrive %s: %s", target, report)
    return report
