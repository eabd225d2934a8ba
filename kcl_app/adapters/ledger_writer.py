"""`exact` mode: target items are exact copies; versions and tombstones live in a ledger table.

Each write is one pair of actions in a TransactWriteItems call (so the ledger row and the item
change atomically), at most 50 pairs (100 actions, DynamoDB's limit) per call:

1. Put the ledger row `{k: key id, v: version token, d: deleted?, exp: expiry of tombstones}`
   on condition `attribute_not_exists(v) OR v < :v` (a row without `v` never compares).
2. Put the item (upsert) or Delete it (removal) in the target table.

A stale or duplicate write fails condition 1, which cancels the whole transaction; the
cancellation reasons name the failing pairs, which are dropped, and the rest is sent again.
The ledger lives in the target's account and region, next to the target table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.retry import Backoff, classify, error_code
from kcl_app.core.plan import Write
from kcl_app.core.versions import Version
from kcl_app.ports import ApplyResult, Clock

log = logging.getLogger("tablesync.ledger")

MAX_PAIRS = 50
LEDGER_KEY = "k"
LEDGER_VERSION = "v"
LEDGER_DELETED = "d"
LEDGER_EXPIRES = "exp"
_CONDITION = "attribute_not_exists(#v) OR #v < :v"


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
        if error_code(exc) != "ResourceNotFoundException":
            raise
    log.info("creating ledger table %s", table)
    try:
        client.create_table(**ledger_schema(table))
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":  # another worker won the race
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
    ) -> None:
        self.name = name
        self.client = client
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
    def apply(self, writes: Sequence[Write], deadline: float) -> ApplyResult:
        chunks = [list(writes[i : i + MAX_PAIRS]) for i in range(0, len(writes), MAX_PAIRS)]
        total = ApplyResult()
        if len(chunks) == 1:
            results = [self._apply_chunk(chunks[0], deadline)]
        else:
            results = list(self._pool.map(lambda c: self._apply_chunk(c, deadline), chunks))
        for r in results:
            total.merge(r)
        return total

    # -- one transaction, with its retries ------------------------------------------------------
    def _actions(self, write: Write) -> list[dict[str, Any]]:
        row: dict[str, Any] = {
            LEDGER_KEY: {"S": write.key_id},
            LEDGER_VERSION: {"S": write.version.token()},
            LEDGER_DELETED: {"BOOL": write.is_delete},
        }
        if write.is_delete:
            expires = int(self.clock.now() + self.tombstone_ttl_seconds)
            row[LEDGER_EXPIRES] = {"N": str(expires)}
        ledger = {
            "Put": {
                "TableName": self.ledger_table,
                "Item": row,
                "ConditionExpression": _CONDITION,
                "ExpressionAttributeNames": {"#v": LEDGER_VERSION},
                "ExpressionAttributeValues": {":v": {"S": write.version.token()}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        if write.item is None:
            target: dict[str, Any] = {"Delete": {"TableName": self.table, "Key": write.key}}
        else:
            target = {"Put": {"TableName": self.table, "Item": write.item}}
        return [ledger, target]

    def _apply_chunk(self, writes: list[Write], deadline: float) -> ApplyResult:
        result = ApplyResult()
        pending = writes
        attempt = 0
        while pending:
            try:
                actions = [a for w in pending for a in self._actions(w)]
                self.client.transact_write_items(TransactItems=actions)
                result.applied += pending
                return result
            except ClientError as exc:
                code = error_code(exc)
                if code == "TransactionCanceledException":
                    reasons = exc.response.get("CancellationReasons") or []
                    pending, backoff_needed = self._sort_cancelled(pending, reasons, result)
                    if not backoff_needed:
                        continue
                    last = f"{code}: {[r.get('Code') for r in reasons]}"
                elif classify(exc) == "invalid":
                    # The request as a whole was refused (e.g. an attribute type DynamoDB rejects).
                    # Split it until the offending write stands alone, then park it.
                    if len(pending) == 1:
                        result.failed.append((pending[0], f"{code}: {exc.response['Error'].get('Message')}"))
                        return result
                    half = len(pending) // 2
                    for part in (pending[:half], pending[half:]):
                        result.merge(self._apply_chunk(part, deadline))
                    return result
                else:
                    last = f"{code}: {exc.response.get('Error', {}).get('Message', '')}"
            except BotoCoreError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if not pending:
                break
            if not self.backoff.wait(self.clock, attempt, deadline):
                # the pipeline logs the parking (one line per target and batch, with this reason)
                log.debug("target %s: retry budget spent, %d writes to park: %s", self.name, len(pending), last)
                result.failed += [(w, f"retry budget spent; last error {last}") for w in pending]
                return result
            attempt += 1
            result.retries += 1
        return result

    def _sort_cancelled(
        self, pending: list[Write], reasons: list[dict[str, Any]], result: ApplyResult
    ) -> tuple[list[Write], bool]:
        """Settle what the cancellation reasons settle; return (still pending, backoff needed)."""
        if len(reasons) != 2 * len(pending):
            return pending, True  # no usable reasons: retry everything after a pause
        retry: list[Write] = []
        backoff_needed = False
        for i, write in enumerate(pending):
            ledger, target = reasons[2 * i], reasons[2 * i + 1]
            lcode, tcode = ledger.get("Code", "None"), target.get("Code", "None")
            if lcode == "ConditionalCheckFailed":
                seen = (ledger.get("Item") or {}).get(LEDGER_VERSION, {}).get("S")
                same = seen is not None and Version.from_token(seen) == write.version
                (result.duplicate if same else result.stale).append(write)
            elif "ValidationError" in (lcode, tcode) or "ItemCollectionSizeLimitExceeded" in (lcode, tcode):
                msg = ledger.get("Message") or target.get("Message") or ""
                result.failed.append((write, f"{lcode if lcode != 'None' else tcode}: {msg}"))
            else:
                if lcode not in ("None", "") or tcode not in ("None", ""):
                    backoff_needed = True  # throttled or conflicting: wait before trying again
                retry.append(write)
        if len(retry) == len(pending):
            backoff_needed = True  # nothing settled: never spin without a pause
        return retry, backoff_needed

