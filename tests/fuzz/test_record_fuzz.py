"""The record path is a total function: 10,400 mutated destination records through the real processor.

Deterministic (fixed seed), in amazon-kclpy's real protocol loop (`KCLProcess`, as the worker runs it, with input/output
files), with the real Pipeline and its checks, into fake targets that refuse what DynamoDB refuses
and keep a version fence like the real writers. Per record it asserts: applied (or superseded) in
every target it is routed to, skipped by rule, or parked with a non-empty reason. Overall: no
crash, no exit, no checkpoint past an unsettled record, no item written that DynamoDB would refuse,
no version in a target later than its record's arrival plus the allowed skew, and no value of any
item quoted in a park reason.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from kcl_app import pipeline as pipeline_mod
from kcl_app.adapters.daemon_io import kcl_process
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.processor import ReplicationProcessor
from kcl_app.core.checks import KeySchema, RecordChecks
from kcl_app.core.errors import TransformFailed
from kcl_app.core.plan import TargetRule, Write, plan_batch
from kcl_app.core.records import RawRecord
from kcl_app.pipeline import Pipeline
from kcl_app.ports import ApplyResult, DeadLetter
from tests.conftest import FakeClock
from tests.support.daemon_side import ScriptedDaemon

SEED = 20_261_201
RECORDS = 10_400
BATCH = 100
NOW_S = 1_790_000_000.0
ARRIVAL_MS = int(NOW_S * 1000)
SKEW_US = 300_000_000
MARK = "pii-"  # every generated string value carries it; no park reason may
SCHEMAS = {"orders": KeySchema(("pk", "S"), ("sk", "N")), "blobs": KeySchema(("id", "B"))}


# -- an independent oracle of what DynamoDB refuses (shares no code with kcl_app) ------------------

_NUM = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number_ok(text: Any) -> bool:
    if not isinstance(text, str) or not _NUM.match(text):
        return False
    try:
        d = Decimal(text)
    except InvalidOperation:
        return False
    if d == 0:
        return True
    sign, digits, exp = d.as_tuple()
    significant = "".join(map(str, digits)).strip("0")
    magnitude = len(digits) + int(exp) - 1
    return len(significant) <= 38 and -130 <= magnitude <= 125


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def refusal(item: dict[str, Any], key: dict[str, Any], schema: KeySchema) -> str | None:
    """Why DynamoDB would refuse to store `item` (API form) under `key`; None: it would store it."""
    stack: list[tuple[Any, int]] = [({"M": item}, 0)]
    size = 0
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, dict) or len(value) != 1:
            return "value shape"
        ((kind, inner),) = value.items()
        if kind == "S":
            if not isinstance(inner, str) or not _utf8_ok(inner):
                return "S"
            size += len(inner.encode())
        elif kind == "N":
            if not _number_ok(inner):
                return "N"
            size += 21
        elif kind == "B":
            if not isinstance(inner, bytes):
                return "B"
            size += len(inner)
        elif kind == "BOOL":
            if not isinstance(inner, bool):
                return "BOOL"
        elif kind == "NULL":
            if inner is not True:
                return "NULL"
        elif kind in ("SS", "NS", "BS"):
            ok = {"SS": lambda m: isinstance(m, str) and _utf8_ok(m), "NS": _number_ok,
                  "BS": lambda m: isinstance(m, bytes)}[kind]
            if not isinstance(inner, list) or not inner or not all(ok(m) for m in inner):
                return f"{kind} members"
            norm = [Decimal(m) for m in inner] if kind == "NS" else inner
            if len(set(norm)) != len(inner):
                return f"{kind} duplicates"
            size += sum(len(m) if isinstance(m, bytes) else len(m.encode()) for m in inner)
        elif kind in ("M", "L"):
            if depth > 32:  # depth 0 is the item itself: 32 levels of values below it
                return "nesting"
            members = inner.items() if kind == "M" and isinstance(inner, dict) else (
                enumerate(inner) if kind == "L" and isinstance(inner, list) else None)
            if members is None:
                return kind
            for name, member in members:
                if kind == "M" and (not isinstance(name, str) or not name or not _utf8_ok(name)):
                    return "name"
                size += len(name.encode()) if kind == "M" else 1
                stack.append((member, depth + 1))
        else:
            return "type"
    if size > 400 * 1024:
        return "size"
    roles = [(schema.partition, 2048)] + ([(schema.sort, 1024)] if schema.sort else [])
    if set(key) != set(schema.names):
        return "key names"
    for (name, kind), limit in roles:
        if item.get(name) != key[name] or next(iter(key[name])) != kind:
            return "key attribute"
        inner = key[name][kind]
        length = len(inner) if isinstance(inner, bytes) else len(str(inner).encode())
        if kind != "N" and not 1 <= length <= limit:
            return "key size"
    return None


# -- fakes: targets that refuse like DynamoDB and fence like the writers; a recording sink --------


class Harness:
    def __init__(self) -> None:
        self.batch: Sequence[RawRecord] = ()
        self.settled: dict[str, set[str]] = {}  # sequence number -> {"<target>", "_poison", ...}
        self.refused: list[tuple[str, str]] = []
        self.parked: list[DeadLetter] = []
        self.max_version = 0
        self.coalesced: dict[tuple[str, str], list[str]] = {}  # (target, winner's seq) -> every seq

    def settle(self, seq: str, where: str) -> None:
        self.settled.setdefault(seq, set()).add(where)
        for other in self.coalesced.pop((where, seq), ()):
            self.settled.setdefault(other, set()).add(where)

    def planned(self, plans: dict[str, Any]) -> None:
        """A rejected change is parked once, as its winner's record: remember the records it covers."""
        for name, plan in plans.items():
            for rejected in plan.rejected:
                seqs = [self.batch[i].sequence_number for i in rejected.records]
                assert rejected.change.raw is not None
                self.coalesced[(name, rejected.change.raw.sequence_number)] = seqs


