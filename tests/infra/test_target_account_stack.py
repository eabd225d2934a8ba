"""The target-account stack deployed into moto (it supports every resource type used here,
but ignores the ledger's TimeToLiveSpecification, which is checked on the rendered template)."""

from __future__ import annotations

import boto3

from tests.infra.conftest import Deploy
from tests.infra.policy import load, render

WORKER_ROLE = "arn:aws:iam::111122223333:role/tablesync-worker"
TARGETS = "arn:aws:dynamodb:us-east-1:123456789012:table/orders,arn:aws:dynamodb:eu-west-1:123456789012:table/orders"


def _role_statements(aws: boto3.Session, role_arn: str) -> list[dict]:
    iam = aws.client("iam")
    name = role_arn.rsplit("/", 1)[1]
    out: list[dict] = []
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        out.extend(iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]["Statement"])
    return out


def test_role_trusts_only_the_worker_with_the_external_id(aws: boto3.Session, deploy: Deploy) -> None:
    stack = deploy(
        "target-account.yaml",
        {"WorkerRoleArn": WORKER_ROLE, "ExternalId": "ext-0a1b2c3d4e5f", "TargetTableArns": TARGETS},
    )

    role_arn = stack["OutputMap"]["WriterRoleArn"]
    role = aws.client("iam").get_role(RoleName=role_arn.rsplit("/", 1)[1])["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": WORKER_ROLE},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "ext-0a1b2c3d4e5f"}},
        }
    ]
    [statement] = _role_statements(aws, role_arn)
    assert statement["Resource"] == TARGETS.split(",")
    assert "dynamodb:CreateTable" not in statement["Action"]
    assert aws.client("dynamodb").list_tables()["TableNames"] == []
    assert "LedgerTableArn" not in stack["OutputMap"]


def test_created_ledger_has_the_agreed_schema_and_is_writable(aws: boto3.Session, deploy: Deploy) -> None:
    stack = deploy(
        "target-account.yaml",
        {
            "WorkerRoleArn": WORKER_ROLE,
            "ExternalId": "ext-0a1b2c3d4e5f",
            "TargetTableArns": TARGETS,
            "CreateLedgerTable": "true",
            "LedgerTableName": "orders-ledger",
            "LedgerTableArns": "arn:aws:dynamodb:eu-west-1:123456789012:table/orders-ledger",
        },
    )

    ddb = aws.client("dynamodb")
    table = ddb.describe_table(TableName="orders-ledger")["Table"]
    schema = load("target-account.yaml")["Mappings"]["LedgerSchema"]["Attributes"]
    assert (schema["PartitionKey"], schema["Expiry"]) == ("k", "exp")
    assert table["KeySchema"] == [{"AttributeName": "k", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "k", "AttributeType": "S"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # moto's CloudFormation ignores TimeToLiveSpecification: checked on the rendered template.
    rendered = render(
        "target-account.yaml",
        {
            "WorkerRoleArn": WORKER_ROLE,
            "ExternalId": "ext-0a1b2c3d4e5f",
            "TargetTableArns": TARGETS,
            "CreateLedgerTable": "true",
        },
    )
    ledger = rendered["Resources"]["LedgerTable"]
    assert ledger["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "exp", "Enabled": True}
    assert (ledger["DeletionPolicy"], ledger["UpdateReplacePolicy"]) == ("Retain", "Retain")
    assert stack["OutputMap"]["LedgerTableArn"] == table["TableArn"]

    resources = {
        r
        for s in _role_statements(aws, stack["OutputMap"]["WriterRoleArn"])
        for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
    }
    assert resources == set(TARGETS.split(",")) | {
        "arn:aws:dynamodb:eu-west-1:123456789012:table/orders-ledger",
        table["TableArn"],
    }
