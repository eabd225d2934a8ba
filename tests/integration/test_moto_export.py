"""The emulator's exports, imports and read-unit counts, checked through the AWS API alone."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

REGION = "us-east-1"


def _table(client: Any, name: str) -> str:
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    client.update_continuous_backups(TableName=name,
                                     PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    return str(client.describe_table(TableName=name)["Table"]["TableArn"])


def _finished(client: Any, arn: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        desc: dict[str, Any] = client.describe_export(ExportArn=arn)["ExportDescription"]
        if desc["ExportStatus"] != "IN_PROGRESS":
            return desc
        time.sleep(0.02)  # polling the service, as a client of it must
    raise AssertionError("export did not finish")


@pytest.mark.usefixtures("moto")
def test_an_export_is_the_state_at_its_request_with_manifests_and_data_files() -> None:
    dynamodb, s3 = boto3.client("dynamodb", region_name=REGION), boto3.client("s3", region_name=REGION)
    arn = _table(dynamodb, "t")
    s3.create_bucket(Bucket="exports")
    for i in range(5):
        dynamodb.put_item(TableName="t", Item={"pk": {"S": f"k{i}"}, "v": {"N": "1"}, "b": {"B": b"\x00\xff"}})
    started = dynamodb.export_table_to_point_in_time(TableArn=arn, S3Bucket="exports", S3Prefix="x")
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "later"}})  # after the request: not in the export
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "k0"}, "v": {"N": "2"}})
    desc = _finished(dynamodb, started["ExportDescription"]["ExportArn"])

    assert desc["ExportStatus"] == "COMPLETED" and desc["ItemCount"] == 5
    assert desc["ExportArn"].startswith(f"{arn}/export/")
    assert desc["ExportTime"] <= desc["EndTime"]
    summary = json.loads(s3.get_object(Bucket="exports", Key=desc["ExportManifest"])["Body"].read())
    files = [json.loads(line) for line in
             s3.get_object(Bucket="exports", Key=summary["manifestFilesS3Key"])["Body"].read().splitlines()]
    items = {}
    for entry in files:
        body = gzip.decompress(s3.get_object(Bucket="exports", Key=entry["dataFileS3Key"])["Body"].read())
        for line in body.decode().splitlines():
            item = json.loads(line)["Item"]
            items[item["pk"]["S"]] = item
    assert sorted(items) == [f"k{i}" for i in range(5)]
    assert items["k0"]["v"] == {"N": "1"} and items["k3"]["b"] == {"B": "AP8="}


@pytest.mark.usefixtures("moto")
def test_exports_the_emulator_cannot_make_are_refused() -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    arn = _table(dynamodb, "t")
    for kwargs, code in (({"ExportFormat": "ION"}, "ValidationException"),
                         ({"ExportTime": time.time() - 3600}, "ValidationException"),
                         ({"ExportTime": time.time() + 3600}, "InvalidExportTimeException")):
        with pytest.raises(ClientError) as refused:
            dynamodb.export_table_to_point_in_time(TableArn=arn, S3Bucket="exports", **kwargs)
        assert refused.value.response["Error"]["Code"] == code


@pytest.mark.usefixtures("moto")
def test_read_units_are_counted_for_reads_and_not_for_writes() -> None:
    from tablesync_local.moto_fixes import export

    dynamodb = boto3.client("dynamodb", region_name=REGION)
    _table(dynamodb, "t")
    export.reset_read_units()
    for i in range(3):
        dynamodb.put_item(TableName="t", Item={"pk": {"S": f"k{i}"}, "body": {"S": "x" * 5000}},
                          ConditionExpression="attribute_not_exists(pk)")
    dynamodb.update_item(TableName="t", Key={"pk": {"S": "k0"}}, UpdateExpression="SET n = :n",
                         ExpressionAttributeValues={":n": {"N": "1"}})
    assert export.read_units("t") == 0, "writes (and their condition checks) are not reads"
    dynamodb.get_item(TableName="t", Key={"pk": {"S": "k1"}})
    assert export.read_units("t") == 2  # 5 KB: two 4 KB units
    dynamodb.get_item(TableName="t", Key={"pk": {"S": "absent"}})
    assert export.read_units("t") == 3  # a miss still costs one
    dynamodb.scan(TableName="t")
    assert export.read_units("t") == 3 + 4  # 15 KB read: four units
