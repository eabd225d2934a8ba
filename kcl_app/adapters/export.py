"""DynamoDB table exports in S3 and ImportTable: the one module that knows their APIs and file layout.

An export (ExportTableToPointInTime, format DYNAMODB_JSON) lives under
``<prefix>/AWSDynamoDB/<ExportId>/``: ``manifest-summary.json`` names ``manifest-files.json``, which
lists one data file a line (``dataFileS3Key``); each data file is gzipped JSON lines
``{"Item": {<attribute>: {<type>: <value>}}}`` with binary values in base64. Every file is input
from S3 and untrusted: a data file key outside the export's folder is refused, a line that is not
an item is reported (never guessed at).
"""

from __future__ import annotations

import gzip
import json
import posixpath
import zlib
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.retry import describe
from kcl_app.core.attrs import item_from_wire
from kcl_app.core.retry import READS, Backoff, RetryBudgetSpent, until
from kcl_app.ports import (
    Clock,
    ExportLine,
    ExportProblem,
    ExportState,
    ImportState,
    KeyAttribute,
    PitrDisabled,
)

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_dynamodb.type_defs import S3BucketSourceTypeDef
    from types_boto3_s3 import S3Client

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
ENABLE_PITR = ("aws dynamodb update-continuous-backups --table-name {table} "
               "--point-in-time-recovery-specification PointInTimeRecoveryEnabled=true")


def _call(clock: Clock, what: str, fn: Callable[..., Any], budget: float = 60.0, **kwargs: Any) -> Any:
    """Call an AWS API, retrying transient errors for `budget` seconds; others raise ExportProblem."""
    try:
        return until(clock, clock.monotonic() + budget, lambda: fn(**kwargs), describe,
                     backoff=Backoff(base=0.1, cap=5.0), retry_on=READS)
    except RetryBudgetSpent as spent:
        cause = spent.cause
        raise ExportProblem(f"{what}: {describe(cause).code if cause else 'no answer'}"
                            f"{': ' + describe(cause).message if cause and describe(cause).message else ''}"
                            ) from cause


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


