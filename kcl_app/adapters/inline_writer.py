"""`inline` mode: the version is an attribute of the target item; one conditional call per change.

Cheaper than `exact` (about 1 write unit per change instead of about 4) with a weaker guarantee,
stated precisely:

* Puts are fenced: `attribute_not_exists(#v) OR #v < :v`, so a stale or duplicate put never
  overwrites a newer item.
* Deletes are fenced against newer items the same way, but a delete leaves no tombstone. A put
  that is *older* than an applied delete and arrives *after* it (a replay, a reordered record,
  a late redrive) re-creates the item with its old content. The target then differs from the
  source until a newer change of that key arrives or `tablesync verify --repair` runs.
* Target items carry one extra attribute (default `_tablesync_version`); `verify` ignores it.

Use `exact` unless replays and reordering across deletes cannot happen or do not matter.
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

log = logging.getLogger("tablesync.inline")
_CONDITION = "attribute_not_exists(#v) OR #v < :v"


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
    ) -> None:
        self.name = name
        self.client = client
        self.table = table
        self.clock = clock
        self.version_attribute = version_attribute
        self.backoff = backoff or Backoff()
        self._pool = ThreadPoolExecutor(max(1, max_concurrency), thread_name_prefix=f"ts-{name}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def apply(self, writes: Sequence[Write], deadline: float) -> ApplyResult:
        result = ApplyResult()
        for outcome, write, extra, retries in self._pool.map(lambda w: self._apply_one(w, deadline), writes):
            result.retries += retries
            if outcome == "failed":
                result.failed.append((write, extra))
            else:
                getattr(result, outcome).append(write)
        return result

    def _request(self, write: Write) -> tuple[str, dict[str, Any]]:
        common = {
            "TableName": self.table,
            "ConditionExpression": _CONDITION,
            "ExpressionAttributeNames": {"#v": self.version_attribute},
            "ExpressionAttributeValues": {":v": {"S": write.version.token()}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if write.item is None:
            return "delete_item", {**common, "Key": write.key}
        item = {**write.item, self.version_attribute: {"S": write.version.token()}}
        return "put_item", {**common, "Item": item}

    def _apply_one(self, write: Write, deadline: float) -> tuple[str, Write, str, int]:
        method, request = self._request(write)
        attempt = 0
        while True:
            try:
                getattr(self.client, method)(**request)
                return "applied", write, "", attempt
            except ClientError as exc:
                code = error_code(exc)
                if code == "ConditionalCheckFailedException":
                    seen = (exc.response.get("Item") or {}).get(self.version_attribute, {}).get("S")
                    same = seen is not None and Version.from_token(seen) == write.version
                    return ("duplicate" if same else "stale"), write, "", attempt
                if classify(exc) == "invalid":
                    return "failed", write, f"{code}: {exc.response['Error'].get('Message')}", attempt
                last = f"{code}: {exc.response.get('Error', {}).get('Message', '')}"
            except BotoCoreError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if not self.backoff.wait(self.clock, attempt, deadline):
                return "failed", write, f"retry budget spent; last error {last}", attempt
            attempt += 1
