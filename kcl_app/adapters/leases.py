"""The one reader of the KCL lease table (``tablesync status`` and the fleet figures of
``tablesync run`` both go through it).

The table is KCL's: ``leaseKey`` (the shard id), ``leaseOwner`` (a worker id, absent when
unassigned), ``checkpoint`` (a sequence number or TRIM_HORIZON / LATEST / AT_TIMESTAMP /
SHARD_END), ``checkpointSubSequenceNumber``, ``leaseCounter``, ``parentShardId`` (a string set)
and ``ownerSwitchesSinceCheckpoint``. A consistent scan, all pages; a row without a
``leaseKey`` is shown as ``?`` rather than dropped.
"""

from __future__ import annotations

from typing import Any

from kcl_app.core.fleet import Lease


def _int(item: dict[str, Any], name: str) -> int:
    try:
        return int(item.get(name, {}).get("N", "0"))
    except (TypeError, ValueError):
        return 0


def read_leases(dynamodb: Any, table: str) -> list[Lease]:
    """Every lease of ``table``, sorted by shard. Raises the client's ResourceNotFoundException
    when there is no such table (the caller says what that means)."""
    leases: list[Lease] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = dynamodb.scan(**kwargs)
        for item in page.get("Items", []):
            leases.append(Lease(
                shard=item.get("leaseKey", {}).get("S", "?"),
                owner=item.get("leaseOwner", {}).get("S"),
                checkpoint=item.get("checkpoint", {}).get("S"),
                parents=tuple(sorted(item.get("parentShardId", {}).get("SS", []))),
                lease_counter=_int(item, "leaseCounter"),
                sub_sequence=_int(item, "checkpointSubSequenceNumber"),
                owner_switches=_int(item, "ownerSwitchesSinceCheckpoint"),
            ))
        if "LastEvaluatedKey" not in page:
            return sorted(leases, key=lambda lease: lease.shard)
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def worker_table(app: str) -> str:
    """The KCL 3.x table where each worker reports itself (``<applicationName>-WorkerMetricStats``
    unless the properties name another)."""
    return f"{app}-WorkerMetricStats"


def read_worker_stats(dynamodb: Any, table: str) -> dict[str, float]:
    """Worker id -> when it last reported (epoch seconds), from KCL 3.x's WorkerMetricStats table:
    ``wid`` (the worker id) and ``lut`` (last update time, epoch seconds; a worker writes it every
    ``workerMetricsReporterFreqInMillis``, 30 s by default). A row without them is skipped. Raises
    the client's ResourceNotFoundException when there is no such table."""
    seen: dict[str, float] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True,
                              "ProjectionExpression": "wid, lut"}
    while True:
        page = dynamodb.scan(**kwargs)
        for item in page.get("Items", []):
            worker = item.get("wid", {}).get("S")
            try:
                updated = float(item.get("lut", {}).get("N", ""))
            except ValueError:
                continue
            if worker:
                seen[worker] = updated
        if "LastEvaluatedKey" not in page:
            return seen
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
