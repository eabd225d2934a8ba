"""Keys at DynamoDB's exact limits replicate, in exact and inline mode, through the real processor,
the real writers and moto: a 2,048-byte S or B partition key, a 1,024-byte sort key, both at once.

The ledger row (exact) or tombstone row (inline) of such a key carries the bounded digest id (`h1:` +
SHA-256), and the fence still holds on it: an older change of the same key is stale, a delete is not
undone by an older put.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import boto3
import pytest
from amazon_kclpy import kcl

from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.processor import ReplicationProcessor
from kcl_app.compose import build_engine
from kcl_app.config import parse
from kcl_app.core.attrs import HASHED_KEY_ID_PREFIX, item_to_wire, key_id

pytestmark = pytest.mark.usefixtures("moto")

REGION = "eu-west-1"
NOW_US = 1_790_000_000_000_000
PARTITION_S = "p" * 2047 + "z"  # 2,048 bytes
PARTITION_UTF8 = "é" * 1024  # 2,048 bytes, 1,024 characters
PARTITION_B = bytes(range(256)) * 8  # 2,048 bytes
SORT_S = "s" * 1024
SORT_B = b"\xfe" * 1024

CASES = {
    "s-partition": ([("pk", "S")], {"pk": {"S": PARTITION_S}}),
    "utf8-partition": ([("pk", "S")], {"pk": {"S": PARTITION_UTF8}}),
    "b-partition": ([("pk", "B")], {"pk": {"B": PARTITION_B}}),
    "composite-s": ([("pk", "S"), ("sk", "S")], {"pk": {"S": PARTITION_S}, "sk": {"S": SORT_S}}),
    "composite-b": ([("pk", "B"), ("sk", "B")], {"pk": {"B": PARTITION_B}, "sk": {"B": SORT_B}}),
    "composite-mixed": ([("pk", "S"), ("sk", "N")], {"pk": {"S": PARTITION_UTF8}, "sk": {"N": "9" * 38}}),
}


def create(client: Any, table: str, schema: list[tuple[str, str]]) -> None:
    client.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in schema],
        KeySchema=[{"AttributeName": n, "KeyType": ("HASH", "RANGE")[i]} for i, (n, _) in enumerate(schema)],
        BillingMode="PAY_PER_REQUEST")


def change(event: str, key: dict[str, Any], micros: int, image: dict[str, Any] | None = None) -> bytes:
    ddb: dict[str, Any] = {"ApproximateCreationDateTime": micros, "Keys": item_to_wire(key), "SizeBytes": 5000}
    if image is not None:
        ddb["NewImage"] = item_to_wire({**key, **image})
    return json.dumps({"awsRegion": "us-east-1", "eventID": f"e{micros}", "eventName": event, "userIdentity": None,
                       "recordFormat": "application/json", "tableName": "source", "dynamodb": ddb,
                       "eventSource": "aws:dynamodb"}).encode()


def deliver(engine: Any, clock: Any, records: list[bytes], first_seq: int = 1) -> list[dict[str, Any]]:
    """One processRecords through kclpy's loop; returns what the processor sent."""
    msgs = [{"action": "record", "data": base64.b64encode(d).decode(), "sequenceNumber": str(first_seq + i),
             "subSequenceNumber": 0, "partitionKey": "A" * 32, "approximateArrivalTimestamp": NOW_US // 1000}
            for i, d in enumerate(records)]
    last = str(first_seq + len(records) - 1)
    script = [{"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "LATEST", "subSequenceNumber": 0},
              {"action": "processRecords", "records": msgs, "millisBehindLatest": 0},
              {"action": "checkpoint", "sequenceNumber": last, "subSequenceNumber": 0, "error": None}]
    out, err = io.StringIO(), io.StringIO()
    exits: list[int] = []
    proc = ReplicationProcessor(lambda: engine.pipeline, clock, RecordingMetrics(), exit=exits.append)
    kcl.KCLProcess(proc, input_file=io.StringIO("".join(json.dumps(m) + "\n" for m in script)),
                   output_file=out, error_file=err).run()
    assert "Caught exception" not in err.getvalue() and exits == []
    sent = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert {"action": "checkpoint", "sequenceNumber": last, "subSequenceNumber": 0} in sent
    return sent


def items(client: Any, table: str) -> list[dict[str, Any]]:
    return client.scan(TableName=table, ConsistentRead=True)["Items"]


@pytest.mark.parametrize("mode", ["exact", "inline"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_key_at_dynamodbs_limits_replicates_and_stays_fenced(clock: Any, tmp_path: Any, mode: str,
                                                               case: str) -> None:
    schema, key = CASES[case]
    client = boto3.client("dynamodb", region_name=REGION)
    create(client, "copy", schema)
    cfg = parse({"stream_retention_hours": 24,
                 "targets": [{"name": "t", "source_table": "source", "region": REGION, "table": "copy",
                              "mode": mode, "dead_letter": {"path": str(tmp_path / "dl")}}]})
    engine = build_engine(cfg, clock=clock, metrics=RecordingMetrics())  # learns the schema from the target
    try:
        assert engine.pipeline.checks.key_schemas["source"].names == tuple(n for n, _ in schema)
        # 1 a put, then a newer update of the same long key, in one batch (coalesced) and apart
        deliver(engine, clock, [change("INSERT", key, NOW_US - 3000, {"v": {"N": "1"}}),
                                change("MODIFY", key, NOW_US - 2000, {"v": {"N": "2"}})])
        (item,) = items(client, "copy")
        assert {k: item[k] for k in key} == key and item["v"] == {"N": "2"}
        # 2 an older change of the same key, delivered later: stale, the item keeps the newer value
        deliver(engine, clock, [change("MODIFY", key, NOW_US - 2500, {"v": {"N": "0"}})], first_seq=3)
        (item,) = items(client, "copy")
        assert item["v"] == {"N": "2"}
        # 3 a delete, then (late) an older put: the key stays deleted (the ledger's or the inline tombstone)
        deliver(engine, clock, [change("REMOVE", key, NOW_US - 1000)], first_seq=4)
        assert items(client, "copy") == []
        deliver(engine, clock, [change("MODIFY", key, NOW_US - 1500, {"v": {"N": "3"}})], first_seq=5)
        assert items(client, "copy") == []
        (row,) = items(client, "copy.tablesync-ledger" if mode == "exact" else "copy.tablesync-tombstones")
        assert row["k"]["S"] == key_id(key) and row["k"]["S"].startswith(HASHED_KEY_ID_PREFIX)
        assert len(row["k"]["S"].encode()) <= 2048
        assert row.get("d", {"BOOL": True}) == {"BOOL": True}
        assert list((tmp_path / "dl").rglob("*.json")) == [], "nothing was parked"
    finally:
        engine.close()


def test_a_key_one_byte_over_the_limit_is_parked_with_its_reason(clock: Any, tmp_path: Any) -> None:
    client = boto3.client("dynamodb", region_name=REGION)
    create(client, "copy", [("pk", "S")])
    cfg = parse({"targets": [{"name": "t", "source_table": "source", "region": REGION, "table": "copy",
                              "dead_letter": {"path": str(tmp_path / "dl")}}]})
    engine = build_engine(cfg, clock=clock, metrics=RecordingMetrics())
    try:
        too_long = {"pk": {"S": PARTITION_S + "x"}}
        deliver(engine, clock, [change("INSERT", too_long, NOW_US - 1000, {"v": {"N": "1"}})])
        assert items(client, "copy") == []
        (entry,) = [e for _, e in engine.dead_letters.read("_poison")]  # type: ignore[attr-defined]
        assert "dynamodb.Keys.pk: 2049 bytes exceeds DynamoDB's 2048-byte key limit" in entry.reason
    finally:
        engine.close()