class FencedFakeTarget:
    """Holds items per key id with the version last applied; refuses what DynamoDB refuses."""

    def __init__(self, name: str, schema: KeySchema, harness: Harness) -> None:
        self.name = name
        self.schema = schema
        self.harness = harness
        self.items: dict[str, Any] = {}
        self.versions: dict[str, Any] = {}
        self.applied = 0

    def apply(self, writes: Sequence[Write], deadline: float) -> ApplyResult:
        result = ApplyResult()
        for w in writes:
            if len(w.key_id.encode()) > 2048:
                self.harness.refused.append((self.name, "ledger key id over 2048 bytes"))
                result.failed.append((w, "ValidationException: ledger key"))
                continue
            why = refusal(w.item if w.item is not None else dict(w.key), w.key, self.schema)
            if why is not None:
                self.harness.refused.append((self.name, why))
                result.failed.append((w, f"ValidationException: {why}"))
                continue
            seen = self.versions.get(w.key_id)
            if seen is not None and w.version <= seen:
                (result.duplicate if w.version == seen else result.stale).append(w)
            else:
                self.versions[w.key_id] = w.version
                self.harness.max_version = max(self.harness.max_version, w.version.micros)
                if w.item is None:
                    self.items.pop(w.key_id, None)
                else:
                    self.items[w.key_id] = w.item
                result.applied.append(w)
                self.applied += 1
            for index in w.records:
                self.harness.settle(self.harness.batch[index].sequence_number, self.name)
        return result


class RecordingSink:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def park(self, entries: Sequence[DeadLetter]) -> None:
        for e in entries:
            assert e.reason, "a parked entry without a reason"
            self.harness.parked.append(e)
            self.harness.settle(e.sequence_number, e.store)

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        return iter(())

    def remove(self, store: str, handles: Sequence[str]) -> None:
        pass


