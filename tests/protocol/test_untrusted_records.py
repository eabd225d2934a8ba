"""Untrusted records through the real processor in kclpy's loop, into moto: foreign provenance and
implausible versions are parked as poison with their reason, the rest of the batch is applied, and
an engine defect parks what it concerns instead of stopping the shard."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import boto3
import pytest
from amazon_kclpy import kcl

from kcl_app import pipeline as pipeline_mod
from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.processor import ReplicationProcessor
from kcl_app.compose import build_engine
from kcl_app.config import parse
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, scan_all

pytestmark = pytest.mark.usefixtures("moto")
ARRIVAL_MS = 1_790_000_000_000


@pytest.fixture
def engine(clock: Any, tmp_path: Any) -> Any:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    create_table(client, "copy")
    cfg = parse({"source": {"region": "us-east-1"},
                 "targets": [{"name": "t", "source_table": "source", "region": "eu-west-1", "table": "copy",
                              "dead_letter": {"path": str(tmp_path / "dl")}}]})
    eng = build_engine(cfg, clock=clock, metrics=RecordingMetrics())
    yield eng, client
    eng.close()


def deliver(eng: Any, clock: Any, payloads: list[bytes]) -> list[dict[str, Any]]:
    msgs = [{"action": "record", "data": base64.b64encode(p).decode(), "sequenceNumber": str(i + 1),
             "subSequenceNumber": 0, "partitionKey": "A" * 32, "approximateArrivalTimestamp": ARRIVAL_MS}
            for i, p in enumerate(payloads)]
    script = [{"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "LATEST", "subSequenceNumber": 0},
              {"action": "processRecords", "records": msgs, "millisBehindLatest": 0},
              {"action": "checkpoint", "sequenceNumber": str(len(payloads)), "subSequenceNumber": 0, "error": None}]
    out, err, exits = io.StringIO(), io.StringIO(), []
    proc = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=exits.append)
    kcl.KCLProcess(proc, input_file=io.StringIO("".join(json.dumps(m) + "\n" for m in script)),
                   output_file=out, error_file=err).run()
    assert "Caught exception" not in err.getvalue() and exits == []
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def forged(data: bytes, **fields: Any) -> bytes:
    return json.dumps({**json.loads(data), **fields}).encode()


def poison(tmp_path: Any) -> dict[str, str]:
    return {e.sequence_number: e.reason for _, e in DirectoryDeadLetters(tmp_path / "dl").read("_poison")}


def test_records_of_foreign_provenance_or_implausible_versions_are_parked_the_rest_applied(
        engine: Any, clock: Any, tmp_path: Any) -> None:
    eng, client = engine
    sim = SourceSim("source", start_micros=ARRIVAL_MS * 1000 - 10_000_000)
    for i in range(8):
        sim.put({"pk": {"S": f"k{i}"}, "v": {"N": str(i)}})
    r = sim.records
    future = json.loads(r[5])
    future["dynamodb"]["ApproximateCreationDateTime"] = ARRIVAL_MS * 1000 * 1000  # nanoseconds
    payloads = [r[0], forged(r[1], eventSource="aws:kinesis"), forged(r[2], recordFormat="application/cbor"),
                forged(r[3], awsRegion="eu-central-1"), r[4], json.dumps(future).encode(), r[6], r[7]]
    sent = deliver(eng, clock, payloads)
    assert {"action": "checkpoint", "sequenceNumber": "8", "subSequenceNumber": 0} in sent
    assert set(scan_all(client, "copy")) == {f'{{"pk":{{"S":"k{i}"}}}}' for i in (0, 4, 6, 7)}
    reasons = poison(tmp_path)
    assert sorted(reasons) == ["2", "3", "4", "6"]
    assert "eventSource is not 'aws:dynamodb'" in reasons["2"]
    assert "recordFormat is not 'application/json'" in reasons["3"]
    assert "awsRegion is not the configured source region us-east-1" in reasons["4"]
    assert "later than the record's arrival in Kinesis" in reasons["6"]


def test_a_change_the_plan_cannot_handle_is_parked_alone(engine: Any, clock: Any, tmp_path: Any,
                                                         monkeypatch: Any) -> None:
    eng, client = engine
    real = pipeline_mod.plan_batch

    def fragile(changes: Any, rules: Any) -> Any:  # a planning defect triggered by one key only
        if any(c.key == {"pk": {"S": "bad"}} for _, c in changes):
            raise ArithmeticError("defect")
        return real(changes, rules)

    monkeypatch.setattr(pipeline_mod, "plan_batch", fragile)
    sim = SourceSim("source", start_micros=ARRIVAL_MS * 1000 - 10_000_000)
    for name in ("a", "bad", "b"):
        sim.put({"pk": {"S": name}})
    sent = deliver(eng, clock, sim.records)
    assert {"action": "checkpoint", "sequenceNumber": "3", "subSequenceNumber": 0} in sent
    assert set(scan_all(client, "copy")) == {'{"pk":{"S":"a"}}', '{"pk":{"S":"b"}}'}
    assert poison(tmp_path) == {"2": "cannot plan the change (ArithmeticError)"}


def test_an_engine_defect_on_a_batch_parks_it_whole_and_the_shard_moves_on(engine: Any, clock: Any,
                                                                           tmp_path: Any, monkeypatch: Any) -> None:
    eng, client = engine

    def broken(records: Any, only: Any = None) -> Any:
        raise RuntimeError("defect")

    monkeypatch.setattr(eng.pipeline, "prepare", broken)  # the processor's entry into the engine
    sim = SourceSim("source", start_micros=ARRIVAL_MS * 1000 - 10_000_000)
    sim.put({"pk": {"S": "a"}})
    sim.put({"pk": {"S": "b"}})
    sent = deliver(eng, clock, sim.records)
    assert {"action": "checkpoint", "sequenceNumber": "2", "subSequenceNumber": 0} in sent
    assert scan_all(client, "copy") == {}
    assert poison(tmp_path) == {"1": "engine failed on the batch (RuntimeError)",
                                "2": "engine failed on the batch (RuntimeError)"}
