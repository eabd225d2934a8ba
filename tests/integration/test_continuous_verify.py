"""verify --continuous on the local stack: the destination drops an oversized change and a target item
is modified behind tablesync's back; one pass finds and repairs both, the metrics say so, and a change
made during the pass (delivered by the stream) is not "repaired" to an older state."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.ledger import LedgerWriter, ensure_ledger
from kcl_app.adapters.metrics import EmfMetrics, RecordingMetrics
from kcl_app.continuous import ContinuousVerifier, PassState, state_path
from kcl_app.core.plan import TargetRule
from kcl_app.core.records import RawRecord
from kcl_app.pipeline import Pipeline
from kcl_app.verify import TargetSpec, Verifier
from tablesync_local.stack import LocalStack, poll_until
from tests.support.tables import create_table, normalise_all, scan_all

pytestmark = pytest.mark.integration

BIG = 395_000  # an update of such an item carries two images: > 1 MB once encoded, dropped


class Stream:
    """Reads the stream from TRIM_HORIZON, once per record, and applies it through the pipeline."""

    def __init__(self, kinesis: Any, name: str, pipeline: Pipeline) -> None:
        self.kinesis = kinesis
        self.name = name
        self.pipeline = pipeline
        self.iterators: dict[str, str] = {}
        self.applied = 0

    def drain(self) -> int:
        for shard in self.kinesis.list_shards(StreamName=self.name)["Shards"]:
            sid = shard["ShardId"]
            it = self.iterators.get(sid) or self.kinesis.get_shard_iterator(
                StreamName=self.name, ShardId=sid, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            answer = self.kinesis.get_records(ShardIterator=it, Limit=1000)
            self.iterators[sid] = answer["NextShardIterator"]
            records = [RawRecord(r["Data"], r["SequenceNumber"], shard_id=sid) for r in answer["Records"]]
            if records:
                result = self.pipeline.process(records)
                assert all(not c.parked for c in result.targets.values()), result
                self.applied += len(records)
        return self.applied

    def wait_for(self, stack: LocalStack, table: str) -> None:
        """Until every record the destination sent is applied (the emulator counts what it sent)."""
        stack.flush()
        sent = stack.stats(table)["records_sent"]
        poll_until(lambda: self.drain() >= sent or None, timeout=20, message=f"{sent} records applied")


def test_one_pass_repairs_a_dropped_change_and_a_tampered_item(local_stack: LocalStack, tmp_path: Path) -> None:
    clock = SystemClock()
    ddb, kinesis = local_stack.client("dynamodb"), local_stack.client("kinesis")
    name = f"cv-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=2)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    create_table(ddb, name)
    local_stack.configure_faults(name, drop_oversize=True)
    ddb.enable_kinesis_streaming_destination(
        TableName=name, StreamArn=arn,
        EnableKinesisStreamingConfiguration={"ApproximateCreationDateTimePrecision": "MICROSECOND"})
    target = local_stack.client("dynamodb", "eu-west-1")
    create_table(target, f"{name}-copy")
    ensure_ledger(target, f"{name}-ledger")
    rule = TargetRule("eu", name)
    writer = LedgerWriter("eu", target, f"{name}-copy", f"{name}-ledger", clock)
    pipeline = Pipeline([rule], {"eu": writer}, DirectoryDeadLetters(tmp_path / "dl"), RecordingMetrics(), clock)
    stream = Stream(kinesis, name, pipeline)

    # 1 the source, replicated by the stream; the big item's update is dropped by the destination
    for i in range(40):
        ddb.put_item(TableName=name, Item={"pk": {"S": f"k{i:02d}"}, "v": {"N": str(i)}})
    ddb.put_item(TableName=name, Item={"pk": {"S": "big"}, "b": {"B": b"\x01" * BIG}})
    ddb.put_item(TableName=name, Item={"pk": {"S": "big"}, "b": {"B": b"\x02" * BIG}})
    stream.wait_for(local_stack, name)
    assert local_stack.stats(name)["FailedToReplicateRecordCount"] == 1
    big = target.get_item(TableName=f"{name}-copy", Key={"pk": {"S": "big"}}, ConsistentRead=True)["Item"]
    assert big["b"]["B"] == b"\x01" * BIG, "the target missed the dropped change"
    # 2 someone writes the target behind tablesync's back
    target.put_item(TableName=f"{name}-copy", Item={"pk": {"S": "k07"}, "v": {"N": "-7"}, "rogue": {"BOOL": True}})

    # 3 during the pass, after its first page: a real change of k33, delivered by the stream
    changed: list[str] = []

    def change_during_pass(phase: str, segment: int) -> None:
        if not changed:
            changed.append(phase)
            ddb.put_item(TableName=name, Item={"pk": {"S": "k33"}, "v": {"N": "3333"}, "late": {"S": "yes"}})
            stream.wait_for(local_stack, name)

    spec = TargetSpec(rule, target, f"{name}-copy", "exact", f"{name}-ledger", writer=writer)
    verifier = Verifier(ddb, name, [spec], clock, segments=2, page_limit=5)
    state = PassState.open(state_path(tmp_path / "verify", name, ["eu"]), name, ["eu"], 2)
    metrics = RecordingMetrics()
    service = ContinuousVerifier(verifier, state, clock, metrics, period=3600.0, read_units_per_second=500.0,
                                 capacity_fraction=0.5, repair=True, emit_every=0.0, on_page=change_during_pass)
    summary = service.run_pass()

    assert summary is not None and changed
    tally = summary.tallies["eu"]
    assert (tally.divergent, tally.repaired, tally.unrepaired) == (2, 2, 0), tally
    assert summary.verdict == "repaired"
    assert metrics.total("DivergencesFound", Target="eu") == 2
    assert metrics.total("Repaired", Target="eu") == 2
    assert metrics.total("UnrepairedDivergences", Target="eu") == 0
    assert metrics.emitted[-1][1]["KeyspaceVerified24hPercent"] == 100.0
    # the target is the source again, and the change made during the pass kept its stream version
    assert normalise_all(scan_all(target, f"{name}-copy")) == normalise_all(scan_all(ddb, name))
    late = target.get_item(TableName=f"{name}-copy", Key={"pk": {"S": "k33"}}, ConsistentRead=True)["Item"]
    assert late["v"] == {"N": "3333"} and late["late"] == {"S": "yes"}
    assert writer.seen({"pk": {"S": "k33"}}, _kid("k33"), clock.monotonic() + 5)[1] is not None
    ledger_row = target.get_item(TableName=f"{name}-ledger", Key={"k": {"S": _kid("k33")}})["Item"]
    assert "repair" not in ledger_row["v"]["S"], "the live change was never overwritten by a repair"
    # a second pass is clean; the EMF adapter accepts what the service emits
    assert (service.run_pass() or summary).verdict == "clean"
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    ContinuousVerifier(verifier, state, clock, EmfMetrics(Sink()), emit_every=0.0).emit(force=True)  # type: ignore[arg-type]
    doc = json.loads(lines[0])
    assert doc["Target"] == "eu" and doc["KeyspaceVerified24hPercent"] == 100.0
    pipeline.close()


def _kid(pk: str) -> str:
    from kcl_app.core.attrs import key_id

    return key_id({"pk": {"S": pk}})


def test_sigterm_finishes_the_page_saves_the_pass_and_exits_0(local_stack: LocalStack, tmp_path: Path) -> None:
    """The service as systemd runs it: `tablesync verify --continuous`, stopped by SIGTERM mid-pass."""
    import os
    import signal
    import subprocess
    import sys

    ddb = local_stack.client("dynamodb")
    name = f"cvs-{uuid.uuid4().hex[:8]}"
    create_table(ddb, name)
    target = local_stack.client("dynamodb", "eu-west-1")
    create_table(target, f"{name}-copy")
    for i in range(300):
        ddb.put_item(TableName=name, Item={"pk": {"S": f"k{i:03d}"}})
    config = tmp_path / "targets.toml"
    config.write_text(f'[source]\ntable = "{name}"\nregion = "us-east-1"\nendpoint_url = "{local_stack.endpoint}"\n'
                      f'[[targets]]\nname = "eu"\nregion = "eu-west-1"\ntable = "{name}-copy"\n'
                      f'endpoint_url = "{local_stack.endpoint}"\n'
                      f'dead_letter = {{ kind = "dir", path = "{tmp_path / "dlq"}" }}\n', encoding="utf-8")
    state_dir = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # 1 read unit per page of 1 item at 2 units/s: the pass lasts minutes, SIGTERM lands mid-pass
    proc = subprocess.Popen([sys.executable, "-m", "kcl_app.cli", "verify", "--continuous", "--config", str(config),
                             "--segments", "1", "--page-size", "1", "--read-units", "2", "--capacity-fraction", "1",
                             "--state-dir", str(state_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        path = state_path(state_dir, name, ["eu"])

        def scanned() -> int | None:
            if not path.exists():
                return None
            n = int(json.loads(path.read_text())["phases"]["source"][0]["scanned"])
            return n if n >= 3 else None

        poll_until(scanned, timeout=60, message="three pages verified")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    doc = json.loads(path.read_text())
    cursor = doc["phases"]["source"][0]
    assert doc["started"] is not None and not cursor["done"] and cursor["scanned"] >= 3
    assert cursor["scanned"] == doc["tallies"]["eu"]["verified"], "the saved position is the counted one"
    assert '"VerifiedKeys"' in err, "the EMF lines went to stderr"
