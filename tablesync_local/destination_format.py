"""The record format of DynamoDB's Kinesis streaming destination (pure: no moto, no boto3).

What the real service writes into the Kinesis stream, one record per item change, as
UTF-8 JSON (no whitespace, non-ASCII characters not escaped)::

    {"awsRegion": "us-east-1",
     "eventID": "6f773704-d244-414f-9590-5e9e9045409d",
     "eventName": "INSERT" | "MODIFY" | "REMOVE",
     "userIdentity": null | {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
     "recordFormat": "application/json",
     "tableName": "Music",
     "dynamodb": {"ApproximateCreationDateTime": 1649930048474,
                  "Keys": {...}, "NewImage": {...}, "OldImage": {...},
                  "SizeBytes": 120,
                  "ApproximateCreationDateTimePrecision": "MILLISECOND" | "MICROSECOND"},
     "eventSource": "aws:dynamodb"}

Sources checked:

* A record captured from the real service (published in a public example repository,
  ``kyopark2014/data-analytics-for-businfo``, examples.md, 2022): exactly the top-level
  keys above in that order, ``ApproximateCreationDateTime`` an integer in milliseconds,
  ``SizeBytes`` equal to the DynamoDB item size of ``Keys`` plus ``NewImage`` (120 there),
  a Kinesis partition key of 32 upper-case hex digits, and no
  ``ApproximateCreationDateTimePrecision`` (the option did not exist yet).
* The AWS Lambda Powertools parser schema ``KinesisDynamoDBStreamEvent``: the same
  field set; ``NewImage``/``OldImage`` optional; ``userIdentity`` null or
  ``{"type": "Service", "principalId": "dynamodb.amazonaws.com"}`` (TTL deletes, also
  documented in the DynamoDB Streams ``Record`` API reference).
* The DynamoDB API reference (``EnableKinesisStreamingConfiguration``) and botocore's
  service model: precision ``MILLISECOND`` | ``MICROSECOND``.

Emulator choices where the documents are silent: the destination always carries both
images (``NewImage`` absent on REMOVE, ``OldImage`` absent on INSERT);
``ApproximateCreationDateTimePrecision`` is always written inside ``dynamodb`` (consumers
must treat its absence, as in older records, as MILLISECOND); ``SizeBytes`` follows the
documented item-size rules for Keys + NewImage + OldImage (an approximation of the real
figure); the partition key is an MD5 of table name, key and a per-table salt, in upper-case
hex.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from tablesync_local.items import item_size, value_size

Precision = Literal["MILLISECOND", "MICROSECOND"]
EventName = Literal["INSERT", "MODIFY", "REMOVE"]
PRECISIONS: tuple[Precision, ...] = ("MILLISECOND", "MICROSECOND")

#: A Kinesis record's data may not exceed 1 MiB; the destination drops larger changes
#: and counts them in ``FailedToReplicateRecordCount``.
MAX_RECORD_BYTES = 1024 * 1024
TTL_USER_IDENTITY: dict[str, str] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}

AttributeMap = Mapping[str, Mapping[str, Any]]


class CreationClock:
    """Source of ``ApproximateCreationDateTime``: wall-clock epoch time that never goes back.

    Anchored to the wall clock once, then advanced by a monotonic clock, and clamped so a
    value is never smaller than the previous one (equal values are possible, as on the real
    service at millisecond precision). Thread-safe. Both clocks are injectable for tests.
    """

    def __init__(
        self,
        wall_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._monotonic_ns = monotonic_ns
        self._base_ns = wall_ns()
        self._mono0 = monotonic_ns()
        self._last_us = 0
        self._lock = threading.Lock()

    def now_us(self) -> int:
        """Microseconds since the epoch, non-decreasing across calls."""
        with self._lock:
            us = (self._base_ns + self._monotonic_ns() - self._mono0) // 1000
            self._last_us = max(self._last_us, us)
            return self._last_us

    def stamp(self, precision: Precision) -> int:
        """The next timestamp at ``precision`` (13 digits in ms, 16 in µs for current dates)."""
        us = self.now_us()
        return us if precision == "MICROSECOND" else us // 1000


def event_name(old_image: AttributeMap | None, new_image: AttributeMap | None) -> EventName:
    """INSERT without an old image, REMOVE without a new one, MODIFY otherwise."""
    if old_image is None and new_image is None:
        raise ValueError("a change needs an old or a new image")
    if old_image is None:
        return "INSERT"
    if new_image is None:
        return "REMOVE"
    return "MODIFY"


# One sizing for the whole emulator (tablesync_local.items): the documented item-size rules.
attribute_value_size = value_size


def canonical_key(keys: AttributeMap) -> str:
    """A stable text form of an item key (sorted, compact JSON)."""
    return json.dumps(keys, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def partition_key(table_name: str, keys: AttributeMap, salt: str) -> str:
    """Deterministic opaque 32-hex partition key for one item of one table."""
    digest = hashlib.md5(f"{salt}\x00{table_name}\x00{canonical_key(keys)}".encode(), usedforsecurity=False)
    return digest.hexdigest().upper()


def build_record(
    *,
    region: str,
    table_name: str,
    keys: AttributeMap,
    old_image: AttributeMap | None,
    new_image: AttributeMap | None,
    creation_time: int,
    precision: Precision,
    event_id: str,
    ttl_delete: bool = False,
) -> dict[str, Any]:
    """One destination record, field for field as the real service writes it (see module doc)."""
    name = event_name(old_image, new_image)
    dynamodb: dict[str, Any] = {"ApproximateCreationDateTime": creation_time, "Keys": dict(keys)}
    size = item_size(keys)
    if new_image is not None:
        dynamodb["NewImage"] = dict(new_image)
        size += item_size(new_image)
    if old_image is not None:
        dynamodb["OldImage"] = dict(old_image)
        size += item_size(old_image)
    dynamodb["SizeBytes"] = size
    dynamodb["ApproximateCreationDateTimePrecision"] = precision
    return {
        "awsRegion": region,
        "eventID": event_id,
        "eventName": name,
        "userIdentity": dict(TTL_USER_IDENTITY) if ttl_delete else None,
        "recordFormat": "application/json",
        "tableName": table_name,
        "dynamodb": dynamodb,
        "eventSource": "aws:dynamodb",
    }


def encode_record(record: Mapping[str, Any]) -> bytes:
    """The Kinesis data bytes of a record: compact UTF-8 JSON."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
