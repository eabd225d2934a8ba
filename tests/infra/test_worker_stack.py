"""The worker stack deployed into moto's CloudFormation.

moto creates every resource type of this template (IAM role/policies/instance profile, SQS,
log group, security group, launch template, Auto Scaling group). What it does not do: boot
instances or run user data (checked as text), honour SecurityGroupEgress (checked on the
rendered template) or the group's MetricsCollection (not asserted).
"""

from __future__ import annotations

import base64
from typing import Any

import boto3
import pytest

from tests.infra.conftest import Deploy
from tests.infra.policy import DEFAULT_WORKER_PARAMETERS, render, worker_statements

# moto's CloudFormation skips the scaling policies (created through the API below instead).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..AutoScaling..ScalingPolicy:UserWarning")


def _network(aws: boto3.Session) -> dict[str, str]:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"us-east-1{az}")["Subnet"][
            "SubnetId"
        ]
        for i, az in enumerate("ab")
    ]
    return {"VpcId": vpc, "SubnetIds": ",".join(subnets)}


def _parameters(aws: boto3.Session, **overrides: str) -> dict[str, str]:
    params = {k: v for k, v in DEFAULT_WORKER_PARAMETERS.items() if k not in ("VpcId", "SubnetIds", "ImageId")}
    return {**params, **_network(aws), **overrides}


def _deployed_statements(iam: Any, role_name: str) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        statements.extend(iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]["Statement"])
    assert iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"] == []
    return statements


def _launch_data(aws: boto3.Session, stack: dict[str, Any]) -> dict[str, Any]:
    lt_id = stack["OutputMap"]["LaunchTemplateId"]
    versions = aws.client("ec2").describe_launch_template_versions(LaunchTemplateId=lt_id)
    return versions["LaunchTemplateVersions"][-1]["LaunchTemplateData"]


def test_worker_stack_creates_a_least_privilege_worker(aws: boto3.Session, deploy: Deploy) -> None:
    params = _parameters(aws, MinSize="3", MaxSize="5", LogRetentionDays="14")
    stack = deploy("worker.yaml", params)
    out = stack["OutputMap"]

    # IAM: the role carries exactly the rendered statements, with the real queue and log group ARNs.
    iam = aws.client("iam")
    role_name = out["WorkerRoleArn"].rsplit("/", 1)[1]
    deployed = {s["Sid"]: s for s in _deployed_statements(iam, role_name)}
    expected = {s["Sid"]: s for s in worker_statements(params)}
    assert set(deployed) == set(expected)
    for sid, statement in expected.items():
        if "<" not in str(statement["Resource"]):  # placeholders: checked against real ARNs below
            assert deployed[sid] == statement, sid
    assert deployed["DeadLetterQueue"]["Resource"] == out["DeadLetterQueueArn"]
    log_group = aws.client("logs").describe_log_groups(logGroupNamePrefix="/tablesync/")["logGroups"]
    assert [g["logGroupName"] for g in log_group] == [out["LogGroupName"]] == ["/tablesync/tablesync-orders"]
    assert log_group[0]["retentionInDays"] == 14
    assert deployed["ShipLogs"]["Resource"] == log_group[0]["arn"]
    profile = iam.list_instance_profiles_for_role(RoleName=role_name)["InstanceProfiles"]
    assert [p["Arn"] for p in profile] == [out["InstanceProfileArn"]]

    # Dead letters: one queue, the longest retention SQS allows.
    attrs = aws.client("sqs").get_queue_attributes(QueueUrl=out["DeadLetterQueueUrl"], AttributeNames=["All"])
    assert attrs["Attributes"]["MessageRetentionPeriod"] == "1209600"
    assert out["DeadLetterQueueName"] == "tablesync-orders-dead-letters"
    # ... and a bucket for entries too large for one message, reachable only under the store prefix.
    s3 = aws.client("s3")
    bucket = out["DeadLetterPayloadBucket"]
    assert deployed["DeadLetterPayloads"]["Resource"] == f"arn:aws:s3:::{bucket}/tablesync/dead-letters/*"
    s3.head_bucket(Bucket=bucket)
    # moto's CloudFormation ignores LifecycleConfiguration and PublicAccessBlockConfiguration:
    # checked on the rendered template
    bucket_props = render("worker.yaml", params)["Resources"]["DeadLetterPayloads"]["Properties"]
    assert all(bucket_props["PublicAccessBlockConfiguration"].values())
    [rule] = bucket_props["LifecycleConfiguration"]["Rules"]
    assert (rule["Status"], rule["Prefix"], rule["ExpirationInDays"]) == ("Enabled", "tablesync/dead-letters/", 15)

    # Instances: IMDSv2 only, no SSH key, the instance profile, the user data that runs the worker.
    data = _launch_data(aws, stack)
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert "KeyName" not in data
    assert data["IamInstanceProfile"]["Arn"] == out["InstanceProfileArn"]
    user_data = base64.b64decode(data["UserData"]).decode()
    assert "dnf install -y java-17-amazon-corretto-headless python3.11" in user_data
    # the release: the operator's wheelhouse, digest checked, installed by hash with no index
    artifact, digest = params["ReleaseArtifact"], params["ReleaseSha256"]
    assert f"aws s3 cp --only-show-errors --region us-east-1 {artifact} \"$release.tar.gz\"" in user_data
    assert f'echo "{digest}  $release.tar.gz" | sha256sum --check --strict' in user_data
    assert ("pip install --no-cache-dir --no-index --require-hashes --only-binary :all: \\\n"
            '  --find-links "$release/wheels" -r "$release/requirements.lock"') in user_data
    assert "pypi" not in user_data.lower() and "'" + artifact not in user_data
    assert (
        "ExecStart=/opt/tablesync/venv/bin/tablesync run --properties /etc/tablesync/kcl.properties "
        "--config /etc/tablesync/targets.toml --app tablesync-orders --stream orders-changes --region us-east-1 "
        "--auto-scaling-group tablesync-orders-workers --lifecycle-hook tablesync-drain"
    ) in user_data
    assert "Restart=on-failure" in user_data and "KillMode=mixed" in user_data
    assert '--name "/tablesync/tablesync-orders/$name"' in user_data
    assert '"log_group_name": "/tablesync/tablesync-orders"' in user_data
    assert "${" not in user_data.replace("${!", "")  # every Fn::Sub variable was substituted

    # The group: starts at MinSize (the scaling policies own the desired capacity), spread over
    # the given subnets.
    [group] = aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[out["AutoScalingGroupName"]]
    )["AutoScalingGroups"]
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == (3, 3, 5)
    assert group["AutoScalingGroupName"] == out["AutoScalingGroupName"] == "tablesync-orders-workers"
    assert set(group["VPCZoneIdentifier"].split(",")) == set(params["SubnetIds"].split(","))

    # Network: nothing inbound; HTTPS outbound only (moto ignores SecurityGroupEgress and keeps
    # the default allow-all rule, so the egress rule is checked on the rendered template).
    [sg] = aws.client("ec2").describe_security_groups(GroupIds=[out["SecurityGroupId"]])["SecurityGroups"]
    assert sg["IpPermissions"] == []
    rendered = render("worker.yaml", params)["Resources"]["WorkerSecurityGroup"]["Properties"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rendered["SecurityGroupEgress"]] == [
        ("tcp", 443, 443)
    ]
    assert "SecurityGroupIngress" not in rendered


