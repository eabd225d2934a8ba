"""One emulator port speaks HTTP/1.1 (boto3) and h2c with prior knowledge (raw ``h2``), one state;
and ``tablesync local up | info | down`` as a user runs it."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tablesync_local import stack as stack_mod
from tablesync_local.stack import LocalStack, free_port, pid_alive, poll_until

pytestmark = pytest.mark.integration


class H2Client:
    """A minimal h2c client: prior knowledge on a plain socket, SigV4-signed Kinesis JSON calls."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.sock = socket.create_connection((stack.host, stack.port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.conn.close_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.sock.close()

    def send(self, target: str, payload: dict[str, Any], content_length: bool = False) -> int:
        body = json.dumps(payload).encode()
        req = AWSRequest("POST", self.stack.endpoint + "/", data=body, headers={
            "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"Kinesis_20131202.{target}"})
        SigV4Auth(Credentials("testing", "testing"), "kinesis", "us-east-1").add_auth(req)
        headers = [(":method", "POST"), (":path", "/"), (":scheme", "http"),
                   (":authority", f"{self.stack.host}:{self.stack.port}")]
        headers += [(k.lower(), v) for k, v in req.headers.items() if k.lower() not in ("host", "content-length")]
        if content_length:
            headers.append(("content-length", str(len(body))))
        stream_id: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return stream_id

    def responses(self, stream_ids: list[int]) -> dict[int, tuple[int, dict[str, Any]]]:
        status: dict[int, int] = {}
        bodies: dict[int, bytes] = {i: b"" for i in stream_ids}
        ended: set[int] = set()
        while ended != set(stream_ids):
            data = self.sock.recv(65536)
            assert data, "server closed the h2 connection"
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status[ev.stream_id] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.add(ev.stream_id)
            self.sock.sendall(self.conn.data_to_send())
        return {i: (status[i], json.loads(bodies[i] or b"{}")) for i in stream_ids}

    def call(self, target: str, payload: dict[str, Any], content_length: bool = False) -> dict[str, Any]:
        sid = self.send(target, payload, content_length)
        code, body = self.responses([sid])[sid]
        assert code == 200, body
        return body


@pytest.fixture
def h2c(local_stack: LocalStack):  # type: ignore[no-untyped-def]
    client = H2Client(local_stack)
    yield client
    client.close()


@pytest.mark.parametrize("content_length", [False, True], ids=["no-content-length", "content-length"])
def test_h2c_and_http11_share_one_kinesis_state(local_stack: LocalStack, h2c: H2Client,
                                                content_length: bool) -> None:
    kinesis = local_stack.client("kinesis")
    name = f"h2-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)                       # HTTP/1.1
    assert name in h2c.call("ListStreams", {"Limit": 10000}, content_length)["StreamNames"]  # h2c sees it
    desc = h2c.call("DescribeStream", {"StreamName": name}, content_length)["StreamDescription"]
    assert desc["StreamStatus"] == "ACTIVE" and len(desc["Shards"]) == 1
    put = h2c.call("PutRecord", {"StreamName": name, "PartitionKey": "p",
                                 "Data": base64.b64encode(b"from h2").decode()}, content_length)
    shard = put["ShardId"]
    it = kinesis.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records = kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"]  # read back over HTTP/1.1
    assert [(r["Data"], r["PartitionKey"], r["SequenceNumber"]) for r in records] == [
        (b"from h2", "p", put["SequenceNumber"])]


def test_h2c_multiplexes_concurrent_streams(local_stack: LocalStack, h2c: H2Client) -> None:
    name = f"mux-{uuid.uuid4().hex[:8]}"
    local_stack.client("kinesis").create_stream(StreamName=name, ShardCount=1)
    ids = [h2c.send("PutRecord", {"StreamName": name, "PartitionKey": str(i),
                                  "Data": base64.b64encode(str(i).encode()).decode()}) for i in range(8)]
    answers = h2c.responses(ids)
    assert {code for code, _ in answers.values()} == {200}
    assert len({body["SequenceNumber"] for _, body in answers.values()}) == 8


def test_emulator_api_and_moto_reset(local_stack: LocalStack) -> None:
    assert stack_mod.health(local_stack.endpoint) == {"ok": True, "pid": local_stack.pid}
    with pytest.raises(stack_mod.StackError, match="404"):
        stack_mod.call(local_stack.endpoint, "/_tablesync/nope")
    with pytest.raises(stack_mod.StackError, match="400"):
        local_stack.configure_faults("t", duplicate_rate=2.0)


def test_reset_forgets_resources(fresh_stack: LocalStack) -> None:
    sqs = fresh_stack.client("sqs")
    sqs.create_queue(QueueName="q")
    assert len(sqs.list_queues().get("QueueUrls", [])) == 1
    fresh_stack.reset()
    assert sqs.list_queues().get("QueueUrls", []) == []


# ---------------------------------------------------------------- tablesync local up | info | down

def run_local(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcl_app.commands.local", *args, "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=60, env={**os.environ})


def test_local_up_info_down(tmp_path: Path) -> None:
    port, state_dir = free_port(), tmp_path / "state"
    up = run_local("up", "--port", str(port), state_dir=state_dir)
    state = stack_mod.read_state(state_dir)
    try:
        assert up.returncode == 0, up.stderr
        endpoint = f"http://127.0.0.1:{port}"
        assert f"export AWS_ENDPOINT_URL={endpoint}" in up.stdout.splitlines()
        assert "export AWS_ACCESS_KEY_ID=testing" in up.stdout and "export AWS_DEFAULT_REGION=us-east-1" in up.stdout
        assert state is not None and state["endpoint"] == endpoint and pid_alive(state["pid"])
        assert stack_mod.health(endpoint) == {"ok": True, "pid": state["pid"]}
        assert (state_dir / "stack.log").exists()

        again = run_local("up", "--port", str(free_port()), state_dir=state_dir)
        assert again.returncode == 1
        assert again.stderr.strip() == (f"tablesync local: already running at {endpoint} (pid {state['pid']}); "
                                        "run 'tablesync local down' first")

        taken = run_local("up", "--port", str(port), state_dir=tmp_path / "other")
        assert taken.returncode == 1
        assert taken.stderr.strip() == (f"tablesync local: port {port} on 127.0.0.1 is already in use; "
                                        "choose another with --port")
        assert stack_mod.read_state(tmp_path / "other") is None

        info = run_local("info", state_dir=state_dir)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout) == {**state, "state_dir": str(state_dir), "answers": True}

        down = run_local("down", state_dir=state_dir)
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == f"tablesync local: stopped (pid {state['pid']})"
        assert not pid_alive(state["pid"])
        assert stack_mod.read_state(state_dir) is None
        assert stack_mod.health(endpoint) is None
        assert run_local("info", state_dir=state_dir).returncode == 1
    finally:
        if state is not None and pid_alive(state["pid"]):
            stack_mod.stop_process(state["pid"], timeout=5)


def test_local_up_on_a_port_held_by_another_program(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        up = run_local("up", "--port", str(port), state_dir=tmp_path)
    assert up.returncode == 1
    assert "already in use" in up.stderr and len(up.stderr.strip().splitlines()) == 1
    assert stack_mod.read_state(tmp_path) is None


def _plain_bind_fails(port: int) -> bool:
    """True while something (a listener, or a connection in TIME_WAIT) blocks a bind without SO_REUSEADDR."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _time_wait_on(port: int) -> bool:
    """A TCP connection whose local port is ``port`` is in TIME_WAIT (Linux /proc/net/tcp, state 06)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(f.split()[1].endswith(f":{port:04X}") and f.split()[3] == "06" for f in lines)


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads TCP states from /proc/net/tcp")


@needs_proc
def test_port_probe_ignores_time_wait_but_not_a_listener() -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the emulator's listener (hypercorn)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the listening side closes first, so its end of the connection enters TIME_WAIT
        client.close()
    poll_until(lambda: _time_wait_on(port), timeout=10, message=f"TIME_WAIT on port {port}")
    assert _plain_bind_fails(port)  # what the probe saw before binding as the server does
    assert stack_mod.port_in_use(port) is False
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        assert stack_mod.port_in_use(port) is True


@needs_proc
def test_local_up_reuses_its_port_right_after_down(tmp_path: Path) -> None:
    import http.client

    port, state_dir = free_port(), tmp_path / "state"
    pids = []
    try:
        assert run_local("up", "--port", str(port), state_dir=state_dir).returncode == 0
        state = stack_mod.read_state(state_dir)
        assert state is not None
        pids.append(state["pid"])
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # kept alive across down
        client.request("GET", "/_tablesync/health")
        assert json.loads(client.getresponse().read())["ok"] is True
        assert run_local("down", state_dir=state_dir).returncode == 0
        client.close()
        poll_until(lambda: _time_wait_on(port), timeout=10, message=f"TIME_WAIT on port {port}")

        again = run_local("up", "--port", str(port), state_dir=state_dir)
        assert again.returncode == 0, again.stderr
        state = stack_mod.read_state(state_dir)
        assert state is not None
        pids.append(state["pid"])
        assert stack_mod.health(f"http://127.0.0.1:{port}") == {"ok": True, "pid": state["pid"]}
        assert run_local("down", state_dir=state_dir).returncode == 0
    finally:
        for pid in pids:
            if pid_alive(pid):
                stack_mod.stop_process(pid, timeout=5)


def test_stack_fixture_starts_answering_and_stops_cleanly() -> None:
    # how fast it starts is a figure for bench/, not an assertion: a timed bound failed on a loaded machine
    with stack_mod.running_stack() as s:
        assert stack_mod.health(s.endpoint) is not None
        pid = s.pid
    assert pid is not None
    poll_until(lambda: not pid_alive(pid), timeout=5, message="emulator process gone")
