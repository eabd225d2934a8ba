"""Write units per change type, computed from the requests each writer actually sends.

Each mode (exact, inline, the classic Lambda copier) applies the same changes to a fresh target in an
in-process emulator (moto), through a client that meters every write request before forwarding it:

* PutItem: 1 unit per KB (rounded up) of the larger of the new item and the item it replaces; DeleteItem:
  of the item it deletes, 1 unit when there is none. A write whose condition fails costs the same.
* TransactWriteItems: every action twice that (a transactional write, 2 units per KB); a ConditionCheck
  counts as a transactional write of 1 KB (2 units). A cancelled transaction is counted in full (an upper
  bound: DynamoDB does not document what a cancelled one costs).

Sources: the DynamoDB Developer Guide, "DynamoDB read and write operations" (capacity unit consumption for
write operations; transactional writes; failed conditional writes) and the TransactWriteItems API reference.
The change types: an insert of a new key, an update of an item the target holds, a delete of one, and a
duplicate of an applied update (a replayed record), for items of at most 1 KB and of about 4 KB (sizes as
the target stores them, the inline version attribute included).
"""

from __future__ import annotations

import json
import math
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

from kcl_app.core.attrs import item_size, item_to_wire
from kcl_app.core.records import RawRecord

KEYS = 20
SIZES = {"<= 1 KB": 880, "~4 KB": 3_900}  # source item bytes; the stored item stays within 1 KB / 4 KB
CHANGES = ("insert", "update", "delete", "duplicate update")
MODES = ("exact", "inline", "classic copier")


def _units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


@dataclass
class Metered:
    """A DynamoDB client that counts the write units and calls of what it forwards (see the module docstring)."""

    client: Any
    units: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    _keys: dict[str, list[str]] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def _key_names(self, table: str) -> list[str]:
        if table not in self._keys:
            schema = self.client.describe_table(TableName=table)["Table"]["KeySchema"]
            self._keys[table] = [k["AttributeName"] for k in schema]
        return self._keys[table]

    def _current(self, table: str, item_or_key: dict[str, Any]) -> int:
        key = {k: item_or_key[k] for k in self._key_names(table)}
        found = self.client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        return item_size(found) if found else 0

    def _cost(self, kind: str, op: dict[str, Any]) -> int:
        if kind == "Put":
            return _units(max(item_size(op["Item"]), self._current(op["TableName"], op["Item"])))
        if kind == "Delete":
            return _units(self._current(op["TableName"], op["Key"]))
        return 1  # ConditionCheck

    def _count(self, call: str, units: float) -> None:
        self.units += units
        self.calls[call] = self.calls.get(call, 0) + 1

    def put_item(self, **kwargs: Any) -> Any:
        self._count("PutItem", self._cost("Put", kwargs))
        return self.client.put_item(**kwargs)

    def delete_item(self, **kwargs: Any) -> Any:
        self._count("DeleteItem", self._cost("Delete", kwargs))
        return self.client.delete_item(**kwargs)

    def transact_write_items(self, **kwargs: Any) -> Any:
        actions = [next(iter(a.items())) for a in kwargs["TransactItems"]]
        self._count("TransactWriteItems", sum(2 * self._cost(kind, op) for kind, op in actions))
        return self.client.transact_write_items(**kwargs)


class Source:
    """Destination records of a simulated source table (microsecond timestamps that only grow)."""

    def __init__(self, body_bytes: int) -> None:
        self.micros = 1_790_000_000_000_000
        self.items: dict[str, dict[str, Any]] = {}
        self.body = body_bytes

    def change(self, key: str, delete: bool = False) -> RawRecord:
        self.micros += 10
        old = self.items.get(key)
        new = None if delete else {"pk": {"S": key}, "n": {"N": str(self.micros)}, "body": {"S": ""}}
        if new is not None:
            new["body"] = {"S": "x" * max(0, self.body - item_size(new))}
            self.items[key] = new
        else:
            self.items.pop(key, None)
        ddb: dict[str, Any] = {"ApproximateCreationDateTime": self.micros, "Keys": {"pk": {"S": key}},
                               "SizeBytes": self.body}
        if new is not None:
            ddb["NewImage"] = item_to_wire(new)
        if old is not None:
            ddb["OldImage"] = item_to_wire(old)
        event = "REMOVE" if delete else ("MODIFY" if old else "INSERT")
        doc = {"awsRegion": "us-east-1", "eventID": str(uuid.uuid4()), "eventName": event, "userIdentity": None,
               "recordFormat": "application/json", "tableName": "units-source", "dynamodb": ddb,
               "eventSource": "aws:dynamodb"}
        return RawRecord(json.dumps(doc).encode(), str(self.micros), shard_id="shardId-000000000000")


