"""Decoding of Kinesis streaming-destination records: every field, every defect as a PoisonRecord."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcl_app.core.errors import PoisonRecord
from kcl_app.core.records import Change, RawRecord, decode
from kcl_app.core.versions import Version

EVENTS = Path(__file__).resolve().parents[1] / "events"


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def raw(doc: Any) -> RawRecord:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return RawRecord(data, "49590338271490256608559692538361571095921575989136588898", shard_id="shardId-000000000000")


def test_insert_with_every_attribute_type() -> None:
    doc = event("destination_insert_all_types_us.json")
    change = decode(raw(doc))
    assert change.event == "INSERT"
    assert change.table == "Types"
    assert change.key == {"pk": {"S": "types"}, "sk": {"N": "12345678901234567890123456789012345678"}}
    assert change.new_image == {
        "pk": {"S": "types"},
        "sk": {"N": "12345678901234567890123456789012345678"},
        "s": {"S": "héllo ✓"},
        "empty": {"S": ""},
        "b": {"B": b"\x00\xff"},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "-2.5"]},
        "bs": {"BS": [b"\x01", b"\x02"]},
        "m": {"M": {"x": {"L": [{"NULL": True}, {"BOOL": False}]}}},
        "l": {"L": []},
        "em": {"M": {}},
        "null": {"NULL": True},
        "t": {"BOOL": True},
    }
    assert change.version == Version(1795706486110153, "6ebe870d-7ca7-4edb-8446-7605dab0be25")
    assert not change.ttl_delete and not change.is_delete
    assert change.region == "us-east-1"
    assert change.size_bytes == 120
    assert change.raw is not None and change.raw.data == json.dumps(doc).encode()


def test_modify_in_milliseconds() -> None:
    change = decode(raw(event("destination_modify_ms.json")))
    assert change.event == "MODIFY"
    assert change.version.micros == 1795706486064 * 1000
    assert change.new_image is not None and change.new_image["plays"] == {"N": "11"}
    assert change.created_millis == 1795706486064.0


def test_remove_has_no_image_and_is_not_a_ttl_delete() -> None:
    change = decode(raw(event("destination_remove_ms.json")))
    assert change.event == "REMOVE" and change.is_delete
    assert change.new_image is None
    assert not change.ttl_delete


def test_ttl_remove_is_recognised() -> None:
    change = decode(raw(event("destination_remove_ttl_ms.json")))
    assert change.is_delete and change.ttl_delete


@pytest.mark.parametrize(
    "identity",
    [
        {"type": "Service", "principalId": "someone.amazonaws.com"},
        {"type": "User", "principalId": "dynamodb.amazonaws.com"},
        "Service",
        None,
    ],
)
def test_only_the_dynamodb_service_principal_marks_a_ttl_delete(identity) -> None:
    doc = event("destination_remove_ttl_ms.json")
    doc["userIdentity"] = identity
    assert not decode(raw(doc)).ttl_delete


def test_a_service_identity_on_a_modify_is_not_a_ttl_delete() -> None:
    doc = event("destination_modify_ms.json")
    doc["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert not decode(raw(doc)).ttl_delete


def test_forced_precision_is_applied() -> None:
    doc = event("destination_modify_ms.json")
    assert decode(raw(doc), "MILLISECOND").version.micros == 1795706486064000
    # read as microseconds, a millisecond stamp is in 1970: implausible, so parked, not applied
    with pytest.raises(PoisonRecord, match="before 2012"):
        decode(raw(doc), "MICROSECOND")


def test_the_key_id_is_the_same_for_insert_and_remove_of_one_item() -> None:
    ins = event("destination_modify_ms.json")
    rem = copy.deepcopy(ins)
    rem["eventName"] = "REMOVE"
    del rem["dynamodb"]["NewImage"]
    rem["dynamodb"]["Keys"] = dict(reversed(list(rem["dynamodb"]["Keys"].items())))
    assert decode(raw(ins)).key_id == decode(raw(rem)).key_id


def _without(path: tuple[str, ...]) -> dict[str, Any]:
    doc = event("destination_modify_ms.json")
    node = doc
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return doc


def _with(path: tuple[str, ...], value: Any, name: str = "destination_modify_ms.json") -> dict[str, Any]:
    doc = event(name)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


POISON = [
    (b"\x00\xffgarbage", "not JSON"),
    (b'{"eventName": "INSERT"', "not JSON"),
    (b"", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"INSERT"', "not a JSON object"),
    (_without(("eventName",)), "missing field eventName"),
    (_without(("tableName",)), "missing field tableName"),
    (_without(("eventID",)), "missing field eventID"),
    (_without(("dynamodb",)), "missing field dynamodb"),
    (_without(("dynamodb", "Keys")), "missing field dynamodb.Keys"),
    (_without(("dynamodb", "NewImage")), "missing field dynamodb.NewImage"),
    (_without(("dynamodb", "ApproximateCreationDateTime")), "ApproximateCreationDateTime"),
    (_with(("eventName",), "UPSERT"), "unknown eventName (not INSERT, MODIFY or REMOVE)"),
    (_with(("eventName",), 1), "field eventName must be str"),
    (_with(("tableName",), True), "field tableName must be str"),
    (_with(("dynamodb",), []), "field dynamodb must be dict"),
    (_with(("dynamodb", "Keys"), {}), "dynamodb.Keys is empty"),
    (_with(("dynamodb", "ApproximateCreationDateTime"), "1795706486064"), "ApproximateCreationDateTime"),
    (_with(("dynamodb", "ApproximateCreationDateTime"), -5), "must not be negative"),
    (_with(("dynamodb", "NewImage", "title"), {"B": "***"}), "dynamodb.NewImage.title: invalid base64"),
    (_with(("dynamodb", "NewImage", "title"), {"T": "x"}), "unknown attribute type 'T'"),
    (_with(("dynamodb", "Keys", "pk"), {"Q": "x"}), "dynamodb.Keys.pk: unknown attribute type 'Q'"),
    (_with(("dynamodb", "NewImage", "plays"), {"N": "eleven"}), "not a decimal number"),
    (_with(("dynamodb", "Keys", "sk"), {"M": {}}), "dynamodb.Keys.sk: a key attribute must be S, N or B"),
    (_with(("dynamodb", "NewImage", "pk"), {"S": "someone else"}), "does not carry key attribute 'pk'"),
    (_without(("dynamodb", "NewImage", "sk")), "does not carry key attribute 'sk'"),
]


@pytest.mark.parametrize(("doc", "reason"), POISON)
def test_every_defect_is_a_poison_record_with_its_reason(doc, reason) -> None:
    with pytest.raises(PoisonRecord) as caught:
        decode(raw(doc))
    assert reason in str(caught.value)
    assert caught.value.reason == str(caught.value)


def test_a_remove_needs_no_new_image() -> None:
    doc = _without(("dynamodb", "NewImage"))
    doc["eventName"] = "REMOVE"
    assert decode(raw(doc)).new_image is None


def test_deeply_nested_json_is_poison_not_a_crash() -> None:
    with pytest.raises(PoisonRecord):
        decode(raw(b"[" * 100_000 + b"]" * 100_000))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
FIELDS = ["eventName", "tableName", "eventID", "dynamodb", "userIdentity", "Keys", "NewImage",
          "ApproximateCreationDateTime", "S", "N", "B", "M", "L", "SS", "NS", "BS", "NULL", "BOOL"]


@st.composite
def mutated_records(draw: st.DrawFn) -> bytes:
    """A real record with one field replaced by an arbitrary JSON value, or arbitrary bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=40))
    doc = event(draw(st.sampled_from(["destination_insert_all_types_us.json", "destination_modify_ms.json",
                                      "destination_remove_ttl_ms.json"])))
    nodes = [doc]
    stack = [doc]
    while stack:
        node = stack.pop()
        for value in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
            if isinstance(value, dict | list):
                nodes.append(value)
                stack.append(value)
    node = draw(st.sampled_from(nodes))
    if isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if draw(st.booleans()):
            node[key] = draw(json_values)
        else:
            node[draw(st.sampled_from(FIELDS))] = node.pop(key)
    elif isinstance(node, list) and node:
        node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return json.dumps(doc).encode()


@settings(max_examples=400, deadline=None)
@given(mutated_records())
def test_decode_raises_nothing_but_poison_record(data) -> None:
    try:
        change = decode(RawRecord(data, "1"))
    except PoisonRecord as exc:
        assert str(exc)
        return
    assert isinstance(change, Change)
    assert change.key
    if change.is_delete:
        assert change.new_image is None
    else:
        assert change.new_image is not None
        assert all(change.new_image[k] == v for k, v in change.key.items())
