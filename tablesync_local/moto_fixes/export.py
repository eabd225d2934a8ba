"""DynamoDB export/import fixes, and a count of the read units each table served.

moto 5.2.5 has ExportTableToPointInTime and ImportTable, but not as AWS does them:

* its export walks the live table in a thread (a write racing it changes what is exported, or
  breaks the walk), so it is of no point in time; it has no ``ExportTime``, ``StartTime``,
  ``EndTime`` or ``ExportManifest``, ignores ``ExportTime`` and ``ExportFormat``, writes one data
  file and no manifests, and its ARN is not ``table/<name>/export/<id>``;
* its import creates the target table at once and fills it while writes are accepted, and reads
  every object under the prefix with a JSON parser that does not take DynamoDB's JSON lines.

AWS (developer guide, "DynamoDB data export to Amazon S3" and "DynamoDB data import from Amazon
S3"): an export is a snapshot of the table at ``ExportTime`` (the request time by default, any time
in the point-in-time-recovery window otherwise), taken without consuming read capacity, written
under ``<S3Prefix>/AWSDynamoDB/<ExportId>/`` as ``manifest-summary.json``, ``manifest-files.json``
(one JSON object per data file, with ``dataFileS3Key`` and ``itemCount``) and ``data/*.json.gz``
(gzipped lines ``{"Item": {...}}``). ImportTable creates a *new* table (ResourceInUseException if
the name exists) that is ``CREATING`` (not writable: ResourceNotFoundException) until every item
is in; items it cannot read are counted in ``ErrorCount`` and skipped.

The emulator can only export the present: an ``ExportTime`` more than a few seconds before the
request is refused with a ValidationException that says so.

Read units: DynamoDB charges a table for GetItem (one unit per 4 KB of the item, at least one), Query
and Scan (one unit per 4 KB of the items read); an export charges none. :func:`read_units` returns
what each table served here, so a test can assert that a seeding read nothing from the source.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tablesync_local.items import item_size
from tablesync_local.moto_fixes import dynamodb as _ddb
from tablesync_local.moto_fixes._patch import fix

ITEMS_PER_DATA_FILE = 2_000
"""A small file size, so that even small test tables export into several data files."""
EXPORT_TIME_TOLERANCE = 5.0

_UNITS_LOCK = threading.Lock()
_read_units: dict[tuple[str, str, str], float] = defaultdict(float)


def read_units(table: str, account_id: str = "123456789012", region: str = "us-east-1") -> float:
    """Read units DynamoDB would have charged `table` for the reads served since the last reset."""
    with _UNITS_LOCK:
        return _read_units.get((account_id, region, table), 0.0)


def reset_read_units() -> None:
    with _UNITS_LOCK:
        _read_units.clear()


def _charge(backend: Any, table: str, items: list[Any], minimum: float) -> None:
    size = sum(item_size(item.attrs) for item in items)
    with _UNITS_LOCK:
        _read_units[(backend.account_id, backend.region_name, table)] += max(minimum, math.ceil(size / 4096))


def _moto_lock() -> Any:
    """The emulator's lock around moto state (held by the server around every request): the export's
    and the import's background threads take it for each touch of moto's S3 and DynamoDB state."""
    from tablesync_local.destination import EMULATOR_LOCK

    return EMULATOR_LOCK


def _client_error(code: str, message: str) -> Exception:
    from moto.dynamodb.exceptions import MockValidationException

    if code == "ValidationException":
        return MockValidationException(message)
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException

    return DynamodbException(ERROR_TYPE_PREFIX + code, message)


# --------------------------------------------------------------------------------------------- export


class _Export(threading.Thread):
    """One export: the items are copied at request time (the snapshot), the files written after."""

    def __init__(self, backend: Any, table: Any, items: list[str], bucket: str, prefix: str,
                 owner: str, export_format: str, export_type: str, export_time: float) -> None:
        super().__init__(daemon=True)
        self.backend = backend
        self.table = table
        self.items = items
        self.start_time = time.time()
        self.export_time = export_time
        self.end_time: float | None = None
        self.export_id = f"{int(self.start_time * 1000):014d}-{uuid.uuid4().hex[:8]}"
        self.arn = f"{table.table_arn}/export/{self.export_id}"
        self.s3_bucket = bucket
        self.s3_prefix = prefix
        self.owner = owner
        self.export_format = export_format
        self.export_type = export_type
        self.status = "IN_PROGRESS"
        self.failure_code: str | None = None
        self.failure_message: str | None = None
        self.item_count = len(items)
        self.billed_bytes = 0
        root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.folder = f"{root}AWSDynamoDB/{self.export_id}"
        self.manifest = f"{self.folder}/manifest-summary.json"

    def run(self) -> None:
        from moto.s3.models import s3_backends
        from moto.utilities.utils import get_partition

        try:
            s3 = s3_backends[self.owner][get_partition(self.backend.region_name)]
            with _moto_lock():
                s3.get_bucket(self.s3_bucket)
        except Exception:  # noqa: BLE001 - the service reports this on the export, not the request
            self._fail("S3NoSuchBucket", "The specified bucket does not exist")
            return
        try:
            self._write(s3)
        except Exception as exc:  # noqa: BLE001 - reported on the export, as the service does
            self._fail("UNKNOWN", str(exc))

    def _fail(self, code: str, message: str) -> None:
        self.failure_code, self.failure_message = code, message
        self.end_time = time.time()
        self.status = "FAILED"

    def _write(self, s3: Any) -> None:
        files = []
        for start in range(0, max(1, len(self.items)), ITEMS_PER_DATA_FILE):
            chunk = self.items[start:start + ITEMS_PER_DATA_FILE]
            if not chunk:
                break
            lines = "".join(item + "\n" for item in chunk)
            body = gzip.compress(lines.encode("utf-8"))
            key = f"{self.folder}/data/{uuid.uuid4().hex}.json.gz"
            with _moto_lock():
                s3.put_object(self.s3_bucket, key, body)
            self.billed_bytes += len(lines)
            files.append({"itemCount": len(chunk), "md5Checksum": hashlib.md5(body).hexdigest(),  # noqa: S324
                          "dataFileS3Key": key})
        files_key = f"{self.folder}/manifest-files.json"
        with _moto_lock():
            s3.put_object(self.s3_bucket, files_key, "".join(json.dumps(f) + "\n" for f in files).encode())
        self.end_time = time.time()
        summary = {"version": "2020-06-30", "exportArn": self.arn, "startTime": _iso(self.start_time),
                   "endTime": _iso(self.end_time), "tableArn": self.table.table_arn,
                   "exportTime": _iso(self.export_time), "s3Bucket": self.s3_bucket, "s3Prefix": self.s3_prefix,
                   "manifestFilesS3Key": files_key, "billedSizeBytes": self.billed_bytes,
                   "itemCount": self.item_count, "outputFormat": self.export_format,
                   "exportType": self.export_type}
        with _moto_lock():
            s3.put_object(self.s3_bucket, self.manifest, json.dumps(summary).encode())
        self.items = []
        self.status = "COMPLETED"

    def response(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ExportArn": self.arn, "ExportStatus": self.status, "StartTime": self.start_time,
            "ExportTime": self.export_time, "TableArn": self.table.table_arn, "TableId": self.table.table_arn,
            "S3Bucket": self.s3_bucket, "S3BucketOwner": self.owner, "S3Prefix": self.s3_prefix,
            "ExportFormat": self.export_format, "ExportType": self.export_type,
        }
        if self.status == "COMPLETED":
            out.update(EndTime=self.end_time, ExportManifest=self.manifest, ItemCount=self.item_count,
                       BilledSizeBytes=self.billed_bytes)
        if self.status == "FAILED":
            out.update(EndTime=self.end_time, FailureCode=self.failure_code, FailureMessage=self.failure_message)
        return out


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def _epoch(value: Any) -> float | None:
    """A request timestamp as epoch seconds: moto parses it to a datetime, or leaves the wire number."""
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _export_response(self: Any) -> Any:
    from moto.core.responses import ActionResult
    from moto.dynamodb.models.utilities import dynamo_json_dump

    body = self.body
    backend = self.dynamodb_backend
    table = next((t for t in backend.tables.values() if t.table_arn == body.get("TableArn")), None)
    if table is None:
        raise _client_error("TableNotFoundException", f"Table not found: {body.get('TableArn')}")
    pitr = table.continuous_backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"]
    if pitr != "ENABLED":
        raise _client_error("PointInTimeRecoveryUnavailableException",
                            f"Point in time recovery is not enabled for table '{table.name}'")
    export_format = body.get("ExportFormat", "DYNAMODB_JSON")
    if export_format != "DYNAMODB_JSON":
        raise _client_error("ValidationException", f"the emulator exports DYNAMODB_JSON only, not {export_format}")
    export_type = body.get("ExportType", "FULL_EXPORT")
    if export_type != "FULL_EXPORT":
        raise _client_error("ValidationException", f"the emulator makes FULL_EXPORT exports only, not {export_type}")
    now = time.time()
    export_time = _epoch(body.get("ExportTime", now))
    if export_time is None:
        raise _client_error("ValidationException", f"ExportTime is not a time: {body.get('ExportTime')!r}")
    if export_time > now + EXPORT_TIME_TOLERANCE:
        raise _client_error("InvalidExportTimeException", "ExportTime is in the future")
    if export_time < now - EXPORT_TIME_TOLERANCE:
        raise _client_error("ValidationException", "the emulator can only export the table's present state: "
                            "omit ExportTime (or give the current time)")
    # 1 the snapshot: every item as of now, copied while no write can land (the emulator's write lock)
    with _ddb._WRITE_LOCK:  # noqa: SLF001 - the emulator's own lock, shared on purpose
        items = [dynamo_json_dump(item.to_json(root_attr_name="Item")) for item in table.all_items()]
    export = _Export(backend, table, items, body["S3Bucket"], body.get("S3Prefix") or "",
                     body.get("S3BucketOwner") or backend.account_id, export_format, export_type, export_time)
    backend.table_exports[export.arn] = export
    export.start()  # 2 the files, in the background (the caller polls DescribeExport)
    return ActionResult({"ExportDescription": export.response()})


# --------------------------------------------------------------------------------------------- import


def _make_import(orig: Callable[..., Any]) -> Callable[..., Any]:
    def import_table(self: Any, **kwargs: Any) -> Any:
        if kwargs["table_name"] in self.tables:
            raise _client_error("ResourceInUseException", f"Table already exists: {kwargs['table_name']}")
        return orig(self, **kwargs)

    return import_table


def _process_s3_files(self: Any, s3_backend: Any, bucket: Any) -> None:
    """Build the table out of sight, publish it when every item is in (AWS: CREATING until then)."""
    from moto.dynamodb.models import dynamodb_backends

    dynamo = dynamodb_backends[self.account_id][self.region_name]
    with _moto_lock(), _ddb._WRITE_LOCK:  # noqa: SLF001
        self.table = dynamo.create_table(
            name=self.table_name, billing_mode=self.billing_mode, throughput=self.throughput,
            schema=self.key_schema, global_indexes=self.global_indexes, indexes=None, attr=self.attrs,
            sse_specification=None, streams=None, tags=[], deletion_protection_enabled=False,
            warm_throughput=None)
        dynamo.tables.pop(self.table_name)
    with _moto_lock():
        keys, _, _, _ = s3_backend.list_objects(bucket, prefix=self.s3_source.get("S3KeyPrefix"), delimiter=None,
                                                marker=None, max_keys=None)
        objects = [(key.name, key.value) for key in keys]
    for name, raw in objects:  # into the unpublished table: nothing else can reach it
        try:
            text = (gzip.decompress(raw) if self.compression_type == "GZIP" else raw).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error_count += 1
            self.failure_message = f"{name}: {exc}"
            continue
        for line in text.splitlines():
            if not line.strip():
                continue
            self.processed_count += 1
            self.processed_bytes += len(line)
            try:
                self.table.put_item(item_attrs=json.loads(line)["Item"])
                self.imported_count += 1
            except Exception as exc:  # noqa: BLE001 - counted and skipped, as the service does
                self.error_count += 1
                self.failure_message = str(exc)
    with _moto_lock(), _ddb._WRITE_LOCK:  # noqa: SLF001
        if self.table_name in dynamo.tables:
            self.status, self.failure_code = "FAILED", "ResourceInUseException"
            self.failure_message = f"Table already exists: {self.table_name}"
            return
        dynamo.tables[self.table_name] = self.table
    self.status = "COMPLETED"


# --------------------------------------------------------------------------------------------- reads


_reading = threading.local()
"""``on`` while a read request (GetItem, BatchGetItem, TransactGetItems, Query, Scan) is served: the
backend's own get_item also serves the condition checks of writes, which are not charged as reads."""


