"""verify finds every kind of divergence, tells in-flight writes apart, and repairs without overwriting newer data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from kcl_app.adapters.inline import ensure_tombstones
from kcl_app.adapters.ledger import LedgerWriter, ensure_ledger
from kcl_app.backfill import BackfillState, TargetSpec, backfill
from kcl_app.commands import verify as verify_cmd
from kcl_app.core.attrs import Item, key_id
from kcl_app.core.plan import TargetRule, Write
from kcl_app.core.records import RawRecord, decode
from kcl_app.core.versions import Version
from kcl_app.verify import AttrDiff, Verifier, diff_items
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, normalise_all, scan_all

SOURCE_REGION = "us-east-1"


def item(i: int) -> Item:
    return {"pk": {"S": f"k{i:02d}"}, "n": {"N": str(i)}, "s": {"S": f"value-{i}"},
            "bin": {"B": bytes([1, 2, 3, i])}, "tags": {"SS": ["x", "y"]}, "secret": {"S": "pii"},
            "doc": {"M": {"list": {"L": [{"N": "1"}, {"NULL": True}, {"BOOL": False}]}}}}


def kid(i: int) -> str:
    return key_id({"pk": {"S": f"k{i:02d}"}})


class Tables:
    """A source of 20 items and two targets filled by a backfill: `a` exact (drops `secret`), `b` inline."""

    def __init__(self, clock: Any, tmp_path: Path) -> None:
        self.clock = clock
        self.source = boto3.client("dynamodb", region_name=SOURCE_REGION)
        self.target = boto3.client("dynamodb", region_name="eu-west-1")
        create_table(self.source, "source")
        for i in range(20):
            self.source.put_item(TableName="source", Item=item(i))
        create_table(self.target, "copy-a")
        create_table(self.target, "copy-b")
        ensure_ledger(self.target, "ledger-a")
        ensure_tombstones(self.target, "tombstones-b")
        self.a = TargetSpec(TargetRule("a", "source", exclude=("secret",)), self.target, "copy-a", "exact", "ledger-a")
        self.b = TargetSpec(TargetRule("b", "source"), self.target, "copy-b", "inline", tombstone_table="tombstones-b")
        state = BackfillState.open(tmp_path / "state", "source", ["a", "b"], 2)
        assert backfill(self.source, "source", [self.a, self.b], state, clock).ok

    def verify(self, repair: bool = False, specs: list[TargetSpec] | None = None, **kw: Any) -> Any:
        return Verifier(self.source, "source", specs or [self.a, self.b], self.clock, **kw).run(repair=repair)

    def target_item(self, spec: TargetSpec, i: int) -> Item | None:
        answer = self.target.get_item(TableName=spec.table, Key={"pk": {"S": f"k{i:02d}"}}, ConsistentRead=True)
        return answer.get("Item")

    def ledger_version(self, i: int) -> str:
        row = self.target.get_item(TableName="ledger-a", Key={"k": {"S": kid(i)}}, ConsistentRead=True)["Item"]
        return str(row["v"]["S"])


@pytest.fixture
def tables(moto: None, clock: Any, tmp_path: Path) -> Tables:
    return Tables(clock, tmp_path)


def inject(tables: Tables, table: str) -> None:
    """One divergence of every kind in `table`."""
    t = tables.target
    t.delete_item(TableName=table, Key={"pk": {"S": "k01"}})                                      # missing
    t.put_item(TableName=table, Item={"pk": {"S": "zz-extra"}, "s": {"S": "ghost"}})              # extra
    t.update_item(TableName=table, Key={"pk": {"S": "k02"}}, UpdateExpression="SET s = :v",         # value
                  ExpressionAttributeValues={":v": {"S": "changed"}})
    t.update_item(TableName=table, Key={"pk": {"S": "k03"}}, UpdateExpression="SET n = :v",         # type
                  ExpressionAttributeValues={":v": {"S": "3"}})
    t.update_item(TableName=table, Key={"pk": {"S": "k04"}}, UpdateExpression="SET bin = :v",       # one byte
                  ExpressionAttributeValues={":v": {"B": bytes([1, 2, 3, 5])}})
    t.update_item(TableName=table, Key={"pk": {"S": "k05"}}, UpdateExpression="ADD tags :v",        # set +1
                  ExpressionAttributeValues={":v": {"SS": ["z"]}})


def test_diff_is_exact_about_types_sets_numbers_and_bytes() -> None:
    base = item(1)
    assert diff_items(base, {**base, "tags": {"SS": ["y", "x"]}, "n": {"N": "1.0"}}) == []
    assert diff_items(base, {**base, "n": {"S": "1"}}) == [AttrDiff("n", "type", "N:'1'", "S:'1'")]
    assert diff_items(base, {**base, "bin": {"B": bytes([1, 2, 3, 2])}})[0].problem == "value"
    assert [d.problem for d in diff_items(base, {k: v for k, v in base.items() if k != "s"})] == ["missing_in_target"]
    nested = {**base, "doc": {"M": {"list": {"L": [{"N": "1"}, {"NULL": True}, {"BOOL": True}]}}}}
    assert [d.name for d in diff_items(base, nested)] == ["doc"]


def test_verify_finds_every_kind_of_divergence_and_repair_heals_them(tables: Tables) -> None:
    assert tables.verify().clean
    inject(tables, "copy-a")
    inject(tables, "copy-b")

    report = tables.verify(segments=3)
    assert not report.clean
    for name in ("a", "b"):
        t = report.targets[name]
        assert (t.count("missing"), t.count("extra"), t.count("different")) == (1, 1, 4), name
        assert t.source_checked == 20 and t.target_checked == 20
        problems = {k: [(a.name, a.problem) for a in d.attributes] for k, d in t.divergences.items()}
        assert problems[kid(2)] == [("s", "value")]
        assert problems[kid(3)] == [("n", "type")]
        assert problems[kid(4)] == [("bin", "value")]
        assert problems[kid(5)] == [("tags", "value")]
        assert t.divergences[kid(1)].kind == "missing"
        assert t.divergences[key_id({"pk": {"S": "zz-extra"}})].kind == "extra"

    repaired = tables.verify(repair=True)
    assert repaired.clean and repaired.targets["a"].repaired == 6 and repaired.targets["b"].repaired == 6
    assert tables.verify().clean, "a fresh verification finds nothing after the repair"
    source = scan_all(tables.source, "source")
    assert normalise_all(scan_all(tables.target, "copy-a")) == normalise_all(
        {k: {n: v for n, v in i.items() if n != "secret"} for k, i in source.items()})
    assert normalise_all(scan_all(tables.target, "copy-b", drop=("_tablesync_version",))) == normalise_all(source)
    # the repair's versions sit just above what the ledger held: the backfill's 0#backfill
    assert tables.ledger_version(2) == Version(0, "backfill#repair").token()
    assert tables.ledger_version(1) == Version(0, "backfill#repair").token()
    extra_row = tables.target.get_item(TableName="ledger-a", Key={"k": {"S": key_id({"pk": {"S": "zz-extra"}})}})
    assert extra_row["Item"]["d"] == {"BOOL": True}, "the extra item's removal leaves a tombstone"


class RacingTarget:
    """A target client that applies `newer()` once, between the repair's reads and its write of `key`
    (repairs of other keys pass through, whatever order the verifier repairs in)."""

    def __init__(self, inner: Any, newer: Any, key: str) -> None:
        self.inner = inner
        self.newer = newer
        self.key = key
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _race(self, item: Item) -> None:
        if not self.fired and item.get("pk") == {"S": self.key}:
            self.fired = True
            self.newer()

    def transact_write_items(self, **kwargs: Any) -> Any:
        for action in kwargs["TransactItems"]:
            body = action.get("Put") or action.get("Delete") or {}
            if body.get("TableName") != "ledger-a":
                self._race(body.get("Item") or body.get("Key") or {})
        return self.inner.transact_write_items(**kwargs)

    def put_item(self, **kwargs: Any) -> Any:
        self._race(kwargs["Item"])
        return self.inner.put_item(**kwargs)


def test_repair_never_overwrites_a_newer_write(tables: Tables, clock: Any) -> None:
    tables.target.update_item(TableName="copy-a", Key={"pk": {"S": "k07"}}, UpdateExpression="SET s = :v",
                              ExpressionAttributeValues={":v": {"S": "corrupted"}})
    # the newer change: the source moves on and its stream record is applied while the repair runs
    sim = SourceSim("source")
    newest = {**item(7), "s": {"S": "newest"}}
    record = decode(RawRecord(sim.put(newest), "1"))
    writer = LedgerWriter("a", tables.target, "copy-a", "ledger-a", clock)

    def newer() -> None:
        tables.source.put_item(TableName="source", Item=newest)
        write = Write("a", record.key, record.key_id, record.version,
                      {k: v for k, v in newest.items() if k != "secret"}, record, (0,))
        assert writer.apply([write], clock.monotonic() + 5).applied

    race = RacingTarget(tables.target, newer, "k07")
    racing = TargetSpec(tables.a.rule, race, "copy-a", "exact", "ledger-a")
    report = tables.verify(repair=True, specs=[racing])
    assert race.fired
    t = report.targets["a"]
    assert t.superseded == 1 and t.repaired == 0 and not report.clean
    assert tables.target_item(tables.a, 7)["s"] == {"S": "newest"}, "the newer write survives the repair"
    assert tables.ledger_version(7) == record.version.token()
    assert tables.verify(specs=[tables.a]).clean

    # inline mode: the same race against the version attribute
    tables.target.update_item(TableName="copy-b", Key={"pk": {"S": "k08"}}, UpdateExpression="SET s = :v",
                              ExpressionAttributeValues={":v": {"S": "corrupted"}})

    def newer_inline() -> None:
        tables.target.put_item(TableName="copy-b", Item={**item(8), "s": {"S": "stream"},
                                                          "_tablesync_version": {"S": record.version.token()}})

    race_b = RacingTarget(tables.target, newer_inline, "k08")
    racing_b = TargetSpec(tables.b.rule, race_b, "copy-b", "inline", tombstone_table="tombstones-b")
    t = tables.verify(repair=True, specs=[racing_b]).targets["b"]
    assert race_b.fired
    assert t.superseded == 1 and tables.target_item(tables.b, 8)["s"] == {"S": "stream"}
    assert t.repaired == 1 and tables.target_item(tables.b, 7)["s"] == {"S": "newest"}, "k07 is repaired as usual"


def test_after_a_repair_newer_changes_win_and_older_ones_lose(tables: Tables, clock: Any) -> None:
    sim = SourceSim("source")
    old = decode(RawRecord(sim.put({**item(9), "s": {"S": "old"}}), "1"))
    new = decode(RawRecord(sim.put({**item(9), "s": {"S": "new"}}), "2"))
    writer = LedgerWriter("a", tables.target, "copy-a", "ledger-a", clock)

    def write(change: Any) -> Any:
        image = {k: v for k, v in change.new_image.items() if k != "secret"}
        return writer.apply([Write("a", change.key, change.key_id, change.version, image, change, (0,))],
                            clock.monotonic() + 5)

    tables.source.put_item(TableName="source", Item={**item(9), "s": {"S": "old"}})
    assert write(old).applied
    tables.target.delete_item(TableName="copy-a", Key={"pk": {"S": "k09"}})  # lost behind the ledger's back
    assert tables.verify(repair=True, specs=[tables.a]).targets["a"].repaired == 1
    assert tables.ledger_version(9) == Version(old.version.micros, old.version.tiebreak + "#repair").token()
    assert write(old).stale, "a replay of the change the repair settled loses"
    assert write(new).applied, "a later change wins over the repair"
    assert tables.target_item(tables.a, 9)["s"] == {"S": "new"}


def test_in_flight_writes_are_not_divergences(tables: Tables) -> None:
    class MovingSource:
        """The source changes (and the change reaches the target) just after each page is read."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.n = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def scan(self, **kwargs: Any) -> Any:
            page = self.inner.scan(**kwargs)
            for scanned in page.get("Items", [])[:2]:
                self.n += 1
                moved = {**scanned, "s": {"S": f"moved-{self.n}"}}
                self.inner.put_item(TableName="source", Item=moved)
                tables.target.put_item(TableName="copy-a", Item={k: v for k, v in moved.items() if k != "secret"})
            return page

    report = Verifier(MovingSource(tables.source), "source", [tables.a], tables.clock, segments=1,
                      page_limit=5).run()
    assert report.clean and report.targets["a"].in_flight == 8


