"""Least privilege of the worker role, on the rendered policy (every optional part switched on)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.policy import moto_enforcement_policy, render, worker_actions, worker_statements

EVERYTHING_ON = {
    "RetrievalMode": "FANOUT",
    "CreateLedgerTables": "true",
    "CrossAccountRoleArns": "arn:aws:iam::222233334444:role/tablesync-writer",
    "StreamKeyArn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "KeyName": "ops",
}
EVERYTHING_OFF = {
    "RetrievalMode": "POLLING",
    "TargetTableArns": "",
    "LedgerTableArns": "",
    "EnableSessionManager": "false",
}
# Statements AWS gives no resource type to, hence "*": each must stay exactly this narrow.
STAR_ALLOWED = {
    "PutMetricDataHasNoResourceType": ["cloudwatch:PutMetricData"],
    "SessionManagerHasNoResourceType": [
        "ssm:UpdateInstanceInformation",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
    ],
}


def _resources(statement: dict[str, Any]) -> list[str]:
    res = statement["Resource"]
    return [res] if isinstance(res, str) else res


def _actions(statement: dict[str, Any]) -> list[str]:
    act = statement["Action"]
    return [act] if isinstance(act, str) else act


@pytest.mark.parametrize("params", [EVERYTHING_ON, {}, EVERYTHING_OFF], ids=["all-on", "defaults", "all-off"])
def test_no_star_resource_except_where_aws_requires_it(params: dict[str, str]) -> None:
    for statement in worker_statements(params):
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        if "*" in _resources(statement):
            assert _resources(statement) == ["*"]
            assert _actions(statement) == STAR_ALLOWED[statement["Sid"]], statement["Sid"]


def test_put_metric_data_is_limited_to_our_namespaces() -> None:
    [metrics] = [s for s in worker_statements() if s["Sid"] == "PutMetricDataHasNoResourceType"]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": ["tablesync", "tablesync-orders"]}}


@pytest.mark.parametrize("params", [EVERYTHING_ON, {}], ids=["all-on", "defaults"])
def test_no_action_wildcards(params: dict[str, str]) -> None:
    for action in worker_actions(params):
        service, name = action.split(":")
        assert service and name and "*" not in action and "?" not in action, action


def test_every_resource_is_this_apps_own() -> None:
    by_sid = {s["Sid"]: _resources(s) for s in worker_statements(EVERYTHING_ON)}
    table = "arn:aws:dynamodb:us-east-1:123456789012:table/tablesync-orders"
    stream = "arn:aws:kinesis:us-east-1:123456789012:stream/orders-changes"
    assert by_sid["ReadStream"] == [stream]
    assert by_sid["FanOutRegisterConsumer"] == [stream]
    assert by_sid["FanOutSubscribe"] == [f"{stream}/consumer/tablesync-orders:*"]
    assert by_sid["KclLeaseTable"] == [table]
    assert by_sid["KclMetadataTables"] == [f"{table}-CoordinatorState", f"{table}-WorkerMetricStats"]
    assert by_sid["KclLeaseTableIndex"] == [f"{table}/index/*"]
    assert by_sid["WriteTargetTables"] == ["arn:aws:dynamodb:eu-west-1:123456789012:table/orders-eu"]
    assert (
        by_sid["WriteLedgerTables"]
        == by_sid["CreateLedgerTables"]
        == ["arn:aws:dynamodb:eu-west-1:123456789012:table/tablesync-ledger"]
    )
    assert by_sid["AssumeTargetAccountRoles"] == [EVERYTHING_ON["CrossAccountRoleArns"]]
    assert by_sid["DecryptStream"] == [EVERYTHING_ON["StreamKeyArn"]]
    assert by_sid["DeadLetterPayloads"] == ["<DeadLetterPayloads.Arn>/tablesync/dead-letters/*"]
    assert by_sid["CompleteOwnTerminationHook"] == [
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/tablesync-orders-workers"
    ]
    assert by_sid["ReadOwnConfig"] == [
        "arn:aws:ssm:us-east-1:123456789012:parameter/tablesync/tablesync-orders/kcl.properties",
        "arn:aws:ssm:us-east-1:123456789012:parameter/tablesync/tablesync-orders/targets.toml",
    ]


def test_optional_permissions_vanish_when_their_parameter_is_empty() -> None:
    sids = {s["Sid"] for s in worker_statements(EVERYTHING_OFF)}
    assert sids == {
        "ReadStream",
        "KclLeaseTable",
        "KclMetadataTables",
        "KclLeaseTableIndex",
        "DeadLetterQueue",
        "DeadLetterPayloads",
        "PutMetricDataHasNoResourceType",
        "ShipLogs",
        "ReadOwnConfig",
        "ReadRelease",
        "CompleteOwnTerminationHook",
    }
    actions = set(worker_actions(EVERYTHING_OFF))
    assert not actions & {"sts:AssumeRole", "kms:Decrypt", "kms:GenerateDataKey", "kinesis:SubscribeToShard",
                          "dynamodb:BatchWriteItem"}


def test_only_ledgers_may_be_created_and_only_when_asked() -> None:
    def creatable(params: dict[str, str]) -> set[str]:
        return {r for s in worker_statements(params) if "dynamodb:CreateTable" in _actions(s) for r in _resources(s)}

    kcl = {
        "arn:aws:dynamodb:us-east-1:123456789012:table/tablesync-orders",
        "arn:aws:dynamodb:us-east-1:123456789012:table/tablesync-orders-CoordinatorState",
        "arn:aws:dynamodb:us-east-1:123456789012:table/tablesync-orders-WorkerMetricStats",
    }
    assert creatable({}) == kcl
    assert creatable({"CreateLedgerTables": "true"}) == kcl | {
        "arn:aws:dynamodb:eu-west-1:123456789012:table/tablesync-ledger"
    }


def test_the_policy_is_the_only_permission_source_of_the_role() -> None:
    role = render(
        "worker.yaml",
        {
            **dict.fromkeys(["AppName"], "tablesync-orders"),
            "StreamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
            "ReleaseArtifact": "s3://b-1/r.tar.gz",
            "ReleaseSha256": "0" * 64,
            "VpcId": "vpc-1",
            "SubnetIds": "subnet-1",
            "ImageId": "ami-1",
        },
    )["Resources"]["WorkerRole"]["Properties"]
    assert "ManagedPolicyArns" not in role and "Policies" not in role
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]


def test_moto_enforcement_policy_allows_exactly_the_worker_actions() -> None:
    document = moto_enforcement_policy(EVERYTHING_ON)
    [statement] = document["Statement"]
    assert statement["Resource"] == "*" and "Condition" not in statement
    assert statement["Action"] == worker_actions(EVERYTHING_ON)
    assert {"kinesis:GetRecords", "dynamodb:DeleteItem", "sqs:SendMessage"} <= set(statement["Action"])
