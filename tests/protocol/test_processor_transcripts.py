"""The record processor driven through amazon-kclpy's real protocol loop from JSON-line transcripts.

Each test feeds the daemon's side of the conversation (including its answers to our checkpoint
requests) and asserts on what the processor wrote back on stdout and into the target tables.
"""

from __future__ import annotations

import base64
import io
import json

import boto3
import pytest

from kcl_app.adapters.daemon_io import kcl_process
from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.processor import EXIT_UNSETTLED, ReplicationProcessor
from kcl_app.compose import build_engine
from kcl_app.config import parse
from tests.support.harness import FailingStore
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, scan_all

pytestmark = pytest.mark.usefixtures("moto")


class Exited(SystemExit):
    """What sys.exit raises: kclpy lets SystemExit through (any other exception it swallows)."""


def _exit(code: int) -> None:
    raise Exited(code)


def record_msg(data: bytes, seq: str) -> dict:
    return {"action": "record", "data": base64.b64encode(data).decode(), "sequenceNumber": seq,
            "subSequenceNumber": 0, "partitionKey": "A" * 32, "approximateArrivalTimestamp": 1_790_000_000_000}


def transcript(*messages: dict) -> io.StringIO:
    return io.StringIO("".join(json.dumps(m) + "\n" for m in messages))


def ack(seq: str | None, error: str | None = None) -> dict:
    return {"action": "checkpoint", "sequenceNumber": seq, "subSequenceNumber": 0, "error": error}