def _sink(mode: str, client: Any) -> Any:
    """`apply(records)` for one mode, writing to a fresh target through `client`."""
    from kcl_app.adapters.clock import SystemClock
    from kcl_app.adapters.metrics import RecordingMetrics
    from kcl_app.compose import build_engine
    from kcl_app.config import parse

    table = f"units-{uuid.uuid4().hex[:8]}"
    client.create_table(TableName=table, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    if mode == "classic copier":
        def copier(records: list[RawRecord]) -> None:
            for raw in records:
                doc = json.loads(raw.data)
                if doc["eventName"] == "REMOVE":
                    client.delete_item(TableName=table, Key=doc["dynamodb"]["Keys"])
                else:
                    client.put_item(TableName=table, Item=doc["dynamodb"]["NewImage"])
        return copier
    config = parse({"stream_retention_hours": 24, "targets": [
        {"name": "t", "source_table": "units-source", "region": "eu-west-1", "table": table, "mode": mode,
         "dead_letter": {"path": tempfile.mkdtemp(prefix="units-dlq-")}}]})
    engine = build_engine(config, clock=SystemClock(), metrics=RecordingMetrics(), clients={"t": client})

    def fenced(records: list[RawRecord]) -> None:
        for raw in records:  # one record per batch: nothing is coalesced
            result = engine.pipeline.process([raw])
            if not result.complete or result.targets["t"].parked:
                raise SystemExit(f"{mode}: a change was not applied: {result}")
    return fenced


def measure(mode: str, change: str, body_bytes: int) -> tuple[float, dict[str, int]]:
    """(write units per change, calls) for `KEYS` changes of one type, after the setup they need."""
    import boto3

    metered = Metered(boto3.client("dynamodb", region_name="eu-west-1"))
    apply = _sink(mode, metered)
    source = Source(body_bytes)
    keys = [f"key-{i:03d}" for i in range(KEYS)]
    setup = [source.change(k) for k in keys] if change != "insert" else []
    apply(setup)
    if change in ("insert", "update"):  # an INSERT of a new key, or a MODIFY of a held one
        measured = [source.change(k) for k in keys]
    elif change == "delete":
        measured = [source.change(k, delete=True) for k in keys]
    else:  # a replay of updates already applied
        updates = [source.change(k) for k in keys]
        apply(updates)
        measured = updates
    metered.units, metered.calls = 0.0, {}
    apply(measured)
    return metered.units / len(measured), dict(metered.calls)


def table() -> list[str]:
    """The write-unit table, one line per (size, change type), as printed by bench/apply.py --units."""
    import os

    from moto import mock_aws

    from tablesync_local import moto_fixes

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    moto_fixes.install()
    lines = [f"{'item size':<10}{'change':<18}" + "".join(f"{m:>16}" for m in MODES) + "   requests (exact | inline)"]
    with mock_aws():
        for label, body in SIZES.items():
            for change in CHANGES:
                figures = {mode: measure(mode, change, body) for mode in MODES}
                calls = " | ".join(", ".join(f"{n / KEYS:g} {c}" for c, n in sorted(figures[m][1].items()))
                                   for m in ("exact", "inline"))
                lines.append(f"{label:<10}{change:<18}" + "".join(f"{figures[m][0]:>16.2f}" for m in MODES)
                             + f"   {calls}")
    return lines