def test_optional_key_pair_reaches_the_launch_template(aws: boto3.Session, deploy: Deploy) -> None:
    aws.client("ec2").create_key_pair(KeyName="ops")
    stack = deploy("worker.yaml", _parameters(aws, KeyName="ops"))

    assert _launch_data(aws, stack)["KeyName"] == "ops"


@pytest.mark.parametrize("mode", ["POLLING", "FANOUT"])
def test_fan_out_actions_exist_only_in_fanout_mode(aws: boto3.Session, deploy: Deploy, mode: str) -> None:
    stack = deploy("worker.yaml", _parameters(aws, RetrievalMode=mode))

    iam = aws.client("iam")
    role_name = stack["OutputMap"]["WorkerRoleArn"].rsplit("/", 1)[1]
    statements = _deployed_statements(iam, role_name)
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    fan_out = {"kinesis:SubscribeToShard", "kinesis:RegisterStreamConsumer", "kinesis:DescribeStreamConsumer"}
    assert (fan_out <= actions) == (mode == "FANOUT")
    assert not fan_out & actions or mode == "FANOUT"


def _deployed_group(aws: boto3.Session, stack: dict[str, Any]) -> dict[str, Any]:
    [group] = aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[stack["OutputMap"]["AutoScalingGroupName"]]
    )["AutoScalingGroups"]
    return group


def _with_group(value: Any, group: str) -> Any:
    """The rendered value with the group's placeholder replaced by the deployed group's name."""
    if isinstance(value, dict):
        return {k: _with_group(v, group) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_group(v, group) for v in value]
    return group if value == "<WorkerGroup>" else value


