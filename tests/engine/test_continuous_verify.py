"""verify --continuous: pacing on a fake clock, the keyspace SLO, resume after a stop, repair and metrics."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest

from kcl_app.adapters.ledger import ensure_ledger
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.backfill import BackfillState, backfill
from kcl_app.continuous import (
    ON_DEMAND_INITIAL_READ_UNITS,
    ContinuousVerifier,
    PassState,
    StateMismatch,
    capacity_read_units,
    last_pass,
    page_read_units,
    state_path,
)
from kcl_app.core.attrs import Item
from kcl_app.core.plan import TargetRule
from kcl_app.verify import TargetSpec, Verifier
from tests.support.tables import create_table, normalise_all, scan_all

N_ITEMS = 30


def item(i: int, size: int = 100) -> Item:
    return {"pk": {"S": f"k{i:02d}"}, "n": {"N": str(i)}, "pad": {"S": "x" * size}}


class World:
    """A source of 30 items (provisioned 40 RCU) and one exact target filled by a backfill."""

    def __init__(self, clock: Any, tmp_path: Path, size: int = 100) -> None:
        self.clock = clock
        self.tmp = tmp_path
        self.source = boto3.client("dynamodb", region_name="us-east-1")
        self.target = boto3.client("dynamodb", region_name="eu-west-1")
        self.source.create_table(TableName="source", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                                 AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                                 ProvisionedThroughput={"ReadCapacityUnits": 40, "WriteCapacityUnits": 40})
        for i in range(N_ITEMS):
            self.source.put_item(TableName="source", Item=item(i, size))
        create_table(self.target, "copy")
        ensure_ledger(self.target, "ledger")
        self.spec = TargetSpec(TargetRule("a", "source"), self.target, "copy", "exact", "ledger")
        assert backfill(self.source, "source", [self.spec], BackfillState.open(tmp_path / "bf", "source", ["a"], 1),
                        clock).ok
        self.metrics = RecordingMetrics()
        self.stop = threading.Event()

    def state(self, segments: int = 2) -> PassState:
        return PassState.open(state_path(self.tmp / "verify", "source", ["a"]), "source", ["a"], segments)

    def service(self, segments: int = 2, **kw: Any) -> ContinuousVerifier:
        verifier = Verifier(self.source, "source", [self.spec], self.clock, segments=segments, page_limit=4)
        kw.setdefault("read_units_per_second", 1000.0)
        kw.setdefault("capacity_fraction", 1.0)
        return ContinuousVerifier(verifier, self.state(segments), self.clock, self.metrics, stop=self.stop,
                                  emit_every=0.0, **kw)


@pytest.fixture
def world(moto: None, clock: Any, tmp_path: Path) -> World:
    return World(clock, tmp_path)


def test_capacity_comes_from_describe_table() -> None:
    assert capacity_read_units({"ProvisionedThroughput": {"ReadCapacityUnits": 40}}) == 40
    on_demand = {"BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
                 "ProvisionedThroughput": {"ReadCapacityUnits": 0}}
    assert capacity_read_units(on_demand) == ON_DEMAND_INITIAL_READ_UNITS
    assert capacity_read_units({**on_demand, "OnDemandThroughput": {"MaxReadRequestUnits": 500}}) == 500


def test_rate_is_the_smaller_of_the_limit_and_the_capacity_fraction(world: World) -> None:
    service = world.service(read_units_per_second=100.0, capacity_fraction=0.25)
    assert service.rate_for(world.source, "source") == 10.0  # 25 % of 40 provisioned
    assert service.rate_for(world.target, "copy") == 100.0  # on demand: 3,000 > the limit
    with pytest.raises(ValueError, match="capacity_fraction"):
        world.service(capacity_fraction=0.0)


def test_reads_are_paced_on_the_clock(moto: None, clock: Any, tmp_path: Path) -> None:
    world = World(clock, tmp_path, size=5000)  # each item > 4 KB: 2 read units per item on every read
    service = world.service(segments=1, read_units_per_second=100.0, capacity_fraction=0.5)  # 20 units/s
    started = clock.monotonic()
    summary = service.run_pass()
    assert summary is not None and summary.verdict == "clean"
    bucket = service.buckets[""]
    assert bucket.rate == 20.0
    # source: its scan pages (30 items of 5 KB, pages of 4) and one lookup per target item
    pages = [world.source.scan(TableName="source", Limit=4)]  # page sizes are what read_units charges
    assert pages
    scanned_units = sum(page_read_units([item(i, 5000) for i in range(s, min(s + 4, N_ITEMS))])
                        for s in range(0, N_ITEMS, 4))
    spent = scanned_units + N_ITEMS  # + one unit per looked-up key in the target phase
    # the bucket starts full (one second of rate): the rest was paid by waiting
    assert clock.monotonic() - started >= (spent - bucket.capacity) / bucket.rate - 1e-6
    assert bucket.waited >= (spent - bucket.capacity) / bucket.rate - 1e-6


def test_keyspace_share_counts_each_position_once_within_the_window(tmp_path: Path) -> None:
    state = PassState(tmp_path / "s.json", "src", ["a"], segments=2)
    hour = 3600.0
    state.begin(0.0, ["source"])
    for seg in (0, 1):
        state.covered(seg, 0, 50, 10.0, hour)
        state.covered(seg, 50, 100, 20.0, hour)
        state.phases["source"][seg].scanned = 100
    state.finish(30.0, period=86_400.0)
    assert state.keyspace_share(40.0, 86_400.0) == 1.0
    # a second pass re-checks the first half of segment 0 twelve hours later: still 100 %, not more
    state.begin(12 * hour, ["source"])
    state.covered(0, 0, 50, 12 * hour, hour)
    state.phases["source"][0].scanned = 50
    assert state.keyspace_share(12 * hour, 86_400.0) == 1.0
    # a day after the first pass only the second pass's half segment is in the window: 50 of 200
    assert state.keyspace_share(86_400.0 + 60.0, 86_400.0) == 0.25
    assert state.keyspace_share(40 * hour, 86_400.0) == 0.0
    assert len(state.coverage["0"]) == 0 and len(state.coverage["1"]) == 0, "old ranges are pruned"


def test_a_pass_finds_repairs_and_reports_per_target(world: World) -> None:
    world.target.delete_item(TableName="copy", Key={"pk": {"S": "k03"}})                       # missing
    world.target.put_item(TableName="copy", Item={"pk": {"S": "zz"}, "n": {"N": "0"}})          # extra
    world.target.update_item(TableName="copy", Key={"pk": {"S": "k04"}}, UpdateExpression="SET n = :v",
                             ExpressionAttributeValues={":v": {"N": "-1"}})                      # different
    service = world.service(repair=True)
    summary = service.run_pass()
    assert summary is not None
    tally = summary.tallies["a"]
    assert (tally.divergent, tally.repaired, tally.unrepaired) == (3, 3, 0)
    assert summary.verdict == "repaired"
    assert normalise_all(scan_all(world.target, "copy")) == normalise_all(scan_all(world.source, "source"))
    m = world.metrics
    assert m.total("DivergencesFound", Target="a") == 3 and m.total("Repaired", Target="a") == 3
    assert m.total("UnrepairedDivergences", Target="a") == 0
    assert m.total("VerifiedKeys", Target="a") == 2 * N_ITEMS + 1  # both ways; the extra key once
    last = m.emitted[-1][1]
    assert last["PassProgressPercent"] == 100.0 and last["KeyspaceVerified24hPercent"] == 100.0
    assert last["PassBehindSeconds"] == 0.0
    shown = last_pass(service.state.path)
    assert shown is not None and shown["last"]["verdict"] == "repaired" and shown["current"] is None
    # the next pass is clean
    assert (service.run_pass() or summary).verdict == "clean"


def test_without_repair_divergences_stay_unrepaired_and_are_named_by_key(world: World) -> None:
    world.target.delete_item(TableName="copy", Key={"pk": {"S": "k05"}})
    summary = world.service().run_pass()
    assert summary is not None and summary.verdict == "divergent"
    assert summary.tallies["a"].unrepaired == 1 and len(summary.unrepaired_keys["a"]) == 1
    assert world.metrics.total("UnrepairedDivergences", Target="a") == 1
    assert world.target.get_item(TableName="copy", Key={"pk": {"S": "k05"}}).get("Item") is None


def test_a_stopped_pass_resumes_where_it_stopped(world: World) -> None:
    world.target.delete_item(TableName="copy", Key={"pk": {"S": "k07"}})
    pages: list[tuple[str, int]] = []

    def stop_after_two(phase: str, segment: int) -> None:
        pages.append((phase, segment))
        if len(pages) == 2:
            world.stop.set()  # as SIGTERM does: the page in hand is finished and saved

    first = world.service(segments=1, on_page=stop_after_two)
    assert first.run_pass() is None
    saved = world.state(segments=1)
    assert saved.resumed and saved.number == 1
    assert saved.phases["source"][0].scanned == 8 and not saved.phases["source"][0].done
    assert 0.0 < world.metrics.emitted[-1][1]["PassProgressPercent"] < 100.0

    world.stop.clear()
    second = world.service(segments=1)
    summary = second.run_pass()
    assert summary is not None and summary.number == 1, "the same pass, finished"
    assert summary.tallies["a"].verified == 2 * N_ITEMS - 1, "each key checked once across the restart"
    assert summary.tallies["a"].divergent == 1
    with pytest.raises(StateMismatch):
        world.state(segments=3)


def test_passes_start_once_per_period_and_a_late_pass_is_behind(world: World, clock: Any) -> None:
    passes: list[float] = []

    def stop_in_third_pass(phase: str, segment: int) -> None:
        if service.state.number not in passes:
            passes.append(service.state.number)
        if service.state.number == 3:
            world.stop.set()

    service = world.service(segments=1, period=600.0, on_page=stop_in_third_pass)
    t0 = clock.now()
    service.run_forever()
    assert service.state.last is not None and service.state.last.number == 2
    assert service.state.started == pytest.approx(t0 + 1200.0, abs=1.0), "pass 3 starts two periods after pass 1"
    assert service.state.last.behind_seconds == 0.0

    late = world.service(segments=1, period=0.5, read_units_per_second=5.0)  # a pass takes seconds here
    world.stop.clear()
    summary = late.run_pass()  # finishes pass 3
    assert summary is not None and summary.behind_seconds > 0
    assert world.metrics.emitted[-1][1]["PassBehindSeconds"] > 0


def test_status_shows_the_last_pass_and_its_verdict(world: World, capsys: Any) -> None:
    from kcl_app.commands import status

    world.target.delete_item(TableName="copy", Key={"pk": {"S": "k09"}})
    assert (world.service().run_pass() or pytest.fail("stopped")).verdict == "divergent"
    passes = status.verify_passes(str(world.tmp / "verify"))
    assert [(p["source_table"], p["last"]["verdict"], p["last"]["tallies"]["a"]["divergent"]) for p in passes] == [
        ("source", "divergent", 1)]
    boto3.client("dynamodb", region_name="us-east-1").create_table(
        TableName="app", AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    args = argparse.Namespace(app="app", lease_table=None, stream=None, region="us-east-1", endpoint=None,
                              json=False, verify_state=str(world.tmp / "verify"))
    assert status.run(args) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("verify source: last pass 1 DIVERGENT in ")
    assert "a: 59 verified, 1 divergent, 0 repaired" in line
    assert status.verify_passes(str(world.tmp / "nothing-here")) == []


class FailingAfter:
    """A target client whose BatchGetItem fails (AccessDenied-like) after `ok` calls."""

    def __init__(self, inner: Any, ok: int) -> None:
        self.inner = inner
        self.ok = ok

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def batch_get_item(self, **kwargs: Any) -> Any:
        self.ok -= 1
        if self.ok < 0:
            raise PermissionError("role revoked")
        return self.inner.batch_get_item(**kwargs)


def test_a_failing_read_stops_every_segment_with_its_position_saved(world: World) -> None:
    world.spec = TargetSpec(world.spec.rule, FailingAfter(world.target, 3), "copy", "exact", "ledger")
    service = world.service(segments=2)
    with pytest.raises(PermissionError, match="role revoked"):
        service.run_pass()
    saved = world.state()
    cursors = saved.phases["source"]
    assert sum(c.scanned for c in cursors) == 12, "three pages of 4 were checked and saved, then both stopped"
    assert not any(c.done for c in cursors) and saved.tallies["a"].verified == 12
    world.spec = TargetSpec(world.spec.rule, world.target, "copy", "exact", "ledger")
    summary = world.service(segments=2).run_pass()
    assert summary is not None and summary.tallies["a"].verified == 2 * N_ITEMS and summary.verdict == "clean"
