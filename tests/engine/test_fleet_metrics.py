"""The fleet's published work: several workers reading one KCL lease table (in-process moto)
through a split, each publishing what `tablesync run` publishes (FleetReporter)."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import pytest

from kcl_app.adapters.leases import read_leases
from kcl_app.adapters.metrics import EmfMetrics, RecordingMetrics
from kcl_app.core import fleet
from kcl_app.supervisor import FleetReporter

pytestmark = pytest.mark.usefixtures("moto")

TABLE = "orders-app"
WORKERS = ("worker-c", "worker-a", "worker-b")  # not in name order: the election must not care


def _ddb() -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")


def _create_table() -> None:
    _ddb().create_table(TableName=TABLE, AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")


def _put(shard: int, owner: str | None, checkpoint: str, parents: tuple[int, ...] = ()) -> None:
    item: dict[str, Any] = {"leaseKey": {"S": f"shardId-{shard:012d}"}, "checkpoint": {"S": checkpoint},
                            "leaseCounter": {"N": "7"}, "checkpointSubSequenceNumber": {"N": "0"}}
    if owner:
        item["leaseOwner"] = {"S": owner}
    if parents:
        item["parentShardId"] = {"SS": [f"shardId-{p:012d}" for p in parents]}
    _ddb().put_item(TableName=TABLE, Item=item)


def _report_all(metrics: RecordingMetrics) -> list[fleet.FleetFigures]:
    """One report period: every worker reads the table and publishes."""
    return [FleetReporter(lambda: read_leases(_ddb(), TABLE), metrics, "orders-app", worker,
                          cpu=lambda: 12.5).report() for worker in WORKERS]


def _fleet_docs(metrics: RecordingMetrics) -> list[dict[str, float]]:
    return [counters for dims, counters, _ in metrics.emitted if dims == {"App": "orders-app"}]


def _held_sum(metrics: RecordingMetrics) -> float:
    return sum(c["WorkerLeasesHeld"] for d, c, _ in metrics.emitted if "WorkerId" in d)


def test_steady_fleet_publishes_once_and_the_per_worker_figures_sum_to_the_fleet() -> None:
    _create_table()
    for shard, owner in enumerate(("worker-b", "worker-a", "worker-c", "worker-a")):
        _put(shard, owner, f"4958{shard}00")
    metrics = RecordingMetrics()

    _report_all(metrics)

    # exactly one fleet-level document: from worker-b, the owner of the smallest lease key
    [doc] = _fleet_docs(metrics)
    assert doc == {"OpenShards": 4, "DrainingParents": 0, "WaitingChildren": 0, "LeasesToProcess": 4,
                   "LeasesHeld": 4, "Workers": 3}
    assert metrics.emitted[[d for d, _, _ in metrics.emitted].index({"App": "orders-app"}) - 1][0] == {
        "App": "orders-app", "WorkerId": "worker-b"}
    per_worker = {d["WorkerId"]: c for d, c, _ in metrics.emitted if "WorkerId" in d}
    assert per_worker == {"worker-a": {"WorkerLeasesHeld": 2, "WorkerCpuPercent": 12.5},
                          "worker-b": {"WorkerLeasesHeld": 1, "WorkerCpuPercent": 12.5},
                          "worker-c": {"WorkerLeasesHeld": 1, "WorkerCpuPercent": 12.5}}
    assert _held_sum(metrics) == doc["LeasesHeld"]


def test_a_split_counts_the_draining_parents_until_they_reach_shard_end() -> None:
    _create_table()
    # before: shards 0..3 open
    for shard, owner in enumerate(("worker-a", "worker-b", "worker-c", "worker-a")):
        _put(shard, owner, f"4958{shard}00")
    # split of 0 and 1: children 4,5 (of 0) and 6,7 (of 1); the parents still draining, the
    # children leased but waiting for them (checkpoint TRIM_HORIZON), one not assigned yet
    _put(4, "worker-b", "TRIM_HORIZON", (0,))
    _put(5, "worker-c", "TRIM_HORIZON", (0,))
    _put(6, "worker-a", "TRIM_HORIZON", (1,))
    _put(7, None, "TRIM_HORIZON", (1,))
    metrics = RecordingMetrics()

    [during, *_] = _report_all(metrics)

    [doc] = _fleet_docs(metrics)
    assert (during.open_shards, during.draining_parents, during.waiting_children) == (6, 2, 4)
    # the split asks at once for what the children will need (2 untouched + 2 x 2 children),
    # not for parents + children (they never run together)
    assert doc["LeasesToProcess"] == 6 and doc["DrainingParents"] == 2
    assert doc["LeasesHeld"] == 7 == _held_sum(metrics)  # held: parents included; the unassigned child is not
    # the parents end: they stop counting; lease 0 is finished (its owner's name may be a departed
    # worker's), so the owner of the smallest unfinished lease, 2, reports
    _put(0, "worker-a", "SHARD_END")
    _put(1, "worker-b", "SHARD_END")
    after_metrics = RecordingMetrics()

    _report_all(after_metrics)

    [after] = _fleet_docs(after_metrics)
    assert after == {"OpenShards": 6, "DrainingParents": 0, "WaitingChildren": 0, "LeasesToProcess": 6,
                     "LeasesHeld": 5, "Workers": 3}
    assert _held_sum(after_metrics) == after["LeasesHeld"]
    dims = [d for d, _, _ in after_metrics.emitted]
    assert dims[dims.index({"App": "orders-app"}) - 1]["WorkerId"] == "worker-c"  # published by worker-c


def test_a_merge_counts_both_parents_and_the_reporter_moves_with_the_smallest_lease() -> None:
    _create_table()
    _put(0, "worker-a", "495800")
    _put(1, "worker-b", "495801")
    _put(2, "worker-c", "TRIM_HORIZON", (0, 1))  # the merged child
    metrics = RecordingMetrics()

    _report_all(metrics)

    # the merge keeps the capacity of its two parents until they end
    assert _fleet_docs(metrics) == [{"OpenShards": 1, "DrainingParents": 2, "WaitingChildren": 1,
                                     "LeasesToProcess": 2, "LeasesHeld": 3, "Workers": 3}]
    # worker-a is stopped (scale-in): its lease goes to worker-c, which now reports
    _put(0, "worker-c", "495800")
    moved = RecordingMetrics()

    _report_all(moved)

    emitted = moved.emitted
    reporters = [emitted[i - 1][0]["WorkerId"] for i, (d, _, _) in enumerate(emitted) if "WorkerId" not in d]
    assert reporters == ["worker-c"]
    assert _fleet_docs(moved)[0]["Workers"] == 2


def test_two_reshards_at_once_are_sized_per_family() -> None:
    _create_table()
    _put(0, "worker-a", "495800")  # split into 3, 4
    _put(1, "worker-b", "495801")  # merged with 2 into 5
    _put(2, "worker-c", "495802")
    _put(3, "worker-a", "TRIM_HORIZON", (0,))
    _put(4, "worker-b", "TRIM_HORIZON", (0,))
    _put(5, "worker-c", "TRIM_HORIZON", (1, 2))
    _put(6, "worker-c", "495806")  # untouched
    metrics = RecordingMetrics()

    _report_all(metrics)

    [doc] = _fleet_docs(metrics)
    # 1 ready + max(1 parent, 2 children) + max(2 parents, 1 child)
    assert doc["LeasesToProcess"] == 1 + 2 + 2
    assert (doc["OpenShards"], doc["DrainingParents"], doc["WaitingChildren"]) == (4, 3, 3)


def test_no_owner_no_fleet_figures() -> None:
    _create_table()
    _put(0, None, "TRIM_HORIZON")
    metrics = RecordingMetrics()

    _report_all(metrics)

    assert _fleet_docs(metrics) == []
    assert _held_sum(metrics) == 0


def test_the_fleet_document_is_emf_cloudwatch_can_extract() -> None:
    _create_table()
    _put(0, "worker-a", "495800")
    out = io.StringIO()

    FleetReporter(lambda: read_leases(_ddb(), TABLE), EmfMetrics(stream=out), "orders-app", "worker-a").report()

    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    fleet_doc = next(d for d in docs if "LeasesToProcess" in d)
    [directive] = fleet_doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "tablesync" and directive["Dimensions"] == [["App"]]
    assert {m["Name"] for m in directive["Metrics"]} == {
        "OpenShards", "DrainingParents", "WaitingChildren", "LeasesToProcess", "LeasesHeld", "Workers"}
    assert fleet_doc["App"] == "orders-app" and fleet_doc["LeasesToProcess"] == 1
    worker_doc = next(d for d in docs if "WorkerLeasesHeld" in d)
    assert worker_doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["App", "WorkerId"]]
    assert "WorkerCpuPercent" not in worker_doc  # no CPU sampler given: nothing invented


def test_the_lease_reader_pages_through_the_whole_table() -> None:
    _create_table()
    for shard in range(30):
        _put(shard, f"worker-{shard % 3}", "495800")

    class Paged:
        """The real client, 7 items a page (moto would return them all in one)."""

        def __init__(self) -> None:
            self.pages = 0

        def scan(self, **kwargs: Any) -> Any:
            self.pages += 1
            return _ddb().scan(**kwargs, Limit=7)

    client = Paged()
    leases = read_leases(client, TABLE)

    assert [lease.shard for lease in leases] == [f"shardId-{s:012d}" for s in range(30)]
    assert client.pages == 5