class ObservedPipeline(Pipeline):
    def __init__(self, harness: Harness, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.harness = harness

    def prepare(self, records: Sequence[RawRecord], only: Any = None) -> Any:
        self.harness.batch = records  # the processor enters the engine here (its lanes do the rest)
        return super().prepare(records, only)


def observed_plan(harness: Harness) -> Any:
    def plan(changes: Any, rules: Any) -> Any:
        plans = plan_batch(changes, rules)
        harness.planned(plans)
        return plans

    return plan


# -- a transform that returns garbage for some items ---------------------------------------------

GARBAGE: list[Any] = [
    lambda item: {**item, "g": {"N": 7}},
    lambda item: {**item, "g": {"S": None}},
    lambda item: {**item, "g": {"Q": "x"}},
    lambda item: {**item, "g": {"SS": []}},
    lambda item: {**item, "g": {"NS": ["1", "1.0"]}},
    lambda item: {**item, "g": {"B": "base64 text, not bytes"}},
    lambda item: {**item, "g": {"N": "1e200"}},
    lambda item: {**item, "g": {"S": "\ud800"}},
    lambda item: {**item, "": {"S": "x"}},
    lambda item: {**item, "pk": {"S": "changed"}},
    lambda item: {k: v for k, v in item.items() if k != "sk"},
    lambda item: [item],
    lambda item: "item",
    lambda item: {**item, "g": nested({"S": "x"}, 40)},
    lambda item: {**item, "g": {"L": [{"M": {"a": {"N": "NaN"}}}]}},
    lambda item: None,  # a filter: the target must not hold the key (a delete)
]


def leaky_error(item: dict[str, Any]) -> Any:
    raise ValueError(f"cannot handle {item}")  # quotes values: the reason must not


def garbage_transform(item: dict[str, Any]) -> Any:
    roll = zlib.crc32(repr(sorted(item)).encode() + repr(item.get("n")).encode()) % 40
    if roll < len(GARBAGE):
        return GARBAGE[roll](item)
    if roll == len(GARBAGE):
        leaky_error(item)
    if roll == len(GARBAGE) + 1:
        raise RecursionError("deep")
    if roll == len(GARBAGE) + 2:
        raise TransformFailed("shaped", "user raised our own error type")
    return {**item, "shaped": {"BOOL": True}}


def nested(leaf: dict[str, Any], depth: int) -> dict[str, Any]:
    for _ in range(depth):
        leaf = {"M": {"m": leaf}}
    return leaf


# -- the generator: valid records, then mutated ones ---------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def value(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    kinds = ["S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS"] + (["M", "L"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "S":
        return {"S": MARK + "".join(rng.choice("abcé✓😀 ") for _ in range(rng.randint(0, 12)))}
    if kind == "N":
        return {"N": rng.choice(["0", "-1", "3.25", "1e-130", "9.9999999999999999999999999999999999999E+125",
                                 "12345678901234567890123456789012345678", str(rng.randint(-10**9, 10**9))])}
    if kind == "B":
        return {"B": b64(rng.randbytes(rng.randint(0, 8)))}
    if kind == "BOOL":
        return {"BOOL": rng.random() < 0.5}
    if kind == "NULL":
        return {"NULL": True}
    if kind == "SS":
        return {"SS": sorted({MARK + str(rng.randint(0, 99)) for _ in range(rng.randint(1, 4))})}
    if kind == "NS":
        return {"NS": sorted({str(rng.randint(-99, 99)) for _ in range(rng.randint(1, 4))})}
    if kind == "BS":
        return {"BS": sorted({b64(bytes([rng.randint(0, 255)])) for _ in range(rng.randint(1, 3))})}
    if kind == "M":
        return {"M": {f"m{i}": value(rng, depth + 1) for i in range(rng.randint(0, 3))}}
    return {"L": [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]}


def valid_doc(rng: random.Random, i: int) -> dict[str, Any]:
    roll = rng.random()
    table = "orders" if roll < 0.85 else "blobs" if roll < 0.95 else "elsewhere"
    if table == "blobs":
        keys: dict[str, Any] = {"id": {"B": b64(bytes([rng.randint(0, 15)]) * 3)}}
    else:
        keys = {"pk": {"S": f"{MARK}k{rng.randint(0, 60)}"}, "sk": {"N": str(rng.randint(0, 3))}}
    event = rng.choice(["INSERT", "MODIFY", "MODIFY", "REMOVE"])
    image = {**keys, "n": {"N": str(i)}, **{f"a{j}": value(rng) for j in range(rng.randint(0, 5))}}
    ddb: dict[str, Any] = {"ApproximateCreationDateTime": ARRIVAL_MS * 1000 - rng.randint(0, 30_000_000),
                           "Keys": copy.deepcopy(keys), "SizeBytes": rng.choice([0, 120, 900])}
    if event != "REMOVE":
        ddb["NewImage"] = image
    if event != "INSERT":
        ddb["OldImage"] = {**copy.deepcopy(keys), "old": {"S": MARK + "o"}}
    ttl = event == "REMOVE" and rng.random() < 0.3
    return {"awsRegion": "us-east-1", "eventID": f"{i:08x}-{rng.getrandbits(32):08x}", "eventName": event,
            "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"} if ttl else None,
            "recordFormat": "application/json", "tableName": table, "dynamodb": ddb, "eventSource": "aws:dynamodb"}


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


