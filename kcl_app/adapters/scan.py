"""The scan toolkit shared by backfill and verify: one target as the scanners see it, the source's
key schema, the shaping of a scanned item, and paged, retried Scans.

Talks to DynamoDB through the client it is given; builds no client itself (compose does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kcl_app.adapters.retry import describe
from kcl_app.config import Config, TargetConfig
from kcl_app.core.attrs import Item, key_id, key_of
from kcl_app.core.errors import ReplicationError
from kcl_app.core.plan import TargetRule
from kcl_app.core.records import Change
from kcl_app.core.retry import READS, Backoff, RetryBudgetSpent, until
from kcl_app.core.versions import Version
from kcl_app.ports import Clock, GuardedWriter

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient

BACKFILL_VERSION = Version(0, "backfill")
Mode = Literal["exact", "inline"]


@dataclass(frozen=True)
class TargetSpec:
    """One target as the scanners see it: its rule, a client for its region/account, its tables."""

    rule: TargetRule
    client: DynamoDBClient
    table: str
    mode: Mode = "exact"
    ledger_table: str | None = None
    version_attribute: str = "_tablesync_version"
    tombstone_ttl_seconds: float = 48 * 3600.0
    writer: GuardedWriter | None = None  # None: built from `client` by `writer_for`
    tombstone_table: str | None = None  # inline mode's delete tombstones

    @property
    def name(self) -> str:
        return self.rule.name

    @classmethod
    def from_config(cls, target: TargetConfig, config: Config, client: DynamoDBClient) -> TargetSpec:
        return cls(target.rule(), client, target.table, target.mode,
                   target.ledger if target.mode == "exact" else None,
                   target.version_attribute, config.tombstone_ttl_seconds,
                   tombstone_table=target.tombstones if target.mode == "inline" else None)


def writer_for(spec: TargetSpec, clock: Clock) -> GuardedWriter:
    """The fenced writer of a target: the one the spec carries, or one built on its client (the same
    writer classes, with the same defaults, as the stream path)."""
    if spec.writer is not None:
        return spec.writer
    if spec.mode == "inline":
        from kcl_app.adapters.inline import InlineWriter

        if not spec.tombstone_table:
            raise ValueError(f"target {spec.name}: an inline target needs its tombstone table")
        return InlineWriter(spec.name, spec.client, spec.table, clock, spec.version_attribute,
                            tombstone_table=spec.tombstone_table, tombstone_ttl_seconds=spec.tombstone_ttl_seconds)
    from kcl_app.adapters.ledger import LedgerWriter

    return LedgerWriter(spec.name, spec.client, spec.table, str(spec.ledger_table), clock,
                        tombstone_ttl_seconds=spec.tombstone_ttl_seconds)


class SourceProblem(ReplicationError):
    """The source table cannot be read as needed (missing, no key schema)."""


def key_names_of(client: DynamoDBClient, table: str) -> tuple[str, ...]:
    """The key attribute names of a table, partition key first."""
    try:
        schema = client.describe_table(TableName=table)["Table"]["KeySchema"]
    except Exception as exc:  # noqa: BLE001 - reported with its code, chained
        raise SourceProblem(f"cannot describe table {table!r}: {describe(exc).code}") from exc
    ordered = sorted(schema, key=lambda k: 0 if k["KeyType"] == "HASH" else 1)
    return tuple(k["AttributeName"] for k in ordered)


def backfill_change(source_table: str, key_names: Sequence[str], item: Item) -> Change:
    """A scanned item as the change the stream would deliver for it, at the backfill's version."""
    key = key_of(item, key_names)
    return Change(table=source_table, event="INSERT", key=key, key_id=key_id(key), new_image=item,
                  version=BACKFILL_VERSION, ttl_delete=False, event_id="backfill")


def shape_item(rule: TargetRule, source_table: str, key_names: Sequence[str], item: Item) -> Item | None:
    """What `rule` makes of a source item, exactly as the stream path would (projection, transform).

    None: the target must not hold the key. Raises ValueError (or what the transform raises)."""
    return rule.shape(backfill_change(source_table, key_names, item))


def call(clock: Clock, fn: Callable[..., Any], budget: float = 60.0, backoff: Backoff | None = None,
         **kwargs: Any) -> Any:
    """Call a read API, retrying transient errors (throttling, 5xx, connection) until `budget`
    seconds pass; the last error is raised as it came."""
    try:
        return until(clock, clock.monotonic() + budget, lambda: fn(**kwargs), describe,
                     backoff=backoff or Backoff(base=0.05, cap=2.0), retry_on=READS)
    except RetryBudgetSpent as spent:
        assert spent.cause is not None  # noqa: S101 - until always records the exception
        raise spent.cause from None


def scan_pages(clock: Clock, client: DynamoDBClient, table: str, segment: int, total: int, *,
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
