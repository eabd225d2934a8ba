"""DynamoDB attribute values: wire form (stream JSON) <-> API form (boto3), keys, sizes, projection.

Two forms of the same value exist:

* **wire form**: DynamoDB JSON as it appears in a stream record. Binary values (`B`, `BS`) are
  base64 text; numbers (`N`, `NS`) are decimal strings.
* **API form**: what the low-level boto3 client accepts and returns. Binary values are `bytes`
  (botocore base64-encodes them itself); numbers stay strings, so 38 significant digits survive.

Passing the wire form straight to the API (what the classic Lambda copier does) stores the base64
*text* as the binary value: a silent corruption. Numbers never pass through `float` here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from kcl_app.core.checks import number_problem

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]

MAX_DEPTH = 32  # DynamoDB's nesting limit for documents (maps and lists)


class WireBytes(bytes):
    """A binary value decoded from wire form, remembering the base64 text it arrived as (`wire`), so that a
    request built from it sends that text again instead of encoding the bytes anew. Equal to, and usable
    wherever, the plain bytes; a value changed by a transform is plain bytes again."""

    wire: str

    def __reduce__(self) -> tuple[Any, ...]:  # copies (a transform's deepcopy) and pickles keep the text
        return (_wire_bytes, (bytes(self), self.wire))


def _wire_bytes(data: bytes, wire: str) -> WireBytes:
    value = WireBytes(data)
    value.wire = wire
    return value


def _b64decode(text: Any) -> bytes:
    if not isinstance(text, str):
        raise _Malformed(f"binary value must be base64 text, got {type(text).__name__}")
    try:
        value = WireBytes(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeEncodeError):
        raise _Malformed("invalid base64 binary value") from None
    if _canonical(text):  # what botocore would send for these bytes: the same text
        value.wire = text
        return value
    return bytes(value)


def _canonical(text: str) -> bool:
    """Is `text` (valid, padded base64) the one encoding of its bytes? Only the bits a padded final
    character leaves unused can differ (they must be zero)."""
    if text.endswith("=="):
        return text[-3] in "AQgw"
    if text.endswith("="):
        return text[-2] in "AEIMQUYcgkosw048"
    return True


class _Malformed(ValueError):
    """A malformed wire value. Its location is collected on the way up, so that a well-formed value
    (the hot path: every attribute of every change) builds no location strings at all."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []  # innermost first

    def located(self, where: str) -> ValueError:
        return ValueError(f"{where}{''.join(reversed(self.path))}: {self.problem}")


