"""The emulator's own DynamoDB item rules: what an item may contain, what it weighs, how it compares.

Written from the AWS documentation, independently of the product (see the package contract): a test
on the local stack can only catch the product writing what DynamoDB refuses if these rules are the
service's, not the product's.

- :func:`check_item` refuses the values DynamoDB refuses and moto 5.2.5 accepts, raising
  :class:`Refused` with the service's own message (wording as captured against DynamoDB by the
  dynamodb-conformance and dynoxide projects, and by client issue reports quoting the service).
- :func:`item_size` / :func:`value_size` weigh an item against the 400 KB limit.
- :func:`canonical`, :func:`key_id` and :func:`project` compare items whatever the order of set members.

Values are wire JSON (``{"S": "x"}``, binary as base64 text or bytes) or moto ``DynamoType`` objects.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_ITEM_BYTES = 400 * 1024
"""An item's limit: UTF-8 attribute name lengths plus value sizes (DynamoDB developer guide, "Item sizes")."""
MAX_HASH_KEY_BYTES = 2048
MAX_RANGE_KEY_BYTES = 1024
"""Partition key values 1..2048 bytes, sort key values 1..1024 bytes (developer guide, "Quotas")."""
MAX_NESTING = 32
"""Documents nest up to 32 levels: a top-level attribute is level 1, so 31 maps or lists may wrap a value."""
MAX_DIGITS = 38
"""Numbers: up to 38 significant digits, magnitude 1E-130 .. 9.9999999999999999999999999999999999999E+125."""

# The service's messages. Sets and numbers: as DynamoDB words them (note the double spaces and the missing
# space before "of type BS": they are the service's). Nesting and key sizes: likewise.
EMPTY_SET = {
    "SS": "One or more parameter values were invalid: An string set  may not be empty",
    "NS": "One or more parameter values were invalid: An number set  may not be empty",
    "BS": "One or more parameter values were invalid: Binary sets should not be empty",
}
TOO_MANY_DIGITS = "Attempting to store more than 38 significant digits in a Number"
OVERFLOW = "Number overflow. Attempting to store a number with magnitude larger than supported range"
UNDERFLOW = "Number underflow. Attempting to store a number with magnitude smaller than supported range"
NOT_A_NUMBER = "The parameter cannot be converted to a numeric value"
TOO_DEEP = ("Nesting Levels have exceeded supported limits: "
            "Attributes in the item have nested levels beyond supported limit")
HASH_KEY_TOO_LONG = ("One or more parameter values were invalid: "
                     "Size of hashkey has exceeded the maximum size limit of2048 bytes")
RANGE_KEY_TOO_LONG = ("One or more parameter values were invalid: "
                      "Aggregated size of all range keys has exceeded the size limit of 1024 bytes")
ITEM_TOO_LARGE = "Item size has exceeded the maximum allowed size"
# Attribute names must be at least one character long (developer guide, "Quotas": attribute names). The
# service's wording for an empty name is not in any public capture we found; this one says what is wrong.
EMPTY_NAME = "One or more parameter values were invalid: An attribute name may not be empty"


