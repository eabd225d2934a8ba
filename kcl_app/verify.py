"""Verify that every target holds exactly what its rule makes of the source, and repair what differs.

Two passes per run, each a parallel Scan with strongly consistent reads:

1. source -> targets: each (sampled) source item is shaped by each target's rule (projection,
   transform) and compared with the target's item, fetched by BatchGetItem. Finds *missing* and
   *different* items (which attributes differ, type changes included).
2. target -> source: each (sampled) target item's key is looked up in the source. Finds *extra*
   items (no source item, or one the target's transform drops).

A mismatch is re-read (consistent GetItem of the source item and of the target item) before it is
called a divergence: a write in flight between the scan and the comparison is counted `in_flight`.
The inline version attribute is ignored. Sets compare as sets, numbers by value, binary by bytes.

Repair (`repair=True`) goes through the fenced path and never overwrites data newer than its own
read. Exact mode, per divergent key:

1. read the ledger row's version V and the source item (both consistent);
2. write, through the target's fenced writer with the guard `StillAt(V)`, the ledger row at
   V' = (V.micros, V.tiebreak + "#repair") and the item Put/Delete (one transaction), on the
   condition that the row still holds V (or still holds no version);
3. a failed condition means a newer change landed in between: counted `superseded`, untouched.

V' sorts just above V: any change with a later timestamp still wins over the repair, any change
that V already beat still loses. Inline mode does the same with the item's version attribute (or,
for an absent item, its tombstone's version).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from kcl_app.adapters.scan import TargetSpec, call, key_names_of, scan_pages, shape_item, writer_for
from kcl_app.core.attrs import AttributeValue, Item, item_to_wire, key_id, key_of
from kcl_app.core.fence import REPAIR_SUFFIX, StillAt, repair_version
from kcl_app.core.plan import Write
from kcl_app.core.records import Change, EventName
from kcl_app.core.retry import Backoff
from kcl_app.ports import Clock, GuardedWriter

log = logging.getLogger("tablesync.verify")

Kind = Literal["missing", "extra", "different"]
Problem = Literal["missing_in_target", "extra_in_target", "type", "value", "transform_failed"]
RepairOutcome = Literal["repaired", "superseded", "failed"]
BATCH_GET = 100


# -- comparison (pure) ------------------------------------------------------------------------
def _number(text: str) -> Decimal | str:
    try:
        return Decimal(text)
    except InvalidOperation:
        return text


def canonical(value: AttributeValue) -> Any:
    """A hashable form in which equal DynamoDB values are equal (sets unordered, numbers by value)."""
    ((kind, inner),) = value.items()
    if kind == "N":
        return ("N", _number(inner))
    if kind == "B":
        return ("B", bytes(inner))
    if kind in ("SS",):
        return ("SS", frozenset(inner))
    if kind == "NS":
        return ("NS", frozenset(_number(n) for n in inner))
    if kind == "BS":
        return ("BS", frozenset(bytes(b) for b in inner))
    if kind == "M":
        return ("M", tuple(sorted((k, canonical(v)) for k, v in inner.items())))
    if kind == "L":
        return ("L", tuple(canonical(v) for v in inner))
    return (kind, inner)


def show(value: AttributeValue | None, limit: int = 80) -> str | None:
    """A short human form of a value: `S:'abc'`, `B:0x0102`, `SS:['a', 'b']`."""
    if value is None:
        return None
    ((kind, inner),) = value.items()
    if kind == "B":
        text = "0x" + bytes(inner).hex()
    elif kind == "BS":
        text = str(sorted("0x" + bytes(b).hex() for b in inner))
    elif kind in ("SS", "NS"):
        text = str(sorted(inner))
    elif kind in ("M", "L"):
        text = str(item_to_wire({"v": value})["v"][kind])
    else:
        text = repr(inner)
    return f"{kind}:{text if len(text) <= limit else text[:limit] + '...'}"


@dataclass(frozen=True)
class AttrDiff:
    name: str
    problem: Problem
    source: str | None = None
    target: str | None = None


def diff_items(expected: Item, actual: Item) -> list[AttrDiff]:
    """Attribute-level differences between what the target should hold and what it holds."""
    out: list[AttrDiff] = []
    for name in sorted(set(expected) | set(actual)):
        exp, act = expected.get(name), actual.get(name)
        if act is None:
            out.append(AttrDiff(name, "missing_in_target", show(exp)))
        elif exp is None:
            out.append(AttrDiff(name, "extra_in_target", None, show(act)))
        elif next(iter(exp)) != next(iter(act)):
            out.append(AttrDiff(name, "type", show(exp), show(act)))
        elif canonical(exp) != canonical(act):
            out.append(AttrDiff(name, "value", show(exp), show(act)))
    return out


def same(expected: Item | None, actual: Item | None) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    return not diff_items(expected, actual)


# -- report -----------------------------------------------------------------------------------
@dataclass
class Divergence:
    kind: Kind
    key: Item
    attributes: list[AttrDiff] = field(default_factory=list)
    repair: RepairOutcome | None = None

    def to_json(self, show_values: bool = False) -> dict[str, Any]:
        """Attribute values (personal data, often) only with `show_values`; otherwise each differing
        attribute is named with its problem and the types on each side."""
        return {"kind": self.kind, "key": item_to_wire(self.key), "repair": self.repair,
                "attributes": [a.__dict__ if show_values else hide_values(a) for a in self.attributes]}


def hide_values(diff: AttrDiff) -> dict[str, Any]:
    """An AttrDiff's JSON with each side reduced to its DynamoDB type (`S`, `N`, ...)."""
    def kind(shown: str | None) -> str | None:
        return None if shown is None else shown.split(":", 1)[0]

    return {"name": diff.name, "problem": diff.problem, "source": kind(diff.source), "target": kind(diff.target)}


