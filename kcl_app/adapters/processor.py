"""The KCL record processor (amazon-kclpy v3): drives the replication engine for one shard.

Contract with the daemon, and how each failure is owned here (kclpy catches exceptions raised
by a processor, logs them and still reports success, so nothing may be left to raise):

1. `process_records`: decode and plan, hand each target its writes through its lane
   (`kcl_app.adapters.lanes`, in jobs of `JOB_RECORDS` records, one prepared ahead), wait only for
   the HEALTHY targets (a bounded patience after the fastest), then
   checkpoint at the highest record that is settled (applied or durably parked) in EVERY target,
   which may be a record of an earlier batch while a slow target's lane is still working.
   A record that cannot be decoded, checked or shaped is parked with its reason; if the engine
   itself fails on a batch, the whole batch is parked as poison. Only a record that cannot be
   parked (a dead-letter store is down) makes the process exit with an error before anything
   later can be checkpointed; the daemon then stops, its supervisor restarts it, and the records
   after the last checkpoint are delivered again (writes are fenced, so re-applying is harmless).
2. `shard_ended`: drain every lane (each job is bounded by its budget, then parks), then
   checkpoint SHARD_END (required, or the child shards stay blocked); if anything could not be
   parked, exit without it.
3. `lease_lost`: stop the lanes; never checkpoint (another worker owns the shard now).
4. `shutdown_requested` (SIGTERM, or a lease handed to another worker): checkpoint the last
   record settled everywhere, or the current position if none, so that the hand-off does not
   wait for its timeout; what a slow lane still holds is delivered again to the next owner.
Checkpoint errors: Throttling / KinesisClientLibDependency are retried with backoff; Shutdown
means the lease is gone; InvalidState / IllegalArgument are bugs and are logged as such.
"""

from __future__ import annotations

import enum
import logging
import sys
from collections.abc import Callable
from typing import Any

from amazon_kclpy.checkpoint_error import CheckpointError
from amazon_kclpy.v3.processor import RecordProcessorBase

from kcl_app import logs
from kcl_app.adapters.lanes import LaneBatch, Lanes
from kcl_app.adapters.retry import Backoff
from kcl_app.core.errors import ReplicationError
from kcl_app.core.records import RawRecord
from kcl_app.pipeline import BatchResult, Pipeline
from kcl_app.ports import Clock, Metrics

log = logging.getLogger("tablesync.processor")

EXIT_UNSETTLED = 3  # a batch could neither be applied nor parked
EXIT_ENGINE_BUG = 70
EXIT_CANNOT_START = 78  # configuration (EX_CONFIG): e.g. a source key schema that cannot be learned
SLOW_CHECKPOINT_SECONDS = 1.0  # a checkpoint slower than this is logged: the next batch waits for it
# Records per lanes job: a batch of up to 10,000 (a full GetRecords page) is handed to the lanes in
# jobs of this size, one prepared ahead while the previous one is written: memory stays that of two
# jobs whatever the page size, and decoding overlaps the targets' round trips. A target writes a job
# in rounds of `max_concurrency` transactions of 50 changes, and the job's last round is partly idle:
# 2,000 records keep that idle part small (bench/catchup: +16 % changes/s and -15 % CPU per change
# over 1,000, for ~9 MB more at the peak).
JOB_RECORDS = 2_000


class CheckpointFailure(enum.Enum):
    RETRY = "retry"
    LEASE_GONE = "lease_gone"
    BUG = "bug"

    @classmethod
    def of(cls, error: CheckpointError) -> CheckpointFailure:
        value = str(getattr(error, "value", error))
        if value in ("ThrottlingException", "KinesisClientLibDependencyException"):
            return cls.RETRY
        if value == "ShutdownException":
            return cls.LEASE_GONE
        return cls.BUG


