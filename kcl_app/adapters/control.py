"""The control table: which targets an operator has paused (`tablesync pause` / `resume`).

Why a table: the state must reach every shard process of every worker, on every machine, without
a restart or a config rollout. One small DynamoDB table (`[control] table`, in the source's account
and region, on-demand) holds one item per paused target: `{target, paused_at, reason}`. Each shard
process re-reads it (one consistent Scan of a handful of items) every `interval` seconds on a
background thread, so a batch never waits for it; if a read fails, the last known state is kept
(a pause is never forgotten because the control table was briefly unreachable).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from botocore.exceptions import ClientError

from kcl_app.adapters.retry import describe
from kcl_app.ports import Clock

log = logging.getLogger("tablesync.control")

KEY = "target"


class ControlTable:
    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    def ensure(self) -> None:
        """Create the table if it does not exist (the first `pause` does)."""
        try:
            self.client.describe_table(TableName=self.table)
            return
        except ClientError as exc:
            if describe(exc).code != "ResourceNotFoundException":
                raise
        try:
            self.client.create_table(TableName=self.table, BillingMode="PAY_PER_REQUEST",
                                     AttributeDefinitions=[{"AttributeName": KEY, "AttributeType": "S"}],
                                     KeySchema=[{"AttributeName": KEY, "KeyType": "HASH"}])
        except ClientError as exc:
            if describe(exc).code != "ResourceInUseException":
                raise
        self.client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    def pause(self, target: str, reason: str, now: float) -> None:
        self.client.put_item(TableName=self.table, Item={KEY: {"S": target}, "paused_at": {"N": repr(now)},
                                                         "reason": {"S": reason[:1000]}})

    def resume(self, target: str) -> bool:
        """True when the target was paused."""
        answer = self.client.delete_item(TableName=self.table, Key={KEY: {"S": target}}, ReturnValues="ALL_OLD")
        return bool(answer.get("Attributes"))

    def paused(self) -> dict[str, dict[str, str]]:
        """{target: {"paused_at": epoch seconds, "reason": ...}} of every paused target."""
        out: dict[str, dict[str, str]] = {}
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self.client.scan(**kwargs)
            for item in page.get("Items", []):
                name = item.get(KEY, {}).get("S")
                if name:
                    out[name] = {"paused_at": item.get("paused_at", {}).get("N", ""),
                                 "reason": item.get("reason", {}).get("S", "")}
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class PausedTargets:
    """The paused targets as last read, refreshed every `interval` seconds on a background thread.
    `current()` never blocks on the table. A table that does not exist means nothing is paused."""

    def __init__(self, control: ControlTable, clock: Clock, interval: float = 5.0) -> None:
        self.control = control
        self.clock = clock
        self.interval = interval
        self._known: frozenset[str] = frozenset()
        self._next = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        try:
            known = frozenset(self.control.paused())
        except ClientError as exc:
            if describe(exc).code == "ResourceNotFoundException":
                known = frozenset()
            else:
                log.warning("control table %s unreadable (%s); keeping the paused targets as last read",
                            self.control.table, describe(exc))
                return
        except Exception as exc:  # noqa: BLE001 - the last known state is kept; tried again later
            log.warning("control table %s unreadable (%s); keeping the paused targets as last read",
                        self.control.table, type(exc).__name__)
            return
        with self._lock:
            if known != self._known:
                log.warning("paused targets now: %s", ", ".join(sorted(known)) or "none")
            self._known = known

    def current(self) -> frozenset[str]:
        now = self.clock.monotonic()
        if self._next == 0.0:  # the first call reads at once: a target paused before the start stays paused
            self._next = now + self.interval
            self.refresh()
        with self._lock:
            due = now >= self._next and (self._thread is None or not self._thread.is_alive())
            if due:
                self._next = now + self.interval
                self._thread = threading.Thread(target=self.refresh, name="ts-control", daemon=True)
                self._thread.start()
            return self._known
