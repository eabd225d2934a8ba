"""The destination record format and its building blocks, without moto."""

from __future__ import annotations

import json
import uuid

import pytest

from tablesync_local.destination import FaultConfig
from tablesync_local.destination_format import (
    TTL_USER_IDENTITY,
    CreationClock,
    attribute_value_size,
    build_record,
    encode_record,
    event_name,
    item_size,
    partition_key,
)


def test_size_bytes_matches_a_record_captured_from_the_real_service() -> None:
    # A 2022 record from a real table: SizeBytes was 120 for these Keys + NewImage.
    keys = {"Timestamp": {"S": "1649930048"}, "RouteId": {"S": "222000076"}}
    new = {"RemainSeatCnt": {"S": "44"}, "Timestamp": {"S": "1649930048"}, "PlateNo": {"S": "경기74아3844"},
           "RouteId": {"S": "222000076"}, "PredictTime": {"S": "19"}}
    record = build_record(region="ap-northeast-2", table_name="bus", keys=keys, old_image=None, new_image=new,
                          creation_time=1649930048474, precision="MILLISECOND", event_id=str(uuid.uuid4()))
    assert record["dynamodb"]["SizeBytes"] == 120


@pytest.mark.parametrize(("value", "size"), [
    ({"S": "héllo"}, 6), ({"N": "1"}, 2), ({"N": "12345678901234567890123456789012345678"}, 20),
    ({"N": "-0.0100"}, 2), ({"N": "0"}, 1), ({"B": "AAE="}, 2), ({"BOOL": True}, 1), ({"NULL": True}, 1),
    ({"SS": ["a", "bc"]}, 3), ({"NS": ["1", "22"]}, 4), ({"BS": ["AA==", "AAE="]}, 3),
    ({"L": []}, 3), ({"M": {}}, 3), ({"L": [{"S": "ab"}]}, 6), ({"M": {"k": {"S": "ab"}}}, 7),
])
def test_attribute_value_sizes_follow_the_documented_rules(value: dict[str, object], size: int) -> None:
    assert attribute_value_size(value) == size


def test_item_size_counts_names_and_values() -> None:
    assert item_size({"pk": {"S": "a"}, "v": {"N": "1"}}) == 6


def test_event_name_from_the_images() -> None:
    img = {"pk": {"S": "a"}}
    assert (event_name(None, img), event_name(img, img), event_name(img, None)) == ("INSERT", "MODIFY", "REMOVE")
    with pytest.raises(ValueError, match="old or a new image"):
        event_name(None, None)


def test_record_fields_in_the_documented_order_and_images_per_event() -> None:
    keys, old, new = {"pk": {"S": "a"}}, {"pk": {"S": "a"}, "v": {"N": "1"}}, {"pk": {"S": "a"}, "v": {"N": "2"}}
    common = {"region": "eu-west-1", "table_name": "Music", "keys": keys, "creation_time": 1697053318154123,
              "precision": "MICROSECOND", "event_id": "e"}
    modify = build_record(old_image=old, new_image=new, **common)  # type: ignore[arg-type]
    assert modify == {
        "awsRegion": "eu-west-1", "eventID": "e", "eventName": "MODIFY", "userIdentity": None,
        "recordFormat": "application/json", "tableName": "Music",
        "dynamodb": {"ApproximateCreationDateTime": 1697053318154123, "Keys": keys, "NewImage": new,
                     "OldImage": old, "SizeBytes": 15, "ApproximateCreationDateTimePrecision": "MICROSECOND"},
        "eventSource": "aws:dynamodb"}
    assert list(modify) == ["awsRegion", "eventID", "eventName", "userIdentity", "recordFormat", "tableName",
                            "dynamodb", "eventSource"]
    insert = build_record(old_image=None, new_image=new, **common)  # type: ignore[arg-type]
    assert "OldImage" not in insert["dynamodb"] and insert["eventName"] == "INSERT"
    ttl = build_record(old_image=old, new_image=None, ttl_delete=True, **common)  # type: ignore[arg-type]
    assert "NewImage" not in ttl["dynamodb"] and ttl["userIdentity"] == TTL_USER_IDENTITY


def test_encoding_is_compact_utf8_json() -> None:
    data = encode_record({"a": "✓", "b": [1, None]})
    assert data == '{"a":"✓","b":[1,null]}'.encode()
    assert json.loads(data) == {"a": "✓", "b": [1, None]}


def test_partition_key_is_32_upper_hex_stable_per_item_and_salted() -> None:
    k = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    same_reordered = {"sk": {"N": "1"}, "pk": {"S": "a"}}
    pk = partition_key("T", k, "salt")
    assert len(pk) == 32 and pk == pk.upper() and int(pk, 16) >= 0
    assert partition_key("T", same_reordered, "salt") == pk
    assert partition_key("T", k, "other-salt") != pk
    assert partition_key("U", k, "salt") != pk
    assert partition_key("T", {"pk": {"S": "b"}, "sk": {"N": "1"}}, "salt") != pk


def test_creation_clock_never_goes_back_even_if_the_monotonic_source_does() -> None:
    ticks = iter([0, 5_000_000, 3_000_000, 9_000_000, 9_000_000])
    clock = CreationClock(wall_ns=lambda: 1_700_000_000_000_000_000, monotonic_ns=lambda: next(ticks))
    values = [clock.now_us() for _ in range(4)]
    assert values == [1_700_000_000_005_000, 1_700_000_000_005_000, 1_700_000_000_009_000, 1_700_000_000_009_000]


def test_creation_clock_precisions_have_13_and_16_digits() -> None:
    clock = CreationClock()
    ms, us = clock.stamp("MILLISECOND"), clock.stamp("MICROSECOND")
    assert (len(str(ms)), len(str(us))) == (13, 16)
    assert us // 1000 >= ms


@pytest.mark.parametrize("bad", [{"duplicate_rate": -0.1}, {"duplicate_rate": 1.5}, {"reorder_window": -1}])
def test_fault_config_refuses_impossible_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        FaultConfig(**bad)  # type: ignore[arg-type]


def test_fault_config_defaults_are_the_real_service() -> None:
    f = FaultConfig()
    assert (f.duplicate_rate, f.reorders, f.scatter_partition_keys, f.drop_oversize) == (0.0, False, False, True)
    assert FaultConfig(reorder_window=10).hold_ms == 100.0
