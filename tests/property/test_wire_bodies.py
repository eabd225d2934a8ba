"""The lean write path's request bodies are the ones botocore's serializer produces for the same writes.

Records arrive in wire form; the writers build their requests from the decoded items (binaries keep
their base64 text). For every attribute type (binary, sets, nested maps and lists, 38-digit numbers,
unicode), the JSON of `encode_body` equals the JSON of botocore's own serializer, key order aside,
for exact mode's TransactWriteItems and inline mode's PutItem and tombstone transactions, on every guard.
"""

from __future__ import annotations

import json
from typing import Any

import botocore.session
import pytest
from botocore.serialize import create_serializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.inline import InlineWriter
from kcl_app.adapters.ledger import LedgerWriter
from kcl_app.adapters.wire_client import CONTENT_TYPE, OPERATION_OF, TARGET_PREFIX, encode_body
from kcl_app.core.attrs import Item, WireBytes, item_from_wire, item_to_wire, key_id
from kcl_app.core.fence import NEWER_THAN_SEEN, Guard, NeverSeen, StillAt
from kcl_app.core.plan import Write
from kcl_app.core.records import Change
from kcl_app.core.versions import Version
from tests.property.strategies import numbers

MODEL = botocore.session.get_session().get_service_model("dynamodb")
SERIALIZER = create_serializer("json", include_validation=True)  # validation on: the params are well-formed
UNCHECKED = create_serializer("json", include_validation=False)  # what the product's clients run (no validation)

unicode_text = st.text(min_size=0, max_size=12)  # every code point but lone surrogates, as DynamoDB accepts
names = st.text(min_size=1, max_size=6)
big_numbers = st.one_of(
    numbers,
    st.integers(min_value=10**37, max_value=10**38 - 1).map(str),  # 38 significant digits
    st.integers(min_value=10**37, max_value=10**38 - 1).map(lambda n: f"-0.{n}"),
    st.integers(min_value=1, max_value=9).map(lambda d: f"{d}E+125"),
)
blobs = st.binary(min_size=0, max_size=40)
scalars = st.one_of(
    unicode_text.map(lambda s: {"S": s}),
    big_numbers.map(lambda n: {"N": n}),
    blobs.map(lambda b: {"B": b}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
    st.lists(unicode_text, min_size=1, max_size=4, unique=True).map(lambda v: {"SS": v}),
    st.lists(st.integers(-(10**38) + 1, 10**38 - 1).map(str), min_size=1, max_size=4, unique=True)
    .map(lambda v: {"NS": v}),
    st.lists(blobs, min_size=1, max_size=4, unique=True).map(lambda v: {"BS": v}),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda v: {"L": v}),
        st.dictionaries(names, inner, max_size=4).map(lambda v: {"M": v}),
    ),
    max_leaves=12,
)
key_values = st.one_of(unicode_text.filter(bool).map(lambda s: {"S": s}), big_numbers.map(lambda n: {"N": n}),
                       blobs.filter(bool).map(lambda b: {"B": b}))
guards = st.one_of(st.just(NEWER_THAN_SEEN), st.just(NeverSeen()), st.just(StillAt(None)),
                   st.integers(1, 10**15).map(lambda m: StillAt(Version(m, "e-seen"))))


@st.composite
def writes(draw: st.DrawFn) -> Write:
    """A write as the pipeline builds it: from a wire-form record image, decoded."""
    key_api: Item = {"pk": draw(key_values)}
    if draw(st.booleans()):
        key_api["sk"] = draw(key_values)
    delete = draw(st.booleans())
    attrs = draw(st.dictionaries(names.filter(lambda n: n not in ("pk", "sk")), values, max_size=5))
    key = item_from_wire(item_to_wire(key_api))  # what a record's Keys decode to
    item = None if delete else item_from_wire(item_to_wire({**key_api, **attrs}))
    version = Version(draw(st.integers(1, 10**16)), draw(st.text(min_size=1, max_size=10)))
    change = Change("src", "REMOVE" if delete else "MODIFY", key, key_id(key), item, version, False, version.tiebreak)
    return Write("t", key, key_id(key), version, item, change, (0,))


