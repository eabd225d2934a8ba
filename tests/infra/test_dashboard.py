"""dashboard.yaml: deployed through moto's CloudFormation, and every metric a widget names is real.

"Real" is checked against the product, not against a list kept beside the template:
- tablesync's own metrics: the EMF documents the record processor writes while it replicates
  a batch (a change, a poison record, an unmapped record) through the real pipeline into a
  moto table; each (namespace, metric, dimension names) a widget asks for must be among them;
- the KCL's metrics (namespace = applicationName): the metric and operation names must be
  string constants in the KCL classes of the shipped amazon_kclpy jars;
- AWS metrics: the namespaces and names AWS documents for SQS, DynamoDB and Auto Scaling.
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import boto3
from amazon_kclpy import kcl

from kcl_app import daemon
from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.metrics import EmfMetrics
from kcl_app.adapters.processor import ReplicationProcessor
from kcl_app.compose import build_engine
from kcl_app.config import parse
from tests.infra.conftest import REGION, Deploy
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table

PARAMS = {
    "AppName": "tablesync-orders",
    "SourceTableName": "orders",
    "DeadLetterQueueName": "tablesync-orders-dead-letters",
    "AutoScalingGroupName": "workers",
}
ALARMS = [f"arn:aws:cloudwatch:{REGION}:123456789012:alarm:tablesync-orders-lag-p99-{t}" for t in ("eu", "us")]
#: Metrics AWS publishes itself (CloudWatch documentation of each service).
AWS_METRICS = {
    ("AWS/SQS", "ApproximateNumberOfMessagesVisible", ("QueueName",)),
    ("AWS/SQS", "ApproximateAgeOfOldestMessage", ("QueueName",)),
    ("AWS/DynamoDB", "FailedToReplicateRecordCount", ("DelegatedOperation", "TableName")),
    ("AWS/AutoScaling", "GroupInServiceInstances", ("AutoScalingGroupName",)),
}
_SEARCH = re.compile(r"SEARCH\('\{([^}]*)\}\s*(.*?)',\s*'(\w+)',\s*\d+\)")


def _body(deploy: Deploy, aws: boto3.Session, **overrides: str) -> dict[str, Any]:
    stack = deploy("dashboard.yaml", {**PARAMS, **overrides})
    assert stack["ResourceMap"]["Dashboard"]["ResourceStatus"] == "CREATE_COMPLETE"
    name = stack["OutputMap"]["DashboardName"]
    body: dict[str, Any] = json.loads(aws.client("cloudwatch").get_dashboard(DashboardName=name)["DashboardBody"])
    return body


def _named_metrics(body: dict[str, Any]) -> set[tuple[str, str, tuple[str, ...]]]:
    """(namespace, metric, sorted dimension names) of every metric of every widget."""
    found = set()
    for widget in body["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            head = row[0]
            if isinstance(head, dict):
                match = _SEARCH.fullmatch(head["expression"])
                assert match, head["expression"]
                namespace, *dims = [p.strip() for p in match.group(1).split(",")]
                names = re.findall(r'MetricName="([^"]+)"', match.group(2))
                assert names, head["expression"]
                found |= {(namespace, n, tuple(sorted(dims))) for n in names}
            else:
                namespace, metric, *rest = [c for c in row if not isinstance(c, dict)]
                found.add((namespace, metric, tuple(sorted(rest[0::2]))))
    return found


def _emitted_by_the_processor(namespace: str, dead_letters: Path) -> set[tuple[str, str, tuple[str, ...]]]:
    """Run one batch through the real processor and pipeline; the metrics of its EMF output."""
    client = boto3.client("dynamodb", region_name=REGION)
    create_table(client, "orders-copy")
    cfg = parse({"metrics": {"namespace": namespace},
                 "targets": [{"name": "eu", "source_table": "orders", "region": REGION, "table": "orders-copy",
                              "dead_letter": {"path": str(dead_letters)}}]})
    out = io.StringIO()
    metrics = EmfMetrics(out, namespace=namespace)
    clock = SystemClock()
    engine = build_engine(cfg, clock=clock, metrics=metrics)
    sim, other = SourceSim("orders"), SourceSim("unmapped-table")
    datas = [sim.put({"pk": {"S": "k1"}, "n": {"N": "1"}}), b"not a change record",
             other.put({"pk": {"S": "x"}})]
    records = [{"action": "record", "data": base64.b64encode(d).decode(), "sequenceNumber": str(i + 1),
                "subSequenceNumber": 0, "partitionKey": "p", "approximateArrivalTimestamp": 1_790_000_000_000}
               for i, d in enumerate(datas)]
    messages = [
        {"action": "initialize", "shardId": "shardId-000000000000", "sequenceNumber": "TRIM_HORIZON",
         "subSequenceNumber": 0},
        {"action": "processRecords", "records": records, "millisBehindLatest": 120},
        {"action": "checkpoint", "sequenceNumber": "3", "subSequenceNumber": 0, "error": None},
    ]
    processor = ReplicationProcessor(lambda: engine.pipeline, clock, metrics)
    transcript = io.StringIO("".join(json.dumps(m) + "\n" for m in messages))
    kcl.KCLProcess(processor, input_file=transcript, output_file=io.StringIO(), error_file=io.StringIO()).run()
    engine.close()
    found = set()
    for line in out.getvalue().splitlines():
        doc = json.loads(line)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                for metric in directive["Metrics"]:
                    found.add((directive["Namespace"], metric["Name"], tuple(sorted(dims))))
    return found


def _kcl_constants() -> set[str]:
    """String constants in the KCL's classes (UTF-8 entries of their constant pools, roughly)."""
    jar = next(daemon.jars_dir().glob("amazon-kinesis-client-3.*.jar"))
    strings: set[str] = set()
    with zipfile.ZipFile(jar) as archive:
        for name in archive.namelist():
            if name.startswith("software/amazon/kinesis/") and name.endswith(".class"):
                strings |= {s.decode() for s in re.findall(rb"[A-Za-z][A-Za-z.]{2,60}", archive.read(name))}
    return strings


