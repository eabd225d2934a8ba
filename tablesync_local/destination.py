"""DynamoDB's Kinesis streaming destination, emulated inside the moto process.

moto does not implement ``Enable/Describe/Disable/UpdateKinesisStreamingDestination``.
:func:`install` (idempotent) adds them to moto's DynamoDB handler, so boto3 calls work
unchanged against the emulator, and hooks every item change of moto's DynamoDB model:

* ``Table.put_item`` (PutItem, BatchWriteItem puts, transaction puts),
* ``Table.delete_item`` (DeleteItem, BatchWriteItem deletes, transaction deletes, TTL),
* ``DynamoDBBackend.update_item`` (UpdateItem, transaction updates; the inner put moto
  makes to create a missing item is folded into the one update record),
* ``DynamoDBBackend.transact_write_items``: the changes of a transaction are held and
  published only if it commits (moto applies then rolls back on failure).

Contract: while a table has an ACTIVE destination, every change that alters the item
becomes exactly one Kinesis record (format: :mod:`tablesync_local.destination_format`)
put into moto's Kinesis backend in-process, synchronously (unless a reorder window holds
it); a write that leaves the item unchanged produces none, as on the real service.
``ApproximateCreationDateTime`` comes from one process-wide :class:`CreationClock`, so it
never goes back between successive changes.

Fault injection (per table, off by default, :func:`configure_faults`):
``duplicate_rate`` (fraction delivered twice), ``reorder_window`` / ``reorder_window_ms``
(records held and released shuffled once N are held or the oldest has waited T ms),
``scatter_partition_keys`` (random partition key per record), ``drop_oversize`` (ON: a
record over 1 MiB is not delivered and counts in ``FailedToReplicateRecordCount``).
Counters: :func:`stats`.

TTL: moto never expires items. :func:`expire_item` deletes one item as the TTL process
would (REMOVE record with the service ``userIdentity``); :func:`expire_due` deletes every
item whose TTL attribute is due. The server exposes both over HTTP (see server.py).

Thread safety: everything that touches moto state runs under :data:`EMULATOR_LOCK`
(re-entrant); the server holds it around every request.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from tablesync_local.destination_format import (
    MAX_RECORD_BYTES,
    PRECISIONS,
    CreationClock,
    Precision,
    build_record,
    encode_record,
    partition_key,
)

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "123456789012"
EMULATOR_LOCK = threading.RLock()
_CLOCK = CreationClock()
_tls = threading.local()


@dataclass(frozen=True)
class FaultConfig:
    """Per-table fault injection; the defaults are the real service's behaviour."""

    duplicate_rate: float = 0.0
    reorder_window: int = 0
    reorder_window_ms: float = 0.0
    scatter_partition_keys: bool = False
    drop_oversize: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.duplicate_rate <= 1.0:
            raise ValueError(f"duplicate_rate must be within 0..1, got {self.duplicate_rate}")
        if self.reorder_window < 0 or self.reorder_window_ms < 0:
            raise ValueError("reorder_window and reorder_window_ms must be >= 0")

    @property
    def reorders(self) -> bool:
        return self.reorder_window > 0 or self.reorder_window_ms > 0

    @property
    def hold_ms(self) -> float:
        """How long the oldest held record may wait (100 ms when only a count is given)."""
        return self.reorder_window_ms or 100.0


@dataclass
class DestinationStats:
    changes: int = 0
    records_sent: int = 0
    duplicates_sent: int = 0
    failed_to_replicate: int = 0
    delivery_errors: int = 0
    buffered: int = 0

    def to_json(self) -> dict[str, int]:
        out = asdict(self)
        out["FailedToReplicateRecordCount"] = self.failed_to_replicate
        return out


@dataclass
class _Destination:
    stream_arn: str
    precision: Precision
    status: str = "ACTIVE"


@dataclass
class _TableState:
    destinations: dict[str, _Destination] = field(default_factory=dict)
    faults: FaultConfig = field(default_factory=FaultConfig)
    stats: DestinationStats = field(default_factory=DestinationStats)
    salt: str = field(default_factory=lambda: uuid.uuid4().hex)
    rng: random.Random = field(default_factory=random.Random)
    held: list[tuple[str, bytes]] = field(default_factory=list)
    held_since: float = 0.0

    def active(self) -> _Destination | None:
        return next((d for d in self.destinations.values() if d.status == "ACTIVE"), None)


