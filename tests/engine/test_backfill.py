"""Online backfill against in-process moto: racing a live writer, resuming, the stream-consumer check."""

from __future__ import annotations

import argparse
import json
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.inline import ensure_tombstones
from kcl_app.adapters.ledger import LedgerWriter, ensure_ledger
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.backfill import BACKFILL_VERSION, BackfillState, TargetSpec, TokenBucket, backfill
from kcl_app.commands import backfill as backfill_cmd
from kcl_app.core.attrs import Item
from kcl_app.core.plan import TargetRule
from kcl_app.core.records import RawRecord
from kcl_app.pipeline import Pipeline
from kcl_app.verify import Verifier
from tests.support.harness import ledger_targets
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, normalise_all, scan_all

SOURCE_REGION = "us-east-1"


def upper_name_drop_skipped(item: Item) -> Item | None:
    """Target b's transform: drop items of kind 'skip', upper-case `name`."""
    if item.get("kind") == {"S": "skip"}:
        return None
    if "name" in item:
        item["name"] = {"S": item["name"]["S"].upper()}
    return item


def make_item(i: int, version: int = 0) -> Item:
    return {
        "pk": {"S": f"k{i:03d}"},
        "name": {"S": f"name-{i}-{version}"},
        "n": {"N": str(i * 1000 + version)},
        "secret": {"S": "hidden"},
        "bin": {"B": bytes([i % 256, version % 256, 0])},
        "tags": {"SS": [f"t{i % 3}", f"v{version}"]},
        "kind": {"S": "skip" if i % 11 == 0 else "keep"},
    }


def seeded_source(items: int) -> tuple[Any, Any]:
    """A source table "source" holding make_item(0..items-1), and a client for the target region."""
    source = boto3.client("dynamodb", region_name=SOURCE_REGION)
    create_table(source, "source")
    for i in range(items):
        source.put_item(TableName="source", Item=make_item(i))
    return source, boto3.client("dynamodb", region_name="eu-west-1")


class LiveSource:
    """Writes to the real source table and keeps the destination record of every change it made.

    Each record's image is what DynamoDB returned for the write (ALL_NEW), so the records describe
    the table's real history. Thread-safe."""

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table
        self.sim = SourceSim(table)
        self.lock = threading.RLock()

    def put(self, item: Item) -> int:
        with self.lock:
            self.client.put_item(TableName=self.table, Item=item)
            self.sim.put(item)
            return len(self.sim.records) - 1

    def update(self, key: Item, version: int) -> int:
        with self.lock:
            answer = self.client.update_item(
                TableName=self.table, Key=key, ReturnValues="ALL_NEW",
                UpdateExpression="SET #n = :n, #name = :name", ExpressionAttributeNames={"#n": "n", "#name": "name"},
                ExpressionAttributeValues={":n": {"N": str(version)}, ":name": {"S": f"updated-{version}"}})
            self.sim.put(answer["Attributes"])
            return len(self.sim.records) - 1

    def delete(self, key: Item) -> int | None:
        with self.lock:
            answer = self.client.delete_item(TableName=self.table, Key=key, ReturnValues="ALL_OLD")
            if "Attributes" not in answer:
                return None
            self.sim.delete(key)
            return len(self.sim.records) - 1

    def raw(self, index: int) -> RawRecord:
        return RawRecord(self.sim.records[index], str(index).zfill(20), shard_id="shardId-000000000000")


class RacingSource:
    """A source client whose Scan runs `after_scan(items)` once the page is read, before it is written.

    Scans hold `lock` (the live writer's), so the in-process emulator never iterates a table that
    another thread is changing; the race under test is between a page's read and its writes."""

    def __init__(self, inner: Any, after_scan: Any, lock: Any) -> None:
        self.inner = inner
        self.after_scan = after_scan
        self.lock = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def scan(self, **kwargs: Any) -> Any:
        with self.lock:
            page = self.inner.scan(**kwargs)
            self.after_scan(page.get("Items", []))
        return page


class Killed(Exception):
    """Stands for the process being killed between two pages."""


def build_targets(
    clock: Any, suffix: str, rules: dict[str, TargetRule]
) -> tuple[dict[str, TargetSpec], dict[str, LedgerWriter]]:
    targets = ledger_targets(clock, suffix=suffix)
    specs = {n: TargetSpec(rules[n], t.client, t.table, "exact", t.ledger) for n, t in targets.items()}
    return specs, {n: t.writer for n, t in targets.items()}


