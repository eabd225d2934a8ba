"""`exact` mode: target items are exact copies; versions and tombstones live in a ledger table.

The one owner of the ledger: its row `{k: key id, v: version token, d: deleted?, exp: expiry of
tombstones}`, its attribute names and its condition expressions appear in this module only. Every
fenced write of `exact` mode (stream, backfill, repair, redrive) goes through `LedgerWriter.transact`
with a guard from `kcl_app.core.fence`:

1. Each write is one pair of actions in a TransactWriteItems call, so the ledger row and the item
   change atomically; at most 50 pairs (100 actions, DynamoDB's limit) per call, chunks of one batch
   sent concurrently. No chunk is started once the deadline has passed.
2. The ledger Put carries the guard's condition: `NewerThanSeen` `attribute_not_exists(v) OR v < :v`
   (a row without `v` never compares), `NeverSeen` `attribute_not_exists(k)`, `StillAt(V)` `v = :seen`
   (`attribute_not_exists(v)` for V None). The item action is a Put (upsert) or a Delete (removal).
3. A cancelled transaction is sorted per write by its CancellationReasons: a failed condition settles
   the write as `duplicate` (the same version seen, stream guard only) or `stale`; a refused action
   (`ValidationError`, `ItemCollectionSizeLimitExceeded`) fails that write alone; the rest is sent again.
4. A request refused as a whole (`invalid`: ValidationException, or any exception raised while
   building or sending it) is split in halves until the offending write stands alone; it fails alone.
5. Transient and unavailable errors are retried with backoff until the deadline; what is left fails
   with the last error. Every write ends in exactly one of applied/stale/duplicate/failed.

The ledger lives in the target's account and region, next to the target table.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from kcl_app.adapters.retry import describe
from kcl_app.adapters.wire_client import WireSender, send
from kcl_app.core.attrs import Item
from kcl_app.core.fence import NEWER_THAN_SEEN, Guard, NeverSeen, NewerThanSeen, refusal
from kcl_app.core.plan import Write
from kcl_app.core.retry import READS, WRITES, Backoff, ErrorInfo, classify, classify_reason, until
from kcl_app.core.versions import Version
from kcl_app.ports import ApplyResult, Clock

log = logging.getLogger("tablesync.ledger")

MAX_PAIRS = 50
LEDGER_KEY = "k"
LEDGER_VERSION = "v"
LEDGER_DELETED = "d"
LEDGER_EXPIRES = "exp"
_NAMES = {"#k": LEDGER_KEY, "#v": LEDGER_VERSION}
# The row a completed `reset_ledger` leaves: its `at` is when the ledger started over. Key ids are
# JSON objects (or digests), so no key id can start with "#".
RESET_MARKER = "#tablesync-reset"
RESET_AT = "at"


def ledger_schema(table: str) -> dict[str, Any]:
    """CreateTable arguments for a ledger (on-demand billing; TTL is enabled separately)."""
    return {
        "TableName": table,
        "AttributeDefinitions": [{"AttributeName": LEDGER_KEY, "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": LEDGER_KEY, "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }


def ensure_ledger(client: Any, table: str) -> bool:
    """Create the ledger table (and its TTL) if missing. Returns True when it was created."""
    try:
        client.describe_table(TableName=table)
        return False
    except ClientError as exc:
        if describe(exc).code != "ResourceNotFoundException":
            raise
    log.info("creating ledger table %s", table)
    try:
        client.create_table(**ledger_schema(table))
    except ClientError as exc:
        if describe(exc).code != "ResourceInUseException":  # another worker won the race
            raise
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    try:
        client.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": LEDGER_EXPIRES}
        )
    except ClientError as exc:
        if "already enabled" not in str(exc).lower():
            raise
    return True


_NEWER_THAN_SEEN = "attribute_not_exists(#v) OR #v < :v"
_USED_NAMES = {expr: {k: v for k, v in _NAMES.items() if k in expr}  # DynamoDB refuses unused names
               for expr in (_NEWER_THAN_SEEN, "attribute_not_exists(#k)", "attribute_not_exists(#v)", "#v = :seen")}


def condition(guard: Guard, version: Version, token: str | None = None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(ConditionExpression, names, values) of the ledger Put for `guard` writing `version` (whose
    token the caller may have at hand). The names dict is shared: it is only ever serialised."""
    if isinstance(guard, NewerThanSeen):
        return _NEWER_THAN_SEEN, _USED_NAMES[_NEWER_THAN_SEEN], {":v": {"S": token or version.token()}}
    values: dict[str, Any] = {}
    if isinstance(guard, NeverSeen):
        expr = "attribute_not_exists(#k)"
    elif guard.seen is None:
        expr = "attribute_not_exists(#v)"
    else:
        expr, values = "#v = :seen", {":seen": {"S": guard.seen.token()}}
    return expr, _USED_NAMES[expr], values


