"""The emulator refuses the values DynamoDB refuses, with the service's messages, on every write path.

For each rule: the valid edge is stored (read back from the table), the invalid value is refused with
DynamoDB's ValidationException message and nothing of the request is written. PutItem, BatchWriteItem
(the whole request is refused) and TransactWriteItems (cancelled with a ValidationError reason, or refused
as a whole for an empty key) are covered for every rule, UpdateItem for the rules an update can break.
"""

from __future__ import annotations

import base64
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tablesync_local import items

pytestmark = pytest.mark.integration

REGION = "us-east-1"
BASE = {"pk": {"S": "k"}, "sk": {"S": "s"}}
ENVELOPE = "1 validation error detected: "


def nested(wraps: int) -> dict[str, Any]:
    value: dict[str, Any] = {"S": "leaf"}
    for i in range(wraps):
        value = {"M": {"m": value}} if i % 2 else {"L": [value]}
    return value


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# (rule, valid edge, invalid value, DynamoDB's message, whether PutItem/UpdateItem wrap it in the envelope)
VALUE_RULES: list[tuple[str, dict[str, Any], dict[str, Any], str, bool]] = [
    ("empty string set", {"SS": [""]}, {"SS": []}, items.EMPTY_SET["SS"], True),
    ("empty number set", {"NS": ["0"]}, {"NS": []}, items.EMPTY_SET["NS"], True),
    ("empty binary set", {"BS": [b"\x00"]}, {"BS": []}, items.EMPTY_SET["BS"], True),
    ("duplicate strings", {"SS": ["a", "b"]}, {"SS": ["a", "b", "a"]},
     "One or more parameter values were invalid: Input collection [a, b, a] contains duplicates.", True),
    ("duplicate numbers", {"NS": ["1", "1.01"]}, {"NS": ["1", "1.00"]}, "Input collection contains duplicates", True),
    ("duplicate binaries", {"BS": [b"x", b"y"]}, {"BS": [b"x", b"x"]},
     f"One or more parameter values were invalid: Input collection [{b64(b'x')}, {b64(b'x')}]of type BS "
     "contains duplicates.", True),
    ("38 significant digits", {"N": "9" * 38}, {"N": "9" * 39}, items.TOO_MANY_DIGITS, False),
    ("38 digits after zeroes", {"N": "0.000" + "1" * 38 + "000"}, {"N": "1" * 20 + "." + "1" * 19},
     items.TOO_MANY_DIGITS, False),
    ("largest magnitude", {"N": "9." + "9" * 37 + "E+125"}, {"N": "1E+126"}, items.OVERFLOW, False),
    ("largest negative", {"N": "-9." + "9" * 37 + "E+125"}, {"N": "-1E+126"}, items.OVERFLOW, False),
    ("smallest magnitude", {"N": "1E-130"}, {"N": "1E-131"}, items.UNDERFLOW, False),
    ("smallest negative", {"N": "-1E-130"}, {"N": "-0.99E-130"}, items.UNDERFLOW, False),
    ("number in a set", {"NS": ["1E+125"]}, {"NS": ["1", "1E+126"]}, items.OVERFLOW, False),
    ("number in a map", {"M": {"n": {"N": "1" * 38}}}, {"M": {"n": {"N": "1" * 39}}}, items.TOO_MANY_DIGITS, False),
    ("nesting", nested(31), nested(32), items.TOO_DEEP, False),
]
# (rule, valid edge item, invalid item, message) for rules on names, keys and the whole item
ITEM_RULES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("empty attribute name", {**BASE, "a": {"S": "x"}}, {**BASE, "": {"S": "x"}}, items.EMPTY_NAME),
    ("partition key of 2048 bytes", {**BASE, "pk": {"S": "é" * 1024}}, {**BASE, "pk": {"S": "é" * 1024 + "x"}},
     items.HASH_KEY_TOO_LONG),
    ("sort key of 1024 bytes", {**BASE, "sk": {"S": "x" * 1024}}, {**BASE, "sk": {"S": "x" * 1025}},
     items.RANGE_KEY_TOO_LONG),
]


@pytest.fixture
def ddb(moto: None) -> Any:
    client = boto3.client("dynamodb", region_name=REGION)
    client.create_table(
        TableName="t", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
    )
    return client


def stored(ddb: Any) -> list[dict[str, Any]]:
    return list(ddb.scan(TableName="t", ConsistentRead=True)["Items"])


