"""Deadlines that hold: a target's client makes exactly one attempt per call (no hidden botocore
retry), with timeouts derived from the retry budget; a silent endpoint is given up after one read
timeout, not two. The endpoint is a local TCP port that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading

import botocore.exceptions
import pytest

from kcl_app.compose import call_timeouts, dynamodb_client
from kcl_app.config import parse


class SilentEndpoint:
    """Accepts connections and never answers; counts them."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()


def test_timeouts_follow_the_budget() -> None:
    assert call_timeouts(30.0) == (3.0, 5.0)
    assert call_timeouts(3.0) == (0.5, 1.0)
    assert call_timeouts(600.0) == (3.0, 10.0)


def test_a_silent_endpoint_gets_exactly_one_attempt(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    silent = SilentEndpoint()
    try:
        cfg = parse({"targets": [{"name": "t", "source_table": "src", "region": "eu-west-1", "table": "copy",
                                  "endpoint_url": f"http://127.0.0.1:{silent.port}", "retry_budget_seconds": 3}]})
        client = dynamodb_client(cfg.targets[0])
        assert client.meta.config.retries["total_max_attempts"] == 1
        assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (0.5, 1.0)
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            client.describe_table(TableName="copy")
        assert len(silent.accepted) == 1  # one attempt: botocore retried nothing underneath
    finally:
        silent.close()


def test_a_refused_connection_gets_exactly_one_attempt(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connections are refused
    cfg = parse({"targets": [{"name": "t", "source_table": "src", "region": "eu-west-1", "table": "copy",
                              "endpoint_url": f"http://127.0.0.1:{port}"}]})
    client = dynamodb_client(cfg.targets[0])
    calls: list[str] = []
    client.meta.events.register("before-send.dynamodb.*", lambda **kw: calls.append("sent"))
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client.describe_table(TableName="copy")
    assert calls == ["sent"]


class TimingOutClient:
    """Every call takes `timeout` seconds on the fake clock, then raises botocore's ReadTimeoutError
    (whose `response` attribute is None: the writer must still classify it as a transport error)."""

    def __init__(self, clock, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.calls: list[float] = []

    def transact_write_items(self, **kwargs):
        self.calls.append(self.clock.monotonic())
        self.clock.sleep(self.timeout)
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://silent")


def test_a_budget_is_honoured_within_one_call_timeout(clock) -> None:
    from kcl_app.adapters.ledger import LedgerWriter
    from kcl_app.core.attrs import key_id
    from kcl_app.core.plan import Write
    from kcl_app.core.records import Change
    from kcl_app.core.versions import Version

    client = TimingOutClient(clock, timeout=5.0)
    writer = LedgerWriter("t", client, "copy", "ledger", clock)
    key = {"pk": {"S": "k"}}
    change = Change(table="src", event="INSERT", key=key, key_id=key_id(key), new_image=dict(key),
                    version=Version(1, "a"), ttl_delete=False, event_id="e1")
    writes = [Write("t", key, key_id(key), Version(1, "a"), dict(key), change, (0,))]
    start = clock.monotonic()
    result = writer.apply(writes, start + 30.0)
    elapsed = clock.monotonic() - start
    assert [why.split(";")[0] for _, why in result.failed] == ["retry budget spent"]
    assert "ReadTimeoutError" in result.failed[0][1]
    assert len(client.calls) >= 2  # a timeout is retried (transport error) ...
    assert all(at < start + 30.0 for at in client.calls)  # ... but no call starts after the deadline
    assert elapsed <= 30.0 + 5.0  # the budget, plus at most the call in flight at the deadline
