"""Seeding from a table export against in-process moto with the emulator's fixes: import into a new
target and never-seen writes into an existing one, both while the source keeps changing; the source
serves no read units; untrusted export files; the refusals."""

from __future__ import annotations

import argparse
import gzip
import json
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.export import DynamoImports, S3Exports
from kcl_app.adapters.inline import ensure_tombstones
from kcl_app.adapters.ledger import LedgerWriter, ensure_ledger
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.backfill import TargetSpec
from kcl_app.commands import seed as seed_cmd
from kcl_app.core.plan import TargetRule
from kcl_app.pipeline import Pipeline
from kcl_app.ports import ExportLine, ExportProblem, ExportState, ImportState, PitrDisabled
from kcl_app.redrive import redrive
from kcl_app.seed import SeedRefused, export_snapshot, seed
from kcl_app.verify import Verifier
from tests.engine.test_backfill import LiveSource, expected_for, make_item, upper_name_drop_skipped
from tests.support.tables import create_table, normalise_all, scan_all

SOURCE_REGION = "us-east-1"
TARGET_REGION = "eu-west-1"
BUCKET = "seed-exports"


def source_reads() -> float:
    """What the emulator charged the source table for reads so far."""
    from tablesync_local.moto_fixes import export

    return export.read_units("source", region=SOURCE_REGION)


