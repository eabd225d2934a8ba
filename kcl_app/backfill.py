"""Online backfill: copy a source table into its targets while the stream keeps replicating.

The rule (DBLog's, enforced by the target, no locks and no clock comparison): the stream consumer
starts at a position *before* the scan begins; a scanned item is written to a target only where
that target has never seen the key. In `exact` mode "never seen" means no ledger row (no version,
no tombstone); the ledger row written by the backfill carries `Version(0, "backfill")`, older than
any stream change, so every change the stream delivers later still wins. In `inline` mode it
means no item (`attribute_not_exists(<partition key>)`), see docs/backfill.md for what that
weaker test cannot see.

Steps of one page (one segment of a parallel Scan, `ConsistentRead=True`):

1. scan the page (after taking its read units from the read bucket);
2. shape each item for each target (projection, transform), as the stream path would;
3. write, per target, transactions of up to 50 (ledger Put + item Put) pairs, or 100 inline Puts;
   a cancelled entry whose condition failed is *skipped: the stream already had it*;
4. save the segment's progress (LastEvaluatedKey, counts) atomically in the state file;
5. report progress; a rerun resumes every unfinished segment from its saved key.

A page whose writes were done but whose progress was not saved is scanned again on resume: its
writes are conditional, so a second pass only adds skips.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.ledger_writer import LEDGER_DELETED, LEDGER_KEY, LEDGER_VERSION
from kcl_app.adapters.retry import Backoff, classify, error_code
from kcl_app.config import Config, TargetConfig
from kcl_app.core.attrs import MAX_ITEM_BYTES, Item, item_from_wire, item_size, item_to_wire, key_id, key_of
from kcl_app.core.errors import ReplicationError
from kcl_app.core.plan import TargetRule
from kcl_app.core.records import Change
from kcl_app.core.versions import Version
from kcl_app.ports import Clock

log = logging.getLogger("tablesync.backfill")

BACKFILL_VERSION = Version(0, "backfill")
MAX_ACTIONS = 100
STATE_FORMAT = 1
Mode = Literal["exact", "inline"]


# -- shared by backfill and verify ------------------------------------------------------------
@dataclass(frozen=True)
class TargetSpec:
    """One target as the scanners see it: its rule, a client for its region/account, its tables."""

    rule: TargetRule
    client: Any
    table: str
    mode: Mode = "exact"
    ledger_table: str | None = None
    version_attribute: str = "_tablesync_version"
    tombstone_ttl_seconds: float = 48 * 3600.0

    @property
    def name(self) -> str:
        return self.rule.name

    @classmethod
    def from_config(cls, target: TargetConfig, config: Config, client: Any) -> TargetSpec:
        return cls(target.rule(), client, target.table, target.mode,
                   target.ledger if target.mode == "exact" else None,
                   target.version_attribute, config.tombstone_ttl_seconds)


class SourceProblem(ReplicationError):
    """The source table cannot be read as needed (missing, no key schema)."""


def key_names_of(client: Any, table: str) -> tuple[str, ...]:
    """The key attribute names of a table, partition key first."""
    try:
        schema = client.describe_table(TableName=table)["Table"]["KeySchema"]
    except ClientError as exc:
        raise SourceProblem(f"cannot describe table {table!r}: {error_code(exc)}") from exc
    ordered = sorted(schema, key=lambda k: 0 if k["KeyType"] == "HASH" else 1)
    return tuple(k["AttributeName"] for k in ordered)


def shape_item(rule: TargetRule, source_table: str, key_names: Sequence[str], item: Item) -> Item | None:
    """What `rule` makes of a source item, exactly as the stream path would (projection, transform).

    None: the target must not hold the key. Raises ValueError (or what the transform raises)."""
    key = key_of(item, key_names)
    change = Change(table=source_table, event="INSERT", key=key, key_id=key_id(key), new_image=item,
                    version=BACKFILL_VERSION, ttl_delete=False, event_id="backfill")
    return rule.shape(change)


def call(clock: Clock, fn: Callable[..., Any], budget: float = 60.0, backoff: Backoff | None = None,
         **kwargs: Any) -> Any:
    """Call a read API, retrying throttling and 5xx until `budget` seconds pass; the last error is raised."""
    backoff = backoff or Backoff(base=0.05, cap=2.0)
    deadline = clock.monotonic() + budget
    attempt = 0
    while True:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            if classify(exc) != "transient" or not backoff.wait(clock, attempt, deadline):
                raise
            attempt += 1


def scan_pages(clock: Clock, client: Any, table: str, segment: int, total: int, *,
               start_key: Item | None = None, limit: int | None = None,
               consistent: bool = True) -> Iterator[tuple[list[Item], Item | None]]:
    """Yield (items, LastEvaluatedKey or None) for one segment of a parallel Scan."""
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": consistent}
    if total > 1:
        kwargs.update(Segment=segment, TotalSegments=total)
    if limit:
        kwargs["Limit"] = limit
    if start_key:
        kwargs["ExclusiveStartKey"] = start_key
    while True:
        page = call(clock, client.scan, **kwargs)
        last = page.get("LastEvaluatedKey")
        yield page.get("Items", []), last
        if not last:
            return
        kwargs["ExclusiveStartKey"] = last


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
             total: int) -> BackfillState:
        path = Path(state_dir) / f"backfill-{source_table}--{'+'.join(sorted(targets))}.json"
        state = cls(path, source_table, targets, total)
        if path.exists():
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("total_segments") != total or doc.get("targets") != state.targets:
                raise StateMismatch(
                    f"{path} belongs to a backfill with {doc.get('total_segments')} segments and targets "
                    f"{doc.get('targets')}; rerun with those, or delete the file to start over")
            state.segments = [SegmentState(**s) for s in doc["segments"]]
            state.resumed = True
        return state

    def save(self) -> None:
        with self._lock:
            doc = {"format": STATE_FORMAT, "source_table": self.source_table, "targets": self.targets,
                   "total_segments": self.total, "segments": [asdict(s) for s in self.segments]}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)


# -- "write only if never seen" ---------------------------------------------------------------
@dataclass
class WriteOutcome:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key id, reason)


class UnseenWriter:
    """Writes items into one target only where the key was never seen (the backfill's hook).

    exact: (ledger Put `{k, v: 0#backfill, d: false}` if `attribute_not_exists(k)`, item Put) pairs.
    inline: item Put (version attribute = the backfill token) if `attribute_not_exists(<pk>)`."""

    def __init__(self, spec: TargetSpec, key_names: Sequence[str], clock: Clock,
                 bucket: TokenBucket | None = None, budget_seconds: float = 60.0,
                 backoff: Backoff | None = None) -> None:
        self.spec = spec
        self.key_names = tuple(key_names)
        self.clock = clock
        self.bucket = bucket or TokenBucket(None, clock)
        self.budget = budget_seconds
        self.backoff = backoff or Backoff(base=0.05, cap=2.0)
        self.stride = 2 if spec.mode == "exact" else 1

    def _actions(self, item: Item) -> list[dict[str, Any]]:
        token = {"S": BACKFILL_VERSION.token()}
        if self.spec.mode == "inline":
            return [{"Put": {"TableName": self.spec.table, "Item": {**item, self.spec.version_attribute: token},
                             "ConditionExpression": "attribute_not_exists(#pk)",
                             "ExpressionAttributeNames": {"#pk": self.key_names[0]}}}]
        row = {LEDGER_KEY: {"S": key_id(key_of(item, self.key_names))}, LEDGER_VERSION: token,
               LEDGER_DELETED: {"BOOL": False}}
        return [{"Put": {"TableName": self.spec.ledger_table, "Item": row,
                         "ConditionExpression": "attribute_not_exists(#k)",
                         "ExpressionAttributeNames": {"#k": LEDGER_KEY}}},
                {"Put": {"TableName": self.spec.table, "Item": item}}]

    def _units(self, items: Sequence[Item]) -> float:
        ledger = 2.0 if self.spec.mode == "exact" else 0.0  # transactional writes cost 2 units per KB
        return sum(2.0 * max(1, math.ceil(item_size(i) / 1024)) + ledger for i in items)

    def write(self, items: Sequence[Item]) -> WriteOutcome:
        out = WriteOutcome()
        per_call = MAX_ACTIONS // self.stride
        for start in range(0, len(items), per_call):
            self._write_chunk(list(items[start:start + per_call]), out)
        return out

    def _write_chunk(self, pending: list[Item], out: WriteOutcome) -> None:
        self.bucket.take(self._units(pending))
        deadline = self.clock.monotonic() + self.budget
        attempt = 0
        while pending:
            try:
                self.spec.client.transact_write_items(
                    TransactItems=[a for i in pending for a in self._actions(i)])
                out.written += len(pending)
                return
            except ClientError as exc:
                code = error_code(exc)
                reasons = exc.response.get("CancellationReasons") or []
                if code == "TransactionCanceledException" and len(reasons) == self.stride * len(pending):
                    pending, pause = self._sort(pending, reasons, out)
                    if not pause:
                        continue
                elif classify(exc) == "invalid":
                    if len(pending) == 1:
                        out.failed.append((self._kid(pending[0]), f"{code}: {exc}"))
                        return
                    half = len(pending) // 2
                    self._write_chunk(pending[:half], out)
                    self._write_chunk(pending[half:], out)
                    return
                last = f"{code}: {exc}"
            except BotoCoreError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if pending and not self.backoff.wait(self.clock, attempt, deadline):
                out.failed += [(self._kid(i), f"retry budget spent; last error {last}") for i in pending]
                return
            attempt += 1

    def _sort(self, pending: list[Item], reasons: list[dict[str, Any]],
              out: WriteOutcome) -> tuple[list[Item], bool]:
        retry: list[Item] = []
        pause = False
        for n, item in enumerate(pending):
            codes = [reasons[n * self.stride + j].get("Code", "None") for j in range(self.stride)]
            if codes[0] == "ConditionalCheckFailed":
                out.skipped += 1  # the stream (or an earlier pass) already had this key
            elif "ValidationError" in codes:
                out.failed.append((self._kid(item), f"ValidationError: {reasons[n * self.stride]}"))
            else:
                pause = pause or any(c not in ("None", "") for c in codes)
                retry.append(item)
        return retry, pause or len(retry) == len(pending)

    def _kid(self, item: Item) -> str:
        return key_id(key_of(item, self.key_names))


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
) -> BackfillReport:
    """Scan `source_table` in `state.total` parallel segments and write it into `targets`.

    Resumes from `state` (finished segments are skipped). `on_page(segment, pages_done)` runs after
    each page's progress is saved; an exception there (or anywhere in a segment) stops every
    segment at its next page boundary and is re-raised, with all progress up to it saved."""
    key_names = key_names_of(source, source_table)
    reads = TokenBucket(read_units_per_second, clock)
    writes = TokenBucket(write_units_per_second, clock)
    writers = {t.name: UnseenWriter(t, key_names, clock, writes) for t in targets}
    try:
        estimate = int(source.describe_table(TableName=source_table)["Table"].get("ItemCount", 0))
    except ClientError:
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
    with ThreadPoolExecutor(max(1, len(todo)), thread_name_prefix="ts-backfill") as pool:
        futures = [pool.submit(run_segment, s) for s in todo]
        for future in futures:
            try:
                future.result()
            except Stop:
                continue
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after every segment stopped
                stop.set()
                first_error.append(exc)
    if first_error:
        raise first_error[0]
    report_progress(force=True)
    return _report(source_table, state)


def _shape_all(spec: TargetSpec, source_table: str, key_names: Sequence[str],
               items: Sequence[Item]) -> tuple[list[Item], int, list[tuple[str, str]]]:
    shaped: list[Item] = []
    filtered = 0
    failed: list[tuple[str, str]] = []
    for item in items:
        try:
            out = shape_item(spec.rule, source_table, key_names, item)
        except Exception as exc:  # noqa: BLE001 - user transform: report, never stop the scan
            failed.append((key_id(key_of(item, key_names)), f"transform failed: {exc!r}"))
            continue
        if out is None:
            filtered += 1
        elif item_size(out) > MAX_ITEM_BYTES:
            failed.append((key_id(key_of(item, key_names)), "item exceeds 400 KB after projection/transform"))
        else:
            shaped.append(out)
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

