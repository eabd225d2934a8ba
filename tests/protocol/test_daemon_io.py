"""The worker's protocol loop (`kcl_app.adapters.daemon_io.kcl_process`) against amazon-kclpy's own.

The same daemon transcripts go through `kcl.KCLProcess` (kclpy's stdlib reader) and through
`kcl_process` (orjson, records without an eager datetime): every record the processor is given must
read the same through every accessor, every answer on stdout must be the same line, and what kclpy
refuses (a record without a required field, a line that is not JSON) must be refused the same way.
"""

from __future__ import annotations

import base64
import io
import json
import random
from typing import Any

import pytest
from amazon_kclpy import kcl
from amazon_kclpy.messages import Record
from amazon_kclpy.v3.processor import RecordProcessorBase

from kcl_app.adapters.daemon_io import WireRecord, kcl_process


class Recorder(RecordProcessorBase):  # type: ignore[misc]
    """Writes down everything a processor can read of each message, and checkpoints like ours."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def initialize(self, initialize_input: Any) -> None:
        self.seen.append(("initialize", initialize_input.shard_id, initialize_input.sequence_number,
                          initialize_input.sub_sequence_number))

    def process_records(self, process_records_input: Any) -> None:
        records = process_records_input.records
        self.seen.append(("processRecords", process_records_input.millis_behind_latest, len(records)))
        for r in records:
            assert isinstance(r, Record)
            self.seen.append((r.sequence_number, r.sub_sequence_number, r.partition_key, r.timestamp_millis,
                              r.approximate_arrival_timestamp, r.data, r.binary_data, r.get("data"), r["partitionKey"]))
        if records:
            try:
                process_records_input.checkpointer.checkpoint(records[-1].sequence_number,
                                                              records[-1].sub_sequence_number)
            except Exception as exc:  # noqa: BLE001 - the refusal is part of what is compared
                self.seen.append(("refused", type(exc).__name__, str(getattr(exc, "value", exc))))

    def lease_lost(self, lease_lost_input: Any) -> None:
        self.seen.append(("leaseLost",))

    def shard_ended(self, shard_ended_input: Any) -> None:
        self.seen.append(("shardEnded",))
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        self.seen.append(("shutdownRequested",))


def records(rng: random.Random, n: int, start: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        payload = rng.randbytes(rng.randint(0, 300)) if rng.random() < 0.3 else json.dumps(
            {"k": "é€😀\u2028", "n": i}, ensure_ascii=rng.random() < 0.5).encode()
        out.append({"action": "record", "data": base64.b64encode(payload).decode(),
                    "sequenceNumber": str(49_600_000_000_000_000_000_000_000 + start + i),
                    "subSequenceNumber": rng.choice([0, 0, 3]), "partitionKey": rng.choice(["A" * 32, "ü-ß", "k"]),
                    "approximateArrivalTimestamp": 1_790_000_000_000 + rng.randint(0, 10**6)})
    return out


def transcript(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = [{"action": "initialize", "shardId": "shardId-000000000007",
                                    "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0}]
    position = 0
    for size in [17] + [rng.choice([0, 1, 17, 500]) for _ in range(rng.randint(1, 5))]:
        batch = records(rng, size, position)
        position += len(batch)
        lines.append({"action": "processRecords", "millisBehindLatest": rng.randint(0, 10**7), "records": batch})
        if batch:  # the daemon's answer to the checkpoint request, sometimes a refusal
            error = rng.choice([None, None, "ThrottlingException"])
            lines.append({"action": "checkpoint", "sequenceNumber": batch[-1]["sequenceNumber"],
                          "subSequenceNumber": batch[-1]["subSequenceNumber"], "error": error})
    ending = rng.choice(["shardEnded", "leaseLost", "shutdownRequested"])
    lines.append({"action": ending})
    if ending == "shardEnded":
        lines.append({"action": "checkpoint", "sequenceNumber": "SHARD_END", "subSequenceNumber": 0, "error": None})
    return lines


def run(loop: Any, text: str) -> tuple[list[Any], str]:
    recorder, out, err = Recorder(), io.StringIO(), io.StringIO()
    loop(recorder, input_file=io.StringIO(text), output_file=out, error_file=err).run()
    assert "Caught exception" not in err.getvalue(), err.getvalue()
    return recorder.seen, out.getvalue()


@pytest.mark.parametrize("seed", range(12))
def test_every_record_and_every_answer_are_kclpys(seed: int) -> None:
    text = "".join(json.dumps(m, ensure_ascii=seed % 2 == 0) + "\n" for m in transcript(seed))
    theirs = run(kcl.KCLProcess, text)
    ours = run(kcl_process, text)
    assert ours == theirs
    assert len(ours[0]) > 17 and ours[1].count('"action": "checkpoint"') >= 1


def test_records_are_wire_records_and_the_arrival_datetime_is_made_on_demand() -> None:
    doc = records(random.Random(1), 1, 0)[0]
    wire, theirs = WireRecord(doc), Record(doc)
    assert "_approximate_arrival_timestamp" not in vars(wire)
    assert wire.approximate_arrival_timestamp == theirs.approximate_arrival_timestamp
    assert (wire.binary_data, wire.timestamp_millis) == (theirs.binary_data, theirs.timestamp_millis)


@pytest.mark.parametrize("missing", ["sequenceNumber", "subSequenceNumber", "approximateArrivalTimestamp",
                                     "partitionKey", "data"])
def test_a_record_without_a_required_field_is_refused_as_kclpy_refuses_it(missing: str) -> None:
    record = records(random.Random(2), 1, 0)[0]
    del record[missing]
    text = json.dumps({"action": "processRecords", "millisBehindLatest": 0, "records": [record]}) + "\n"
    for loop in (kcl.KCLProcess, kcl_process):
        with pytest.raises(KeyError, match=missing):
            run(loop, text)


def test_a_line_that_is_not_json_ends_both_loops() -> None:
    for loop in (kcl.KCLProcess, kcl_process):
        with pytest.raises(ValueError):
            run(loop, '{"action": "initialize", "shardId": \n')


def test_an_unknown_action_is_refused_by_kclpys_own_decoder() -> None:
    from amazon_kclpy.dispatch import MalformedAction

    for loop in (kcl.KCLProcess, kcl_process):
        with pytest.raises(MalformedAction):
            run(loop, json.dumps({"action": "processRecords", "millisBehindLatest": 0,
                                  "records": [{"action": "surprise"}]}) + "\n")
        with pytest.raises(MalformedAction):
            run(loop, json.dumps({"action": "reboot"}) + "\n")