def _from_wire(value: Any, depth: int = 1) -> AttributeValue:
    """Wire form -> API form. Values that are the same in both forms (all but B, BS and the
    containers holding them) are returned as they are, not copied: the parsed record owns them.

    Refuses what DynamoDB refuses too (empty sets, duplicate members, numbers it cannot store,
    documents deeper than 32 levels), so that no such value reaches a target."""
    if not isinstance(value, dict) or len(value) != 1:
        raise _Malformed("an attribute value is an object with exactly one type key")
    ((kind, inner),) = value.items()
    if kind == "S":
        if not isinstance(inner, str):
            raise _Malformed("S must be a string")
        return value
    if kind == "N":
        _check_number(inner)
        return value
    if kind == "M":
        if not isinstance(inner, dict):
            raise _Malformed("M must be an object")
        if depth >= MAX_DEPTH:
            raise _Malformed(f"nested deeper than DynamoDB's {MAX_DEPTH} levels")
        members: Item = {}
        for name, member in inner.items():
            if not name:
                raise _Malformed("attribute names must not be empty")
            if type(member) is dict and len(member) == 1 and type(member.get("S")) is str:
                members[name] = member
                continue
            try:
                members[name] = _from_wire(member, depth + 1)
            except _Malformed as bad:
                bad.path.append(f".{name}")
                raise
        return {"M": members}
    if kind == "L":
        if not isinstance(inner, list):
            raise _Malformed("L must be a list")
        if depth >= MAX_DEPTH:
            raise _Malformed(f"nested deeper than DynamoDB's {MAX_DEPTH} levels")
        elements: list[AttributeValue] = []
        for i, element in enumerate(inner):
            try:
                elements.append(_from_wire(element, depth + 1))
            except _Malformed as bad:
                bad.path.append(f"[{i}]")
                raise
        return {"L": elements}
    if kind == "B":
        return {"B": _b64decode(inner)}
    if kind == "BOOL":
        if not isinstance(inner, bool):
            raise _Malformed("BOOL must be true or false")
        return value
    if kind == "NULL":
        if inner is not True:
            raise _Malformed("NULL must be true")
        return value
    if kind == "SS":
        if not isinstance(inner, list) or not all(isinstance(s, str) for s in inner):
            raise _Malformed("SS must be a list of strings")
        _check_members("SS", inner, inner)
        return value
    if kind == "NS":
        if not isinstance(inner, list):
            raise _Malformed("NS must be a list of number strings")
        for n in inner:
            _check_number(n)
        _check_members("NS", inner, [Decimal(n) for n in inner])
        return value
    if kind == "BS":
        if not isinstance(inner, list):
            raise _Malformed("BS must be a list of base64 strings")
        blobs = [_b64decode(b) for b in inner]
        _check_members("BS", blobs, blobs)
        return {"BS": blobs}
    raise _Malformed(f"unknown attribute type {str(kind)[:20]!r}")


def _check_members(kind: str, members: list[Any], comparable: list[Any]) -> None:
    if not members:
        raise _Malformed(f"{kind} must not be empty")
    if len(set(comparable)) != len(members):
        raise _Malformed(f"{kind} holds duplicate members")


def value_from_wire(value: Any, where: str = "value") -> AttributeValue:
    """Convert one wire-form attribute value to API form. Raises ValueError on anything malformed,
    naming where (`where` and the path inside the value)."""
    try:
        return _from_wire(value)
    except _Malformed as bad:
        raise bad.located(where) from None


_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _check_number(text: Any) -> None:
    if not isinstance(text, str) or not text:
        raise _Malformed("N must be a non-empty decimal string")
    if not _NUMBER.fullmatch(text):
        raise _Malformed("N is not a decimal number")
    # A short plain number always fits (<= 38 digits, no exponent): only the rest pays for Decimal.
    if len(text) > 38 or "e" in text or "E" in text:
        problem = number_problem(text)
        if problem:
            raise _Malformed(problem)


def item_from_wire(image: Any, where: str = "image") -> Item:
    """Convert a wire-form image (attribute name -> value) to API form."""
    if not isinstance(image, dict):
        raise ValueError(f"{where}: an image must be an object")
    out: Item = {}
    for name, value in image.items():
        if not name:
            raise ValueError(f"{where}: attribute names must not be empty")
        if type(value) is dict and len(value) == 1 and type(value.get("S")) is str:
            out[name] = value  # the commonest value, the same in both forms: no call
            continue
        try:
            out[name] = _from_wire(value)
        except _Malformed as bad:
            raise bad.located(f"{where}.{name}") from None
    return out


def value_to_wire(value: AttributeValue) -> AttributeValue:
    """API form -> wire form (bytes -> base64 text). Used for keys, ledgers and dead letters."""
    ((kind, inner),) = value.items()
    if kind == "B":
        return {"B": _b64encode(inner)}
    if kind == "BS":
        return {"BS": [_b64encode(b) for b in inner]}
    if kind == "M":
        return {"M": {k: value_to_wire(v) for k, v in inner.items()}}
    if kind == "L":
        return {"L": [value_to_wire(v) for v in inner]}
    if kind in ("SS", "NS"):
        return {kind: list(inner)}
    return {kind: inner}


def _b64encode(value: Any) -> str:
    if isinstance(value, WireBytes):
        return value.wire
    return base64.b64encode(bytes(value)).decode("ascii")


