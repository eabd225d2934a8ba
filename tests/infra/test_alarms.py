"""alarms.yaml: moto's CloudFormation has no AWS::CloudWatch::Alarm (it would skip them with a
warning and still report CREATE_COMPLETE), so the alarms are rendered here and each one is
created through moto's PutMetricAlarm API instead, which validates the property shapes."""

from __future__ import annotations

import re
from typing import Any

import boto3
import pytest

from tests.infra.policy import render

PARAMS = {
    "StreamName": "orders-changes",
    "AppName": "tablesync-orders",
    "SourceTableName": "orders",
    "DeadLetterQueueName": "tablesync-orders-dead-letters",
    "AutoScalingGroupName": "workers",
    "TargetNames": "prod-eu,staging.us",
    "AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:ops",
}


def _alarms(**overrides: str) -> dict[str, dict[str, Any]]:
    resources = render("alarms.yaml", {**PARAMS, **overrides})["Resources"]
    assert {r["Type"] for r in resources.values()} == {"AWS::CloudWatch::Alarm"}
    return {name: r["Properties"] for name, r in resources.items()}


def test_one_lag_p99_alarm_per_target() -> None:
    alarms = _alarms()
    lag = {name: a for name, a in alarms.items() if name.startswith("LagP99Alarm")}
    assert set(lag) == {"LagP99Alarmprodeu", "LagP99Alarmstagingus"}
    for target, name in (("prod-eu", "LagP99Alarmprodeu"), ("staging.us", "LagP99Alarmstagingus")):
        assert lag[name]["AlarmName"] == f"tablesync-orders-lag-p99-{target}"  # the dashboard's state widget
        queries = {q["Id"]: q for q in lag[name]["Metrics"]}
        stat = queries["lag"]["MetricStat"]
        assert stat["Metric"]["Namespace"] == "tablesync" and stat["Metric"]["MetricName"] == "LagMs"
        assert stat["Metric"]["Dimensions"] == [{"Name": "Target", "Value": target}]
        assert stat["Stat"] == "p99"


def test_lag_alarms_breach_on_missing_lag_while_the_stream_has_traffic() -> None:
    """Missing LagMs is a breach when the stream receives records (nobody replicates), not when
    the stream is idle: the alarm's expression fills a missing lag with a value far above any
    threshold only where IncomingRecords is positive."""
    for name, alarm in _alarms().items():
        if not name.startswith("LagP99Alarm"):
            continue
        queries = {q["Id"]: q for q in alarm["Metrics"]}
        traffic = queries["traffic"]["MetricStat"]
        assert traffic["Metric"]["Namespace"] == "AWS/Kinesis"
        assert traffic["Metric"]["MetricName"] == "IncomingRecords"
        assert traffic["Metric"]["Dimensions"] == [{"Name": "StreamName", "Value": PARAMS["StreamName"]}]
        assert (traffic["Stat"], traffic["Period"]) == ("Sum", queries["lag"]["MetricStat"]["Period"])
        (returned,) = [q for q in alarm["Metrics"] if q.get("ReturnData")]
        match = re.fullmatch(r"IF\(FILL\(traffic, 0\) > 0, FILL\(lag, (\d+)\), FILL\(lag, 0\)\)",
                             returned["Expression"])
        assert match, returned["Expression"]
        assert int(match.group(1)) > 1000 * float(alarm["Threshold"]) and alarm["ComparisonOperator"] == (
            "GreaterThanThreshold")
        assert alarm["TreatMissingData"] == "notBreaching"  # no traffic and no lag: an idle stream


