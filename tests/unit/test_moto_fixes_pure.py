"""The pure parts of the emulator fixes: DynamoDB item size and ListShards filter selection."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest

from tablesync_local.moto_fixes import MAX_ITEM_BYTES, item_size, select_shards, value_size


@pytest.mark.parametrize(("value", "size"), [
    ({"S": "abc"}, 3),
    ({"S": "é"}, 2),
    ({"N": "123"}, 3),
    ({"N": "1000"}, 2),
    # zero has no significant digit once leading and trailing zeroes are trimmed: the 1 byte alone
    ({"N": "0"}, 1),
    ({"N": "-0.000"}, 1),
    ({"NS": ["0", "10"]}, 1 + 2),
    ({"N": "-0.00123"}, 3),
    ({"N": "12345678901234567890123456789012345678"}, 20),
    ({"B": base64.b64encode(b"0123456789").decode()}, 10),
    ({"B": b"0123456789"}, 10),
    ({"BOOL": True}, 1),
    ({"NULL": True}, 1),
    ({"SS": ["a", "bc"]}, 3),
    ({"NS": ["1", "22"]}, 4),
    ({"L": [{"S": "a"}, {"N": "1"}]}, 3 + (1 + 1) + (1 + 2)),
    ({"M": {"k": {"S": "v"}}}, 3 + 1 + 1 + 1),
    ({"L": []}, 3),
])
def test_value_size_follows_the_documented_rules(value: dict[str, object], size: int) -> None:
    assert value_size(value) == size


def test_item_size_counts_attribute_names_in_utf8() -> None:
    assert item_size({"pk": {"S": "a"}, "ñ": {"BOOL": False}}) == 2 + 1 + 2 + 1
    assert MAX_ITEM_BYTES == 409_600


def shard(shard_id: str, parent: str | None = None, created: float = 0.0, closed: float | None = None) -> object:
    return SimpleNamespace(shard_id=shard_id, parent=parent, is_open=closed is None,
                           created_at=created, closed_at=closed)


ROOT_A = shard("shardId-000000000000", created=100, closed=200)
ROOT_B = shard("shardId-000000000001", created=100)
CHILD_1 = shard("shardId-000000000002", parent=ROOT_A.shard_id, created=200, closed=300)  # type: ignore[attr-defined]
CHILD_2 = shard("shardId-000000000003", parent=ROOT_A.shard_id, created=200)  # type: ignore[attr-defined]
GRANDCHILD = shard("shardId-000000000004", parent=CHILD_1.shard_id, created=300)  # type: ignore[attr-defined]
ALL = [GRANDCHILD, CHILD_2, CHILD_1, ROOT_B, ROOT_A]


def ids(shards: list[object]) -> list[str]:
    return [s.shard_id[-1] for s in shards]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("shard_filter", "after", "expected"), [
    (None, None, ["0", "1", "2", "3", "4"]),
    (None, "shardId-000000000002", ["3", "4"]),
    ({"Type": "AT_LATEST"}, None, ["1", "3", "4"]),
    ({"Type": "AT_TRIM_HORIZON"}, None, ["0", "1"]),
    ({"Type": "FROM_TRIM_HORIZON"}, None, ["0", "1", "2", "3", "4"]),
    ({"Type": "AFTER_SHARD_ID", "ShardId": "shardId-000000000001"}, None, ["2", "3", "4"]),
    ({"Type": "AFTER_SHARD_ID", "ShardId": "shardId-000000000001"}, "shardId-000000000003", ["4"]),
    ({"Type": "AT_TIMESTAMP", "Timestamp": 150}, None, ["0", "1"]),
    ({"Type": "AT_TIMESTAMP", "Timestamp": 250}, None, ["1", "2", "3"]),
    ({"Type": "AT_TIMESTAMP", "Timestamp": 300}, None, ["1", "3", "4"]),
    ({"Type": "AT_TIMESTAMP", "Timestamp": 10}, None, ["0", "1"]),
    ({"Type": "FROM_TIMESTAMP", "Timestamp": 250}, None, ["1", "2", "3", "4"]),
    ({"Type": "FROM_TIMESTAMP", "Timestamp": 10}, None, ["0", "1", "2", "3", "4"]),
    ({"Type": "AT_TIMESTAMP", "Timestamp": "1970-01-01T00:04:10Z"}, None, ["1", "2", "3"]),
])
def test_select_shards(shard_filter: dict[str, object] | None, after: str | None, expected: list[str]) -> None:
    assert ids(select_shards(ALL, shard_filter, after)) == expected
