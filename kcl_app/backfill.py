"""Online backfill: copy a source table into its targets while the stream keeps replicating.

The rule (DBLog's, enforced by the target, no locks and no clock comparison): the stream consumer
starts at a position *before* the scan begins; a scanned item is written to a target only where
that target has never seen the key. In `exact` mode "never seen" means no ledger row (no version,
no tombstone); the ledger row written by the backfill carries `Version(0, "backfill")`, older than
any stream change, so every change the stream delivers later still wins. In `inline` mode it
means no item and no delete tombstone (kcl_app/adapters/inline.py).

Steps of one page (one segment of a parallel Scan, `ConsistentRead=True`):

1. scan the page (after taking its read units from the read bucket);
2. shape each item for each target (projection, transform), as the stream path would;
3. write, per target, through its fenced writer with the `NeverSeen` guard (exact: transactions of up
   to 50 ledger Put + item Put pairs; inline: one tombstone ConditionCheck + item Put per item); a write whose
   condition failed is *skipped: the stream already had it*;
4. save the segment's progress (LastEvaluatedKey, counts) atomically in the state file;
5. report progress; a rerun resumes every unfinished segment from its saved key.

A page whose writes were done but whose progress was not saved is scanned again on resume: its
writes are conditional, so a second pass only adds skips.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kcl_app.adapters.scan import (
    BACKFILL_VERSION,
    TargetSpec,
    backfill_change,
    key_names_of,
    scan_pages,
    writer_for,
)
from kcl_app.adapters.state_file import write_json_atomically
from kcl_app.core.attrs import MAX_ITEM_BYTES, Item, item_from_wire, item_size, item_to_wire
from kcl_app.core.errors import ReplicationError, TransformFailed
from kcl_app.core.fence import NEVER_SEEN
from kcl_app.core.plan import Write
from kcl_app.ports import Clock, GuardedWriter

log = logging.getLogger("tablesync.backfill")

MAX_ACTIONS = 100
STATE_FORMAT = 1


class TokenBucket:
    """Rate limit in units per second (None: unlimited). Thread-safe; waits on the injected clock.

    `take(n)` may overdraw: the caller pays the debt by waiting, so the long-run rate holds even
    for requests larger than the bucket."""

    def __init__(self, rate: float | None, clock: Clock, burst: float | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.clock = clock
        self.capacity = burst if burst is not None else (rate or 0.0)
        self.tokens = self.capacity
        self._last = clock.monotonic()
        self._lock = threading.Lock()
        self.waited = 0.0

    def take(self, units: float) -> None:
        if not self.rate or units <= 0:
            return
        with self._lock:
            now = self.clock.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
            self._last = now
            self.tokens -= units
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
            self.waited += wait
        if wait > 0:
            self.clock.sleep(wait)


def read_units(items: Sequence[Item]) -> float:
    """Strongly consistent Scan cost: one unit per 4 KB of the page."""
    return float(max(1, math.ceil(sum(item_size(i) for i in items) / 4096)))


# -- progress state ---------------------------------------------------------------------------
@dataclass
class SegmentState:
    segment: int
    last_key: dict[str, Any] | None = None  # wire form (binary keys as base64)
    done: bool = False
    pages: int = 0
    scanned: int = 0
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    failed_keys: dict[str, list[str]] = field(default_factory=dict)


class StateMismatch(ReplicationError):
    """A state file exists for another run (other segment count or targets)."""


class BackfillState:
    """Per-segment progress in a JSON file, replaced atomically (write, fsync, rename)."""

    def __init__(self, path: Path, source_table: str, targets: Sequence[str], total: int) -> None:
        self.path = path
        self.source_table = source_table
        self.targets = sorted(targets)
        self.total = total
        self.segments = [SegmentState(i) for i in range(total)]
        self.resumed = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], source_table: str, targets: Sequence[str],
             total: int, restart: bool = False) -> BackfillState:
        """The saved progress of this backfill (resumed), or a fresh one; `restart` ignores what is
        saved (it is replaced at the first saved page)."""
        path = Path(state_dir) / f"backfill-{source_table}--{'+'.join(sorted(targets))}.json"
        state = cls(path, source_table, targets, total)
        if path.exists() and not restart:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("total_segments") != total or doc.get("targets") != state.targets:
                raise StateMismatch(
                    f"{path} belongs to a backfill with {doc.get('total_segments')} segments and targets "
                    f"{doc.get('targets')}; rerun with those, or pass --restart to start over")
            state.segments = [SegmentState(**s) for s in doc["segments"]]
            state.resumed = True
        return state

    def save(self) -> None:
        with self._lock:
            doc = {"format": STATE_FORMAT, "source_table": self.source_table, "targets": self.targets,
                   "total_segments": self.total, "segments": [asdict(s) for s in self.segments]}
            write_json_atomically(self.path, doc)


# -- "write only if never seen" ---------------------------------------------------------------
@dataclass
class WriteOutcome:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key id, reason)


class UnseenWriter:
    """Writes items into one target only where the key was never seen (the backfill's hook).

    Through the target's fenced writer with the `NeverSeen` guard (the writer owns the conditions);
    this class adds the write-unit budget and the chunking of one page."""

    def __init__(self, spec: TargetSpec, writer: GuardedWriter, clock: Clock,
                 bucket: TokenBucket | None = None, budget_seconds: float = 60.0) -> None:
        self.spec = spec
        self.writer = writer
        self.clock = clock
        self.bucket = bucket or TokenBucket(None, clock)
        self.budget = budget_seconds
        self.per_call = MAX_ACTIONS // (2 if spec.mode == "exact" else 1)

    def _units(self, writes: Sequence[Write]) -> float:
        # a transaction in both modes: 2 units per KB of the item, 2 for the ledger row (exact) or for the
        # ConditionCheck of the tombstone (inline)
        return sum(2.0 * max(1, math.ceil(item_size(w.item or {}) / 1024)) + 2.0 for w in writes)

    def write(self, writes: Sequence[Write]) -> WriteOutcome:
        out = WriteOutcome()
        for start in range(0, len(writes), self.per_call):
            chunk = list(writes[start:start + self.per_call])
            self.bucket.take(self._units(chunk))
            result = self.writer.apply(chunk, self.clock.monotonic() + self.budget, NEVER_SEEN)
            out.written += len(result.applied)
            out.skipped += len(result.stale) + len(result.duplicate)  # the stream (or a pass) had the key
            out.failed += [(w.key_id, why) for w, why in result.failed]
        return out


# -- the backfill -----------------------------------------------------------------------------
@dataclass
class BackfillReport:
    source_table: str
    scanned: int = 0
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    failed_keys: dict[str, list[str]] = field(default_factory=dict)
    segments: int = 0
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return not any(self.failed.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class Progress:
    scanned: int
    estimated_total: int
    elapsed: float
    written: int
    skipped: int
    failed: int

    @property
    def rate(self) -> float:
        return self.scanned / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.rate <= 0 or self.estimated_total <= self.scanned:
            return None
        return (self.estimated_total - self.scanned) / self.rate


class Stop(Exception):
    """Raised in the other segments once one segment failed, so the run ends at a page boundary."""


class Interrupted(ReplicationError):
    """Ctrl-C: every segment stopped at a page boundary; `report` is what was done (all of it saved)."""

    def __init__(self, report: BackfillReport, state_path: Path) -> None:
        super().__init__(f"interrupted; progress saved in {state_path}")
        self.report = report
        self.state_path = state_path


def backfill(
    source: Any,
    source_table: str,
    targets: Sequence[TargetSpec],
    state: BackfillState,
    clock: Clock,
    *,
    read_units_per_second: float | None = None,
    write_units_per_second: float | None = None,
    page_limit: int | None = None,
    on_page: Callable[[int, int], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_every: float = 5.0,
    write_budget_seconds: float = 60.0,
) -> BackfillReport:
    """Scan `source_table` in `state.total` parallel segments and write it into `targets`.

    Resumes from `state` (finished segments are skipped). `on_page(segment, pages_done)` runs after
    each page's progress is saved; an exception there (or anywhere in a segment) stops every
    segment at its next page boundary and is re-raised, with all progress up to it saved."""
    key_names = key_names_of(source, source_table)
    reads = TokenBucket(read_units_per_second, clock)
    writes = TokenBucket(write_units_per_second, clock)
    fenced = {t.name: writer_for(t, clock) for t in targets}
    writers = {t.name: UnseenWriter(t, fenced[t.name], clock, writes, write_budget_seconds) for t in targets}
    try:
        estimate = int(source.describe_table(TableName=source_table)["Table"].get("ItemCount", 0))
    except Exception:  # noqa: BLE001 - the estimate only feeds the progress report
        estimate = 0
    already = sum(s.scanned for s in state.segments)
    started = clock.monotonic()
    last_report = [started]
    stop = threading.Event()
    lock = threading.Lock()

    def report_progress(force: bool = False) -> None:
        if progress is None:
            return
        now = clock.monotonic()
        with lock:
            if not force and now - last_report[0] < progress_every:
                return
            last_report[0] = now
        segs = state.segments
        progress(Progress(sum(s.scanned for s in segs) - already, max(0, estimate - already), now - started,
                          sum(sum(s.written.values()) for s in segs), sum(sum(s.skipped.values()) for s in segs),
                          sum(sum(s.failed.values()) for s in segs)))

    def run_segment(seg: SegmentState) -> None:
        start = item_from_wire(seg.last_key) if seg.last_key else None
        for items, last in scan_pages(clock, source, source_table, seg.segment, state.total,
                                      start_key=start, limit=page_limit):
            if stop.is_set():
                raise Stop()
            reads.take(read_units(items))  # 1 the page's read units (paid after the read)
            for spec in targets:  # 2 shape, 3 write where never seen
                shaped, filtered, failed = _shape_all(spec, source_table, key_names, items)
                outcome = writers[spec.name].write(shaped)
                failed += outcome.failed
                _add(seg.written, spec.name, outcome.written)
                _add(seg.skipped, spec.name, outcome.skipped)
                _add(seg.filtered, spec.name, filtered)
                _add(seg.failed, spec.name, len(failed))
                if failed:
                    log.error("target %s: %d items failed, first %s: %s", spec.name, len(failed), *failed[0])
                    seg.failed_keys.setdefault(spec.name, []).extend(k for k, _ in failed[:100])
            seg.pages += 1  # 4 progress, saved atomically
            seg.scanned += len(items)
            seg.last_key = item_to_wire(last) if last else None
            seg.done = last is None
            state.save()
            if on_page:
                on_page(seg.segment, seg.pages)
            report_progress()  # 5
        seg.done = True
        state.save()

    todo = [s for s in state.segments if not s.done]
    if state.resumed:
        log.info("resuming backfill of %s: %d of %d segments left", source_table, len(todo), state.total)
    first_error: list[BaseException] = []
    interrupted = False
    with ThreadPoolExecutor(max(1, len(todo)), thread_name_prefix="ts-backfill") as pool:
        futures = [pool.submit(run_segment, s) for s in todo]
        for future in futures:
            try:
                future.result()
            except Stop:
                continue
            except KeyboardInterrupt:  # Ctrl-C reaches this (main) thread: stop the segments, say so now
                stop.set()
                interrupted = True
                running = sum(not f.done() for f in futures)
                log.warning("interrupted: stopping %d running segment(s) at their next page boundary; "
                            "what is done is saved", running)
                for other in futures:  # each ends at its page boundary (raises Stop) or has ended;
                    with contextlib.suppress(Exception):  # an unsaved page is scanned again on resume
                        other.result()
                break
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after every segment stopped
                stop.set()
                first_error.append(exc)
    for t in targets:
        if t.writer is None:  # built here: closed here
            getattr(fenced[t.name], "close", lambda: None)()
    if interrupted:
        raise Interrupted(_report(source_table, state), state.path)
    if first_error:
        raise first_error[0]
    report_progress(force=True)
    return _report(source_table, state)


def _shape_all(spec: TargetSpec, source_table: str, key_names: Sequence[str],
               items: Sequence[Item]) -> tuple[list[Write], int, list[tuple[str, str]]]:
    shaped: list[Write] = []
    filtered = 0
    failed: list[tuple[str, str]] = []
    for item in items:
        change = backfill_change(source_table, key_names, item)
        try:
            out = spec.rule.shape(change)
        except TransformFailed as exc:  # its reason names attributes, never values
            failed.append((change.key_id, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - never stop the scan; the message may quote a value
            failed.append((change.key_id, f"shaping failed: {type(exc).__name__}"))
            continue
        if out is None:
            filtered += 1
        elif item_size(out) > MAX_ITEM_BYTES:
            failed.append((change.key_id, "item exceeds 400 KB after projection/transform"))
        else:
            shaped.append(Write(spec.name, change.key, change.key_id, BACKFILL_VERSION, out, change, ()))
    return shaped, filtered, failed


def _add(counts: dict[str, int], name: str, n: int) -> None:
    counts[name] = counts.get(name, 0) + n


def _report(source_table: str, state: BackfillState) -> BackfillReport:
    report = BackfillReport(source_table, segments=state.total, resumed=state.resumed)
    for seg in state.segments:
        report.scanned += seg.scanned
        for attr in ("written", "skipped", "filtered", "failed"):
            for name, n in getattr(seg, attr).items():
                _add(getattr(report, attr), name, n)
        for name, keys in seg.failed_keys.items():
            report.failed_keys.setdefault(name, []).extend(keys)
    return report

