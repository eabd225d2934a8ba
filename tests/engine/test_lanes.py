"""Per-target lanes through kclpy's real protocol loop: one failing target never slows the others,
every change ends applied or parked before it is checkpointed, and the failed target heals by
itself once it is back (its parked backlog re-applied through the fenced path, no command).

The targets are fenced in-memory fakes that record state; the dead-letter store is the real
directory store; the clock is fake (budgets and probe schedules advance only when slept on).
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kcl_app.adapters.daemon_io import kcl_process
from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.lanes import Lanes, LaneSettings
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.processor import ReplicationProcessor
from kcl_app.core.attrs import key_id
from kcl_app.core.plan import TargetRule, Write
from kcl_app.pipeline import Pipeline
from kcl_app.ports import ApplyResult
from kcl_app.redrive import auto_redrive
from tests.support.daemon_side import ScriptedDaemon
from tests.support.source_sim import SourceSim


class FakeTarget:
    """A fenced target in memory. `mode`: "up"; "down" (refused connections: every call fails and
    is retried on the clock until the deadline, as the real writers do); "silent" (an endpoint that
    accepts and never answers: the call blocks until `gate` opens, then fails like "down")."""

    def __init__(self, name: str, clock: Any) -> None:
        self.name = name
        self.clock = clock
        self.mode = "up"
        self.gate = threading.Event()
        self.items: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, Any] = {}
        self.calls = 0
        self.sizes: list[int] = []  # per call: how many writes it carried
        self.delay = 0.0  # real seconds every call takes (a busy target: a catch-up's full pages)
        self.budgets: list[float] = []  # per call: the budget it was given (deadline - start)
        self._lock = threading.Lock()

    def apply(self, writes: Sequence[Write], deadline: float) -> ApplyResult:
        with self._lock:
            self.calls += 1
            self.sizes.append(len(writes))
            self.budgets.append(deadline - self.clock.monotonic())
        if self.delay:
            threading.Event().wait(self.delay)  # the simulated slowness is what is under test
        if self.mode == "silent":
            self.gate.wait(timeout=60)
        if self.mode in ("down", "silent"):
            while self.clock.monotonic() + 1.0 < deadline:
                self.clock.sleep(1.0)
            return ApplyResult(failed=[(w, "retry budget spent; last error EndpointConnectionError") for w in writes])
        result = ApplyResult()
        with self._lock:
            for w in writes:
                seen = self.versions.get(w.key_id)
                if seen is not None and w.version <= seen:
                    (result.duplicate if w.version == seen else result.stale).append(w)
                    continue
                self.versions[w.key_id] = w.version
                if w.item is None:
                    self.items.pop(w.key_id, None)
                else:
                    self.items[w.key_id] = w.item
                result.applied.append(w)
        return result


class Stack:
    def __init__(self, clock: Any, tmp_path: Path, *, patience: float | None = None, max_backlog: int = 10_000,
                 paused: set[str] | None = None, background: float = 3600.0) -> None:
        self.clock = clock
        self.targets = {n: FakeTarget(n, clock) for n in ("a", "b")}
        self.sink = DirectoryDeadLetters(tmp_path / "dl")
        self.metrics = RecordingMetrics()
        self.pipeline = Pipeline([TargetRule("a", "src"), TargetRule("b", "src")], dict(self.targets), self.sink,
                                 self.metrics, clock, retry_budget_seconds=30.0)
        self.paused = paused if paused is not None else set()
        self.sim = SourceSim("src", start_micros=int((clock.now() - 60) * 1e6))
        self.seq = 0
        self.lock_dir = str(tmp_path / "locks")
        # the background duties (probes and heals without traffic) are off unless a test turns them on
        self.settings = LaneSettings(patience=patience, max_backlog=max_backlog, heal_interval=3600.0,
                                     background_interval=background)
        self.lanes: Lanes | None = None
        self.job_records = 1_000
        self.healing = True  # False: no self-healing (a test that counts every call a target gets)
        self.exits: list[int] = []
        self.daemon = ScriptedDaemon([])

    def heal(self, name: str, limit: int | None = None, budget: float | None = None) -> Any:
        return auto_redrive(self.pipeline, self.sink, name, clock=self.clock, rate=1000.0, lock_dir=self.lock_dir,
                            metrics=self.metrics, limit=limit, budget=budget)

    def make_lanes(self, pipeline: Pipeline) -> Lanes:
        self.lanes = Lanes(pipeline, self.clock, self.metrics, self.settings, paused=lambda: self.paused,
                           heal=self.heal if self.healing else None)
        return self.lanes

    def processor(self) -> ReplicationProcessor:
        return ReplicationProcessor(lambda: self.pipeline, self.clock, self.metrics, exit=self.exits.append,
                                    lanes=self.make_lanes, job_records=self.job_records)

    def batch(self, n: int = 3) -> dict[str, Any]:
        records = []
        for _ in range(n):
            self.seq += 1
            data = self.sim.put({"pk": {"S": f"k{self.seq % 4}"}, "n": {"N": str(self.seq)}})
            records.append({"action": "record", "data": base64.b64encode(data).decode(),
                            "sequenceNumber": f"{self.seq:05d}", "subSequenceNumber": 0,
                            "partitionKey": "p", "approximateArrivalTimestamp": int(self.clock.now() * 1000)})
        return {"action": "processRecords", "records": records, "millisBehindLatest": 0}

    def run(self, script: list[dict[str, Any] | Callable[[], object]]) -> ScriptedDaemon:
        daemon = ScriptedDaemon([{"action": "initialize", "shardId": "shardId-000000000001",
                          "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0}, *script])
        self.daemon = daemon  # a step of the script may read what was sent so far
        errors = io.StringIO()
        kcl_process(self.processor(), input_file=daemon, output_file=daemon, error_file=errors).run()
        assert "Caught exception" not in errors.getvalue(), errors.getvalue()
        return daemon

    def source(self) -> dict[str, dict[str, Any]]:
        return {key_id({"pk": item["pk"]}): item for item in self.sim.items.values()}

    def parked(self, store: str) -> list[str]:
        return [entry.reason for _, entry in self.sink.read(store)]

    def wait_heal(self, name: str) -> None:
        assert self.lanes is not None
        thread = self.lanes.healing(name)
        assert thread is not None, f"no heal started for {name}"
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_a_down_target_costs_one_budget_then_parks_at_once_and_heals_after_recovery(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path)
    a, b = stack.targets["a"], stack.targets["b"]
    spent: list[float] = []

    def mark() -> None:
        spent.append(clock.monotonic())

    def recover() -> None:
        b.mode = "up"
        clock.advance(3.0)  # past the first probe delay (2 s)

    def down() -> None:
        b.mode = "down"

    def probed() -> None:
        assert stack.lanes is not None
        stack.lanes.drain()

    daemon = stack.run([
        down, mark, stack.batch(),  # the first batch spends b's budget (30 s on the fake clock)
        mark, stack.batch(), mark, stack.batch(), mark,  # b is open: parked at once, nothing waits
        recover, stack.batch(),  # this batch is the probe (not waited for): it succeeds, b heals by itself
        probed, stack.batch(),  # b is healthy again: waited for, like a
        {"action": "shardEnded"},
    ])
    stack.wait_heal("b")
    # the first batch waited one budget for b; the next two did not wait at all
    assert spent[1] - spent[0] >= 29.0
    assert spent[2] == spent[1] and spent[3] == spent[2]
    # one budgeted call, the probe, the heal's replay of the parked changes, the last batch
    assert b.calls == 4
    # every batch checkpointed its end (settled everywhere: applied in a, parked or applied in b);
    # the probe's batch only if the probe had settled before the shard looked (it does not wait for it)
    assert [c for c in daemon.checkpoints() if c != "00012"] == ["00003", "00006", "00009", "00015", None]
    assert stack.exits == []
    # both targets equal the source, with no command; nothing is left parked
    assert a.items == stack.source()
    assert b.items == stack.source()
    assert stack.parked("b") == []
    healed = [c for d, c, _ in stack.metrics.emitted if d == {"Target": "b"} and "AutoRedriven" in c]
    assert healed and healed[-1]["AutoRedriven"] == 9 and healed[-1]["ParkedBacklog"] == 0


def test_a_silent_target_is_not_waited_for_and_the_checkpoint_stays_behind_it(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path, patience=0.05)
    stack.healing = False  # a heal round of the failing b would replay its parked changes: other calls
    a, b = stack.targets["a"], stack.targets["b"]
    b.mode = "silent"
    seen: dict[str, Any] = {}

    def release() -> None:
        # the silent call ends (its read timeout): the budget is spent; the queued job parks unsent
        seen["a_items_during"] = dict(a.items)
        seen["checkpoints_during"] = list(stack.daemon.checkpoints())
        b.gate.set()
        assert stack.lanes is not None
        stack.lanes.drain()

    script: list[dict[str, Any] | Callable[[], object]] = [stack.batch(), stack.batch(), release, stack.batch()]
    script.append({"action": "shardEnded"})
    daemon = stack.run(script)
    assert seen["checkpoints_during"] == []  # nothing checkpointed while b still held batch 1
    assert len(seen["a_items_during"]) == 4  # while the healthy target had both batches applied
    assert b.calls == 1  # the queued second job was parked without being sent
    assert daemon.checkpoints() == ["00009", None]  # everything settled: applied in a, parked in b
    assert a.items == stack.source()
    reasons = stack.parked("b")
    assert len(reasons) == 9
    assert sum(r.startswith("retry budget spent") for r in reasons) == 3
    assert sum(r.startswith("target b is open") and r.endswith("parked without sending") for r in reasons) == 6


def test_a_slow_target_working_through_its_queue_is_not_waited_for_again_until_it_has_caught_up(
        clock, tmp_path, caplog) -> None:
    # b takes longer than the patience on every job: given up on once, it must not be waited for (and
    # given up on) again on every later batch while its lane still holds jobs, only once caught up
    stack = Stack(clock, tmp_path, patience=0.05)
    stack.healing = False
    a, b = stack.targets["a"], stack.targets["b"]
    b.delay = 0.6  # long beside the patience and beside submitting three small batches, even under load
    second_call = threading.Event()
    slow_apply = b.apply

    def apply(writes: Sequence[Write], deadline: float) -> ApplyResult:
        if b.calls == 1:  # the lane starts its second job: the first has settled, two are queued
            second_call.set()
        return slow_apply(writes, deadline)

    b.apply = apply  # type: ignore[method-assign]
    states: list[str] = []

    def after_first_job() -> None:
        assert second_call.wait(timeout=30)
        assert stack.lanes is not None
        states.append(stack.lanes.health["b"].state)

    caplog.set_level("INFO", logger="tablesync.lanes")
    script: list[dict[str, Any] | Callable[[], object]] = [
        stack.batch(), stack.batch(), stack.batch(), after_first_job, stack.batch(), stack.batch(),
        {"action": "shardEnded"}]
    daemon = stack.run(script)
    given_up = [r for r in caplog.records if r.getMessage().startswith("target b: still writing")]
    assert len(given_up) == 1, [r.getMessage() for r in given_up]
    assert states == ["failing"]  # its first job settled with jobs queued behind it: still not waited for
    assert stack.lanes is not None and stack.lanes.health["b"].state == "healthy"  # caught up at the end
    assert daemon.checkpoints()[-1] is None and a.items == b.items == stack.source()
    assert stack.parked("b") == []


def test_targets_that_are_all_slow_are_waited_for_and_nothing_is_parked(clock, tmp_path) -> None:
    # a catch-up: every target takes longer than the patience for a full page; none is slower than
    # another, so none is given up on: the shard is paced by them, nothing piles up, nothing parks
    stack = Stack(clock, tmp_path, patience=0.02, max_backlog=4)
    a, b = stack.targets["a"], stack.targets["b"]
    a.delay = b.delay = 0.15
    daemon = stack.run([stack.batch(), stack.batch(), stack.batch(), {"action": "shardEnded"}])
    assert daemon.checkpoints() == ["00003", "00006", "00009", None]
    assert stack.parked("b") == [] and stack.parked("a") == []
    assert a.calls == b.calls == 3
    assert a.items == b.items == stack.source()
    assert stack.lanes is not None and {h.state for h in stack.lanes.health.values()} == {"healthy"}


def test_a_silent_target_beyond_the_backlog_bound_parks_at_once_and_shutdown_checkpoints_what_is_settled(
        clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path, patience=0.02, max_backlog=4)
    a, b = stack.targets["a"], stack.targets["b"]
    b.mode = "silent"
    daemon = stack.run([stack.batch(3), stack.batch(3), {"action": "shutdownRequested"}, b.gate.set])
    # shutdown: nothing is settled everywhere yet (b still holds batch 1), so the current position
    assert daemon.checkpoints() == [None]
    assert stack.lanes is not None
    stack.lanes.drain()  # the released call spends its budget: batch 1 is parked too
    # batch 1 went to b's lane (3 writes in flight); batch 2 would pass the bound of 4: parked unsent
    assert b.calls == 1
    reasons = stack.parked("b")
    assert sum("writes in flight (bound 4); parked without sending" in r for r in reasons) == 3
    assert sum(r.startswith("retry budget spent") for r in reasons) == 3 and len(reasons) == 6
    assert len(a.items) == 4


def test_lease_lost_stops_the_lanes_and_checkpoints_nothing(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path, patience=0.02)
    stack.targets["b"].mode = "silent"
    daemon = stack.run([stack.batch(), {"action": "leaseLost"}, stack.targets["b"].gate.set])
    assert daemon.checkpoints() == []


def test_shard_end_drains_a_slow_lane_before_shard_end(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path, patience=0.02)
    b = stack.targets["b"]
    b.mode = "silent"

    def answer_later() -> None:  # the silent endpoint's call times out while shard_ended drains
        threading.Thread(target=b.gate.set).start()

    daemon = stack.run([stack.batch(), stack.batch(), answer_later, {"action": "shardEnded"}])
    assert daemon.checkpoints() == [None]  # SHARD_END only once b's lane is drained (its writes parked)
    assert len(stack.parked("b")) == 6
    assert stack.exits == []


def test_a_paused_target_is_parked_deliberately_and_caught_up_on_resume(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path, paused={"b"})
    a, b = stack.targets["a"], stack.targets["b"]

    def resume() -> None:
        stack.paused.clear()

    daemon = stack.run([stack.batch(), stack.batch(), resume, stack.batch(), {"action": "shardEnded"}])
    stack.wait_heal("b")
    assert daemon.checkpoints() == ["00003", "00006", "00009", None]
    assert b.items == a.items == stack.source()
    assert stack.parked("b") == []
    assert b.calls == 2  # the batch after the resume, and the catch-up of the six paused changes


def test_a_write_rate_cap_paces_only_its_own_lane(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path)
    pipeline = stack.pipeline
    lanes = Lanes(pipeline, clock, stack.metrics, LaneSettings(), rate_caps={"b": 3.0})
    for _ in range(3):
        lanes.wait(lanes.submit(_raw(stack.batch(3))))
    lanes.drain()
    last, stuck = lanes.checkpointable()
    assert last is not None and last.sequence_number == "00009" and not stuck
    # a full bucket (3) then 3 writes per second: two batches of 3 waited 1 s each on the clock
    assert clock.slept == [1.0, 1.0]
    lanes.close()


def _raw(message: dict[str, Any]) -> list[Any]:
    from kcl_app.core.records import RawRecord

    return [RawRecord(base64.b64decode(r["data"]), r["sequenceNumber"], shard_id="s") for r in message["records"]]


def test_a_probe_of_a_target_still_down_costs_only_the_probe_budget(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path)
    b = stack.targets["b"]
    b.mode = "down"

    def probe_due() -> None:
        clock.advance(2.0)

    daemon = stack.run([stack.batch(), probe_due, stack.batch(), {"action": "shardEnded"}])
    assert b.calls == 2  # the budgeted call, then the probe (its batch is not waited for: b is open)
    assert b.budgets == [30.0, stack.settings.probe_budget]
    assert stack.lanes is not None and stack.lanes.health["b"].state == "open"
    assert daemon.checkpoints() == ["00003", None]


def test_with_no_traffic_after_the_outage_the_target_is_probed_from_its_parked_changes_and_healed(
        clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path, background=0.02)
    a, b = stack.targets["a"], stack.targets["b"]
    b.mode = "down"
    done = threading.Event()

    def recover_and_wait() -> None:
        b.mode = "up"
        clock.advance(3.0)  # the probe is due; no batch comes: the background probes with parked changes
        assert stack.lanes is not None
        lanes = stack.lanes

        def healed() -> bool:
            return lanes.health["b"].state == "healthy" and not stack.parked("b")

        deadline = threading.Event()
        for _ in range(500):  # up to ~10 s of real time, condition checked every 20 ms
            if healed():
                done.set()
                return
            deadline.wait(0.02)

    daemon = stack.run([stack.batch(), stack.batch(), recover_and_wait, {"action": "shardEnded"}])
    assert done.is_set(), "b was not healed without traffic"
    assert b.items == a.items == stack.source()
    assert daemon.checkpoints() == ["00003", "00006", None]


def test_a_background_probe_of_a_target_still_down_costs_only_the_probe_budget(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path)
    b = stack.targets["b"]
    b.mode = "down"

    def probe_due() -> None:
        clock.advance(2.0)  # no batch comes: the background duties probe with b's parked changes
        assert stack.lanes is not None
        stack.lanes.tick()  # what the background thread runs once a second
        probe = stack.lanes.healing("b")
        assert probe is not None and probe.name == "ts-probe-b"
        probe.join(timeout=30)

    stack.run([stack.batch(), probe_due, {"action": "shardEnded"}])
    # the batch's budgeted call, then the probe from the parked changes: short, like a live probe
    assert b.budgets == [30.0, stack.settings.probe_budget]
    assert stack.lanes is not None and stack.lanes.health["b"].failures == 2  # the probe failed: still open
    assert len(stack.parked("b")) == 3  # the probe's changes are parked again, none lost


def test_a_large_batch_goes_to_the_lanes_in_jobs_and_is_checkpointed_at_its_end(clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path)
    stack.job_records = 2
    a, b = stack.targets["a"], stack.targets["b"]
    daemon = stack.run([stack.batch(5), {"action": "shardEnded"}])  # keys k1 k2 k3 k0 k1
    assert a.sizes == b.sizes == [2, 2, 1]  # three jobs of at most 2 records, in order
    assert daemon.checkpoints() == ["00005", None]
    assert a.items == b.items == stack.source()


def test_an_engine_defect_on_a_later_job_parks_the_rest_of_the_batch_and_keeps_the_earlier_jobs(
        clock, tmp_path) -> None:
    stack = Stack(clock, tmp_path)
    stack.job_records = 2
    a = stack.targets["a"]
    prepare = stack.pipeline.prepare

    def defective(records: Any, only: Any = None) -> Any:
        if any(r.sequence_number == "00003" for r in records):
            raise RuntimeError("a defect on this job")
        return prepare(records, only)

    stack.pipeline.prepare = defective  # type: ignore[method-assign]
    daemon = stack.run([stack.batch(5), {"action": "shardEnded"}])
    assert a.sizes == [2]  # the first job was applied; the defect's job and the rest were parked whole
    poison = [entry for _, entry in stack.sink.read("_poison")]
    assert sorted(e.sequence_number for e in poison) == ["00003", "00004", "00005"]
    assert {e.reason for e in poison} == {"engine failed on the batch (RuntimeError)"}
    assert daemon.checkpoints() == ["00005", None]  # everything settled: applied or parked
    assert stack.exits == []


def test_a_heal_leaves_the_stream_pipeline_parking_into_its_own_store(clock, tmp_path) -> None:
    # the self-healing replays on the stream worker's own pipeline: a redrive batch must park into its
    # wrapper without swapping the pipeline's store (two heals at once used to leave a wrapper behind)
    stack = Stack(clock, tmp_path)
    b = stack.targets["b"]
    b.mode = "down"
    stack.run([stack.batch(), {"action": "shardEnded"}])  # b's budget spent: 3 changes parked
    own = stack.pipeline.dead_letters
    seen: list[Any] = []
    apply = b.apply

    def during_the_heal(writes: Any, deadline: float) -> ApplyResult:
        seen.append(stack.pipeline.dead_letters)  # what a live batch would park into right now
        return apply(writes, deadline)

    b.apply = during_the_heal  # type: ignore[method-assign]
    report = stack.heal("b")  # b still down: the entries are parked again
    assert report is not None and report.read == 3 and report.reparked == 3
    assert seen and all(sink is own for sink in seen)
    assert stack.pipeline.dead_letters is own
    assert sorted(e.attempts for _, e in stack.sink.read("b")) == [2, 2, 2]