def botocore_body(operation: str, params: dict[str, Any], serializer: Any = SERIALIZER) -> tuple[Any, dict[str, str]]:
    request = serializer.serialize_to_request(params, MODEL.operation_model(operation))
    return json.loads(request["body"]), dict(request["headers"])


def lean_body(params: dict[str, Any]) -> Any:
    return json.loads(encode_body(params))


@pytest.fixture(scope="module")
def writers() -> Any:
    ledger = LedgerWriter("t", None, "target-table", "ledger-table", SystemClock())
    inline = InlineWriter("t", None, "target-table", SystemClock(), "_tablesync_version",
                          tombstone_table="tombstone-table")
    yield ledger, inline
    ledger.close()
    inline.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(writes(), min_size=1, max_size=8), guard=guards)
def test_transact_write_items_body_equals_botocores(writers: Any, batch: list[Write], guard: Guard) -> None:
    ledger, _ = writers
    params = {"TransactItems": [a for w in batch for a in ledger._actions(w, guard)]}
    expected, headers = botocore_body("TransactWriteItems", params)
    assert lean_body(params) == expected
    assert headers["X-Amz-Target"] == TARGET_PREFIX + "TransactWriteItems"
    assert headers["Content-Type"] == CONTENT_TYPE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(write=writes(), guard=guards, path=st.sampled_from(["update", "create", "delete"]))
def test_inline_bodies_equal_botocores(writers: Any, write: Write, guard: Guard, path: str) -> None:
    _, inline = writers
    method, params = inline._request(write, guard, path)  # every path: a put, or a tombstone transaction
    operation = OPERATION_OF[method]
    expected, headers = botocore_body(operation, params)
    assert lean_body(params) == expected
    assert headers["X-Amz-Target"] == TARGET_PREFIX + operation


@given(data=blobs)
def test_a_decoded_binary_is_sent_as_the_text_it_arrived_as(data: bytes) -> None:
    wire = item_to_wire({"b": {"B": data}})
    decoded = item_from_wire(wire)["b"]["B"]
    assert decoded == data and isinstance(decoded, WireBytes) and decoded.wire == wire["b"]["B"]
    assert json.loads(encode_body({"Item": {"b": {"B": decoded}}})) == {"Item": wire}


def test_non_canonical_base64_is_sent_as_botocore_would() -> None:
    # "QR==" decodes to b"A" like "QQ==" (the unused bits differ): the canonical text is sent
    decoded = item_from_wire({"b": {"B": "QR=="}})["b"]["B"]
    assert decoded == b"A"
    params = {"TableName": "t", "Item": {"pk": {"S": "k"}, "b": {"B": decoded}}}
    assert lean_body(params) == botocore_body("PutItem", params)[0]
    assert lean_body(params)["Item"]["b"] == {"B": "QQ=="}


def test_values_a_transform_returns_are_encoded_like_botocore() -> None:
    # a transform may hand back plain bytes, bytearrays, sets and tuples: all are encoded as botocore does
    item = {"pk": {"S": "k"}, "b": {"B": bytearray(b"\x00\xff")}, "bs": {"BS": {b"x", b"y"}},
            "ss": {"SS": ("a", "é")}, "ns": {"NS": frozenset({"1", "2"})}}
    params = {"TableName": "t", "Item": item}
    expected = botocore_body("PutItem", params, UNCHECKED)[0]
    got = lean_body(params)
    for kind in ("bs", "ns"):
        kinds = next(iter(got["Item"][kind]))
        got["Item"][kind][kinds].sort()
        expected["Item"][kind][kinds].sort()
    assert got == expected


def test_a_value_botocore_cannot_send_is_refused_before_sending() -> None:
    with pytest.raises(TypeError, match="cannot be sent"):
        encode_body({"Item": {"x": {"N": object()}}})


def test_a_transforms_deep_copy_keeps_the_binary_and_its_text() -> None:
    import copy

    item = item_from_wire({"b": {"B": "AQI="}, "bs": {"BS": ["AA=="]}})
    copied = copy.deepcopy(item)
    assert copied == item and copied["b"]["B"] == b"\x01\x02"
    assert isinstance(copied["b"]["B"], WireBytes) and copied["b"]["B"].wire == "AQI="
    assert json.loads(encode_body({"Item": copied})) == {"Item": {"b": {"B": "AQI="}, "bs": {"BS": ["AA=="]}}}
