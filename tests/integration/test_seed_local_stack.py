"""`tablesync seed` end to end over HTTP against the local stack server: an import into a new table
and writes into an existing one, with the source's read units read back from the emulator."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from kcl_app.commands import seed as seed_cmd
from tests.support.tables import create_table, normalise_all, scan_all

pytestmark = pytest.mark.integration
REGION = "us-east-1"


def _config(tmp_path: Path, endpoint: str, source: str, targets: dict[str, str]) -> Path:
    path = tmp_path / "targets.toml"
    blocks = "".join(f"""
[[targets]]
name = "{name}"
source_table = "{source}"
table = "{table}"
ledger_table = "{table}-ledger"
region = "{REGION}"
endpoint_url = "{endpoint}"
dead_letter = {{ kind = "dir", path = "{tmp_path / 'dlq'}" }}
""" for name, table in targets.items())
    path.write_text(f'[source]\nregion = "{REGION}"\nendpoint_url = "{endpoint}"\n{blocks}')
    return path


def _run(config: Path, target: str, bucket: str, capsys: Any) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    seed_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["seed", "--config", str(config), "--target", target, "--bucket", bucket,
                              "--skip-stream-check", "--poll", "0.1", "--parallel", "3"])
    assert seed_cmd.run(args) == seed_cmd.EXIT_OK, capsys.readouterr().err
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


def test_seed_over_http_imports_and_writes_and_reads_nothing_from_the_source(
        local_stack: Any, tmp_path: Path, capsys: Any) -> None:
    run = uuid.uuid4().hex[:8]
    source, bucket = f"seed-src-{run}", f"seed-exports-{run}"
    dynamodb = local_stack.client("dynamodb", REGION)
    create_table(dynamodb, source)
    dynamodb.update_continuous_backups(TableName=source,
                                       PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    local_stack.client("s3", REGION).create_bucket(Bucket=bucket)
    for start in range(0, 2500, 25):
        dynamodb.batch_write_item(RequestItems={source: [
            {"PutRequest": {"Item": {"pk": {"S": f"k{i:05d}"}, "n": {"N": str(i)}, "b": {"B": bytes([i % 256])},
                                     "m": {"M": {"l": {"L": [{"S": "x"}, {"NULL": True}]}}}}}}
            for i in range(start, start + 25)]})
    create_table(dynamodb, f"existing-{run}")
    config = _config(tmp_path, local_stack.endpoint, source, {"new": f"new-{run}", "old": f"existing-{run}"})
    before = local_stack.read_units(source, REGION)

    imported = _run(config, "new", bucket, capsys)
    written = _run(config, "old", bucket, capsys)

    assert local_stack.read_units(source, REGION) == before, "seeding read nothing from the source"
    assert imported["way"] == "import" and imported["imported"] == 2500
    assert written["way"] == "write" and written["written"] == 2500 and written["data_files"] >= 2
    truth = normalise_all(scan_all(dynamodb, source))
    assert local_stack.read_units(source, REGION) > before, "negative control: the scan above is counted"
    assert normalise_all(scan_all(dynamodb, f"new-{run}")) == truth
    assert normalise_all(scan_all(dynamodb, f"existing-{run}")) == truth