def test_scaling_policies_and_termination_hook_deploy_on_the_group(aws: boto3.Session, deploy: Deploy) -> None:
    """moto's CloudFormation skips AWS::AutoScaling::ScalingPolicy and the group's
    LifecycleHookSpecificationList (it warns and still reports CREATE_COMPLETE), so after the
    stack is deployed each one is created from the rendered template through the Auto Scaling
    API, on the deployed group, and read back."""
    params = _parameters(aws, ShardsPerWorker="6", TargetCpuPercent="55", InstanceWarmupSeconds="240",
                         LifecycleHookTimeoutSeconds="150", StopTimeoutSeconds="90")
    stack = deploy("worker.yaml", params)
    group = _deployed_group(aws, stack)
    name = group["AutoScalingGroupName"]
    rendered = render("worker.yaml", params)["Resources"]
    autoscaling = aws.client("autoscaling")

    # 1 every scaling policy of the template, on this group
    policies = {k: r["Properties"] for k, r in rendered.items() if r["Type"] == "AWS::AutoScaling::ScalingPolicy"}
    assert set(policies) == {"LeaseScalingPolicy", "CpuScalingPolicy"}
    for logical_id, props in policies.items():
        props = _with_group(props, name)
        assert props["AutoScalingGroupName"] == name
        config = dict(props["TargetTrackingConfiguration"])
        config["TargetValue"] = float(config["TargetValue"])
        autoscaling.put_scaling_policy(AutoScalingGroupName=name, PolicyName=logical_id,
                                       PolicyType=props["PolicyType"], TargetTrackingConfiguration=config)
    deployed = {p["PolicyName"]: p for p in autoscaling.describe_policies(AutoScalingGroupName=name)["ScalingPolicies"]}
    assert {p["PolicyType"] for p in deployed.values()} == {"TargetTrackingScaling"}

    # the lease policy: leases to process (Maximum: duplicates are harmless) per in-service worker,
    # held at ShardsPerWorker
    lease = deployed["LeaseScalingPolicy"]["TargetTrackingConfiguration"]
    assert lease["TargetValue"] == 6.0
    queries = {q["Id"]: q for q in lease["CustomizedMetricSpecification"]["Metrics"]}
    assert queries["leasesperworker"]["Expression"] == "leases / workers"
    assert [q["Id"] for q in queries.values() if q["ReturnData"]] == ["leasesperworker"]
    leases_metric = queries["leases"]["MetricStat"]
    assert (leases_metric["Metric"]["Namespace"], leases_metric["Metric"]["MetricName"], leases_metric["Stat"]) == (
        "tablesync", "LeasesToProcess", "Maximum")
    assert leases_metric["Metric"]["Dimensions"] == [{"Name": "App", "Value": "tablesync-orders"}]
    workers_metric = queries["workers"]["MetricStat"]["Metric"]
    assert (workers_metric["Namespace"], workers_metric["MetricName"]) == ("AWS/AutoScaling", "GroupInServiceInstances")
    assert workers_metric["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": name}]
    # ... whose divisor the group collects
    collected = rendered["WorkerGroup"]["Properties"]["MetricsCollection"][0]["Metrics"]
    assert "GroupInServiceInstances" in collected
    # the CPU policy: the group's average CPU
    cpu = deployed["CpuScalingPolicy"]["TargetTrackingConfiguration"]
    assert cpu["TargetValue"] == 55.0
    assert cpu["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ASGAverageCPUUtilization"

    # 2 the termination hook, longer than the worker's stop, defaulting to CONTINUE
    group_props = rendered["WorkerGroup"]["Properties"]
    assert group_props["DefaultInstanceWarmup"] == "240"
    assert "DesiredCapacity" not in group_props
    [spec] = group_props["LifecycleHookSpecificationList"]
    autoscaling.put_lifecycle_hook(AutoScalingGroupName=name, LifecycleHookName=spec["LifecycleHookName"],
                                   LifecycleTransition=spec["LifecycleTransition"],
                                   HeartbeatTimeout=int(spec["HeartbeatTimeout"]), DefaultResult=spec["DefaultResult"])
    [hook] = autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=name)["LifecycleHooks"]
    assert hook["LifecycleHookName"] == stack["OutputMap"]["LifecycleHookName"] == "tablesync-drain"
    assert (hook["LifecycleTransition"], hook["HeartbeatTimeout"], hook["DefaultResult"]) == (
        "autoscaling:EC2_INSTANCE_TERMINATING", 150, "CONTINUE")
    assert hook["HeartbeatTimeout"] > int(params["StopTimeoutSeconds"])

    # 3 the worker may complete exactly this group's hook, and its unit names both
    [statement] = [s for s in worker_statements(params) if s["Sid"] == "CompleteOwnTerminationHook"]
    assert statement["Action"] == ["autoscaling:CompleteLifecycleAction"]
    prefix, _, suffix = statement["Resource"].partition("autoScalingGroup:*:")
    assert group["AutoScalingGroupARN"].startswith(prefix) and group["AutoScalingGroupARN"].endswith(suffix)
    user_data = base64.b64decode(_launch_data(aws, stack)["UserData"]).decode()
    assert f"--auto-scaling-group {name} --lifecycle-hook {hook['LifecycleHookName']}" in user_data
