"""moto with tablesync's fixes behaves like AWS where tablesync depends on it (in-process moto, fast).

Every test asserts on real table contents, stream records or Kinesis responses.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tablesync_local import moto_fixes

pytestmark = pytest.mark.integration

REGION = "us-east-1"


@pytest.fixture
def ddb(moto: None) -> Any:
    return boto3.client("dynamodb", region_name=REGION)


@pytest.fixture
def kinesis(moto: None) -> Any:
    return boto3.client("kinesis", region_name=REGION)


def make_table(ddb: Any, name: str = "t", stream: bool = False) -> None:
    extra: dict[str, Any] = {}
    if stream:
        extra["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    ddb.create_table(TableName=name, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST", **extra)


def contents(ddb: Any, name: str = "t") -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": name}
    while True:
        page = ddb.scan(**kwargs)
        items.update({i["pk"]["S"]: i for i in page["Items"]})
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def stream_records(ddb: Any, name: str = "t") -> list[dict[str, Any]]:
    streams = boto3.client("dynamodbstreams", region_name=REGION)
    arn = ddb.describe_table(TableName=name)["Table"]["LatestStreamArn"]
    out: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        out.extend(streams.get_records(ShardIterator=iterator)["Records"])
    return out


def put(pk: str, **attrs: Any) -> dict[str, Any]:
    return {"Put": {"TableName": "t", "Item": {"pk": {"S": pk}, **attrs}}}


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# ------------------------------------------------------------------------------------------- transactions


def seed(ddb: Any, *keys: str) -> None:
    for pk in keys:
        ddb.put_item(TableName="t", Item={"pk": {"S": pk}, "v": {"N": "1"}})


def five_actions_third_fails() -> list[dict[str, Any]]:
    return [
        put("new", v={"N": "9"}),
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "b"}}, "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": {"N": "2"}}}},
        {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "c"}}, "ConditionExpression": "v = :two",
                            "ExpressionAttributeValues": {":two": {"N": "2"}},
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
        {"Delete": {"TableName": "t", "Key": {"pk": {"S": "d"}}}},
        put("e", v={"N": "5"}),
    ]


def test_failing_condition_in_third_of_five_cancels_all_with_reasons_in_order(ddb: Any) -> None:
    make_table(ddb, stream=True)
    seed(ddb, "b", "c", "d", "e")
    before = contents(ddb)
    records_before = len(stream_records(ddb))

    with pytest.raises(ClientError) as exc:
        ddb.transact_write_items(TransactItems=five_actions_third_fails())

    assert error_code(exc) == "TransactionCanceledException"
    reasons = exc.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "None", "ConditionalCheckFailed", "None", "None"]
    assert reasons[2]["Item"] == {"pk": {"S": "c"}, "v": {"N": "1"}}
    assert contents(ddb) == before
    assert len(stream_records(ddb)) == records_before


def test_committed_transaction_emits_one_stream_record_per_item(ddb: Any) -> None:
    make_table(ddb, stream=True)
    seed(ddb, "b", "c", "d")
    seeded = len(stream_records(ddb))
    ddb.transact_write_items(TransactItems=[
        put("a", v={"N": "7"}),
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "b"}}, "UpdateExpression": "SET v = :v",
                    "ConditionExpression": "v = :one",
                    "ExpressionAttributeValues": {":v": {"N": "2"}, ":one": {"N": "1"}}}},
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "fresh"}}, "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": {"N": "3"}}}},
        {"Delete": {"TableName": "t", "Key": {"pk": {"S": "d"}}, "ConditionExpression": "attribute_exists(pk)"}},
        {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "c"}}, "ConditionExpression": "v = :one",
                            "ExpressionAttributeValues": {":one": {"N": "1"}}}},
    ])

    new = [r["dynamodb"] | {"event": r["eventName"]} for r in stream_records(ddb)[seeded:]]
    assert [(r["event"], r["Keys"]["pk"]["S"]) for r in new] == [
        ("INSERT", "a"), ("MODIFY", "b"), ("INSERT", "fresh"), ("REMOVE", "d")]
    assert new[1]["OldImage"]["v"] == {"N": "1"} and new[1]["NewImage"]["v"] == {"N": "2"}
    assert new[2]["NewImage"] == {"pk": {"S": "fresh"}, "v": {"N": "3"}}
    assert set(contents(ddb)) == {"a", "b", "c", "fresh"}


def test_cancelled_transaction_emits_no_stream_record_and_no_hook_call(ddb: Any, monkeypatch: Any) -> None:
    from moto.dynamodb.models.table import StreamShard

    make_table(ddb, stream=True)
    seed(ddb, "b", "c", "d", "e")
    records_before = len(stream_records(ddb))
    seen: list[Any] = []
    original_add = StreamShard.add

    def observing_add(self: Any, old: Any, new: Any) -> None:
        seen.append((old, new))
        original_add(self, old, new)

    monkeypatch.setattr(StreamShard, "add", observing_add)
    with pytest.raises(ClientError):
        ddb.transact_write_items(TransactItems=five_actions_third_fails())

    assert seen == []
    assert len(stream_records(ddb)) == records_before


def test_update_item_creating_an_item_emits_one_insert(ddb: Any) -> None:
    make_table(ddb, stream=True)
    ddb.update_item(TableName="t", Key={"pk": {"S": "n"}}, UpdateExpression="SET v = :v",
                    ExpressionAttributeValues={":v": {"N": "1"}})
    records = stream_records(ddb)
    assert [(r["eventName"], r["dynamodb"]["NewImage"]) for r in records] == [
        ("INSERT", {"pk": {"S": "n"}, "v": {"N": "1"}})]


def test_more_than_100_actions_rejected_and_100_accepted(ddb: Any) -> None:
    make_table(ddb)
    with pytest.raises(ClientError) as exc:
        ddb.transact_write_items(TransactItems=[put(f"k{i}") for i in range(101)])
    assert error_code(exc) == "ValidationException"
    assert contents(ddb) == {}

    ddb.transact_write_items(TransactItems=[put(f"k{i}") for i in range(100)])
    assert len(contents(ddb)) == 100


def test_two_actions_on_one_item_rejected(ddb: Any) -> None:
    make_table(ddb)
    seed(ddb, "a")
    with pytest.raises(ClientError) as exc:
        ddb.transact_write_items(TransactItems=[
            put("x"),
            put("a", v={"N": "5"}),
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET v = :v",
                        "ExpressionAttributeValues": {":v": {"N": "2"}}}},
        ])
    assert error_code(exc) == "ValidationException"
    assert "multiple operations on one item" in exc.value.response["Error"]["Message"]
    assert contents(ddb) == {"a": {"pk": {"S": "a"}, "v": {"N": "1"}}}


def test_transaction_copies_only_the_items_it_touches(ddb: Any, monkeypatch: Any) -> None:
    from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends
    from moto.dynamodb.models.dynamo_type import Item

    make_table(ddb)
    backend = dynamodb_backends["123456789012"][REGION]
    for i in range(5000):
        backend.put_item("t", {"pk": {"S": f"old{i}"}, "v": {"N": str(i)}})
    actions = [
        {"Update": {"TableName": "t", "Key": {"pk": {"S": f"old{i}"}}, "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": {"N": "0"}}}} for i in range(12)
    ] + [put(f"new{i}") for i in range(13)]
    copied: list[Any] = []
    real_item_deepcopy = Item.__deepcopy__

    def counting_item_deepcopy(self: Any, memo: dict[int, Any]) -> Any:
        copied.append(self)
        return real_item_deepcopy(self, memo)

    monkeypatch.setattr(Item, "__deepcopy__", counting_item_deepcopy)

    ddb.transact_write_items(TransactItems=actions)

    # per updated item: the rollback snapshot, a validation copy at check time and again when UpdateItem
    # runs, and moto's own old-image copy; nothing for the other 4,988 items
    assert 0 < len(copied) <= 4 * 12
    assert {i.hash_key.value for i in copied} <= {f"old{i}" for i in range(12)}
    assert len(contents(ddb)) == 5013
    # the counter does see whole-table copies: moto's own implementation copies all 5,000+ items
    copied.clear()
    original = DynamoDBBackend.transact_write_items.__wrapped__  # type: ignore[attr-defined]
    original(backend, [put("one-more")])
    assert len(copied) >= 5000


# ------------------------------------------------------------------------------ BatchWriteItem, item size


def test_batch_write_of_26_rejected_25_accepted(ddb: Any) -> None:
    make_table(ddb)
    request = [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}} for i in range(26)]
    with pytest.raises(ClientError) as exc:
        ddb.batch_write_item(RequestItems={"t": request})
    assert error_code(exc) == "ValidationException"
    assert contents(ddb) == {}
    ddb.batch_write_item(RequestItems={"t": request[:25]})
    assert len(contents(ddb)) == 25


@pytest.mark.parametrize("requests", [
    [{"PutRequest": {"Item": {"pk": {"S": "a"}, "v": {"N": "1"}}}},
     {"PutRequest": {"Item": {"pk": {"S": "a"}, "v": {"N": "2"}}}}],
    [{"PutRequest": {"Item": {"pk": {"S": "a"}}}}, {"DeleteRequest": {"Key": {"pk": {"S": "a"}}}}],
], ids=["put-put", "put-delete"])
def test_batch_write_with_duplicate_keys_rejected(ddb: Any, requests: list[dict[str, Any]]) -> None:
    make_table(ddb)
    with pytest.raises(ClientError) as exc:
        ddb.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": {"pk": {"S": "z"}}}}, *requests]})
    assert error_code(exc) == "ValidationException"
    assert "contains duplicates" in exc.value.response["Error"]["Message"]
    assert contents(ddb) == {}


def sized_item(pk: str, total: int) -> dict[str, Any]:
    """An item of exactly ``total`` bytes: "pk"+pk, then "b" + raw binary (base64 must not count)."""
    fixed = len("pk") + len(pk) + len("b")
    return {"pk": {"S": pk}, "b": {"B": b"x" * (total - fixed)}}


LIMIT = 400 * 1024


def write_put_item(ddb: Any, item: dict[str, Any]) -> None:
    ddb.put_item(TableName="t", Item=item)


def write_batch(ddb: Any, item: dict[str, Any]) -> None:
    ddb.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": item}}]})


def write_transaction(ddb: Any, item: dict[str, Any]) -> None:
    ddb.transact_write_items(TransactItems=[{"Put": {"TableName": "t", "Item": item}}])


def write_transaction_update(ddb: Any, item: dict[str, Any]) -> None:
    ddb.transact_write_items(TransactItems=[{"Update": {
        "TableName": "t", "Key": {"pk": item["pk"]}, "UpdateExpression": "SET b = :b",
        "ExpressionAttributeValues": {":b": item["b"]}}}])


def write_update_item(ddb: Any, item: dict[str, Any]) -> None:
    ddb.update_item(TableName="t", Key={"pk": item["pk"]}, UpdateExpression="SET b = :b",
                    ExpressionAttributeValues={":b": item["b"]})


@pytest.mark.parametrize("write", [write_put_item, write_batch, write_transaction, write_transaction_update,
                                   write_update_item])
def test_400_kb_item_accepted_and_one_byte_more_rejected(ddb: Any, write: Any) -> None:
    make_table(ddb)
    write(ddb, sized_item("fits", LIMIT))
    assert len(contents(ddb)["fits"]["b"]["B"]) == LIMIT - len("pkfitsb")

    with pytest.raises(ClientError) as exc:
        write(ddb, sized_item("over", LIMIT + 1))
    assert error_code(exc) == "ValidationException"
    message = exc.value.response["Error"]["Message"]
    assert message.endswith("has exceeded the maximum allowed size")
    assert set(contents(ddb)) == {"fits"}


# ----------------------------------------------------------------------------------------------- Kinesis


def read_stream(kinesis: Any, stream: str) -> tuple[list[bytes], dict[str, dict[str, Any]]]:
    """Read every shard with plain GetRecords, parents before children, following ChildShards.

    Returns the data in read order and, per closed shard, its final GetRecords response.
    """
    shards = {s["ShardId"]: s for s in kinesis.list_shards(StreamName=stream)["Shards"]}
    done: set[str] = set()
    queue = [sid for sid, s in shards.items() if "ParentShardId" not in s]
    data: list[bytes] = []
    endings: dict[str, dict[str, Any]] = {}
    while queue:
        shard_id = queue.pop(0)
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id,
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while True:
            response = kinesis.get_records(ShardIterator=iterator, Limit=7)
            data.extend(r["Data"] for r in response["Records"])
            if "NextShardIterator" not in response:
                endings[shard_id] = response
                break
            if not response["Records"]:
                assert response["MillisBehindLatest"] == 0
                break
            iterator = response["NextShardIterator"]
        done.add(shard_id)
        for child in endings.get(shard_id, {}).get("ChildShards", []):
            if set(child["ParentShards"]) <= done and child["ShardId"] not in queue:
                queue.append(child["ShardId"])
    assert done == set(shards), "every shard is reachable from the roots through ChildShards"
    return data, endings


def hash_of(partition_key: str) -> int:
    return int(hashlib.md5(partition_key.encode()).hexdigest(), 16)  # noqa: S324 - Kinesis' routing hash


def write(kinesis: Any, stream: str, label: str, count: int) -> list[bytes]:
    """Write ``count`` records; each must land on the open shard whose range holds its hash key."""
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    open_shards = {s["ShardId"]: s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]}
    written = []
    for i in range(count):
        key, body = f"{label}-{i}", f"{label}-{i}".encode()
        shard_id = kinesis.put_record(StreamName=stream, PartitionKey=key, Data=body)["ShardId"]
        assert shard_id in open_shards
        hash_range = open_shards[shard_id]["HashKeyRange"]
        assert int(hash_range["StartingHashKey"]) <= hash_of(key) <= int(hash_range["EndingHashKey"])
        written.append(body)
    return written


def shard_ids(response: dict[str, Any]) -> list[str]:
    return sorted(s["ShardId"] for s in response["Shards"])


def test_split_and_merge_every_record_read_once_parents_end_with_children(kinesis: Any) -> None:
    kinesis.create_stream(StreamName="s", ShardCount=2)
    written = write(kinesis, "s", "before", 40)
    first, second = shard_ids(kinesis.list_shards(StreamName="s"))
    low = kinesis.list_shards(StreamName="s")["Shards"][0]["HashKeyRange"]
    middle = (int(low["StartingHashKey"]) + int(low["EndingHashKey"])) // 2
    kinesis.split_shard(StreamName="s", ShardToSplit=first, NewStartingHashKey=str(middle))
    written += write(kinesis, "s", "split", 40)
    shards = {s["ShardId"]: s for s in kinesis.list_shards(StreamName="s")["Shards"]}
    upper_child = next(sid for sid, s in shards.items()
                       if s.get("ParentShardId") == first and int(s["HashKeyRange"]["StartingHashKey"]) == middle)
    kinesis.merge_shards(StreamName="s", ShardToMerge=upper_child, AdjacentShardToMerge=second)
    written += write(kinesis, "s", "merged", 40)

    data, endings = read_stream(kinesis, "s")

    assert Counter(data) == Counter(written) and len(data) == len(written)
    shards = {s["ShardId"]: s for s in kinesis.list_shards(StreamName="s")["Shards"]}
    closed = {sid for sid, s in shards.items() if "EndingSequenceNumber" in s["SequenceNumberRange"]}
    assert closed == {first, second, upper_child} == set(endings)
    for shard_id in closed:
        assert "NextShardIterator" not in endings[shard_id]
        assert endings[shard_id]["ChildShards"]
        for child in endings[shard_id]["ChildShards"]:
            assert shard_id in child["ParentShards"]
    merged = next(s for s in shards.values() if s.get("AdjacentParentShardId") == second)
    assert merged["ParentShardId"] == upper_child
    assert {c["ShardId"] for c in endings[first]["ChildShards"]} == {
        sid for sid, s in shards.items() if s.get("ParentShardId") == first}
    described = kinesis.describe_stream(StreamName="s")["StreamDescription"]["Shards"]
    assert {s["ShardId"]: s for s in described} == shards
    summary = kinesis.describe_stream_summary(StreamName="s")["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == len(shards) - len(closed)


def test_update_shard_count_up_and_down_every_record_read_once(kinesis: Any) -> None:
    kinesis.create_stream(StreamName="s", ShardCount=2)
    written = write(kinesis, "s", "two", 30)
    kinesis.update_shard_count(StreamName="s", TargetShardCount=3, ScalingType="UNIFORM_SCALING")
    written += write(kinesis, "s", "three", 30)
    kinesis.update_shard_count(StreamName="s", TargetShardCount=1, ScalingType="UNIFORM_SCALING")
    written += write(kinesis, "s", "one", 30)

    data, endings = read_stream(kinesis, "s")

    assert Counter(data) == Counter(written) and len(data) == len(written)
    shards = kinesis.list_shards(StreamName="s")["Shards"]
    open_shards = [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
    assert len(open_shards) == 1
    assert open_shards[0]["HashKeyRange"] == {"StartingHashKey": "0", "EndingHashKey": str(2**128 - 1)}
    assert all("ChildShards" in e and "NextShardIterator" not in e for e in endings.values())


def moto_stream(name: str) -> Any:
    from moto.kinesis.models import kinesis_backends

    return kinesis_backends["123456789012"][REGION].streams[name]


def test_list_shards_filters_as_the_kcl_uses_them(kinesis: Any) -> None:
    kinesis.create_stream(StreamName="s", ShardCount=2)
    roots = shard_ids(kinesis.list_shards(StreamName="s"))
    kinesis.split_shard(StreamName="s", ShardToSplit=roots[0], NewStartingHashKey=str(2**126))
    everything = shard_ids(kinesis.list_shards(StreamName="s"))
    children = sorted(set(everything) - set(roots))
    # the API carries whole seconds: place the stream's creation 100 s and the split 50 s in the past
    now = time.time()
    for shard in moto_stream("s").shards.values():
        shard.created_at = now - (50 if shard.shard_id in children else 100)
        if shard.shard_id == roots[0]:
            shard.closed_at = now - 50

    def listed(**shard_filter: Any) -> list[str]:
        return shard_ids(kinesis.list_shards(StreamName="s", ShardFilter=shard_filter))

    assert listed(Type="AT_LATEST") == sorted([roots[1], *children])
    assert listed(Type="AT_TRIM_HORIZON") == roots
    assert listed(Type="FROM_TRIM_HORIZON") == everything
    assert listed(Type="AFTER_SHARD_ID", ShardId=roots[1]) == children
    assert listed(Type="AT_TIMESTAMP", Timestamp=now - 75) == roots
    assert listed(Type="AT_TIMESTAMP", Timestamp=now - 25) == sorted([roots[1], *children])
    assert listed(Type="AT_TIMESTAMP", Timestamp=now - 3600) == roots
    assert listed(Type="FROM_TIMESTAMP", Timestamp=now - 75) == everything
    assert listed(Type="FROM_TIMESTAMP", Timestamp=now - 25) == sorted([roots[1], *children])
    # pagination of a filtered listing
    page = kinesis.list_shards(StreamName="s", ShardFilter={"Type": "FROM_TRIM_HORIZON"}, MaxResults=2)
    rest = kinesis.list_shards(NextToken=page["NextToken"], MaxResults=10)
    assert shard_ids(page) + shard_ids(rest) == everything and "NextToken" not in rest


def test_get_shard_iterator_at_timestamp_starts_at_the_first_later_record(kinesis: Any) -> None:
    kinesis.create_stream(StreamName="s", ShardCount=1)
    for i in range(10):
        kinesis.put_record(StreamName="s", PartitionKey="k", Data=f"r{i}".encode())
    shard_id = shard_ids(kinesis.list_shards(StreamName="s"))[0]
    now = time.time()
    for i, record in enumerate(moto_stream("s").shards[shard_id].records.values()):
        record.created_at = now - (100 if i < 4 else 10)  # four written 100 s ago, six 10 s ago

    def read_at(timestamp: float) -> list[bytes]:
        iterator = kinesis.get_shard_iterator(StreamName="s", ShardId=shard_id,
                                              ShardIteratorType="AT_TIMESTAMP",
                                              Timestamp=timestamp)["ShardIterator"]
        return [r["Data"] for r in kinesis.get_records(ShardIterator=iterator)["Records"]]

    assert read_at(now - 50) == [f"r{i}".encode() for i in range(4, 10)]
    assert read_at(now - 1000) == [f"r{i}".encode() for i in range(10)]
    assert read_at(now + 5) == []


def test_millis_behind_latest_is_zero_when_caught_up_and_the_unread_age_otherwise(kinesis: Any) -> None:
    kinesis.create_stream(StreamName="s", ShardCount=1)
    for i in range(5):
        kinesis.put_record(StreamName="s", PartitionKey="k", Data=f"r{i}".encode())
    shard_id = shard_ids(kinesis.list_shards(StreamName="s"))[0]
    for record in moto_stream("s").shards[shard_id].records.values():
        record.created_at -= 60  # the records were written a minute ago
    iterator = kinesis.get_shard_iterator(StreamName="s", ShardId=shard_id,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    partial = kinesis.get_records(ShardIterator=iterator, Limit=2)
    assert len(partial["Records"]) == 2 and partial["MillisBehindLatest"] >= 60_000
    rest = kinesis.get_records(ShardIterator=partial["NextShardIterator"])
    assert len(rest["Records"]) == 3 and rest["MillisBehindLatest"] == 0


def test_install_is_idempotent(moto: None) -> None:
    from moto.kinesis.models import Shard

    patched = Shard.get_records
    moto_fixes.install()
    moto_fixes._installed = False
    try:
        moto_fixes.install()
    finally:
        moto_fixes._installed = True
    assert Shard.get_records is patched


def test_fixes_hold_in_server_mode() -> None:
    """The emulator serves moto's WSGI app: the same patched classes answer over HTTP."""
    import socket

    from moto.server import ThreadedMotoServer

    moto_fixes.install()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        kinesis = boto3.client("kinesis", region_name=REGION, endpoint_url=url)
        kinesis.create_stream(StreamName="server-mode", ShardCount=1)
        written = write(kinesis, "server-mode", "a", 5)
        root = shard_ids(kinesis.list_shards(StreamName="server-mode"))[0]
        kinesis.split_shard(StreamName="server-mode", ShardToSplit=root, NewStartingHashKey=str(2**127))
        written += write(kinesis, "server-mode", "b", 5)
        data, endings = read_stream(kinesis, "server-mode")
        assert sorted(data) == sorted(written) and set(endings) == {root}

        ddb = boto3.client("dynamodb", region_name=REGION, endpoint_url=url)
        make_table(ddb, "server-mode")
        with pytest.raises(ClientError) as exc:
            ddb.batch_write_item(RequestItems={"server-mode": [
                {"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}} for i in range(26)]})
        assert error_code(exc) == "ValidationException"
        assert contents(ddb, "server-mode") == {}
    finally:
        server.stop()
