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
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]

_SCALAR = ("S", "N", "BOOL", "NULL")


def _b64decode(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{where}: binary value must be base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"{where}: invalid base64 binary value") from exc


def value_from_wire(value: Any, where: str = "value") -> AttributeValue:
    """Convert one wire-form attribute value to API form. Raises ValueError on anything malformed."""
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"{where}: an attribute value is an object with exactly one type key")
    ((kind, inner),) = value.items()
    if kind == "S":
        if not isinstance(inner, str):
            raise ValueError(f"{where}: S must be a string")
        return {"S": inner}
    if kind == "N":
        _check_number(inner, where)
        return {"N": inner}
    if kind == "B":
        return {"B": _b64decode(inner, where)}
    if kind == "BOOL":
        if not isinstance(inner, bool):
            raise ValueError(f"{where}: BOOL must be true or false")
        return {"BOOL": inner}
    if kind == "NULL":
        if inner is not True:
            raise ValueError(f"{where}: NULL must be true")
        return {"NULL": True}
    if kind == "SS":
        if not isinstance(inner, list) or not all(isinstance(s, str) for s in inner):
            raise ValueError(f"{where}: SS must be a list of strings")
        return {"SS": list(inner)}
    if kind == "NS":
        if not isinstance(inner, list):
            raise ValueError(f"{where}: NS must be a list of number strings")
        for n in inner:
            _check_number(n, where)
        return {"NS": list(inner)}
    if kind == "BS":
        if not isinstance(inner, list):
            raise ValueError(f"{where}: BS must be a list of base64 strings")
        return {"BS": [_b64decode(b, where) for b in inner]}
    if kind == "M":
        if not isinstance(inner, dict):
            raise ValueError(f"{where}: M must be an object")
        return {"M": {k: value_from_wire(v, f"{where}.{k}") for k, v in inner.items()}}
    if kind == "L":
        if not isinstance(inner, list):
            raise ValueError(f"{where}: L must be a list")
        return {"L": [value_from_wire(v, f"{where}[{i}]") for i, v in enumerate(inner)]}
    raise ValueError(f"{where}: unknown attribute type {kind!r}")


_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _check_number(text: Any, where: str) -> None:
    if not isinstance(text, str) or not text:
        raise ValueError(f"{where}: N must be a non-empty decimal string")
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{where}: {text!r} is not a number")


def item_from_wire(image: Any, where: str = "image") -> Item:
    """Convert a wire-form image (attribute name -> value) to API form."""
    if not isinstance(image, dict):
        raise ValueError(f"{where}: an image must be an object")
    return {name: value_from_wire(v, f"{where}.{name}") for name, v in image.items()}


def value_to_wire(value: AttributeValue) -> AttributeValue:
    """API form -> wire form (bytes -> base64 text). Used for keys, ledgers and dead letters."""
    ((kind, inner),) = value.items()
    if kind == "B":
        return {"B": base64.b64encode(bytes(inner)).decode("ascii")}
    if kind == "BS":
        return {"BS": [base64.b64encode(bytes(b)).decode("ascii") for b in inner]}
    if kind == "M":
        return {"M": {k: value_to_wire(v) for k, v in inner.items()}}
    if kind == "L":
        return {"L": [value_to_wire(v) for v in inner]}
    if kind in ("SS", "NS"):
        return {kind: list(inner)}
    return {kind: inner}


def item_to_wire(item: Mapping[str, AttributeValue]) -> Item:
    return {name: value_to_wire(v) for name, v in item.items()}


def key_id(key: Mapping[str, AttributeValue]) -> str:
    """A canonical, deterministic string for a key in API form: the same key always gives the same id."""
    return json.dumps(item_to_wire(key), sort_keys=True, separators=(",", ":"))


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
    """Keep `include` (all when None), drop `exclude`; key attributes are always kept."""
    keys = set(key_names)
    inc = None if include is None else set(include)
    exc = set(exclude or ())
    return {
        name: v
        for name, v in item.items()
        if name in keys or ((inc is None or name in inc) and name not in exc)
    }