class Refused(ValueError):
    """A value DynamoDB refuses; ``message`` is the service's ValidationException message.

    ``in_envelope``: PutItem and UpdateItem report this family (empty and duplicate sets) inside the
    request-validation envelope, "1 validation error detected: <message>"; other operations bare.
    ``whole_request``: in a transaction this refuses the request (an empty key value) instead of
    cancelling it with a ValidationError reason for the action."""

    def __init__(self, message: str, in_envelope: bool = False, whole_request: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.in_envelope = in_envelope
        self.whole_request = whole_request


def _parts(value: Any) -> tuple[str, Any]:
    """(type, raw) of a wire value or a moto DynamoType (whose lists and maps hold DynamoTypes)."""
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise Refused("Supplied AttributeValue has more than one datatypes set, "
                          "must contain exactly one of the supported datatypes")
        ((kind, raw),) = value.items()
        return kind, raw
    return value.type, value.value


# --------------------------------------------------------------------------------------------- validity


def check_item(attrs: Mapping[str, Any], key_names: Iterable[str] = (), range_key: str | None = None,
               size: bool = True) -> None:
    """Refuse an item DynamoDB would refuse: empty attribute names, empty or duplicate sets, numbers out of
    precision or range, nesting beyond 32 levels, key values that are empty or too long, > 400 KB.

    ``key_names`` are the table's key attributes, ``range_key`` its sort key if any; ``size=False`` leaves
    the 400 KB limit to the caller (whose operation words it differently)."""
    keys = set(key_names)
    for name, value in attrs.items():
        if name == "":
            raise Refused(EMPTY_NAME)
        _check_value(value, 1)
        if name in keys:
            check_key_value(name, value, is_range=name == range_key)
    if size and item_size(attrs) > MAX_ITEM_BYTES:
        raise Refused(ITEM_TOO_LARGE)


def check_key_value(name: str, value: Any, is_range: bool = False, empty_only: bool = False) -> None:
    """A key attribute's value: never empty (string or binary), within 2048 (partition) / 1024 (sort) bytes.

    ``empty_only``: only the emptiness rule (the one a transaction refuses as a whole)."""
    kind, raw = _parts(value)
    if kind not in ("S", "N", "B"):
        return  # a type mismatch: moto reports it with the service's message
    size = value_size(value)
    if kind in ("S", "B") and size == 0:
        empty = "an empty string value" if kind == "S" else "an empty binary value"
        raise Refused("One or more parameter values are not valid. The AttributeValue for a key attribute "
                      f"cannot contain {empty}. Key: {name}", whole_request=True)
    if empty_only:
        return
    if kind == "N":
        _check_number(raw)
    if is_range and size > MAX_RANGE_KEY_BYTES:
        raise Refused(RANGE_KEY_TOO_LONG)
    if not is_range and size > MAX_HASH_KEY_BYTES:
        raise Refused(HASH_KEY_TOO_LONG)


def _check_value(value: Any, level: int) -> None:
    if level > MAX_NESTING:
        raise Refused(TOO_DEEP)
    kind, raw = _parts(value)
    if kind == "N":
        _check_number(raw)
    elif kind in EMPTY_SET:
        if len(raw) == 0:
            raise Refused(EMPTY_SET[kind], in_envelope=True)
        _check_set(kind, raw)
    elif kind == "L":
        for member in raw:
            _check_value(member, level + 1)
    elif kind == "M":
        for member in raw.values():
            _check_value(member, level + 1)


def _check_set(kind: str, raw: list[Any]) -> None:
    if kind == "NS":
        for number in raw:
            _check_number(number)
        # members are numbers: "1" and "1.0" are one member
        if len({_exact(Decimal(n)) for n in raw}) != len(raw):
            raise Refused("Input collection contains duplicates", in_envelope=True)
        return
    members = [_raw_bytes(b) for b in raw] if kind == "BS" else list(raw)
    if len(set(members)) != len(members):
        shown = ", ".join(base64.b64encode(b).decode() for b in members) if kind == "BS" else ", ".join(members)
        raise Refused(_duplicates_message(kind, shown), in_envelope=True)


def _duplicates_message(kind: str, shown: str) -> str:
    if kind == "BS":
        return f"One or more parameter values were invalid: Input collection [{shown}]of type BS contains duplicates."
    return f"One or more parameter values were invalid: Input collection [{shown}] contains duplicates."


def _exact(number: Decimal) -> tuple[int, tuple[int, ...], int]:
    """(sign, significant digits, exponent) without rounding (``Decimal.normalize`` rounds to 28 digits)."""
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    while len(digits) > 1 and digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    while len(digits) > 1 and digits[0] == 0:
        digits = digits[1:]
    if digits == (0,):
        return 0, (0,), 0
    return sign, tuple(digits), exponent


def _check_number(raw: Any) -> None:
    """38 significant digits; non-zero magnitudes within 1E-130 .. 9.99..E+125 (either sign)."""
    if not isinstance(raw, str) or not raw or raw.strip() != raw:
        raise Refused(NOT_A_NUMBER)
    try:
        number = Decimal(raw)
    except InvalidOperation:
        raise Refused(f"{NOT_A_NUMBER}: {raw}") from None
    if not number.is_finite():
        raise Refused(f"{NOT_A_NUMBER}: {raw}")
    if number.is_zero():
        return
    sign, digits, exponent = _exact(number)
    if len(digits) > MAX_DIGITS:
        raise Refused(TOO_MANY_DIGITS)
    magnitude = exponent + len(digits) - 1  # the power of ten of the leading digit
    if magnitude > 125:
        raise Refused(OVERFLOW)
    if magnitude < -130:
        raise Refused(UNDERFLOW)


# -------------------------------------------------------------------------------------------------- size


def item_size(attrs: Mapping[str, Any]) -> int:
    """Size of an item as DynamoDB documents it: sum of UTF-8 name lengths and value sizes."""
    return sum(len(name.encode()) + value_size(value) for name, value in attrs.items())


def value_size(value: Any) -> int:
    """Size of one attribute value, by the rules of the DynamoDB developer guide, "DynamoDB item sizes and
    formats" (docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html):
    strings by UTF-8 length; binary by raw length (not base64); numbers 1 byte per two significant digits
    plus 1 byte, leading and trailing zeroes trimmed (so 0, with no significant digit, is 1 byte); null and
    Boolean 1 byte; a List or Map 3 bytes plus 1 byte per element plus its elements (a Map's names too)."""
    kind, raw = _parts(value)
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        return _number_size(raw)
    if kind == "B":
        return len(_raw_bytes(raw))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in raw)
    if kind == "NS":
        return sum(_number_size(n) for n in raw)
    if kind == "BS":
        return sum(len(_raw_bytes(b)) for b in raw)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in raw.items())
    raise Refused(f"Supplied AttributeValue has an unknown datatype {kind!r}")