@dataclass
class _Change:
    key: tuple[str, str, str]
    keys: dict[str, Any]
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    ttl: bool


class _Registry:
    def __init__(self) -> None:
        self.tables: dict[tuple[str, str, str], _TableState] = {}
        self.cond = threading.Condition(EMULATOR_LOCK)
        self._flusher: threading.Thread | None = None

    def state(self, key: tuple[str, str, str]) -> _TableState:
        return self.tables.setdefault(key, _TableState())

    def publish(self, change: _Change) -> None:
        with EMULATOR_LOCK:
            st = self.tables.get(change.key)
            dest = st.active() if st else None
            if st is None or dest is None:
                return
            st.stats.changes += 1
            record = build_record(
                region=change.key[1], table_name=change.key[2], keys=change.keys,
                old_image=change.old, new_image=change.new,
                creation_time=_CLOCK.stamp(dest.precision), precision=dest.precision,
                event_id=str(uuid.uuid4()), ttl_delete=change.ttl,
            )
            data = encode_record(record)
            if len(data) > MAX_RECORD_BYTES and st.faults.drop_oversize:
                st.stats.failed_to_replicate += 1
                log.warning("destination: %s change of %d bytes not replicated (over 1 MiB)",
                            change.key[2], len(data))
                return
            pk = (f"{st.rng.getrandbits(128):032X}" if st.faults.scatter_partition_keys
                  else partition_key(change.key[2], change.keys, st.salt))
            copies = 2 if st.faults.duplicate_rate and st.rng.random() < st.faults.duplicate_rate else 1
            st.stats.duplicates_sent += copies - 1
            if not st.faults.reorders:
                for _ in range(copies):
                    _deliver(st, dest.stream_arn, pk, data)
                return
            if not st.held:
                st.held_since = time.monotonic()
                self._ensure_flusher()
                self.cond.notify_all()
            st.held.extend([(pk, data)] * copies)
            st.stats.buffered = len(st.held)
            if st.faults.reorder_window and len(st.held) >= st.faults.reorder_window:
                self.release(st)

    def release(self, st: _TableState) -> None:
        """Deliver everything ``st`` holds, shuffled. Caller holds the lock."""
        held, st.held = st.held, []
        st.stats.buffered = 0
        st.rng.shuffle(held)
        dest = st.active()
        for pk, data in held:
            if dest is None:
                st.stats.delivery_errors += 1
            else:
                _deliver(st, dest.stream_arn, pk, data)

    def flush_all(self) -> None:
        with EMULATOR_LOCK:
            for st in self.tables.values():
                if st.held:
                    self.release(st)

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_loop, name="destination-flusher", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                due = [st for st in self.tables.values()
                       if st.held and now - st.held_since >= st.faults.hold_ms / 1000]
                for st in due:
                    self.release(st)
                waits = [st.held_since + st.faults.hold_ms / 1000 - now
                         for st in self.tables.values() if st.held]
                self.cond.wait(timeout=max(0.001, min(waits)) if waits else None)


REGISTRY = _Registry()


def _deliver(st: _TableState, stream_arn: str, pk: str, data: bytes) -> None:
    from moto.kinesis.models import kinesis_backends

    _, _, _, region, account, _ = stream_arn.split(":", 5)
    try:
        kinesis_backends[account][region].put_record(
            stream_arn=stream_arn, stream_name=None, partition_key=pk,
            explicit_hash_key=None, data=base64.b64encode(data).decode(),
        )
    except Exception:  # the stream may have been deleted: counted, not raised into the write
        st.stats.delivery_errors += 1
        log.exception("destination: delivery to %s failed", stream_arn)
        return
    st.stats.records_sent += 1


# ---------------------------------------------------------------- moto model hooks

def _image(item: Any) -> dict[str, Any] | None:
    if item is None:
        return None
    from moto.dynamodb.models.utilities import dynamo_json_dump

    image: dict[str, Any] = json.loads(dynamo_json_dump(item.to_json()["Attributes"]))
    return image


