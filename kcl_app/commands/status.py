"""`tablesync status`: the KCL lease table, shard by shard.

Per shard: owner, checkpoint, lease counter, parent shards, and how far behind the tip it is
(MillisBehindLatest from one GetRecords after the checkpoint, when the stream is given).
A human table by default, `--json` for machines. The KCL's checkpoint values: a sequence number,
or TRIM_HORIZON / LATEST (not processed yet), or SHARD_END (a closed shard, fully processed).

Exit codes: 0 the leases were read; 1 no lease table of that name (the application never started
a worker in that region); 2 no region known (give the global --region, AWS_REGION or a profile's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from botocore.exceptions import NoRegionError

from kcl_app.adapters import leases as leases_adapter
from kcl_app.commands import described
from kcl_app.compose import lease_clients

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_kinesis import KinesisClient

SENTINELS = {"TRIM_HORIZON", "LATEST", "SHARD_END", "AT_TIMESTAMP"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show the KCL leases: owner, checkpoint and lag per shard",
        **described(__doc__),
    )
    p.add_argument("--app", required=True, help="KCL application name (the lease table's name, unless --lease-table)")
    p.add_argument("--lease-table", help="lease table name if it differs from --app")
    p.add_argument("--stream", help="stream name: adds 'behind' per shard (one GetRecords per shard)")
    p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"), help="emulator endpoint URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def read_leases(dynamodb: DynamoDBClient, table: str) -> list[dict[str, Any]]:
    """The lease table as rows for display (the reading itself is adapters/leases.py's)."""
    return [{"shard": lease.shard, "owner": lease.owner, "checkpoint": lease.checkpoint,
             "sub_sequence": lease.sub_sequence, "lease_counter": lease.lease_counter,
             "parents": list(lease.parents), "owner_switches": lease.owner_switches}
            for lease in leases_adapter.read_leases(dynamodb, table)]


def behind_millis(kinesis: KinesisClient, stream: str, lease: dict[str, Any]) -> int | None:
    """MillisBehindLatest as seen from the checkpoint (None when it cannot be known)."""
    checkpoint = lease["checkpoint"]
    if checkpoint == "SHARD_END":
        return 0
    if not checkpoint:
        return None
    args: dict[str, Any] = {"StreamName": stream, "ShardId": lease["shard"]}
    if checkpoint in SENTINELS:
        args["ShardIteratorType"] = checkpoint if checkpoint != "AT_TIMESTAMP" else "TRIM_HORIZON"
    else:
        args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=checkpoint)
    try:
        iterator = kinesis.get_shard_iterator(**args)["ShardIterator"]
        return int(kinesis.get_records(ShardIterator=iterator, Limit=1).get("MillisBehindLatest", 0))
    except Exception:  # status is best effort: a closed or trimmed shard has no answer
        return None


def run(args: argparse.Namespace) -> int:
    table = args.lease_table or args.app
    try:
        clients = lease_clients(getattr(args, "region", None), args.endpoint)
    except NoRegionError:
        print("tablesync status: no AWS region: pass --region REGION (the lease table's region), "
              "or set AWS_REGION", file=sys.stderr)
        return 2
    try:
        leases = read_leases(clients.dynamodb, table)
    except clients.dynamodb.exceptions.ResourceNotFoundException:
        print(f"tablesync status: no lease table {table!r}: has a worker of application {args.app!r} ever started "
              f"in {clients.region}?", file=sys.stderr)
        return 1
    if args.stream:
        for lease in leases:
            lease["behind_ms"] = behind_millis(clients.kinesis, args.stream, lease)
    if args.json:
        print(json.dumps({"lease_table": table, "shards": leases}, indent=2))
        return 0
    cols = ["shard", "owner", "checkpoint", "lease_counter", "parents"] + (["behind_ms"] if args.stream else [])
    rows = [[_cell(lease.get(c)) for c in cols] for lease in leases]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    owned = sum(1 for lease in leases if lease["owner"])
    print(f"{len(leases)} leases, {owned} owned, {len({lease['owner'] for lease in leases if lease['owner']})} workers")
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value) or "-"
    text = str(value)
    return text if len(text) <= 24 else text[:10] + "…" + text[-10:]
