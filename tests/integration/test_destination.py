"""The emulated DynamoDB Kinesis streaming destination, read back from Kinesis with GetRecords."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tablesync_local.stack import LocalStack, poll_until

pytestmark = pytest.mark.integration

TOP_LEVEL = ["awsRegion", "eventID", "eventName", "userIdentity", "recordFormat", "tableName", "dynamodb",
             "eventSource"]
DIGITS = {"MILLISECOND": 13, "MICROSECOND": 16}
UNIT = {"MILLISECOND": 1_000, "MICROSECOND": 1_000_000}


@dataclass
class Env:
    stack: LocalStack
    ddb: Any
    kinesis: Any
    table: str
    stream: str
    stream_arn: str

    def records(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every record of the stream as (shard id, partition key, decoded JSON), shard by shard."""
        out = []
        for shard in self.kinesis.list_shards(StreamName=self.stream)["Shards"]:
            it = self.kinesis.get_shard_iterator(StreamName=self.stream, ShardId=shard["ShardId"],
                                                 ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            while it:
                resp = self.kinesis.get_records(ShardIterator=it, Limit=10000)
                out += [(shard["ShardId"], r["PartitionKey"], json.loads(r["Data"])) for r in resp["Records"]]
                if not resp["Records"]:
                    break
                it = resp.get("NextShardIterator")
        return out

    def wait_records(self, n: int) -> list[tuple[str, str, dict[str, Any]]]:
        def enough() -> list[tuple[str, str, dict[str, Any]]] | None:
            records = self.records()
            return records if len(records) >= n else None

        return poll_until(enough, timeout=10, message=f"{n} records in {self.stream}")


@pytest.fixture
def make_env(local_stack: LocalStack):  # type: ignore[no-untyped-def]
    def make(precision: str | None = "MILLISECOND", shards: int = 1, faults: dict[str, Any] | None = None,
             range_key: bool = False) -> Env:
        ddb, kinesis = local_stack.client("dynamodb"), local_stack.client("kinesis")
        name = f"t-{uuid.uuid4().hex[:10]}"
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
        schema = [{"AttributeName": "pk", "KeyType": "HASH"}]
        attrs = [{"AttributeName": "pk", "AttributeType": "S"}]
        if range_key:
            schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
            attrs.append({"AttributeName": "sk", "AttributeType": "N"})
        ddb.create_table(TableName=name, KeySchema=schema, AttributeDefinitions=attrs,
                         BillingMode="PAY_PER_REQUEST")
        if faults:
            local_stack.configure_faults(name, **faults)
        if precision:
            ddb.enable_kinesis_streaming_destination(
                TableName=name, StreamArn=arn,
                EnableKinesisStreamingConfiguration={"ApproximateCreationDateTimePrecision": precision})
        return Env(local_stack, ddb, kinesis, name, name, arn)

    return make


def check_record(rec: dict[str, Any], env: Env, *, event: str, keys: dict[str, Any], precision: str,
                 new: dict[str, Any] | None = None, old: dict[str, Any] | None = None, ttl: bool = False,
                 size: int | None = None) -> None:
    """Field by field against the documented format."""
    assert list(rec) == TOP_LEVEL
    assert rec["awsRegion"] == "us-east-1"
    assert str(uuid.UUID(rec["eventID"])) == rec["eventID"]
    assert rec["eventName"] == event
    assert rec["userIdentity"] == ({"type": "Service", "principalId": "dynamodb.amazonaws.com"} if ttl else None)
    assert rec["recordFormat"] == "application/json"
    assert rec["tableName"] == env.table
    assert rec["eventSource"] == "aws:dynamodb"
    d = rec["dynamodb"]
    fields = ["ApproximateCreationDateTime", "Keys"] + ["NewImage"] * (new is not None) \
        + ["OldImage"] * (old is not None) + ["SizeBytes", "ApproximateCreationDateTimePrecision"]
    assert list(d) == fields
    assert d["Keys"] == keys
    assert d.get("NewImage") == new
    assert d.get("OldImage") == old
    assert type(d["ApproximateCreationDateTime"]) is int
    assert len(str(d["ApproximateCreationDateTime"])) == DIGITS[precision]
    assert abs(d["ApproximateCreationDateTime"] / UNIT[precision] - time.time()) < 60
    assert d["ApproximateCreationDateTimePrecision"] == precision
    assert type(d["SizeBytes"]) is int and d["SizeBytes"] > 0
    if size is not None:
        assert d["SizeBytes"] == size


def S(v: str) -> dict[str, str]:  # noqa: N802
    return {"S": v}


def N(v: str) -> dict[str, str]:  # noqa: N802
    return {"N": v}


@pytest.mark.parametrize("precision", ["MILLISECOND", "MICROSECOND"])
def test_item_api_changes_become_one_record_each(make_env, precision: str) -> None:  # type: ignore[no-untyped-def]
    env = make_env(precision)
    ddb, t = env.ddb, env.table
    before = time.time()
    ddb.put_item(TableName=t, Item={"pk": S("a"), "v": N("1")})                     # INSERT
    ddb.put_item(TableName=t, Item={"pk": S("a"), "v": N("2")})                     # MODIFY
    ddb.put_item(TableName=t, Item={"pk": S("a"), "v": N("2")})                     # no change: no record
    ddb.update_item(TableName=t, Key={"pk": S("a")}, UpdateExpression="SET w = :w",
                    ExpressionAttributeValues={":w": S("x")})                       # MODIFY
    ddb.update_item(TableName=t, Key={"pk": S("b")}, UpdateExpression="SET w = :w",
                    ExpressionAttributeValues={":w": S("y")})                       # INSERT (one record)
    ddb.delete_item(TableName=t, Key={"pk": S("a")})                                # REMOVE
    ddb.delete_item(TableName=t, Key={"pk": S("zz")})                               # absent: no record
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        ddb.put_item(TableName=t, Item={"pk": S("b")}, ConditionExpression="attribute_not_exists(pk)")
    recs = [r for _, _, r in env.wait_records(5)]
    assert len(recs) == 5
    check_record(recs[0], env, event="INSERT", keys={"pk": S("a")}, new={"pk": S("a"), "v": N("1")},
                 precision=precision, size=9)
    check_record(recs[1], env, event="MODIFY", keys={"pk": S("a")}, new={"pk": S("a"), "v": N("2")},
                 old={"pk": S("a"), "v": N("1")}, precision=precision, size=15)
    check_record(recs[2], env, event="MODIFY", keys={"pk": S("a")},
                 new={"pk": S("a"), "v": N("2"), "w": S("x")}, old={"pk": S("a"), "v": N("2")},
                 precision=precision)
    check_record(recs[3], env, event="INSERT", keys={"pk": S("b")}, new={"pk": S("b"), "w": S("y")},
                 precision=precision)
    check_record(recs[4], env, event="REMOVE", keys={"pk": S("a")},
                 old={"pk": S("a"), "v": N("2"), "w": S("x")}, precision=precision)
    stamps = [r["dynamodb"]["ApproximateCreationDateTime"] for r in recs]
    assert stamps == sorted(stamps)
    assert before * UNIT[precision] - 1 <= stamps[0] and stamps[-1] <= time.time() * UNIT[precision] + 1
    assert env.stack.stats(t)["records_sent"] == 5


def test_batch_write_and_transactions_produce_records_only_when_committed(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env("MICROSECOND", range_key=True)
    ddb, t = env.ddb, env.table
    key = lambda p, s: {"pk": S(p), "sk": N(s)}  # noqa: E731
    ddb.put_item(TableName=t, Item={**key("old", "1"), "v": S("gone soon")})
    ddb.batch_write_item(RequestItems={t: [
        {"PutRequest": {"Item": {**key("b", "1"), "v": S("one")}}},
        {"PutRequest": {"Item": {**key("b", "2"), "v": S("two")}}},
        {"DeleteRequest": {"Key": key("old", "1")}},
    ]})
    ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": t, "Item": {**key("tx", "1"), "v": S("new")}}},
        {"Update": {"TableName": t, "Key": key("b", "1"), "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": S("uno")}}},
        {"Delete": {"TableName": t, "Key": key("b", "2")}},
        {"ConditionCheck": {"TableName": t, "Key": key("absent", "1"),
                            "ConditionExpression": "attribute_not_exists(pk)"}},
    ])
    with pytest.raises(ClientError, match="TransactionCanceled"):
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": t, "Item": {**key("never", "1")}}},
            {"Update": {"TableName": t, "Key": key("tx", "1"), "UpdateExpression": "SET v = :v",
                        "ConditionExpression": "v = :other",
                        "ExpressionAttributeValues": {":v": S("x"), ":other": S("not it")}}},
        ])
    recs = [r for _, _, r in env.wait_records(7)]
    assert [(r["eventName"], r["dynamodb"]["Keys"]) for r in recs] == [
        ("INSERT", key("old", "1")),
        ("INSERT", key("b", "1")), ("INSERT", key("b", "2")), ("REMOVE", key("old", "1")),
        ("INSERT", key("tx", "1")), ("MODIFY", key("b", "1")), ("REMOVE", key("b", "2")),
    ]
    check_record(recs[5], env, event="MODIFY", keys=key("b", "1"), precision="MICROSECOND",
                 new={**key("b", "1"), "v": S("uno")}, old={**key("b", "1"), "v": S("one")})
    assert ddb.get_item(TableName=t, Key=key("never", "1")).get("Item") is None
    assert len(env.records()) == 7


