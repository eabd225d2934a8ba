"""`tablesync pause` / `resume` through the control table (moto): the state every shard process
reads, kept as last known when the table cannot be read, and refused clearly without a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from kcl_app.adapters.control import ControlTable, PausedTargets
from kcl_app.commands import pause, resume
from kcl_app.compose import control_table
from kcl_app.config import load

pytestmark = pytest.mark.usefixtures("moto")


def main(argv: list[str]) -> int:
    """The command's own run (not the CLI's dispatch, which sets up process-wide logging)."""
    import argparse

    command, *rest = argv
    opts = dict(zip(rest[::2], rest[1::2], strict=True))
    args = argparse.Namespace(config=opts["--config"], target=opts["--target"],
                              reason=opts.get("--reason", "paused by the operator"))
    return {"pause": pause, "resume": resume}[command].run(args)

CONFIG = """
[source]
region = "eu-west-1"
[control]
table = "tablesync-control"
[[targets]]
name = "prod"
source_table = "src"
region = "eu-west-1"
table = "copy"
"""


def test_pause_reaches_a_reader_and_resume_clears_it(tmp_path: Path, clock: Any, capsys: Any) -> None:
    path = tmp_path / "t.toml"
    path.write_text(CONFIG)
    assert main(["pause", "--config", str(path), "--target", "prod", "--reason", "index rebuild"]) == 0
    control = control_table(load(path))
    assert control is not None
    assert control.paused()["prod"]["reason"] == "index rebuild"
    reader = PausedTargets(control, clock, interval=5.0)
    assert reader.current() == {"prod"}  # the first read is synchronous
    assert main(["resume", "--config", str(path), "--target", "prod"]) == 0
    assert reader.current() == {"prod"}  # not re-read before the interval
    clock.advance(5.0)
    reader.current()
    assert reader._thread is not None
    reader._thread.join(timeout=10)
    assert reader.current() == frozenset()
    assert "resumed" in capsys.readouterr().out


def test_an_unreadable_table_keeps_the_last_known_pause(clock: Any) -> None:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    control = ControlTable(client, "ctl")
    control.ensure()
    control.pause("prod", "maintenance", clock.now())
    reader = PausedTargets(control, clock)
    assert reader.current() == {"prod"}

    class Broken:
        def scan(self, **kwargs: Any) -> Any:
            raise OSError("network down")

    control.client = Broken()
    reader.refresh()
    assert reader.current() == {"prod"}


def test_pause_without_a_control_table_says_what_to_add(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "t.toml"
    path.write_text(CONFIG.replace('[control]\ntable = "tablesync-control"\n', ""))
    assert main(["pause", "--config", str(path), "--target", "prod"]) == 2
    assert "[control]" in capsys.readouterr().err
    assert main(["pause", "--config", str(path), "--target", "nope"]) == 2


def test_status_shows_each_target_state_and_parked_backlog(tmp_path: Path, capsys: Any) -> None:
    import argparse
    import json

    from kcl_app.adapters.dead_letters import DirectoryDeadLetters
    from kcl_app.commands import status
    from kcl_app.ports import DeadLetter

    ddb = boto3.client("dynamodb", region_name="eu-west-1")
    ddb.create_table(TableName="app", AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    path = tmp_path / "t.toml"
    second = CONFIG[CONFIG.index("[[targets]]"):].replace('"prod"', '"dr"').replace('"copy"', '"copy-dr"')
    path.write_text(CONFIG + second + f'[dead_letter]\nkind = "dir"\npath = "{tmp_path / "dl"}"\n')
    DirectoryDeadLetters(tmp_path / "dl").park([DeadLetter("dr", "retry budget spent", b"{}", seq, "s", 1.0)
                                           for seq in ("1", "2")])
    assert main(["pause", "--config", str(path), "--target", "prod", "--reason", "maintenance"]) == 0
    capsys.readouterr()
    args = argparse.Namespace(app="app", lease_table=None, stream=None, region="eu-west-1", endpoint=None, json=True,
                              config=str(path), metrics_file=None)
    assert status.run(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(t["target"], t["state"], t["paused_reason"], t["parked"]) for t in doc["targets"]] == [
        ("prod", "paused", "maintenance", 0), ("dr", "active", "", 2)]