class S3Exports:
    """TableExports on the source account: a DynamoDB client for the source table, an S3 client that
    can read the export bucket."""

    def __init__(self, dynamodb: DynamoDBClient, s3: S3Client, clock: Clock) -> None:
        self.dynamodb = dynamodb
        self.s3 = s3
        self.clock = clock

    def key_schema(self, table: str) -> tuple[KeyAttribute, ...]:
        desc = _call(self.clock, f"cannot describe table {table!r}", self.dynamodb.describe_table,
                     TableName=table)["Table"]
        types = {d["AttributeName"]: d["AttributeType"] for d in desc.get("AttributeDefinitions", [])}
        ordered = sorted(desc["KeySchema"], key=lambda k: 0 if k["KeyType"] == "HASH" else 1)
        return tuple(KeyAttribute(k["AttributeName"], k["KeyType"], types[k["AttributeName"]]) for k in ordered)

    def start(self, table: str, bucket: str, prefix: str, bucket_owner: str | None = None) -> ExportState:
        arn = _call(self.clock, f"cannot describe table {table!r}", self.dynamodb.describe_table,
                    TableName=table)["Table"]["TableArn"]
        kwargs: dict[str, Any] = {"TableArn": arn, "S3Bucket": bucket, "ExportFormat": "DYNAMODB_JSON",
                                  "ExportType": "FULL_EXPORT"}
        if prefix:
            kwargs["S3Prefix"] = prefix
        if bucket_owner:
            kwargs["S3BucketOwner"] = bucket_owner
        try:
            answer = self.dynamodb.export_table_to_point_in_time(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            info = describe(exc)
            if info.code == "PointInTimeRecoveryUnavailableException":
                raise PitrDisabled(
                    f"table {table!r} has no point-in-time recovery, which an export is made from (an export "
                    f"reads the recovery data, not the table: no read units). Enable it with "
                    f"`{ENABLE_PITR.format(table=table)}` (or PointInTimeRecoverySpecification in its "
                    "CloudFormation resource) and rerun") from exc
            raise ExportProblem(f"cannot export table {table!r} to s3://{bucket}/{prefix}: {info.code}: "
                                f"{info.message}") from exc
        return self._state(answer["ExportDescription"], prefix)

    def describe(self, export: ExportState) -> ExportState:
        answer = _call(self.clock, f"cannot describe export {export.arn}", self.dynamodb.describe_export,
                       ExportArn=export.arn)
        return self._state(answer["ExportDescription"], None, export.folder)

    @staticmethod
    def _state(desc: Mapping[str, Any], prefix: str | None, folder: str = "") -> ExportState:
        arn = str(desc["ExportArn"])
        manifest = desc.get("ExportManifest")
        if manifest:
            folder = posixpath.dirname(str(manifest))
        elif not folder:
            root = (prefix or desc.get("S3Prefix") or "").strip("/")
            folder = posixpath.join(root, "AWSDynamoDB", arn.rsplit("/", 1)[-1]) if root else \
                f"AWSDynamoDB/{arn.rsplit('/', 1)[-1]}"
        status = str(desc.get("ExportStatus", "IN_PROGRESS"))
        if status not in ("IN_PROGRESS", "COMPLETED", "FAILED"):
            status = "FAILED"
        failure = desc.get("FailureMessage") or desc.get("FailureCode")
        items = desc.get("ItemCount")
        return ExportState(arn, cast(Literal["IN_PROGRESS", "COMPLETED", "FAILED"], status), str(desc["S3Bucket"]),
                           folder, _epoch(desc.get("ExportTime")), int(items) if items is not None else None,
                           str(failure) if failure else None)

    def _get(self, export: ExportState, key: str) -> Any:
        return _call(self.clock, f"cannot read s3://{export.bucket}/{key}", self.s3.get_object,
                     Bucket=export.bucket, Key=key)["Body"]

    def _json(self, export: ExportState, key: str) -> list[Any]:
        raw = self._get(export, key).read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ExportProblem(f"s3://{export.bucket}/{key} is larger than a manifest can be")
        try:
            text = raw.decode("utf-8")
            if key.endswith("manifest-summary.json"):
                return [json.loads(text)]
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise ExportProblem(f"s3://{export.bucket}/{key} is not a manifest: {exc}") from exc

    def data_files(self, export: ExportState) -> list[str]:
        if export.status != "COMPLETED":
            raise ExportProblem(f"export {export.arn} is {export.status}, not COMPLETED")
        (summary,) = self._json(export, f"{export.folder}/manifest-summary.json")
        files_key = summary.get("manifestFilesS3Key") if isinstance(summary, dict) else None
        if not isinstance(files_key, str) or not self._inside(export, files_key):
            raise ExportProblem(f"the manifest of export {export.arn} names no files manifest inside "
                                f"{export.folder}/ ({files_key!r})")
        keys = []
        for entry in self._json(export, files_key):
            key = entry.get("dataFileS3Key") if isinstance(entry, dict) else None
            if not isinstance(key, str) or not self._inside(export, key):
                raise ExportProblem(f"{files_key} lists a data file outside {export.folder}/: {key!r}")
            keys.append(key)
        return keys

    @staticmethod
    def _inside(export: ExportState, key: str) -> bool:
        return key.startswith(export.folder + "/") and ".." not in key.split("/")

    def lines(self, export: ExportState, data_file: str) -> Iterator[ExportLine]:
        body = self._get(export, data_file)
        try:
            for number, raw in enumerate(gzip.GzipFile(fileobj=body), start=1):
                if not raw.strip():
                    continue
                where = f"{data_file}:{number}"
                try:
                    doc = json.loads(raw.decode("utf-8"))
                    if not isinstance(doc, dict) or not isinstance(doc.get("Item"), dict):
                        raise ValueError('not an object with an "Item"')
                    yield ExportLine(where, item_from_wire(doc["Item"], "Item"))
                except ValueError as exc:  # also UnicodeDecodeError, and item_from_wire's refusals
                    yield ExportLine(where, None, str(exc)[:300])
        except (OSError, EOFError, zlib.error, BotoCoreError) as exc:
            raise ExportProblem(f"cannot read data file s3://{export.bucket}/{data_file}: {exc}") from exc


class DynamoImports:
    """TableImports on the target's account and region (the target's own DynamoDB client)."""

    def __init__(self, dynamodb: DynamoDBClient, clock: Clock) -> None:
        self.dynamodb = dynamodb
        self.clock = clock

    def exists(self, table: str) -> bool:
        try:
            self.dynamodb.describe_table(TableName=table)
            return True
        except ClientError as exc:
            if describe(exc).code == "ResourceNotFoundException":
                return False
            raise ExportProblem(f"cannot describe table {table!r}: {describe(exc).code}") from exc

    def holds_items(self, table: str) -> bool:
        page = _call(self.clock, f"cannot read table {table!r}", self.dynamodb.scan, TableName=table, Limit=1)
        return bool(page.get("Items")) or "LastEvaluatedKey" in page

    def start(self, export: ExportState, table: str, key: tuple[KeyAttribute, ...],
              bucket_owner: str | None = None) -> ImportState:
        source: S3BucketSourceTypeDef = {"S3Bucket": export.bucket, "S3KeyPrefix": f"{export.folder}/data/"}
        if bucket_owner:
            source["S3BucketOwner"] = bucket_owner
        try:
            answer = self.dynamodb.import_table(
                S3BucketSource=source, InputFormat="DYNAMODB_JSON", InputCompressionType="GZIP",
                TableCreationParameters={
                    "TableName": table, "BillingMode": "PAY_PER_REQUEST",
                    "AttributeDefinitions": [{"AttributeName": k.name, "AttributeType": k.attribute_type}
                                             for k in key],
                    "KeySchema": [{"AttributeName": k.name, "KeyType": k.key_type} for k in key]})
        except (ClientError, BotoCoreError) as exc:
            info = describe(exc)
            raise ExportProblem(f"cannot import s3://{export.bucket}/{export.folder}/data/ into table {table!r}: "
                                f"{info.code}: {info.message}") from exc
        return self._state(answer["ImportTableDescription"])

    def describe(self, state: ImportState) -> ImportState:
        answer = _call(self.clock, f"cannot describe import {state.arn}", self.dynamodb.describe_import,
                       ImportArn=state.arn)
        return self._state(answer["ImportTableDescription"])

    @staticmethod
    def _state(desc: Mapping[str, Any]) -> ImportState:
        status = str(desc.get("ImportStatus", "IN_PROGRESS"))
        if status not in ("IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLING", "CANCELLED"):
            status = "FAILED"
        failure = desc.get("FailureMessage") or desc.get("FailureCode")
        return ImportState(str(desc["ImportArn"]),
                           cast(Literal["IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLING", "CANCELLED"], status),
                           int(desc.get("ProcessedItemCount", 0) or 0), int(desc.get("ImportedItemCount", 0) or 0),
                           int(desc.get("ErrorCount", 0) or 0), str(failure) if failure else None)