def test_ttl_deletes_carry_the_service_identity(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env("MILLISECOND")
    ddb, t, stack = env.ddb, env.table, env.stack
    ddb.update_time_to_live(TableName=t, TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})
    now = int(time.time())
    ddb.put_item(TableName=t, Item={"pk": S("due"), "exp": N(str(now - 10))})
    ddb.put_item(TableName=t, Item={"pk": S("later"), "exp": N(str(now + 3600))})
    ddb.put_item(TableName=t, Item={"pk": S("forced")})
    assert stack.ttl_expire(t) == [{"pk": S("due")}]
    assert stack.ttl_expire(t, key={"pk": S("forced")}) == [{"pk": S("forced")}]
    assert stack.ttl_expire(t, key={"pk": S("forced")}) == []
    ddb.delete_item(TableName=t, Key={"pk": S("later")})
    recs = [r for _, _, r in env.wait_records(6)]
    check_record(recs[3], env, event="REMOVE", keys={"pk": S("due")}, old={"pk": S("due"), "exp": N(str(now - 10))},
                 precision="MILLISECOND", ttl=True)
    check_record(recs[4], env, event="REMOVE", keys={"pk": S("forced")}, old={"pk": S("forced")},
                 precision="MILLISECOND", ttl=True)
    check_record(recs[5], env, event="REMOVE", keys={"pk": S("later")},
                 old={"pk": S("later"), "exp": N(str(now + 3600))}, precision="MILLISECOND", ttl=False)
    assert "Item" not in ddb.get_item(TableName=t, Key={"pk": S("due")})


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def normalise_sets(image: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB does not promise an order inside SS/NS/BS: compare them as sorted lists."""
    def norm(v: dict[str, Any]) -> dict[str, Any]:
        ((kind, payload),) = v.items()
        if kind in ("SS", "NS", "BS"):
            return {kind: sorted(payload)}
        if kind == "M":
            return {"M": {k: norm(x) for k, x in payload.items()}}
        if kind == "L":
            return {"L": [norm(x) for x in payload]}
        return v
    return {k: norm(v) for k, v in image.items()}


@pytest.mark.parametrize("precision", ["MILLISECOND", "MICROSECOND"])
def test_every_attribute_type_round_trips_in_dynamodb_json(make_env, precision: str) -> None:  # type: ignore[no-untyped-def]
    env = make_env(precision)
    raw = bytes(range(256))
    sent = {
        "pk": S("types"), "s": S("héllo ✓"), "empty_s": S(""),
        "n38": N("12345678901234567890123456789012345678"), "neg": N("-0.000000000000000000000000000000000001"),
        "b": {"B": raw}, "ss": {"SS": ["x", "y", "z"]}, "ns": {"NS": ["1", "2.5", "-3"]},
        "bs": {"BS": [b"\x00", b"\xff\xfe"]},
        "m": {"M": {"inner": S("v"), "deep": {"M": {"b": {"B": b"\x01"}, "l": {"L": [N("1"), {"NULL": True}]}}}}},
        "l": {"L": [S("a"), N("2"), {"BOOL": False}, {"M": {}}, {"L": []}]},
        "null": {"NULL": True}, "t": {"BOOL": True}, "f": {"BOOL": False},
        "empty_l": {"L": []}, "empty_m": {"M": {}},
    }
    expected = {
        **sent, "b": {"B": b64(raw)}, "bs": {"BS": [b64(b"\x00"), b64(b"\xff\xfe")]},
        "m": {"M": {"inner": S("v"), "deep": {"M": {"b": {"B": b64(b"\x01")}, "l": {"L": [N("1"), {"NULL": True}]}}}}},
    }
    env.ddb.put_item(TableName=env.table, Item=sent)
    env.ddb.put_item(TableName=env.table, Item={**sent, "s": S("changed")})
    first, second = [r for _, _, r in env.wait_records(2)]
    check_record(first, env, event="INSERT", keys={"pk": S("types")}, new=first["dynamodb"]["NewImage"],
                 precision=precision)
    assert normalise_sets(first["dynamodb"]["NewImage"]) == normalise_sets(expected)
    assert normalise_sets(second["dynamodb"]["OldImage"]) == normalise_sets(expected)
    assert normalise_sets(second["dynamodb"]["NewImage"]) == normalise_sets({**expected, "s": S("changed")})
    # what a consumer reads back decodes to the very bytes written
    assert base64.b64decode(first["dynamodb"]["NewImage"]["b"]["B"]) == raw


def test_destination_api_shapes_and_errors(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(precision=None)
    ddb, t, arn = env.ddb, env.table, env.stream_arn
    assert ddb.describe_kinesis_streaming_destination(TableName=t)["KinesisDataStreamDestinations"] == []
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        ddb.enable_kinesis_streaming_destination(TableName=t, StreamArn=arn + "-missing")
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        ddb.enable_kinesis_streaming_destination(TableName="no-such-table", StreamArn=arn)
    with pytest.raises(ClientError, match="ValidationException"):
        ddb.enable_kinesis_streaming_destination(
            TableName=t, StreamArn=arn,
            EnableKinesisStreamingConfiguration={"ApproximateCreationDateTimePrecision": "NANOSECOND"})
    resp = ddb.enable_kinesis_streaming_destination(TableName=t, StreamArn=arn)
    assert (resp["TableName"], resp["StreamArn"], resp["DestinationStatus"]) == (t, arn, "ENABLING")
    assert resp["EnableKinesisStreamingConfiguration"] == {"ApproximateCreationDateTimePrecision": "MILLISECOND"}
    with pytest.raises(ClientError, match="ResourceInUseException"):
        ddb.enable_kinesis_streaming_destination(TableName=t, StreamArn=arn)
    assert ddb.describe_kinesis_streaming_destination(TableName=t)["KinesisDataStreamDestinations"] == [
        {"StreamArn": arn, "DestinationStatus": "ACTIVE", "ApproximateCreationDateTimePrecision": "MILLISECOND"}]
    ddb.put_item(TableName=t, Item={"pk": S("ms")})
    resp = ddb.update_kinesis_streaming_destination(
        TableName=t, StreamArn=arn,
        UpdateKinesisStreamingConfiguration={"ApproximateCreationDateTimePrecision": "MICROSECOND"})
    assert resp["DestinationStatus"] == "UPDATING"
    ddb.put_item(TableName=t, Item={"pk": S("us")})
    resp = ddb.disable_kinesis_streaming_destination(TableName=t, StreamArn=arn)
    assert resp["DestinationStatus"] == "DISABLING"
    assert ddb.describe_kinesis_streaming_destination(TableName=t)["KinesisDataStreamDestinations"][0][
        "DestinationStatus"] == "DISABLED"
    ddb.put_item(TableName=t, Item={"pk": S("after-disable")})
    recs = [r for _, _, r in env.records()]
    assert [(r["dynamodb"]["Keys"]["pk"]["S"], len(str(r["dynamodb"]["ApproximateCreationDateTime"])))
            for r in recs] == [("ms", 13), ("us", 16)]


def test_partition_keys_are_opaque_and_stable_per_item(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env("MILLISECOND", shards=4)
    for i in range(3):
        for item in ("a", "b"):
            env.ddb.put_item(TableName=env.table, Item={"pk": S(item), "i": N(str(i))})
    recs = env.wait_records(6)
    by_item: dict[str, set[str]] = {}
    for _, pk, rec in recs:
        assert len(pk) == 32 and int(pk, 16) >= 0 and pk == pk.upper()
        by_item.setdefault(rec["dynamodb"]["Keys"]["pk"]["S"], set()).add(pk)
    assert {k: len(v) for k, v in by_item.items()} == {"a": 1, "b": 1}
    assert by_item["a"] != by_item["b"]


# ---------------------------------------------------------------- fault injection

def put_many(env: Env, n: int, prefix: str = "k") -> None:
    """n single-attribute changes through BatchWriteItem (25 per call), item i has seq=i."""
    items = [{"PutRequest": {"Item": {"pk": S(f"{prefix}{i}"), "seq": N(str(i))}}} for i in range(n)]
    for start in range(0, n, 25):
        env.ddb.batch_write_item(RequestItems={env.table: items[start:start + 25]})


def test_duplicate_rate_delivers_a_plausible_fraction_twice(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env("MICROSECOND", faults={"duplicate_rate": 0.3})
    put_many(env, 300)
    recs = [r for _, _, r in env.wait_records(300)]
    counts = Counter(r["eventID"] for r in recs)
    assert len(counts) == 300 and set(counts.values()) <= {1, 2}
    dups = sum(1 for c in counts.values() if c == 2)
    assert 45 <= dups <= 135  # mean 90, sd ~7.9
    assert len(recs) == 300 + dups
    stats = env.stack.stats(env.table)
    assert (stats["changes"], stats["duplicates_sent"], stats["records_sent"]) == (300, dups, 300 + dups)


def test_reorder_window_shuffles_delivery_but_loses_nothing(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env("MICROSECOND", faults={"reorder_window": 25, "reorder_window_ms": 50, "duplicate_rate": 0.1,
                                          "seed": 7})
    put_many(env, 110)  # 4 full windows, the last 10 released by the 50 ms timer

    def every_change_delivered() -> list[dict[str, Any]] | None:
        # duplicates count as records: 110 records can arrive before the last window is released
        recs = [r for _, _, r in env.records()]
        return recs if len({r["dynamodb"]["NewImage"]["seq"]["N"] for r in recs}) >= 110 else None

    recs = poll_until(every_change_delivered, timeout=10, message="110 distinct changes delivered")
    order = [int(r["dynamodb"]["NewImage"]["seq"]["N"]) for r in recs]
    unique_in_delivery_order = list(dict.fromkeys(order))
    assert sorted(set(order)) == list(range(110))
    assert unique_in_delivery_order != list(range(110))
    stamps = {int(r["dynamodb"]["NewImage"]["seq"]["N"]): r["dynamodb"]["ApproximateCreationDateTime"]
              for r in recs}
    assert [stamps[i] for i in range(110)] == sorted(stamps.values())  # the timestamp still tells the order
    poll_until(lambda: env.stack.stats(env.table)["buffered"] == 0, timeout=5, message="buffer drained")
    assert len(env.records()) == 110 + env.stack.stats(env.table)["duplicates_sent"]


def test_scattered_partition_keys_spread_one_item_over_shards(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env("MILLISECOND", shards=4, faults={"scatter_partition_keys": True})
    for i in range(20):
        env.ddb.put_item(TableName=env.table, Item={"pk": S("hot"), "i": N(str(i))})
    recs = env.wait_records(20)
    assert len({pk for _, pk, _ in recs}) == 20
    assert len({shard for shard, _, _ in recs}) > 1


def test_oversize_change_is_dropped_and_counted(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env("MILLISECOND")
    ddb, t = env.ddb, env.table
    big = 395_000  # two such binary images are > 1 MiB once base64-encoded in one JSON record
    ddb.put_item(TableName=t, Item={"pk": S("big"), "b": {"B": b"\x01" * big}})
    ddb.put_item(TableName=t, Item={"pk": S("big"), "b": {"B": b"\x02" * big}})
    ddb.put_item(TableName=t, Item={"pk": S("small")})
    recs = [r for _, _, r in env.wait_records(2)]
    assert [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in recs] == [
        ("INSERT", "big"), ("INSERT", "small")]
    stats = env.stack.stats(t)
    assert stats["FailedToReplicateRecordCount"] == 1
    assert stats["records_sent"] == 2
    assert ddb.get_item(TableName=t, Key={"pk": S("big")})["Item"]["b"]["B"] == b"\x02" * big


def test_in_process_python_api_with_mock_aws(moto: None) -> None:
    """Without a server: moto's mock plus :mod:`tablesync_local.destination` called directly."""
    import boto3

    from tablesync_local import destination

    destination.install()
    try:
        ddb, kinesis = boto3.client("dynamodb", "eu-west-1"), boto3.client("kinesis", "eu-west-1")
        kinesis.create_stream(StreamName="s", ShardCount=1)
        arn = kinesis.describe_stream(StreamName="s")["StreamDescription"]["StreamARN"]
        ddb.create_table(TableName="T", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        destination.enable("T", arn, region="eu-west-1", precision="MICROSECOND")
        destination.configure_faults("T", region="eu-west-1", duplicate_rate=1.0)
        ddb.put_item(TableName="T", Item={"pk": S("a")})
        assert destination.expire_item("T", {"pk": S("a")}, region="eu-west-1")
        shard = kinesis.list_shards(StreamName="s")["Shards"][0]["ShardId"]
        it = kinesis.get_shard_iterator(StreamName="s", ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        recs = [json.loads(r["Data"]) for r in kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"]]
        assert [(r["eventName"], r["awsRegion"], r["userIdentity"]) for r in recs] == [
            ("INSERT", "eu-west-1", None), ("INSERT", "eu-west-1", None),
            ("REMOVE", "eu-west-1", {"type": "Service", "principalId": "dynamodb.amazonaws.com"}),
            ("REMOVE", "eu-west-1", {"type": "Service", "principalId": "dynamodb.amazonaws.com"})]
        assert destination.stats("T", region="eu-west-1")["duplicates_sent"] == 2
    finally:
        destination.uninstall()
    from moto.dynamodb.responses import DynamoHandler

    assert not hasattr(DynamoHandler, "enable_kinesis_streaming_destination")  # uninstalled: moto as before


def test_concurrent_writers_get_one_record_each_in_timestamp_order(make_env) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    env = make_env("MICROSECOND")

    def writer(w: int) -> None:
        ddb = env.stack.client("dynamodb")
        for i in range(40):
            ddb.put_item(TableName=env.table, Item={"pk": S(f"w{w}"), "i": N(str(i))})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))
    recs = [r for _, _, r in env.wait_records(160)]
    assert len(recs) == 160
    stamps = [r["dynamodb"]["ApproximateCreationDateTime"] for r in recs]
    assert stamps == sorted(stamps)  # delivery order on one shard == change order
    for w in range(4):
        assert [int(r["dynamodb"]["NewImage"]["i"]["N"]) for r in recs
                if r["dynamodb"]["Keys"]["pk"]["S"] == f"w{w}"] == list(range(40))
