"""Items often hold personal data: no attribute value of an item reaches a log line, verify's
default output (text or JSON), or a parked entry's reason; `verify --show-values` shows them."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.scan import TargetSpec
from kcl_app.commands import redrive as redrive_cmd
from kcl_app.commands import verify as verify_cmd
from kcl_app.compose import build_engine
from kcl_app.config import load
from tests.conftest import FakeClock
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table

SECRETS = ["alice@example.org", "4111111111111111", "42 Secret Lane", "0x5ec7e7", "bob-the-builder"]
SOURCE_ITEM = {"pk": {"S": "k1"}, "email": {"S": SECRETS[0]}, "card": {"N": SECRETS[1]},
               "address": {"M": {"line": {"S": SECRETS[2]}}}, "blob": {"B": bytes.fromhex(SECRETS[3][2:])}}
TARGET_ITEM = {"pk": {"S": "k1"}, "email": {"S": SECRETS[4]}, "card": {"S": "x" + SECRETS[1]},
               "blob": {"B": b"\x00"}, "nick": {"S": SECRETS[4] + "-2"}}

CONFIG = """
stream_retention_hours = 24

[source]
region = "us-east-1"

[dead_letter]
kind = "dir"
path = "{dl}"

[[targets]]
name = "copy"
source_table = "source"
table = "copy"
mode = "inline"
region = "us-east-1"
retry_budget_seconds = 1
"""



@pytest.fixture
def clock() -> FakeClock:
    """The engine's clock at the real time: the changes below are stamped a minute ago by the real
    clock, and a change stamped after the engine's "now" (plus the allowed skew) is refused."""
    return FakeClock(start=time.time())

def exposed(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def our_log(caplog: Any) -> str:
    """Every line tablesync logged (its loggers are `tablesync.*`), arguments and tracebacks included."""
    handler = logging.Handler()
    return "\n".join(handler.format(r) + (f"\n{r.exc_text}" if r.exc_text else "")
                     for r in caplog.records if r.name.startswith("tablesync"))


@pytest.fixture
def setup(moto: None, tmp_path: Path) -> Path:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_table(ddb, "source")
    create_table(ddb, "copy")
    ddb.put_item(TableName="source", Item=SOURCE_ITEM)
    ddb.put_item(TableName="copy", Item=TARGET_ITEM)
    path = tmp_path / "targets.toml"
    path.write_text(CONFIG.format(dl=tmp_path / "dl"))
    return path


def verify(path: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    verify_cmd.add_parser(parser.add_subparsers())
    return verify_cmd.run(parser.parse_args(["verify", "--config", str(path), *extra]))


def test_verify_names_attributes_and_types_but_no_values_by_default(setup: Path, capsys: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="tablesync")
    for extra in ((), ("--json",)):
        assert verify(setup, *extra) == 1
        out, err = capsys.readouterr()
        assert exposed(out + err + our_log(caplog)) == [], extra
        for name in ("email", "card", "address", "blob", "nick"):
            assert name in out, "the differing attributes are named"
    assert verify(setup, "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    (divergence,) = doc["sources"][0]["targets"][0]["divergences"]
    card = next(a for a in divergence["attributes"] if a["name"] == "card")
    assert card == {"name": "card", "problem": "type", "source": "N", "target": "S"}

    assert verify(setup, "--show-values") == 1
    shown = capsys.readouterr().out
    assert set(exposed(shown)) >= {SECRETS[0], SECRETS[1], SECRETS[4]}, "asked for: values shown"


def test_a_change_parked_and_redriven_logs_no_value(setup: Path, clock: Any, capsys: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="tablesync")
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.delete_table(TableName="copy")  # the target is down: the change is parked
    sim = SourceSim("source", start_micros=int((time.time() - 60) * 1e6))
    sim.put(SOURCE_ITEM)
    engine = build_engine(load(setup), clock=clock, metrics=RecordingMetrics())
    assert engine.pipeline.process(sim.raw_records()).complete
    engine.close()
    (entry,) = [e for _, e in engine.dead_letters.read("copy")]
    assert exposed(entry.reason) == [], entry.reason

    create_table(ddb, "copy")
    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    assert redrive_cmd.run(parser.parse_args(["redrive", "--config", str(setup), "--target", "copy"])) == 0
    out, err = capsys.readouterr()
    assert exposed(out + err + our_log(caplog)) == []


def test_a_backfill_transform_failure_reports_no_value() -> None:
    from kcl_app.backfill import _shape_all
    from kcl_app.core.plan import TargetRule

    def leaky(item: Any) -> Any:
        raise ValueError(f"cannot mask {item['email']['S']}")

    def broken(item: Any) -> Any:
        return {**item, "email": {"S": None}}

    for transform in (leaky, broken):
        spec = TargetSpec(TargetRule("copy", "source", transform=transform), client=None, table="copy")  # type: ignore[arg-type]
        writes, filtered, failed = _shape_all(spec, "source", ["pk"], [SOURCE_ITEM])
        assert (writes, filtered) == ([], 0) and len(failed) == 1
        assert failed[0][1] and exposed(failed[0][1]) == [], failed