def expected_for(rule: TargetRule, source_items: dict[str, Item]) -> dict[str, Item]:
    from kcl_app.adapters.scan import shape_item

    out = {}
    for kid, item in source_items.items():
        shaped = shape_item(rule, "source", ("pk",), dict(item))
        if shaped is not None:
            out[kid] = shaped
    return out


@pytest.mark.usefixtures("moto")
@pytest.mark.parametrize("segments", [1, 3])
def test_backfill_racing_a_live_writer_converges(clock, tmp_path: Path, segments: int) -> None:
    source = boto3.client("dynamodb", region_name=SOURCE_REGION)
    create_table(source, "source")
    live = LiveSource(source, "source")
    for i in range(60):  # written before the stream position: these records are never delivered
        live.put(make_item(i))
    stream_start = len(live.sim.records)

    rules = {"a": TargetRule("a", "source", exclude=("secret",)),
             "b": TargetRule("b", "source", transform=upper_name_drop_skipped)}
    specs, writers = build_targets(clock, uuid.uuid4().hex[:8], rules)
    sink = DirectoryDeadLetters(tmp_path / "dlq")
    pipeline = Pipeline(list(rules.values()), writers, sink, RecordingMetrics(), clock)
    rng = random.Random(segments)
    held: list[int] = []
    version = [1000]

    def deliver(indexes: list[int]) -> None:
        result = pipeline.process([live.raw(i) for i in indexes])
        assert result.complete

    def race(items: list[Item]) -> None:
        """Between this page's read and its writes: change its keys and others, deliver some records now."""
        with live.lock:
            now: list[int] = []
            for n, item in enumerate(items[:4]):
                version[0] += 1
                key = {"pk": item["pk"]}
                index = live.update(key, version[0]) if n % 2 == 0 else live.delete(key)
                if index is not None:
                    (now if n in (1, 2) else held).append(index)  # some settled before the write, some after
            other = {"pk": {"S": f"k{rng.randrange(60):03d}"}}
            for index in (live.update(other, version[0] + 1), live.put(make_item(100 + version[0] % 50, 7))):
                (now if rng.random() < 0.5 else held).append(index)
            if held and rng.random() < 0.5:  # a late, out-of-order delivery of something held
                now.append(held.pop(rng.randrange(len(held))))
            deliver(now)

    state = BackfillState.open(tmp_path / "state", "source", ["a", "b"], segments)
    report = backfill(RacingSource(source, race, live.lock), "source", list(specs.values()), state, clock, page_limit=5)

    assert report.scanned >= 60 and report.ok
    assert report.skipped["a"] > 0, "some keys were already settled by the stream"
    assert report.written["a"] > 0
    assert report.filtered["b"] > 0, "target b's transform drops some items"
    # before the held records arrive the targets must differ: the stream has the last word
    pending = Verifier(source, "source", list(specs.values()), clock, segments=2).run()
    assert not pending.clean
    replay = held + rng.sample(range(stream_start, len(live.sim.records)), 10)  # plus duplicates
    rng.shuffle(replay)
    deliver(replay)

    assert sink.depth("a") == sink.depth("b") == 0, "nothing parked: every change was applied or stale"
    final = Verifier(source, "source", list(specs.values()), clock, segments=2).run()
    assert final.clean, final.to_json()
    truth = scan_all(source, "source")
    for name, spec in specs.items():
        assert normalise_all(scan_all(spec.client, spec.table)) == normalise_all(expected_for(rules[name], truth))
    pipeline.close()


def _run_to_completion(source: Any, spec: TargetSpec, state_dir: Path, clock: Any, stop_after: int | None) -> Any:
    pages = [0]
    lock = threading.Lock()

    def on_page(segment: int, done: int) -> None:
        with lock:
            pages[0] += 1
            if stop_after is not None and pages[0] == stop_after:
                raise Killed(f"killed after page {pages[0]}")

    state = BackfillState.open(state_dir, "source", [spec.name], 2)
    return backfill(source, "source", [spec], state, clock, page_limit=4, on_page=on_page)


