"""WireSender: the lean write path against real tables (moto) and a recording HTTP endpoint.

Proves that writes sent through it land as botocore's would (binaries as bytes), that answers and
errors reach the writers in the shapes botocore gives them (CancellationReasons, a conditional
failure's Item, throttling, 5xx, a refused connection), and that it signs with the client's
credentials (refreshed ones included) for the client's region and sends to its endpoint_url.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config as BotoConfig
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError, EndpointConnectionError

from kcl_app.adapters.inline import InlineWriter, ensure_tombstones
from kcl_app.adapters.ledger import LedgerWriter, ensure_ledger
from kcl_app.adapters.retry import Backoff, classify, describe
from kcl_app.adapters.wire_client import WireSender
from kcl_app.compose import boto_config, make_writer
from kcl_app.config import parse
from kcl_app.core.attrs import Item, item_from_wire, key_id
from kcl_app.core.plan import Write
from kcl_app.core.records import Change
from kcl_app.core.versions import Version
from tests.support.tables import create_table, scan_all

FAR = 10**9


def write(pk: str, micros: int, attrs: Item | None = None, *, delete: bool = False) -> Write:
    key: Item = {"pk": {"S": pk}}
    item = None if delete else {**key, **(attrs or {})}
    version = Version(micros, f"e-{pk}-{micros}")
    change = Change("src", "REMOVE" if delete else "MODIFY", key, key_id(key), item, version, False, version.tiebreak)
    return Write("t", key, key_id(key), version, item, change, (0,))


# ------------------------------------------------------------------------------ against moto's tables


@pytest.fixture
def tables(moto: Any) -> Iterator[tuple[Any, str, str]]:
    client = boto3.client("dynamodb", region_name="eu-west-1", config=boto_config())
    suffix = uuid.uuid4().hex[:8]
    table, ledger = f"target-{suffix}", f"ledger-{suffix}"
    create_table(client, table)
    ensure_ledger(client, ledger)
    yield client, table, ledger


def test_the_composition_root_gives_both_modes_the_lean_path(tables: Any, clock: Any) -> None:
    client, table, _ = tables
    config = parse({"targets": [{"name": "t", "source_table": "src", "table": table, "region": "eu-west-1"}]})
    writer = make_writer(config.targets[0], config, clock, client, prepare=False)
    assert isinstance(writer, LedgerWriter) and isinstance(writer.wire, WireSender)
    writer.close()
    inline = parse({"stream_retention_hours": 24,
                    "targets": [{"name": "t", "source_table": "src", "table": table, "region": "eu-west-1",
                                 "mode": "inline"}]})
    writer2 = make_writer(inline.targets[0], inline, clock, client, prepare=False)
    assert isinstance(writer2, InlineWriter) and isinstance(writer2.wire, WireSender)
    writer2.close()


def test_a_stub_or_fake_client_keeps_its_own_calls(tables: Any) -> None:
    client, _, _ = tables
    assert WireSender.for_client(object()) is None
    stubbed = boto3.client("dynamodb", region_name="eu-west-1")
    stubbed.transact_write_items = lambda **_kwargs: {}
    assert WireSender.for_client(stubbed) is None
    assert WireSender.for_client(boto3.client("sqs", region_name="eu-west-1")) is None
    assert WireSender.for_client(client) is not None


def test_exact_mode_writes_land_with_binaries_as_bytes_and_fencing_by_cancellation_reasons(
        tables: Any, clock: Any) -> None:
    client, table, ledger = tables
    writer = LedgerWriter("t", client, table, ledger, clock, backoff=Backoff(rng=random.Random(3)),
                          wire=WireSender.for_client(client))
    wire_attrs = {"b": {"B": "AP8Q"}, "bs": {"BS": ["AA==", "AQI="]}, "m": {"M": {"l": {"L": [{"B": "/w=="}]}}},
                  "n": {"N": "12345678901234567890123456789012345678"}, "s": {"S": "zürich ✓ 𝄞"}}
    attrs = item_from_wire(wire_attrs)
    result = writer.apply([write("a", 10, attrs), write("b", 10), write("c", 10)], FAR)
    assert len(result.applied) == 3 and not result.failed
    stored = scan_all(client, table)
    assert stored[key_id({"pk": {"S": "a"}})] == {"pk": {"S": "a"}, **attrs}
    assert stored[key_id({"pk": {"S": "a"}})]["b"]["B"] == b"\x00\xff\x10"
    # older and equal versions are refused by the ledger's condition: CancellationReasons sort them
    result = writer.apply([write("a", 5, {"x": {"S": "old"}}), write("b", 10), write("c", 11, delete=True)], FAR)
    assert [w.key["pk"]["S"] for w in result.stale] == ["a"]
    assert [w.key["pk"]["S"] for w in result.duplicate] == ["b"]
    assert [w.key["pk"]["S"] for w in result.applied] == ["c"]
    assert set(scan_all(client, table)) == {key_id({"pk": {"S": "a"}}), key_id({"pk": {"S": "b"}})}
    writer.close()


def test_inline_mode_writes_and_conditional_failures_carry_the_seen_item(tables: Any, clock: Any) -> None:
    client, table, _ = tables
    tombstones = "tombstones-" + table
    ensure_tombstones(client, tombstones)
    writer = InlineWriter("t", client, table, clock, tombstone_table=tombstones, wire=WireSender.for_client(client))
    result = writer.apply([write("a", 10, item_from_wire({"b": {"B": "3q2+7w=="}})), write("b", 10)], FAR)
    assert len(result.applied) == 2
    assert scan_all(client, table)[key_id({"pk": {"S": "a"}})]["b"]["B"] == b"\xde\xad\xbe\xef"
    result = writer.apply([write("a", 10), write("b", 9, delete=True)], FAR)
    assert [w.key["pk"]["S"] for w in result.duplicate] == ["a"]  # same version seen: from the answer's Item
    assert [w.key["pk"]["S"] for w in result.stale] == ["b"]
    result = writer.apply([write("b", 11, delete=True)], FAR)
    assert len(result.applied) == 1 and key_id({"pk": {"S": "b"}}) not in scan_all(client, table)
    writer.close()


def test_a_refused_item_fails_alone(tables: Any, clock: Any) -> None:
    client, table, ledger = tables
    writer = LedgerWriter("t", client, "no-such-table-" + table, ledger, clock, backoff=Backoff(rng=random.Random(1)),
                          wire=WireSender.for_client(client))
    result = writer.apply([write("a", 10)], clock.monotonic() + 0.5)
    assert not result.applied and len(result.failed) == 1
    assert "ResourceNotFoundException" in result.failed[0][1]
    writer.close()


# --------------------------------------------------------------------- against a recording endpoint


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]
    answers: list[tuple[int, bytes]]

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload = self.answers.pop(0) if self.answers else (200, b"{}")
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", "rec-1")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[dict[str, Any]], list[tuple[int, bytes]]]]:
    seen: list[dict[str, Any]] = []
    answers: list[tuple[int, bytes]] = []
    handler = type("Handler", (Recorder,), {"seen": seen, "answers": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/prefix", seen, answers
    server.shutdown()
    server.server_close()


def refreshing_client(url: str, region: str = "ap-southeast-2") -> tuple[Any, list[str]]:
    """A client whose credentials expire at once: every signature needs a refresh (as an assumed role's)."""
    issued: list[str] = []

    def refresh() -> dict[str, str]:
        issued.append(f"token-{len(issued) + 1}")
        expiry = datetime.now(UTC) + timedelta(seconds=1)  # inside botocore's mandatory refresh window
        return {"access_key": "AKIDEXAMPLE", "secret_key": "secret", "token": issued[-1],
                "expiry_time": expiry.isoformat()}

    core = botocore.session.Session()
    core._credentials = RefreshableCredentials.create_from_metadata(  # noqa: SLF001
        metadata=refresh(), refresh_using=refresh, method="assume-role")
    client = boto3.Session(botocore_session=core).client(
        "dynamodb", region_name=region, endpoint_url=url,
        config=BotoConfig(retries={"mode": "standard", "max_attempts": 1}, read_timeout=5, connect_timeout=5))
    return client, issued


def test_it_sends_to_the_endpoint_url_signed_for_the_region_with_refreshed_credentials(endpoint: Any) -> None:
    url, seen, _ = endpoint
    client, issued = refreshing_client(url)
    sender = WireSender(client)
    params = {"TransactItems": [{"Put": {"TableName": "t", "Item": item_from_wire({"pk": {"S": "é"},
                                                                                   "b": {"B": "AQ=="}})}}]}
    assert sender.call("TransactWriteItems", params)["ResponseMetadata"]["HTTPStatusCode"] == 200
    sender.call("PutItem", {"TableName": "t", "Item": {"pk": {"S": "x"}}})
    first, second = seen
    assert first["path"] == "/prefix/"
    assert first["headers"]["X-Amz-Target"] == "DynamoDB_20120810.TransactWriteItems"
    assert "/ap-southeast-2/dynamodb/aws4_request" in first["headers"]["Authorization"]
    assert first["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert json.loads(first["body"]) == {"TransactItems": [{"Put": {"TableName": "t", "Item": {
        "pk": {"S": "é"}, "b": {"B": "AQ=="}}}}]}
    # each call signed with the credentials botocore refreshed for it
    tokens = [first["headers"]["X-Amz-Security-Token"], second["headers"]["X-Amz-Security-Token"]]
    assert tokens[0] != tokens[1] and set(tokens) <= set(issued)


