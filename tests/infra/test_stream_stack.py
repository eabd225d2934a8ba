"""The stream stack: deployed into moto, plus its rendered properties moto ignores.

moto's CloudFormation creates the Kinesis stream (name, shard count, retention) and the KMS
key/alias, but it drops StreamModeDetails and StreamEncryption, and it cannot run the custom
resource (it would invoke the Lambda in Docker; moto also lacks EnableKinesisStreamingDestination).
So the deploy tests use ManageStreamingDestination=false, the dropped properties are checked on
the rendered template, and the custom resource's code is tested in test_streaming_destination.py.
"""

from __future__ import annotations

import boto3
import pytest

from tests.infra.conftest import Deploy
from tests.infra.policy import load, render

BASE = {"SourceTableName": "orders", "StreamName": "orders-changes", "ManageStreamingDestination": "false"}


def test_provisioned_stream_with_aws_managed_key(aws: boto3.Session, deploy: Deploy) -> None:
    stack = deploy("stream.yaml", {**BASE, "StreamMode": "PROVISIONED", "ShardCount": "3", "RetentionHours": "168"})

    summary = aws.client("kinesis").describe_stream_summary(StreamName="orders-changes")["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 3
    assert summary["RetentionPeriodHours"] == 168
    assert stack["OutputMap"]["StreamName"] == "orders-changes"
    assert stack["OutputMap"]["StreamArn"] == summary["StreamARN"]
    assert stack["OutputMap"]["KeyArn"] == "arn:aws:kms:us-east-1:123456789012:alias/aws/kinesis"
    assert stack["OutputMap"]["WorkerStreamKeyArn"] == "none"
    # The custom resource and its function are conditioned out, not silently skipped.
    assert not {"StreamingDestination", "DestinationFunction"} & set(stack["ResourceMap"])
    assert aws.client("lambda").list_functions()["Functions"] == []


def test_customer_managed_key_is_created_and_exported(aws: boto3.Session, deploy: Deploy) -> None:
    stack = deploy("stream.yaml", {**BASE, "KeyMode": "CUSTOMER_MANAGED"})

    # moto stores a CloudFormation KeyPolicy object unserialised and then fails to parse it in
    # DescribeKey, so the key is read from moto's backend; aliases come through the API.
    from moto.kms.models import kms_backends

    keys = list(kms_backends["123456789012"]["us-east-1"].keys.values())
    assert len(keys) == 1
    key = keys[0]
    assert stack["OutputMap"]["KeyArn"] == key.arn
    assert stack["OutputMap"]["WorkerStreamKeyArn"] == key.arn
    assert key.key_rotation_status is True
    assert key.policy["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in aws.client("kms").list_aliases()["Aliases"]}
    assert aliases["alias/tablesync/orders-changes"] == key.id


@pytest.mark.parametrize(
    ("mode", "key_mode", "shards", "key_id"),
    [
        ("ON_DEMAND", "AWS_MANAGED", None, "alias/aws/kinesis"),
        ("PROVISIONED", "CUSTOMER_MANAGED", "4", "<StreamKey.Arn>"),
    ],
)
def test_rendered_stream_mode_and_encryption(mode: str, key_mode: str, shards: str | None, key_id: str) -> None:
    params = {**BASE, "StreamMode": mode, "KeyMode": key_mode, "ShardCount": "4"}
    props = render("stream.yaml", params)["Resources"]["Stream"]["Properties"]

    assert props["StreamModeDetails"] == {"StreamMode": mode}
    assert props["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": key_id}
    assert props.get("ShardCount") == shards


def test_destination_custom_resource_asks_for_microseconds() -> None:
    resources = render("stream.yaml", {**BASE, "ManageStreamingDestination": "true"})["Resources"]

    destination = resources["StreamingDestination"]
    assert destination["Type"] == "Custom::KinesisStreamingDestination"
    assert destination["Properties"] == {
        "ServiceToken": "<DestinationFunction.Arn>",
        "TableName": "orders",
        "StreamArn": "<Stream.Arn>",
        "Precision": "MICROSECOND",
    }
    function = resources["DestinationFunction"]["Properties"]
    assert function["Runtime"] == "python3.12"
    # CloudFormation's inline ZipFile limit.
    assert len(function["Code"]["ZipFile"]) <= 4096


def test_retention_parameter_declares_the_kinesis_bounds() -> None:
    spec = load("stream.yaml")["Parameters"]["RetentionHours"]
    assert (spec["Type"], spec["MinValue"], spec["MaxValue"], spec["Default"]) == ("Number", 24, 8760, 24)