def refusal(call: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as info:
        call()
    return dict(info.value.response)


def put(ddb: Any, item: dict[str, Any]) -> Any:
    return ddb.put_item(TableName="t", Item=item)


def batch(ddb: Any, item: dict[str, Any]) -> Any:
    other = {"pk": {"S": "other"}, "sk": {"S": "s"}}
    return ddb.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": other}},
                                                    {"PutRequest": {"Item": item}}]})


def transact(ddb: Any, item: dict[str, Any]) -> Any:
    other = {"pk": {"S": "other"}, "sk": {"S": "s"}}
    return ddb.transact_write_items(TransactItems=[{"Put": {"TableName": "t", "Item": other}},
                                                   {"Put": {"TableName": "t", "Item": item}}])


def assert_refused(ddb: Any, op: str, item: dict[str, Any], message: str, enveloped: bool) -> None:
    if op == "transact":
        error = refusal(lambda: transact(ddb, item))
        assert error["Error"]["Code"] == "TransactionCanceledException"
        assert error["CancellationReasons"] == [{"Code": "None"},
                                                {"Code": "ValidationError", "Message": message}]
    else:
        error = refusal(lambda: put(ddb, item) if op == "put" else batch(ddb, item))
        assert error["Error"]["Code"] == "ValidationException"
        expected = f"{ENVELOPE}{message}" if enveloped and op == "put" else message
        assert error["Error"]["Message"] == expected
    assert stored(ddb) == []  # nothing of the request was written


def assert_accepted(ddb: Any, op: str, item: dict[str, Any]) -> None:
    {"put": put, "batch": batch, "transact": transact}[op](ddb, item)
    got = {(i["pk"]["S"], i["sk"]["S"]): i for i in stored(ddb)}
    assert got[(item["pk"]["S"], item["sk"]["S"])] == item


OPS = ("put", "batch", "transact")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("rule", "valid", "invalid", "message", "enveloped"), VALUE_RULES,
                         ids=[r[0] for r in VALUE_RULES])
def test_value_rule_accepts_the_edge_and_refuses_beyond(ddb: Any, op: str, rule: str, valid: dict[str, Any],
                                                         invalid: dict[str, Any], message: str,
                                                         enveloped: bool) -> None:
    assert_refused(ddb, op, {**BASE, "a": invalid}, message, enveloped)
    assert_accepted(ddb, op, {**BASE, "a": valid})


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("rule", "valid", "invalid", "message"), ITEM_RULES, ids=[r[0] for r in ITEM_RULES])
def test_item_rule_accepts_the_edge_and_refuses_beyond(ddb: Any, op: str, rule: str, valid: dict[str, Any],
                                                        invalid: dict[str, Any], message: str) -> None:
    assert_refused(ddb, op, invalid, message, enveloped=False)
    assert_accepted(ddb, op, valid)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("attr", "kind"), [("pk", "S"), ("sk", "S")])
def test_empty_key_value_is_refused_for_the_whole_request(ddb: Any, op: str, attr: str, kind: str) -> None:
    item = {**BASE, attr: {kind: ""}}
    message = ("One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain "
               f"an empty string value. Key: {attr}")
    call = {"put": put, "batch": batch, "transact": transact}[op]
    error = refusal(lambda: call(ddb, item))
    assert (error["Error"]["Code"], error["Error"]["Message"]) == ("ValidationException", message)
    assert stored(ddb) == []
    assert_accepted(ddb, op, {**BASE, attr: {kind: "x"}})


@pytest.mark.parametrize(("rule", "valid", "invalid", "message", "enveloped"), VALUE_RULES,
                         ids=[r[0] for r in VALUE_RULES])
@pytest.mark.parametrize("existing", [False, True], ids=["new-item", "existing-item"])
def test_update_cannot_store_what_a_put_could_not(ddb: Any, existing: bool, rule: str, valid: dict[str, Any],
                                                  invalid: dict[str, Any], message: str, enveloped: bool) -> None:
    if existing:
        put(ddb, {**BASE, "b": {"S": "kept"}})
    before = stored(ddb)

    def update(value: dict[str, Any]) -> Any:
        return ddb.update_item(TableName="t", Key=BASE, UpdateExpression="SET a = :v",
                               ExpressionAttributeValues={":v": value})

    error = refusal(lambda: update(invalid))
    assert error["Error"]["Code"] == "ValidationException"
    # an empty set is refused among the ExpressionAttributeValues already, inside a longer message
    assert message in error["Error"]["Message"]
    assert stored(ddb) == before
    update(valid)
    (item,) = stored(ddb)
    assert item["a"] == valid


