"""Corrections to moto 5.2.5 where its DynamoDB, Kinesis and IAM enforcement differ from AWS in ways
tablesync relies on.

:func:`install` patches moto's classes in the current process. It is idempotent and works alike for the
emulator server (moto's WSGI app) and for in-process ``moto.mock_aws``: both use the same backend classes.

Contract for code that observes item changes (DynamoDB Streams, the Kinesis-destination emulation): every
committed change of an item reaches ``table.stream_shard.add(old, new)`` exactly once, and a cancelled or
rejected request reaches it not at all. Transactions apply their writes through the backend's own
``put_item``/``update_item``/``delete_item``, which end in ``Table.put_item``/``Table.delete_item`` or, for an
update of an existing item, directly in ``stream_shard.add``.

All DynamoDB writes that pass through these patches are serialised by one process-wide lock, so a
transaction is atomic with respect to concurrent requests served by a threaded server.
"""

from __future__ import annotations

import base64
import bisect
import copy
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from kcl_app.local import moto_speed
from kcl_app.local.patching import patch

MAX_ITEM_BYTES = 400 * 1024
"""DynamoDB's item size limit: UTF-8 attribute name lengths plus value sizes."""
MAX_TRANSACT_ACTIONS = 100
MAX_BATCH_WRITE_REQUESTS = 25
MAX_GET_RECORDS = 10_000

_WRITE_LOCK = threading.RLock()
_checked = threading.local()
"""``sizes`` is true while a transaction applies actions whose item sizes it has already checked."""
_INSTALL_LOCK = threading.Lock()
_installed = False
_MARK = "_tablesync_fix"


def install() -> None:
    """Patch moto in this process. Idempotent; safe to call from several threads."""
    global _installed
    with _INSTALL_LOCK:
        if _installed:
            return
        _install_dynamodb()
        _install_kinesis()
        _install_iam()
        moto_speed.install()
        _installed = True


def _patch(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    patch(owner, name, make, _MARK)


# --------------------------------------------------------------------------------------------- item size


def item_size(attrs: Mapping[str, Any]) -> int:
    """Size of an item as DynamoDB documents it: sum of UTF-8 name lengths and value sizes.

    ``attrs`` maps names to wire values (``{"S": "x"}``) or moto ``DynamoType`` objects.
    """
    return sum(len(name.encode()) + value_size(value) for name, value in attrs.items())


def value_size(value: Any) -> int:
    """Size of one attribute value: strings by UTF-8 length, binary by raw length, numbers by
    significant digits (1 byte per 2 digits + 1), BOOL/NULL 1 byte, List/Map 3 bytes + 1 byte per element."""
    if type(value) is dict or isinstance(value, Mapping):
        ((kind, raw),) = value.items()
    else:  # a moto DynamoType
        kind, raw = value.type, value.value
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        return _number_size(raw)
    if kind == "B":
        return _binary_size(raw)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in raw)
    if kind == "NS":
        return sum(_number_size(n) for n in raw)
    if kind == "BS":
        return sum(_binary_size(b) for b in raw)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in raw.items())
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def _number_size(raw: str) -> int:
    if raw.isascii() and raw.isdigit():  # the common case, without Decimal: an unsigned integer
        return (len(raw.strip("0") or "0") + 1) // 2 + 1
    try:
        digits = "".join(map(str, Decimal(raw).as_tuple().digits)).strip("0") or "0"
    except InvalidOperation:
        return len(raw)
    return (len(digits) + 1) // 2 + 1


def _binary_size(raw: str | bytes) -> int:
    return len(raw) if isinstance(raw, bytes) else len(base64.b64decode(raw))


def _check_item_size(attrs: Mapping[str, Any]) -> None:
    from moto.dynamodb.exceptions import ItemSizeTooLarge

    if item_size(attrs) > MAX_ITEM_BYTES:
        raise ItemSizeTooLarge()


# ------------------------------------------------------------------------------------------------ DynamoDB


