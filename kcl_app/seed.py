"""Seeding a target from a table export: no read units on the source, none of the scan's hours.

DynamoDB exports a table from its point-in-time-recovery data to S3 without reading the table;
ImportTable builds a new table from such an export without write units. A seed is the backfill with
the scan replaced by that snapshot, and the same precondition: the stream consumer reads from a
position P at or before the export time T (the command checks it before it requests the export, and
this module refuses an export whose T is earlier than that check).

Steps:

1. choose the way: a target table that does not exist is *imported*; an existing one is *written*.
   An import copies the source's items as they are, so it is refused for a target with a projection
   or a transform (create the table and seed it by writes), and, in `exact` mode, for a ledger that
   already holds rows (an earlier life of the target: delete the ledger first);
2. request the export (the source's state at T), wait for it, reporting progress;
3. (a) import: ImportTable from the export's data files, with the source's key schema, on-demand
   billing; wait; every exported item must be imported (ErrorCount 0). No ledger rows are written;
   (b) write: read the data files in parallel (gzipped DynamoDB JSON lines), shape each item as the
   stream path would (projection, transform) and write it through the target's fenced writer with
   the backfill's `NeverSeen` guard and the backfill's version (older than any stream change).

Why it converges (docs/backfill.md has the long form): every change of a key after P reaches the
target by the stream, whatever the order, and the fence keeps the newest. The export holds, for
each key, the state left by its last change before T. (b) writes that state only where the target
never saw the key, at a version every stream change beats: where the stream already wrote, the
stream's own later changes settle the key; elsewhere the export's state is the newest unless the
stream brings a newer one. (a) has the same effect without a ledger row: a key without a row is
"never seen", so any stream change beats the imported item, exactly as it beats a backfilled one,
and the ledger's row appears with the first change the stream applies. A change older than T that
is delivered after the import (P < change < T) may briefly replace the imported state by an older
one, but the key's last change before T is after P too, so it is delivered as well, and the fence
ends at it or at something newer. Changes the worker parked while the imported table did not exist
yet are re-applied by redrive through the same fence.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kcl_app.adapters.scan import TargetSpec, writer_for
from kcl_app.backfill import TokenBucket, UnseenWriter, _shape_all
from kcl_app.core.attrs import Item
from kcl_app.ports import (
    Clock,
    ExportProblem,
    ExportState,
    ImportState,
    KeyAttribute,
    TableExports,
    TableImports,
)

log = logging.getLogger("tablesync.seed")

Way = Literal["import", "write"]
BATCH_ITEMS = 100
FAILED_KEYS_KEPT = 100
PROGRESS_ITEMS = 50_000


class SeedRefused(ExportProblem):
    """The seed cannot start (or continue) safely; the message says what to do."""


@dataclass
class SeedReport:
    source_table: str
    target: str
    way: Way
    export_arn: str = ""
    export_time: float | None = None
    exported: int | None = None
    data_files: int = 0
    read: int = 0
    imported: int = 0
    written: int = 0
    skipped: int = 0
    filtered: int = 0
    failed: int = 0
    failed_keys: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.problem

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def is_identity(spec: TargetSpec) -> bool:
    """Whether the target holds the source's items unchanged (what an import can produce)."""
    rule = spec.rule
    return rule.include is None and not rule.exclude and rule.transform is None


def wait_for(what: str, clock: Clock, describe: Callable[[], Any], done: Callable[[Any], bool],
             say: Callable[[Any, float], str], progress: Callable[[str], None], *, timeout: float,
             poll: float) -> Any:
    """Poll `describe()` every `poll` seconds until `done(state)`, reporting each state; SeedRefused
    after `timeout` seconds (the export or import goes on in the service: its ARN is in the message)."""
    started = clock.monotonic()
    while True:
        state = describe()
        elapsed = clock.monotonic() - started
        progress(say(state, elapsed))
        if done(state):
            return state
        if elapsed + poll > timeout:
            raise SeedRefused(f"{what} not finished after {timeout:,.0f} s ({say(state, elapsed)}); it continues "
                              "in the service: rerun with a longer --timeout")
        clock.sleep(poll)


