"""From a batch of decoded changes to the writes each target needs, and back to a checkpoint.

Pure: no I/O. The pipeline calls `plan_batch`, hands each target its writes, then asks
`safe_checkpoint` how far the batch is settled.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kcl_app.core.attrs import MAX_ITEM_BYTES, Item, item_size, project
from kcl_app.core.checks import check_item
from kcl_app.core.errors import TransformFailed
from kcl_app.core.records import Change
from kcl_app.core.versions import Version

TtlPolicy = Literal["replicate", "skip"]
Transform = Callable[[Item], Item | None]


@dataclass(frozen=True)
class TargetRule:
    """What a target wants from a source table (the pure half of a target's configuration)."""

    name: str
    source_table: str
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    ttl_deletes: TtlPolicy = "replicate"
    transform: Transform | None = None
    log_values: bool = False  # may a transform's exception message (which may quote values) be kept?

    def shape(self, change: Change) -> Item | None:
        """The item this target must hold after `change` (None: the key must be absent).

        Raises TransformFailed when the transform raises, breaks the item (changes a key, returns a
        non-item) or returns a value DynamoDB would refuse; the reason names the attribute, and quotes
        no value unless `log_values`."""
        if change.new_image is None:
            return None
        item = project(change.new_image, change.key, self.include, self.exclude)
        if self.transform is None:
            return item
        try:
            # a deep copy: a transform that edits nested values must not change other targets' items
            shaped = self.transform(copy.deepcopy(item))
        except Exception as exc:  # noqa: BLE001 - user code: any failure parks the change
            detail = f": {_clip(str(exc))}" if self.log_values else ""
            raise TransformFailed(self.name, f"transform raised {type(exc).__name__}{detail}") from exc
        if shaped is None:
            return None
        if not isinstance(shaped, dict):
            raise TransformFailed(self.name, f"transform returned {type(shaped).__name__}, not an item (dict) or None")
        try:
            check_item(shaped, "item")
        except ValueError as exc:
            raise TransformFailed(self.name, f"transform returned an invalid item: {exc}") from exc
        for name, value in change.key.items():
            if shaped.get(name) != value:
                raise TransformFailed(self.name, f"transform changed or removed key attribute {name!r}")
        return shaped


def _clip(text: str, limit: int = 200) -> str:
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True, slots=True)
class Write:
    """One fenced write: make `key` hold `item` (or be absent) at `version`, unless newer is there."""

    target: str
    key: Item
    key_id: str
    version: Version
    item: Item | None
    change: Change
    records: tuple[int, ...]

    @property
    def is_delete(self) -> bool:
        return self.item is None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A change a target cannot take, whatever the retries (to be parked with the reason)."""

    target: str
    change: Change
    reason: str
    records: tuple[int, ...]


@dataclass
class TargetPlan:
    writes: list[Write] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    skipped_ttl: int = 0
    coalesced: int = 0


def plan_batch(
    changes: Sequence[tuple[int, Change]], rules: Sequence[TargetRule]
) -> dict[str, TargetPlan]:
    """Coalesce per (target, key) to the newest version and shape each winner for its target.

    `changes` pairs each decoded change with its record index in the batch. Every index that a
    target's rule covers ends up in exactly one Write or Rejected of that target's plan, or is
    counted in `skipped_ttl`, so `safe_checkpoint` can account for it.
    """
    by_table: dict[str, list[TargetRule]] = {}
    for rule in rules:
        by_table.setdefault(rule.source_table, []).append(rule)
    plans: dict[str, TargetPlan] = {rule.name: TargetPlan() for rule in rules}
    newest: dict[tuple[str, str], tuple[Change, list[int]]] = {}
    for index, change in changes:
        for rule in by_table.get(change.table, ()):
            if change.ttl_delete and rule.ttl_deletes == "skip":
                plans[rule.name].skipped_ttl += 1
                continue
            slot = (rule.name, change.key_id)
            seen = newest.get(slot)
            if seen is None:
                newest[slot] = (change, [index])
                continue
            seen[1].append(index)
            plans[rule.name].coalesced += 1
            if change.version > seen[0].version:
                newest[slot] = (change, seen[1])
    rule_by_name = {rule.name: rule for rule in rules}
    for (target, kid), (change, indexes) in newest.items():
        rule = rule_by_name[target]
        records = tuple(indexes)
        try:
            item = rule.shape(change)
            # The record's own length bounds its NewImage's size (DynamoDB's sizing counts less than
            # the JSON text of every value and name), and a projection only removes attributes: without
            # a transform, a record under the limit cannot hold an oversized item. (`SizeBytes` is not
            # trusted for this: a forged record can state any size.)
            bounded = rule.transform is None and change.raw is not None and len(change.raw.data) <= MAX_ITEM_BYTES
            size = 0 if item is None or bounded else item_size(item)
        except TransformFailed as exc:
            plans[target].rejected.append(Rejected(target, change, f"transform failed: {exc.reason}", records))
            continue
        except Exception as exc:  # noqa: BLE001 - a defect of this change (sizing, shaping): park it alone
            reason = f"cannot shape the item ({type(exc).__name__})"
            plans[target].rejected.append(Rejected(target, change, reason, records))
            continue
        if size > MAX_ITEM_BYTES:
            reason = f"item of {size} bytes exceeds DynamoDB's 400 KB limit after projection/transform"
            plans[target].rejected.append(Rejected(target, change, reason, records))
            continue
        plans[target].writes.append(Write(target, change.key, kid, change.version, item, change, records))
    return plans


def safe_checkpoint(batch_size: int, unresolved: Iterable[int]) -> int:
    """Index of the last record that may be checkpointed (-1: none).

    Everything up to and including that index is applied or durably parked for every target."""
    first_bad = min(unresolved, default=batch_size)
    return first_bad - 1


def records_of(items: Iterable[Write | Rejected]) -> set[int]:
    out: set[int] = set()
    for item in items:
        out.update(item.records)
    return out


def group_by_target(entries: Iterable[Write]) -> Mapping[str, list[Write]]:
    out: dict[str, list[Write]] = {}
    for entry in entries:
        out.setdefault(entry.target, []).append(entry)
    return out
