"""`tablesync parked list|show` and `tablesync redrive --dry-run`, run as a user runs them (a
subprocess, the local stack for the target), asserted on their output, exit status and on what
they leave behind (nothing changed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kcl_app.compose import build_engine
from kcl_app.config import load
from kcl_app.core.records import RawRecord, decode
from kcl_app.ports import DeadLetter
from tests.support.source_sim import SourceSim

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def tablesync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcl_app.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)


@pytest.fixture
def setup(local_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A target table on the local stack holding k0 at a version newer than its parked change; the
    target's store holds the four changes k0..k3 (parked after an outage), `_poison` one record."""
    env = {**os.environ, **local_stack.env("eu-west-1"), "PYTHONPATH": str(REPO)}
    env.pop("TABLESYNC_METRICS_FILE", None)
    for name, value in local_stack.env("eu-west-1").items():
        monkeypatch.setenv(name, value)
    table = f"copy-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "targets.toml"
    config.write_text(f"""
[dead_letter]
kind = "dir"
path = "{tmp_path / 'dead-letters'}"

[[targets]]
name = "eu"
source_table = "users"
table = "{table}"
region = "eu-west-1"
retry_budget_seconds = 5
""")
    local_stack.client("dynamodb", "eu-west-1").create_table(
        TableName=table, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    sim = SourceSim("users", start_micros=int((time.time() - 60) * 1e6))  # younger than the tombstone TTL
    for i in range(4):
        sim.put({"pk": {"S": f"k{i}"}, "email": {"S": f"user{i}@example.com"}, "n": {"N": str(i)}})
    sim.put({"pk": {"S": "k0"}, "email": {"S": "new@example.com"}})
    raws = sim.raw_records()
    engine = build_engine(load(str(config)))
    try:
        result = engine.pipeline.process([raws[4]])  # the newer k0 reaches the target
        assert result.targets["eu"].applied == 1
        parked = []
        for raw in raws[:4]:
            change = decode(raw)
            parked.append(DeadLetter(store="eu", reason="target eu unavailable: EndpointConnectionError",
                                     data=raw.data, sequence_number=raw.sequence_number, shard_id=raw.shard_id,
                                     parked_at=1_790_000_100.0, key_id=change.key_id, version=change.version.token()))
        engine.dead_letters.park(parked)
        poison = RawRecord(b"\xff not json", "00000000000000000099", shard_id="shardId-000000000001")
        assert engine.pipeline.process([poison]).complete
    finally:
        engine.close()
    return {"env": env, "config": str(config), "table": table, "store": tmp_path / "dead-letters",
            "ids": [p.entry_id for p in parked]}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_parked_list_shows_decoded_records_without_values(setup: dict[str, Any]) -> None:
    done = tablesync("parked", "list", "--config", setup["config"], env=setup["env"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["entry_id", "store", "event", "key", "version", "first_parked_at", "attempts",
                                "reason"]
    rows = [line.split() for line in lines[1:-1]]
    eu = [r for r in rows if r[1] == "eu"]
    assert sorted(r[0] for r in eu) == sorted(setup["ids"])
    assert {r[2] for r in eu} == {"INSERT"} and {r[3] for r in eu} == {f'{{"pk":{{"S":"k{i}"}}}}' for i in range(4)}
    assert all(r[6] == "1" for r in eu), "first park: one attempt"
    (poison,) = [r for r in rows if r[1] == "_poison"]
    assert poison[2:4] == ["-", "-"] and "undecodable record: not JSON" in " ".join(poison)
    assert lines[-1] == "5 parked: eu 4, _poison 1"
    assert "example.com" not in done.stdout, "no attribute value without --show-values"

    shown = tablesync("parked", "list", "--config", setup["config"], "--target", "eu", "--json", env=setup["env"])
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["total"] == 4 and doc["values_shown"] is False
    first = doc["entries"][0]
    assert first["image"] == {"email": "S", "n": "N", "pk": "S"}, "names and types only"
    expected = datetime.fromtimestamp(1_790_000_100.0, UTC).isoformat(timespec="milliseconds")
    assert first["first_parked_at"] == expected.replace("+00:00", "Z") and first["attempts"] == 1
    assert first["reason"] == "target eu unavailable: EndpointConnectionError"
    assert first["changed_at"].startswith("2026-") and first["version"].split("#")[0].isdigit()

    values = tablesync("parked", "list", "--config", setup["config"], "--target", "eu", "--json", "--show-values",
                       env=setup["env"])
    emails = {e["key"]["pk"]["S"]: e["image"]["email"] for e in json.loads(values.stdout)["entries"]}
    assert emails == {f"k{i}": {"S": f"user{i}@example.com"} for i in range(4)}


def test_parked_show_one_entry_by_prefix(setup: dict[str, Any]) -> None:
    entry_id = setup["ids"][1]
    done = tablesync("parked", "show", "--config", setup["config"], entry_id[:8], env=setup["env"])
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines() if ":" in line.split(None, 1)[0])
    assert fields["entry_id:"] == entry_id and fields["event:"] == "INSERT"
    assert fields["key:"] == '{"pk": {"S": "k1"}}' and fields["attempts:"] == "1"
    assert "user1@example.com" not in done.stdout and "--show-values" in done.stdout
    shown = tablesync("parked", "show", "--config", setup["config"], entry_id, "--show-values", "--json",
                      env=setup["env"])
    assert json.loads(shown.stdout)["image"]["email"] == {"S": "user1@example.com"}

    missing = tablesync("parked", "show", "--config", setup["config"], "0123456789", env=setup["env"])
    assert missing.returncode == 1 and "no parked entry '0123456789'" in missing.stderr
    unknown = tablesync("parked", "list", "--config", setup["config"], "--target", "nope", env=setup["env"])
    assert unknown.returncode == 2 and "nope" in unknown.stderr


def test_redrive_dry_run_says_what_it_would_do_and_touches_nothing(setup: dict[str, Any], local_stack: Any) -> None:
    before = snapshot(setup["store"])
    ddb = local_stack.client("dynamodb", "eu-west-1")
    target_before = ddb.scan(TableName=setup["table"])["Items"]
    done = tablesync("redrive", "--config", setup["config"], "--target", "eu", "--dry-run", "--json",
                     env=setup["env"])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {**report, "dry_run": True, "read": 4, "would_apply": 3, "would_skip_stale": 1,
                      "would_reread": 0, "would_park_again": 0}
    stale = [e for e in report["entries"] if e["verdict"] == "stale"]
    assert [json.loads(e["key_id"]) for e in stale] == [{"pk": {"S": "k0"}}], "k0 holds a newer version"
    assert snapshot(setup["store"]) == before, "the store is untouched"
    assert ddb.scan(TableName=setup["table"])["Items"] == target_before, "the target is untouched"

    human = tablesync("redrive", "--config", setup["config"], "--target", "eu", "--dry-run", env=setup["env"])
    assert human.stdout.splitlines()[0].startswith("redrive eu (dry run, nothing changed): read 4, would apply 3, "
                                                   "would skip as stale 1")

    # the real redrive then does what the dry run said; its stderr holds human lines only
    real = tablesync("redrive", "--config", setup["config"], "--target", "eu", "--json", env=setup["env"])
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout) == {**json.loads(real.stdout), "applied": 3, "stale": 1, "removed": 4,
                                       "reparked": 0}
    assert "_aws" not in real.stderr and "RedriveReport(" not in real.stderr, real.stderr
    assert all(not line.lstrip().startswith("{") for line in real.stderr.splitlines()), real.stderr


def test_replays_park_once_and_re_parks_count_attempts(setup: dict[str, Any]) -> None:
    # the stream delivers the poison record again (a replay): still one entry, two attempts
    engine = build_engine(load(setup["config"]))
    try:
        poison = RawRecord(b"\xff not json", "00000000000000000099", shard_id="shardId-000000000001")
        assert engine.pipeline.process([poison]).complete
    finally:
        engine.close()
    listed = json.loads(tablesync("parked", "list", "--config", setup["config"], "--store", "_poison", "--json",
                                  env=setup["env"]).stdout)
    assert listed["total"] == 1
    (entry,) = listed["entries"]
    assert entry["attempts"] == 2 and entry["first_parked_at"] <= entry["last_parked_at"]

    # a redrive that fails again parks it again: same entry, its first time kept, one more attempt
    done = tablesync("redrive", "--config", setup["config"], "--store", "_poison", "--json", env=setup["env"])
    assert done.returncode == 1
    assert json.loads(done.stdout) == {**json.loads(done.stdout), "read": 1, "reparked": 1, "removed": 0}
    (again,) = json.loads(tablesync("parked", "list", "--config", setup["config"], "--store", "_poison", "--json",
                                    env=setup["env"]).stdout)["entries"]
    assert again["entry_id"] == entry["entry_id"] and again["attempts"] == 3
    assert again["first_parked_at"] == entry["first_parked_at"]
    assert again["undecodable"].startswith("not JSON") and again["reason"].startswith("undecodable record")
