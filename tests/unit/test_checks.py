"""What a record must be before it reaches a target: provenance, a plausible version, the key schema,
values DynamoDB accepts, and reasons that name attributes without quoting their values."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kcl_app.core.attrs import HASHED_KEY_ID_PREFIX, MAX_KEY_ID_CHARS, key_id
from kcl_app.core.checks import KeySchema, RecordChecks, check_item, number_problem
from kcl_app.core.errors import PoisonRecord
from kcl_app.core.plan import TargetRule, plan_batch
from kcl_app.core.records import RawRecord, decode

ARRIVAL_MS = 1_790_000_000_000
STAMP_US = ARRIVAL_MS * 1000 - 5_000_000  # five seconds before arrival
SCHEMA = RecordChecks(key_schemas={"orders": KeySchema(("pk", "S"), ("sk", "N"))}, region="us-east-1")


def doc(**changes: Any) -> dict[str, Any]:
    keys = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    out: dict[str, Any] = {
        "awsRegion": "us-east-1", "eventID": "e1", "eventName": "MODIFY", "userIdentity": None,
        "recordFormat": "application/json", "tableName": "orders", "eventSource": "aws:dynamodb",
        "dynamodb": {"ApproximateCreationDateTime": STAMP_US, "Keys": keys,
                     "NewImage": {**keys, "email": {"S": "someone@example.com"}}, "OldImage": dict(keys),
                     "SizeBytes": 60},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = out
        for p in parents:
            node = node[p]
        if value is DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    return out


DELETE = object()


def record(d: Any, arrival: int | None = ARRIVAL_MS) -> RawRecord:
    data = d if isinstance(d, bytes) else json.dumps(d).encode()
    return RawRecord(data, "1", arrival_millis=arrival)


def reason(d: Any, checks: RecordChecks = SCHEMA, arrival: int | None = ARRIVAL_MS, **kw: Any) -> str:
    with pytest.raises(PoisonRecord) as caught:
        decode(record(d, arrival), checks=checks, **kw)
    assert caught.value.reason
    return caught.value.reason


def test_a_well_formed_record_passes_every_check() -> None:
    change = decode(record(doc()), checks=SCHEMA)
    assert change.key == {"pk": {"S": "a"}, "sk": {"N": "1"}} and change.version.micros == STAMP_US


@pytest.mark.parametrize(("changes", "expected"), [
    ({"eventSource": "aws:kinesis"}, "eventSource is not 'aws:dynamodb'"),
    ({"eventSource": DELETE}, "eventSource is not 'aws:dynamodb'"),
    ({"recordFormat": "application/cbor"}, "recordFormat is not 'application/json'"),
    ({"awsRegion": "eu-west-1"}, "awsRegion is not the configured source region us-east-1"),
    ({"awsRegion": DELETE}, "awsRegion is not the configured source region"),
])
def test_provenance_is_checked(changes: dict[str, Any], expected: str) -> None:
    assert expected in reason(doc(**changes))


def test_the_region_is_only_checked_when_configured() -> None:
    assert decode(record(doc(awsRegion="eu-west-1")), checks=RecordChecks()).region == "eu-west-1"


SECONDS = ARRIVAL_MS // 1000 - 5


@pytest.mark.parametrize(("stamp", "accepted"), [
    (STAMP_US, True),                        # microseconds (the infra's setting)
    (STAMP_US // 1000, True),                # milliseconds
    (SECONDS + 0.25, True),                  # DynamoDB Streams: seconds with a fraction
    (SECONDS, False),                        # integer seconds read as ms: 1970
    (STAMP_US * 1000, False),                # nanoseconds read as µs: year 58,000
    (ARRIVAL_MS * 1000 + 299_000_000, True),   # within the 5 min skew
    (ARRIVAL_MS * 1000 + 301_000_000, False),  # beyond it
    (10**17, False),                         # year 5138
    (10**400, False),                        # a 401-digit integer
    (1_000_000_000_000_000, False),          # 2001: before the floor
    (0, False),
])
def test_versions_are_plausible_in_every_unit(stamp: int | float, accepted: bool) -> None:
    d = doc(dynamodb__ApproximateCreationDateTime=stamp)
    if accepted:
        decode(record(d), checks=SCHEMA)
    else:
        assert "ApproximateCreationDateTime" in reason(d)


@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"NaN", b"1e309", b"1" + b"0" * 5000])
def test_non_numbers_and_overflowing_literals_are_poison(literal: bytes) -> None:
    text = json.dumps(doc()).encode().replace(str(STAMP_US).encode(), literal)
    assert reason(text)


@pytest.mark.parametrize("literal", [b"18446744073709551621", b"-9223372036854775813", b"1" + b"0" * 300])
def test_integers_beyond_64_bits_are_refused_by_the_version_check(literal: bytes) -> None:
    # the fast parser reads them as doubles, the stdlib as integers: refused the same way, naming the field
    text = json.dumps(doc()).encode().replace(str(STAMP_US).encode(), literal)
    assert "ApproximateCreationDateTime" in reason(text)


def test_what_only_strict_json_refuses_is_read_and_judged_as_before() -> None:
    # NaN elsewhere than in the version: the stdlib reads it (as it always did); the record is kept
    text = json.dumps(doc(dynamodb__SizeBytes=float("nan"))).encode()
    assert b"NaN" in text
    assert decode(record(text), checks=SCHEMA).size_bytes == 0


def test_without_an_arrival_time_now_bounds_the_version() -> None:
    d = doc(dynamodb__ApproximateCreationDateTime=STAMP_US + 3600 * 10**6)
    decode(record(d, arrival=None), checks=SCHEMA)  # no bound at all when nothing is known
    assert "later than" in reason(d, arrival=None, now_millis=ARRIVAL_MS)
    assert decode(record(d, arrival=None), checks=SCHEMA, now_millis=ARRIVAL_MS + 3600_000).key


@pytest.mark.parametrize(("changes", "expected"), [
    ({"dynamodb__Keys": {"pk": {"S": "a"}}}, "missing sk"),
    ({"dynamodb__Keys": {"pk": {"S": "a"}, "sk": {"N": "1"}, "x": {"S": "b"}}}, "unexpected x"),
    ({"dynamodb__Keys": {"pk": {"S": "a"}, "sk": {"S": "1"}}}, "dynamodb.Keys.sk: the table's key schema says N"),
    ({"dynamodb__Keys": {"pk": {"B": "AA=="}, "sk": {"N": "1"}}}, "dynamodb.Keys.pk: the table's key schema says S"),
    ({"dynamodb__Keys": {"pk": {"S": ""}, "sk": {"N": "1"}}}, "dynamodb.Keys.pk: a key value must not be empty"),
    ({"dynamodb__Keys": {"pk": {"S": "a" * 2049}, "sk": {"N": "1"}}}, "2049 bytes exceeds DynamoDB's 2048-byte"),
    ({"dynamodb__NewImage": {"pk": {"S": "b"}, "sk": {"N": "1"}}}, "NewImage does not carry key attribute 'pk'"),
    ({"dynamodb__OldImage": {"pk": {"S": "a"}, "sk": {"N": "2"}}}, "OldImage does not carry key attribute 'sk'"),
    ({"dynamodb__OldImage": ["x"]}, "dynamodb.OldImage must be dict"),
])
def test_keys_are_checked_against_the_schema(changes: dict[str, Any], expected: str) -> None:
    assert expected in reason(doc(**changes))


def test_the_sort_key_limit_is_1024_bytes() -> None:
    schema = RecordChecks(key_schemas={"orders": KeySchema(("pk", "S"), ("sk", "S"))})
    keys = {"pk": {"S": "p" * 2048}, "sk": {"S": "s" * 1024}}
    ok = doc(dynamodb__Keys=keys, dynamodb__NewImage=dict(keys), dynamodb__OldImage=dict(keys))
    assert decode(record(ok), checks=schema).key == {"pk": {"S": "p" * 2048}, "sk": {"S": "s" * 1024}}
    keys = {"pk": {"S": "p"}, "sk": {"S": "s" * 1025}}
    bad = doc(dynamodb__Keys=keys, dynamodb__NewImage=dict(keys), dynamodb__OldImage=dict(keys))
    assert "1025 bytes exceeds DynamoDB's 1024-byte key limit" in reason(bad, checks=schema)


def test_without_a_schema_a_key_has_one_or_two_attributes() -> None:
    keys = {"a": {"S": "1"}, "b": {"S": "2"}, "c": {"S": "3"}}
    assert "one or two key attributes" in reason(doc(dynamodb__Keys=keys, dynamodb__NewImage=dict(keys),
                                                     dynamodb__OldImage=DELETE), checks=RecordChecks())


@pytest.mark.parametrize(("value", "expected"), [
    ({"SS": []}, "dynamodb.NewImage.v: SS must not be empty"),
    ({"SS": ["a", "a"]}, "SS holds duplicate members"),
    ({"NS": ["1", "1.0"]}, "NS holds duplicate members"),
    ({"BS": ["AA==", "AA=="]}, "BS holds duplicate members"),
    ({"N": "1" * 39}, "more than 38 significant digits"),
    ({"N": "1e126"}, "outside DynamoDB's range"),
    ({"N": "1e-131"}, "outside DynamoDB's range"),
    ({"B": "not base64!"}, "invalid base64"),
])
def test_values_dynamodb_refuses_are_poison_and_named(value: dict[str, Any], expected: str) -> None:
    keys = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    assert expected in reason(doc(dynamodb__NewImage={**keys, "v": value}))


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"S": "leaf"}
    for _ in range(depth):
        value = {"M": {"m": value}}
    return value


def test_documents_deeper_than_32_levels_are_poison() -> None:
    """32 levels counting the scalar: DynamoDB accepts 31 map wrappers above a scalar, refuses 32."""
    keys = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    decode(record(doc(dynamodb__NewImage={**keys, "v": nested(31)})), checks=SCHEMA)
    assert "nested deeper than DynamoDB's 32 levels" in reason(doc(dynamodb__NewImage={**keys, "v": nested(32)}))
    assert check_item({"v": nested(31)}) is None
    with pytest.raises(ValueError, match="32 levels"):
        check_item({"v": nested(32)})
    deep = json.dumps(doc(dynamodb__NewImage={**keys, "v": {"S": "HOLE"}})).encode()
    deep = deep.replace(b'{"S": "HOLE"}', b'{"M": {"m": ' * 5000 + b'{"S": "x"}' + b"}}" * 5000)
    assert reason(deep)  # past Python's recursion limit too


def test_a_lone_surrogate_is_poison_but_a_pair_is_not() -> None:
    keys = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    pair = doc(dynamodb__NewImage={**keys, "v": {"S": "\U0001f600"}}, dynamodb__SizeBytes=0)
    assert decode(record(pair), checks=SCHEMA).new_image["v"] == {"S": "\U0001f600"}  # type: ignore[index]
    lone = doc(dynamodb__NewImage={**keys, "v": {"S": "\ud800"}}, dynamodb__SizeBytes=0)
    assert "lone surrogate" in reason(lone)


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[1, 2]", b"", b'{"a": ' * 100_000, json.dumps(doc())[:-9].encode()])
def test_garbage_is_poison(data: bytes) -> None:
    assert reason(data)


def test_no_reason_quotes_a_value() -> None:
    personal = "someone@example.com"
    keys = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    for value in ({"N": personal}, {"SS": [personal, personal]}, {"B": personal}):
        image = {**keys, "v": value}
        assert personal not in reason(doc(dynamodb__NewImage=image))


# -- transforms: their output is held to DynamoDB's grammar; reasons name attributes --------------


def change() -> Any:
    return decode(record(doc()), checks=SCHEMA)


def shaped(transform: Any, log_values: bool = False) -> str:
    rule = TargetRule("t", "orders", transform=transform, log_values=log_values)
    plan = plan_batch([(0, change())], [rule])["t"]
    assert not plan.writes, plan.writes
    (rejected,) = plan.rejected
    return rejected.reason


def with_attr(value: Any, name: str = "v") -> Any:
    return lambda item: {**item, name: value}


@pytest.mark.parametrize(("transform", "expected"), [
    (with_attr({"N": 7}), "item.v: N must be a non-empty decimal string"),
    (with_attr({"S": None}), "item.v: S must be a string"),
    (with_attr({"X": "1"}), "item.v: unknown attribute type"),
    (with_attr({"S": "a", "N": "1"}), "item.v: an attribute value is a dict with exactly one type key"),
    (with_attr("plain"), "item.v: an attribute value is a dict"),
    (with_attr({"SS": []}), "item.v: SS must not be empty"),
    (with_attr({"NS": ["1", "01"]}), "item.v: NS holds duplicate members"),
    (with_attr({"B": "text, not bytes"}), "item.v: B must be bytes"),
    (with_attr({"M": {"a": {"L": [{"N": "1e200"}]}}}), "item.v.a[0]: N is outside DynamoDB's range"),
    (with_attr(nested(33)), "nested deeper than DynamoDB's 32 levels"),
    (with_attr({"S": "x"}, name=""), "attribute names must be non-empty strings"),
    (with_attr({"S": "\udcff"}), "item.v: a string is not valid UTF-8"),
    (lambda item: {**item, "pk": {"S": "other"}}, "transform changed or removed key attribute 'pk'"),
    (lambda item: [item], "transform returned list, not an item"),
])
def test_a_transform_returning_garbage_is_parked_with_the_attribute_named(transform: Any, expected: str) -> None:
    assert expected in shaped(transform)


def test_a_transform_exception_is_reported_by_type_unless_values_may_be_logged() -> None:
    def leaky(item: Any) -> Any:
        raise ValueError(f"bad e-mail {item['email']['S']}")

    assert shaped(leaky) == "transform failed: transform raised ValueError"
    assert "someone@example.com" in shaped(leaky, log_values=True)


def test_a_valid_transform_output_is_written() -> None:
    rule = TargetRule("t", "orders", transform=lambda item: {**item, "b": {"B": b"\x00"}, "s": {"NS": ["1", "2"]}})
    (write,) = plan_batch([(0, change())], [rule])["t"].writes
    assert write.item is not None and write.item["b"] == {"B": b"\x00"}


@pytest.mark.parametrize(("text", "ok"), [("0", True), ("-0.000", True), ("1" * 38, True), ("9.9999e125", True),
                                          ("1e-130", True), ("1" * 38 + "0" * 80, True), ("1e-131", False),
                                          ("NaN", False), ("Infinity", False), ("", False), (" 1", False)])
def test_number_rules(text: str, ok: bool) -> None:
    assert (number_problem(text) is None) is ok


def test_check_item_names_the_path() -> None:
    with pytest.raises(ValueError, match=r"^item\.a\.b\[1\]: N is not a decimal number$"):
        check_item({"a": {"M": {"b": {"L": [{"N": "1"}, {"N": "x"}]}}}})


# -- ledger key ids -----------------------------------------------------------------------------


def test_a_short_key_keeps_its_json_id() -> None:
    assert key_id({"pk": {"S": "a"}}) == '{"pk":{"S":"a"}}'
    assert key_id({"pk": {"B": b"\x00"}, "sk": {"N": "1"}}) == '{"pk":{"B":"AA=="},"sk":{"N":"1"}}'
    edge = {"pk": {"S": "x" * (MAX_KEY_ID_CHARS - len('{"pk":{"S":""}}'))}}
    assert key_id(edge) == json.dumps({"pk": edge["pk"]}, separators=(",", ":"))
    assert len(key_id(edge)) == MAX_KEY_ID_CHARS


@pytest.mark.parametrize("key", [
    {"pk": {"S": "x" * 2048}},
    {"pk": {"S": "é" * 1024}},                         # 2,048 UTF-8 bytes, 6 JSON chars each
    {"pk": {"B": b"\xff" * 2048}},
    {"pk": {"S": "p" * 2048}, "sk": {"S": "s" * 1024}},
    {"pk": {"B": b"\x01" * 2048}, "sk": {"B": b"\x02" * 1024}},
    {"pk": {"S": "x" * (MAX_KEY_ID_CHARS - len('{"pk":{"S":""}}') + 1)}},
])
def test_a_long_key_gets_a_stable_bounded_digest_id(key: dict[str, Any]) -> None:
    kid = key_id(key)
    assert kid.startswith(HASHED_KEY_ID_PREFIX) and len(kid) == len(HASHED_KEY_ID_PREFIX) + 64
    assert kid == key_id(dict(reversed(list(key.items()))))  # attribute order does not matter
    other = {name: ({"S": v["S"][:-1] + "!"} if "S" in v else {"B": v["B"][:-1] + b"!"}) for name, v in key.items()}
    assert key_id(other) != kid