def _on_change(table: Any, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    if getattr(_tls, "suppress", 0) or (old is None and new is None) or old == new:
        return
    key = (table.account_id, table.region_name, table.name)
    st = REGISTRY.tables.get(key)
    if st is None or st.active() is None:
        return
    image = new if new is not None else old
    assert image is not None
    keys = {a: image[a] for a in (table.hash_key_attr, table.range_key_attr) if a is not None}
    change = _Change(key, keys, old, new, bool(getattr(_tls, "ttl", False)))
    pending = getattr(_tls, "pending", None)
    if pending is not None:
        pending.append(change)
    else:
        REGISTRY.publish(change)


def _watched(table: Any) -> bool:
    st = REGISTRY.tables.get((table.account_id, table.region_name, table.name))
    return st is not None and st.active() is not None


_ORIGINALS: list[tuple[Any, str, Any]] = []


def _hook_models() -> None:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    put_item, delete_item = Table.put_item, Table.delete_item
    update_item, transact = DynamoDBBackend.update_item, DynamoDBBackend.transact_write_items
    delete_table = DynamoDBBackend.delete_table

    def lookup(table: Any, attrs: dict[str, Any]) -> Any:
        try:
            h = DynamoType(attrs[table.hash_key_attr])
            r = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
            return table.get_item(h, r)
        except Exception:  # invalid key: the original call raises the proper error
            return None

    @functools.wraps(put_item)
    def hooked_put(self: Any, item_attrs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if not _watched(self):
            return put_item(self, item_attrs, *args, **kwargs)
        old = _image(lookup(self, item_attrs))
        item = put_item(self, item_attrs, *args, **kwargs)
        _on_change(self, old, _image(item))
        return item

    @functools.wraps(delete_item)
    def hooked_delete(self: Any, hash_key: Any, range_key: Any) -> Any:
        item = delete_item(self, hash_key, range_key)
        if item is not None and _watched(self):
            _on_change(self, _image(item), None)
        return item

    @functools.wraps(update_item)
    def hooked_update(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            table = self.get_table(table_name)
        except Exception:
            table = None
        if table is None or not _watched(table):
            return update_item(self, table_name, key, *args, **kwargs)
        old = _image(copy.deepcopy(lookup(table, key)))
        _tls.suppress = getattr(_tls, "suppress", 0) + 1
        try:
            item = update_item(self, table_name, key, *args, **kwargs)
        finally:
            _tls.suppress -= 1
        _on_change(table, old, _image(item))
        return item

    @functools.wraps(transact)
    def hooked_transact(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer = getattr(_tls, "pending", None)
        _tls.pending = [] if outer is None else outer
        try:
            result = transact(self, *args, **kwargs)
            committed = _tls.pending
        finally:
            if outer is None:
                _tls.pending = None
        if outer is None:
            for change in committed:
                REGISTRY.publish(change)
        return result

    @functools.wraps(delete_table)
    def hooked_delete_table(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        table = delete_table(self, name, *args, **kwargs)
        with EMULATOR_LOCK:
            REGISTRY.tables.pop((self.account_id, self.region_name, name), None)
        return table

    for owner, name, hook in ((Table, "put_item", hooked_put), (Table, "delete_item", hooked_delete),
                              (DynamoDBBackend, "update_item", hooked_update),
                              (DynamoDBBackend, "transact_write_items", hooked_transact),
                              (DynamoDBBackend, "delete_table", hooked_delete_table)):
        _ORIGINALS.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, hook)


# ---------------------------------------------------------------- the API (Python)

def _table(account: str, region: str, table_name: str) -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[account][region].get_table(table_name)


def _check_precision(precision: str) -> Precision:
    from moto.dynamodb.exceptions import MockValidationException

    if precision not in PRECISIONS:
        raise MockValidationException(
            f"1 validation error detected: Value '{precision}' at 'approximateCreationDateTimePrecision' "
            "failed to satisfy constraint: Member must satisfy enum value set: [MILLISECOND, MICROSECOND]")
    return precision  # type: ignore[return-value]


def _check_stream(stream_arn: str) -> None:
    from moto.dynamodb.exceptions import ResourceNotFoundException
    from moto.kinesis.models import kinesis_backends

    parts = stream_arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "kinesis":
        raise ResourceNotFoundException(f"Requested resource not found: Stream: {stream_arn} not found")
    if not any(s.arn == stream_arn for s in kinesis_backends[parts[4]][parts[3]].streams.values()):
        raise ResourceNotFoundException(f"Requested resource not found: Stream: {stream_arn} not found")


def enable(table_name: str, stream_arn: str, *, region: str, precision: str = "MILLISECOND",
           account: str = DEFAULT_ACCOUNT) -> dict[str, Any]:
    """EnableKinesisStreamingDestination. Returns the API response (status ENABLING).

    The emulator activates at once: DescribeKinesisStreamingDestination shows ACTIVE.
    One ACTIVE destination per table (ResourceInUseException otherwise).
    """
    from moto.dynamodb.exceptions import ResourceInUseException

    with EMULATOR_LOCK:
        _table(account, region, table_name)
        prec = _check_precision(precision)
        _check_stream(stream_arn)
        st = REGISTRY.state((account, region, table_name))
        if st.active() is not None:
            raise ResourceInUseException(
                f"Table {table_name} already has an active Kinesis streaming destination: "
                f"{st.active().stream_arn}")  # type: ignore[union-attr]
        st.destinations[stream_arn] = _Destination(stream_arn, prec)
    return {"TableName": table_name, "StreamArn": stream_arn, "DestinationStatus": "ENABLING",
            "EnableKinesisStreamingConfiguration": {"ApproximateCreationDateTimePrecision": prec}}


def describe(table_name: str, *, region: str, account: str = DEFAULT_ACCOUNT) -> dict[str, Any]:
    """DescribeKinesisStreamingDestination."""
    with EMULATOR_LOCK:
        _table(account, region, table_name)
        st = REGISTRY.tables.get((account, region, table_name))
        dests = list(st.destinations.values()) if st else []
        return {"TableName": table_name, "KinesisDataStreamDestinations": [
            {"StreamArn": d.stream_arn, "DestinationStatus": d.status,
             "ApproximateCreationDateTimePrecision": d.precision} for d in dests]}


def _existing(table_name: str, stream_arn: str, region: str, account: str) -> tuple[_TableState, _Destination]:
    from moto.dynamodb.exceptions import ResourceNotFoundException

    _table(account, region, table_name)
    st = REGISTRY.tables.get((account, region, table_name))
    dest = st.destinations.get(stream_arn) if st else None
    if st is None or dest is None or dest.status != "ACTIVE":
        raise ResourceNotFoundException(
            f"Requested resource not found: no active Kinesis streaming destination {stream_arn} "
            f"on table {table_name}")
    return st, dest


def disable(table_name: str, stream_arn: str, *, region: str, account: str = DEFAULT_ACCOUNT) -> dict[str, Any]:
    """DisableKinesisStreamingDestination: held records are released first, then none."""
    with EMULATOR_LOCK:
        st, dest = _existing(table_name, stream_arn, region, account)
        if st.held:
            REGISTRY.release(st)
        dest.status = "DISABLED"
        return {"TableName": table_name, "StreamArn": stream_arn, "DestinationStatus": "DISABLING",
                "EnableKinesisStreamingConfiguration": {"ApproximateCreationDateTimePrecision": dest.precision}}


def update(table_name: str, stream_arn: str, precision: str, *, region: str,
           account: str = DEFAULT_ACCOUNT) -> dict[str, Any]:
    """UpdateKinesisStreamingDestination (precision only, effective immediately)."""
    with EMULATOR_LOCK:
        _, dest = _existing(table_name, stream_arn, region, account)
        dest.precision = _check_precision(precision)
        return {"TableName": table_name, "StreamArn": stream_arn, "DestinationStatus": "UPDATING",
                "UpdateKinesisStreamingConfiguration": {"ApproximateCreationDateTimePrecision": dest.precision}}


def configure_faults(table_name: str, *, region: str, account: str = DEFAULT_ACCOUNT,
                     **faults: Any) -> FaultConfig:
    """Set the fault injection of one table (the table need not exist yet). Unknown names raise."""
    config = FaultConfig(**faults)
    with EMULATOR_LOCK:
        st = REGISTRY.state((account, region, table_name))
        if st.held and not config.reorders:
            REGISTRY.release(st)
        st.faults = config
        if config.seed is not None:
            st.rng.seed(config.seed)
    return config


def stats(table_name: str, *, region: str, account: str = DEFAULT_ACCOUNT) -> dict[str, int]:
    """Counters of one table's destination (all zero if never enabled)."""
    with EMULATOR_LOCK:
        st = REGISTRY.tables.get((account, region, table_name))
        return (st.stats if st else DestinationStats()).to_json()


def flush() -> None:
    """Release every record held by a reorder window now."""
    REGISTRY.flush_all()


def reset() -> None:
    """Forget every destination, fault setting and counter (held records are dropped)."""
    with EMULATOR_LOCK:
        REGISTRY.tables.clear()


def expire_item(table_name: str, key: dict[str, Any], *, region: str, account: str = DEFAULT_ACCOUNT) -> bool:
    """Delete one item as DynamoDB TTL does (REMOVE record, service userIdentity). False if absent."""
    from moto.dynamodb.models import dynamodb_backends

    with EMULATOR_LOCK:
        backend = dynamodb_backends[account][region]
        table = backend.get_table(table_name)
        h, r = backend.get_keys_value(table, key)
        _tls.ttl = True
        try:
            return table.delete_item(h, r) is not None
        finally:
            _tls.ttl = False


def expire_due(table_name: str, *, region: str, account: str = DEFAULT_ACCOUNT,
               now: float | None = None) -> list[dict[str, Any]]:
    """TTL-delete every item whose TTL attribute (a Number, epoch seconds) is <= ``now``.

    Needs TTL enabled on the table (UpdateTimeToLive). Returns the keys deleted.
    """
    now = time.time() if now is None else now
    with EMULATOR_LOCK:
        table = _table(account, region, table_name)
        attr = table.ttl.get("AttributeName")
        if table.ttl.get("TimeToLiveStatus") != "ENABLED" or not attr:
            return []
        due = []
        for item in table.all_items():
            value = item.attrs.get(attr)
            if value is not None and value.type == "N" and float(value.value) <= now:
                image = _image(item) or {}
                due.append({a: image[a] for a in (table.hash_key_attr, table.range_key_attr) if a})
        for key in due:
            expire_item(table_name, key, region=region, account=account)
        return due


# ---------------------------------------------------------------- moto handler operations

def _add_operations() -> None:
    from moto.dynamodb.responses import DynamoHandler

    def reply(payload: dict[str, Any]) -> tuple[str, dict[str, str]]:
        return json.dumps(payload), {"Content-Type": "application/x-amz-json-1.0"}

    def enable_kinesis_streaming_destination(self: Any) -> tuple[str, dict[str, str]]:
        conf = self.body.get("EnableKinesisStreamingConfiguration") or {}
        return reply(enable(self.body["TableName"], self.body["StreamArn"], region=self.region,
                                 account=self.current_account,
                                 precision=conf.get("ApproximateCreationDateTimePrecision", "MILLISECOND")))

    def describe_kinesis_streaming_destination(self: Any) -> tuple[str, dict[str, str]]:
        return reply(describe(self.body["TableName"], region=self.region, account=self.current_account))

    def disable_kinesis_streaming_destination(self: Any) -> tuple[str, dict[str, str]]:
        return reply(disable(self.body["TableName"], self.body["StreamArn"], region=self.region,
                                  account=self.current_account))

    def update_kinesis_streaming_destination(self: Any) -> tuple[str, dict[str, str]]:
        conf = self.body.get("UpdateKinesisStreamingConfiguration") or {}
        precision = conf.get("ApproximateCreationDateTimePrecision", "MILLISECOND")
        return reply(update(self.body["TableName"], self.body["StreamArn"], precision,
                                 region=self.region, account=self.current_account))

    for fn in (enable_kinesis_streaming_destination, describe_kinesis_streaming_destination,
               disable_kinesis_streaming_destination, update_kinesis_streaming_destination):
        _ORIGINALS.append((DynamoHandler, fn.__name__, None))
        setattr(DynamoHandler, fn.__name__, fn)


_installed = False


def install() -> None:
    """Hook moto's DynamoDB in this process and add the four API operations. Idempotent.

    Installs ``moto_fixes`` first (when present), so the ``transact_write_items`` wrapped
    here is the fixed one and its changes are published only on commit.
    """
    global _installed
    with EMULATOR_LOCK:
        if _installed:
            return
        try:
            from tablesync_local import moto_fixes
        except ImportError:
            log.warning("tablesync_local.moto_fixes not found: hooking unpatched moto")
        else:
            moto_fixes.install()
        _hook_models()
        _add_operations()
        _installed = True


def uninstall() -> None:
    """Undo :func:`install` (for in-process tests that must not leave moto patched) and reset.

    The moto fixes installed along the way stay installed.
    """
    global _installed
    with EMULATOR_LOCK:
        while _ORIGINALS:
            owner, name, original = _ORIGINALS.pop()
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        reset()
        _installed = False
