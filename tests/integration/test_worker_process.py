"""The shard process as the KCL daemon starts it (`python -m kcl_app.worker --config F`), over its stdin/stdout.

One real process against the local stack: the daemon's side of the conversation is written on its
stdin (initialize, a processRecords page, the answers to its checkpoint requests, shardEnded), and the
test reads its answers on stdout, the target table's contents and its log on stderr. It proves the
worker's own protocol loop (orjson reading, `kcl_app.adapters.daemon_io`) and its heap settling end to
end: non-ASCII text and binaries arrive in the target exactly, nothing is parked.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tablesync_local.stack import LocalStack
from tests.support.tables import create_table, scan_all

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
STAMP_US = 1_790_000_000_000_000


def destination_record(i: int, event: str, image: dict[str, Any] | None) -> dict[str, Any]:
    keys = {"pk": {"S": f"k{i % 3}"}}
    ddb: dict[str, Any] = {"ApproximateCreationDateTime": STAMP_US + i, "Keys": keys, "SizeBytes": 100}
    if image is not None:
        ddb["NewImage"] = {**keys, **image}
    doc = {"awsRegion": "us-east-1", "eventID": f"e{i}", "eventName": event, "userIdentity": None,
           "recordFormat": "application/json", "tableName": "orders", "dynamodb": ddb,
           "eventSource": "aws:dynamodb"}
    return {"action": "record", "data": base64.b64encode(json.dumps(doc, ensure_ascii=i % 2 == 0).encode()).decode(),
            "partitionKey": "A" * 32, "sequenceNumber": f"{49_600_000_000 + i}", "subSequenceNumber": 0,
            "approximateArrivalTimestamp": STAMP_US // 1000 + 5_000}


def test_the_worker_process_applies_a_page_and_answers_as_the_protocol_says(local_stack: LocalStack,
                                                                             tmp_path: Path) -> None:
    client = local_stack.client("dynamodb", REGION)
    create_table(client, "worker-process-copy")
    config = tmp_path / "targets.toml"
    config.write_text(f'[source]\ntable = "orders"\n\n[source.key_schema]\norders = ["pk:S"]\n\n'
                      f'[[targets]]\nname = "copy"\nregion = "{REGION}"\ntable = "worker-process-copy"\n'
                      f'endpoint_url = "{local_stack.endpoint}"\n'
                      f'dead_letter = {{ kind = "dir", path = "{tmp_path / "dlq"}" }}\n')
    page = [destination_record(0, "INSERT", {"name": {"S": "Zoë ☃ \U0001f600"}, "b": {"B": "AAEC/w=="}}),
            destination_record(1, "INSERT", {"n": {"N": "12345678901234567890.5"}, "l": {"L": [{"S": "é"}]},
                                               "b": {"B": "AAEC/w=="}}),
            destination_record(2, "INSERT", {"gone": {"BOOL": True}}),
            destination_record(3, "MODIFY", {"name": {"S": "later \u2028"}, "bs": {"BS": ["AA==", "AQ=="]}}),
            destination_record(5, "REMOVE", None)]
    daemon = [{"action": "initialize", "shardId": "shardId-000000000000", "sequenceNumber": "TRIM_HORIZON",
               "subSequenceNumber": 0},
              {"action": "processRecords", "millisBehindLatest": 0, "records": page},
              {"action": "checkpoint", "sequenceNumber": page[-1]["sequenceNumber"], "subSequenceNumber": 0,
               "error": None},
              {"action": "shardEnded"},
              {"action": "checkpoint", "sequenceNumber": "SHARD_END", "subSequenceNumber": 0, "error": None}]
    env = {**os.environ, **local_stack.env(REGION), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "kcl_app.worker", "--config", str(config)], cwd=ROOT, env=env,
                          input="".join(json.dumps(m) + "\n" for m in daemon), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert answers == [
        {"action": "status", "responseFor": "initialize"},
        {"action": "checkpoint", "sequenceNumber": page[-1]["sequenceNumber"], "subSequenceNumber": 0},
        {"action": "status", "responseFor": "processRecords"},
        {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None},
        {"action": "status", "responseFor": "shardEnded"},
    ]
    items = {item["pk"]["S"]: item for item in scan_all(client, "worker-process-copy").values()}
    assert items == {  # k0 as record 3 left it, k1 as record 1 wrote it, k2 deleted by record 5
        "k0": {"pk": {"S": "k0"}, "name": {"S": "later \u2028"}, "bs": {"BS": [b"\x00", b"\x01"]}},
        "k1": {"pk": {"S": "k1"}, "n": {"N": "12345678901234567890.5"}, "l": {"L": [{"S": "é"}]},
               "b": {"B": b"\x00\x01\x02\xff"}},
    }
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(entry.get("msg", "").startswith("heap settled") for entry in logs)
    assert not any(entry.get("level") in ("ERROR", "CRITICAL") for entry in logs), done.stderr[-3000:]
    assert not list((tmp_path / "dlq").rglob("*.json"))