def _make_read_request(orig: Callable[..., Any]) -> Callable[..., Any]:
    def request(self: Any, *args: Any, **kwargs: Any) -> Any:
        _reading.on = True
        try:
            return orig(self, *args, **kwargs)
        finally:
            _reading.on = False

    return request


def _make_get(orig: Callable[..., Any]) -> Callable[..., Any]:
    def get_item(self: Any, table_name: str, *args: Any, **kwargs: Any) -> Any:
        item = orig(self, table_name, *args, **kwargs)
        if getattr(_reading, "on", False):
            _charge(self, table_name, [item] if item is not None else [], 1)
        return item

    return get_item


def _make_many(orig: Callable[..., Any]) -> Callable[..., Any]:
    def read(self: Any, table_name: str, *args: Any, **kwargs: Any) -> Any:
        answer = orig(self, table_name, *args, **kwargs)
        if getattr(_reading, "on", False):
            _charge(self, table_name, list(answer[0]), 1)
        return answer

    return read


def install() -> None:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table_import import TableImport
    from moto.dynamodb.responses import DynamoHandler

    fix(DynamoHandler, "export_table_to_point_in_time", lambda _orig: _export_response)
    fix(DynamoDBBackend, "import_table", _make_import)
    fix(TableImport, "_process_s3_files", lambda _orig: _process_s3_files)
    for request in ("get_item", "batch_get_item", "transact_get_items", "query", "scan"):
        fix(DynamoHandler, request, _make_read_request)
    fix(DynamoDBBackend, "get_item", _make_get)
    fix(DynamoDBBackend, "query", _make_many)
    fix(DynamoDBBackend, "scan", _make_many)
