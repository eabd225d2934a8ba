"""A reproducible change stream for benchmarks: destination records for puts, updates and deletes."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from kcl_app.core.records import RawRecord


def change_records(changes: int, keys: int, item_bytes: int = 1024, seed: int = 7,
                   table: str = "bench-source", start_micros: int = 1_790_000_000_000_000) -> list[RawRecord]:
    """`changes` records over `keys` keys: ~60% updates/puts, ~15% deletes (of live keys), rest inserts."""
    rng = random.Random(seed)
    live: dict[str, dict[str, Any]] = {}
    out: list[RawRecord] = []
    micros = start_micros
    filler = "x" * max(0, item_bytes - 120)
    for i in range(changes):
        micros += rng.randint(1, 50)
        k = f"key-{rng.randrange(keys):06d}"
        key = {"pk": {"S": k}}
        old = live.get(k)
        if old is not None and rng.random() < 0.15:
            event, new = "REMOVE", None
            del live[k]
        else:
            new = {**key, "n": {"N": str(i)}, "blob": {"B": "AAEC"}, "tags": {"SS": ["a", "b"]},
                   "body": {"S": filler}}
            event = "MODIFY" if old is not None else "INSERT"
            live[k] = new
        ddb = {"ApproximateCreationDateTime": micros, "Keys": key, "SizeBytes": item_bytes}
        if new is not None:
            ddb["NewImage"] = new
        if old is not None:
            ddb["OldImage"] = old
        doc = {"awsRegion": "us-east-1", "eventID": str(uuid.UUID(int=rng.getrandbits(128))), "eventName": event,
               "userIdentity": None, "recordFormat": "application/json", "tableName": table,
               "dynamodb": ddb, "eventSource": "aws:dynamodb"}
        out.append(RawRecord(json.dumps(doc).encode(), f"{i:021d}", shard_id="shardId-000000000000"))
    return out


def describe(records: list[RawRecord]) -> str:
    """One line: how many records of each event type, distinct keys, mean record size."""
    events: dict[str, int] = {}
    keys: set[str] = set()
    size = 0
    for raw in records:
        doc = json.loads(raw.data)
        events[doc["eventName"]] = events.get(doc["eventName"], 0) + 1
        keys.add(doc["dynamodb"]["Keys"]["pk"]["S"])
        size += len(raw.data)
    mix = ", ".join(f"{events.get(name, 0):,} {name}" for name in ("INSERT", "MODIFY", "REMOVE"))
    return (f"{len(records):,} changes ({mix}) over {len(keys):,} keys, "
            f"{size / max(1, len(records)):,.0f} B per record")
