"""Decoding of DynamoDB Kinesis-streaming-destination records into Changes.

The record is the JSON document the destination writes (AWS documentation, "Kinesis Data
Streams record format" for DynamoDB)::

    {"awsRegion", "eventID", "eventName": INSERT|MODIFY|REMOVE, "userIdentity",
     "recordFormat": "application/json", "tableName",
     "dynamodb": {"ApproximateCreationDateTime", "Keys", "NewImage", "OldImage", "SizeBytes"},
     "eventSource": "aws:dynamodb"}

`decode` never raises anything but PoisonRecord: whatever is wrong with the bytes becomes a reason
(naming the field or attribute, never echoing a value). Beyond the format it checks provenance
(`eventSource`, `recordFormat`, the source region), a plausible version and the key schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from kcl_app.core.attrs import Item, item_from_wire, key_id
from kcl_app.core.checks import DEFAULT_CHECKS, RecordChecks, check_key, check_provenance, check_version
from kcl_app.core.errors import PoisonRecord
from kcl_app.core.versions import Precision, Version, to_micros

EventName = Literal["INSERT", "MODIFY", "REMOVE"]
_EVENTS = ("INSERT", "MODIFY", "REMOVE")
TTL_PRINCIPAL = "dynamodb.amazonaws.com"
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # JSON's escape of a UTF-16 surrogate (D800-DFFF)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kinesis record as delivered, position included. `data` is the decoded payload."""

    data: bytes
    sequence_number: str
    sub_sequence_number: int = 0
    partition_key: str = ""
    shard_id: str = ""
    arrival_millis: int | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One item change of one source table, in API form."""

    table: str
    event: EventName
    key: Item
    key_id: str
    new_image: Item | None
    version: Version
    ttl_delete: bool
    event_id: str
    region: str = ""
    size_bytes: int = 0
    raw: RawRecord | None = field(default=None, compare=False, repr=False)

    @property
    def is_delete(self) -> bool:
        return self.event == "REMOVE"

    @property
    def created_millis(self) -> float:
        return self.version.micros / 1000.0


def _field(doc: dict[str, Any], name: str, kind: type, where: str = "") -> Any:
    if name not in doc:
        raise PoisonRecord(f"missing field {where}{name}")
    value = doc[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PoisonRecord(f"field {where}{name} must be {kind.__name__}")
    return value


def decode(raw: RawRecord, precision: Precision = "auto", checks: RecordChecks = DEFAULT_CHECKS,
           now_millis: float | None = None) -> Change:
    """Decode and check one destination record. Raises PoisonRecord (with the reason) on any defect.

    Total: whatever the bytes hold, the outcome is a Change or a PoisonRecord, never another
    exception. The version is bounded by the record's arrival time (or `now_millis` when the
    arrival is unknown, as for a dead-letter entry) plus the allowed skew; see `core.checks`."""
    try:
        return _decode(raw, precision, checks, now_millis)
    except PoisonRecord:
        raise
    except RecursionError as exc:  # nesting deeper than any DynamoDB item can be (32 levels)
        raise PoisonRecord("nested too deeply") from exc
    except Exception as exc:  # noqa: BLE001 - untrusted input: any other failure is a defect of the record
        raise PoisonRecord(f"malformed record ({type(exc).__name__})") from exc


def _parse(data: bytes) -> Any:
    """The record's JSON document. orjson (strict RFC 8259 over UTF-8, 3-5x the stdlib's speed) reads
    every record the destination writes; what it refuses is read again by the stdlib (`_lenient`), so
    that the outcome and the reason are the same as they always were: a `NaN`, an `Infinity` or a
    400-digit timestamp is parsed and then refused by the version check, which names the field.
    orjson reads an integer beyond 64 bits as a double: only a version can hold one, and any such
    version is refused as far in the future either way."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _lenient(data)


