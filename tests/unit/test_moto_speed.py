"""The emulator speed-ups change nothing moto answers: each patched path is compared with moto's own."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tablesync_local import moto_speed

moto_speed.install()

from moto.backends import list_of_moto_modules  # noqa: E402
from moto.core.parse import JSONParser  # noqa: E402
from moto.core.utils import get_service_model  # noqa: E402
from moto.dynamodb.comparisons import ConditionExpressionParser  # noqa: E402
from moto.dynamodb.models.dynamo_type import DynamoType, Item  # noqa: E402


def _item(**attrs: dict[str, Any]) -> Item:
    return Item(DynamoType(attrs["pk"]), None, attrs)


ITEMS = [
    None,
    _item(pk={"S": "a"}),
    _item(pk={"S": "a"}, v={"S": "0005"}, d={"BOOL": True}),
    _item(pk={"S": "a"}, v={"S": "0009"}, n={"N": "3"}, m={"M": {"x": {"S": "y"}}}, l={"L": [{"N": "1"}]}),
]

# (expression, names, values): tablesync's own condition first, then the grammar's other corners.
CASES = [
    ("attribute_not_exists(#v) OR #v < :v", {"#v": "v"}, {":v": {"S": "0007"}}),
    ("attribute_not_exists(#v) OR #v < :v", {"#v": "v"}, {":v": {"S": "0001"}}),
    ("attribute_not_exists(#v) OR #v < :v", {"#v": "n"}, {":v": {"N": "4"}}),
    ("attribute_not_exists(v)", None, None),
    ("attribute_exists(pk) AND NOT (n = :n)", None, {":n": {"N": "3"}}),
    ("n BETWEEN :lo AND :hi", None, {":lo": {"N": "1"}, ":hi": {"N": "5"}}),
    ("n IN (:a, :b, :c)", None, {":a": {"N": "1"}, ":b": {"N": "3"}, ":c": {"N": "9"}}),
    ("size(#m) > :s OR begins_with(v, :p)", {"#m": "m"}, {":s": {"N": "0"}, ":p": {"S": "00"}}),
    ("m.x = :y AND l[0] = :one", None, {":y": {"S": "y"}, ":one": {"N": "1"}}),
    ("contains(#l, :one) AND attribute_type(d, :t)", {"#l": "l"}, {":one": {"N": "1"}, ":t": {"S": "BOOL"}}),
    ("(#v <> :v) OR (:v = :v)", {"#v": "v"}, {":v": {"S": "0005"}}),
]


def _outcomes(op: Any) -> list[Any]:
    """What the condition says of every item: True/False, or the error moto raises evaluating it."""
    out: list[Any] = []
    for item in ITEMS:
        try:
            out.append(op.expr(item))
        except Exception as exc:  # moto raises ValueError for size() of a missing attribute
            out.append((type(exc), exc.args))
    return out


def _original(expression: str, names: Any, values: Any) -> tuple[Any, list[str], list[str]]:
    parser = ConditionExpressionParser(expression, names, values)
    op = ConditionExpressionParser.parse.__wrapped__(parser)  # type: ignore[attr-defined]
    return op, parser.expr_attr_names_found, parser.expr_attr_values_found


def _patched(expression: str, names: Any, values: Any) -> tuple[Any, list[str], list[str]]:
    parser = ConditionExpressionParser(expression, names, values)
    op = parser.parse()
    return op, parser.expr_attr_names_found, parser.expr_attr_values_found


@pytest.mark.parametrize(("expression", "names", "values"), CASES)
def test_cached_conditions_decide_as_moto_does(expression: str, names: Any, values: Any) -> None:
    want_op, want_names, want_values = _original(expression, names, values)
    for _ in range(2):  # first call fills the cache, second one is served from it
        op, found_names, found_values = _patched(expression, names, values)
        assert _outcomes(op) == _outcomes(want_op)
        assert (found_names, found_values) == (want_names, want_values)


def test_a_cached_tree_takes_each_request_values() -> None:
    expression, names = "attribute_not_exists(#v) OR #v < :v", {"#v": "v"}
    stored = ITEMS[2]  # v = "0005"
    outcomes = [_patched(expression, names, {":v": {"S": v}})[0].expr(stored) for v in ("0009", "0001", "0006")]
    assert outcomes == [True, False, True]


def test_names_are_part_of_the_cache_key() -> None:
    expression, values = "#a = :x", {":x": {"N": "3"}}
    assert _patched(expression, {"#a": "n"}, values)[0].expr(ITEMS[3]) is True
    assert _patched(expression, {"#a": "v"}, values)[0].expr(ITEMS[3]) is False


@pytest.mark.parametrize(("expression", "names", "values"), [
    ("#v < :v AND n = :w", {"#v": "v"}, {":v": {"S": "1"}}),  # :w missing
    ("#v < :v", {"#v": "v"}, None),  # no values at all
    ("#v < :v", {}, {":v": {"S": "1"}}),  # #v missing
    ("#v < :v)", {"#v": "v"}, {":v": {"S": "1"}}),  # syntax
    ("v << :v", None, {":v": {"S": "1"}}),  # syntax
])
def test_errors_are_moto_errors_cached_or_not(expression: str, names: Any, values: Any) -> None:
    with pytest.raises(Exception) as want:
        _original(expression, names, values)
    with pytest.raises(type(want.value)) as got:
        _patched(expression, names, values)
    assert got.value.args == want.value.args
    if values and names is not None and "#v" in names and ")" not in expression and "<<" not in expression:
        full = {**values, ":w": {"N": "1"}}
        _patched(expression, names, full)  # now cached with every value present
        with pytest.raises(type(want.value)) as again:
            _patched(expression, names, values)
        assert again.value.args == want.value.args


def _parse_both(service: str, operation: str, body: dict[str, Any]) -> tuple[Any, Any]:
    model = get_service_model(service).operation_model(operation)
    raw = json.dumps(body).encode()
    parser = JSONParser(model, map_type=dict)
    fast = parser._parse_json_body(raw, model.input_shape)
    slow = JSONParser._parse_json_body.__wrapped__(parser, raw, model.input_shape)  # type: ignore[attr-defined]
    return fast, slow


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_requests_parse_as_moto_parses_them() -> None:
    item = {"pk": {"S": "k"}, "n": {"N": "1.50"}, "b": {"B": _b64(b"\x00\x01")}, "bs": {"BS": [_b64(b"x")]},
            "ss": {"SS": ["a"]}, "nul": {"NULL": True}, "t": {"BOOL": False},
            "m": {"M": {"deep": {"L": [{"B": _b64(b"\xff")}, {"M": {}}]}}}}
    body = {"TransactItems": [
        {"Put": {"TableName": "t", "Item": item, "ConditionExpression": "attribute_not_exists(#v)",
                 "ExpressionAttributeNames": {"#v": "v"}, "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                 "NotInTheModel": 1}},
        {"Delete": {"TableName": "t", "Key": {"pk": {"S": "j"}}, "ExpressionAttributeValues": None}},
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "u"}}, "UpdateExpression": "SET a = :a",
                    "ExpressionAttributeValues": {":a": {"N": "7"}}}},
    ], "ClientRequestToken": "tok", "ReturnConsumedCapacity": "TOTAL"}
    fast, slow = _parse_both("dynamodb", "TransactWriteItems", body)
    assert fast == slow
    assert fast["TransactItems"][0]["Put"]["Item"]["b"]["B"] == b"\x00\x01"  # blobs decoded, as moto does
    assert list(fast["TransactItems"][0]["Put"]) == list(slow["TransactItems"][0]["Put"])  # member order


@pytest.mark.parametrize(("service", "operation", "body"), [
    ("dynamodb", "Query", {"TableName": "t", "Limit": 5, "KeyConditionExpression": "pk = :p",
                           "ExpressionAttributeValues": {":p": {"S": "x"}}, "ScanIndexForward": False}),
    ("kinesis", "PutRecords", {"StreamName": "s", "Records": [{"Data": _b64(b"hello"), "PartitionKey": "p"}]}),
    ("kinesis", "GetShardIterator", {"StreamName": "s", "ShardId": "shardId-0", "ShardIteratorType": "AT_TIMESTAMP",
                                     "Timestamp": 1790000000.25}),
    ("kinesis", "GetRecords", {"ShardIterator": "it", "Limit": 10}),
])
def test_other_operations_parse_alike(service: str, operation: str, body: dict[str, Any]) -> None:
    fast, slow = _parse_both(service, operation, body)
    assert fast == slow


def test_the_module_list_is_moto_s_own() -> None:
    original = list(list_of_moto_modules.__wrapped__())  # type: ignore[attr-defined]
    assert list(list_of_moto_modules()) == original
    assert "dynamodb" in list_of_moto_modules() and "kinesis" in list_of_moto_modules()