def item_to_wire(item: Mapping[str, AttributeValue]) -> Item:
    return {name: value_to_wire(v) for name, v in item.items()}


_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


MAX_KEY_ID_CHARS = 2048  # DynamoDB's partition-key limit: the ledger is keyed by the id
HASHED_KEY_ID_PREFIX = "h1:"


def key_id(key: Mapping[str, AttributeValue]) -> str:
    """A canonical, deterministic string for a key in API form: the same key always gives the same id.

    Format (ledger rows are keyed by it, so it never changes):

    * the sorted, compact, ASCII JSON of the key's wire form, e.g. `{"pk":{"S":"a"},"sk":{"N":"1"}}`,
      when that text is at most 2,048 characters (DynamoDB's partition-key limit, ASCII: bytes = chars);
    * otherwise `h1:` followed by the lowercase hex SHA-256 of that same JSON text (67 characters).

    A JSON id always starts with `{`, so the two forms cannot collide. Keys whose JSON exceeds
    2,048 characters could never be stored in a ledger before the digest form existed (DynamoDB
    refused the row), so every ledger row written by earlier versions keeps its id: no migration.
    The digest form is one-way; the key itself is always on the target item and in the record.

    S and N keys (the same in both forms) are written out directly: the same text as the JSON
    encoder's, at a fraction of its cost, once per change."""
    parts = []
    for name in sorted(key):
        value = key[name]
        if "S" in value:
            parts.append(f'{_quote(name)}:{{"S":{_quote(value["S"])}}}')
        elif "N" in value:
            parts.append(f'{_quote(name)}:{{"N":{_quote(value["N"])}}}')
        else:
            return _bounded(_KEY_JSON.encode(item_to_wire(key)))
    return _bounded("{" + ",".join(parts) + "}")


def _bounded(text: str) -> str:
    if len(text) <= MAX_KEY_ID_CHARS:
        return text
    return HASHED_KEY_ID_PREFIX + hashlib.sha256(text.encode("ascii")).hexdigest()


def key_of(item: Mapping[str, AttributeValue], key_names: Iterable[str]) -> Item:
    """The key attributes of an item. Raises KeyError naming the missing attribute."""
    out: Item = {}
    for name in key_names:
        if name not in item:
            raise KeyError(name)
        out[name] = item[name]
    return out


def _number_size(text: str) -> int:
    digits = text.lstrip("-").split("e")[0].split("E")[0].replace(".", "").strip("0")
    return (len(digits) + 1) // 2 + 1


def value_size(value: AttributeValue) -> int:
    """Approximate stored size in bytes of one value, following DynamoDB's published sizing rules."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(inner.encode("utf-8"))
    if kind == "N":
        return _number_size(inner)
    if kind == "B":
        return len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode("utf-8")) for s in inner)
    if kind == "NS":
        return sum(_number_size(n) for n in inner)
    if kind == "BS":
        return sum(len(b) for b in inner)
    if kind == "M":
        return 3 + sum(len(k.encode("utf-8")) + value_size(v) + 1 for k, v in inner.items())
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in inner)
    raise ValueError(f"unknown attribute type {kind!r}")


def item_size(item: Mapping[str, AttributeValue]) -> int:
    """Size of an item as DynamoDB counts it against the 400 KB limit: names plus values."""
    return sum(len(name.encode("utf-8")) + value_size(v) for name, v in item.items())


MAX_ITEM_BYTES = 400 * 1024


def project(
    item: Mapping[str, AttributeValue],
    key_names: Iterable[str],
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> Item:
    """Keep `include` (all when None), drop `exclude`; key attributes are always kept. Always a new dict."""
    if include is None and not exclude:
        return dict(item)  # every attribute (the commonest rule, once per change and target): no filtering
    keys = set(key_names)
    inc = None if include is None else set(include)
    exc = set(exclude or ())
    return {
        name: v
        for name, v in item.items()
        if name in keys or ((inc is None or name in inc) and name not in exc)
    }
