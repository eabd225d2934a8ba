"""`tablesync status` run as a user runs it (a subprocess against the local stack): worker liveness
from the KCL's WorkerMetricStats table, per-target lag and parked backlog, `--watch`, and a clear
non-zero exit for a stream that does not exist."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.ports import DeadLetter

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"


def tablesync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcl_app.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)


def table(ddb: Any, name: str, key: str) -> None:
    ddb.create_table(TableName=name, AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": key, "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")


@pytest.fixture
def app(local_stack: Any) -> dict[str, Any]:
    """A KCL application's two tables as KCL 3.x leaves them: two leases, one per worker; worker
    a reported 5 s ago, worker b 10 minutes ago."""
    name = f"app-{uuid.uuid4().hex[:8]}"
    ddb = local_stack.client("dynamodb", REGION)
    table(ddb, name, "leaseKey")
    table(ddb, f"{name}-WorkerMetricStats", "wid")
    for n, owner in enumerate(["ip-10-0-0-1.eu-west-1.compute.internal:1111aaaa", "host-b:2222bbbb"]):
        ddb.put_item(TableName=name, Item={"leaseKey": {"S": f"shardId-00000000000{n}"}, "leaseOwner": {"S": owner},
                                           "checkpoint": {"S": "TRIM_HORIZON"}, "leaseCounter": {"N": "7"}})
    env = {**os.environ, **local_stack.env(REGION), "PYTHONPATH": str(REPO)}
    env.pop("TABLESYNC_METRICS_FILE", None)
    return {"name": name, "ddb": ddb, "env": env}


def report(ddb: Any, app: str, worker: str, seconds_ago: float) -> None:
    ddb.put_item(TableName=f"{app}-WorkerMetricStats",
                 Item={"wid": {"S": worker}, "lut": {"N": str(int(time.time() - seconds_ago))}})


def test_worker_liveness_and_leases_of_stopped_workers(app: dict[str, Any]) -> None:
    report(app["ddb"], app["name"], "ip-10-0-0-1.eu-west-1.compute.internal:1111aaaa", 5)
    report(app["ddb"], app["name"], "host-b:2222bbbb", 600)
    done = tablesync("status", "--app", app["name"], env=app["env"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split()[1] == "ip-10-0-0-1.eu-west-1.compute.internal:1111aaaa", "an owner is shown whole"
    assert lines[3] == "2 leases, 2 owned, 2 workers"
    assert lines[4].startswith("workers (1 live; stale = not seen in 90 s")
    rows = {line.split()[0]: line.split()[1:] for line in lines[6:8]}
    worker_a = rows["ip-10-0-0-1.eu-west-1.compute.internal:1111aaaa"]
    assert worker_a[0] == "live" and worker_a[-1] == "1"
    assert rows["host-b:2222bbbb"][:3] == ["stale", "10", "min"]
    assert lines[8].startswith("STALE: 1 owned leases belong to workers that are not live")

    # every worker stopped: the leases still name owners, and status says they are stale
    report(app["ddb"], app["name"], "ip-10-0-0-1.eu-west-1.compute.internal:1111aaaa", 300)
    stopped = tablesync("status", "--app", app["name"], "--json", env=app["env"])
    doc = json.loads(stopped.stdout)
    assert doc["workers"]["live"] == 0 and doc["workers"]["leases_not_live"] == 2
    assert {w["worker"]: w["state"] for w in doc["workers"]["workers"]} == {
        "ip-10-0-0-1.eu-west-1.compute.internal:1111aaaa": "stale", "host-b:2222bbbb": "stale"}


def test_a_worker_table_that_does_not_exist_is_n_a(app: dict[str, Any]) -> None:
    done = tablesync("status", "--app", app["name"], "--worker-table", "nope", env=app["env"])
    assert done.returncode == 0, done.stderr
    assert "workers: n/a (no table nope" in done.stdout


def test_a_mistyped_stream_exits_1_with_a_clear_line(app: dict[str, Any]) -> None:
    done = tablesync("status", "--app", app["name"], "--stream", "no-such-stream", env=app["env"])
    assert done.returncode == 1
    assert done.stderr.strip() == (f"tablesync status: no stream 'no-such-stream' in {REGION}: "
                                   "check --stream (and --region)")
    assert done.stdout == ""


def test_per_target_lag_over_the_last_minute_and_parked_backlog(app: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "targets.toml"
    config.write_text(f"""