class LedgerWriter:
    """TargetWriter for `exact` mode. Thread-safe; chunks of one batch go out concurrently."""

    def __init__(
        self,
        name: str,
        client: Any,
        table: str,
        ledger_table: str,
        clock: Clock,
        backoff: Backoff | None = None,
        tombstone_ttl_seconds: float = 48 * 3600,
        max_concurrency: int = 4,
        wire: WireSender | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.wire = wire  # the lean path for TransactWriteItems (None: the client's own call)
        self.table = table
        self.ledger_table = ledger_table
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.tombstone_ttl_seconds = tombstone_ttl_seconds
        self.max_concurrency = max(1, max_concurrency)
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"ts-{name}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- TargetWriter -------------------------------------------------------------------------
    def apply(self, writes: Sequence[Write], deadline: float, guard: Guard = NEWER_THAN_SEEN) -> ApplyResult:
        return self.transact(writes, guard, deadline)

    def seen(self, key: Item, key_id: str, deadline: float) -> tuple[bool, Version | None]:
        """(the ledger has a row for `key_id`, the version in it), by a consistent read."""
        answer = until(self.clock, deadline,
                       lambda: self.client.get_item(TableName=self.ledger_table, Key={LEDGER_KEY: {"S": key_id}},
                                                    ConsistentRead=True),
                       describe, backoff=self.backoff, retry_on=READS)
        row = answer.get("Item")
        token = (row or {}).get(LEDGER_VERSION, {}).get("S")
        return row is not None, (Version.from_token(token) if token is not None else None)

    # -- the one transact loop ------------------------------------------------------------------
    def transact(self, writes: Sequence[Write], guard: Guard, deadline: float) -> ApplyResult:
        """Apply `writes` on `guard` (steps 1-5 of the module docstring)."""
        chunks = [list(writes[i : i + MAX_PAIRS]) for i in range(0, len(writes), MAX_PAIRS)]
        total = ApplyResult()
        if len(chunks) == 1:
            results = [self._chunk(chunks[0], guard, deadline)]
        else:
            results = list(self._pool.map(lambda c: self._chunk(c, guard, deadline), chunks))
        for r in results:
            total.merge(r)
        return total

    def _actions(self, write: Write, guard: Guard) -> list[dict[str, Any]]:
        token = write.version.token()
        row: dict[str, Any] = {
            LEDGER_KEY: {"S": write.key_id},
            LEDGER_VERSION: {"S": token},
            LEDGER_DELETED: {"BOOL": write.is_delete},
        }
        if write.is_delete:
            row[LEDGER_EXPIRES] = {"N": str(int(self.clock.now() + self.tombstone_ttl_seconds))}
        expr, names, values = condition(guard, write.version, token)
        put: dict[str, Any] = {"TableName": self.ledger_table, "Item": row, "ConditionExpression": expr,
                               "ExpressionAttributeNames": names, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if values:
            put["ExpressionAttributeValues"] = values
        if write.item is None:
            target: dict[str, Any] = {"Delete": {"TableName": self.table, "Key": write.key}}
        else:
            target = {"Put": {"TableName": self.table, "Item": write.item}}
        return [{"Put": put}, target]

    def _chunk(self, writes: list[Write], guard: Guard, deadline: float) -> ApplyResult:
        result = ApplyResult()
        if self.clock.monotonic() >= deadline:  # 1 no chunk is started after the deadline
            result.failed += [(w, "retry budget spent before the write was sent") for w in writes]
            return result
        pending = writes
        attempt = 0
        while pending:
            try:
                actions = [a for w in pending for a in self._actions(w, guard)]
                send(self.client, self.wire, "TransactWriteItems", {"TransactItems": actions})
                result.applied += pending
                return result
            except Exception as exc:  # noqa: BLE001 - every exception is classified; a local one is invalid
                info = describe(exc)
                reasons = (getattr(exc, "response", None) or {}).get("CancellationReasons") or []
                if info.code == "TransactionCanceledException" and len(reasons) == 2 * len(pending):
                    pending, pause = self._sort(pending, reasons, guard, result)  # 3
                    last: ErrorInfo = ErrorInfo(info.code, info.status, str([r.get("Code") for r in reasons]))
                    if not pause:
                        continue
                elif classify(info) == "invalid":  # 4 split until the offending write stands alone
                    if len(pending) == 1:
                        result.failed.append((pending[0], str(info)))
                        return result
                    half = len(pending) // 2
                    for part in (pending[:half], pending[half:]):
                        result.merge(self._chunk(part, guard, deadline))
                    return result
                else:
                    last = info
            if not pending:
                break
            if classify(last) not in WRITES or not self.backoff.wait(self.clock, attempt, deadline):  # 5
                # the pipeline logs the parking (one line per target and batch, with this reason)
                log.debug("target %s: retry budget spent, %d writes to park: %s", self.name, len(pending), last)
                result.failed += [(w, f"retry budget spent; last error {last}") for w in pending]
                return result
            attempt += 1
            result.retries += 1
        return result

    @staticmethod
    def _sort(pending: list[Write], reasons: list[dict[str, Any]], guard: Guard,
              result: ApplyResult) -> tuple[list[Write], bool]:
        """Settle what the cancellation reasons settle; return (still pending, backoff needed)."""
        retry: list[Write] = []
        pause = False
        for i, write in enumerate(pending):
            ledger, target = reasons[2 * i], reasons[2 * i + 1]
            kinds = (classify_reason(ledger.get("Code", "None")), classify_reason(target.get("Code", "None")))
            if kinds[0] == "condition":
                seen = (ledger.get("Item") or {}).get(LEDGER_VERSION, {}).get("S")
                getattr(result, refusal(guard, seen, write.version)).append(write)
            elif "invalid" in kinds:
                bad = ledger if kinds[0] == "invalid" else target
                result.failed.append((write, f"{bad.get('Code')}: {bad.get('Message') or ''}"))
            else:
                pause = pause or "transient" in kinds  # throttled or conflicting: wait before trying again
                retry.append(write)
        return retry, pause or len(retry) == len(pending)  # nothing settled: never spin without a pause


# -- what `tablesync check` and `backfill --reset-ledger` need to know of a ledger -------------------
@dataclass(frozen=True)
class LedgerState:
    """A ledger table as the pre-flight check sees it.

    `since` is when the ledger started remembering: its creation, or the last completed reset."""

    exists: bool
    created: datetime | None = None
    reset_at: datetime | None = None
    has_rows: bool = False

    @property
    def since(self) -> datetime | None:
        return max((t for t in (self.created, self.reset_at) if t is not None), default=None)


def ledger_state(client: Any, table: str) -> LedgerState:
    """Describe `table` (a ledger) and read at most two rows. Raises ClientError except for a missing table."""
    try:
        created = client.describe_table(TableName=table)["Table"].get("CreationDateTime")
    except ClientError as exc:
        if describe(exc).code == "ResourceNotFoundException":
            return LedgerState(exists=False)
        raise
    # Two rows suffice: if the marker is one of them, the other is a key's row when there is any.
    rows = client.scan(TableName=table, Limit=2, ConsistentRead=True).get("Items", [])
    marker = client.get_item(TableName=table, Key={LEDGER_KEY: {"S": RESET_MARKER}}, ConsistentRead=True).get("Item")
    reset_at = None
    if marker and RESET_AT in marker:
        reset_at = datetime.fromtimestamp(float(marker[RESET_AT]["N"]), tz=UTC)
    has_rows = any(r.get(LEDGER_KEY, {}).get("S") != RESET_MARKER for r in rows)
    return LedgerState(True, created, reset_at, has_rows)


def ledger_probe(table: str) -> dict[str, Any]:
    """A TransactWriteItems action that proves permission to write ledger rows and never writes one:
    a Put of a random row whose condition is a contradiction (see kcl_app.preflight)."""
    return {"Put": {"TableName": table, "Item": {LEDGER_KEY: {"S": f"#tablesync-probe-{uuid.uuid4()}"}},
                    "ConditionExpression": "attribute_exists(#k) AND attribute_not_exists(#k)",
                    "ExpressionAttributeNames": {"#k": LEDGER_KEY}}}


def reset_ledger(client: Any, table: str, now: Callable[[], float],
                 progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Forget every key of the ledger `table`, for a target that was re-created empty.

    Each row is deleted only if it is still what the scan read (`#v = :seen`, or no `v`): a row the
    stream wrote or advanced meanwhile is kept, as it describes the new table. Then the marker row
    records the reset's time, so that `tablesync check` knows the ledger is younger than the target.
    Hazard (docs/backfill.md): forgotten tombstones and versions no longer fence replays of changes
    older than the reset; run it with the workers stopped or a backfill right after, and verify.
    Returns (deleted, kept)."""
    deleted = kept = 0
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for row in page.get("Items", []):
            key = row.get(LEDGER_KEY, {}).get("S")
            if key is None or key == RESET_MARKER:
                continue
            seen = row.get(LEDGER_VERSION, {}).get("S")
            args: dict[str, Any] = {"TableName": table, "Key": {LEDGER_KEY: {"S": key}}}
            if seen is None:
                args.update(ConditionExpression="attribute_not_exists(#v)",
                            ExpressionAttributeNames={"#v": LEDGER_VERSION})
            else:
                args.update(ConditionExpression="#v = :seen", ExpressionAttributeNames={"#v": LEDGER_VERSION},
                            ExpressionAttributeValues={":seen": {"S": seen}})
            try:
                client.delete_item(**args)
                deleted += 1
            except ClientError as exc:
                if describe(exc).code != "ConditionalCheckFailedException":
                    raise
                kept += 1
        if progress:
            progress(deleted)
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    client.put_item(TableName=table, Item={LEDGER_KEY: {"S": RESET_MARKER}, RESET_AT: {"N": repr(now())}})
    return deleted, kept


__all__ = ["MAX_PAIRS", "RESET_MARKER", "LedgerState", "LedgerWriter", "condition", "ensure_ledger",
           "ledger_probe", "ledger_schema", "ledger_state", "reset_ledger"]
