"""Convergence under an adversarial stream, through the real DynamoDB API (moto), to 2 targets.

The property runs for both fenced modes: `exact` (ledger rows) and `inline` (version on the item,
delete tombstones beside it; the version attribute is dropped before comparing). The same property
run with the classic Lambda copier (per-record put/delete, no fencing) must fail: proof that the
property can fail.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Sequence
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.inline import InlineWriter
from kcl_app.adapters.ledger import LedgerWriter
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.core.plan import TargetRule, Write
from kcl_app.core.records import RawRecord
from kcl_app.pipeline import Pipeline
from kcl_app.ports import ApplyResult
from kcl_app.redrive import redrive
from tests.property.strategies import deliveries, operations
from tests.support.harness import TARGET_REGIONS, inline_targets, ledger_targets
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, normalise_all, scan_all

# every dead-letter folder of this module lives here, removed when the run ends
_SCRATCH = tempfile.TemporaryDirectory(prefix="ts-test-")


class OutageWriter:
    """Wraps a writer; while `down` is set every write fails as it would during an outage."""

    def __init__(self, inner: LedgerWriter | InlineWriter) -> None:
        self.inner = inner
        self.name = inner.name
        self.down = False

    def apply(self, writes: Sequence[Write], deadline: float) -> ApplyResult:
        if self.down:
            return ApplyResult(failed=[(w, "ResourceNotFoundException: simulated outage") for w in writes])
        return self.inner.apply(writes, deadline)


def build_source(ops: list[tuple[str, str, dict]]) -> SourceSim:
    sim = SourceSim("source")
    for op, key, attrs in ops:
        if op == "put":
            sim.put({"pk": {"S": key}, **attrs})
        else:
            sim.delete({"pk": {"S": key}})
    return sim


VERSION_ATTR = "_tablesync_version"


def run_fenced(sim: SourceSim, plan: list[tuple[int, list[int], bool]], clock, mode: str = "exact") -> dict[str, dict]:
    targets: dict[str, Any] = ledger_targets(clock) if mode == "exact" else inline_targets(clock)
    writers = {name: OutageWriter(t.writer) for name, t in targets.items()}
    rules = [TargetRule(name, "source") for name in writers]
    sink = DirectoryDeadLetters(tempfile.mkdtemp(prefix="ts-dlq-", dir=_SCRATCH.name))
    raws = [RawRecord(d, str(i).zfill(20)) for i, d in enumerate(sim.records)]
    # two shard processes: two independent pipelines over the same targets
    shards = [Pipeline(rules, writers, sink, RecordingMetrics(), clock) for _ in range(2)]
    for shard, batch, down in plan:
        writers["a"].down = down
        result = shards[shard].process([raws[i] for i in batch])
        assert result.complete, "every record is applied or parked"
        writers["a"].down = False
    for name in writers:  # late redrive, twice: the second one must change nothing
        redrive(shards[0], sink, name)
        again = redrive(shards[0], sink, name)
        assert again.read == 0
    for p in shards:
        p.close()
    for writer in writers.values():
        writer.inner.close()
    return {name: scan_all(t.client, t.table, drop=(VERSION_ATTR,)) for name, t in targets.items()}


def run_naive(sim: SourceSim, plan: list[tuple[int, list[int], bool]]) -> dict[str, dict]:
    """The classic Lambda copier: put_item(NewImage) / delete_item(Keys) per record, in arrival order."""
    import json

    suffix = uuid.uuid4().hex[:8]
    clients = {n: boto3.client("dynamodb", region_name=r) for n, r in TARGET_REGIONS.items()}
    for name, client in clients.items():
        create_table(client, f"n-{name}-{suffix}")
    for _, batch, _ in plan:
        for i in batch:
            doc = json.loads(sim.records[i])
            for name, client in clients.items():
                if doc["eventName"] == "REMOVE":
                    client.delete_item(TableName=f"n-{name}-{suffix}", Key=doc["dynamodb"]["Keys"])
                else:
                    client.put_item(TableName=f"n-{name}-{suffix}", Item=doc["dynamodb"]["NewImage"])
    return {name: scan_all(client, f"n-{name}-{suffix}") for name, client in clients.items()}


scenario = operations.flatmap(
    lambda ops: st.tuples(st.just(ops), deliveries(max(1, len(build_source(ops).records))))
)


@pytest.mark.usefixtures("moto")
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scenario)
def test_every_target_converges_to_the_source(clock, case) -> None:
    ops, plan = case
    sim = build_source(ops)
    if not sim.records:
        return
    expected = normalise_all(sim.items)
    for name, table in run_fenced(sim, plan, clock).items():
        assert normalise_all(table) == expected, f"target {name} diverged"


@pytest.mark.usefixtures("moto")
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scenario)
def test_every_inline_target_converges_to_the_source(clock, case) -> None:
    ops, plan = case
    sim = build_source(ops)
    if not sim.records:
        return
    expected = normalise_all(sim.items)
    for name, table in run_fenced(sim, plan, clock, mode="inline").items():
        assert normalise_all(table) == expected, f"inline target {name} diverged"


@pytest.mark.usefixtures("moto")
def test_the_property_fails_for_the_classic_copier() -> None:
    from hypothesis import find

    def diverges(case) -> bool:
        ops, plan = case
        sim = build_source(ops)
        if not sim.records:
            return False
        expected = normalise_all(sim.items)
        return any(normalise_all(t) != expected for t in run_naive(sim, plan).values())

    quick = settings(max_examples=300, deadline=None, database=None, phases=[Phase.generate])
    counterexample = find(scenario, diverges, settings=quick)
    assert diverges(counterexample)
