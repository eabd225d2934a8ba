"""The real KCL 3.1.3 MultiLangDaemon against the local stack, end to end through `tablesync run`.

A 2-shard stream gets 20 records; `python -m kcl_app.commands.run` (properties/local.properties
with the echo processor as executable) must deliver every record to the echo
processor, checkpoint both shards in the lease table, and stop gracefully on SIGTERM with
status 0 within the grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kcl_app import daemon
from tablesync_local.fleet import create_source, create_table

pytestmark = [pytest.mark.integration, pytest.mark.daemon, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
ECHO = Path(__file__).resolve().parent / "echo_processor.py"
RECORDS = 20
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log: Path | None = None) -> T:
    """Poll ``predicate`` until truthy; fail (with the daemon log tail) on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        died = proc is not None and proc.poll() is not None
        if died or time.monotonic() > deadline:
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-40:]) if log and log.exists() else ""
            state = f"exited with {proc.returncode}" if died and proc else f"not within {timeout}s"
            pytest.fail(f"{what}: {state}; last value {value!r}\n--- daemon log tail ---\n{tail}")
        time.sleep(0.1)


@contextlib.contextmanager
def tablesync_run(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m kcl_app.commands.run ARGV`; on exit every process it started is gone."""
    proc = subprocess.Popen([sys.executable, "-m", "kcl_app.commands.run", *argv], env=env, cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            # The daemon and its record processors share the group of `run`: one killpg ends them all.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def _put_records(kinesis: Any, stream: str) -> dict[str, str]:
    """Put RECORDS records; returns {data: shard id}. Both shards must get some."""
    placed = {}
    for i in range(RECORDS):
        data = f"rec-{i:02d}"
        out = kinesis.put_record(StreamName=stream, Data=data.encode(), PartitionKey=f"pk-{i}")
        placed[data] = out["ShardId"]
    assert len(set(placed.values())) == 2, placed
    return placed


def _echoed(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_daemon_delivers_checkpoints_and_stops_gracefully(local_stack: Any, tmp_path: Path) -> None:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    stream, app = name, f"{name}-app"
    kinesis, dynamodb = local_stack.client("kinesis"), local_stack.client("dynamodb")
    # what `run` checks before it starts: a source streaming into the stream, a target like it
    create_source(dynamodb, kinesis, f"{name}-src", stream, 2)
    create_table(dynamodb, f"{name}-dst")
    placed = _put_records(kinesis, stream)

    # The shipped local template, with the echo processor as the executable.
    properties = tmp_path / "kcl.properties"
    properties.write_text(daemon.render_properties(
        (REPO / "properties" / "local.properties").read_text(),
        {"python": sys.executable, "config": "/unused", "endpoint": local_stack.endpoint},
        {"executableName": f"{sys.executable} {ECHO}"}))
    config = tmp_path / "targets.toml"
    config.write_text(f'[[targets]]\nname = "t"\nsource_table = "{name}-src"\ntable = "{name}-dst"\n'
                      'region = "us-east-1"\n')  # read by the pre-flight check only (the echo ignores it)
    echo, log = tmp_path / "echo.jsonl", tmp_path / "daemon.log"
    env = {**os.environ, **local_stack.env(), "TABLESYNC_ECHO_FILE": str(echo)}
    grace_s = int(daemon.parse_properties(properties.read_text())["shutdownGraceMillis"]) / 1000

    argv = ["--properties", str(properties), "--config", str(config), "--stream", stream, "--app", app,
            "--endpoint", local_stack.endpoint, "--log-file", str(log)]
    with tablesync_run(argv, env) as proc:
        started = time.monotonic()
        # 1 every record reaches the processor, on the shard Kinesis put it in
        # 90 s: `run` checks the source, stream and target before it starts the daemon (on a loaded
        # machine the JVM start and the first lease sync alone have taken 55 s)
        wait_for(lambda: len(_echoed(echo)) >= RECORDS, 90, "all records echoed", proc, log)
        first_batch_s = time.monotonic() - started
        got = {(r["data"], r["shard"]) for r in _echoed(echo)}
        assert got == set(placed.items())

        # 2 both leases hold this worker's checkpoint at the last sequence number of their shard
        last_seq: dict[str, int] = {}
        for r in _echoed(echo):
            last_seq[r["shard"]] = max(last_seq.get(r["shard"], 0), int(r["seq"]))

        def checkpoints() -> dict[str, str]:
            items = dynamodb.scan(TableName=app, ConsistentRead=True)["Items"]
            return {i["leaseKey"]["S"]: i["checkpoint"]["S"] for i in items}

        wait_for(lambda: checkpoints() == {s: str(n) for s, n in last_seq.items()}, 15,
                 "checkpoints at the last records", proc, log)
        tables = set(dynamodb.list_tables()["TableNames"])
        assert {app, f"{app}-CoordinatorState", f"{app}-WorkerMetricStats"} <= tables

        # 3 SIGTERM: processors get shutdown_requested, the daemon exits, `run` reports 0 in time
        stop_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=grace_s + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tablesync run did not stop within {grace_s + 5}s of SIGTERM")
        stop_s = time.monotonic() - stop_at
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert status == 0, output
    text = log.read_text(errors="replace")
    for shard in last_seq:
        assert f"shutdown requested shard={shard}" in text
    assert "Process shutdown is complete." in text
    print(f"first records after {first_batch_s:.1f}s; stop took {stop_s:.1f}s")
