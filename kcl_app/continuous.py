"""Continuous verification: walk the source's keyspace in passes, compare every target both ways,
repair through the fenced path, and account for the share of the keyspace verified (the SLO).

A *pass* is one full verification of one source table against its targets, split in phases, each
a parallel Scan in `segments` segments: phase ``source`` (source -> targets: missing, different)
then one phase ``target:<name>`` per target (that target -> source: extra items). Steps of one page:

1. scan the page from the segment's saved position (consistent reads);
2. take its read units from the table's read bucket (and the lookups' units from the other side's);
3. compare it (:meth:`kcl_app.verify.Verifier.check_source_page` / ``check_target_page``): a
   mismatch is re-read on both sides before it counts, so a change in flight is not a divergence;
4. with repair on, repair what was found through the fenced path (``StillAt``: a change that lands
   in between wins, counted superseded; the repair's version sorts just above what the target had
   seen, so any later change of the source still wins over it — a change made during the pass is
   never "repaired" to an older state);
5. save the segment's position and the pass's counts atomically in the state file (a restart
   resumes the pass there: a page checked but not saved is checked again, which is harmless);
6. record the page's range in the coverage log and emit the metrics (at most every `emit_every`).

Pacing: every table's reads go through a token bucket whose rate is the smaller of
`read_units_per_second` and `capacity_fraction` of the table's read capacity (DescribeTable at each
pass start: provisioned ReadCapacityUnits; on demand its MaxReadRequestUnits, or the documented
initial on-demand read throughput when the table sets no maximum). A pass starts every `period`
seconds; one that takes longer is *behind* (PassBehindSeconds > 0) and the next starts at once.

The SLO, `KeyspaceVerified24h`: per segment of the source phase, the union of the key positions
(item indexes in scan order) checked in the last `window` seconds, over the segment's size (its
count in the last complete pass, or the current count if larger). Ranges are kept in buckets of
`window / 24`, so the figure is exact to one bucket.

Metrics (EMF, dimension ``Target``): ``VerifiedKeys``, ``DivergencesFound``, ``Repaired``,
``UnrepairedDivergences`` (found, neither repaired nor superseded), ``PassProgressPercent``,
``KeyspaceVerified24hPercent``, ``PassBehindSeconds``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kcl_app.adapters.scan import scan_pages
from kcl_app.adapters.state_file import write_json_atomically
from kcl_app.backfill import TokenBucket
from kcl_app.core.attrs import Item, item_from_wire, item_size, item_to_wire
from kcl_app.core.errors import ReplicationError
from kcl_app.ports import Clock, Metrics
from kcl_app.verify import TargetReport, Verifier, VerifyReport

log = logging.getLogger("tablesync.continuous")

STATE_FORMAT = 1
DAY = 86_400.0
# "Initial throughput for on-demand capacity mode" (DynamoDB developer guide): a new on-demand
# table serves up to 12,000 read request units per second before it scales further.
ON_DEMAND_INITIAL_READ_UNITS = 12_000.0
SOURCE_PHASE = "source"
Verdict = Literal["clean", "repaired", "divergent"]


def capacity_read_units(table: Mapping[str, Any]) -> float:
    """A table's read capacity in units per second, from a DescribeTable answer's `Table`."""
    billing = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    if billing == "PAY_PER_REQUEST":
        maximum = float(table.get("OnDemandThroughput", {}).get("MaxReadRequestUnits", -1) or -1)
        return maximum if maximum > 0 else ON_DEMAND_INITIAL_READ_UNITS
    provisioned = float(table.get("ProvisionedThroughput", {}).get("ReadCapacityUnits", 0) or 0)
    return provisioned if provisioned > 0 else ON_DEMAND_INITIAL_READ_UNITS


def _item_count(client: Any, table: str) -> int:
    try:
        return int(client.describe_table(TableName=table)["Table"].get("ItemCount", 0))
    except Exception:  # noqa: BLE001 - the estimate only feeds the progress figure
        return 0


def item_read_units(items: Sequence[Item]) -> float:
    """Consistent reads of these items one by one (BatchGetItem): one unit per 4 KB, at least one each."""
    return float(sum(max(1, math.ceil(item_size(i) / 4096)) for i in items))


def page_read_units(items: Sequence[Item]) -> float:
    """A consistent Scan page: one unit per 4 KB of the whole page, at least one."""
    return float(max(1, math.ceil(sum(item_size(i) for i in items) / 4096)))


# -- durable state ----------------------------------------------------------------------------
@dataclass
class Cursor:
    segment: int
    last_key: dict[str, Any] | None = None  # wire form
    done: bool = False
    scanned: int = 0


@dataclass
class Tally:
    verified: int = 0
    divergent: int = 0
    repaired: int = 0
    superseded: int = 0
    repair_failed: int = 0
    in_flight: int = 0

    @property
    def unrepaired(self) -> int:
        return self.divergent - self.repaired - self.superseded

    def add(self, other: Tally) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class PassSummary:
    number: int
    started: float
    finished: float
    behind_seconds: float
    verdict: Verdict
    tallies: dict[str, Tally]
    unrepaired_keys: dict[str, list[str]] = field(default_factory=dict)  # key ids only, never values

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["seconds"] = round(self.finished - self.started, 3)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PassSummary:
        return cls(int(doc["number"]), float(doc["started"]), float(doc["finished"]),
                   float(doc["behind_seconds"]), doc["verdict"],
                   {k: Tally(**v) for k, v in doc["tallies"].items()},
                   {k: list(v) for k, v in doc.get("unrepaired_keys", {}).items()})


class StateMismatch(ReplicationError):
    """The state file belongs to another verification (other targets or segment count)."""


def state_path(state_dir: str | os.PathLike[str], source_table: str, targets: Sequence[str]) -> Path:
    return Path(state_dir) / f"verify-{source_table}--{'+'.join(sorted(targets))}.json"


class PassState:
    """The pass in progress, the last finished pass and the coverage log, in one JSON file replaced
    atomically (write, fsync, rename). Thread-safe."""

    def __init__(self, path: Path, source_table: str, targets: Sequence[str], segments: int) -> None:
        self.path = path
        self.source_table = source_table
        self.targets = sorted(targets)
        self.segments = segments
        self.number = 0
        self.started: float | None = None  # wall clock; None: no pass in progress
        self.phases: dict[str, list[Cursor]] = {}
        self.tallies: dict[str, Tally] = {t: Tally() for t in self.targets}
        self.unrepaired_keys: dict[str, list[str]] = {}
        self.last: PassSummary | None = None
        self.coverage: dict[str, list[list[float]]] = {}  # segment -> [[pass, start, end, time], ...]
        self.sizes: dict[str, int] = {}  # segment -> items in its last complete pass
        self.estimates: dict[str, int] = {}  # phase -> items expected (DescribeTable's ItemCount)
        self.resumed = False
        self.lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, source_table: str, targets: Sequence[str], segments: int) -> PassState:
        state = cls(path, source_table, targets, segments)
        if not path.exists():
            return state
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("targets") != state.targets or doc.get("segments") != segments:
            raise StateMismatch(
                f"{path} belongs to a continuous verification of targets {doc.get('targets')} in "
                f"{doc.get('segments')} segments; run with those, or delete the file to start over")
        state.number = int(doc["number"])
        state.started = doc.get("started")
        state.phases = {p: [Cursor(**c) for c in cs] for p, cs in doc.get("phases", {}).items()}
        state.tallies = {t: Tally(**v) for t, v in doc.get("tallies", {}).items()} or state.tallies
        state.unrepaired_keys = {k: list(v) for k, v in doc.get("unrepaired_keys", {}).items()}
        state.last = PassSummary.from_json(doc["last"]) if doc.get("last") else None
        state.coverage = {k: [list(r) for r in v] for k, v in doc.get("coverage", {}).items()}
        state.sizes = {k: int(v) for k, v in doc.get("sizes", {}).items()}
        state.estimates = {k: int(v) for k, v in doc.get("estimates", {}).items()}
        state.resumed = state.started is not None
        return state

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {"format": STATE_FORMAT, "source_table": self.source_table, "targets": self.targets,
                    "segments": self.segments, "number": self.number, "started": self.started,
                    "phases": {p: [asdict(c) for c in cs] for p, cs in self.phases.items()},
                    "tallies": {t: asdict(v) for t, v in self.tallies.items()},
                    "unrepaired_keys": self.unrepaired_keys,
                    "last": self.last.to_json() if self.last else None,
                    "coverage": self.coverage, "sizes": self.sizes, "estimates": self.estimates}

    def save(self) -> None:
        with self.lock:
            doc = self.to_json()
            write_json_atomically(self.path, doc)

    # -- the pass -------------------------------------------------------------------------
    def begin(self, now: float, phases: Sequence[str], estimates: Mapping[str, int] | None = None) -> None:
        with self.lock:
            self.estimates = dict(estimates or {})
            self.number += 1
            self.started = now
            self.phases = {p: [Cursor(i) for i in range(self.segments)] for p in phases}
            self.tallies = {t: Tally() for t in self.targets}
            self.unrepaired_keys = {}

    def progress(self) -> float:
        """Share of the pass done (0..1): each phase weighs the same; within a phase, items scanned
        over the phase's estimate (capped below 1 until its segments are done), or segments done."""
        with self.lock:
            return _progress(self.phases, self.estimates)

    def finish(self, now: float, period: float) -> PassSummary:
        with self.lock:
            assert self.started is not None
            behind = max(0.0, now - self.started - period)
            divergent = sum(t.divergent for t in self.tallies.values())
            unrepaired = sum(t.unrepaired for t in self.tallies.values())
            verdict: Verdict = "clean" if divergent == 0 else "repaired" if unrepaired == 0 else "divergent"
            self.last = PassSummary(self.number, self.started, now, behind, verdict,
                                    {k: Tally(**asdict(v)) for k, v in self.tallies.items()},
                                    dict(self.unrepaired_keys))
            for cursor in self.phases.get(SOURCE_PHASE, []):
                self.sizes[str(cursor.segment)] = cursor.scanned
            self.started = None
            self.phases = {}
            return self.last

    # -- coverage (the SLO) ---------------------------------------------------------------
    def covered(self, segment: int, start: int, end: int, now: float, bucket: float) -> None:
        """Record that positions [start, end) of a source segment were checked at `now`."""
        with self.lock:
            ranges = self.coverage.setdefault(str(segment), [])
            if ranges:
                last = ranges[-1]
                if (last[0] == self.number and last[2] == start
                        and math.floor(last[3] / bucket) == math.floor(now / bucket)):
                    last[2], last[3] = end, now
                    return
            ranges.append([self.number, start, end, now])

    def keyspace_share(self, now: float, window: float) -> float:
        """Share (0..1) of the source's keyspace checked in the last `window` seconds."""
        with self.lock:
            current = {str(c.segment): c.scanned for c in self.phases.get(SOURCE_PHASE, [])}
            covered = size = 0
            for seg in range(self.segments):
                name = str(seg)
                ranges = [r for r in self.coverage.get(name, []) if r[3] >= now - window]
                self.coverage[name] = ranges  # prune what left the window
                seg_size = max(self.sizes.get(name, 0), current.get(name, 0))
                covered += min(seg_size, _union(ranges))
                size += seg_size
            if size == 0:
                return 1.0 if self.last is not None and now - self.last.finished <= window else 0.0
            return covered / size


