"""The real KCL daemon replays a whole stream into an inline target after deletes: the deleted items stay deleted.

The destination injects duplicates, reordering and scattered partition keys. A first application fills the
inline target from TRIM_HORIZON; a second one (its own lease table) replays the whole stream from TRIM_HORIZON
into the same target. Every deleted key has older puts in the stream: without the tombstones, the replay
re-creates each of them. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from tablesync_local.fleet import Fleet, create_source, create_table, differences, read_metrics, scan, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.daemon]

REGION = "us-east-1"
TARGET_REGION = "eu-west-1"
VERSION = "_tablesync_version"


def _config(path: Path, endpoint: str, source: str, table: str) -> Path:
    path.write_text(f"""stream_retention_hours = 24
[source]
table = "{source}"

[[targets]]
name = "inline"
region = "{TARGET_REGION}"
table = "{table}"
mode = "inline"
endpoint_url = "{endpoint}"
dead_letter = {{ kind = "dir", path = "{path.parent / 'dlq'}" }}
""", encoding="utf-8")
    return path


def _workload(ddb: Any, table: str) -> None:
    """Puts, updates and deletes over 30 keys; a third of the keys end deleted, some re-created first."""
    rng = random.Random(11)
    for n in range(150):
        key = {"pk": {"S": f"k{rng.randrange(30):02d}"}}
        if rng.random() < 0.25:
            ddb.delete_item(TableName=table, Key=key)
        else:
            ddb.put_item(TableName=table, Item={**key, "n": {"N": str(n)}, "b": {"B": rng.randbytes(6)}})
    for k in range(0, 30, 3):  # the final change of these keys is a delete, after older puts
        ddb.put_item(TableName=table, Item={"pk": {"S": f"k{k:02d}"}, "n": {"N": "-1"}})
        ddb.delete_item(TableName=table, Key={"pk": {"S": f"k{k:02d}"}})


def _stream_records(kinesis: Any, stream: str) -> int:
    """How many records the stream holds (every shard read from TRIM_HORIZON)."""
    total = 0
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            total += len(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return total


def _processed(fleet: Fleet) -> float:
    docs, _ = read_metrics(fleet.metrics_file)
    return sum(d.get("Records", 0) for d in docs)


def test_a_trim_horizon_replay_after_deletes_leaves_the_inline_target_equal_to_the_source(
        local_stack: Any, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    source, stream, table = f"src-{suffix}", f"stream-{suffix}", f"src-{suffix}-inline"
    ddb, kinesis = local_stack.client("dynamodb", REGION), local_stack.client("kinesis", REGION)
    target = local_stack.client("dynamodb", TARGET_REGION)
    create_source(ddb, kinesis, source, stream, 2)
    local_stack.configure_faults(source, duplicate_rate=0.3, reorder_window=8, reorder_window_ms=150,
                                 scatter_partition_keys=True, seed=5)
    create_table(target, table)
    config = _config(tmp_path / "targets.toml", local_stack.endpoint, source, table)
    _workload(ddb, source)
    local_stack.flush()
    src = scan(ddb, source)
    assert 0 < len(src) < 30, "some keys end deleted"

    def equal() -> bool:
        stored = {k: {n: v for n, v in item.items() if n != VERSION} for k, item in scan(target, table).items()}
        return not any(differences(src, stored).values())

    fleets: list[Fleet] = []
    try:
        for app in (f"first-{suffix}", f"replay-{suffix}"):  # 1 fill the target; 2 replay the whole stream into it
            workdir = tmp_path / app
            workdir.mkdir()
            fleet = Fleet(local_stack.endpoint, stream, app, config, workdir, initial_position="TRIM_HORIZON")
            fleets.append(fleet)
            fleet.start_worker()
            records = _stream_records(kinesis, stream)
            wait_for(lambda f=fleet, r=records: _processed(f) >= r, 150, 1.0, f"{app} to process {records} records")
            wait_for(equal, 30, 0.5, f"the inline target to equal the source after {app}")
            fleet.stop(timeout=30)
        docs, _ = read_metrics(fleets[1].metrics_file)
        refused = sum(d.get("StaleSkipped", 0) + d.get("Duplicates", 0) for d in docs)
        assert refused > 0, "the replay was fenced (every change of it was seen already)"
        tombstones = {row["k"]["S"] for row in target.scan(TableName=f"{table}.tablesync-tombstones",
                                                            ConsistentRead=True)["Items"]}
        assert {f'{{"pk":{{"S":"k{k:02d}"}}}}' for k in range(0, 30, 3)} <= tombstones
        assert equal()
    finally:
        for fleet in fleets:
            fleet.stop(timeout=20)