@pytest.mark.usefixtures("moto")
def test_backfill_killed_mid_way_resumes_to_the_same_result(clock, tmp_path: Path) -> None:
    source, target = seeded_source(40)
    specs = {}
    for name in ("resumed", "straight"):
        create_table(target, f"t-{name}")
        ensure_ledger(target, f"l-{name}")
        rule = TargetRule(name, "source", exclude=("secret",))
        specs[name] = TargetSpec(rule, target, f"t-{name}", "exact", f"l-{name}")

    with pytest.raises(Killed):
        _run_to_completion(source, specs["resumed"], tmp_path / "s1", clock, stop_after=3)
    saved = json.loads(next((tmp_path / "s1").glob("backfill-*.json")).read_text())
    partial = len(scan_all(target, "t-resumed"))
    assert 0 < partial < 40
    assert sum(s["scanned"] for s in saved["segments"]) == partial
    assert not all(s["done"] for s in saved["segments"])

    resumed = _run_to_completion(source, specs["resumed"], tmp_path / "s1", clock, stop_after=None)
    straight = _run_to_completion(source, specs["straight"], tmp_path / "s2", clock, stop_after=None)
    assert resumed.resumed and not straight.resumed
    assert resumed.scanned == straight.scanned == 40, "no page scanned twice"
    assert resumed.written == {"resumed": 40} and straight.written == {"straight": 40}
    assert resumed.skipped["resumed"] == 0
    expected = normalise_all(expected_for(specs["straight"].rule, scan_all(source, "source")))
    assert normalise_all(scan_all(target, "t-resumed")) == normalise_all(scan_all(target, "t-straight")) == expected
    ledger = target.get_item(TableName="l-resumed", Key={"k": {"S": '{"pk":{"S":"k005"}}'}})["Item"]
    assert ledger["v"]["S"] == BACKFILL_VERSION.token() and ledger["d"] == {"BOOL": False}

    again = _run_to_completion(source, specs["resumed"], tmp_path / "s1", clock, stop_after=None)
    assert again.scanned == 40 and again.written["resumed"] == 40, "a finished backfill is not scanned again"


@pytest.mark.usefixtures("moto")
def test_inline_backfill_writes_only_absent_items_and_verify_ignores_the_version(clock, tmp_path: Path) -> None:
    source, target = seeded_source(12)
    create_table(target, "inline-t")
    # the stream already wrote k003 (newer content, newer version): the backfill must not touch it
    newer = {**make_item(3, 9), "_tablesync_version": {"S": "01790000000000000001#ev"}}
    target.put_item(TableName="inline-t", Item=newer)
    source.put_item(TableName="source", Item=make_item(3, 9))
    # the stream already deleted k005 after the scan read it: its tombstone must keep the backfill out
    ensure_tombstones(target, "inline-t.tombstones")
    target.put_item(TableName="inline-t.tombstones", Item={"k": {"S": '{"pk":{"S":"k005"}}'},
                                                           "v": {"S": "01790000000000000002#ev"}, "exp": {"N": "1"}})
    spec = TargetSpec(TargetRule("i", "source"), target, "inline-t", "inline", tombstone_table="inline-t.tombstones")
    report = backfill(source, "source", [spec], BackfillState.open(tmp_path, "source", ["i"], 2), clock)
    assert report.written == {"i": 10} and report.skipped == {"i": 2}
    stored = scan_all(target, "inline-t")
    assert '{"pk":{"S":"k005"}}' not in stored, "a deleted key is not re-created by the backfill"
    source.delete_item(TableName="source", Key={"pk": {"S": "k005"}})
    assert stored['{"pk":{"S":"k003"}}']["_tablesync_version"]["S"] == "01790000000000000001#ev"
    assert stored['{"pk":{"S":"k004"}}']["_tablesync_version"]["S"] == BACKFILL_VERSION.token()
    assert Verifier(source, "source", [spec], clock).run().clean


def test_token_bucket_paces_on_the_injected_clock(clock) -> None:
    bucket = TokenBucket(10.0, clock)  # 10 units/s, 10 units of burst
    for _ in range(5):
        bucket.take(5)
    assert sum(clock.slept) == pytest.approx(1.5)  # 25 units: 10 from the burst, 15 paid at 10/s


@pytest.mark.usefixtures("moto")
def test_backfill_pays_its_read_and_write_units(clock, tmp_path: Path) -> None:
    source, target = seeded_source(30)
    create_table(target, "t")
    ensure_ledger(target, "l")
    spec = TargetSpec(TargetRule("a", "source"), target, "t", "exact", "l")
    backfill(source, "source", [spec], BackfillState.open(tmp_path, "source", ["a"], 1), clock,
             write_units_per_second=20.0, page_limit=10)
    # 30 items x (2 units item + 2 units ledger) = 120 units at 20/s with 20 of burst: >= 5 s waited
    assert sum(clock.slept) >= 5.0 - 1e-9
    assert len(scan_all(target, "t")) == 30