def test_dashboard_deploys_and_names_only_metrics_the_product_emits(deploy: Deploy, aws: boto3.Session,
                                                                  tmp_path: Path) -> None:
    body = _body(deploy, aws, MetricsNamespace="orders-sync", LagAlarmArns=",".join(ALARMS))
    named = _named_metrics(body)
    emitted = _emitted_by_the_processor("orders-sync", tmp_path / "dlq")
    ours = {m for m in named if m[0] == "orders-sync"}
    assert ours, "no tablesync metric on the dashboard"
    assert ours <= emitted, f"named but never emitted: {sorted(ours - emitted)}"
    assert {("orders-sync", "LagMs", ("Target",)), ("orders-sync", "Applied", ("Target",)),
            ("orders-sync", "StaleSkipped", ("Target",)), ("orders-sync", "Parked", ("Target",)),
            ("orders-sync", "MillisBehindLatest", ("Shard",))} <= ours

    kcl_metrics = {m for m in named if m[0] == PARAMS["AppName"]}
    assert {m[1] for m in kcl_metrics} == {"MillisBehindLatest", "NumWorkers"}
    constants = _kcl_constants()
    for _, metric, dims in kcl_metrics:
        assert metric in constants and set(dims) <= {"Operation", "ShardId"}
    assert {"ProcessTask", "LeaseAssignmentManager"} <= constants  # the Operation values used

    assert named - ours - kcl_metrics <= AWS_METRICS, sorted(named - ours - kcl_metrics - AWS_METRICS)
    assert {m[:2] for m in named} >= {("AWS/DynamoDB", "FailedToReplicateRecordCount")}

    # the lag widgets ask for p50 and p99 of every target; the state widget lists the lag alarms
    searches = [row[0]["expression"] for w in body["widgets"] for row in w.get("properties", {}).get("metrics", [])
                if isinstance(row[0], dict)]
    lag_stats = {_SEARCH.fullmatch(s).group(3) for s in searches if '"LagMs"' in s}  # type: ignore[union-attr]
    assert lag_stats == {"p50", "p99"}
    (state,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert state["properties"]["alarms"] == ALARMS


def test_without_alarm_arns_there_is_no_state_widget(deploy: Deploy, aws: boto3.Session) -> None:
    body = _body(deploy, aws)
    assert [w for w in body["widgets"] if w["type"] == "alarm"] == []
    assert len(body["widgets"]) >= 9


def test_widget_layout_fits_the_grid() -> None:
    text = (Path(__file__).resolve().parents[2] / "infra" / "dashboard.yaml").read_text()
    for x, width in re.findall(r'"x": (\d+), "y": \d+, "width": (\d+)', text):
        assert int(x) + int(width) <= 24