@dataclass
class TargetReport:
    target: str
    source_checked: int = 0
    target_checked: int = 0
    in_flight: int = 0
    divergences: dict[str, Divergence] = field(default_factory=dict)
    repaired: int = 0
    superseded: int = 0
    repair_failed: int = 0

    def count(self, kind: Kind) -> int:
        return sum(1 for d in self.divergences.values() if d.kind == kind)

    @property
    def clean(self) -> bool:
        """True when every divergence found was repaired (or none was found)."""
        return len(self.divergences) == self.repaired

    def to_json(self, max_listed: int = 1000, show_values: bool = False) -> dict[str, Any]:
        listed = list(self.divergences.values())[:max_listed]
        return {"target": self.target, "clean": self.clean, "source_checked": self.source_checked,
                "target_checked": self.target_checked, "in_flight": self.in_flight,
                "missing": self.count("missing"), "extra": self.count("extra"),
                "different": self.count("different"), "repaired": self.repaired,
                "superseded": self.superseded, "repair_failed": self.repair_failed,
                "divergences": [d.to_json(show_values) for d in listed],
                "listed": len(listed), "truncated": len(self.divergences) > len(listed)}


@dataclass
class VerifyReport:
    source_table: str
    targets: dict[str, TargetReport]
    sample: float = 1.0

    @property
    def clean(self) -> bool:
        return all(t.clean for t in self.targets.values())

    def to_json(self, max_listed: int = 1000, show_values: bool = False) -> dict[str, Any]:
        return {"source_table": self.source_table, "clean": self.clean, "sample": self.sample,
                "values_shown": show_values,
                "targets": [t.to_json(max_listed, show_values) for t in self.targets.values()]}


@dataclass(frozen=True)
class VerifyProgress:
    """Where a verification is: `phase` is "source" (source -> targets) or "target <name>"
    (that target -> source); `scanned` items of the table being scanned, of about `estimated_total`
    (DynamoDB's ItemCount, refreshed about every six hours; 0 when unknown)."""

    phase: str
    scanned: int
    estimated_total: int
    elapsed: float
    divergent: int
    done: bool = False

    @property
    def rate(self) -> float:
        return self.scanned / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.done or self.rate <= 0 or self.estimated_total <= self.scanned:
            return None
        return (self.estimated_total - self.scanned) / self.rate


