"""Redrive: a target that was down catches up from its dead letters; a second redrive changes nothing."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.commands import redrive as redrive_cmd
from kcl_app.compose import build_engine
from kcl_app.config import load
from kcl_app.redrive import redrive
from tests.conftest import FakeClock
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, normalise_all, scan_all

DOWN = """
[[targets]]
name = "down"
source_table = "source"
table = "copy-down"
region = "ap-southeast-2"
retry_budget_seconds = 2
"""


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(f"""
[dead_letter]
kind = "dir"
path = "{tmp_path / 'dead-letters'}"

[[targets]]
name = "up"
source_table = "source"
table = "copy-up"
region = "eu-west-1"
{DOWN}""")
    return path


@pytest.fixture
def clock() -> FakeClock:
    """The engine's clock at the real time: the history below is stamped a minute ago, and a change
    stamped after the engine's "now" (plus the allowed skew) would be refused as implausible."""
    return FakeClock(start=time.time())


def recent() -> int:
    """Microseconds a minute ago: parked changes younger than the tombstone TTL are replayed."""
    return int((time.time() - 60) * 1e6)


def history() -> SourceSim:
    sim = SourceSim("source", start_micros=recent())
    for i in range(30):
        sim.put({"pk": {"S": f"k{i}"}, "n": {"N": str(i)}, "b": {"B": bytes([i])}})
    for i in range(0, 30, 3):
        sim.put({"pk": {"S": f"k{i}"}, "n": {"N": str(i * 10)}, "tags": {"SS": ["x"]}})
    for i in range(0, 30, 5):
        sim.delete({"pk": {"S": f"k{i}"}})
    return sim


