"""The continuous verification's alarms (alarms.yaml, ContinuousVerify=true) and its systemd unit."""

from __future__ import annotations

import base64
import shlex
from pathlib import Path
from typing import Any

import boto3

from kcl_app.commands import build_parser
from tests.infra.policy import DEFAULT_WORKER_PARAMETERS, render
from tests.infra.test_alarms import PARAMS

UNIT = Path(__file__).resolve().parents[2] / "infra" / "systemd" / "tablesync-verify.service"


def _verify_alarms(enabled: str) -> dict[str, dict]:  # type: ignore[type-arg]
    resources = render("alarms.yaml", {**PARAMS, "ContinuousVerify": enabled})["Resources"]
    return {n: r["Properties"] for n, r in resources.items() if n.startswith("Verify")}


def test_verify_alarms_exist_only_when_the_verifier_runs() -> None:
    assert _verify_alarms("false") == {}
    alarms = _verify_alarms("true")
    assert set(alarms) == {"VerifyUnrepairedAlarmprodeu", "VerifyUnrepairedAlarmstagingus",
                           "VerifyBehindAlarmprodeu", "VerifyBehindAlarmstagingus"}
    unrepaired, behind = alarms["VerifyUnrepairedAlarmprodeu"], alarms["VerifyBehindAlarmstagingus"]
    assert (unrepaired["MetricName"], unrepaired["Statistic"], unrepaired["Threshold"]) == (
        "UnrepairedDivergences", "Sum", 0)
    assert unrepaired["Dimensions"] == [{"Name": "Target", "Value": "prod-eu"}]
    assert (behind["MetricName"], behind["TreatMissingData"]) == ("PassBehindSeconds", "breaching")
    assert behind["Dimensions"] == [{"Name": "Target", "Value": "staging.us"}]


def test_verify_alarms_are_accepted_by_put_metric_alarm(aws: boto3.Session) -> None:
    cloudwatch = aws.client("cloudwatch")
    alarms = _verify_alarms("true")
    for name, props in alarms.items():
        cloudwatch.put_metric_alarm(AlarmName=name, **{**props, "Threshold": float(props["Threshold"])})
    assert {a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]} == set(alarms)


def test_the_unit_runs_a_command_line_the_cli_accepts() -> None:
    lines = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and line[0] != "#")
    argv = shlex.split(lines["ExecStart"])
    assert argv[0].endswith("/tablesync")
    args = build_parser(["verify"]).parse_args(argv[1:])
    assert args.continuous and args.repair and args.state_dir == "/var/lib/tablesync/verify"
    assert lines["KillSignal"] == "SIGTERM" and lines["Restart"] == "always"


def test_verifier_stack_deploys_one_instance_with_a_read_and_repair_role(aws: boto3.Session, deploy: Any) -> None:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="verifier", Description="no inbound", VpcId=vpc)["GroupId"]
    source = "arn:aws:dynamodb:us-east-1:123456789012:table/orders"
    params = {"AppName": "tablesync-orders", "SourceTableArn": source,
              "TargetTableArns": "arn:aws:dynamodb:eu-west-1:123456789012:table/orders-eu",
              "LedgerTableArns": "arn:aws:dynamodb:eu-west-1:123456789012:table/tablesync-ledger",
              "ReleaseArtifact": DEFAULT_WORKER_PARAMETERS["ReleaseArtifact"],
              "ReleaseSha256": DEFAULT_WORKER_PARAMETERS["ReleaseSha256"], "SubnetIds": subnet,
              "SecurityGroupId": group, "ImageId": "ami-12345678", "PeriodSeconds": "43200"}
    stack = deploy("verifier.yaml", params)
    out = stack["OutputMap"]
    asg = aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[out["VerifierGroupName"]])["AutoScalingGroups"][0]
    assert (asg["MinSize"], asg["MaxSize"], asg["DesiredCapacity"]) == (1, 1, 1), "exactly one verifier"
    iam = aws.client("iam")
    role = out["VerifierRoleArn"].rsplit("/", 1)[1]
    statements = {s["Sid"]: s for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
                  for s in iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]["Statement"]}
    assert statements["ReadSource"]["Resource"] == source
    assert not any(a.startswith("dynamodb:") and a not in ("dynamodb:DescribeTable", "dynamodb:Scan",
                   "dynamodb:GetItem", "dynamodb:BatchGetItem") for a in statements["ReadSource"]["Action"]), \
        "the verifier never writes the source"
    assert sorted(statements["ReadAndRepairTargets"]["Resource"]) == sorted(
        [params["TargetTableArns"], params["LedgerTableArns"]])
    # the unit in the user data runs a command line the CLI accepts, with the stack's pacing
    lt = render("verifier.yaml", params)["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    user_data = base64.b64decode(lt["UserData"]).decode() if isinstance(lt["UserData"], str) else str(lt["UserData"])
    exec_start = next(line.strip() for line in user_data.splitlines() if line.strip().startswith("ExecStart="))
    args = build_parser(["verify"]).parse_args(shlex.split(exec_start.split("=", 1)[1])[1:])
    assert args.continuous and args.repair and args.period == 43200.0