def live_source(items: int, pitr: bool = True) -> tuple[Any, LiveSource, int]:
    """A source table with `items` items written before the stream position (never delivered);
    returns (client, live writer, index of the first record the stream delivers)."""
    client = boto3.client("dynamodb", region_name=SOURCE_REGION)
    create_table(client, "source")
    if pitr:
        client.update_continuous_backups(
            TableName="source", PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    boto3.client("s3", region_name=SOURCE_REGION).create_bucket(Bucket=BUCKET)
    live = LiveSource(client, "source")
    for i in range(items):
        live.put(make_item(i))
    return client, live, len(live.sim.records)


def exports_of(source: Any, clock: Any) -> S3Exports:
    return S3Exports(source, boto3.client("s3", region_name=SOURCE_REGION), clock)


class Racer:
    """Changes the source and delivers part of the stream while a seed runs; holds the rest back.

    Each call changes a few keys (updates, deletes, re-creations), delivers some of the records at
    once and some held earlier, out of order, and keeps the others for `finish`."""

    def __init__(self, live: LiveSource, pipeline: Pipeline, seed_: int, calls: int = 40) -> None:
        self.live = live
        self.pipeline = pipeline
        self.rng = random.Random(seed_)
        self.held: list[int] = []
        self.left = calls
        self.version = 1000
        self.changes = 0

    def deliver(self, indexes: list[int]) -> None:
        result = self.pipeline.process([self.live.raw(i) for i in indexes])
        assert result.complete

    def __call__(self) -> None:
        if self.left <= 0:
            return
        self.left -= 1
        now: list[int] = []
        for _ in range(3):
            self.version += 1
            key = {"pk": {"S": f"k{self.rng.randrange(80):03d}"}}
            roll = self.rng.random()
            if roll < 0.5:
                index: int | None = self.live.update(key, self.version)
            elif roll < 0.75:
                index = self.live.delete(key)
            else:
                index = self.live.put({**make_item(int(key["pk"]["S"][1:]), self.version % 97)})
            if index is not None:
                self.changes += 1
                (now if self.rng.random() < 0.5 else self.held).append(index)
        if self.held and self.rng.random() < 0.5:
            now.append(self.held.pop(self.rng.randrange(len(self.held))))
        self.deliver(now)

    def finish(self, stream_start: int) -> None:
        """The rest of the stream: what was held, plus duplicates of anything since the stream start."""
        since = range(stream_start, len(self.live.sim.records))
        replay = self.held + self.rng.sample(since, min(15, len(since)))
        self.rng.shuffle(replay)
        self.held = []
        self.deliver(replay)


class RacingExports:
    """The real S3Exports, with `race()` run while the export is awaited and while its files are read."""

    def __init__(self, inner: S3Exports, race: Callable[[], None]) -> None:
        self.inner = inner
        self.race = race
        self.lines_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def describe(self, export: ExportState) -> ExportState:
        self.race()
        return self.inner.describe(export)

    def lines(self, export: ExportState, data_file: str) -> Iterator[ExportLine]:
        for line in self.inner.lines(export, data_file):
            self.lines_read += 1
            if self.lines_read % 9 == 0:
                self.race()
            yield line


class RacingImports:
    def __init__(self, inner: DynamoImports, race: Callable[[], None]) -> None:
        self.inner = inner
        self.race = race

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def describe(self, state: ImportState) -> ImportState:
        self.race()
        return self.inner.describe(state)


def pipeline_for(specs: dict[str, TargetSpec], clock: Any, sink: DirectoryDeadLetters) -> Pipeline:
    writers = {name: LedgerWriter(name, s.client, s.table, str(s.ledger_table), clock) for name, s in specs.items()}
    return Pipeline([s.rule for s in specs.values()], writers, sink, RecordingMetrics(), clock,
                    retry_budget_seconds={name: 2.0 for name in specs})


@pytest.mark.usefixtures("moto")
@pytest.mark.parametrize("parallel", [1, 3])
def test_seed_by_writes_into_existing_targets_while_the_source_changes(clock, tmp_path: Path, parallel: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tablesync_local.moto_fixes import export as emulator_export

    monkeypatch.setattr(emulator_export, "ITEMS_PER_DATA_FILE", 150)
    source, live, stream_start = live_source(600)  # 4 or 5 data files in the emulator's export
    target = boto3.client("dynamodb", region_name=TARGET_REGION)
    suffix = uuid.uuid4().hex[:6]
    rules = {"a": TargetRule("a", "source", exclude=("secret",)),
             "b": TargetRule("b", "source", transform=upper_name_drop_skipped)}
    specs = {}
    for name, rule in rules.items():
        create_table(target, f"t-{name}-{suffix}")
        ensure_ledger(target, f"l-{name}-{suffix}")
        specs[name] = TargetSpec(rule, target, f"t-{name}-{suffix}", "exact", f"l-{name}-{suffix}")
    sink = DirectoryDeadLetters(tmp_path / "dlq")
    pipeline = pipeline_for(specs, clock, sink)
    racer = Racer(live, pipeline, parallel)
    for _ in range(5):  # changed and settled by the stream before the seed starts
        racer()

    emulator_export.reset_read_units()
    reports = {}
    for name, spec in specs.items():
        exports = RacingExports(exports_of(source, clock), racer)
        imports = DynamoImports(target, clock)
        reports[name] = seed(exports, imports, "source", spec, clock, bucket=BUCKET, prefix=f"p/{name}",
                             parallel=parallel, poll=0.5)
    assert source_reads() == 0, "the seed read nothing from the source table"

    for report in reports.values():
        assert report.way == "write" and report.ok, report.to_json()
        assert report.data_files >= 3 and report.read == report.exported
        assert report.skipped > 0, "keys the stream had already written are left to the stream"
        assert report.written > 400
    assert reports["b"].filtered > 0, "target b's transform drops some items"
    assert racer.changes > 50
    pending = Verifier(source, "source", list(specs.values()), clock, segments=2).run()
    assert not pending.clean, "before the held records arrive the targets differ: the stream has the last word"

    racer.finish(stream_start)
    assert sink.depth("a") == sink.depth("b") == 0
    final = Verifier(source, "source", list(specs.values()), clock, segments=2).run()
    assert final.clean, final.to_json()
    truth = scan_all(source, "source")
    for name, spec in specs.items():
        assert normalise_all(scan_all(target, spec.table)) == normalise_all(expected_for(rules[name], truth))
    assert source_reads() > 0, "negative control: a scan of the source is counted"
    pipeline.close()


@pytest.mark.usefixtures("moto")
def test_seed_by_import_into_a_new_target_while_the_source_changes(clock, tmp_path: Path) -> None:
    from tablesync_local.moto_fixes import export as emulator_export

    source, live, stream_start = live_source(300)
    target = boto3.client("dynamodb", region_name=TARGET_REGION)
    ensure_ledger(target, "l-new")
    spec = TargetSpec(TargetRule("n", "source"), target, "t-new", "exact", "l-new")
    sink = DirectoryDeadLetters(tmp_path / "dlq")
    pipeline = pipeline_for({"n": spec}, clock, sink)
    racer = Racer(live, pipeline, 7)
    for _ in range(4):  # the target table does not exist yet: the worker parks these
        racer()

    emulator_export.reset_read_units()
    report = seed(RacingExports(exports_of(source, clock), racer), RacingImports(DynamoImports(target, clock), racer),
                  "source", spec, clock, bucket=BUCKET, prefix="imports", poll=0.5)
    assert source_reads() == 0, "neither the export nor the import read the source table"
    assert report.way == "import" and report.ok and report.imported == report.exported, report.to_json()
    assert target.describe_table(TableName="t-new")["Table"]["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"}]

    parked = sink.depth("n")
    assert parked > 0, "changes made while the table was being imported were parked, not lost"
    pending = Verifier(source, "source", [spec], clock, segments=2).run()
    assert not pending.clean, "the import alone is the export's state: what was parked or held is missing"
    redrive(pipeline, sink, "n")  # what the worker's self-healing does once the table exists
    racer.finish(stream_start)
    assert sink.depth("n") == 0
    final = Verifier(source, "source", [spec], clock, segments=2).run()
    assert final.clean, final.to_json()
    assert normalise_all(scan_all(target, "t-new")) == normalise_all(scan_all(source, "source"))
    pipeline.close()


@pytest.mark.usefixtures("moto")
def test_import_publishes_the_table_only_when_complete_and_refuses_an_existing_name(clock) -> None:
    source, _, _ = live_source(50)
    export = export_snapshot(exports_of(source, clock), "source", BUCKET, "x", clock, poll=0.1)
    target = boto3.client("dynamodb", region_name=TARGET_REGION)
    imports = DynamoImports(target, clock)
    create_table(target, "taken")
    with pytest.raises(ExportProblem, match="ResourceInUseException"):
        imports.start(export, "taken", exports_of(source, clock).key_schema("source"))
    assert export.items == 50 and export.export_time is not None


@pytest.mark.usefixtures("moto")
def test_seed_refuses_without_point_in_time_recovery_and_says_how(clock) -> None:
    source, _, _ = live_source(5, pitr=False)
    target = boto3.client("dynamodb", region_name=TARGET_REGION)
    create_table(target, "t")
    spec = TargetSpec(TargetRule("a", "source"), target, "t", "inline", tombstone_table="t.tombstones")
    with pytest.raises(PitrDisabled, match="update-continuous-backups --table-name source"):
        seed(exports_of(source, clock), DynamoImports(target, clock), "source", spec, clock, bucket=BUCKET,
             prefix="p")


@pytest.mark.usefixtures("moto")
def test_import_is_refused_for_a_shaped_target_and_for_a_ledger_with_rows(clock) -> None:
    source, _, _ = live_source(5)
    target = boto3.client("dynamodb", region_name=TARGET_REGION)
    imports = DynamoImports(target, clock)
    shaped = TargetSpec(TargetRule("s", "source", exclude=("secret",)), target, "missing", "exact", "l-s")
    with pytest.raises(SeedRefused, match="projection or transform"):
        seed(exports_of(source, clock), imports, "source", shaped, clock, bucket=BUCKET, prefix="p")
    ensure_ledger(target, "l-old")
    target.put_item(TableName="l-old", Item={"k": {"S": "x"}, "v": {"S": "1"}})
    stale = TargetSpec(TargetRule("o", "source"), target, "missing", "exact", "l-old")
    with pytest.raises(SeedRefused, match="earlier life"):
        seed(exports_of(source, clock), imports, "source", stale, clock, bucket=BUCKET, prefix="p")
    assert not imports.exists("missing"), "nothing was imported for either"


@pytest.mark.usefixtures("moto")
def test_seed_refuses_an_export_older_than_the_stream_check(clock) -> None:
    source, _, _ = live_source(5)
    with pytest.raises(SeedRefused, match="before the stream consumer was checked"):
        export_snapshot(exports_of(source, clock), "source", BUCKET, "p", clock, poll=0.1,
                        stream_since=4_000_000_000.0)


@pytest.mark.usefixtures("moto")
def test_untrusted_export_files_fail_lines_not_the_seed_and_foreign_keys_are_refused(clock) -> None:
    source, _, _ = live_source(10)
    s3 = boto3.client("s3", region_name=SOURCE_REGION)
    exports = exports_of(source, clock)
    export = export_snapshot(exports, "source", BUCKET, "u", clock, poll=0.1)
    (data,) = exports.data_files(export)
    good = gzip.decompress(s3.get_object(Bucket=BUCKET, Key=data)["Body"].read()).decode().splitlines()
    forged = [good[0], "{not json", '{"Item": {"other": {"S": "no key"}}}', '{"Item": {"pk": {"Q": "x"}}}',
              '"just a string"', *good[1:]]
    s3.put_object(Bucket=BUCKET, Key=data, Body=gzip.compress("\n".join(forged).encode()))
    target = boto3.client("dynamodb", region_name=TARGET_REGION)
    create_table(target, "t")
    ensure_tombstones(target, "t.tombstones")
    spec = TargetSpec(TargetRule("a", "source"), target, "t", "inline", tombstone_table="t.tombstones")

    class Again(S3Exports):
        def start(self, *args: Any, **kwargs: Any) -> ExportState:
            return export

    report = seed(Again(source, s3, clock), DynamoImports(target, clock), "source", spec, clock, bucket=BUCKET,
                  prefix="u", poll=0.1)
    assert report.written == 10 and report.failed == 4 and not report.ok
    assert "hold 14 lines, its description 10 items" in report.problem
    assert all(k.startswith(data) for k in report.failed_keys), "failed lines are named by file and line"

    files_key = f"{export.folder}/manifest-files.json"
    s3.put_object(Bucket=BUCKET, Key=files_key,
                  Body=json.dumps({"dataFileS3Key": f"{export.folder}/../elsewhere/x.json.gz"}).encode())
    with pytest.raises(ExportProblem, match="outside"):
        exports.data_files(export)
    s3.put_object(Bucket=BUCKET, Key=files_key, Body=json.dumps({"dataFileS3Key": "other/AWSDynamoDB/x.gz"}).encode())
    with pytest.raises(ExportProblem, match="outside"):
        exports.data_files(export)
    s3.put_object(Bucket=BUCKET, Key=data, Body=b"not gzip at all")
    with pytest.raises(ExportProblem, match="cannot read data file"):
        list(exports.lines(export, data))


def _seed_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    config = tmp_path / "targets.toml"
    config.write_text(f"""
[source]
region = "{SOURCE_REGION}"

[[targets]]
name = "a"
source_table = "source"
table = "copy-a"
region = "{TARGET_REGION}"
dead_letter = {{ kind = "dir", path = "{tmp_path / 'dlq'}" }}
""")
    parser = argparse.ArgumentParser()
    seed_cmd.add_parser(parser.add_subparsers())
    return parser.parse_args(["seed", "--config", str(config), "--target", "a", "--bucket", BUCKET, *extra])


def test_seed_command_refuses_without_a_consumer_check(tmp_path: Path, capsys: Any) -> None:
    assert seed_cmd.run(_seed_args(tmp_path)) == seed_cmd.EXIT_REFUSED
    assert "--app KCL_APP is required" in capsys.readouterr().err


@pytest.mark.usefixtures("moto")
def test_seed_command_imports_a_new_target_and_refuses_without_pitr(tmp_path: Path, capsys: Any) -> None:
    source, _, _ = live_source(40)
    args = _seed_args(tmp_path, "--skip-stream-check", "--poll", "0.05")
    assert seed_cmd.run(args) == seed_cmd.EXIT_OK
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["way"] == "import" and summary["imported"] == 40 and summary["ok"]
    assert "seed: export completed" in out.err and "seed: import completed" in out.err
    target = boto3.client("dynamodb", region_name=TARGET_REGION)
    assert normalise_all(scan_all(target, "copy-a")) == normalise_all(scan_all(source, "source"))

    source.update_continuous_backups(TableName="source",
                                     PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    assert seed_cmd.run(args) == seed_cmd.EXIT_REFUSED
    assert "update-continuous-backups" in capsys.readouterr().err
