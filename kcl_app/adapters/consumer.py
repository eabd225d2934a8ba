"""Is the stream consumer reading? The checks a backfill needs before it scans.

A backfill is safe only when the KCL consumer reads the table's stream from a position before the
scan begins (changes made during the scan reach the targets through the stream). These functions
read the table's streaming destination, the KCL lease table and the stream's shards through the
clients they are given, and raise StreamNotReady with the reason and what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.retry import error_code
from kcl_app.core.errors import ReplicationError

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_kinesis import KinesisClient


class StreamNotReady(ReplicationError):
    """The stream consumer is not (provably) reading from a position before now."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def stream_of(dynamodb: DynamoDBClient, table: str) -> str:
    """The name of the Kinesis stream the table's streaming destination writes to."""
    try:
        answer = dynamodb.describe_kinesis_streaming_destination(TableName=table)
    except (ClientError, BotoCoreError) as exc:
        raise StreamNotReady(f"cannot find the Kinesis streaming destination of table {table!r} "
                             f"({error_code(exc)}); pass --stream NAME") from exc
    active = [d for d in answer.get("KinesisDataStreamDestinations", [])
              if d.get("DestinationStatus") in ("ACTIVE", "ENABLING")]
    if not active:
        raise StreamNotReady(f"table {table!r} has no active Kinesis streaming destination: enable it and start "
                             "the KCL worker before backfilling (changes made during the scan travel by the stream)")
    return str(active[0]["StreamArn"]).rsplit("/", 1)[-1]


def check_stream_consumer(dynamodb: DynamoDBClient, kinesis: KinesisClient, app: str, stream: str) -> list[str]:
    """Check that the KCL application `app` holds a lease for every open shard of `stream`.

    A lease checkpointed at LATEST that no worker owns yet is refused: the consumer would start
    reading only when a worker takes it, after changes the scan has already missed.
    Returns the open shard ids. Raises StreamNotReady with the reason."""
    try:
        leases: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": app, "ConsistentRead": True}
        while True:
            page = dynamodb.scan(**kwargs)
            leases += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        raise StreamNotReady(
            f"the KCL lease table {app!r} does not exist, so no stream consumer has started. A backfill is only "
            "safe when the consumer reads the stream from a position before the scan begins (changes made "
            "during the scan reach the targets through the stream). Start the worker (tablesync run) and wait "
            "until it holds a lease for every shard, or pass --skip-stream-check if those changes will reach "
            "the targets another way (e.g. a replay from TRIM_HORIZON).") from exc
    by_shard = {str(lease["leaseKey"]["S"]).rsplit(":", 1)[-1]: lease for lease in leases if "leaseKey" in lease}
    listed = kinesis.list_shards(StreamName=stream)
    shards = list(listed["Shards"])
    while listed.get("NextToken"):
        listed = kinesis.list_shards(NextToken=listed["NextToken"])
        shards += listed["Shards"]
    open_ids = [s["ShardId"] for s in shards if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})]
    missing = [s for s in open_ids if s not in by_shard]
    if missing:
        raise StreamNotReady(f"the KCL lease table {app!r} has no lease for open shard(s) {missing} of stream "
                             f"{stream!r}: the consumer is not reading them yet; wait for the worker's shard "
                             "sync (or pass --skip-stream-check)")
    latest = [s for s in open_ids if by_shard[s].get("checkpoint", {}).get("S") == "LATEST"
              and not by_shard[s].get("leaseOwner")]
    if latest:
        raise StreamNotReady(f"lease(s) {latest} of {app!r} start at LATEST and no worker has taken them: "
                             "changes made before a worker starts would be missed; start the worker first")
    return open_ids