def export_snapshot(exports: TableExports, table: str, bucket: str, prefix: str, clock: Clock, *,
                    bucket_owner: str | None = None, stream_since: float | None = None,
                    timeout: float = 6 * 3600.0, poll: float = 10.0,
                    progress: Callable[[str], None] = lambda _line: None) -> ExportState:
    """Export `table` as of now and wait until the export is COMPLETED. Raises PitrDisabled,
    ExportProblem (failed export) or SeedRefused (export time before `stream_since`, timeout)."""
    started = exports.start(table, bucket, prefix, bucket_owner)
    progress(f"seed: export {started.arn} requested (snapshot of {table} to s3://{bucket}/{started.folder}/)")
    state: ExportState = wait_for(
        "export", clock, lambda: exports.describe(started), lambda s: s.status != "IN_PROGRESS",
        lambda s, t: f"seed: export {s.status.lower()} after {t:,.0f} s"
                     + (f", {s.items:,} items" if s.items is not None else ""),
        progress, timeout=timeout, poll=poll)
    if state.status != "COMPLETED":
        raise ExportProblem(f"export {state.arn} of {table} failed: {state.failure or 'no reason given'}")
    if state.export_time is None:
        raise ExportProblem(f"export {state.arn} states no ExportTime: cannot prove the stream covers what follows")
    if stream_since is not None and state.export_time < stream_since:
        raise SeedRefused(f"export {state.arn} is of {state.export_time:.3f}, before the stream consumer was "
                          f"checked ({stream_since:.3f}): changes in between could be missed; rerun")
    return state


def plan_way(imports: TableImports, spec: TargetSpec) -> Way:
    """Step 1: import into a missing table, write into an existing one; refuse an unsafe import."""
    if imports.exists(spec.table):
        return "write"
    if not is_identity(spec):
        raise SeedRefused(f"target {spec.name}: table {spec.table!r} does not exist and the target has a projection "
                          "or transform, which an import cannot apply; create the table (same key schema as the "
                          "source) and rerun to seed it by writes")
    if spec.mode == "exact" and spec.ledger_table and imports.exists(spec.ledger_table) \
            and imports.holds_items(spec.ledger_table):
        raise SeedRefused(f"target {spec.name}: ledger {spec.ledger_table!r} holds rows from an earlier life of "
                          f"table {spec.table!r}; an imported table must start with an empty ledger: delete the "
                          "ledger table (it is re-created) and rerun")
    return "import"


def seed(exports: TableExports, imports: TableImports, source_table: str, spec: TargetSpec, clock: Clock, *,
         bucket: str, prefix: str, bucket_owner: str | None = None, stream_since: float | None = None,
         parallel: int = 4, write_units_per_second: float | None = None, timeout: float = 6 * 3600.0,
         poll: float = 10.0, write_budget_seconds: float = 60.0,
         progress: Callable[[str], None] = lambda _line: None) -> SeedReport:
    """Seed `spec`'s table from an export of `source_table` (see the module's steps)."""
    started = clock.monotonic()
    way = plan_way(imports, spec)  # 1
    key = exports.key_schema(source_table)
    progress(f"seed: target {spec.name} ({spec.table}) will be {'imported' if way == 'import' else 'written'}")
    export = export_snapshot(exports, source_table, bucket, prefix, clock, bucket_owner=bucket_owner,  # 2
                             stream_since=stream_since, timeout=timeout, poll=poll, progress=progress)
    report = SeedReport(source_table, spec.name, way, export.arn, export.export_time, export.items)
    if way == "import":  # 3a
        _import(imports, export, spec, key, report, clock, bucket_owner, timeout, poll, progress)
    else:  # 3b
        _write(exports, export, source_table, spec, key, report, clock, parallel, write_units_per_second,
               write_budget_seconds, progress)
    report.elapsed_seconds = clock.monotonic() - started
    return report


