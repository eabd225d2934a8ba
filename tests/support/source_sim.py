"""A pure simulation of a source table and its Kinesis streaming destination (for property tests).

Each operation changes the simulated table and yields the destination record DynamoDB would send
(INSERT / MODIFY / REMOVE with images in DynamoDB JSON, microsecond timestamps that only grow).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from kcl_app.core.attrs import Item, item_to_wire, key_id
from kcl_app.core.records import RawRecord


class SourceSim:
    def __init__(self, table: str = "src", key_names: tuple[str, ...] = ("pk",),
                 start_micros: int = 1_790_000_000_000_000):
        self.table = table
        self.key_names = key_names
        self.items: dict[str, Item] = {}
        self.clock = start_micros
        self.records: list[bytes] = []

    def _emit(self, event: str, key: Item, old: Item | None, new: Item | None, ttl: bool = False) -> bytes:
        self.clock += 1 + len(self.records) % 7  # strictly increasing, uneven gaps
        ddb: dict[str, Any] = {"ApproximateCreationDateTime": self.clock, "Keys": item_to_wire(key), "SizeBytes": 100}
        if new is not None:
            ddb["NewImage"] = item_to_wire(new)
        if old is not None:
            ddb["OldImage"] = item_to_wire(old)
        doc = {
            "awsRegion": "us-east-1",
            "eventID": str(uuid.uuid4()),
            "eventName": event,
            "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"} if ttl else None,
            "recordFormat": "application/json",
            "tableName": self.table,
            "dynamodb": ddb,
            "eventSource": "aws:dynamodb",
        }
        data = json.dumps(doc).encode()
        self.records.append(data)
        return data

    def put(self, item: Mapping[str, Any]) -> bytes:
        item = dict(item)
        key = {k: item[k] for k in self.key_names}
        kid = key_id(key)
        old = self.items.get(kid)
        self.items[kid] = item
        return self._emit("MODIFY" if old is not None else "INSERT", key, old, item)

    def delete(self, key: Mapping[str, Any], ttl: bool = False) -> bytes | None:
        kid = key_id(dict(key))
        old = self.items.pop(kid, None)
        if old is None:
            return None  # DynamoDB emits nothing for deleting an absent item
        return self._emit("REMOVE", dict(key), old, None, ttl)

    def raw_records(self, shard: str = "shardId-000000000000") -> list[RawRecord]:
        return [RawRecord(d, str(i).zfill(20), shard_id=shard) for i, d in enumerate(self.records)]
