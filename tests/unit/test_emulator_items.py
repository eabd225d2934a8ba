"""The emulator's own item rules (tablesync_local.items): sizes, comparison, and agreement with the product.

The emulator sizes items with its own code, written from DynamoDB's documentation, on purpose (it is the
oracle). Two independent readings of one document must agree: a differential property checks the
emulator's sizes against the product's on generated values, so a disagreement (as ``{"N": "0"}`` once
was: 1 byte in the product, 2 in the emulator) shows up as a failing example.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcl_app.core import attrs as product
from tablesync_local import items

numbers = st.one_of(
    st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(lambda d: f"{d:E}").filter(
        lambda text: _valid_number(text)),
    st.sampled_from(["0", "-0", "0.000", "100", "0.00100", "1E-130", "-1E-130", "9.99E+125", "1" * 38]),
)


def _valid_number(text: str) -> bool:
    try:
        items.check_item({"n": {"N": text}})
    except items.Refused:
        return False
    return True


scalars = st.one_of(
    st.text(max_size=20).map(lambda s: {"S": s}),
    numbers.map(lambda n: {"N": n}),
    st.binary(max_size=20).map(lambda b: {"B": b}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
    st.lists(st.text(max_size=8), min_size=1, max_size=5, unique=True).map(lambda v: {"SS": v}),
    st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=5, unique=True).map(lambda v: {"BS": v}),
    st.lists(st.integers(-1000, 1000), min_size=1, max_size=5, unique=True).map(
        lambda v: {"NS": [str(n) for n in v]}),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda v: {"L": v}),
    st.dictionaries(st.text(max_size=6), inner, max_size=4).map(lambda v: {"M": v}),
), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), values, min_size=1, max_size=5))
def test_emulator_and_product_weigh_items_alike(item: dict[str, Any]) -> None:
    assert items.item_size(item) == product.item_size(item)


@pytest.mark.parametrize(("number", "size"), [("0", 1), ("-0.0", 1), ("7", 2), ("10", 2), ("12", 2),
                                              ("123", 3), ("-1.5E+10", 2), ("0.0001", 2)])
def test_numbers_weigh_one_byte_per_two_significant_digits_plus_one(number: str, size: int) -> None:
    assert items.value_size({"N": number}) == size


def test_binary_weighs_its_raw_bytes_in_either_wire_form() -> None:
    raw = bytes(range(10))
    assert items.value_size({"B": raw}) == items.value_size({"B": base64.b64encode(raw).decode()}) == 10


def test_key_id_is_sorted_compact_json_with_binary_as_base64() -> None:
    key = {"sk": {"B": b"\x00\xff"}, "pk": {"S": "é"}}
    assert items.key_id(key) == '{"pk":{"S":"\\u00e9"},"sk":{"B":"AP8="}}'
    assert items.key_id(dict(reversed(list(key.items())))) == items.key_id(key)


def test_canonical_form_ignores_set_order_but_not_list_order() -> None:
    a = {"M": {"s": {"SS": ["b", "a"]}, "l": {"L": [{"N": "1"}, {"N": "2"}]}, "b": {"BS": [b"y", b"x"]}}}
    b = {"M": {"s": {"SS": ["a", "b"]}, "l": {"L": [{"N": "1"}, {"N": "2"}]}, "b": {"BS": ["eA==", "eQ=="]}}}
    assert items.canonical(a) == items.canonical(b)
    c = {"M": {**b["M"], "l": {"L": [{"N": "2"}, {"N": "1"}]}}}
    assert items.canonical(a) != items.canonical(c)


def test_projection_keeps_keys_whatever_is_excluded() -> None:
    item = {"pk": {"S": "k"}, "a": {"N": "1"}, "b": {"N": "2"}}
    assert items.project(item, ["pk"], exclude=["pk", "a"]) == {"pk": {"S": "k"}, "b": {"N": "2"}}
    assert items.project(item, ["pk"], include=["a"]) == {"pk": {"S": "k"}, "a": {"N": "1"}}


@pytest.mark.parametrize(("number", "message"), [
    ("1" * 39, items.TOO_MANY_DIGITS), ("1" * 38 + "1E+10", items.TOO_MANY_DIGITS),
    ("1E+126", items.OVERFLOW), ("-1E+126", items.OVERFLOW), ("1E-131", items.UNDERFLOW),
    ("NaN", f"{items.NOT_A_NUMBER}: NaN"), ("Infinity", f"{items.NOT_A_NUMBER}: Infinity"),
    ("1e", f"{items.NOT_A_NUMBER}: 1e"), (" 1", items.NOT_A_NUMBER),
])
def test_numbers_dynamodb_refuses(number: str, message: str) -> None:
    with pytest.raises(items.Refused) as refused:
        items.check_item({"n": {"N": number}})
    assert refused.value.message == message


@pytest.mark.parametrize("number", ["1" * 38, "1" * 38 + "000", "0.000" + "1" * 38, "0", "-0", "1E+125",
                                    "9.9999999999999999999999999999999999999E+125", "1E-130", "-1E-130"])
def test_numbers_dynamodb_accepts(number: str) -> None:
    items.check_item({"n": {"N": number}})
