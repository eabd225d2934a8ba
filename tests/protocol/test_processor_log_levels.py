"""Log levels of the record processor's routine events, through kclpy's real protocol loop.

A refused checkpoint while the daemon is shutting the shard down (SIGTERM or a hand-off), and a
lease lost, are routine: INFO. The same refusal while processing records is a bug: ERROR.
"""

from __future__ import annotations

import logging

import pytest

from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.processor import ReplicationProcessor
from tests.protocol.test_processor_transcripts import _exit, ack, engine, record_msg, run  # noqa: F401
from tests.support.source_sim import SourceSim

pytestmark = pytest.mark.usefixtures("moto")
INIT = {"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "42", "subSequenceNumber": 0}


def _levels(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.levelname for r in caplog.records if r.name == "tablesync.processor" and needle in r.getMessage()]


def test_a_checkpoint_refused_during_a_normal_stop_is_info(engine, clock, caplog) -> None:  # noqa: F811
    eng, _ = engine
    sim = SourceSim("source")
    sim.put({"pk": {"S": "k1"}})
    proc = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    caplog.set_level(logging.INFO, logger="tablesync.processor")
    run(proc, [
        INIT,
        {"action": "processRecords", "records": [record_msg(sim.records[0], "554")], "millisBehindLatest": 0},
        ack("554"),
        {"action": "shutdownRequested"},
        ack("554", error="RuntimeException"),
        {"action": "leaseLost"},
    ])
    assert _levels(caplog, "refused while stopping (RuntimeException)") == ["INFO"]
    assert _levels(caplog, "lease lost") == ["INFO"]
    assert not [r for r in caplog.records if r.name == "tablesync.processor" and r.levelno > logging.INFO]


def test_the_same_refusal_while_processing_is_an_error(engine, clock, caplog) -> None:  # noqa: F811
    eng, _ = engine
    sim = SourceSim("source")
    sim.put({"pk": {"S": "k1"}})
    proc = ReplicationProcessor(lambda: eng.pipeline, clock, RecordingMetrics(), exit=_exit)
    caplog.set_level(logging.INFO, logger="tablesync.processor")
    run(proc, [
        INIT,
        {"action": "processRecords", "records": [record_msg(sim.records[0], "554")], "millisBehindLatest": 0},
        ack("554", error="RuntimeException"),
    ])
    assert _levels(caplog, "checkpoint at 554 refused with RuntimeException: a bug") == ["ERROR"]
