"""The multi-lang protocol loop of a shard process: amazon-kclpy's own, with the daemon's messages read faster.

kclpy (3.1.3) reads each message line with the stdlib's `json.loads` and an `object_hook` that builds a
`messages.Record` per record, and each Record converts its arrival time to a `datetime` when it is built.
A full GetRecords page is one line of up to 10,000 records (~10 MB): in a catch-up that parse is a fifth
of the shard process's CPU. `kcl_process` runs kclpy's `KCLProcess` unchanged (its dispatch, its
checkpointer, its answers) with one difference: each line is parsed by orjson, and a processRecords
message's records become `WireRecord`s, the same `messages.Record` type with the same fields and errors,
whose `datetime` is only made if it is asked for. Every other message goes through kclpy's own decoder.

Faithful to kclpy for what the daemon sends (`tests/protocol/test_daemon_io.py` replays transcripts
through both and compares every record and every answer); a line that is not JSON raises, as in kclpy,
and ends the process (the daemon never sends one).
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import IO, Any

import orjson
from amazon_kclpy import dispatch, kcl, messages


class WireRecord(messages.Record):  # type: ignore[misc]  # kclpy is untyped
    """A kclpy Record built without its eager `datetime` (the processor reads `timestamp_millis`)."""

    def __init__(self, json_dict: dict[str, Any]) -> None:  # noqa: D107 - the same fields kclpy requires
        self._sequence_number = json_dict["sequenceNumber"]
        self._sub_sequence_number = json_dict["subSequenceNumber"]
        self._timestamp_millis = int(json_dict["approximateArrivalTimestamp"])
        self._partition_key = json_dict["partitionKey"]
        self._data = json_dict["data"]
        self._json_dict = json_dict

    @property
    def approximate_arrival_timestamp(self) -> datetime:
        return datetime.fromtimestamp(self._timestamp_millis / 1000.0)


class MessageReader(kcl._IOHandler):  # type: ignore[misc]  # noqa: SLF001 - kclpy's reader, one method changed
    """kclpy's message reader and writer, reading each line with orjson."""

    def load_action(self, line: str) -> Any:
        doc = orjson.loads(line)
        if isinstance(doc, dict) and doc.get("action") == "processRecords" and isinstance(doc.get("records"), list):
            doc["records"] = [_record(r) for r in doc["records"]]
            return dispatch.message_decode(doc)
        return kcl._IOHandler.load_action(self, line)  # noqa: SLF001 - rare messages: kclpy's own decoder


def _record(doc: Any) -> Any:
    if isinstance(doc, dict) and doc.get("action") == "record":
        return WireRecord(doc)
    return dispatch.message_decode(doc)  # what kclpy's hook does with it (it raises MalformedAction)


def kcl_process(processor: Any, input_file: IO[str] | None = None, output_file: IO[str] | None = None,
                error_file: Any = None) -> Any:
    """kclpy's `KCLProcess` for `processor`, reading the daemon's messages with `MessageReader`.
    Files default to kclpy's (stdin, stdout, stderr)."""
    process = kcl.KCLProcess(processor, input_file=sys.stdin if input_file is None else input_file,
                             output_file=sys.stdout if output_file is None else output_file,
                             error_file=sys.stderr if error_file is None else error_file)
    old = process.io_handler
    process.io_handler = MessageReader(old.input_file, old.output_file, old.error_file)
    process.checkpointer = kcl.Checkpointer(process.io_handler)
    return process


__all__ = ["MessageReader", "WireRecord", "kcl_process"]
