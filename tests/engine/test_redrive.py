"""Redrive: a target that was down catches up from its dead letters; a second redrive changes nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.commands import redrive as redrive_cmd
from kcl_app.compose import build_engine
from kcl_app.config import load
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, normalise_all, scan_all


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

[[targets]]
name = "down"
source_table = "source"
table = "copy-down"
region = "ap-southeast-2"
retry_budget_seconds = 2
""")
    return path


def history() -> SourceSim:
    sim = SourceSim("source")
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