def test_one_open_target_alarm_per_target() -> None:
    alarms = _alarms(TargetOpenThresholdSeconds="900")
    opened = {name: a for name, a in alarms.items() if name.startswith("TargetOpenAlarm")}
    assert set(opened) == {"TargetOpenAlarmprodeu", "TargetOpenAlarmstagingus"}
    alarm = opened["TargetOpenAlarmprodeu"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("tablesync", "OpenSeconds", "Maximum")
    assert alarm["Dimensions"] == [{"Name": "Target", "Value": "prod-eu"}]
    assert float(alarm["Threshold"]) == 900 and alarm["ComparisonOperator"] == "GreaterThanThreshold"


@pytest.mark.parametrize(
    ("mode", "metric"),
    [("POLLING", "GetRecords.IteratorAgeMilliseconds"), ("FANOUT", "SubscribeToShardEvent.MillisBehindLatest")],
)
def test_read_lag_metric_follows_the_retrieval_mode(mode: str, metric: str) -> None:
    assert _alarms(RetrievalMode=mode)["StreamReadLagAlarm"]["MetricName"] == metric


def test_source_and_dead_letter_alarms_fire_on_the_first_record() -> None:
    alarms = _alarms()
    dropped, dead = alarms["SourceDroppedRecordsAlarm"], alarms["DeadLettersAlarm"]
    assert (dropped["Namespace"], dropped["MetricName"], dropped["Statistic"]) == (
        "AWS/DynamoDB",
        "FailedToReplicateRecordCount",
        "Sum",
    )
    assert [d["Name"] for d in dropped["Dimensions"]] == ["TableName", "DelegatedOperation"]
    assert (dead["MetricName"], dead["Dimensions"]) == (
        "ApproximateNumberOfMessagesVisible",
        [{"Name": "QueueName", "Value": "tablesync-orders-dead-letters"}],
    )
    for alarm in (dropped, dead):
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")


def test_every_alarm_is_accepted_by_put_metric_alarm(aws: boto3.Session) -> None:
    cloudwatch = aws.client("cloudwatch")
    alarms = _alarms()
    names = {name: props.get("AlarmName", name) for name, props in alarms.items()}
    for name, props in alarms.items():
        # CloudFormation passes Number parameters as strings and converts them for the API.
        cloudwatch.put_metric_alarm(**{**props, "AlarmName": names[name], "Threshold": float(props["Threshold"])})

    stored = {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    assert set(stored) == set(names.values())
    workers = stored["WorkersMissingAlarm"]
    assert [m["Id"] for m in workers["Metrics"]] == ["inService", "desired", "missing"]
    assert workers["Metrics"][2]["Expression"] == "desired - inService"
    lag = stored["tablesync-orders-lag-p99-prod-eu"]
    assert lag["AlarmActions"] == [PARAMS["AlarmTopicArn"]]
    assert [m["Id"] for m in lag["Metrics"]] == ["lag", "traffic", "lagOrMissing"]


def test_without_a_topic_no_actions_are_set() -> None:
    for props in _alarms(AlarmTopicArn="").values():
        assert "AlarmActions" not in props and "OKActions" not in props


def test_undersized_fleet_alarm_watches_leases_per_in_service_worker(aws: boto3.Session) -> None:
    props = _alarms(ShardsPerWorker="6")["FleetUndersizedAlarm"]
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(AlarmName="FleetUndersizedAlarm", **{**props, "Threshold": float(props["Threshold"])})

    [stored] = cloudwatch.describe_alarms(AlarmNames=["FleetUndersizedAlarm"])["MetricAlarms"]
    queries = {m["Id"]: m for m in stored["Metrics"]}
    assert queries["perWorker"]["Expression"] == "leases / inService" and queries["perWorker"]["ReturnData"]
    leases = queries["leases"]["MetricStat"]
    assert (leases["Metric"]["Namespace"], leases["Metric"]["MetricName"], leases["Stat"]) == (
        "tablesync", "LeasesToProcess", "Maximum")
    assert leases["Metric"]["Dimensions"] == [{"Name": "App", "Value": "tablesync-orders"}]
    assert queries["inService"]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "AutoScalingGroupName", "Value": "workers"}]
    # above the lease policy's target for longer than a scale-out and its warm-up take
    assert (stored["Threshold"], stored["ComparisonOperator"]) == (6.0, "GreaterThanThreshold")
    assert stored["EvaluationPeriods"] == stored["DatapointsToAlarm"] == 15