def error(code: str, message: str = "m", **extra: Any) -> bytes:
    return json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message, **extra}).encode()


def test_error_answers_become_the_client_errors_botocore_raises(endpoint: Any) -> None:
    url, _, answers = endpoint
    client, _ = refreshing_client(url)
    sender = WireSender(client)
    reasons = [{"Code": "ConditionalCheckFailed", "Message": "c", "Item": {"v": {"S": "tok"}, "b": {"B": "AQ=="}}},
               {"Code": "None"}]
    answers += [(400, error("TransactionCanceledException", "cancelled", CancellationReasons=reasons)),
                (400, error("ProvisionedThroughputExceededException")),
                (400, error("ValidationException", "bad item")),
                (500, b"<html>oops</html>"),
                (400, error("ConditionalCheckFailedException", Item={"_v": {"S": "x"}}))]
    calls = ["TransactWriteItems", "TransactWriteItems", "TransactWriteItems", "TransactWriteItems", "PutItem"]
    errors = []
    for operation in calls:
        with pytest.raises(ClientError) as caught:
            sender.call(operation, {"TransactItems": []} if operation != "PutItem" else {"TableName": "t", "Item": {}})
        errors.append(caught.value)
    cancelled, throttled, invalid, server, conditional = errors
    assert describe(cancelled).code == "TransactionCanceledException" and describe(cancelled).status == 400
    assert cancelled.response["CancellationReasons"][0]["Item"] == {"v": {"S": "tok"}, "b": {"B": b"\x01"}}
    assert cancelled.response["CancellationReasons"][1] == {"Code": "None"}
    assert classify(throttled) == "transient" and describe(throttled).message == "m"
    assert classify(invalid) == "invalid"
    assert classify(server) == "transient" and describe(server).status == 500
    assert conditional.response["Item"] == {"_v": {"S": "x"}}
    assert describe(conditional).code == "ConditionalCheckFailedException"


def test_a_refused_connection_is_a_transport_error() -> None:
    client, _ = refreshing_client("http://127.0.0.1:9")
    with pytest.raises(EndpointConnectionError) as caught:
        WireSender(client).call("PutItem", {"TableName": "t", "Item": {}})
    assert describe(caught.value).origin == "transport" and classify(caught.value) == "transient"


def test_only_the_hot_writes_take_the_lean_path(endpoint: Any) -> None:
    client, _ = refreshing_client(endpoint[0])
    with pytest.raises(ValueError, match="not GetItem"):
        WireSender(client).call("GetItem", {})
