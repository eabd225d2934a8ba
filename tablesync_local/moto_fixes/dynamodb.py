"""DynamoDB fixes: item sizes, transactions at the cost of their items, BatchWriteItem limits.

Contract for code that observes item changes (DynamoDB Streams, the Kinesis-destination emulation): every
committed change of an item reaches ``table.stream_shard.add(old, new)`` exactly once, and a cancelled or
rejected request reaches it not at all. Transactions apply their writes through the backend's own
``put_item``/``update_item``/``delete_item``, which end in ``Table.put_item``/``Table.delete_item`` or, for an
update of an existing item, directly in ``stream_shard.add``.

All DynamoDB writes that pass through these patches are serialised by one process-wide lock, so a
transaction is atomic with respect to concurrent requests served by a threaded server.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from typing import Any

from tablesync_local import items
from tablesync_local.items import MAX_ITEM_BYTES, item_size
from tablesync_local.moto_fixes._patch import fix

MAX_TRANSACT_ACTIONS = 100
MAX_BATCH_WRITE_REQUESTS = 25

_WRITE_LOCK = threading.RLock()
_checked = threading.local()
"""``sizes`` is true while a transaction applies actions whose item sizes it has already checked."""


# ------------------------------------------------------------------------------------------ item rules


def _table_keys(table: Any) -> tuple[list[str], str | None]:
    return list(table.table_key_attrs), table.range_key_attr


def _check_values(table: Any, attrs: Mapping[str, Any], envelope: bool = False) -> None:
    """DynamoDB's value rules (:func:`tablesync_local.items.check_item`) as moto's ValidationException.

    PutItem and UpdateItem put the set-family messages in the request-validation envelope ("1 validation
    error detected: ..."), as DynamoDB does; BatchWriteItem and transactions report them bare."""
    from moto.dynamodb.exceptions import MockValidationException

    names, range_key = _table_keys(table)
    try:
        items.check_item(attrs, names, range_key, size=False)
    except items.Refused as exc:
        message = exc.message
        if envelope and exc.in_envelope:
            message = f"1 validation error detected: {message}"
        raise MockValidationException(message) from None


def _check_item_size(attrs: Mapping[str, Any]) -> None:
    from moto.dynamodb.exceptions import ItemSizeTooLarge

    if item_size(attrs) > MAX_ITEM_BYTES:
        raise ItemSizeTooLarge()


# ------------------------------------------------------------------------------------------------ DynamoDB


def install() -> None:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import LimitedSizeDict
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.responses import DynamoHandler

    # Fix: item size. DynamoDB limits an item to 400 KB counted as name lengths + value sizes (binary by
    # raw length, numbers by digits). moto checked every attribute assignment against 405,000 "bytes" of
    # base64 text and number strings, re-summing the whole item each time (quadratic). The check moves to
    # the write entry points below (PutItem, BatchWriteItem, UpdateItem, TransactWriteItems).
    def make_setitem(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def __setitem__(self: dict[str, Any], key: str, value: Any) -> None:
            dict.__setitem__(self, key, value)

        return __setitem__

    fix(LimitedSizeDict, "__setitem__", make_setitem)

    # Fix: key sizes. DynamoDB limits partition keys to 2048 bytes and sort keys to 1024, binary keys by their
    # raw length; moto measured some binary keys (those an update creates) by their base64 text, so a valid
    # 1,537..2,048-byte binary key was refused. Measured here by the emulator's own item rules.
    def make_key_sizes(_orig: Callable[..., Any]) -> Callable[..., Any]:
        def _validate_key_sizes(self: Any, item_attrs: dict[str, Any]) -> None:
            from moto.dynamodb.exceptions import HashKeyTooLong, RangeKeyTooLong

            for names, limit, error in ((self.hash_key_names, items.MAX_HASH_KEY_BYTES, HashKeyTooLong),
                                        (self.range_key_names, items.MAX_RANGE_KEY_BYTES, RangeKeyTooLong)):
                for name in names:
                    value = item_attrs.get(name)
                    if value and items.value_size(value) > limit:
                        raise error()

        return _validate_key_sizes

    fix(Table, "_validate_key_sizes", make_key_sizes)

    # Fix: PutItem (and BatchWriteItem puts, and transaction puts, which come here) enforce the real limit.
    def make_put(orig: Callable[..., Any]) -> Callable[..., Any]:
        def put_item(self: Any, table_name: str, item_attrs: dict[str, Any], *args: Any, **kw: Any) -> Any:
            with _WRITE_LOCK:
                if not getattr(_checked, "sizes", False):
                    _check_item_size(item_attrs)
                return orig(self, table_name, item_attrs, *args, **kw)

        return put_item

    fix(DynamoDBBackend, "put_item", make_put)

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

    fix(DynamoDBBackend, "update_item", make_update)

    def make_locked(orig: Callable[..., Any]) -> Callable[..., Any]:
        def locked(self: Any, *args: Any, **kw: Any) -> Any:
            with _WRITE_LOCK:
                return orig(self, *args, **kw)

        return locked

    fix(DynamoDBBackend, "delete_item", make_locked)
    fix(DynamoDBBackend, "transact_write_items", lambda _orig: _transact_write_items)
    fix(DynamoHandler, "batch_write_item", _make_batch_write)
    fix(DynamoHandler, "put_item", _make_put_handler)
    fix(DynamoHandler, "transact_write_items", _make_transact_handler)


def _condition_holds(expression: str | None, names: dict[str, Any] | None, values: dict[str, Any] | None,
                     current: Any, expected: dict[str, Any] | None = None) -> bool:
    from moto.dynamodb.comparisons import get_expected, get_filter_expression

    if expected and not get_expected(expected).expr(current):
        return False
    return bool(get_filter_expression(expression, names, values).expr(current))


def _simulate_update(table: Any, current: Any, hash_key: Any, range_key: Any, expression: str,
                     names: dict[str, Any] | None, values: dict[str, Any] | None, check: bool = True) -> Any:
    """Apply an update expression to a copy of the item (or a new keys-only item) and return the copy.

    Raises moto's ValidationException subclasses exactly where UpdateItem would, plus ItemSizeTooLarge, plus
    DynamoDB's value rules on the resulting item (an update cannot store what a put could not).
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
    if check:
        _check_values(table, item.attrs, envelope=True)
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
        # DynamoDB's value rules cancel the transaction with a ValidationError reason for the action (the
        # size limit stays a request-level ValidationException, checked before the transaction starts)
        from moto.dynamodb.exceptions import MockValidationException

        if self.kind == "Put":
            _check_item_size(op["Item"])
            attrs = op["Item"]
        elif self.kind == "Update":
            attrs = _simulate_update(self.table, self.current, self.hash_key, self.range_key,
                                     op["UpdateExpression"], names, values, check=False).attrs
        else:
            return (None, None, None)
        key_names, range_key = _table_keys(self.table)
        try:
            items.check_item(attrs, key_names, range_key, size=False)
        except items.Refused as exc:
            if exc.whole_request:
                raise MockValidationException(exc.message) from None
            return ("ValidationError", exc.message, None)
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


# Fix: PutItem refuses what DynamoDB refuses (issue: moto 5.2.5 stored duplicate set members, numbers of
# more than 38 digits or out of range, documents nested deeper than 32 levels, empty attribute names), with
# the service's messages; checked before moto's own request checks, whose key messages differ from AWS.
def _make_put_handler(orig: Callable[..., Any]) -> Callable[..., Any]:
    def put_item(self: Any) -> Any:
        item = self.body.get("Item")
        name = self.body.get("TableName")
        if isinstance(item, dict) and isinstance(name, str):
            with _WRITE_LOCK:
                table = self.dynamodb_backend.get_table(name)
                _check_values(table, item, envelope=True)
        return orig(self)

    return put_item


# Fix: TransactWriteItems refuses the whole request when a key value is empty, in the service's words (moto
# used its own, older wording); every other value rule cancels the transaction (see _TxAction.check).
def _make_transact_handler(orig: Callable[..., Any]) -> Callable[..., Any]:
    def transact_write_items(self: Any) -> Any:
        from moto.dynamodb.exceptions import MockValidationException

        for action in self.body.get("TransactItems") or []:
            op = next(iter(action.values()), None) if isinstance(action, dict) and len(action) == 1 else None
            if not isinstance(op, dict) or not isinstance(op.get("TableName"), str):
                continue  # malformed: moto refuses it
            attrs = op.get("Item") if "Put" in action else op.get("Key")
            if not isinstance(attrs, dict):
                continue
            with _WRITE_LOCK:
                table = self.dynamodb_backend.get_table(op["TableName"])
            names, range_key = _table_keys(table)
            for name in names:
                if name in attrs:
                    try:
                        items.check_key_value(name, attrs[name], is_range=name == range_key, empty_only=True)
                    except items.Refused as exc:
                        raise MockValidationException(exc.message) from None
        return orig(self)

    return transact_write_items


# Fix: BatchWriteItem. DynamoDB rejects the whole request (ValidationException, nothing written) with more
# than 25 requests, with two requests for one key, with an item over 400 KB, or with a value it refuses. moto
# accepted any number,
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
                        _check_values(table, attrs)
                        _check_item_size(attrs)
            return orig(self)

    return batch_write_item


