"""A local replication setup: source table + destination + stream, targets, and KCL workers.

Used by `tablesync demo` and by the integration tests; everything goes through public AWS APIs
against the local stack, and workers are real `tablesync run` processes (the real KCL daemon).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tablesync_local.items import canonical, key_id, project
from tablesync_local.stack import poll_until

Item = dict[str, Any]
"""An item in the wire form boto3's low-level client returns (binary values as bytes)."""

ROOT = Path(__file__).resolve().parents[1]
LOCAL_PROPERTIES = ROOT / "properties" / "local.properties"


def create_source(client_ddb: Any, client_kinesis: Any, table: str, stream: str, shards: int,
                  precision: str = "MICROSECOND", key_names: tuple[str, ...] = ("pk",)) -> str:
    """Create the source table, the stream, and enable the Kinesis streaming destination."""
    client_kinesis.create_stream(StreamName=stream, ShardCount=shards)
    client_kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    arn = client_kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    create_table(client_ddb, table, key_names)
    client_ddb.enable_kinesis_streaming_destination(
        TableName=table, StreamArn=arn,
        EnableKinesisStreamingConfiguration={"ApproximateCreationDateTimePrecision": precision},
    )
    return str(arn)


def create_table(client: Any, table: str, key_names: tuple[str, ...] = ("pk",)) -> None:
    kinds = ("HASH", "RANGE")
    client.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in key_names],
        KeySchema=[{"AttributeName": k, "KeyType": kinds[i]} for i, k in enumerate(key_names)],
        BillingMode="PAY_PER_REQUEST",
    )


def scan(client: Any, table: str, key_names: Iterable[str] = ("pk",)) -> dict[str, Item]:
    names = tuple(key_names)
    out: dict[str, Item] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page.get("Items", []):
            out[key_id({k: item[k] for k in names})] = item
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def differences(source: Mapping[str, Item], target: Mapping[str, Item], key_names: Iterable[str] = ("pk",),
                include: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> dict[str, list[str]]:
    """missing / extra / different keys between a source (shaped by the projection) and a target."""
    names = tuple(key_names)
    missing, different = [], []
    for kid, item in source.items():
        expected = project(item, names, include, exclude)
        got = target.get(kid)
        if got is None:
            missing.append(kid)
        elif {k: canonical(v) for k, v in expected.items()} != {k: canonical(v) for k, v in got.items()}:
            different.append(kid)
    extra = [kid for kid in target if kid not in source]
    return {"missing": missing, "extra": extra, "different": different}


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; TimeoutError naming `what` after `timeout` seconds."""
    return poll_until(predicate, timeout=timeout, interval=interval, message=what)


_WORKER_ID = re.compile(r"(?:Using workerId: |New leases assigned to worker : )([^,\s\"]+)")


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kcl_id(self) -> str | None:
        """The KCL worker id, from the daemon's "Using workerId: <id>" log line (at start)."""
        if not self.log_path.exists():
            return None
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                match = _WORKER_ID.search(line)
                if match:
                    return match.group(1)
        return None


@dataclass
class Fleet:
    """KCL workers as `tablesync run` processes on one stream/application."""

    endpoint: str
    stream: str
    app: str
    config: Path
    workdir: Path
    properties: Path = LOCAL_PROPERTIES
    initial_position: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    @property
    def metrics_file(self) -> Path:
        return self.workdir / "metrics.emf.jsonl"

    def start_worker(self, name: str | None = None) -> Worker:
        name = name or f"worker-{len(self.workers) + 1}"
        log_path = self.workdir / f"{name}.log"
        argv = [sys.executable, "-m", "kcl_app.cli", "run", "--properties", str(self.properties),
                "--config", str(self.config), "--endpoint", self.endpoint, "--stream", self.stream,
                "--app", self.app, "--log-file", str(log_path)]
        if self.initial_position:
            argv += ["--initial-position", self.initial_position]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
               "TABLESYNC_METRICS_FILE": str(self.metrics_file), **self.extra_env}
        stderr = open(self.workdir / f"{name}.stderr", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
        worker = Worker(name, proc, log_path)
        self.workers.append(worker)
        return worker

    def kill9(self, worker: Worker) -> None:
        """kill -9 the worker, its daemon and its record processors (the whole process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)

    def stop(self, timeout: float = 40.0) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                worker.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.kill9(worker)
        self.workers = [w for w in self.workers if w.alive()]


def leases(client_ddb: Any, app: str) -> dict[str, dict[str, Any]]:
    """shard -> lease item from the KCL lease table ({} while it does not exist)."""
    try:
        items = client_ddb.scan(TableName=app, ConsistentRead=True).get("Items", [])
    except client_ddb.exceptions.ResourceNotFoundException:
        return {}
    return {i["leaseKey"]["S"]: i for i in items}


def lease_owners(client_ddb: Any, app: str) -> dict[str, str | None]:
    return {shard: i.get("leaseOwner", {}).get("S") for shard, i in leases(client_ddb, app).items()}


def lease_checkpoints(client_ddb: Any, app: str) -> dict[str, str | None]:
    return {shard: i.get("checkpoint", {}).get("S") for shard, i in leases(client_ddb, app).items()}


def leader_of(client_ddb: Any, app: str) -> str | None:
    """Owner of the KCL 3.x leader lock (item "Leader" of <app>-CoordinatorState), if any."""
    item = client_ddb.get_item(TableName=f"{app}-CoordinatorState", Key={"key": {"S": "Leader"}},
                               ConsistentRead=True).get("Item")
    return item["ownerName"]["S"] if item else None


def read_metrics(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """EMF documents appended to `path` since `offset`; returns them and the new offset."""
    if not path.exists():
        return [], offset
    with open(path, encoding="utf-8") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind("\n") + 1]
    docs = []
    for line in complete.splitlines():
        try:
            docs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return docs, offset + len(complete.encode("utf-8"))