def sent(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@pytest.fixture
def engine(clock, tmp_path):
    client = boto3.client("dynamodb", region_name="eu-west-1")
    create_table(client, "copy-one")
    cfg = parse({"targets": [{"name": "one", "source_table": "source", "region": "eu-west-1",
                              "table": "copy-one", "dead_letter": {"path": str(tmp_path / "dlq")}}]})
    eng = build_engine(cfg, clock=clock, metrics=RecordingMetrics())
    yield eng, client
    eng.close()


def run(processor, messages) -> list[dict]:
    out, err = io.StringIO(), io.StringIO()
    kcl_process(processor, input_file=transcript(*messages), output_file=out, error_file=err).run()
    assert "Caught exception" not in err.getvalue(), err.getvalue()
    return sent(out)


def test_batch_applied_then_checkpointed_at_its_last_record(engine, clock) -> None:
    eng, client = engine
    sim = SourceSim("source")
    sim.put({"pk": {"S": "k1"}, "b": {"B": b"\x00\x01"}})
    sim.put({"pk": {"S": "k2"}, "n": {"N": "3"}})
    sim.delete({"pk": {"S": "k1"}})
    msgs = [record_msg(d, f"{i + 1:05d}") for i, d in enumerate(sim.records)]
    proc = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    out = run(proc, [
        {"action": "initialize", "shardId": "shardId-000000000001", "sequenceNumber": "TRIM_HORIZON",
         "subSequenceNumber": 0},
        {"action": "processRecords", "records": msgs, "millisBehindLatest": 0},
        ack("00003"),
        {"action": "shardEnded"},
        ack("SHARD_END"),
    ])
    assert out == [
        {"action": "status", "responseFor": "initialize"},
        {"action": "checkpoint", "sequenceNumber": "00003", "subSequenceNumber": 0},
        {"action": "status", "responseFor": "processRecords"},
        {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None},
        {"action": "status", "responseFor": "shardEnded"},
    ]
    assert scan_all(client, "copy-one") == {'{"pk":{"S":"k2"}}': {"pk": {"S": "k2"}, "n": {"N": "3"}}}


def test_throttled_checkpoint_is_retried_and_lease_loss_stops_checkpointing(engine, clock) -> None:
    eng, _ = engine
    sim = SourceSim("source")
    sim.put({"pk": {"S": "k1"}})
    sim.put({"pk": {"S": "k2"}})
    proc = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    out = run(proc, [
        {"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "LATEST", "subSequenceNumber": 0},
        {"action": "processRecords", "records": [record_msg(sim.records[0], "1")], "millisBehindLatest": 5},
        ack("1", "ThrottlingException"),
        ack("1"),
        {"action": "processRecords", "records": [record_msg(sim.records[1], "2")], "millisBehindLatest": 0},
        ack("2", "ShutdownException"),
        {"action": "leaseLost"},
    ])
    checkpoints = [m for m in out if m["action"] == "checkpoint"]
    assert checkpoints == [{"action": "checkpoint", "sequenceNumber": s, "subSequenceNumber": 0} for s in "112"]
    assert proc.lease_held is False
    assert len(clock.slept) == 1  # one backoff, on the fake clock


def test_poison_record_is_parked_and_the_batch_still_checkpoints(engine, clock, tmp_path) -> None:
    eng, client = engine
    sim = SourceSim("source")
    sim.put({"pk": {"S": "ok"}})
    proc = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    out = run(proc, [
        {"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "LATEST", "subSequenceNumber": 0},
        {"action": "processRecords", "records": [record_msg(b"{not json", "1"), record_msg(sim.records[0], "2")],
         "millisBehindLatest": 0},
        ack("2"),
    ])
    assert {"action": "checkpoint", "sequenceNumber": "2", "subSequenceNumber": 0} in out
    parked = list(DirectoryDeadLetters(tmp_path / "dlq").read("_poison"))
    assert [entry.data for _, entry in parked] == [b"{not json"]
    assert "not JSON" in parked[0][1].reason
    assert set(scan_all(client, "copy-one")) == {'{"pk":{"S":"ok"}}'}


def test_unparkable_batch_checkpoints_only_before_it_and_exits(clock, tmp_path) -> None:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    create_table(client, "copy-two")
    cfg = parse({"targets": [{"name": "two", "source_table": "source", "region": "eu-west-1",
                              "table": "copy-two"}]})
    eng = build_engine(cfg, clock=clock, metrics=RecordingMetrics(), dead_letters=FailingStore("disk full"))
    sim = SourceSim("source")
    sim.put({"pk": {"S": "first"}})
    proc = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    with pytest.raises(Exited) as exited:
        run(proc, [
            {"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "LATEST", "subSequenceNumber": 0},
            {"action": "processRecords",
             "records": [record_msg(sim.records[0], "1"), record_msg(b"garbage", "2"), record_msg(sim.records[0], "3")],
             "millisBehindLatest": 0},
            ack("1"),
        ])
    assert exited.value.code == EXIT_UNSETTLED
    assert set(scan_all(client, "copy-two")) == {'{"pk":{"S":"first"}}'}
    eng.close()


def test_shutdown_requested_always_checkpoints_so_a_lease_hand_off_is_not_delayed(engine, clock) -> None:
    eng, _ = engine
    sim = SourceSim("source")
    sim.put({"pk": {"S": "k1"}})
    fresh = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    out = run(fresh, [
        {"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "42", "subSequenceNumber": 0},
        {"action": "shutdownRequested"},
        ack("42"),
    ])
    assert {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None} in out

    busy = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    out = run(busy, [
        {"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "42", "subSequenceNumber": 0},
        {"action": "processRecords", "records": [record_msg(sim.records[0], "43")], "millisBehindLatest": 0},
        ack("43"),
        {"action": "shutdownRequested"},
        ack("43"),
    ])
    checkpoints = [m for m in out if m["action"] == "checkpoint"]
    assert checkpoints == [{"action": "checkpoint", "sequenceNumber": "43", "subSequenceNumber": 0}] * 2


def test_each_batch_reports_its_delivery_wait_and_each_targets_apply_time(engine, clock) -> None:
    eng, _ = engine
    sim = SourceSim("source")
    sim.put({"pk": {"S": "k1"}})
    sim.put({"pk": {"S": "k2"}})
    metrics = RecordingMetrics()
    proc = ReplicationProcessor(lambda: eng.pipeline, clock, metrics, exit=_exit)
    arrived = int(clock.now() * 1000) - 1234  # the oldest record arrived in the stream 1.234 s ago
    msgs = [{**record_msg(d, f"{i + 1}"), "approximateArrivalTimestamp": arrived + i}
            for i, d in enumerate(sim.records)]
    run(proc, [
        {"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "LATEST", "subSequenceNumber": 0},
        {"action": "processRecords", "records": msgs, "millisBehindLatest": 0},
        ack("2"),
        {"action": "processRecords", "records": [], "millisBehindLatest": 0},
    ])
    shard = [samples for dims, _, samples in metrics.emitted if dims == {"Shard": "shardId-1"}]
    assert [s["DeliveryMs"] for s in shard] == [[1234.0], []]  # an empty batch has no oldest record
    applied = [samples for dims, _, samples in eng.pipeline.metrics.emitted  # type: ignore[attr-defined]
               if dims == {"Target": "one"} and "ApplyMs" in samples]
    assert [len(s["ApplyMs"]) for s in applied] == [1] and applied[0]["ApplyMs"][0] >= 0
    assert len(applied[0]["LagMs"]) == 2


def test_a_slow_checkpoint_is_logged_because_the_next_batch_waits_for_it(engine, clock, caplog) -> None:
    eng, _ = engine

    class SlowDaemon:
        def checkpoint(self, sequence: str | None, sub: int | None) -> None:
            clock.advance(2.5)  # the daemon answers 2.5 s later (its lease-table write)

    proc = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    caplog.set_level("INFO", logger="tablesync.processor")
    assert proc._checkpoint(SlowDaemon(), "00042", 0)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "checkpoint at 00042 took 2.5 s (the daemon's answer: its lease table write)"]