def _install_dynamodb() -> None:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import LimitedSizeDict
    from moto.dynamodb.responses import DynamoHandler

    # Fix: item size. DynamoDB limits an item to 400 KB counted as name lengths + value sizes (binary by
    # raw length, numbers by digits). moto checked every attribute assignment against 405,000 "bytes" of
    # base64 text and number strings, re-summing the whole item each time (quadratic). The check moves to
    # the write entry points below (PutItem, BatchWriteItem, UpdateItem, TransactWriteItems).
    def make_setitem(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def __setitem__(self: dict[str, Any], key: str, value: Any) -> None:
            dict.__setitem__(self, key, value)

        return __setitem__

    _patch(LimitedSizeDict, "__setitem__", make_setitem)

    # Fix: PutItem (and BatchWriteItem puts, and transaction puts, which come here) enforce the real limit.
    def make_put(orig: Callable[..., Any]) -> Callable[..., Any]:
        def put_item(self: Any, table_name: str, item_attrs: dict[str, Any], *args: Any, **kw: Any) -> Any:
            with _WRITE_LOCK:
                if not getattr(_checked, "sizes", False):
                    _check_item_size(item_attrs)
                return orig(self, table_name, item_attrs, *args, **kw)

        return put_item

    _patch(DynamoDBBackend, "put_item", make_put)

    # Fix: UpdateItem. DynamoDB validates the update and the resulting item size before changing anything,
    # and an update that creates an item produces one INSERT change. moto first stored a keys-only item
    # (one stream record) and then emitted a second INSERT with the updated item.
    def make_update(orig: Callable[..., Any]) -> Callable[..., Any]:
        def update_item(self: Any, table_name: str, key: dict[str, Any], update_expression: str,
                        expression_attribute_names: dict[str, Any] | None,
                        expression_attribute_values: dict[str, Any] | None,
                        attribute_updates: dict[str, Any] | None = None,
                        expected: dict[str, Any] | None = None, condition_expression: str | None = None,
                        return_values_on_condition_check_failure: str | None = None) -> Any:
            args = (table_name, key, update_expression, expression_attribute_names,
                    expression_attribute_values, attribute_updates, expected, condition_expression,
                    return_values_on_condition_check_failure)
            with _WRITE_LOCK:
                if not update_expression or attribute_updates:
                    return orig(self, *args)
                table = self.get_table(table_name)
                hash_key, range_key = self.get_keys_value(table, key)
                current = table.get_item(hash_key, range_key)
                if not _condition_holds(condition_expression, expression_attribute_names,
                                        expression_attribute_values, current, expected):
                    return orig(self, *args)  # raises ConditionalCheckFailed as moto does
                new_item = _simulate_update(table, current, hash_key, range_key, update_expression,
                                            expression_attribute_names, expression_attribute_values)
                if current is not None:
                    return orig(self, *args)
                return table.put_item(_wire_attrs(new_item.attrs))

        return update_item

    _patch(DynamoDBBackend, "update_item", make_update)

    def make_locked(orig: Callable[..., Any]) -> Callable[..., Any]:
        def locked(self: Any, *args: Any, **kw: Any) -> Any:
            with _WRITE_LOCK:
                return orig(self, *args, **kw)

        return locked

    _patch(DynamoDBBackend, "delete_item", make_locked)
    _patch(DynamoDBBackend, "transact_write_items", lambda _orig: _transact_write_items)
    _patch(DynamoHandler, "batch_write_item", _make_batch_write)


def _condition_holds(expression: str | None, names: dict[str, Any] | None, values: dict[str, Any] | None,
                     current: Any, expected: dict[str, Any] | None = None) -> bool:
    from moto.dynamodb.comparisons import get_expected, get_filter_expression

    if expected and not get_expected(expected).expr(current):
        return False
    return bool(get_filter_expression(expression, names, values).expr(current))


def _simulate_update(table: Any, current: Any, hash_key: Any, range_key: Any, expression: str,
                     names: dict[str, Any] | None, values: dict[str, Any] | None) -> Any:
    """Apply an update expression to a copy of the item (or a new keys-only item) and return the copy.

    Raises moto's ValidationException subclasses exactly where UpdateItem would, plus ItemSizeTooLarge.
    """
    from moto.dynamodb.exceptions import ItemSizeToUpdateTooLarge
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.parsing.executors import UpdateExpressionExecutor
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
    from moto.dynamodb.parsing.validators import UpdateExpressionValidator

    if current is not None:
        item = copy.deepcopy(current)
    else:
        keys = {table.hash_key_attr: hash_key.to_json()}
        if range_key is not None:
            keys[table.range_key_attr] = range_key.to_json()
        item = Item(hash_key, range_key, keys)
    ast = UpdateExpressionParser.make(expression)
    validated = UpdateExpressionValidator(ast, expression_attribute_names=names or {},
                                          expression_attribute_values=values or {}, item=item,
                                          table=table).validate()
    validated.normalize()
    UpdateExpressionExecutor(validated, item, names or {}).execute()
    if item_size(item.attrs) > MAX_ITEM_BYTES:
        raise ItemSizeToUpdateTooLarge()
    return item


def _wire_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """moto DynamoType attributes -> wire JSON (binary stays base64 text, as moto stores it)."""

    def wire(value: Any) -> dict[str, Any]:
        if value.is_list():
            return {"L": [wire(v) for v in value.value]}
        if value.is_map():
            return {"M": {k: wire(v) for k, v in value.value.items()}}
        return {value.type: value.value}

    return {name: wire(value) for name, value in attrs.items()}


# Fix: TransactWriteItems. DynamoDB checks every condition against the state before the transaction and
# then applies all writes or none; a cancelled transaction changes nothing and produces no stream record.
# moto deep-copied every table named in the request before starting (cost grew with table size: 1.5 s at
# 5,000 items), applied the actions one by one (stream hooks saw the writes of a transaction that was later
# cancelled), and on failure swapped the table objects for the copies.
def _transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    from moto.dynamodb.exceptions import (
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
    )

    with _WRITE_LOCK:
        # 1 request-level validation: nothing read or written yet
        if len(transact_items) > MAX_TRANSACT_ACTIONS:
            raise TooManyTransactionsException()
        actions = [_TxAction(self, raw) for raw in transact_items]
        targets: set[tuple[str, Any, Any]] = set()
        for action in actions:
            if action.target in targets:
                raise MultipleTransactionsException()
            targets.add(action.target)
        # 2 every condition against the pre-transaction state; images validated on copies
        reasons = [action.check() for action in actions]
        if any(code is not None for code, _, _ in reasons):
            raise TransactionCanceledException(reasons)
        # 3 apply in request order through the backend's write methods; roll back touched items on failure
        snapshot = _snapshot_items(actions)
        stream_marks = [(a.table, len(a.table.stream_shard.items)) for a in actions if a.table.stream_shard]
        _checked.sizes = True
        try:
            for action in actions:
                action.apply(self)
        except Exception:
            _restore(snapshot, stream_marks)
            raise
        finally:
            _checked.sizes = False


class _TxAction:
    """One TransactWriteItems action bound to its table, key and the item's current state."""

    def __init__(self, backend: Any, raw: dict[str, Any]):
        from moto.dynamodb.exceptions import MockValidationException, TransactWriteSingleOpException

        if len(raw) != 1:
            raise TransactWriteSingleOpException()
        ((self.kind, self.op),) = raw.items()
        if self.kind not in ("ConditionCheck", "Put", "Delete", "Update"):
            raise MockValidationException(f"Unsupported transaction operation: {self.kind}")
        self.table = backend.get_table(self.op["TableName"])
        if self.kind == "Put":
            item = self.op["Item"]
            missing = [k for k in self.table.table_key_attrs if k not in item]
            if missing:
                raise MockValidationException(
                    f"One or more parameter values were invalid: Missing the key {missing[0]} in the item")
            self.key = {k: item[k] for k in self.table.table_key_attrs}
        else:
            self.key = self.op["Key"]
        self.hash_key, self.range_key = backend.get_keys_value(self.table, self.key)
        self.target = (self.table.name, self.hash_key, self.range_key)
        self.current = self.table.get_item(self.hash_key, self.range_key)

    def check(self) -> tuple[Any, Any, Any]:
        """Cancellation reason as moto's exception expects it: (code, message, item) or (None,)*3."""
        op = self.op
        names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
        if not _condition_holds(op.get("ConditionExpression"), names, values, self.current):
            old = None
            if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and self.current is not None:
                old = self.current.to_json()["Attributes"]
            return ("ConditionalCheckFailed", "The conditional request failed", old)
        if self.kind == "Put":
            _check_item_size(op["Item"])
        elif self.kind == "Update":
            _simulate_update(self.table, self.current, self.hash_key, self.range_key,
                             op["UpdateExpression"], names, values)
        return (None, None, None)

    def apply(self, backend: Any) -> None:
        op = self.op
        if self.kind == "Put":
            backend.put_item(self.table.name, op["Item"])
        elif self.kind == "Delete":
            backend.delete_item(self.table.name, self.key)
        elif self.kind == "Update":
            backend.update_item(self.table.name, self.key, op["UpdateExpression"],
                                op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues"))


def _snapshot_items(actions: list[_TxAction]) -> list[tuple[Any, Any, Any, Any]]:
    """The items the transaction writes (ConditionCheck writes nothing), as the rollback state.

    Put and Delete replace or remove the stored ``Item`` object without touching it, so the object itself
    is the old state; only Update changes an item in place and needs a copy."""
    return [(a.table, a.hash_key, a.range_key, copy.deepcopy(a.current) if a.kind == "Update" else a.current)
            for a in actions if a.kind != "ConditionCheck"]


def _restore(snapshot: list[tuple[Any, Any, Any, Any]], stream_marks: list[tuple[Any, int]]) -> None:
    for table, hash_key, range_key, old in snapshot:
        if range_key is None:
            if old is None:
                table.items.pop(hash_key, None)
            else:
                table.items[hash_key] = old
        elif old is None:
            table.items[hash_key].pop(range_key, None)
        else:
            table.items[hash_key][range_key] = old
    for table, mark in stream_marks:
        if table.stream_shard is not None and len(table.stream_shard.items) >= mark:
            del table.stream_shard.items[mark:]


# Fix: BatchWriteItem. DynamoDB rejects the whole request (ValidationException, nothing written) with more
# than 25 requests, with two requests for one key, or with an item over 400 KB. moto accepted any number,
# detected duplicates only among identical whole puts or deletes, and wrote items one by one until one failed.
def _make_batch_write(orig: Callable[..., Any]) -> Callable[..., Any]:
    def batch_write_item(self: Any) -> Any:
        from moto.dynamodb.exceptions import MockValidationException

        with _WRITE_LOCK:
            request_items = self.body.get("RequestItems") or {}
            if sum(len(requests) for requests in request_items.values()) > MAX_BATCH_WRITE_REQUESTS:
                raise MockValidationException("Too many items requested for the BatchWriteItem call")
            for table_name, requests in request_items.items():
                table = self.dynamodb_backend.get_table(table_name)
                keys: set[tuple[Any, Any]] = set()
                for request in requests:
                    put, delete = request.get("PutRequest"), request.get("DeleteRequest")
                    attrs = put["Item"] if put else delete["Key"]
                    missing = [k for k in table.table_key_attrs if k not in attrs]
                    if missing:
                        raise MockValidationException(
                            "The provided key element does not match the schema")
                    key = self.dynamodb_backend.get_keys_value(table, attrs)
                    if key in keys:
                        raise MockValidationException("Provided list of item keys contains duplicates")
                    keys.add(key)
                    if put:
                        _check_item_size(attrs)
            return orig(self)

    return batch_write_item


# ------------------------------------------------------------------------------------------------- Kinesis

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


def _install_kinesis() -> None:
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

    _patch(Shard, "__init__", make_init)

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

    _patch(Shard, "put_record", make_shard_put)

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

    _patch(Shard, "get_records", make_shard_get)

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

    _patch(Shard, "to_json", make_to_json)

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

    _patch(Stream, "get_shard_for_key", make_route)

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

    _patch(Stream, "split_shard", make_split)

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

    _patch(Stream, "merge_shards", make_merge)

    # Iterators name the stream even when GetShardIterator identified it by ARN only.
    def make_iterator(orig: Callable[..., Any]) -> Callable[..., Any]:
        def get_shard_iterator(self: Any, stream_arn: str | None, stream_name: str | None,
                               *args: Any) -> str:
            stream = self.describe_stream(stream_arn=stream_arn, stream_name=stream_name)
            return str(orig(self, None, stream.stream_name, *args))

        return get_shard_iterator

    _patch(KinesisBackend, "get_shard_iterator", make_iterator)

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

    _patch(KinesisBackend, "get_records", make_backend_get)

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

    _patch(KinesisResponse, "get_records", make_response_get)
    _patch(KinesisResponse, "list_shards", _make_list_shards)


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


# ----------------------------------------------------------------------------------------- IAM enforcement

# IAM authorises TransactWriteItems/TransactGetItems by the actions of their items, per table; there is no
# IAM action dynamodb:TransactWriteItems or dynamodb:TransactGetItems.
_TRANSACT_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}
# The IAM prefix of a service whose SigV4 signing name differs from it.
_IAM_PREFIX_OF_SIGNING_NAME = {"monitoring": "cloudwatch"}
# Services whose protocol is JSON (awsJson1.0/1.1): AWS answers a denial with HTTP 400 and
# {"__type": "AccessDeniedException"}; moto answered 403 with an XML body the SDKs cannot parse.
_JSON_DENIAL_SERVICES = frozenset({"dynamodb", "kinesis"})


def iam_actions(action: str, body: bytes | str | None) -> list[str]:
    """The IAM actions AWS authorises for a request that moto names ``action`` (``signing-name:Operation``).

    ``body`` is the raw request body (needed for transactions). Each returned action must be allowed;
    the order is the items' order, without repeats. An unreadable transaction body leaves ``action`` as is.
    """
    service, _, operation = action.partition(":")
    service = _IAM_PREFIX_OF_SIGNING_NAME.get(service, service)
    if service == "dynamodb" and operation in ("TransactWriteItems", "TransactGetItems"):
        try:
            items = json.loads(body or b"{}")["TransactItems"]
            kinds = [next(iter(item)) for item in items]
            per_item = [_TRANSACT_ITEM_ACTIONS[kind] for kind in kinds]
        except (ValueError, KeyError, TypeError, StopIteration):
            return [action]
        return list(dict.fromkeys(per_item))
    return [f"{service}:{operation}"]


def _install_iam() -> None:
    import logging

    from moto.core.exceptions import JsonRESTError
    from moto.iam.access_control import IAMRequest, IAMRequestBase

    log = logging.getLogger("kcl_app.local.iam")

    # Fix: action names. moto checks "<signing name>:<operation>", so a transaction needed a non-existent
    # dynamodb:TransactWriteItems (and an allowed dynamodb:PutItem did not cover its puts), and CloudWatch
    # calls needed "monitoring:*". Each action AWS authorises is checked in turn; a denial names it.
    def make_check(orig: Callable[..., Any]) -> Callable[..., Any]:
        def check_action_permitted(self: Any, resource: str) -> None:
            named = self._action
            try:
                for action in iam_actions(named, self._body or self._data):
                    self._action = action
                    try:
                        orig(self, resource)
                    except Exception:
                        log.debug("IAM deny %s %s", self._access_key.arn, action)
                        raise
                    log.debug("IAM allow %s %s", self._access_key.arn, action)
            finally:
                self._action = named

        return check_action_permitted

    _patch(IAMRequestBase, "check_action_permitted", make_check)

    # Fix: the denial's shape for JSON-protocol services (AccessDeniedException, HTTP 400), so SDK
    # clients classify it the way they do against AWS.
    def make_denied(orig: Callable[..., Any]) -> Callable[..., Any]:
        def _raise_access_denied(self: Any) -> None:
            if self._service in _JSON_DENIAL_SERVICES:
                raise JsonRESTError("AccessDeniedException",
                                    f"User: {self._access_key.arn} is not authorized to perform: {self._action}")
            orig(self)

        return _raise_access_denied

    _patch(IAMRequest, "_raise_access_denied", make_denied)