def test_transaction_update_with_a_refused_value_is_cancelled_with_its_reason(ddb: Any) -> None:
    put(ddb, BASE)
    error = refusal(lambda: ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "other"}, "sk": {"S": "s"}}}},
        {"Update": {"TableName": "t", "Key": BASE, "UpdateExpression": "SET a = :v",
                    "ExpressionAttributeValues": {":v": nested(32)}}},
    ]))
    assert error["CancellationReasons"] == [{"Code": "None"}, {"Code": "ValidationError", "Message": items.TOO_DEEP}]
    assert stored(ddb) == [BASE]


def test_400_kb_edge_on_a_composite_key(ddb: Any) -> None:
    room = items.MAX_ITEM_BYTES - items.item_size({**BASE, "d": {"S": ""}})
    put(ddb, {**BASE, "d": {"S": "x" * room}})
    error = refusal(lambda: put(ddb, {**BASE, "sk": {"S": "t"}, "d": {"S": "x" * (room + 1)}}))
    assert error["Error"]["Message"] == items.ITEM_TOO_LARGE
    assert len(stored(ddb)) == 1


def test_the_emulator_process_enforces_the_rules(fresh_stack: Any) -> None:
    """The rules hold over HTTP in the emulator server too (the stack the demo and the daemon tests use)."""
    ddb = fresh_stack.client("dynamodb")
    ddb.create_table(TableName="served", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    refused = {"pk": {"S": "k"}, "a": nested(32)}
    error = refusal(lambda: ddb.put_item(TableName="served", Item=refused))
    assert (error["Error"]["Code"], error["Error"]["Message"]) == ("ValidationException", items.TOO_DEEP)
    error = refusal(lambda: ddb.batch_write_item(RequestItems={"served": [
        {"PutRequest": {"Item": {"pk": {"S": "b"}, "n": {"N": "1" * 39}}}}]}))
    assert error["Error"]["Message"] == items.TOO_MANY_DIGITS
    assert ddb.scan(TableName="served")["Items"] == []
    ddb.put_item(TableName="served", Item={"pk": {"S": "k"}, "a": nested(31)})
    assert ddb.scan(TableName="served")["Items"] == [{"pk": {"S": "k"}, "a": nested(31)}]


@pytest.mark.parametrize("op", [*OPS, "update"])
def test_binary_keys_are_measured_in_raw_bytes(moto: None, op: str) -> None:
    """Binary key limits count raw bytes, not base64 text: 2048 / 1024 raw bytes are valid keys."""
    ddb = boto3.client("dynamodb", region_name=REGION)
    ddb.create_table(
        TableName="b", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "B"},
                              {"AttributeName": "sk", "AttributeType": "B"}],
    )

    def write(item: dict[str, Any]) -> Any:
        if op == "put":
            return ddb.put_item(TableName="b", Item=item)
        if op == "batch":
            return ddb.batch_write_item(RequestItems={"b": [{"PutRequest": {"Item": item}}]})
        if op == "transact":
            return ddb.transact_write_items(TransactItems=[{"Put": {"TableName": "b", "Item": item}}])
        return ddb.update_item(TableName="b", Key=item, UpdateExpression="SET a = :v",
                               ExpressionAttributeValues={":v": {"N": "1"}})

    for pk, sk, message in [(2049, 1, items.HASH_KEY_TOO_LONG), (1, 1025, items.RANGE_KEY_TOO_LONG)]:
        error = refusal(lambda pk=pk, sk=sk: write({"pk": {"B": b"\x01" * pk}, "sk": {"B": b"\x02" * sk}}))
        reasons = error.get("CancellationReasons")
        assert (reasons[0]["Message"] if reasons else error["Error"]["Message"]) == message
    assert ddb.scan(TableName="b")["Items"] == []
    write({"pk": {"B": b"\x01" * 2048}, "sk": {"B": b"\x02" * 1024}})
    (item,) = ddb.scan(TableName="b")["Items"]
    assert (len(item["pk"]["B"]), len(item["sk"]["B"])) == (2048, 1024)