class ReplicationProcessor(RecordProcessorBase):
    def __init__(self, pipeline_factory: Callable[[], Pipeline], clock: Clock, metrics: Metrics,
                 backoff: Backoff | None = None, checkpoint_attempts: int = 6,
                 exit: Callable[[int], Any] = sys.exit,
                 lanes: Callable[[Pipeline], Lanes] | None = None, job_records: int = JOB_RECORDS) -> None:
        self._factory = pipeline_factory
        self.job_records = max(1, job_records)
        self._lanes_factory = lanes or (lambda p: Lanes(p, self.clock, self.metrics))
        self.lanes: Lanes | None = None
        self.clock = clock
        self.metrics = metrics
        self.backoff = backoff or Backoff(base=0.2, cap=5.0)
        self.checkpoint_attempts = checkpoint_attempts
        self._exit = exit
        self.pipeline: Pipeline | None = None
        self.shard_id = ""
        self.lease_held = True
        self.last_settled: tuple[str, int] | None = None

    # -- the KCL lifecycle ----------------------------------------------------------------------
    def initialize(self, initialize_input: Any) -> None:
        self.shard_id = initialize_input.shard_id
        logs.add_static(shard=self.shard_id)
        log.info("initialize at %s", initialize_input.sequence_number)
        try:
            self.pipeline = self._factory()
            self.lanes = self._lanes_factory(self.pipeline)
        except Exception as exc:  # e.g. a key schema that cannot be learned: say so and stop clearly
            log.critical("cannot start the engine: %s", exc, exc_info=not isinstance(exc, ReplicationError))
            self._exit(EXIT_CANNOT_START)

    def process_records(self, process_records_input: Any) -> None:
        if not self.lease_held:
            log.warning("records after lease loss ignored")
            return
        received_ms = self.clock.now() * 1000.0
        try:
            incoming = list(process_records_input.records)
            assert self.pipeline is not None and self.lanes is not None, "initialize was not called"
        except Exception:
            self._unreadable()
            return
        parked: BatchResult | None = None
        rest: list[RawRecord] = []  # the records parked whole (an engine defect), from the first
        last: RawRecord | None = None
        stuck = False
        ahead: LaneBatch | None = None
        for start in range(0, len(incoming), self.job_records):
            # each job's records are read when it is prepared: a page's copy of its payloads is
            # never held whole beside the daemon's message
            job = self._read(incoming[start : start + self.job_records])
            if job is None:
                return
            try:
                batch = self.lanes.submit(job)
            except Exception as exc:  # an engine defect: park the rest of the batch whole rather than stall
                log.critical("engine failed on a batch of %d records; parking them as poison",
                             len(incoming) - start, exc_info=True)
                later = self._read(incoming[start + self.job_records :])
                if later is None:
                    return
                rest = job + later
                parked = self.pipeline.park_all(rest, f"engine failed on the batch ({type(exc).__name__})")
                break
            if ahead is not None:  # one job prepared ahead while the lanes write the previous one
                self.lanes.wait(ahead)
                last, stuck = self._settled(last, stuck)
            ahead = batch
        if ahead is not None:
            self.lanes.wait(ahead)
        try:
            behind = process_records_input.millis_behind_latest
            # DeliveryMs: how long the batch's oldest record waited between its arrival in the stream
            # and this call (the daemon's polling, GetRecords, the previous batch still being answered)
            first = getattr(incoming[0], "timestamp_millis", None) if incoming else None
            delivery = [received_ms - first] if type(first) is int else []
            self.metrics.emit({"Shard": self.shard_id}, {"Records": len(incoming)},
                              {"MillisBehindLatest": [float(behind)] if behind is not None else [],
                               "DeliveryMs": delivery})
            self.lanes.tick()
        except Exception:  # metrics never stop a shard
            log.warning("shard metrics not emitted", exc_info=True)
        last, stuck = self._settled(last, stuck)
        if parked is not None and not stuck and self.lanes.in_flight == 0 and parked.checkpoint_index >= 0:
            # the lanes hold nothing earlier: the parked records' settled prefix may be checkpointed
            last = rest[parked.checkpoint_index]
        if last is not None:
            self._checkpoint_at(process_records_input.checkpointer, last)
        if stuck:
            self._unsettled(-1, len(incoming))
        elif parked is not None and not parked.complete:
            self._unsettled(len(incoming) - len(rest) + parked.checkpoint_index, len(incoming))

    def _read(self, records: list[Any]) -> list[RawRecord] | None:
        try:
            return [self._raw(r) for r in records]
        except Exception:
            self._unreadable()
            return None

    def _unreadable(self) -> None:
        log.critical("cannot read the batch; exiting so that nothing past it is checkpointed", exc_info=True)
        self._exit(EXIT_ENGINE_BUG)

    def _settled(self, last: RawRecord | None, stuck: bool) -> tuple[RawRecord | None, bool]:
        """The last record settled everywhere so far (the lanes release what they hold for it)."""
        if stuck:
            return last, True
        newer, stuck = self.lanes.checkpointable() if self.lanes is not None else (None, False)
        return newer or last, stuck

    def _checkpoint_at(self, checkpointer: Any, record: RawRecord) -> None:
        self.last_settled = (record.sequence_number, record.sub_sequence_number)
        self._checkpoint(checkpointer, *self.last_settled)

    def _unsettled(self, index: int, size: int) -> None:
        log.critical("batch not settled after record %d of %d (dead-letter store failing); exiting "
                     "so that the records are delivered again after restart", index, size)
        self._exit(EXIT_UNSETTLED)

    def lease_lost(self, lease_lost_input: Any) -> None:
        self.lease_held = False
        # Routine: leases move between workers (rebalancing, a worker stopping); the new owner
        # resumes from the last checkpoint.
        log.info("lease lost: stopping without checkpoint")
        if self.lanes is not None:
            self.lanes.stop()

    def shard_ended(self, shard_ended_input: Any) -> None:
        if self.lanes is not None:
            self.lanes.drain()
            _, stuck = self.lanes.checkpointable()
            if stuck or self.lanes.in_flight:
                log.critical("shard ended with changes neither applied nor parked; exiting without SHARD_END "
                             "so that they are delivered again")
                self._exit(EXIT_UNSETTLED)
                return
        log.info("shard ended: checkpointing SHARD_END")
        self._checkpoint(shard_ended_input.checkpointer, None, None)

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        if not self.lease_held:
            return
        if self.lanes is not None:
            last, _ = self.lanes.checkpointable()
            if last is not None:
                self.last_settled = (last.sequence_number, last.sub_sequence_number)
        # Always answer with a checkpoint: KCL 3.x hands a lease to another worker once the
        # current processor checkpoints, or only after gracefulLeaseHandoffTimeoutMillis (30 s)
        # if it does not. Without a settled record yet, the checkpoint without a sequence number
        # names the largest record delivered, which is none: the lease's current position.
        log.info("shutdown requested: checkpointing %s", self.last_settled or "the current position")
        if self.last_settled is None:
            self._checkpoint(shutdown_requested_input.checkpointer, None, None, stopping=True)
        else:
            self._checkpoint(shutdown_requested_input.checkpointer, *self.last_settled, stopping=True)

    # -- helpers ----------------------------------------------------------------------------------
    def _raw(self, record: Any) -> RawRecord:
        """The record as the engine sees it. Total: a field the daemon sent malformed becomes a
        neutral value (the payload's text, no arrival time), and decoding then parks the record."""
        try:
            data = record.binary_data
        except Exception as exc:  # not base64: keep the text so the poison entry is complete
            log.error("record %s: payload is not base64 (%s)", getattr(record, "sequence_number", "?"),
                      type(exc).__name__)
            data = str(getattr(record, "_data", "")).encode("utf-8", "backslashreplace")
        if not isinstance(data, bytes):
            data = str(data).encode("utf-8", "backslashreplace")
        sub = getattr(record, "sub_sequence_number", 0)
        arrival = getattr(record, "timestamp_millis", None)
        return RawRecord(
            data=data,
            sequence_number=record.sequence_number,
            sub_sequence_number=sub if type(sub) is int else 0,
            partition_key=str(getattr(record, "partition_key", "") or ""),
            shard_id=self.shard_id,
            arrival_millis=arrival if type(arrival) is int and 0 <= arrival < 1 << 63 else None,
        )

    def _checkpoint(self, checkpointer: Any, sequence: str | None, sub: int | None, *,
                    stopping: bool = False) -> bool:
        """Checkpoint with retries. ``stopping``: the daemon is shutting this shard down (a normal
        stop or a hand-off); a refusal then is routine -- the daemon may already be releasing the
        lease -- and is logged at INFO: the next owner resumes from the last checkpoint taken."""
        for attempt in range(self.checkpoint_attempts):
            try:
                asked = self.clock.monotonic()
                checkpointer.checkpoint(sequence, sub)
                took = self.clock.monotonic() - asked
                if took >= SLOW_CHECKPOINT_SECONDS:  # the shard waits for it: its next batch is that late
                    log.warning("checkpoint at %s took %.1f s (the daemon's answer: its lease table write)",
                                sequence, took)
                return True
            except CheckpointError as err:
                kind = CheckpointFailure.of(err)
                if kind is CheckpointFailure.LEASE_GONE:
                    self.lease_held = False
                    log.info("checkpoint at %s refused, lease gone (%s)", sequence, err.value)
                    return False
                if kind is CheckpointFailure.BUG:
                    if stopping:
                        log.info("checkpoint at %s refused while stopping (%s); the next owner resumes "
                                 "from the last checkpoint", sequence, err.value)
                    else:
                        log.error("checkpoint at %s refused with %s: a bug, not retried", sequence, err.value)
                    return False
                log.info("checkpoint throttled (%s), attempt %d", err.value, attempt + 1)
                self.clock.sleep(self.backoff.delay(attempt))
        log.error("checkpoint at %s not taken after %d attempts; a later one will cover it",
                  sequence, self.checkpoint_attempts)
        return False
