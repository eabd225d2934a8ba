"""Error paths through the pipeline, each ending with nothing lost and one clear log line.

Two exact-mode targets in two regions of in-process moto. Nothing lost means: after the batch, every
record is either applied (read back from the target table) or parked with its reason and raw bytes
(read back from the dead-letter store). The FakeClock advances when slept on: no real waiting.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.ledger import LedgerWriter
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.retry import Backoff
from kcl_app.core.attrs import MAX_ITEM_BYTES, Item
from kcl_app.core.plan import TargetRule
from kcl_app.core.records import RawRecord
from kcl_app.pipeline import POISON_STORE, UNMAPPED_STORE, Pipeline
from kcl_app.ports import DeadLetter
from kcl_app.redrive import redrive
from tests.support.harness import TARGET_REGIONS, FailingStore, ledger_targets
from tests.support.source_sim import SourceSim
from tests.support.tables import normalise_all, scan_all

BUDGET = 30.0
CHANGED = 6  # keys changed by source(): one write per key and target after coalescing


class Faulty:
    """A DynamoDB client whose TransactWriteItems raises `code` for the next `times` calls (None: forever)."""

    def __init__(self, client: Any, code: str, message: str, times: int | None = None) -> None:
        self.client = client
        self.code = code
        self.message = message
        self.left = times
        self.raised = 0

    def transact_write_items(self, **kwargs: Any) -> Any:
        if self.left is None or self.left > 0:
            if self.left is not None:
                self.left -= 1
            self.raised += 1
            raise ClientError({"Error": {"Code": self.code, "Message": self.message},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "TransactWriteItems")
        return self.client.transact_write_items(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@dataclass
class Stack:
    pipeline: Pipeline
    clients: dict[str, Any]
    tables: dict[str, str]
    sink: Any
    metrics: RecordingMetrics
    writers: dict[str, LedgerWriter]

    def items(self, target: str) -> dict[str, Item]:
        return normalise_all(scan_all(self.clients[target], self.tables[target]))

    def parked(self, store: str) -> list[DeadLetter]:
        return [entry for _, entry in self.sink.read(store)]

    def close(self) -> None:
        self.pipeline.close()
        for writer in self.writers.values():
            writer.close()


@pytest.fixture
def build(moto, clock, tmp_path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(*, wrap: dict[str, Any] | None = None, rules: list[TargetRule] | None = None,
             create: Sequence[str] = ("a", "b"), sink: Any = None, unmapped: str = "skip") -> Stack:
        targets = ledger_targets(clock, table="orders-{name}", ledger="ledger-{name}", create=create, wrap=wrap,
                                 backoff=lambda: Backoff(rng=random.Random(3)))
        clients = {name: t.client for name, t in targets.items()}
        tables = {name: t.table for name, t in targets.items()}
        writers = {name: t.writer for name, t in targets.items()}
        store = sink if sink is not None else DirectoryDeadLetters(tmp_path / "dead-letters")
        metrics = RecordingMetrics()
        rules = rules or [TargetRule(name, "orders") for name in TARGET_REGIONS]
        pipeline = Pipeline(rules, writers, store, metrics, clock,
                            retry_budget_seconds=BUDGET, unmapped=unmapped)  # type: ignore[arg-type]
        stack = Stack(pipeline, clients, tables, store, metrics, writers)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


def source(n: int = 6) -> SourceSim:
    """n puts, a delete of k0 and an update of k1: n changed keys (n - 1 items left)."""
    sim = SourceSim("orders")
    for i in range(n):
        sim.put({"pk": {"S": f"k{i}"}, "n": {"N": str(i)}, "blob": {"B": bytes([i, 255])}})
    sim.delete({"pk": {"S": "k0"}})
    sim.put({"pk": {"S": "k1"}, "n": {"N": "12345678901234567890123456789012345678"}})
    return sim


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("tablesync")]


def test_a_throttling_storm_that_ends_is_absorbed_by_retries(build, clock, caplog) -> None:
    stack = build(wrap={"a": lambda c: Faulty(c, "ThrottlingException", "Rate exceeded", times=5)})
    sim = source()
    started = time.monotonic()
    result = stack.pipeline.process(sim.raw_records())
    assert time.monotonic() - started < 10, "the FakeClock sleeps, the test does not"
    assert result.complete
    assert result.targets["a"].retries == 5 and result.targets["a"].parked == 0
    assert len(clock.slept) == 5 and 0 < sum(clock.slept) < BUDGET
    assert stack.items("a") == stack.items("b") == normalise_all(sim.items)
    assert stack.parked("a") == []
    assert stack.metrics.total("Retries", Target="a") == 5
    assert warnings_of(caplog) == [], "recovered throttling is a metric (Retries), not a warning"


def test_a_throttling_storm_that_never_ends_parks_the_target_and_spares_the_other(build, clock, caplog) -> None:
    faulty: dict[str, Faulty] = {}
    stack = build(wrap={"a": lambda c: faulty.setdefault("a", Faulty(c, "ThrottlingException", "Rate exceeded"))})
    sim = source()
    raws = sim.raw_records()
    start = clock.monotonic()
    result = stack.pipeline.process(raws)
    assert result.complete and result.checkpoint_index == len(raws) - 1
    assert clock.monotonic() - start <= BUDGET
    assert result.targets["a"].applied == 0 and result.targets["a"].parked == CHANGED
    assert result.targets["b"].applied == CHANGED and result.targets["b"].retries == 0
    assert stack.items("b") == normalise_all(sim.items)
    assert stack.items("a") == {}
    parked = stack.parked("a")
    assert {entry.reason for entry in parked} == {"retry budget spent; last error ThrottlingException: Rate exceeded"}
    assert {entry.data for entry in parked} <= {raw.data for raw in raws}
    (line,) = warnings_of(caplog)
    assert "target a: parking 6 changes" in line and "ThrottlingException: Rate exceeded" in line
    # nothing lost: once the storm is over, a redrive settles the target
    faulty["a"].left = 0
    report = redrive(stack.pipeline, stack.sink, "a")
    assert report.removed == len(parked) and report.still_failing == 0
    assert stack.items("a") == normalise_all(sim.items)
    assert stack.parked("a") == []


def test_a_missing_target_table_parks_after_the_budget(build, clock, caplog) -> None:
    stack = build(create=("b",))
    sim = source()
    start = clock.monotonic()
    result = stack.pipeline.process(sim.raw_records())
    assert result.complete
    assert result.targets["a"].parked == CHANGED and result.targets["a"].retries > 0
    assert BUDGET / 2 < clock.monotonic() - start <= BUDGET, "retried within the budget, not parked at once"
    assert stack.items("b") == normalise_all(sim.items)
    reasons = {entry.reason for entry in stack.parked("a")}
    assert reasons == {"retry budget spent; last error ResourceNotFoundException: Requested resource not found"}
    (line,) = warnings_of(caplog)
    assert line.startswith("target a: parking 6 changes") and "ResourceNotFoundException" in line


def test_a_revoked_role_parks_after_the_budget(build, caplog) -> None:
    message = ("User: arn:aws:sts::123456789012:assumed-role/tablesync-writer/w is not authorized to perform: "
               "dynamodb:TransactWriteItems")
    stack = build(wrap={"b": lambda c: Faulty(c, "AccessDeniedException", message)})
    sim = source()
    result = stack.pipeline.process(sim.raw_records())
    assert result.complete
    assert result.targets["b"].parked == CHANGED and result.targets["a"].parked == 0
    assert stack.items("a") == normalise_all(sim.items)
    assert stack.items("b") == {}
    assert {e.reason for e in stack.parked("b")} == {f"retry budget spent; last error AccessDeniedException: {message}"}
    (line,) = warnings_of(caplog)
    assert line.startswith("target b: parking 6 changes") and "AccessDeniedException" in line


def pad(item: Item) -> Item:
    if item["pk"]["S"] == "k2":
        item["padding"] = {"S": "x" * MAX_ITEM_BYTES}
    return item


def test_an_item_over_400_kb_after_the_transform_is_parked_at_once(build, clock, caplog) -> None:
    stack = build(rules=[TargetRule("a", "orders", transform=pad), TargetRule("b", "orders")])
    sim = source()
    raws = sim.raw_records()
    result = stack.pipeline.process(raws)
    assert result.complete
    assert clock.slept == [], "no retry for a change that can never fit"
    assert result.targets["a"].parked == 1
    (entry,) = stack.parked("a")
    assert entry.data == raws[2].data and entry.sequence_number == raws[2].sequence_number
    assert "exceeds DynamoDB's 400 KB limit after projection/transform" in entry.reason
    expected = normalise_all(sim.items)
    assert stack.items("b") == expected
    assert stack.items("a") == {k: v for k, v in expected.items() if v["pk"] != {"S": "k2"}}
    (line,) = warnings_of(caplog)
    assert line.startswith("target a: parking 1 changes: 1 x item of") and "400 KB" in line


def test_malformed_json_is_parked_as_poison_with_its_raw_bytes(build, caplog) -> None:
    stack = build()
    sim = source()
    raws = sim.raw_records()
    garbage = RawRecord(b'{"eventName": "INSERT", \xff\x00 truncated', "99", shard_id="shardId-000000000007")
    batch = raws[:3] + [garbage] + raws[3:]
    result = stack.pipeline.process(batch)
    assert result.complete and result.poison == 1
    (entry,) = stack.parked(POISON_STORE)
    assert entry.data == garbage.data
    assert (entry.sequence_number, entry.shard_id) == ("99", "shardId-000000000007")
    assert entry.reason.startswith("undecodable record: not JSON")
    assert stack.items("a") == stack.items("b") == normalise_all(sim.items)
    assert stack.metrics.total("Poison", Target="_stream") == 1
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("parked 1 undecodable records, first: undecodable record: not JSON")


def other_table_record() -> RawRecord:
    sim = SourceSim("invoices")
    sim.put({"pk": {"S": "i1"}})
    return sim.raw_records()[0]


def test_a_record_of_an_unknown_table_is_skipped_and_counted(build, caplog) -> None:
    stack = build()
    caplog.set_level(logging.INFO, logger="tablesync")
    sim = source(2)
    batch = [*sim.raw_records(), other_table_record()]
    result = stack.pipeline.process(batch)
    assert result.complete and result.unmapped == 1
    assert stack.metrics.total("Unmapped", Target="_stream") == 1
    assert stack.items("a") == stack.items("b") == normalise_all(sim.items)
    assert stack.sink.stores() == []
    lines = [r for r in caplog.records if r.name.startswith("tablesync")]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (logging.INFO, "skipped 1 records of tables no target wants: invoices")]


def test_with_unmapped_park_a_record_of_an_unknown_table_is_parked(build, caplog) -> None:
    stack = build(unmapped="park")
    sim = source(2)
    stray = other_table_record()
    result = stack.pipeline.process([stray, *sim.raw_records()])
    assert result.complete and result.unmapped == 1
    (entry,) = stack.parked(UNMAPPED_STORE)
    assert entry.data == stray.data and entry.reason == "no target for table 'invoices'"
    assert stack.items("a") == normalise_all(sim.items)
    assert warnings_of(caplog) == ["parked 1 records of tables no target wants: invoices"]


def test_a_failing_dead_letter_store_stops_the_checkpoint_before_the_unparkable_record(build, clock, caplog) -> None:
    store = FailingStore()
    stack = build(sink=store)
    sim = source(4)
    raws = sim.raw_records()
    poison = RawRecord(b"not json", "77")
    batch = raws[:2] + [poison] + raws[2:]
    result = stack.pipeline.process(batch)
    assert result.checkpoint_index == 1 and not result.complete
    assert result.unsettled == frozenset({2})
    assert store.attempts > 1, "parking is retried before giving up"
    # the decodable records were applied all the same; the poison one will come again from the stream
    assert stack.items("a") == stack.items("b") == normalise_all(sim.items)
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.CRITICAL
    assert record.getMessage() == (
        "cannot park 1 entries, nothing past them will be checkpointed: "
        "dead-letter store '_poison' failed: OSError: [Errno 28] No space left on device")


def test_a_failing_store_for_a_target_stops_the_checkpoint_at_its_first_record(build, clock) -> None:
    store = FailingStore()
    stack = build(sink=store, rules=[TargetRule("a", "orders", transform=pad), TargetRule("b", "orders")])
    sim = source()
    result = stack.pipeline.process(sim.raw_records())
    assert result.unsettled == frozenset({2}) and result.checkpoint_index == 1
    assert stack.items("b") == normalise_all(sim.items)
