"""Redrive treats every stored entry as untrusted: a forged S3 pointer is refused (the object it
names is neither applied nor deleted), a malformed entry is skipped and reported, the rest go on."""

from __future__ import annotations

import argparse
import base64
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
from tests.conftest import FakeClock
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, scan_all

REGION = "us-east-1"
BUCKET = "tablesync-dl-payloads"
TARGET = """
[source.key_schema]
source = ["pk:S"]

[[targets]]
name = "down"
source_table = "source"
table = "copy-down"
region = "us-east-1"
retry_budget_seconds = 2
"""


@pytest.fixture
def clock() -> FakeClock:
    """The engine's clock at the real time: the changes below are stamped a minute ago by the real
    clock, and a change stamped after the engine's "now" (plus the allowed skew) is refused."""
    return FakeClock(start=time.time())


def args_for(path: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    redrive_cmd.add_parser(parser.add_subparsers())
    return parser.parse_args(["redrive", "--config", str(path), "--target", "down", "--json"])


def changes() -> SourceSim:
    sim = SourceSim("source", start_micros=int((time.time() - 60) * 1e6))
    sim.put({"pk": {"S": "real"}, "n": {"N": "1"}})
    sim.put({"pk": {"S": "forged"}, "n": {"N": "666"}})
    return sim


def entry_doc(raw: bytes, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"store": "down", "reason": "target unavailable", "data": base64.b64encode(raw).decode(),
                           "sequence_number": "1", "shard_id": "shardId-000000000000",
                           "parked_at": time.time(), "key_id": "", "version": ""}
    doc.update(overrides)
    return doc


@pytest.mark.usefixtures("moto")
def test_forged_pointers_and_malformed_messages_are_refused_and_kept(clock: Any, tmp_path: Path,
                                                                     capsys: Any, caplog: Any) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    queue = sqs.create_queue(QueueName="tablesync-dl")["QueueUrl"]
    for name in (BUCKET, "someone-elses-bucket"):
        s3.create_bucket(Bucket=name)
    path = tmp_path / "targets.toml"
    path.write_text(f'[dead_letter]\nkind = "sqs"\nqueue_url = "{queue}"\nregion = "{REGION}"\n'
                    f'payload_bucket = "{BUCKET}"\n{TARGET}')
    engine = build_engine(load(path), clock=clock, metrics=RecordingMetrics())
    real, forged = changes().raw_records()
    assert engine.pipeline.process([real]).complete  # no target table yet: the real change is parked
    engine.close()

    # what a forger puts in the queue: valid-looking entries whose bodies live outside the
    # configured bucket/prefix, and entries that are not dead letters at all
    foreign = json.dumps(entry_doc(forged.data)).encode()
    outside = {
        "another bucket": ("someone-elses-bucket", "tablesync/dead-letters/down/x.json"),
        "another prefix": (BUCKET, "elsewhere/down/x.json"),
        "another store": (BUCKET, "tablesync/dead-letters/up/x.json"),
        "a climb out": (BUCKET, "tablesync/dead-letters/down/../../elsewhere/x.json"),
    }
    for bucket, key in outside.values():
        s3.put_object(Bucket=bucket, Key=key, Body=foreign)
    store_attr = {"store": {"DataType": "String", "StringValue": "down"}}
    bodies = [json.dumps({**entry_doc(b""), "data": None, "payload": {"bucket": b, "key": k}})
              for b, k in outside.values()]
    bodies += [
        "{not json",
        json.dumps(entry_doc(b"", data="!!not base64!!")),
        json.dumps({k: v for k, v in entry_doc(forged.data).items() if k != "reason"}),
        json.dumps(entry_doc(forged.data, parked_at="soon", shard_id=["x"])),
        json.dumps({**entry_doc(b""), "payload": "s3://someone-elses-bucket/x"}),
    ]
    for body in bodies:
        sqs.send_message(QueueUrl=queue, MessageBody=body, MessageAttributes=store_attr)

    down = boto3.client("dynamodb", region_name=REGION)
    create_table(down, "copy-down")
    assert redrive_cmd.run(args_for(path)) == 1, "entries left unread make the run fail"
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 1, "applied": 1, "still_failing": 0, "removed": 1,
                      "unreadable": len(bodies)}
    assert [i["pk"]["S"] for i in scan_all(down, "copy-down").values()] == ["real"], "no forged change applied"
    for bucket, key in outside.values():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == foreign, "foreign object untouched"
    assert "outside the configured s3://tablesync-dl-payloads/tablesync/dead-letters/down/" in caplog.text
    attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == str(len(bodies)), "every refused entry kept"


@pytest.mark.usefixtures("moto")
def test_malformed_files_in_a_directory_store_are_skipped_and_reported(clock: Any, tmp_path: Path,
                                                                        capsys: Any) -> None:
    path = tmp_path / "targets.toml"
    path.write_text(f'[dead_letter]\nkind = "dir"\npath = "{tmp_path / "dl"}"\n{TARGET}')
    engine = build_engine(load(path), clock=clock, metrics=RecordingMetrics())
    real, forged = changes().raw_records()
    assert engine.pipeline.process([real]).complete
    engine.close()
    folder = tmp_path / "dl" / "down"
    bad = {
        "0-json.json": b"{\"store\": \"down\", trunc",
        "0-utf8.json": b"\xff\xfe\x00",
        "0-b64.json": json.dumps(entry_doc(b"", data="%%%")).encode(),
        "0-missing.json": json.dumps({"store": "down"}).encode(),
        "0-types.json": json.dumps(entry_doc(forged.data, reason=7)).encode(),
        "0-list.json": b"[1, 2]",
        "0-store.json": json.dumps(entry_doc(forged.data, store="up")).encode(),
    }
    for name, body in bad.items():
        (folder / name).write_bytes(body)

    down = boto3.client("dynamodb", region_name=REGION)
    create_table(down, "copy-down")
    assert redrive_cmd.run(args_for(path)) == 1
    report = json.loads(capsys.readouterr().out)
    assert report == {**report, "read": 1, "applied": 1, "removed": 1, "unreadable": len(bad)}
    assert sorted(line.split(":")[0] for line in report["skipped"]) == sorted(bad)
    assert [i["pk"]["S"] for i in scan_all(down, "copy-down").values()] == ["real"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(bad), "each unreadable file is kept as it is"