def test_sampling_checks_part_of_the_keys(tables: Tables) -> None:
    inject(tables, "copy-a")
    report = tables.verify(specs=[tables.a], sample=0.5, seed=7, segments=1)
    t = report.targets["a"]
    assert 0 < t.source_checked < 20 and 0 < t.target_checked < 20
    again = tables.verify(specs=[tables.a], sample=0.5, seed=7, segments=1).targets["a"]
    assert again.source_checked == t.source_checked and set(again.divergences) == set(t.divergences)


def test_verify_command_json_and_exit_codes(tables: Tables, tmp_path: Path, capsys: Any) -> None:
    config = tmp_path / "targets.toml"
    config.write_text(f"""
stream_retention_hours = 24
[source]
region = "{SOURCE_REGION}"

[[targets]]
name = "a"
source_table = "source"
table = "copy-a"
ledger_table = "ledger-a"
exclude = ["secret"]
region = "eu-west-1"

[[targets]]
name = "b"
source_table = "source"
table = "copy-b"
mode = "inline"
tombstone_table = "tombstones-b"
region = "eu-west-1"
""")
    parser = argparse.ArgumentParser()
    verify_cmd.add_parser(parser.add_subparsers())

    def run(*extra: str) -> tuple[int, Any]:
        code = verify_cmd.run(parser.parse_args(["verify", "--config", str(config), "--json", *extra]))
        return code, json.loads(capsys.readouterr().out)

    code, doc = run()
    assert code == 0 and doc["clean"]
    inject(tables, "copy-a")
    code, doc = run("--target", "a", "--segments", "2")
    assert code == 1 and not doc["clean"]
    (target,) = doc["sources"][0]["targets"]
    assert (target["missing"], target["extra"], target["different"]) == (1, 1, 4)
    typed = next(d for d in target["divergences"] if d["key"] == {"pk": {"S": "k03"}})
    assert typed["attributes"] == [{"name": "n", "problem": "type", "source": "N", "target": "S"}]
    code, doc = run("--target", "a", "--show-values")
    typed = next(d for d in doc["sources"][0]["targets"][0]["divergences"] if d["key"] == {"pk": {"S": "k03"}})
    assert typed["attributes"] == [{"name": "n", "problem": "type", "source": "N:'3'", "target": "S:'3'"}]
    code, doc = run("--repair")
    assert code == 0 and doc["sources"][0]["targets"][0]["repaired"] == 6
    assert run()[0] == 0

    # progress goes to stderr, one line at least when each pass ends; --quiet has none
    assert verify_cmd.run(parser.parse_args(["verify", "--config", str(config)])) == 0
    err = capsys.readouterr().err
    assert "verify: source -> targets: 20/~20 items scanned" in err and "done in" in err
    assert "verify: a -> source: 20/~20 items scanned" in err and "verify: b -> source" in err
    code = verify_cmd.run(parser.parse_args(["verify", "--config", str(config), "--quiet"]))
    assert code == 0 and capsys.readouterr().err == ""


def test_progress_reports_every_pass_with_its_counts(tables: Tables, clock: Any) -> None:
    seen: list[Any] = []
    Verifier(tables.source, "source", [tables.a, tables.b], clock, segments=2, page_limit=3,
             progress=seen.append, progress_every=0.0).run()
    phases = [p.phase for p in seen]
    assert list(dict.fromkeys(phases)) == ["source", "target a", "target b"], "in order, each pass once"
    for phase in ("source", "target a", "target b"):
        reports = [p for p in seen if p.phase == phase]
        assert [p.scanned for p in reports] == sorted(p.scanned for p in reports), "counts only grow"
        assert len(reports) > 2, "reports while the pass runs, not only at its end"
        final = reports[-1]
        assert final.done and final.scanned == 20 and final.estimated_total == 20 and final.divergent == 0