@pytest.mark.usefixtures("moto")
def test_a_target_that_was_down_is_brought_level_by_redrive(clock: Any, tmp_path: Path, capsys: Any) -> None:
    config_path = write_config(tmp_path)
    config = load(config_path)
    up = boto3.client("dynamodb", region_name="eu-west-1")
    down = boto3.client("dynamodb", region_name="ap-southeast-2")
    create_table(up, "copy-up")
    create_table(down, "copy-down")
    engine = build_engine(config, clock=clock, metrics=RecordingMetrics())
    down.delete_table(TableName="copy-down")  # the target becomes unavailable

    sim = history()
    records = sim.raw_records()
    for start in range(0, len(records), 16):  # the stream keeps flowing in batches
        result = engine.pipeline.process(records[start:start + 16])
        assert result.complete, "the failing target's changes are parked, the batch is settled"
    engine.close()

    expected = normalise_all(sim.items)
    assert normalise_all(scan_all(up, "copy-up")) == expected, "the healthy target stays current"
    parked = engine.dead_letters.depth("down")  # type: ignore[attr-defined]
    assert parked > 0 and engine.dead_letters.depth("up") == 0  # type: ignore[attr-defined]

    create_table(down, "copy-down")  # the target returns
    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["redrive", "--config", str(config_path), "--target", "down", "--json"])

    assert redrive_cmd.run(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["read"] == parked and first["still_failing"] == 0 and first["removed"] == parked
    assert first["applied"] + first["stale"] == parked and first["applied"] > 0
    assert normalise_all(scan_all(down, "copy-down")) == expected, "redrive brought the target level"

    assert redrive_cmd.run(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second == {**second, "read": 0, "applied": 0, "stale": 0, "still_failing": 0}
    assert normalise_all(scan_all(down, "copy-down")) == expected


@pytest.mark.usefixtures("moto")
def test_redrive_while_still_down_keeps_the_entries(clock: Any, tmp_path: Path, capsys: Any) -> None:
    config_path = write_config(tmp_path)
    config = load(config_path)
    create_table(boto3.client("dynamodb", region_name="eu-west-1"), "copy-up")
    engine = build_engine(config, clock=clock, metrics=RecordingMetrics())
    assert engine.pipeline.process(history().raw_records()[:5]).complete
    engine.close()
    parked = engine.dead_letters.depth("down")  # type: ignore[attr-defined]
    assert parked == 5

    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["redrive", "--config", str(config_path), "--target", "down", "--json"])
    # the real clock here: a 2 s retry budget per batch, then the entries are parked again
    assert redrive_cmd.run(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["read"] == 5 and report["still_failing"] == 5 and report["applied"] == 0
    assert engine.dead_letters.depth("down") == 5, "nothing lost: each entry is replaced by its re-parked copy"  # type: ignore[attr-defined]


def redrive_args(config_path: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    return parser.parse_args(["redrive", "--config", str(config_path), "--target", "down", "--json"])


class Outage:
    """Target `down` misses three changes (parked); it returns; later changes of the same keys are
    applied: k1 is deleted, k2 updated, k3 untouched. The source table holds the current state."""

    def __init__(self, tmp_path: Path, clock: Any, mode: str, parked_at_micros: int) -> None:
        path = tmp_path / "targets.toml"
        path.write_text(f"""
stream_retention_hours = 24
[source]
region = "us-east-1"

[dead_letter]
kind = "dir"
path = "{tmp_path / 'dead-letters'}"
{DOWN}mode = "{mode}"
""")
        self.config_path = path
        self.config = load(path)
        self.source = boto3.client("dynamodb", region_name="us-east-1")
        self.target = boto3.client("dynamodb", region_name="ap-southeast-2")
        create_table(self.source, "source")
        self.engine = build_engine(self.config, clock=clock, metrics=RecordingMetrics())
        sim = SourceSim("source", start_micros=parked_at_micros)
        missed = [sim.put({"pk": {"S": f"k{i}"}, "v": {"S": "first"}}) for i in (1, 2, 3)]
        assert self.engine.pipeline.process(sim.raw_records()).complete  # no target table: all parked
        assert self.depth() == 3
        create_table(self.target, "copy-down")  # the target returns
        sim.clock = recent()
        sim.delete({"pk": {"S": "k1"}})
        sim.put({"pk": {"S": "k2"}, "v": {"S": "second"}})
        later = sim.raw_records()[len(missed):]
        assert self.engine.pipeline.process(later).complete
        for item in sim.items.values():
            self.source.put_item(TableName="source", Item=item)
        self.expected = normalise_all(sim.items)
        assert "k1" not in str(self.expected) and len(self.expected) == 2

    def depth(self) -> int:
        return int(self.engine.dead_letters.depth("down"))  # type: ignore[attr-defined]

    def expire_tombstones(self) -> None:
        """What DynamoDB's TTL does to the ledger (or the inline tombstones) once the tombstone TTL has passed."""
        target = self.config.target("down")
        table = target.ledger if target.mode == "exact" else target.tombstones
        for row in self.target.scan(TableName=table, ConsistentRead=True)["Items"]:
            if target.mode == "inline" or row.get("d") == {"BOOL": True}:
                self.target.delete_item(TableName=table, Key={"k": row["k"]})

    def copy(self) -> Any:
        return normalise_all(scan_all(self.target, "copy-down", drop=("_tablesync_version",)))


@pytest.mark.usefixtures("moto")
def test_replaying_a_change_older_than_its_tombstone_would_resurrect_a_deleted_item(
        clock: Any, tmp_path: Path) -> None:
    """Why redrive re-reads old entries: the plain replay, once the tombstone has expired, is wrong."""
    outage = Outage(tmp_path, clock, "exact", recent() - 3 * 86400 * 10**6)
    outage.expire_tombstones()
    redrive(outage.engine.pipeline, outage.engine.dead_letters, "down")  # replay, no re-read
    assert "k1" in str(outage.copy()), "the deleted item came back"


@pytest.mark.usefixtures("moto")
@pytest.mark.parametrize("mode", ["exact", "inline"])
def test_an_entry_older_than_the_tombstone_ttl_is_settled_from_the_source(
        clock: Any, tmp_path: Path, capsys: Any, mode: str) -> None:
    three_days_ago = recent() - 3 * 86400 * 10**6  # the default tombstone TTL is 24 + 24 hours
    outage = Outage(tmp_path, clock, mode, three_days_ago)
    outage.expire_tombstones()

    assert redrive_cmd.run(redrive_args(outage.config_path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 3, "reread": 3, "applied": 0, "still_failing": 0, "removed": 3}
    assert outage.copy() == outage.expected, "k1 stays deleted, k2 keeps its newer value, k3 arrives"
    assert outage.depth() == 0


@pytest.mark.usefixtures("moto")
@pytest.mark.parametrize("mode", ["exact", "inline"])
def test_an_entry_younger_than_the_tombstone_ttl_is_replayed(clock: Any, tmp_path: Path, capsys: Any,
                                                             mode: str) -> None:
    """The tombstone of k1's later delete (ledger row, or inline tombstone) refuses the parked older put."""
    outage = Outage(tmp_path, clock, mode, recent() - 3600 * 10**6)  # an hour ago; tombstones kept
    assert redrive_cmd.run(redrive_args(outage.config_path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 3, "reread": 0, "applied": 1, "stale": 2, "still_failing": 0}
    assert outage.copy() == outage.expected


@pytest.mark.usefixtures("moto")
def test_a_re_read_that_cannot_reach_the_source_keeps_the_entry(
        clock: Any, tmp_path: Path, capsys: Any) -> None:
    outage = Outage(tmp_path, clock, "exact", recent() - 3 * 86400 * 10**6)
    outage.source.delete_table(TableName="source")
    assert redrive_cmd.run(redrive_args(outage.config_path)) == 1
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 3, "reread": 0, "still_failing": 3, "removed": 0}
    assert outage.depth() == 3, "nothing is lost"


@pytest.mark.usefixtures("moto")
def test_a_near_1_mb_change_parked_in_sqs_is_kept_in_s3_and_redriven(clock: Any, tmp_path: Path, capsys: Any) -> None:
    """A MODIFY of a ~400 KB item carries both images: ~800 KB of record, over 1 MiB in base64."""
    sqs = boto3.client("sqs", region_name="ap-southeast-2")
    queue = sqs.create_queue(QueueName="tablesync-dead-letters")["QueueUrl"]
    boto3.client("s3", region_name="ap-southeast-2").create_bucket(
        Bucket="tablesync-dl-payloads", CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
    path = tmp_path / "targets.toml"
    # the only target is down at start, so the source's key schema is given, not learned
    path.write_text(f"""[source.key_schema]
source = ["pk:S"]
{DOWN}
[targets.dead_letter]
kind = "sqs"
queue_url = "{queue}"
payload_bucket = "tablesync-dl-payloads"
""")
    engine = build_engine(load(path), clock=clock, metrics=RecordingMetrics())
    sim = SourceSim("source", start_micros=recent())
    sim.put({"pk": {"S": "big"}, "body": {"S": "a" * 399_000}})
    sim.put({"pk": {"S": "big"}, "body": {"S": "b" * 399_000}})
    assert len(sim.records[-1]) > 790_000
    assert engine.pipeline.process(sim.raw_records()).complete, "parked, so the shard moves on"
    engine.close()
    assert engine.dead_letters.depth("down") == 1, "the INSERT was coalesced into the MODIFY"  # type: ignore[attr-defined]
    s3 = boto3.client("s3", region_name="ap-southeast-2")
    assert s3.list_objects_v2(Bucket="tablesync-dl-payloads").get("KeyCount") == 1

    down = boto3.client("dynamodb", region_name="ap-southeast-2")
    create_table(down, "copy-down")
    assert redrive_cmd.run(redrive_args(path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 1, "applied": 1, "still_failing": 0, "removed": 1}
    assert normalise_all(scan_all(down, "copy-down")) == normalise_all(sim.items)
    assert s3.list_objects_v2(Bucket="tablesync-dl-payloads").get("KeyCount") == 0


@pytest.mark.usefixtures("moto")
def test_redrive_from_the_one_queue_of_every_target_while_still_down(clock: Any, tmp_path: Path, capsys: Any) -> None:
    """The worker stack's layout: both targets park into one queue. Redriving one, still down, ends
    (its re-parked entries wait for the next run) and leaves the other target's entries alone."""
    queue = boto3.client("sqs", region_name="us-east-1").create_queue(QueueName="tablesync-dl")["QueueUrl"]
    path = tmp_path / "targets.toml"
    path.write_text(f"""
[source.key_schema]
source = ["pk:S"]

[dead_letter]
kind = "sqs"
queue_url = "{queue}"
region = "us-east-1"
{DOWN}
[[targets]]
name = "also-down"
source_table = "source"
table = "copy-also-down"
region = "eu-west-1"
retry_budget_seconds = 2
""")
    engine = build_engine(load(path), clock=clock, metrics=RecordingMetrics())
    assert engine.pipeline.process(history().raw_records()[:5]).complete  # no target table: all parked
    engine.close()
    depth = engine.dead_letters.depth("down")  # type: ignore[attr-defined]
    assert depth == 10, "5 entries for each target, in one queue"

    listed = list(engine.dead_letters.read("down"))
    engine.dead_letters.release("down", [h for h, _ in listed])  # type: ignore[attr-defined]
    before = {e.entry_id: e for _, e in listed}
    assert redrive_cmd.run(redrive_args(path)) == 1
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 5, "still_failing": 5, "applied": 0, "reparked": 5, "removed": 0}
    assert engine.dead_letters.depth("down") == 10, "each entry replaced by its re-parked copy; none lost"  # type: ignore[attr-defined]
    after = {e.entry_id: e for _, e in engine.dead_letters.read("down")}
    assert set(after) == set(before), "the same entries, once each"
    # re-parked at the redrive's own time (the command's real clock: not comparable in order with
    # the engine's fake one, which ran ahead on its retry budget, as two machines' clocks may), the
    # first time kept whatever the clocks say
    assert all(after[i].attempts == 2 and after[i].first_parked == before[i].first_parked
               and after[i].parked_at != before[i].parked_at for i in before), "first time kept, one more attempt"


@pytest.mark.usefixtures("moto")
def test_redrive_reports_its_progress(clock: Any, tmp_path: Path, capsys: Any) -> None:
    outage = Outage(tmp_path, clock, "exact", recent() - 3600 * 10**6)
    seen: list[tuple[int, int, int]] = []
    report = redrive(outage.engine.pipeline, outage.engine.dead_letters, "down", batch_size=2,
                     progress=lambda r: seen.append((r.read, r.applied + r.stale, r.removed)))
    assert seen[-1] == (report.read, report.applied + report.stale, report.removed) == (3, 3, 3)
    assert len(seen) == 2 and seen[0][0] < 3, "after each batch, not only at the end"

    printer = redrive_cmd.progress_printer(clock, every=5.0)
    printer(report)
    assert capsys.readouterr().err == "", "not before 5 s have passed"
    clock.advance(5)
    printer(report)
    assert capsys.readouterr().err == (
        "redrive down: so far read 3, applied 1, stale 2, re-read 0, still failing 0\n")


def stream_wide_config(tmp_path: Path, extra: str = "", unmapped: str = "park") -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(f"""
unmapped = "{unmapped}"

[source.key_schema]
orders = ["pk:S"]

[dead_letter]
kind = "dir"
path = "{tmp_path / 'dead-letters'}"

[[targets]]
name = "orders"
source_table = "orders"
table = "copy-orders"
region = "eu-west-1"
{extra}""")
    return path


USERS_TARGET = """
[[targets]]
name = "users"
source_table = "users"
table = "copy-users"
region = "eu-west-1"
"""


@pytest.mark.usefixtures("moto")
def test_unmapped_records_are_redriven_once_their_table_is_mapped(clock: Any, tmp_path: Path, capsys: Any) -> None:
    eu = boto3.client("dynamodb", region_name="eu-west-1")
    create_table(eu, "copy-orders")
    create_table(eu, "copy-users")
    users, audit = SourceSim("users", start_micros=recent()), SourceSim("audit", start_micros=recent())
    for i in range(4):
        users.put({"pk": {"S": f"u{i}"}, "name": {"S": f"user {i}"}})
    audit.put({"pk": {"S": "a0"}})
    old = SourceSim("users", start_micros=recent() - 3 * 86400 * 10**6)  # older than the tombstone TTL
    old.put({"pk": {"S": "u-old"}})
    engine = build_engine(load(stream_wide_config(tmp_path)), clock=clock, metrics=RecordingMetrics())
    assert engine.pipeline.process(users.raw_records() + audit.raw_records() + old.raw_records()).complete
    engine.close()
    assert engine.dead_letters.depth("_unmapped") == 6  # type: ignore[attr-defined]

    mapped = stream_wide_config(tmp_path, extra=USERS_TARGET)
    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["redrive", "--config", str(mapped), "--store", "_unmapped", "--json"])
    assert redrive_cmd.run(args) == 1, "one record is still unmapped, one too old"
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 6, "applied": 4, "still_failing": 1, "left_too_old": 1, "removed": 4,
                          "reparked": 1}
    assert normalise_all(scan_all(eu, "copy-users")) == normalise_all(users.items)
    left = sorted(json.loads(e.data)["tableName"] for _, e in engine.dead_letters.read("_unmapped"))
    assert left == ["audit", "users"], "audit parked anew, the old users record left as it was"


@pytest.mark.usefixtures("moto")
def test_a_stream_wide_redrive_keeps_what_is_still_unmapped_even_when_the_config_skips_it(
        clock: Any, tmp_path: Path, capsys: Any) -> None:
    eu = boto3.client("dynamodb", region_name="eu-west-1")
    create_table(eu, "copy-orders")
    create_table(eu, "copy-users")
    users, audit = SourceSim("users", start_micros=recent()), SourceSim("audit", start_micros=recent())
    users.put({"pk": {"S": "u0"}})
    audit.put({"pk": {"S": "a0"}})
    engine = build_engine(load(stream_wide_config(tmp_path)), clock=clock, metrics=RecordingMetrics())
    assert engine.pipeline.process(users.raw_records() + audit.raw_records()).complete
    engine.close()

    # the operator maps `users` and sets unmapped back to "skip": redrive must still not drop `audit`
    skipping = load(stream_wide_config(tmp_path, extra=USERS_TARGET, unmapped="skip"))
    assert build_engine(skipping, clock=clock, metrics=RecordingMetrics()).pipeline.unmapped == "skip"
    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["redrive", "--config", str(tmp_path / "targets.toml"), "--store", "_unmapped",
                              "--json"])
    assert redrive_cmd.run(args) == 1, "audit is still unmapped"
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 2, "applied": 1, "still_failing": 1}
    left = [json.loads(e.data)["tableName"] for _, e in engine.dead_letters.read("_unmapped")]
    assert left == ["audit"]


@pytest.mark.usefixtures("moto")
def test_poison_records_are_parked_anew_when_replayed_and_still_undecodable(
        clock: Any, tmp_path: Path, capsys: Any) -> None:
    from kcl_app.core.records import RawRecord

    engine = build_engine(load(stream_wide_config(tmp_path)), clock=clock, metrics=RecordingMetrics())
    assert engine.pipeline.process([RawRecord(b"\xff not json", "1")]).complete
    engine.close()
    (first,) = [e for _, e in engine.dead_letters.read("_poison")]
    clock.advance(60)
    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["redrive", "--config", str(tmp_path / "targets.toml"), "--store", "_poison", "--json"])
    assert redrive_cmd.run(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 1, "still_failing": 1, "removed": 0, "reparked": 1}
    (entry,) = [e for _, e in engine.dead_letters.read("_poison")]
    assert entry.data == b"\xff not json" and "not JSON" in entry.reason
    assert entry.attempts == 2 and entry.first_parked == first.first_parked < entry.parked_at