def _number_size(raw: str) -> int:
    if raw.isascii() and raw.isdigit():  # the common case, without Decimal: an unsigned integer
        significant = len(raw.strip("0"))
    else:
        try:
            significant = len("".join(map(str, Decimal(raw).as_tuple().digits)).strip("0"))
        except (InvalidOperation, TypeError):
            return len(str(raw))  # refused by check_item; sized only so that sizing never raises
    return (significant + 1) // 2 + 1


def _raw_bytes(raw: str | bytes | bytearray) -> bytes:
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    try:
        return base64.b64decode(raw)
    except (binascii.Error, ValueError):
        return raw.encode()


# ------------------------------------------------------------------------------------------- comparison


def canonical(value: Any) -> Any:
    """A wire value in a form where equal DynamoDB values compare equal: sets sorted, binary as bytes."""
    if isinstance(value, Mapping):
        ((kind, inner),) = value.items()
        if kind in ("SS", "NS"):
            return {kind: sorted(inner)}
        if kind == "BS":
            return {kind: sorted(_raw_bytes(b) for b in inner)}
        if kind == "M":
            return {kind: {k: canonical(v) for k, v in inner.items()}}
        if kind == "L":
            return {kind: [canonical(v) for v in inner]}
        if kind == "B":
            return {kind: _raw_bytes(inner)}
    return value


def key_id(key: Mapping[str, Any]) -> str:
    """A deterministic string for a key in wire form: compact JSON with sorted names (binary as base64)."""
    def plain(value: Any) -> Any:
        kind, raw = _parts(value)
        if kind == "B" and isinstance(raw, bytes | bytearray):
            return {kind: base64.b64encode(bytes(raw)).decode()}
        return {kind: raw}

    return json.dumps({name: plain(v) for name, v in key.items()}, sort_keys=True, separators=(",", ":"))


def project(item: Mapping[str, Any], key_names: Iterable[str], include: Iterable[str] | None = None,
            exclude: Iterable[str] | None = None) -> dict[str, Any]:
    """The attributes a target keeps: ``include`` (all when None) minus ``exclude``; keys always kept."""
    keys = set(key_names)
    inc = None if include is None else set(include)
    exc = set(exclude or ())
    return {name: v for name, v in item.items()
            if name in keys or ((inc is None or name in inc) and name not in exc)}