[dead_letter]
kind = "dir"
path = "{tmp_path / 'dl'}"

[[targets]]
name = "eu"
source_table = "users"
table = "copy-eu"
region = "{REGION}"

[[targets]]
name = "us"
source_table = "users"
table = "copy-us"
region = "us-east-1"
""")
    DirectoryDeadLetters(tmp_path / "dl").park([
        DeadLetter(store="us", reason="down", data=f"r{n}".encode(), sequence_number=str(n), shard_id="s",
                   parked_at=time.time()) for n in range(3)])
    now_ms = int(time.time() * 1000)
    metrics = tmp_path / "metrics.emf"
    lines = [
        {"Target": "eu", "LagMs": [900.0] * 50, "_aws": {"Timestamp": now_ms - 600_000}},  # too old: not counted
        {"Target": "eu", "LagMs": [float(v) for v in range(1, 101)], "_aws": {"Timestamp": now_ms - 5_000}},
        {"Target": "eu", "LagMs": {"Values": [500.0], "Counts": [1]}, "_aws": {"Timestamp": now_ms - 1_000}},
        # circuit states: the worst of the last 30 s per target (one shard process has "us" open)
        {"Target": "eu", "State": 3.0, "_aws": {"Timestamp": now_ms - 120_000}},  # too old: not shown
        {"Target": "eu", "State": 0.0, "_aws": {"Timestamp": now_ms - 2_000}},
        {"Target": "us", "State": 0.0, "_aws": {"Timestamp": now_ms - 2_000}},
        {"Target": "us", "State": 3.0, "_aws": {"Timestamp": now_ms - 3_000}},
    ]
    metrics.write_text("".join(json.dumps(doc) + "\n" for doc in lines) + "not json\n")
    done = tablesync("status", "--app", app["name"], "--config", str(config), "--metrics-file", str(metrics),
                     "--json", env=app["env"])
    assert done.returncode == 0, done.stderr
    rows = {row["target"]: row for row in json.loads(done.stdout)["targets"]}
    assert rows["eu"] == {"target": "eu", "lag_p50_ms": 51.0, "lag_p99_ms": 100.0, "lag_samples": 101, "parked": 0,
                          "parked_queue_shared": False, "state": "healthy", "paused_reason": ""}
    assert rows["us"] == {"target": "us", "lag_p50_ms": None, "lag_p99_ms": None, "lag_samples": 0, "parked": 3,
                          "parked_queue_shared": False, "state": "open", "paused_reason": ""}

    human = tablesync("status", "--app", app["name"], "--config", str(config), env=app["env"])
    tail = human.stdout.splitlines()[-4:]  # no metrics file: no lag known
    assert tail[0] == "targets (lag over the last minute):"
    assert [line.split() for line in tail[1:]] == [["target", "state", "lag_p50_ms", "lag_p99_ms", "parked"],
                                                   ["eu", "active", "n/a", "n/a", "0"],
                                                   ["us", "active", "n/a", "n/a", "3"]]


def test_watch_redraws_until_ctrl_c_and_exits_0(app: dict[str, Any]) -> None:
    report(app["ddb"], app["name"], "ip-10-0-0-1.eu-west-1.compute.internal:1111aaaa", 5)
    proc = subprocess.Popen([sys.executable, "-m", "kcl_app.cli", "status", "--app", app["name"], "--watch",
                             "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=app["env"],
                            cwd=REPO)
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while seen.count(b"\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
        assert seen.count(b"\x1b[H\x1b[2J") >= 3, seen[-500:]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    frames = (seen + out).split(b"\x1b[H\x1b[2J")[1:]
    assert b"2 leases, 2 owned, 2 workers" in frames[1], "every frame is a whole view"
    assert b"Traceback" not in err