@pytest.mark.usefixtures("moto")
def test_redrive_stderr_is_for_people_and_its_metrics_go_to_the_metrics_file(
        clock: Any, tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    config_path = write_config(tmp_path)
    config = load(config_path)
    create_table(boto3.client("dynamodb", region_name="eu-west-1"), "copy-up")
    engine = build_engine(config, clock=clock, metrics=RecordingMetrics())
    assert engine.pipeline.process(history().raw_records()[:5]).complete
    engine.close()
    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["redrive", "--config", str(config_path), "--target", "down"])

    # 1 target still down, no metrics file: the terminal gets human lines only, no EMF
    monkeypatch.delenv("TABLESYNC_METRICS_FILE", raising=False)
    assert redrive_cmd.run(args) == 1
    out = capsys.readouterr()
    assert "_aws" not in out.err and "_aws" not in out.out
    assert "redrive down:" in out.out

    # 2 target back, with a metrics file: the documents go there, still nothing on stderr
    create_table(boto3.client("dynamodb", region_name="ap-southeast-2"), "copy-down")
    metrics_file = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("TABLESYNC_METRICS_FILE", str(metrics_file))
    status = redrive_cmd.run(args)
    out = capsys.readouterr()
    assert status == 0, out
    assert "_aws" not in out.err
    docs = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert docs and all("_aws" in d for d in docs)
    assert sum(d.get("Applied", 0) + d.get("StaleSkipped", 0) for d in docs if d.get("Target") == "down") == 5