def _import(imports: TableImports, export: ExportState, spec: TargetSpec, key: tuple[KeyAttribute, ...],
            report: SeedReport, clock: Clock, bucket_owner: str | None, timeout: float, poll: float,
            progress: Callable[[str], None]) -> None:
    started = imports.start(export, spec.table, key, bucket_owner)
    progress(f"seed: import {started.arn} into {spec.table} requested")
    state: ImportState = wait_for(
        "import", clock, lambda: imports.describe(started), lambda s: s.status not in ("IN_PROGRESS", "CANCELLING"),
        lambda s, t: f"seed: import {s.status.lower()} after {t:,.0f} s, {s.imported:,} items imported, "
                     f"{s.errors:,} errors", progress, timeout=timeout, poll=poll)
    report.read = state.processed
    report.imported = state.imported
    report.failed = state.errors
    if state.status != "COMPLETED":
        raise ExportProblem(f"import {state.arn} into {spec.table!r} ended {state.status}: "
                            f"{state.failure or 'no reason given'}")
    if export.items is not None and state.imported + state.errors < export.items:
        raise ExportProblem(f"import {state.arn} read {state.imported + state.errors:,} of the export's "
                            f"{export.items:,} items")


def _write(exports: TableExports, export: ExportState, source_table: str, spec: TargetSpec,
           key: tuple[KeyAttribute, ...], report: SeedReport, clock: Clock, parallel: int,
           write_units_per_second: float | None, budget: float, progress: Callable[[str], None]) -> None:
    files = exports.data_files(export)
    report.data_files = len(files)
    key_names = tuple(k.name for k in key)
    fenced = writer_for(spec, clock)
    writer = UnseenWriter(spec, fenced, clock, TokenBucket(write_units_per_second, clock), budget)
    lock = threading.Lock()
    stop = threading.Event()

    def account(items: Sequence[Item], bad: list[tuple[str, str]]) -> None:
        shaped, filtered, failed = _shape_all(spec, source_table, key_names, items)
        outcome = writer.write(shaped)
        failed = bad + failed + outcome.failed
        with lock:
            before = report.read
            report.read += len(items) + len(bad)
            report.written += outcome.written
            report.skipped += outcome.skipped
            report.filtered += filtered
            report.failed += len(failed)
            room = FAILED_KEYS_KEPT - len(report.failed_keys)
            report.failed_keys += [k for k, _ in failed[:max(0, room)]]
            for where, why in failed[:3]:
                log.error("target %s: %s: %s", spec.name, where, why)
            if report.read // PROGRESS_ITEMS != before // PROGRESS_ITEMS:
                progress(f"seed: {report.read:,} items read, written {report.written:,}, skipped "
                         f"{report.skipped:,}, failed {report.failed:,}")

    def run_file(data_file: str) -> None:
        batch: list[Item] = []
        bad: list[tuple[str, str]] = []
        for line in exports.lines(export, data_file):
            if stop.is_set():
                return
            if line.item is None:
                bad.append((line.where, f"not an item: {line.problem}"))
            elif any(n not in line.item for n in key_names):
                bad.append((line.where, f"item lacks the key attribute(s) {list(key_names)}"))
            else:
                batch.append(line.item)
            if len(batch) + len(bad) >= BATCH_ITEMS:
                account(batch, bad)
                batch, bad = [], []
        if batch or bad:
            account(batch, bad)
        with lock:
            done[0] += 1
            progress(f"seed: {done[0]}/{len(files)} data files, {report.read:,} items read, written "
                     f"{report.written:,}, skipped {report.skipped:,}, failed {report.failed:,}")

    done = [0]
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max(1, min(parallel, len(files) or 1)), thread_name_prefix="ts-seed") as pool:
        for future in [pool.submit(run_file, f) for f in files]:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised once every file stopped
                stop.set()
                errors.append(exc)
    if spec.writer is None:
        getattr(fenced, "close", lambda: None)()
    if errors:
        raise errors[0]
    if export.items is not None and report.read != export.items:
        report.problem = (f"the data files of export {export.arn} hold {report.read:,} lines, its description "
                          f"{export.items:,} items: the export is incomplete or altered; rerun the seed")
        log.error("target %s: %s", spec.name, report.problem)