def put(doc: Any, path: tuple[Any, ...], new: Any) -> None:
    node = doc
    for p in path[:-1]:
        node = node[p]
    if new is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = new


_DELETE = object()
JUNK: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], {}, [1], {"S": "x"}, 10**40, -(10**40), 1e308]


def image_of(doc: dict[str, Any]) -> dict[str, Any]:
    ddb = doc["dynamodb"]
    return ddb.get("NewImage") or ddb.get("OldImage") or ddb["Keys"]


def mutate(rng: random.Random, doc: dict[str, Any]) -> bytes | dict[str, Any]:
    """One mutation; returns the changed document, or raw bytes for byte-level damage."""
    ddb = doc["dynamodb"]
    kind = rng.randrange(24)
    if kind == 0:  # truncation
        data = json.dumps(doc).encode()
        return data[: rng.randrange(len(data))]
    if kind == 1:  # not UTF-8
        data = bytearray(json.dumps(doc, ensure_ascii=False).encode())
        data[rng.randrange(len(data))] = rng.choice([0xFF, 0xC3, 0x80, 0xED])
        return bytes(data)
    if kind == 2:  # a wrong type at any field
        put(doc, rng.choice(list(paths(doc))), rng.choice(JUNK))
    elif kind == 3:  # a missing field anywhere
        put(doc, rng.choice(list(paths(doc))), _DELETE)
    elif kind == 4:  # a literal Python cannot read or hold
        literal = rng.choice(["Infinity", "-Infinity", "NaN", "1e309", "-1e309", "1" * 5000, "1" * 400, "1" * 4300])
        data = json.dumps({**doc, "dynamodb": {**ddb, "ApproximateCreationDateTime": "HOLE"}}).encode()
        return data.replace(b'"HOLE"', literal.encode())
    elif kind == 5:  # timestamps in every unit, and implausible ones
        us = ARRIVAL_MS * 1000 - rng.randint(0, 10**7)
        ddb["ApproximateCreationDateTime"] = rng.choice([
            us // 1_000_000, us / 1_000_000, us // 1000, us, us * 1000, us + 3_600_000_000, us + 10**14, 10**17,
            -us, 0, 1, True, str(us), us + SKEW_US - 1_000_000, us + SKEW_US + 60_000_000, 10**30, 1.5e15])
    elif kind == 6:  # deep nesting, past Python's recursion limit too
        depth = rng.choice([30, 31, 32, 33, 64, 3000])
        if depth < 100:
            image_of(doc)["deep"] = nested({"S": MARK}, depth)
        else:
            image_of(doc)["deep"] = {"S": "DEEP"}
            return json.dumps(doc).encode().replace(
                b'{"S": "DEEP"}', b'{"M": {"m": ' * depth + b'{"S": "x"}' + b"}}" * depth)
    elif kind == 7:  # bad base64
        image_of(doc)["b"] = rng.choice([{"B": "not base64!"}, {"B": "QQ"}, {"BS": ["AA==", "!!"]}, {"B": 5}])
    elif kind == 8:  # empty and duplicate sets
        image_of(doc)["set"] = rng.choice([{"SS": []}, {"NS": []}, {"BS": []}, {"SS": [MARK, MARK]},
                                           {"NS": ["1", "1.00"]}, {"BS": ["AA==", "AA=="]}, {"SS": [1]}])
    elif kind == 9:  # lone surrogates
        data = json.dumps(doc).encode()
        target = rng.choice([b'"n"', b'"' + MARK.encode(), b'"pk"'])
        return data.replace(target, target[:1] + rng.choice([b"\\ud800", b"\\udfff", b"\\uDABC"]) + target[1:], 1)
    elif kind == 10:  # keys against the schema
        keys = ddb.get("Keys")
        if isinstance(keys, dict):
            choice = rng.randrange(7)
            if choice == 0:
                keys["extra"] = {"S": "x"}
            elif choice == 1 and keys:
                keys.pop(next(iter(keys)))
            elif choice == 2:
                for k in keys:
                    keys[k] = {"N": "1"} if "S" in keys[k] or "B" in keys[k] else {"S": MARK}
            elif choice == 3 and isinstance(ddb.get("NewImage"), dict):
                ddb["NewImage"][next(iter(keys))] = {"S": MARK + "other"}
            elif choice == 4 and isinstance(ddb.get("OldImage"), dict):
                ddb["OldImage"][next(iter(keys))] = {"S": MARK + "other"}
            elif choice == 5:
                for k in keys:
                    if "S" in keys[k]:
                        keys[k] = {"S": rng.choice(["", "x" * 2049, "x" * 2048, "é" * 1025])}
                        if isinstance(ddb.get("NewImage"), dict):
                            ddb["NewImage"][k] = keys[k]
                        if isinstance(ddb.get("OldImage"), dict):
                            ddb["OldImage"][k] = keys[k]
            else:
                ddb["Keys"] = {}
    elif kind == 11:  # provenance
        field, bad = rng.choice([("eventSource", "aws:kinesis"), ("eventSource", None), ("recordFormat", "cbor"),
                                 ("awsRegion", "eu-west-1"), ("awsRegion", 7), ("tableName", "elsewhere")])
        doc[field] = bad
    elif kind == 12:
        doc["eventName"] = rng.choice(["UPSERT", "", "insert", 1, None, MARK])
    elif kind == 13:  # numbers DynamoDB refuses
        image_of(doc)["num"] = {"N": rng.choice(["1e126", "1" * 39, "0x10", "NaN", "", " 1", "1e-131", "-", "1e+"])}
    elif kind == 14:  # empty attribute names
        image = image_of(doc)
        if rng.random() < 0.5:
            image[""] = {"S": MARK}
        else:
            image["m"] = {"M": {"": {"S": MARK}}}
    elif kind == 15:
        ddb["SizeBytes"] = rng.choice([-1, "x", 10**30, True, None, 400 * 1024 + 1, 1.5])
    elif kind == 16:
        return json.dumps(rng.choice([[doc], MARK, 12, None, True, {}])).encode()
    elif kind == 17:  # BOOL / NULL / type tags
        image_of(doc)["t"] = rng.choice([{"BOOL": "true"}, {"NULL": False}, {"S": "a", "N": "1"}, {}, {"s": "x"}])
    elif kind == 18 and rng.random() < 0.05:  # an item over 400 KB (rare: it is slow to build)
        image_of(doc)["big"] = {"S": "x" * (410 * 1024)}
        ddb["SizeBytes"] = rng.choice([0, 100, 500_000])
    elif kind == 19:  # duplicated, reordered or swapped images
        ddb["NewImage"], ddb["OldImage"] = ddb.get("OldImage"), ddb.get("NewImage")
    elif kind == 20:  # key at DynamoDB's exact limits (valid: must replicate)
        if doc.get("tableName") == "orders":
            long_key = {"pk": {"S": MARK + "p" * (2048 - len(MARK))}, "sk": {"N": "9" * 38}}
            ddb["Keys"] = copy.deepcopy(long_key)
            for name in ("NewImage", "OldImage"):
                if isinstance(ddb.get(name), dict):
                    ddb[name].update(copy.deepcopy(long_key))
    elif kind == 21:  # an unknown type anywhere in an image
        image_of(doc)["u"] = {"M": {"x": {rng.choice(["X", "Ss", "LIST", ""]): "v"}}}
    elif kind == 22:  # userIdentity of every shape
        doc["userIdentity"] = rng.choice([[], "Service", {"type": None}, {"type": "Service", "principalId": 1}])
    else:  # two mutations at once (the second one where the first left a structure to mutate)
        first = mutate(rng, doc)
        if isinstance(first, bytes):
            return first
        try:
            return mutate(rng, copy.deepcopy(first))
        except (AttributeError, KeyError, TypeError, IndexError, ValueError):
            return first
    return doc


