"""Echo record processor used by the daemon smoke test.

Run as a KCL multi-lang child (``python tests/integration/echo_processor.py``). It appends one JSON
line per record -- ``{"shard": ..., "seq": ..., "data": ...}`` -- to the file named by the
``TABLESYNC_ECHO_FILE`` environment variable, then checkpoints the batch. At shard end it
checkpoints (mandatory, or child shards stay blocked); on a shutdown request it checkpoints what it
has. It logs to stderr only: stdout is the KCL protocol channel.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

LOG = logging.getLogger("echo_processor")
ECHO_FILE_ENV = "TABLESYNC_ECHO_FILE"


class EchoProcessor(processor.RecordProcessorBase):
    """Appends every record to the echo file and checkpoints after each batch."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._shard_id = "?"

    def initialize(self, initialize_input: object) -> None:
        self._shard_id = initialize_input.shard_id  # type: ignore[attr-defined]
        LOG.info("initialize shard=%s", self._shard_id)

    def process_records(self, process_records_input: object) -> None:
        records = process_records_input.records  # type: ignore[attr-defined]
        lines = [
            json.dumps(
                {
                    "shard": self._shard_id,
                    "seq": r.sequence_number,
                    "data": r.binary_data.decode("utf-8", "replace"),
                }
            )
            + "\n"
            for r in records
        ]
        if lines:
            # One write per batch in append mode: lines from concurrent shard processes do not interleave.
            with open(self._path, "a", encoding="utf-8") as fh:
                fh.write("".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
            process_records_input.checkpointer.checkpoint()  # type: ignore[attr-defined]
        LOG.info("shard=%s processed %d records", self._shard_id, len(lines))

    def lease_lost(self, lease_lost_input: object) -> None:
        LOG.info("lease lost shard=%s", self._shard_id)

    def shard_ended(self, shard_ended_input: object) -> None:
        shard_ended_input.checkpointer.checkpoint()  # type: ignore[attr-defined]

    def shutdown_requested(self, shutdown_requested_input: object) -> None:
        LOG.info("shutdown requested shard=%s", self._shard_id)
        shutdown_requested_input.checkpointer.checkpoint()  # type: ignore[attr-defined]


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the daemon turns it into
    # shutdown_requested, so the processor itself must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="echo %(levelname)s %(message)s")
    kcl.KCLProcess(EchoProcessor(os.environ[ECHO_FILE_ENV])).run()


if __name__ == "__main__":
    main()
