"""Kinesis fixes: resharding the KCL can traverse, stream-wide sequence numbers, ListShards filters."""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from tablesync_local.moto_fixes._patch import fix

MAX_GET_RECORDS = 10_000

_sequence = itertools.count(1)
_sequence_lock = threading.RLock()


def _next_sequence_number(at_least: int) -> int:
    """Stream-wide increasing sequence numbers: a child shard's records follow its parents'."""
    global _sequence
    with _sequence_lock:
        number = next(_sequence)
        if number < at_least:
            number = at_least
            _sequence = itertools.count(number + 1)
        return number


def _last_sequence(shard: Any) -> int:
    return int(next(reversed(shard.records), 0))


def _open_count(stream: Any) -> int:
    return sum(1 for s in stream.shards.values() if s.is_open)


def install() -> None:
    from moto.core.utils import unix_time
    from moto.kinesis.exceptions import InvalidArgumentError
    from moto.kinesis.models import KinesisBackend, Record, Shard, Stream
    from moto.kinesis.responses import KinesisResponse
    from moto.kinesis.utils import compose_shard_iterator, decompose_shard_iterator
    from moto.utilities.utils import md5_hash

    # Shards remember when they opened and closed (ListShards AT_TIMESTAMP / FROM_TIMESTAMP filters).
    def make_init(orig: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(self: Any, *args: Any, **kw: Any) -> None:
            orig(self, *args, **kw)
            self.created_at = unix_time()
            self.closed_at = None
            self.first_sequence = _next_sequence_number(0)

        return __init__

    fix(Shard, "__init__", make_init)

    def _close(shard: Any) -> None:
        shard.is_open = False
        shard.closed_at = unix_time()

    # Sequence numbers increase across the stream, as in Kinesis; moto restarted at 1 in every shard.
    def make_shard_put(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def put_record(self: Any, partition_key: str, data: str, explicit_hash_key: str) -> str:
            with _sequence_lock:  # numbering and insertion together keep each shard's records sorted
                number = _next_sequence_number(_last_sequence(self) + 1)
                self.records[number] = Record(partition_key, data, number, explicit_hash_key)
            return str(number)

        return put_record

    fix(Shard, "put_record", make_shard_put)

    # Fix: GetRecords returns at most 10,000 records and MillisBehindLatest is the age of the oldest record
    # left unread (0 when caught up). moto returned every record and measured the batch's own span.
    def make_shard_get(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def get_records(self: Any, last_sequence_id: str, limit: int | None) -> tuple[list[Any], int, int]:
            numbers = list(self.records)
            start = bisect.bisect_right(numbers, int(last_sequence_id))
            end = min(len(numbers), start + min(limit or MAX_GET_RECORDS, MAX_GET_RECORDS))
            batch = [self.records[n] for n in numbers[start:end]]
            last = numbers[end - 1] if batch else int(last_sequence_id)
            behind = 0
            if end < len(numbers):
                behind = max(0, int((unix_time() - self.records[numbers[end]].created_at) * 1000))
            return batch, last, behind

        return get_records

    fix(Shard, "get_records", make_shard_get)

    # Fix: ListShards/DescribeStream. A closed shard shows EndingSequenceNumber; an empty shard still has a
    # StartingSequenceNumber (moto showed "0").
    def make_to_json(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def to_json(self: Any) -> dict[str, Any]:
            first = getattr(self, "first_sequence", None)
            if first is None:  # a shard created before install()
                first = next(iter(self.records), 0)
            numbers = {"StartingSequenceNumber": str(first)}
            if not self.is_open:
                numbers["EndingSequenceNumber"] = str(max(_last_sequence(self), first))
            shard: dict[str, Any] = {
                "ShardId": self.shard_id,
                "HashKeyRange": {"StartingHashKey": str(self.starting_hash),
                                 "EndingHashKey": str(self.ending_hash)},
                "SequenceNumberRange": numbers,
            }
            if self.parent:
                shard["ParentShardId"] = self.parent
            if self.adjacent_parent:
                shard["AdjacentParentShardId"] = self.adjacent_parent
            return shard

        return to_json

    fix(Shard, "to_json", make_to_json)

    # Fix: routing. Kinesis maps a record to the one OPEN shard whose inclusive hash range holds its hash
    # key. moto took the first shard in creation order (closed parents included) and excluded EndingHashKey.
    def make_route(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def get_shard_for_key(self: Any, partition_key: str, explicit_hash_key: str | None) -> Any:
            if not isinstance(partition_key, str) or len(partition_key) > 256:
                raise InvalidArgumentError("partition_key")
            if explicit_hash_key:
                key = int(explicit_hash_key)
                if not 0 <= key < 2**128:
                    raise InvalidArgumentError("explicit_hash_key")
            else:
                key = int(md5_hash(partition_key.encode("utf-8")).hexdigest(), 16)
            for shard in self.shards.values():
                if shard.is_open and shard.starting_hash <= key <= shard.ending_hash:
                    return shard
            raise InvalidArgumentError(f"no open shard for hash key {key}")

        return get_shard_for_key

    fix(Stream, "get_shard_for_key", make_route)

    def _next_shard_index(stream: Any) -> int:
        return int(max(s._shard_id for s in stream.shards.values())) + 1

    # Fix: SplitShard. Kinesis closes the parent, which keeps its records until they expire, and opens two
    # children. moto moved the parent's records into the children, so a consumer read them twice.
    def make_split(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
            shard = self.shards[shard_to_split]
            split_at = int(new_starting_hash_key)
            if not shard.is_open:
                raise InvalidArgumentError(
                    f"Shard {shard.shard_id} in stream {self.stream_name} under account {self.account_id} "
                    "has already been merged or split, and thus is not eligible for merging or splitting.")
            if not shard.starting_hash < split_at < shard.ending_hash:
                raise InvalidArgumentError(
                    f"NewStartingHashKey {split_at} used in SplitShard() on shard {shard.shard_id} in stream "
                    f"{self.stream_name} is not within the shard's hash key range.")
            index = _next_shard_index(self)
            for offset, (low, high) in enumerate(((shard.starting_hash, split_at - 1),
                                                  (split_at, shard.ending_hash))):
                child = Shard(index + offset, low, high, parent=shard.shard_id)
                self.shards[child.shard_id] = child
            _close(shard)
            self.shard_count = _open_count(self)

        return split_shard

    fix(Stream, "split_shard", make_split)

    # Fix: MergeShards. Kinesis closes both parents (which keep their records) and opens one child over the
    # union of their ranges. moto copied both parents' records into the child, accepted closed parents and
    # mis-tested adjacency when the adjacent shard came first.
    def make_merge(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def merge_shards(self: Any, shard_to_merge: str, adjacent_shard_to_merge: str) -> None:
            first, second = self.shards[shard_to_merge], self.shards[adjacent_shard_to_merge]
            for shard in (first, second):
                if not shard.is_open:
                    raise InvalidArgumentError(
                        f"Shard {shard.shard_id} in stream {self.stream_name} under account "
                        f"{self.account_id} has already been merged or split, and thus is not eligible "
                        "for merging or splitting.")
            low, high = sorted((first, second), key=lambda s: s.starting_hash)
            if low.ending_hash + 1 != high.starting_hash:
                raise InvalidArgumentError(
                    f"Shard {adjacent_shard_to_merge} is not adjacent to shard {shard_to_merge}")
            child = Shard(_next_shard_index(self), low.starting_hash, high.ending_hash,
                          parent=first.shard_id, adjacent_parent=second.shard_id)
            self.shards[child.shard_id] = child
            _close(first)
            _close(second)
            self.shard_count = _open_count(self)

        return merge_shards

    fix(Stream, "merge_shards", make_merge)

    # Iterators name the stream even when GetShardIterator identified it by ARN only.
    def make_iterator(orig: Callable[..., Any]) -> Callable[..., Any]:
        def get_shard_iterator(self: Any, stream_arn: str | None, stream_name: str | None,
                               *args: Any) -> str:
            stream = self.describe_stream(stream_arn=stream_arn, stream_name=stream_name)
            return str(orig(self, None, stream.stream_name, *args))

        return get_shard_iterator

    fix(KinesisBackend, "get_shard_iterator", make_iterator)

    # Fix: end of a closed shard. Kinesis GetRecords on a closed shard returns its remaining records, then
    # no NextShardIterator and the ChildShards to continue with. moto kept returning iterators forever.
    def make_backend_get(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def get_records(self: Any, stream_arn: str | None, shard_iterator: str,
                        limit: int | None) -> tuple[str | None, list[Any], int]:
            stream_name, shard_id, last_sequence_id = decompose_shard_iterator(shard_iterator)
            stream = self.describe_stream(stream_arn=stream_arn, stream_name=stream_name)
            shard = stream.get_shard(shard_id)
            records, last, behind = shard.get_records(last_sequence_id, limit)
            if not shard.is_open and last >= _last_sequence(shard):
                return None, records, behind
            return compose_shard_iterator(stream.stream_name, shard, last), records, behind

        return get_records

    fix(KinesisBackend, "get_records", make_backend_get)

    def make_response_get(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def get_records(self: Any) -> Any:
            from moto.core.responses import ActionResult

            iterator = self._get_param("ShardIterator")
            next_iterator, records, behind = self.kinesis_backend.get_records(
                self._get_param("StreamARN"), iterator, self._get_param("Limit"))
            body: dict[str, Any] = {"Records": [r.to_json() for r in records], "MillisBehindLatest": behind}
            if next_iterator is not None:
                body["NextShardIterator"] = next_iterator
            else:
                stream_name, shard_id, _ = decompose_shard_iterator(iterator)
                stream = self.kinesis_backend.describe_stream(self._get_param("StreamARN"), stream_name)
                body["ChildShards"] = [
                    {"ShardId": c.shard_id,
                     "ParentShards": [p for p in (c.parent, c.adjacent_parent) if p],
                     "HashKeyRange": {"StartingHashKey": str(c.starting_hash),
                                      "EndingHashKey": str(c.ending_hash)}}
                    for c in stream.shards.values() if shard_id in (c.parent, c.adjacent_parent)]
            return ActionResult(body)

        return get_records

    fix(KinesisResponse, "get_records", make_response_get)
    fix(KinesisResponse, "list_shards", _make_list_shards)


_PAGE_MARK = "tablesync-shards:"


def select_shards(shards: list[Any], shard_filter: Mapping[str, Any] | None, after: str | None) -> list[Any]:
    """The shards ListShards returns for a ShardFilter / ExclusiveStartShardId, sorted by id.

    Nothing is ever trimmed in the emulator, so TRIM_HORIZON is the stream's creation: AT_TRIM_HORIZON
    yields the shards without parents, FROM_TRIM_HORIZON every shard.
    """
    ordered = sorted(shards, key=lambda s: s.shard_id)
    shard_filter = shard_filter or {}
    kind = shard_filter.get("Type")
    bounds = [b for b in (after, shard_filter.get("ShardId") if kind == "AFTER_SHARD_ID" else None) if b]
    if bounds:
        ordered = [s for s in ordered if s.shard_id > max(bounds)]
    if kind == "AT_LATEST":
        return [s for s in ordered if s.is_open]
    if kind == "AT_TRIM_HORIZON":
        return [s for s in ordered if not s.parent]
    if kind in ("AT_TIMESTAMP", "FROM_TIMESTAMP"):
        at = _epoch_seconds(shard_filter["Timestamp"])
        if all(at < getattr(s, "created_at", 0) for s in ordered if not s.parent):
            return ordered if kind == "FROM_TIMESTAMP" else [s for s in ordered if not s.parent]
        alive_at = [s for s in ordered if getattr(s, "closed_at", None) is None or s.closed_at > at]
        if kind == "FROM_TIMESTAMP":
            return alive_at
        return [s for s in alive_at if getattr(s, "created_at", 0) <= at]
    return ordered


def _epoch_seconds(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except ValueError:
        from datetime import datetime

        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


# Fix: ListShards honours ShardFilter (AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, AT_LATEST,
# AT_TIMESTAMP, FROM_TIMESTAMP) and ExclusiveStartShardId, which the KCL sends when its lease table is new.
# moto ignored both and always listed every shard.
def _make_list_shards(orig: Callable[..., Any]) -> Callable[..., Any]:
    def list_shards(self: Any) -> Any:
        from moto.core.responses import ActionResult

        token = self._get_param("NextToken")
        shard_filter = self._get_param("ShardFilter")
        after = self._get_param("ExclusiveStartShardId")
        stream_arn, stream_name = self._get_param("StreamARN"), self._get_param("StreamName")
        if token and token.startswith(_PAGE_MARK):
            state = json.loads(base64.b64decode(token[len(_PAGE_MARK):]))
            stream_arn, stream_name, shard_filter, after = None, state["stream"], state["filter"], state["after"]
        elif not shard_filter and not after:
            return orig(self)
        stream = self.kinesis_backend.describe_stream(stream_arn, stream_name)
        selected = select_shards(list(stream.shards.values()), shard_filter, after)
        limit = int(self._get_param("MaxResults") or 10_000)
        page = selected[:limit]
        body: dict[str, Any] = {"Shards": [s.to_json() for s in page]}
        if len(selected) > limit:
            state = {"stream": stream.stream_name, "filter": shard_filter, "after": page[-1].shard_id}
            body["NextToken"] = _PAGE_MARK + base64.b64encode(json.dumps(state).encode()).decode()
        return ActionResult(body)

    return list_shards