def _progress(phases: Mapping[str, Sequence[Cursor]], estimates: Mapping[str, int]) -> float:
    if not phases:
        return 0.0
    total = 0.0
    for phase, cursors in phases.items():
        if all(c.done for c in cursors):
            total += 1.0
        elif estimates.get(phase, 0) > 0:
            total += min(0.99, sum(c.scanned for c in cursors) / estimates[phase])
        else:
            total += sum(c.done for c in cursors) / len(cursors)
    return total / len(phases)


def _union(ranges: Sequence[Sequence[float]]) -> int:
    total, reach = 0, -math.inf
    for _, start, end, _ in sorted(ranges, key=lambda r: r[1]):
        if end <= reach:
            continue
        total += int(end - max(start, reach))
        reach = end
    return total


# -- the service ------------------------------------------------------------------------------
class ContinuousVerifier:
    """Runs passes of `verifier` for ever (or until `stop` is set), paced, resumable, measured."""

    def __init__(self, verifier: Verifier, state: PassState, clock: Clock, metrics: Metrics, *,
                 period: float = DAY, read_units_per_second: float = 100.0, capacity_fraction: float = 0.1,
                 repair: bool = False, stop: threading.Event | None = None, emit_every: float = 60.0,
                 window: float = DAY, on_page: Callable[[str, int], None] | None = None) -> None:
        if read_units_per_second <= 0:
            raise ValueError("read_units_per_second must be positive")
        if not 0.0 < capacity_fraction <= 1.0:
            raise ValueError("capacity_fraction must be in (0, 1]")
        if period <= 0:
            raise ValueError("period must be positive")
        self.verifier = verifier
        self.state = state
        self.clock = clock
        self.metrics = metrics
        self.period = period
        self.read_limit = read_units_per_second
        self.fraction = capacity_fraction
        self.repair = repair
        self.stop = stop or threading.Event()
        self.emit_every = emit_every
        self.window = window
        self.on_page = on_page
        self.buckets: dict[str, TokenBucket] = {}
        self._pending: dict[str, Tally] = {t.name: Tally() for t in verifier.targets}
        self._last_emit: float | None = None
        self._lock = threading.Lock()
        self._abort = threading.Event()

    # -- pacing -------------------------------------------------------------------------------
    def rate_for(self, client: Any, table: str) -> float:
        """Read units per second allowed on `table`: the limit, capped by the capacity fraction."""
        try:
            described = client.describe_table(TableName=table)["Table"]
        except Exception as exc:  # noqa: BLE001 - the configured limit alone still bounds the rate
            log.warning("cannot describe %s (%r): pacing at --read-units only", table, exc)
            return self.read_limit
        return min(self.read_limit, self.fraction * capacity_read_units(described))

    def _pace(self) -> None:
        v = self.verifier
        self.buckets = {"": TokenBucket(self.rate_for(v.source, v.source_table), self.clock)}
        for spec in v.targets:
            self.buckets[spec.name] = TokenBucket(self.rate_for(spec.client, spec.table), self.clock)

    # -- the loop -----------------------------------------------------------------------------
    def run_forever(self) -> None:
        """Pass after pass, one starting every `period` (at once when the previous one was late)."""
        while not self.stop.is_set():
            summary = self.run_pass()
            self.verifier.close()  # the repair writers, built again by the next pass
            if summary is None:
                return
            next_start = summary.started + self.period
            while not self.stop.is_set() and self.clock.now() < next_start:
                self.clock.sleep(min(1.0, next_start - self.clock.now()))  # a stop is seen within 1 s
                self.emit()

    def run_pass(self) -> PassSummary | None:
        """Run (or resume) one pass; the summary, or None when `stop` ended it (state saved)."""
        v = self.verifier
        v.prepare()
        phases = [SOURCE_PHASE] + [f"target:{t.name}" for t in v.targets]
        if self.state.started is None:
            tables = [(v.source, v.source_table)] + [(t.client, t.table) for t in v.targets]
            self.state.begin(self.clock.now(), phases,
                             {p: _item_count(c, t) for p, (c, t) in zip(phases, tables, strict=True)})
            self.state.save()
            log.info("verify pass %d of %s started", self.state.number, v.source_table)
        else:
            log.info("verify pass %d of %s resumed", self.state.number, v.source_table)
        self._pace()
        self._abort.clear()
        for phase in phases:
            todo = [c for c in self.state.phases[phase] if not c.done]
            if todo:
                with ThreadPoolExecutor(len(todo), thread_name_prefix="ts-verifyc") as pool:
                    futures = [pool.submit(self._segment, phase, c) for c in todo]
                errors = [e for f in futures if (e := f.exception()) is not None]
                if errors:  # every segment stopped at a page boundary, its position saved
                    self.emit(force=True)
                    raise errors[0]
            if self.stop.is_set():
                self.emit(force=True)
                return None
        summary = self.state.finish(self.clock.now(), self.period)
        self.state.save()
        self.emit(force=True)
        log.info("verify pass %d of %s: %s in %.0f s", summary.number, v.source_table, summary.verdict,
                 summary.finished - summary.started)
        return summary

    def _segment(self, phase: str, cursor: Cursor) -> None:
        try:
            self._walk(phase, cursor)
        except BaseException:
            self._abort.set()  # the other segments stop after their page
            raise

    def _walk(self, phase: str, cursor: Cursor) -> None:
        v = self.verifier
        spec = None if phase == SOURCE_PHASE else next(t for t in v.targets if f"target:{t.name}" == phase)
        client, table = (v.source, v.source_table) if spec is None else (spec.client, spec.table)
        start = item_from_wire(cursor.last_key) if cursor.last_key else None
        if self.stop.is_set():
            return
        for items, last in scan_pages(self.clock, client, table, cursor.segment, self.state.segments,
                                      start_key=start, limit=v.page_limit):
            # 2 pacing: this table's scan, the other side's lookups
            self.buckets["" if spec is None else spec.name].take(page_read_units(items))
            reports = {t.name: TargetReport(t.name) for t in v.targets}
            if spec is None:
                for t in v.targets:
                    self.buckets[t.name].take(item_read_units(items))
                v.check_source_page(items, VerifyReport(v.source_table, reports))  # 3
            else:
                self.buckets[""].take(float(len(items)))
                v.check_target_page(spec, items, reports[spec.name])
            if self.repair:  # 4
                for t in v.targets:
                    if reports[t.name].divergences:
                        v.repair_found(t, reports[t.name])
            first = cursor.scanned
            with self.state.lock:  # 5
                for name, report in reports.items():
                    page = _tally(report, verified=len(items) if spec is None or spec.name == name else 0)
                    self.state.tallies[name].add(page)
                    with self._lock:
                        self._pending[name].add(page)
                    unrepaired = [k for k, d in report.divergences.items()
                                  if d.repair not in ("repaired", "superseded")]
                    if unrepaired:
                        keys = self.state.unrepaired_keys.setdefault(name, [])
                        keys.extend(unrepaired[: max(0, 100 - len(keys))])
                cursor.scanned += len(items)
                cursor.last_key = item_to_wire(last) if last else None
                cursor.done = last is None
                if spec is None:  # 6
                    self.state.covered(cursor.segment, first, cursor.scanned, self.clock.now(), self.window / 24)
            self.state.save()
            if self.on_page:
                self.on_page(phase, cursor.segment)
            self.emit()
            if self.stop.is_set() or self._abort.is_set():  # SIGTERM: this page is finished and saved
                return
        with self.state.lock:
            cursor.done = True
        self.state.save()

    # -- metrics ------------------------------------------------------------------------------
    def emit(self, force: bool = False) -> None:
        now = self.clock.monotonic()
        with self._lock:
            if not force and self._last_emit is not None and now - self._last_emit < self.emit_every:
                return
            self._last_emit = now
            pending, self._pending = self._pending, {t.name: Tally() for t in self.verifier.targets}
        wall = self.clock.now()
        share = self.state.keyspace_share(wall, self.window)
        progress = self.state.progress() if self.state.started is not None else 1.0
        started = self.state.started
        behind = max(0.0, wall - started - self.period) if started is not None else (
            self.state.last.behind_seconds if self.state.last else 0.0)
        for name, tally in pending.items():
            self.metrics.emit({"Target": name}, {
                "VerifiedKeys": tally.verified, "DivergencesFound": tally.divergent, "Repaired": tally.repaired,
                "UnrepairedDivergences": tally.unrepaired, "PassProgressPercent": round(100 * progress, 2),
                "KeyspaceVerified24hPercent": round(100 * share, 2), "PassBehindSeconds": round(behind, 1)})


def _tally(report: TargetReport, verified: int) -> Tally:
    return Tally(verified=verified, divergent=len(report.divergences), repaired=report.repaired,
                 superseded=report.superseded, repair_failed=report.repair_failed, in_flight=report.in_flight)


def last_pass(path: Path) -> dict[str, Any] | None:
    """What `tablesync status` shows: the last finished pass and the one in progress (None: no state)."""
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    phases = {p: [Cursor(**c) for c in cs] for p, cs in (doc.get("phases") or {}).items()}
    current = None
    if doc.get("started") is not None:
        current = {"number": doc["number"], "started": doc["started"],
                   "progress": round(_progress(phases, doc.get("estimates") or {}), 4)}
    return {"source_table": doc.get("source_table"), "targets": doc.get("targets"), "last": doc.get("last"),
            "current": current}
