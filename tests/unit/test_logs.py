"""Log plumbing: kclpy's free-text errors become JSON lines; the daemon gets the packaged logback."""

from __future__ import annotations

import io
import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

from amazon_kclpy import kcl
from amazon_kclpy.v3.processor import RecordProcessorBase

from kcl_app import daemon, logs


class Exploding(RecordProcessorBase):
    def initialize(self, initialize_input: object) -> None:
        raise RuntimeError("boom\nsecond line")

    def process_records(self, process_records_input: object) -> None: ...
    def lease_lost(self, lease_lost_input: object) -> None: ...
    def shard_ended(self, shard_ended_input: object) -> None: ...
    def shutdown_requested(self, shutdown_requested_input: object) -> None: ...


def test_kclpy_errors_written_to_the_error_file_come_out_as_json_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test_logs.amazon_kclpy")
    logger.propagate = False
    logger.handlers[:] = [handler]
    transcript = io.StringIO(json.dumps({"action": "initialize", "shardId": "shardId-1",
                                         "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0}) + "\n")
    out = io.StringIO()
    errors = logs.LogLineWriter(logger)
    kcl.KCLProcess(Exploding(), input_file=transcript, output_file=out, error_file=errors).run()
    errors.flush()
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is JSON
    assert docs and all(d["logger"] == "test_logs.amazon_kclpy" and d["level"] == "ERROR" for d in docs)
    text = "\n".join(d["msg"] for d in docs)
    assert "Caught exception from action dispatch: boom" in text and "RuntimeError: boom" in text
    answers = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert answers == [{"action": "status", "responseFor": "initialize"}]  # kclpy still answers


def test_a_partial_line_waits_for_its_end() -> None:
    seen: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("test_logs.partial")
    logger.propagate = False
    logger.addHandler(Recorder())
    writer = logs.LogLineWriter(logger)
    writer.write("half ")
    assert seen == []
    writer.write("done\n\nnext")
    assert seen == ["half done"]
    writer.flush()
    assert seen == ["half done", "next"]


def test_the_daemon_gets_the_packaged_logback_configuration(tmp_path: Path) -> None:
    argv = daemon.java_command(tmp_path / "kcl.properties", java="/usr/bin/java")
    assert f"-Dlogback.configurationFile={daemon.LOGBACK_XML}" in argv
    assert argv.index(f"-Dlogback.configurationFile={daemon.LOGBACK_XML}") < argv.index(daemon.MAIN_CLASS)
    assert not [a for a in daemon.java_command(tmp_path / "p", java="j", logback=None) if "logback" in a]
    root = ET.parse(daemon.LOGBACK_XML).getroot()  # noqa: S314 - our own packaged file
    levels = {e.get("name"): e.get("level") for e in root.iter("logger")}
    # the KCL's ERROR copy of each processor line is off (the raw line passes through)
    assert levels["software.amazon.kinesis.multilang.DrainChildSTDERRTask"] == "OFF"
    assert 'logback.xml' in (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