def _lenient(data: bytes) -> Any:
    try:
        doc = json.loads(data.decode("utf-8"))  # the destination writes UTF-8 JSON
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonRecord(f"not JSON: {exc}") from exc
    except ValueError as exc:  # an integer literal longer than Python's limit (4,300 digits)
        raise PoisonRecord("not JSON: a number literal is too long") from exc
    except RecursionError as exc:
        raise PoisonRecord("not JSON: nested too deeply") from exc
    if b"\\" in data and _SURROGATE.search(data):  # an escaped surrogate: valid only as a pair
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PoisonRecord("a string holds a lone surrogate (not UTF-8)") from exc
    return doc


def _decode(raw: RawRecord, precision: Precision, checks: RecordChecks, now_millis: float | None) -> Change:
    doc = _parse(raw.data)
    if not isinstance(doc, dict):
        raise PoisonRecord("not a JSON object")
    try:
        check_provenance(doc, checks)
    except ValueError as exc:
        raise PoisonRecord(str(exc)) from exc
    # each field is read directly when it has its type (the hot path); `_field` words the defect otherwise
    event: Any = doc.get("eventName")
    if type(event) is not str:
        event = _field(doc, "eventName", str)
    if event not in _EVENTS:
        raise PoisonRecord("unknown eventName (not INSERT, MODIFY or REMOVE)")
    table = doc.get("tableName")
    if type(table) is not str:
        table = _field(doc, "tableName", str)
    event_id = doc.get("eventID")
    if type(event_id) is not str:
        event_id = _field(doc, "eventID", str)
    ddb: Any = doc.get("dynamodb")
    if type(ddb) is not dict:
        ddb = _field(doc, "dynamodb", dict)
    created = ddb.get("ApproximateCreationDateTime")
    try:
        micros = to_micros(created, precision)
        arrival = raw.arrival_millis
        if arrival is None and now_millis is not None:
            arrival = int(now_millis)
        check_version(micros, arrival, checks)
    except (ValueError, OverflowError) as exc:
        raise PoisonRecord(f"dynamodb.ApproximateCreationDateTime: {exc}") from exc
    try:
        wire_keys = ddb.get("Keys")
        if type(wire_keys) is not dict:
            wire_keys = _field(ddb, "Keys", dict, "dynamodb.")
        key = item_from_wire(wire_keys, "dynamodb.Keys")
        if not key:
            raise PoisonRecord("dynamodb.Keys is empty")
        check_key(key, checks.key_schemas.get(table))
        new_image = None
        if event != "REMOVE":
            wire_image = ddb.get("NewImage")
            if type(wire_image) is not dict:
                wire_image = _field(ddb, "NewImage", dict, "dynamodb.")
            new_image = item_from_wire(wire_image, "dynamodb.NewImage")
            for name, value in key.items():
                if new_image.get(name) != value:
                    raise PoisonRecord(f"dynamodb.NewImage does not carry key attribute {name!r}")
        old = ddb.get("OldImage")
        if old is not None:
            if not isinstance(old, dict):
                raise PoisonRecord("field dynamodb.OldImage must be dict")
            for name in key:
                if old.get(name) != wire_keys[name]:
                    raise PoisonRecord(f"dynamodb.OldImage does not carry key attribute {name!r}")
    except ValueError as exc:
        raise PoisonRecord(str(exc)) from exc
    identity = doc.get("userIdentity") or {}
    ttl_delete = (
        event == "REMOVE"
        and isinstance(identity, dict)
        and identity.get("type") == "Service"
        and identity.get("principalId") == TTL_PRINCIPAL
    )
    size = ddb.get("SizeBytes", 0)
    region = doc.get("awsRegion", "")
    return Change(
        table=table,
        event=event,
        key=key,
        key_id=key_id(key),
        new_image=new_image,
        version=Version(micros, event_id),
        ttl_delete=ttl_delete,
        event_id=event_id,
        region=region if isinstance(region, str) else "",
        size_bytes=size if type(size) is int and 0 <= size < 1 << 31 else 0,
        raw=raw,
    )
