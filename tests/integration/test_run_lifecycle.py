"""`tablesync run` leaving the fleet while records flow, with the real KCL 3.1.3 daemon (the
smoke test's harness: local stack, echo processor, `python -m kcl_app.commands.run`).

1. systemd's stop: SIGTERM while a writer keeps putting records. The record processors get
   shutdown_requested and checkpoint; `run` exits 0 within the grace period; every record the
   processor saw is covered by its shard's checkpoint (nothing left to redeliver).
2. the group's scale-in: the instance metadata says the group is terminating this instance.
   `run` stops by itself the same way, then completes the termination hook (a fake IMDS and a
   fake Auto Scaling endpoint on loopback record what it asked).
Both runs also publish the fleet's figures (EMF, TABLESYNC_METRICS_FILE).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from kcl_app import daemon
from tablesync_local.fleet import create_source, create_table
from tests.integration.test_daemon_smoke import ECHO, REPO, _echoed, tablesync_run, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.daemon, pytest.mark.timeout(180)]


class FakeEc2Side(http.server.ThreadingHTTPServer):
    """IMDSv2 (token, lifecycle state, instance id) and the Auto Scaling query API on one port."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = "InService"
        self.completed: list[dict[str, str]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeEc2Side

    def _send(self, code: int, body: str, kind: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        self._send(200, "fake-token") if self.path == "/latest/api/token" else self._send(404, "")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != "fake-token":
            self._send(401, "")
        elif self.path == "/latest/meta-data/autoscaling/target-lifecycle-state":
            self._send(200, self.server.state)
        elif self.path == "/latest/meta-data/instance-id":
            self._send(200, "i-0fleettest")
        else:
            self._send(404, "")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if form.get("Action") != "CompleteLifecycleAction":
            self._send(400, "unexpected action")
            return
        self.server.completed.append(form)
        ns = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
        self._send(200, f'<CompleteLifecycleActionResponse xmlns="{ns}"><CompleteLifecycleActionResult/>'
                        "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
                        "</CompleteLifecycleActionResponse>", "text/xml")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ec2_side() -> Iterator[FakeEc2Side]:
    server = FakeEc2Side()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class Writer:
    """Puts a record every few ms on a thread until stopped: the stop happens while processing."""

    def __init__(self, kinesis: Any, stream: str) -> None:
        self.kinesis, self.stream = kinesis, stream
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.kinesis.put_record(StreamName=self.stream, Data=f"rec-{self.sent}".encode(),
                                    PartitionKey=f"pk-{self.sent}")
            self.sent += 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _setup(local_stack: Any, tmp_path: Path) -> dict[str, Any]:
    name = f"leave-{uuid.uuid4().hex[:8]}"
    kinesis, dynamodb = local_stack.client("kinesis"), local_stack.client("dynamodb")
    # what `run` checks before it starts: a source streaming into the stream, a target like it
    create_source(dynamodb, kinesis, f"{name}-src", name, 2)
    create_table(dynamodb, f"{name}-dst")
    properties = tmp_path / "kcl.properties"
    properties.write_text(daemon.render_properties(
        (REPO / "properties" / "local.properties").read_text(),
        {"python": sys.executable, "config": "/unused", "endpoint": local_stack.endpoint},
        {"executableName": f"{sys.executable} {ECHO}"}))
    config = tmp_path / "targets.toml"
    config.write_text(f'[[targets]]\nname = "t"\nsource_table = "{name}-src"\ntable = "{name}-dst"\n'
                      'region = "us-east-1"\n')  # read by the pre-flight check only (the echo ignores it)
    paths = {"echo": tmp_path / "echo.jsonl", "log": tmp_path / "daemon.log", "metrics": tmp_path / "metrics.jsonl"}
    env = {**os.environ, **local_stack.env(), "TABLESYNC_ECHO_FILE": str(paths["echo"]),
           "TABLESYNC_METRICS_FILE": str(paths["metrics"])}
    argv = ["--properties", str(properties), "--config", str(config), "--stream", name, "--app", f"{name}-app",
            "--endpoint", local_stack.endpoint, "--log-file", str(paths["log"]), "--fleet-metrics-interval", "1"]
    grace_s = int(daemon.parse_properties(properties.read_text())["shutdownGraceMillis"]) / 1000
    return {"stream": name, "app": f"{name}-app", "kinesis": kinesis, "dynamodb": local_stack.client("dynamodb"),
            "argv": argv, "env": env, "grace_s": grace_s, **paths}


def _checkpoints(dynamodb: Any, app: str) -> dict[str, str]:
    items = dynamodb.scan(TableName=app, ConsistentRead=True)["Items"]
    return {i["leaseKey"]["S"]: i.get("checkpoint", {}).get("S", "") for i in items}


def _last_echoed(echo: Path) -> dict[str, str]:
    last: dict[str, int] = {}
    for r in _echoed(echo):
        last[r["shard"]] = max(last.get(r["shard"], 0), int(r["seq"]))
    return {shard: str(seq) for shard, seq in last.items()}


def _fleet_docs(metrics: Path) -> list[dict[str, Any]]:
    if not metrics.exists():
        return []
    docs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [d for d in docs if "LeasesToProcess" in d]


def _assert_left_cleanly(s: dict[str, Any], status: int, output: str) -> None:
    assert status == 0, output
    # every record the processor saw is covered by its shard's checkpoint
    assert _checkpoints(s["dynamodb"], s["app"]) == _last_echoed(s["echo"])
    text = s["log"].read_text(errors="replace")
    for shard in _last_echoed(s["echo"]):
        assert f"shutdown requested shard={shard}" in text
    # the fleet published its work: 2 open shards, both held by this worker
    docs = _fleet_docs(s["metrics"])
    assert docs, "no fleet figures published"
    assert (docs[-1]["LeasesToProcess"], docs[-1]["OpenShards"], docs[-1]["Workers"]) == (2, 2, 1)


def _wait_processing(s: dict[str, Any], proc: subprocess.Popen[bytes], writer: Writer) -> None:
    wait_for(lambda: len({r["shard"] for r in _echoed(s["echo"])}) == 2 and len(_echoed(s["echo"])) >= 20,
             90, "records from both shards echoed", proc, s["log"])
    wait_for(lambda: _fleet_docs(s["metrics"]), 30, "fleet figures published", proc, s["log"])
    assert writer.sent > len(_echoed(s["echo"])) - 1  # still writing


def test_sigterm_while_processing_checkpoints_and_exits_within_the_grace(local_stack: Any, tmp_path: Path) -> None:
    s = _setup(local_stack, tmp_path)
    with tablesync_run(s["argv"], s["env"]) as proc, Writer(s["kinesis"], s["stream"]) as writer:
        _wait_processing(s, proc, writer)
        stop_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # what systemd's stop sends (KillMode=mixed: to `run` only)
        try:
            status = proc.wait(timeout=s["grace_s"] + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tablesync run did not stop within {s['grace_s'] + 5}s of SIGTERM")
        stop_s = time.monotonic() - stop_at
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _assert_left_cleanly(s, status, output)
    print(f"stopped {stop_s:.1f}s after SIGTERM (shutdownGraceMillis {s['grace_s']:.0f}s), "
          f"{len(_echoed(s['echo']))} records processed of {writer.sent} written")


def test_scale_in_stops_gracefully_then_completes_the_termination_hook(
        local_stack: Any, tmp_path: Path, ec2_side: FakeEc2Side) -> None:
    s = _setup(local_stack, tmp_path)
    env = {**s["env"], "AWS_EC2_METADATA_SERVICE_ENDPOINT": ec2_side.url,
           "AWS_ENDPOINT_URL_AUTO_SCALING": ec2_side.url}
    argv = [*s["argv"], "--auto-scaling-group", "orders-app-workers", "--lifecycle-hook", "tablesync-drain"]
    with tablesync_run(argv, env) as proc, Writer(s["kinesis"], s["stream"]) as writer:
        _wait_processing(s, proc, writer)
        assert ec2_side.completed == []
        ec2_side.state = "Terminated"  # the group chose this instance; it waits in Terminating:Wait
        try:  # the watcher polls every 5 s, then the graceful stop
            status = proc.wait(timeout=5 + s["grace_s"] + 5)
        except subprocess.TimeoutExpired:
            pytest.fail("tablesync run did not leave the group after the termination was announced")
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _assert_left_cleanly(s, status, output)
    assert len(ec2_side.completed) == 1, output
    call = ec2_side.completed[0]
    assert (call["AutoScalingGroupName"], call["LifecycleHookName"], call["InstanceId"],
            call["LifecycleActionResult"]) == ("orders-app-workers", "tablesync-drain", "i-0fleettest", "CONTINUE")
