"""`inline` mode: the version is an attribute of the target item; deletes leave a tombstone beside it.

The one owner of inline mode's fence: the item's version attribute, the tombstone table's rows
`{k: key id (bounded, kcl_app.core.attrs.key_id), v: version token, exp: expiry}` and every inline
condition expression appear in this module only (`condition()` builds them all). Every inline write
(stream, backfill, repair, redrive) goes through `InlineWriter.apply` with a guard from
`kcl_app.core.fence`.

The tombstone table has the ledger's schema (partition key `k`, TTL on `exp`), lives in the target's
account and region, and is written only by deletes. Three paths, one call each:

1. *update* (a put of a key the target holds): PutItem of the item plus its version attribute on
   `attribute_exists(<pk>) AND (the item's version is older)`: one write unit per KB, no transaction.
2. *create* (a put of a key the target does not hold): TransactWriteItems of a ConditionCheck on the
   tombstone (absent or older) and the Put of the item on `attribute_not_exists(<pk>)`.
3. *delete*: TransactWriteItems of the Put of the tombstone (absent or older) and the Delete of the
   item (absent, or its version older).

A put starts on the update path (on the create path for an INSERT record, or for the backfill);
a failed update condition that returns no item means the item is absent, so the put goes on by the
create path; a create whose item condition fails (the item appeared) goes back to the update path.

Why it is safe. Call the key's *fence* F the item's version while the item exists, else the
tombstone's version (none if neither). Invariant: while the item exists, its version is newer than
any tombstone of its key (an item is only created by path 2, over an older tombstone, and only
raised by path 1; a tombstone is only written by path 3, which removes the item in the same
transaction). Each path checks, atomically in its one call, that its version is newer than F:
path 1 because the item exists (F is the item's version), path 2 because the item is absent and
the tombstone older, path 3 on both. Each applied write sets F to its own version. So F only grows,
every applied write is newer than everything applied before, and a key ends in the state of the
newest change delivered, whatever the order, duplicates, replays or concurrent (zombie) writers:
a change older than a delete is refused on the create path by the tombstone.

The residual window, stated precisely: a tombstone expires (DynamoDB TTL, never before `exp`) the
tombstone TTL (`stream_retention_hours` + `tombstone_margin_hours`) after its delete was applied.
A change older than that delete that reaches the target *after* the tombstone expired re-creates the
item. The stream cannot deliver one if `stream_retention_hours` is the stream's real retention; an
older dead-letter entry is re-read from the source by redrive, not replayed. Items the target holds
without a version attribute (not written by tablesync) count as older than any change.

Outcomes: a failed condition settles the write as `duplicate` (same version seen, stream guard only)
or `stale`; an `invalid` error (or any exception building or sending the call) fails it at once;
transient and unavailable errors are retried with backoff until the deadline, then fail with the
last error. No write is started once the deadline has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from kcl_app.adapters.ledger import ensure_ledger
from kcl_app.adapters.retry import describe
from kcl_app.adapters.wire_client import OPERATION_OF, WireSender, send
from kcl_app.core.attrs import Item
from kcl_app.core.fence import NEWER_THAN_SEEN, Guard, NeverSeen, NewerThanSeen, refusal
from kcl_app.core.plan import Write
from kcl_app.core.retry import READS, WRITES, Backoff, ErrorInfo, classify, classify_reason, until
from kcl_app.core.versions import Version
from kcl_app.ports import ApplyResult, Clock

log = logging.getLogger("tablesync.inline")

Part = Literal["update", "create-item", "create-tombstone", "delete-item", "delete-tombstone"]
Path = Literal["update", "create", "delete"]
Expression = tuple[str, dict[str, str], dict[str, Any]]
# The tombstone row. The names are the ledger's on purpose: `ensure_ledger` creates the table (key and TTL
# attribute), and a ledger table made by the infrastructure serves as a tombstone table.
TOMBSTONE_KEY = "k"
TOMBSTONE_VERSION = "v"
TOMBSTONE_EXPIRES = "exp"
_FLIPS_WITHOUT_PAUSE = 2


def ensure_tombstones(client: Any, table: str) -> bool:
    """Create the tombstone table (the ledger's schema and TTL) if missing. True when created."""
    return ensure_ledger(client, table)


# Every inline condition, per guard and per action (the literal expressions; names and values below).
_CONDITIONS: dict[str, dict[Part, str]] = {
    "newer": {"update": "attribute_exists(#pk) AND (attribute_not_exists(#va) OR #va < :v)",
              "create-item": "attribute_not_exists(#pk)",
              "create-tombstone": "attribute_not_exists(#tv) OR #tv < :v",
              "delete-item": "attribute_not_exists(#va) OR #va < :v",
              "delete-tombstone": "attribute_not_exists(#tv) OR #tv < :v"},
    "never": {"update": "attribute_not_exists(#pk)", "create-item": "attribute_not_exists(#pk)",
              "create-tombstone": "attribute_not_exists(#tk)", "delete-item": "attribute_not_exists(#pk)",
              "delete-tombstone": "attribute_not_exists(#tk)"},
    # StillAt: the fence still holds the version read before (the item's, or for an absent item its tombstone's)
    "still-none": {"update": "attribute_exists(#pk) AND attribute_not_exists(#va)",
                   "create-item": "attribute_not_exists(#pk)", "create-tombstone": "attribute_not_exists(#tv)",
                   "delete-item": "attribute_not_exists(#va)",
                   "delete-tombstone": "attribute_not_exists(#tv) OR #tv < :v"},
    "still-at": {"update": "attribute_exists(#pk) AND #va = :seen", "create-item": "attribute_not_exists(#pk)",
                 "create-tombstone": "#tv = :seen", "delete-item": "#va = :seen",
                 "delete-tombstone": "attribute_not_exists(#tv) OR #tv < :v"},
}


def condition(guard: Guard, write: Write, version_attribute: str, part: Part) -> Expression:
    """(ConditionExpression, names, values) of one action of an inline call (see the module docstring)."""
    if isinstance(guard, NewerThanSeen):
        kind = "newer"
    elif isinstance(guard, NeverSeen):
        kind = "never"
    else:
        kind = "still-none" if guard.seen is None else "still-at"
    expr = _CONDITIONS[kind][part]
    names = {"#va": version_attribute, "#pk": next(iter(write.key)), "#tv": TOMBSTONE_VERSION, "#tk": TOMBSTONE_KEY}
    values: dict[str, Any] = {":v": {"S": write.version.token()}}
    if not isinstance(guard, NewerThanSeen | NeverSeen) and guard.seen is not None:
        values[":seen"] = {"S": guard.seen.token()}
    # DynamoDB refuses names and values that the expression does not use
    return expr, {k: v for k, v in names.items() if k in expr}, {k: v for k, v in values.items() if k in expr}


class InlineWriter:
    """TargetWriter for `inline` mode. Thread-safe."""

    def __init__(
        self,
        name: str,
        client: Any,
        table: str,
        clock: Clock,
        version_attribute: str = "_tablesync_version",
        backoff: Backoff | None = None,
        max_concurrency: int = 16,
        *,
        tombstone_table: str,
        tombstone_ttl_seconds: float = 48 * 3600,
        wire: WireSender | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.wire = wire  # the lean path for its PutItem/TransactWriteItems (None: the client's own calls)
        self.table = table
        self.clock = clock
        self.version_attribute = version_attribute
        self.backoff = backoff or Backoff()
        self.tombstone_table = tombstone_table
        self.tombstone_ttl_seconds = tombstone_ttl_seconds
        self._pool = ThreadPoolExecutor(max(1, max_concurrency), thread_name_prefix=f"ts-{name}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def apply(self, writes: Sequence[Write], deadline: float, guard: Guard = NEWER_THAN_SEEN) -> ApplyResult:
        result = ApplyResult()
        for outcome, write, extra, retries in self._pool.map(lambda w: self._apply_one(w, guard, deadline), writes):
            result.retries += retries
            if outcome == "failed":
                result.failed.append((write, extra))
            else:
                getattr(result, outcome).append(write)
        return result

    def seen(self, key: Item, key_id: str, deadline: float) -> tuple[bool, Version | None]:
        """(the item exists, the fence's version: the item's, else its tombstone's), by consistent reads."""
        def read(table: str, k: Item) -> dict[str, Any] | None:
            answer = until(self.clock, deadline,
                           lambda: self.client.get_item(TableName=table, Key=k, ConsistentRead=True),
                           describe, backoff=self.backoff, retry_on=READS)
            found: dict[str, Any] | None = answer.get("Item")
            return found

        item = read(self.table, key)
        if item is not None:
            token = item.get(self.version_attribute, {}).get("S")
        else:
            row = read(self.tombstone_table, {TOMBSTONE_KEY: {"S": key_id}})
            token = (row or {}).get(TOMBSTONE_VERSION, {}).get("S")
        return item is not None, (Version.from_token(token) if token is not None else None)

    # -- the requests of the three paths ---------------------------------------------------------
    def _action(self, write: Write, guard: Guard, part: Part, body: dict[str, Any]) -> dict[str, Any]:
        expr, names, values = condition(guard, write, self.version_attribute, part)
        action = {**body, "ConditionExpression": expr, "ExpressionAttributeNames": names,
                  "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if values:
            action["ExpressionAttributeValues"] = values
        return action

    def _item(self, write: Write) -> dict[str, Any]:
        return {**(write.item or {}), self.version_attribute: {"S": write.version.token()}}

    def _tombstone(self, write: Write) -> dict[str, Any]:
        return {TOMBSTONE_KEY: {"S": write.key_id}}

    def _request(self, write: Write, guard: Guard, path: Path) -> tuple[str, dict[str, Any]]:
        """(client method, arguments) of `write` on `path`."""
        if path == "update":
            put = {"TableName": self.table, "Item": self._item(write)}
            return "put_item", self._action(write, guard, "update", put)
        if path == "create":
            check = self._action(write, guard, "create-tombstone",
                                 {"TableName": self.tombstone_table, "Key": self._tombstone(write)})
            put = self._action(write, guard, "create-item", {"TableName": self.table, "Item": self._item(write)})
            return "transact_write_items", {"TransactItems": [{"ConditionCheck": check}, {"Put": put}]}
        row = {**self._tombstone(write), TOMBSTONE_VERSION: {"S": write.version.token()},
               TOMBSTONE_EXPIRES: {"N": str(int(self.clock.now() + self.tombstone_ttl_seconds))}}
        tomb = self._action(write, guard, "delete-tombstone", {"TableName": self.tombstone_table, "Item": row})
        gone = self._action(write, guard, "delete-item", {"TableName": self.table, "Key": write.key})
        return "transact_write_items", {"TransactItems": [{"Put": tomb}, {"Delete": gone}]}

    @staticmethod
    def _first_path(write: Write, guard: Guard) -> Path:
        if write.item is None:
            return "delete"
        if isinstance(guard, NeverSeen) or write.change.event == "INSERT":
            return "create"
        return "update"

    # -- one write, to its end -------------------------------------------------------------------
    def _apply_one(self, write: Write, guard: Guard, deadline: float) -> tuple[str, Write, str, int]:
        if self.clock.monotonic() >= deadline:
            return "failed", write, "retry budget spent before the write was sent", 0
        path = self._first_path(write, guard)
        attempt = flips = 0
        while True:
            try:
                method, request = self._request(write, guard, path)
                send(self.client, self.wire, OPERATION_OF[method], request)
                return "applied", write, "", attempt
            except Exception as exc:  # noqa: BLE001 - every exception is classified; a local one is invalid
                last: ErrorInfo = describe(exc)
                answer: dict[str, Any] = getattr(exc, "response", None) or {}
                if last.code == "ConditionalCheckFailedException":  # the update path
                    old = answer.get("Item")
                    if old is not None:
                        seen = old.get(self.version_attribute, {}).get("S")
                        return refusal(guard, seen, write.version), write, "", attempt
                    path, flips = "create", flips + 1  # the item is absent: create it, over its tombstone
                    if flips <= _FLIPS_WITHOUT_PAUSE:
                        continue
                elif last.code == "TransactionCanceledException" and len(answer.get("CancellationReasons") or []) == 2:
                    settled = self._cancelled(write, guard, path, answer["CancellationReasons"])
                    if settled in ("stale", "duplicate"):
                        return settled, write, "", attempt
                    if settled == "flip":  # the item appeared since: update it instead
                        path, flips = "update", flips + 1
                        if flips <= _FLIPS_WITHOUT_PAUSE:
                            continue
                    elif settled.startswith("invalid"):
                        return "failed", write, settled.partition(":")[2].strip(), attempt
                    last = ErrorInfo(last.code, last.status,
                                     str([r.get("Code") for r in answer["CancellationReasons"]]))
                elif classify(last) not in WRITES:
                    return "failed", write, str(last), attempt
            if not self.backoff.wait(self.clock, attempt, deadline):
                return "failed", write, f"retry budget spent; last error {last}", attempt
            attempt += 1

    def _cancelled(self, write: Write, guard: Guard, path: Path, reasons: list[dict[str, Any]]) -> str:
        """What a cancelled create or delete means: stale/duplicate, `flip`, `invalid: why`, or `retry`."""
        tomb, item = (reasons[0], reasons[1])
        kinds = (classify_reason(tomb.get("Code", "None")), classify_reason(item.get("Code", "None")))
        if kinds[0] == "condition":  # a tombstone as new as this write, or (StillAt) not the one read
            return refusal(guard, (tomb.get("Item") or {}).get(TOMBSTONE_VERSION, {}).get("S"), write.version)
        if kinds[1] == "condition":
            if path == "create":  # the item exists: seen for the backfill, else to be updated instead
                return "stale" if isinstance(guard, NeverSeen) else "flip"
            return refusal(guard, (item.get("Item") or {}).get(self.version_attribute, {}).get("S"), write.version)
        if "invalid" in kinds:
            bad = tomb if kinds[0] == "invalid" else item
            return f"invalid: {bad.get('Code')}: {bad.get('Message') or ''}"
        return "retry"


__all__ = ["InlineWriter", "condition", "ensure_tombstones"]
