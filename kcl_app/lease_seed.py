"""Pre-create the KCL lease table and one lease per shard, so a fresh local daemon starts fast.

Why: on an empty lease table, KCL 3.1.3's ``Scheduler.shouldInitiateLeaseSync`` waits a random
1-30 s (polling every 3 s) before its first shard sync, and the sync task then idles 5 s. With
the leases already present the worker skips both and takes its leases at the first assignment
round. The items written here are exactly what the KCL's own shard sync writes for a root shard
(``DynamoDBLeaseSerializer``: leaseKey, leaseCounter 0, ownerSwitchesSinceCheckpoint 0,
checkpoint = the initial-position sentinel, checkpointSubSequenceNumber 0, startingHashKey,
endingHashKey; no owner).

For local stacks and tests on streams that were never resharded (a shard with a parent is
refused: the KCL's lineage rules belong to the KCL). Production lets the KCL create its leases.
Idempotent: existing leases are left as they are (conditional put).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

log = logging.getLogger(__name__)

InitialPosition = Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]


class SeedRefused(ValueError):
    """The stream cannot be seeded safely (``shard_id`` has a parent)."""

    def __init__(self, shard_id: str) -> None:
        super().__init__(f"shard {shard_id} has a parent: let the KCL create the leases")
        self.shard_id = shard_id


def _list_shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    page = kinesis.list_shards(StreamName=stream)
    shards += page["Shards"]
    while page.get("NextToken"):
        page = kinesis.list_shards(NextToken=page["NextToken"])
        shards += page["Shards"]
    return shards


def ensure_lease_table(dynamodb: Any, table: str) -> bool:
    """Create the lease table as the KCL does (``leaseKey`` string hash key, on-demand) unless it
    exists; wait until it is ACTIVE. Returns True when it was created here."""
    try:
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        created = True
    except dynamodb.exceptions.ResourceInUseException:
        created = False
    dynamodb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return created


def seed_leases(
    dynamodb: Any, kinesis: Any, table: str, stream: str, initial_position: InitialPosition = "TRIM_HORIZON"
) -> list[str]:
    """Ensure ``table`` exists and holds an unowned lease for every shard of ``stream``,
    checkpointed at ``initial_position`` (for AT_TIMESTAMP the daemon's
    ``initialPositionInStreamExtended`` supplies the timestamp). Returns the shard ids whose lease
    was written now. Raises :class:`SeedRefused` if any shard has a parent."""
    shards = _list_shards(kinesis, stream)
    for shard in shards:
        if shard.get("ParentShardId") or shard.get("AdjacentParentShardId"):
            raise SeedRefused(shard["ShardId"])
    ensure_lease_table(dynamodb, table)
    written: list[str] = []
    for shard in shards:
        hash_range = shard["HashKeyRange"]
        item = {
            "leaseKey": {"S": shard["ShardId"]},
            "leaseCounter": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
            "checkpoint": {"S": initial_position},
            "checkpointSubSequenceNumber": {"N": "0"},
            "startingHashKey": {"S": hash_range["StartingHashKey"]},
            "endingHashKey": {"S": hash_range["EndingHashKey"]},
        }
        try:
            dynamodb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(leaseKey)")
            written.append(shard["ShardId"])
        except dynamodb.exceptions.ConditionalCheckFailedException:
            continue
    log.info("lease table %s: seeded %d of %d shard leases of %s at %s",
             table, len(written), len(shards), stream, initial_position)
    return written
