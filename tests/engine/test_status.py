"""`tablesync status` against a lease table shaped like KCL 3.x's (in-process moto)."""

from __future__ import annotations

import argparse
import json

import boto3
import pytest

from kcl_app.commands import status

pytestmark = pytest.mark.usefixtures("moto")


def _lease_table(name: str) -> None:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.create_table(TableName=name, AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=name, Item={"leaseKey": {"S": "shardId-000000000000"}, "leaseOwner": {"S": "worker-a"},
                                       "checkpoint": {"S": "SHARD_END"}, "leaseCounter": {"N": "41"},
                                       "checkpointSubSequenceNumber": {"N": "0"}})
    ddb.put_item(TableName=name, Item={"leaseKey": {"S": "shardId-000000000002"}, "checkpoint": {"S": "TRIM_HORIZON"},
                                       "leaseCounter": {"N": "3"},
                                       "parentShardId": {"SS": ["shardId-000000000000"]}})


def _args(**kw) -> argparse.Namespace:
    base = {"app": "orders-app", "lease_table": None, "stream": None, "region": "us-east-1", "endpoint": None,
            "json": False}
    return argparse.Namespace(**{**base, **kw})


def test_table_lists_every_shard_with_owner_checkpoint_counter_and_parents(capsys) -> None:
    _lease_table("orders-app")
    assert status.run(_args()) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["shard", "owner", "checkpoint", "lease_counter", "parents"]
    assert out[1].split() == ["shardId-000000000000", "worker-a", "SHARD_END", "41", "-"]
    assert out[2].split() == ["shardId-000000000002", "-", "TRIM_HORIZON", "3", "shardId-000000000000"]
    assert out[3] == "2 leases, 1 owned, 1 workers"


def test_missing_lease_table_is_a_clear_error(capsys) -> None:
    assert status.run(_args(app="never-started")) == 1
    assert "no lease table 'never-started'" in capsys.readouterr().err


def test_parked_backlog_of_targets_sharing_one_queue_says_it_is_their_total(tmp_path, capsys) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    queue = sqs.create_queue(QueueName="tablesync-dl")["QueueUrl"]
    for n in range(3):
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"store": "eu", "n": n}))
    config = tmp_path / "targets.toml"
    config.write_text(f"""
[dead_letter]
kind = "sqs"
queue_url = "{queue}"
region = "us-east-1"

[[targets]]
name = "eu"
source_table = "users"
table = "copy-eu"
region = "eu-west-1"

[[targets]]
name = "us"
source_table = "users"
table = "copy-us"
region = "us-east-1"
""")
    rows = status.target_rows(_args(config=str(config), metrics_file=None), now=0.0)
    assert [(r["target"], r["parked"], r["parked_queue_shared"]) for r in rows] == [("eu", 3, True), ("us", 3, True)]
    status.print_targets(rows)
    assert "3 (queue shared with other targets: their total)" in capsys.readouterr().out