# -- the command: refusal without a stream consumer ------------------------------------------
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(f"""
[source]
region = "{SOURCE_REGION}"

[[targets]]
name = "a"
source_table = "source"
table = "copy-a"
region = "eu-west-1"
dead_letter = {{ kind = "dir", path = "{tmp_path / 'dlq'}" }}
""")
    return path


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    backfill_cmd.add_parser(parser.add_subparsers())
    return parser.parse_args(["backfill", "--config", str(_config(tmp_path)), "--source-table", "source",
                              "--state-dir", str(tmp_path / "state"), *extra])


@pytest.fixture
def source_and_target(moto: None) -> Any:
    source, target = seeded_source(7)
    create_table(target, "copy-a")
    return source, target


@pytest.fixture
def destination_checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """In-process moto has no Kinesis streaming destination, which the pre-flight check requires
    (tests/integration/test_check.py runs it on the local stack): here it passes, recorded."""
    calls: list[str] = []

    def passes(command: str, config: Any, **kwargs: Any) -> bool:
        calls.append(command)
        return False

    monkeypatch.setattr(backfill_cmd, "preflight_refuses", passes)
    return calls


def test_backfill_refuses_without_a_kcl_lease_table(source_and_target: Any, tmp_path: Path, capsys: Any,
                                                    destination_checked: list[str]) -> None:
    _, target = source_and_target
    assert backfill_cmd.run(_args(tmp_path, "--app", "orders-app", "--stream", "s")) == 2
    err = capsys.readouterr().err
    assert "lease table 'orders-app' does not exist" in err and "--skip-stream-check" in err
    assert backfill_cmd.run(_args(tmp_path)) == 2
    assert "--app KCL_APP is required" in capsys.readouterr().err
    assert scan_all(target, "copy-a") == {}, "nothing written when refused"

    assert backfill_cmd.run(_args(tmp_path, "--skip-stream-check")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scanned"] == 7 and summary["written"] == {"a": 7} and summary["ok"]
    assert len(scan_all(target, "copy-a")) == 7
    assert destination_checked == ["backfill", "backfill"]  # a command line without --app is refused first


def kcl_lease_table(dynamodb: Any, table: str, shards: list[dict[str, Any]]) -> None:
    """A lease table as a freshly started KCL application leaves it: one unowned lease per shard."""
    dynamodb.create_table(TableName=table, AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    for shard in shards:
        dynamodb.put_item(TableName=table, Item={
            "leaseKey": {"S": shard["ShardId"]}, "leaseCounter": {"N": "0"}, "checkpoint": {"S": "TRIM_HORIZON"},
            "checkpointSubSequenceNumber": {"N": "0"}, "ownerSwitchesSinceCheckpoint": {"N": "0"}})


def test_backfill_checks_a_lease_per_open_shard(source_and_target: Any, tmp_path: Path, capsys: Any,
                                               destination_checked: list[str]) -> None:
    source, target = source_and_target
    kinesis = boto3.client("kinesis", region_name=SOURCE_REGION)
    kinesis.create_stream(StreamName="changes", ShardCount=2)
    kcl_lease_table(source, "orders-app", kinesis.list_shards(StreamName="changes")["Shards"])
    first = kinesis.list_shards(StreamName="changes")["Shards"][0]["ShardId"]
    lease = source.get_item(TableName="orders-app", Key={"leaseKey": {"S": first}})["Item"]
    source.delete_item(TableName="orders-app", Key={"leaseKey": {"S": first}})
    assert backfill_cmd.run(_args(tmp_path, "--app", "orders-app", "--stream", "changes")) == 2
    assert f"no lease for open shard(s) ['{first}']" in capsys.readouterr().err

    source.put_item(TableName="orders-app", Item={**lease, "checkpoint": {"S": "LATEST"}})
    assert backfill_cmd.run(_args(tmp_path, "--app", "orders-app", "--stream", "changes")) == 2
    assert "start at LATEST and no worker has taken them" in capsys.readouterr().err

    source.put_item(TableName="orders-app", Item={**lease, "leaseOwner": {"S": "worker-1"}})
    assert backfill_cmd.run(_args(tmp_path, "--app", "orders-app", "--stream", "changes")) == 0
    assert len(scan_all(target, "copy-a")) == 7