def generate(seed: int, n: int) -> list[bytes | str]:
    """n records: about a quarter valid, the rest mutated. A str is a payload that is not base64."""
    rng = random.Random(seed)
    out: list[bytes | str] = []
    for i in range(n):
        doc = valid_doc(rng, i)
        if rng.random() < 0.25:
            out.append(json.dumps(doc).encode())
            continue
        if rng.random() < 0.01:
            out.append("@@ not base64 @@")
            continue
        mutated = mutate(rng, doc)
        out.append(mutated if isinstance(mutated, bytes) else json.dumps(mutated).encode())
    return out


def foreign(payload: bytes | str) -> bool:
    """A JSON record that does not claim to come from the configured source's destination."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and (doc.get("eventSource") != "aws:dynamodb"
                                      or doc.get("recordFormat") != "application/json"
                                      or doc.get("awsRegion") != "us-east-1")


# -- the conversation with the processor, as the daemon holds it ---------------------------------


def test_ten_thousand_mutated_records_are_each_applied_skipped_or_parked(monkeypatch: Any) -> None:
    payloads = generate(SEED, RECORDS)
    seqs = [f"{i + 1:020d}" for i in range(len(payloads))]
    harness = Harness()
    monkeypatch.setattr(pipeline_mod, "plan_batch", observed_plan(harness))
    clock = FakeClock(start=NOW_S)
    targets = {"plain": FencedFakeTarget("plain", SCHEMAS["orders"], harness),
               "shaped": FencedFakeTarget("shaped", SCHEMAS["orders"], harness),
               "blobs": FencedFakeTarget("blobs", SCHEMAS["blobs"], harness)}
    rules = [TargetRule("plain", "orders"),
             TargetRule("shaped", "orders", transform=garbage_transform, ttl_deletes="skip", exclude=("a0",)),
             TargetRule("blobs", "blobs")]
    checks = RecordChecks(key_schemas=SCHEMAS, region="us-east-1", max_skew_micros=SKEW_US)
    pipeline = ObservedPipeline(harness, rules, targets, RecordingSink(harness), RecordingMetrics(), clock,
                                unmapped="park", checks=checks)
    exits: list[int] = []
    processor = ReplicationProcessor(lambda: pipeline, clock, RecordingMetrics(), exit=exits.append)

    def msg(payload: bytes | str, seq: str) -> dict[str, Any]:
        data = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
        return {"action": "record", "data": data, "sequenceNumber": seq, "subSequenceNumber": 0,
                "partitionKey": "A" * 32, "approximateArrivalTimestamp": ARRIVAL_MS}

    messages: list[dict[str, Any]] = [{"action": "initialize", "shardId": "shardId-000000000000",
                                       "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0}]
    for start in range(0, len(payloads), BATCH):
        messages.append({"action": "processRecords", "millisBehindLatest": 0,
                         "records": [msg(p, s) for p, s in zip(payloads[start:start + BATCH],
                                                               seqs[start:start + BATCH], strict=True)]})
    messages.append({"action": "shardEnded"})
    daemon, errors = ScriptedDaemon(list(messages)), io.StringIO()
    try:
        kcl_process(processor, input_file=daemon, output_file=daemon, error_file=errors).run()
    finally:
        pipeline.close()

    # 0 crashes: kclpy caught nothing, the processor never asked to exit, every message was answered
    assert "Caught exception" not in errors.getvalue(), errors.getvalue()[:2000]
    assert exits == []
    statuses = [m for m in daemon.sent if m["action"] == "status"]
    assert len(statuses) == 2 + len(range(0, len(payloads), BATCH))

    # per record: settled in every target it is routed to, skipped by rule, or parked with a reason
    unsettled, foreign_applied = [], []
    for payload, seq in zip(payloads, seqs, strict=True):
        where = harness.settled.get(seq, set())
        if foreign(payload) and where != {"_poison"}:
            foreign_applied.append((seq, sorted(where)))
        if where & {"_poison", "_unmapped"}:
            continue
        doc = json.loads(payload)  # it was decoded, so it is JSON (and not nested too deeply)
        routed = {"orders": {"plain", "shaped"}, "blobs": {"blobs"}}[doc["tableName"]]
        identity = doc.get("userIdentity")
        ttl = doc["eventName"] == "REMOVE" and isinstance(identity, dict) and identity.get("type") == "Service" \
            and identity.get("principalId") == "dynamodb.amazonaws.com"
        missing = routed - where - ({"shaped"} if ttl else set())  # the rule skips TTL deletes there
        if missing:
            unsettled.append((seq, sorted(missing)))
    assert unsettled == []
    assert foreign_applied == [], "a record of foreign provenance reached a target"

    # 0 checkpoints past an unsettled record (every batch settles whole, so each checkpoints its end)
    checkpoints = [m["sequenceNumber"] for m in daemon.sent if m["action"] == "checkpoint"]
    ends = [seqs[min(start + BATCH, len(seqs)) - 1] for start in range(0, len(seqs), BATCH)]
    assert checkpoints == [*ends, None]

    # 0 items written that DynamoDB would refuse; no version that could freeze a key
    assert harness.refused == []
    assert harness.max_version <= ARRIVAL_MS * 1000 + SKEW_US
    for target in targets.values():
        for kid, item in target.items.items():
            assert len(kid.encode()) <= 2048 and refusal(item, {k: item[k] for k in target.schema.names},
                                                         target.schema) is None

    # reasons: never empty, never quoting a value
    leaks = [e.reason for e in harness.parked if MARK in e.reason]
    assert leaks == []

    # the fuzz reaches every outcome (a generator that only produced poison would prove nothing)
    stores = Counter(e.store for e in harness.parked)
    applied = {name: t.applied for name, t in targets.items()}
    assert stores["_poison"] > 3000 and stores["_unmapped"] > 50 and stores["shaped"] > 500, stores
    assert all(n > 40 for n in applied.values()), applied
    assert any(kid.startswith("h1:") for kid in targets["plain"].items), "keys at the exact limits replicate"
    reasons = Counter(e.reason.split(":")[0] for e in harness.parked)
    assert len(reasons) > 5, reasons