# -- the verifier -----------------------------------------------------------------------------
class Verifier:
    """Compares one source table with its targets; optionally repairs. Thread-safe counters."""

    def __init__(self, source: Any, source_table: str, targets: Sequence[TargetSpec], clock: Clock, *,
                 segments: int = 4, sample: float = 1.0, seed: int | None = None,
                 page_limit: int | None = None, backoff: Backoff | None = None,
                 progress: Callable[[VerifyProgress], None] | None = None, progress_every: float = 5.0,
                 repair_budget_seconds: float = 30.0) -> None:
        if not 0.0 < sample <= 1.0:
            raise ValueError("sample must be in (0, 1]")
        self.source = source
        self.source_table = source_table
        self.targets = list(targets)
        self.clock = clock
        self.segments = max(1, segments)
        self.sample = sample
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self.page_limit = page_limit
        self.backoff = backoff or Backoff(base=0.05, cap=2.0)
        self.key_names: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self.progress = progress
        self.progress_every = progress_every
        self._phase: tuple[str, int, float] = ("", 0, 0.0)  # name, estimated total, started
        self._scanned = 0
        self._last_report = 0.0
        self._report: VerifyReport | None = None
        self.repair_budget = repair_budget_seconds
        self._writers: dict[str, GuardedWriter] = {}

    def run(self, repair: bool = False) -> VerifyReport:
        self.key_names = key_names_of(self.source, self.source_table)
        report = VerifyReport(self.source_table, {t.name: TargetReport(t.name) for t in self.targets}, self.sample)
        self._report = report
        # 1 source -> targets
        self._start_phase("source", self.source, self.source_table)
        self._parallel(lambda seg: self._source_segment(seg, report))
        self._progress(done=True)
        # 2 target -> source
        for spec in self.targets:
            self._start_phase(f"target {spec.name}", spec.client, spec.table)
            self._parallel(lambda seg, spec=spec: self._target_segment(spec, seg, report))
            self._progress(done=True)
        # 3 repair through the fenced path
        if repair:
            for spec in self.targets:
                self._repair_all(spec, report.targets[spec.name])
            self.close()  # a later repair_key builds its writer again
        return report

    # -- progress ---------------------------------------------------------------------------
    def _start_phase(self, name: str, client: Any, table: str) -> None:
        estimate = 0
        if self.progress is not None:
            try:
                estimate = int(client.describe_table(TableName=table)["Table"].get("ItemCount", 0))
            except Exception:  # noqa: BLE001 - the estimate only feeds the progress report
                estimate = 0
        with self._lock:
            self._phase = (name, estimate, self.clock.monotonic())
            self._scanned = 0
            self._last_report = self.clock.monotonic()

    def _scanned_page(self, items: int) -> None:
        with self._lock:
            self._scanned += items
        self._progress()

    def _progress(self, done: bool = False) -> None:
        if self.progress is None:
            return
        now = self.clock.monotonic()
        with self._lock:
            if not done and now - self._last_report < self.progress_every:
                return
            self._last_report = now
            name, estimate, started = self._phase
            report = self._report
            divergent = sum(len(t.divergences) for t in report.targets.values()) if report else 0
            # reported under the lock, so that reports from parallel segments arrive in order
            self.progress(VerifyProgress(name, self._scanned, estimate, now - started, divergent, done))

    def _parallel(self, work: Any) -> None:
        with ThreadPoolExecutor(self.segments, thread_name_prefix="ts-verify") as pool:
            for future in [pool.submit(work, seg) for seg in range(self.segments)]:
                future.result()

    def _sampled(self, items: list[Item], rng: random.Random) -> list[Item]:
        return items if self.sample >= 1.0 else [i for i in items if rng.random() < self.sample]

    def _source_segment(self, segment: int, report: VerifyReport) -> None:
        rng = random.Random(f"{self.seed}:s:{segment}")
        for items, _ in scan_pages(self.clock, self.source, self.source_table, segment, self.segments,
                                   limit=self.page_limit):
            sampled = self._sampled(items, rng)
            self._scanned_page(len(items))
            self.check_source_page(sampled, report)

    def check_source_page(self, sampled: Sequence[Item], report: VerifyReport) -> None:
        """Compare scanned source items with every target (direction 1), recording into `report`."""
        for spec in self.targets:
            treport = report.targets[spec.name]
            expected: dict[str, tuple[Item, Item | None]] = {}
            for item in sampled:
                key = key_of(item, self.key_names)
                try:
                    expected[key_id(key)] = (key, shape_item(spec.rule, self.source_table, self.key_names, item))
                except Exception:  # noqa: BLE001 - a failing transform is itself a divergence
                    self._recheck(spec, key, treport)
            actual = self._batch_get(spec.client, spec.table, [k for k, _ in expected.values()])
            with self._lock:
                treport.source_checked += len(sampled)
            for kid, (key, exp) in expected.items():
                if not same(exp, self._strip(spec, actual.get(kid))):
                    self._recheck(spec, key, treport)

    def _target_segment(self, spec: TargetSpec, segment: int, report: VerifyReport) -> None:
        rng = random.Random(f"{self.seed}:t:{spec.name}:{segment}")
        treport = report.targets[spec.name]
        for items, _ in scan_pages(self.clock, spec.client, spec.table, segment, self.segments,
                                   limit=self.page_limit):
            sampled = self._sampled(items, rng)
            self._scanned_page(len(items))
            self.check_target_page(spec, sampled, treport)

    def check_target_page(self, spec: TargetSpec, sampled: Sequence[Item], treport: TargetReport) -> None:
        """Look scanned items of `spec`'s table up in the source (direction 2), recording into `treport`."""
        keys = [key_of(i, self.key_names) for i in sampled]
        found = self._batch_get(self.source, self.source_table, keys)
        with self._lock:
            treport.target_checked += len(keys)
        for key in keys:
            src = found.get(key_id(key))
            try:
                wanted = src is not None and shape_item(spec.rule, self.source_table, self.key_names, src)
            except Exception:  # noqa: BLE001 - the recheck records the transform failure
                wanted = None
            if not wanted:
                self._recheck(spec, key, treport)

    def _recheck(self, spec: TargetSpec, key: Item, treport: TargetReport) -> None:
        """Re-read both sides consistently; record a divergence only if they still differ."""
        kid = key_id(key)
        src = self._get(self.source, self.source_table, key)
        act = self._strip(spec, self._get(spec.client, spec.table, key))
        try:
            exp = shape_item(spec.rule, self.source_table, self.key_names, src) if src else None
        except Exception as exc:  # noqa: BLE001 - user transform
            with self._lock:
                treport.divergences[kid] = Divergence(
                    "different", key, [AttrDiff("*", "transform_failed", repr(exc))])
            return
        if same(exp, act):
            with self._lock:
                treport.in_flight += 1
            return
        if act is None:
            found = Divergence("missing", key)
        elif exp is None:
            found = Divergence("extra", key)
        else:
            found = Divergence("different", key, diff_items(exp, act))
        with self._lock:
            treport.divergences[kid] = found

    # -- reads ------------------------------------------------------------------------------
    def _strip(self, spec: TargetSpec, item: Item | None) -> Item | None:
        if item is None or spec.mode != "inline":
            return item
        return {k: v for k, v in item.items() if k != spec.version_attribute}

    def _get(self, client: Any, table: str, key: Item) -> Item | None:
        answer = call(self.clock, client.get_item, TableName=table, Key=key, ConsistentRead=True)
        item: Item | None = answer.get("Item")
        return item

    def _batch_get(self, client: Any, table: str, keys: Sequence[Item]) -> dict[str, Item]:
        out: dict[str, Item] = {}
        for start in range(0, len(keys), BATCH_GET):
            request: dict[str, Any] = {table: {"Keys": list(keys[start:start + BATCH_GET]), "ConsistentRead": True}}
            deadline = self.clock.monotonic() + 60.0
            attempt = 0
            while request:
                answer = call(self.clock, client.batch_get_item, RequestItems=request)
                for item in answer.get("Responses", {}).get(table, []):
                    out[key_id(key_of(item, self.key_names))] = item
                request = answer.get("UnprocessedKeys") or {}
                if request and not self.backoff.wait(self.clock, attempt, deadline):
                    raise TimeoutError(f"BatchGetItem on {table}: keys still unprocessed after 60 s")
                attempt += 1
        return out

    # -- repair -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Learn the source's key schema (what `run` does first), for callers of the page checks."""
        self.key_names = key_names_of(self.source, self.source_table)

    def repair_found(self, spec: TargetSpec, treport: TargetReport) -> None:
        """Repair every divergence recorded in `treport` (steps of the module docstring)."""
        self._repair_all(spec, treport)

    def _repair_all(self, spec: TargetSpec, treport: TargetReport) -> None:
        for divergence in treport.divergences.values():
            if any(a.problem == "transform_failed" for a in divergence.attributes):
                outcome: RepairOutcome = "failed"
            else:
                outcome = self.repair_key(spec, divergence.key)
            divergence.repair = outcome
            if outcome == "repaired":
                treport.repaired += 1
            elif outcome == "superseded":
                treport.superseded += 1
            else:
                treport.repair_failed += 1

    def repair_key(self, spec: TargetSpec, key: Item) -> RepairOutcome:
        """Make the target hold the source's current (shaped) item for `key`, unless a newer
        change reaches the target between this read and this write (then: `superseded`)."""
        try:
            if not self.key_names:  # called on its own (redrive), not after run()
                self.key_names = key_names_of(self.source, self.source_table)
            src = self._get(self.source, self.source_table, key)
            desired = shape_item(spec.rule, self.source_table, self.key_names, src) if src else None
            return self._repair(spec, key, desired)
        except Exception as exc:  # noqa: BLE001 - reported per key; the run goes on
            log.error("target %s: repair of %s failed: %r", spec.name, key_id(key), exc)
            return "failed"

    def _writer(self, spec: TargetSpec) -> GuardedWriter:
        with self._lock:
            if spec.name not in self._writers:
                self._writers[spec.name] = writer_for(spec, self.clock)
            return self._writers[spec.name]

    def _repair(self, spec: TargetSpec, key: Item, desired: Item | None) -> RepairOutcome:
        """Steps 1-3 of the module docstring, through the target's fenced writer (`StillAt`)."""
        writer = self._writer(spec)
        kid = key_id(key)
        deadline = self.clock.monotonic() + self.repair_budget
        exists, seen = writer.seen(key, kid, deadline)  # 1
        if spec.mode == "inline" and not exists and desired is None:
            return "repaired"  # the item is already absent (an inline StillAt delete needs the item at `seen`)
        version = repair_version(seen)
        event: EventName = "REMOVE" if desired is None else ("MODIFY" if exists else "INSERT")
        change = Change(table=self.source_table, event=event, key=key,
                        key_id=kid, new_image=desired, version=version, ttl_delete=False, event_id=REPAIR_SUFFIX)
        result = writer.apply([Write(spec.name, key, kid, version, desired, change, ())], deadline, StillAt(seen))  # 2
        if result.applied:
            return "repaired"
        if result.stale or result.duplicate:
            return "superseded"  # 3
        log.error("target %s: repair of %s failed: %s", spec.name, kid, result.failed[0][1] if result.failed else "?")
        return "failed"

    def close(self) -> None:
        """Release the writers built for repairs (the ones the specs did not carry)."""
        for spec in self.targets:
            writer = self._writers.pop(spec.name, None)
            if writer is not None and spec.writer is None:
                getattr(writer, "close", lambda: None)()
