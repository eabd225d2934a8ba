"""Attribute values: wire form <-> API form, key ids, item sizes, projection."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcl_app.core.attrs import (
    MAX_ITEM_BYTES,
    item_from_wire,
    item_size,
    item_to_wire,
    key_id,
    key_of,
    project,
    value_from_wire,
    value_size,
    value_to_wire,
)
from tests.property.strategies import values

DIGITS_38 = "12345678901234567890123456789012345678"


@pytest.mark.parametrize(
    ("wire", "api"),
    [
        ({"S": "héllo ✓"}, {"S": "héllo ✓"}),
        ({"S": ""}, {"S": ""}),
        ({"N": DIGITS_38}, {"N": DIGITS_38}),
        ({"N": "-0.000000000000000000000000000000000000012345678901234567890123456789012345678"},
         {"N": "-0.000000000000000000000000000000000000012345678901234567890123456789012345678"}),
        ({"N": "1E+10"}, {"N": "1E+10"}),
        ({"B": "AP8="}, {"B": b"\x00\xff"}),
        ({"B": ""}, {"B": b""}),
        ({"BOOL": False}, {"BOOL": False}),
        ({"NULL": True}, {"NULL": True}),
        ({"SS": ["a", "b"]}, {"SS": ["a", "b"]}),
        ({"NS": ["1", "-2.5", DIGITS_38]}, {"NS": ["1", "-2.5", DIGITS_38]}),
        ({"BS": ["AQ==", "Ag=="]}, {"BS": [b"\x01", b"\x02"]}),
        ({"L": []}, {"L": []}),
        ({"M": {}}, {"M": {}}),
        (
            {"M": {"x": {"L": [{"NULL": True}, {"BOOL": False}, {"B": "AQ=="}, {"M": {"n": {"N": "7"}}}]}}},
            {"M": {"x": {"L": [{"NULL": True}, {"BOOL": False}, {"B": b"\x01"}, {"M": {"n": {"N": "7"}}}]}}},
        ),
    ],
)
def test_every_type_decodes_to_the_api_form_and_back(wire, api) -> None:
    assert value_from_wire(wire) == api
    assert value_to_wire(api) == wire


def test_numbers_keep_38_significant_digits_as_text() -> None:
    decoded = value_from_wire({"N": DIGITS_38})
    assert decoded["N"] == DIGITS_38
    assert isinstance(decoded["N"], str)
    # a float would have lost digits: the proof that the property can fail
    assert str(int(float(DIGITS_38))) != DIGITS_38


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        ({"S": 1}, "S must be a string"),
        ({"N": 1.5}, "non-empty decimal string"),
        ({"N": ""}, "non-empty decimal string"),
        ({"N": "abc"}, "not a decimal number"),
        ({"N": "NaN"}, "not a decimal number"),
        ({"N": "1.2.3"}, "not a decimal number"),
        ({"N": "1e"}, "not a decimal number"),
        ({"N": "1eX"}, "not a decimal number"),
        ({"N": "--1"}, "not a decimal number"),
        ({"B": "not base64!"}, "invalid base64"),
        ({"B": 17}, "must be base64 text"),
        ({"BS": ["AQ==", "%%"]}, "invalid base64"),
        ({"BOOL": "true"}, "BOOL must be true or false"),
        ({"NULL": False}, "NULL must be true"),
        ({"SS": ["a", 1]}, "SS must be a list of strings"),
        ({"NS": "1"}, "NS must be a list"),
        ({"NS": ["1", "x"]}, "not a decimal number"),
        ({"M": []}, "M must be an object"),
        ({"L": {}}, "L must be a list"),
        ({"X": "?"}, "unknown attribute type 'X'"),
        ({"S": "a", "N": "1"}, "exactly one type key"),
        ({}, "exactly one type key"),
        ("S", "exactly one type key"),
    ],
)
def test_malformed_values_raise_value_error_with_the_reason(wire, fragment) -> None:
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.").replace("?", r"\?")):
        value_from_wire(wire, "img.attr")


def test_the_error_names_the_nested_path() -> None:
    with pytest.raises(ValueError, match=r"image\.m\.x\[1\]: unknown attribute type 'Q'"):
        item_from_wire({"m": {"M": {"x": {"L": [{"NULL": True}, {"Q": 1}]}}}})


def test_an_image_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="an image must be an object"):
        item_from_wire(["pk"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6), values, max_size=5))
def test_api_to_wire_to_api_round_trip(item) -> None:
    """The strategies produce API-form values (bytes for binaries, number strings)."""
    wire = item_to_wire(item)
    assert item_from_wire(wire) == item
    # the wire form is plain JSON: binaries are base64 text, never bytes
    import json

    assert item_from_wire(json.loads(json.dumps(wire))) == item


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_binary_wire_form_is_standard_base64(blob) -> None:
    assert value_to_wire({"B": blob}) == {"B": base64.b64encode(blob).decode()}
    assert value_from_wire({"B": base64.b64encode(blob).decode()}) == {"B": blob}


def test_key_id_is_canonical_and_distinguishes_types() -> None:
    a = {"pk": {"S": "x"}, "sk": {"N": "1"}}
    b = {"sk": {"N": "1"}, "pk": {"S": "x"}}
    assert key_id(a) == key_id(b)
    assert key_id({"pk": {"S": "1"}}) != key_id({"pk": {"N": "1"}})
    assert key_id({"pk": {"B": b"\x01"}}) == key_id({"pk": {"B": bytearray(b"\x01")}})


key_values = st.one_of(
    st.builds(lambda t: {"S": t}, st.text(max_size=8)),
    st.builds(lambda n: {"N": str(n)}, st.integers()),
    st.builds(lambda b: {"B": b}, st.binary(max_size=8)),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=4), key_values, min_size=1, max_size=2))
def test_key_id_is_the_sorted_compact_json_of_the_wire_form(key) -> None:
    """The id format is stored in every ledger row: the fast path must write exactly this text."""
    assert key_id(key) == json.dumps(item_to_wire(key), sort_keys=True, separators=(",", ":"))


def test_key_of_names_the_missing_attribute() -> None:
    assert key_of({"pk": {"S": "a"}, "x": {"N": "1"}}, ["pk"]) == {"pk": {"S": "a"}}
    with pytest.raises(KeyError, match="sk"):
        key_of({"pk": {"S": "a"}}, ["pk", "sk"])


def test_sizes_follow_the_published_rules() -> None:
    assert value_size({"S": "héllo"}) == 6  # UTF-8 bytes
    assert value_size({"B": b"\x00" * 10}) == 10
    assert value_size({"BOOL": True}) == 1
    assert value_size({"NULL": True}) == 1
    assert value_size({"N": DIGITS_38}) == 20  # (38 + 1) // 2 + 1
    assert value_size({"N": "100"}) == value_size({"N": "1"})  # trailing zeros are not significant
    assert value_size({"L": [{"S": "ab"}]}) == 3 + 2 + 1
    assert value_size({"M": {"k": {"S": "ab"}}}) == 3 + 1 + 2 + 1
    assert item_size({"name": {"S": "abc"}, "n": {"BOOL": True}}) == 4 + 3 + 1 + 1
    with pytest.raises(ValueError, match="unknown attribute type"):
        value_size({"Z": 1})


def test_the_400_kb_limit_counts_names_and_values() -> None:
    at_limit = {"p": {"S": "x" * (MAX_ITEM_BYTES - 1)}}
    assert item_size(at_limit) == MAX_ITEM_BYTES
    over = {"pq": {"S": "x" * (MAX_ITEM_BYTES - 1)}}
    assert item_size(over) == MAX_ITEM_BYTES + 1


ITEM = {"pk": {"S": "k"}, "sk": {"N": "1"}, "a": {"S": "1"}, "b": {"S": "2"}, "secret": {"S": "3"}}


def test_projection_include_keeps_keys_and_listed_attributes() -> None:
    assert project(ITEM, ["pk", "sk"], include=["a"]) == {"pk": ITEM["pk"], "sk": ITEM["sk"], "a": ITEM["a"]}


def test_projection_exclude_never_drops_a_key() -> None:
    assert project(ITEM, ["pk", "sk"], exclude=["secret", "pk"]) == {
        k: v for k, v in ITEM.items() if k != "secret"
    }


def test_projection_include_and_exclude_combine() -> None:
    assert project(ITEM, ["pk"], include=["a", "b", "sk"], exclude=["b"]) == {
        "pk": ITEM["pk"], "sk": ITEM["sk"], "a": ITEM["a"]
    }


def test_projection_without_rules_is_the_identity() -> None:
    assert project(ITEM, ["pk"]) == ITEM


@pytest.mark.parametrize("text", ["0", "-1", "1.", ".5", "1.5e-3", "1E+10", "-0.25E7", DIGITS_38])
def test_valid_numbers_are_accepted(text) -> None:
    assert value_from_wire({"N": text}) == {"N": text}


@pytest.mark.parametrize("text", ["١٢", " 1", "1 ", "0x10", "Infinity", "-", ".", "1e+", "+-1"])
def test_other_number_texts_are_refused(text) -> None:
    with pytest.raises(ValueError, match="not a decimal number"):
        value_from_wire({"N": text})
