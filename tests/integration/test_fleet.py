"""The real KCL MultiLangDaemon driving tablesync on the local stack (issue: worker fleet).

Every wait is a condition with a deadline. Workers are `tablesync run` processes; targets are
checked item by item against the source with `differences` (projection applied).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tablesync_local.fleet import (
    Fleet,
    create_source,
    create_table,
    differences,
    lease_checkpoints,
    lease_owners,
    read_metrics,
    scan,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.daemon]

REGION = "us-east-1"
TARGET_REGIONS = ("eu-west-1", "ap-southeast-2")


def _names() -> tuple[str, str, str]:
    suffix = uuid.uuid4().hex[:6]
    return f"src-{suffix}", f"stream-{suffix}", f"app-{suffix}"


def _config(path: Path, stack, source: str, targets: list[dict]) -> Path:
    lines = [f'[source]\ntable = "{source}"\n']
    for t in targets:
        create_table(stack.client("dynamodb", t["region"]), t["table"])
        extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in t.items() if k in ("exclude", "include"))
        lines.append(f'[[targets]]\nname = "{t["name"]}"\nregion = "{t["region"]}"\ntable = "{t["table"]}"\n'
                     f'endpoint_url = "{stack.endpoint}"\n{extra}'
                     f'dead_letter = {{ kind = "dir", path = "{path.parent / "dlq"}" }}\n')
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _targets(source: str, n: int = 2, **extra) -> list[dict]:
    return [{"name": f"t{i}", "region": TARGET_REGIONS[i], "table": f"{source}-copy{i}", **extra} for i in range(n)]


def _workload(ddb, table: str, count: int, keys: int = 25, seed: int = 1) -> None:
    rng = random.Random(seed)
    for n in range(count):
        key = {"pk": {"S": f"k{rng.randrange(keys):03d}"}}
        roll = rng.random()
        if roll < 0.2:
            ddb.delete_item(TableName=table, Key=key)
        elif roll < 0.45:
            ddb.update_item(TableName=table, Key=key, UpdateExpression="SET n = :n, s = :s",
                            ExpressionAttributeValues={":n": {"N": str(n)}, ":s": {"SS": ["u", str(n)]}})
        else:
            ddb.put_item(TableName=table, Item={**key, "n": {"N": str(n)}, "b": {"B": rng.randbytes(8)},
                                                "ns": {"NS": ["1", str(n + 2)]},
                                                "m": {"M": {"l": {"L": [{"NULL": True}, {"BOOL": True}]}}}})


def _converged(stack, source: str, targets: list[dict]):
    src = scan(stack.client("dynamodb", REGION), source)

    def check():
        for t in targets:
            diff = differences(src, scan(stack.client("dynamodb", t["region"]), t["table"]),
                               exclude=t.get("exclude", ()))
            if any(diff.values()):
                return False
        return True
    return check


def _leases_owned(stack, app: str, shards: int, workers: int = 1):
    def check():
        owners = lease_owners(stack.client("dynamodb", REGION), app)
        return len(owners) >= shards and all(owners.values()) and len(set(owners.values())) >= workers
    return check


@pytest.fixture
def fleet_factory(local_stack, tmp_path):
    fleets: list[Fleet] = []

    def make(source: str, stream: str, app: str, targets: list[dict], **kwargs) -> Fleet:
        config = _config(tmp_path / f"{app}.toml", local_stack, source, targets)
        fleet = Fleet(local_stack.endpoint, stream, app, config, tmp_path, **kwargs)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop(timeout=20)


def test_end_to_end_two_targets_with_duplicates_and_reordering(local_stack, fleet_factory) -> None:
    """(a) + (f): deletes, binary, sets and maps reach two targets (one projected) exactly, while the
    destination injects duplicates, reordering and scattered partition keys."""
    source, stream, app = _names()
    ddb = local_stack.client("dynamodb", REGION)
    create_source(ddb, local_stack.client("kinesis", REGION), source, stream, 2)
    local_stack.configure_faults(source, duplicate_rate=0.3, reorder_window=8, reorder_window_ms=150,
                                 scatter_partition_keys=True, seed=7)
    targets = [{"name": "full", "region": "eu-west-1", "table": f"{source}-full"},
               {"name": "lite", "region": "ap-southeast-2", "table": f"{source}-lite", "exclude": ["b"]}]
    fleet = fleet_factory(source, stream, app, targets)
    fleet.start_worker()
    _workload(ddb, source, 200)
    local_stack.flush()
    wait_for(_converged(local_stack, source, targets), 120, 1.0, "targets to equal the source")
    stats = local_stack.stats(source)
    assert stats["duplicates_sent"] > 0
    docs, _ = read_metrics(fleet.metrics_file)
    assert sum(d.get("Duplicates", 0) + d.get("StaleSkipped", 0) for d in docs) > 0, "fencing was exercised"

    # `tablesync status` reads the same lease table: both shards owned, checkpointed, caught up
    def caught_up():
        out = subprocess.run(
            [sys.executable, "-m", "kcl_app.cli", "status", "--app", app, "--stream", stream, "--json",
             "--region", REGION, "--endpoint", local_stack.endpoint],
            capture_output=True, text=True, timeout=60, check=True, env={**os.environ, **local_stack.env()})
        shards = json.loads(out.stdout)["shards"]
        ok = len(shards) == 2 and all(s["owner"] and s["checkpoint"].isdigit() and s["behind_ms"] == 0
                                      for s in shards)
        return shards if ok else None
    shards = wait_for(caught_up, 60, 1.0, "status to show every shard owned and caught up")
    assert {s["shard"] for s in shards} == set(lease_owners(ddb, app))


def test_replay_fills_fresh_targets_from_trim_horizon_and_from_a_timestamp(local_stack, fleet_factory) -> None:
    """(e): a new KCL application at TRIM_HORIZON fills a fresh target with everything; one at a
    timestamp fills another with the keys changed since then."""
    source, stream, _ = _names()
    ddb = local_stack.client("dynamodb", REGION)
    create_source(ddb, local_stack.client("kinesis", REGION), source, stream, 2)
    for n in range(20):
        ddb.put_item(TableName=source, Item={"pk": {"S": f"old{n}"}, "v": {"N": str(n)}})
    cut = time.time()
    wait_for(lambda: time.time() >= cut + 1.5, 5, 0.1, "the clock to pass the cut")  # integer seconds
    for n in range(10):
        ddb.put_item(TableName=source, Item={"pk": {"S": f"new{n}"}, "v": {"N": str(n)}})
    full = [{"name": "full", "region": "eu-west-1", "table": f"{source}-replay"}]
    fleet_factory(source, stream, f"{source}-th", full, initial_position="TRIM_HORIZON").start_worker()
    recent = [{"name": "recent", "region": "ap-southeast-2", "table": f"{source}-since"}]
    fleet_factory(source, stream, f"{source}-ts", recent,
                  initial_position=f"AT_TIMESTAMP:{int(cut) + 1}").start_worker()
    wait_for(_converged(local_stack, source, full), 120, 1.0, "the TRIM_HORIZON replay")
    since = local_stack.client("dynamodb", "ap-southeast-2")
    wait_for(lambda: len(scan(since, f"{source}-since")) == 10, 120, 1.0, "the timestamp replay")
    assert sorted(scan(since, f"{source}-since")) == sorted(f'{{"pk":{{"S":"new{n}"}}}}' for n in range(10))


def test_split_and_merge_while_writing(local_stack, fleet_factory) -> None:
    """(c): split one shard and merge two while writing; children are read after their parents
    and the targets converge."""
    source, stream, app = _names()
    ddb = local_stack.client("dynamodb", REGION)
    kinesis = local_stack.client("kinesis", REGION)
    create_source(ddb, kinesis, source, stream, 2)
    targets = _targets(source, 1)
    fleet = fleet_factory(source, stream, app, targets)
    fleet.start_worker()
    wait_for(_leases_owned(local_stack, app, 2), 90, 0.5, "2 leases owned")
    _workload(ddb, source, 60, seed=5)
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    first = shards[0]
    lo, hi = int(first["HashKeyRange"]["StartingHashKey"]), int(first["HashKeyRange"]["EndingHashKey"])
    kinesis.split_shard(StreamName=stream, ShardToSplit=first["ShardId"], NewStartingHashKey=str((lo + hi) // 2))
    _workload(ddb, source, 60, seed=6)
    open_shards = [s for s in kinesis.list_shards(StreamName=stream)["Shards"]
                   if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
    by_start = sorted(open_shards, key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))
    kinesis.merge_shards(StreamName=stream, ShardToMerge=by_start[0]["ShardId"],
                         AdjacentShardToMerge=by_start[1]["ShardId"])
    _workload(ddb, source, 60, seed=7)
    wait_for(_converged(local_stack, source, targets), 150, 1.0, "targets to converge across the reshard")
    checkpoints = lease_checkpoints(ddb, app)
    wait_for(lambda: sum(1 for c in lease_checkpoints(ddb, app).values() if c == "SHARD_END") >= 2, 60, 1.0,
             f"closed parents to be checkpointed at SHARD_END ({checkpoints})")
