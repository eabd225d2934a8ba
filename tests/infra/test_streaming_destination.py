"""The stream stack's custom resource, run from the exact code inlined in infra/stream.yaml.

moto implements neither the DynamoDB Kinesis streaming destination nor custom resources
without Docker, so the handler runs in-process against a recording fake of the four DynamoDB
calls (requests are validated against botocore's service model, statuses change
asynchronously like the real service) and answers a loopback HTTP server that stands in for
CloudFormation's pre-signed response URL.
"""

from __future__ import annotations

import json
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import botocore.session
import pytest
from botocore.validate import validate_parameters

from tests.infra.policy import load

STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/orders-changes"
OTHER_STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/orders-changes-2"
_MODEL = botocore.session.get_session().get_service_model("dynamodb")


class ResourceNotFoundException(Exception):
    pass


class ValidationException(Exception):
    pass


@dataclass
class FakeDynamoDB:
    """Destinations per table; ENABLING/DISABLING settle on the next describe, like the service."""

    tables: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_enable_with: Exception | None = None
    enable_outcome: str = "ACTIVE"
    exceptions: Any = field(
        default_factory=lambda: types.SimpleNamespace(ResourceNotFoundException=ResourceNotFoundException)
    )

    def _check(self, operation: str, params: dict[str, Any]) -> dict[str, dict[str, str]]:
        validate_parameters(params, _MODEL.operation_model(operation).input_shape)
        self.calls.append(operation)
        if params["TableName"] not in self.tables:
            raise ResourceNotFoundException(params["TableName"])
        return self.tables[params["TableName"]]

    def describe_kinesis_streaming_destination(self, **params: Any) -> dict[str, Any]:
        dests = self._check("DescribeKinesisStreamingDestination", params)
        answer = [{"StreamArn": arn, **dict(d)} for arn, d in dests.items()]
        for d in dests.values():
            d["DestinationStatus"] = {
                "ENABLING": self.enable_outcome,
                "UPDATING": "ACTIVE",
                "DISABLING": "DISABLED",
            }.get(d["DestinationStatus"], d["DestinationStatus"])
        return {"TableName": params["TableName"], "KinesisDataStreamDestinations": answer}

    def enable_kinesis_streaming_destination(self, **params: Any) -> dict[str, Any]:
        dests = self._check("EnableKinesisStreamingDestination", params)
        if self.fail_enable_with is not None:
            raise self.fail_enable_with
        precision = params["EnableKinesisStreamingConfiguration"]["ApproximateCreationDateTimePrecision"]
        dests[params["StreamArn"]] = {
            "DestinationStatus": "ENABLING",
            "ApproximateCreationDateTimePrecision": precision,
        }
        return {"DestinationStatus": "ENABLING"}

    def update_kinesis_streaming_destination(self, **params: Any) -> dict[str, Any]:
        dests = self._check("UpdateKinesisStreamingDestination", params)
        precision = params["UpdateKinesisStreamingConfiguration"]["ApproximateCreationDateTimePrecision"]
        dests[params["StreamArn"]] = {
            "DestinationStatus": "UPDATING",
            "ApproximateCreationDateTimePrecision": precision,
        }
        return {"DestinationStatus": "UPDATING"}

    def disable_kinesis_streaming_destination(self, **params: Any) -> dict[str, Any]:
        dests = self._check("DisableKinesisStreamingDestination", params)
        dests[params["StreamArn"]]["DestinationStatus"] = "DISABLING"
        return {"DestinationStatus": "DISABLING"}


class _Responses(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_PUT(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def response_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = HTTPServer(("127.0.0.1", 0), _Responses)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/response", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Context:
    remaining_ms: int = 600_000
    log_stream_name: str = "2024/01/01/[$LATEST]abc"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def handler_module(fake: FakeDynamoDB) -> types.ModuleType:
    """Compile the ZipFile source of the template, with the fake client and no polling delay."""
    code = load("stream.yaml")["Resources"]["DestinationFunction"]["Properties"]["Code"]["ZipFile"]
    module = types.ModuleType("streaming_destination")
    exec(compile(code, "infra/stream.yaml#DestinationFunction", "exec"), module.__dict__)  # noqa: S102
    module._ddb = fake
    module.POLL_SECONDS = 0
    return module


def event(kind: str, url: str, stream: str = STREAM, pid: str | None = None, table: str = "orders") -> dict[str, Any]:
    evt: dict[str, Any] = {
        "RequestType": kind,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:stack/s/1",
        "RequestId": "req-1",
        "LogicalResourceId": "StreamingDestination",
        "ResourceType": "Custom::X",
        "ResourceProperties": {
            "ServiceToken": "arn:fn",
            "TableName": table,
            "StreamArn": stream,
            "Precision": "MICROSECOND",
        },
    }
    if pid is not None:
        evt["PhysicalResourceId"] = pid
    return evt


def test_create_enables_with_microseconds_and_reports_success(response_url: Any) -> None:
    url, received = response_url
    fake = FakeDynamoDB(tables={"orders": {}})

    handler_module(fake).handler(event("Create", url), Context())

    assert fake.tables["orders"][STREAM] == {
        "DestinationStatus": "ACTIVE",
        "ApproximateCreationDateTimePrecision": "MICROSECOND",
    }
    [answer] = received
    assert answer["Status"] == "SUCCESS"
    assert answer["PhysicalResourceId"] == f"orders|{STREAM}"
    assert answer["RequestId"] == "req-1" and answer["LogicalResourceId"] == "StreamingDestination"
    assert answer["Data"]["Precision"] == "MICROSECOND"


def test_create_adopts_an_active_destination_and_fixes_its_precision(response_url: Any) -> None:
    url, received = response_url
    fake = FakeDynamoDB(
        tables={
            "orders": {STREAM: {"DestinationStatus": "ACTIVE", "ApproximateCreationDateTimePrecision": "MILLISECOND"}}
        }
    )

    handler_module(fake).handler(event("Create", url), Context())

    assert "EnableKinesisStreamingDestination" not in fake.calls
    assert fake.tables["orders"][STREAM]["ApproximateCreationDateTimePrecision"] == "MICROSECOND"
    assert fake.tables["orders"][STREAM]["DestinationStatus"] == "ACTIVE"
    assert [r["Status"] for r in received] == ["SUCCESS"]


def test_new_stream_is_a_replacement_and_the_old_one_is_disabled_on_delete(response_url: Any) -> None:
    url, received = response_url
    fake = FakeDynamoDB(tables={"orders": {}})
    module = handler_module(fake)
    module.handler(event("Create", url), Context())
    old_pid = received[-1]["PhysicalResourceId"]

    module.handler(event("Update", url, stream=OTHER_STREAM, pid=old_pid), Context())
    assert received[-1]["PhysicalResourceId"] == f"orders|{OTHER_STREAM}"
    module.handler(event("Delete", url, stream=OTHER_STREAM, pid=old_pid), Context())

    assert fake.tables["orders"][STREAM]["DestinationStatus"] == "DISABLED"
    assert fake.tables["orders"][OTHER_STREAM]["DestinationStatus"] == "ACTIVE"
    assert [r["Status"] for r in received] == ["SUCCESS"] * 3


@pytest.mark.parametrize("tables", [{"orders": {}}, {}], ids=["never-enabled", "table-gone"])
def test_delete_is_idempotent(response_url: Any, tables: dict[str, Any]) -> None:
    url, received = response_url
    fake = FakeDynamoDB(tables=tables)

    handler_module(fake).handler(event("Delete", url, pid=f"orders|{STREAM}"), Context())

    assert "DisableKinesisStreamingDestination" not in fake.calls
    assert [r["Status"] for r in received] == ["SUCCESS"]


def test_delete_after_a_failed_create_without_our_physical_id_does_nothing(response_url: Any) -> None:
    url, received = response_url
    fake = FakeDynamoDB(tables={"orders": {}})

    handler_module(fake).handler(event("Delete", url, pid="2024/01/01/[$LATEST]abc"), Context())

    assert fake.calls == []
    assert [r["Status"] for r in received] == ["SUCCESS"]


def test_api_error_is_reported_as_failed_with_the_reason(response_url: Any) -> None:
    url, received = response_url
    fake = FakeDynamoDB(tables={"orders": {}}, fail_enable_with=ValidationException("stream is not ACTIVE"))

    handler_module(fake).handler(event("Create", url), Context())

    [answer] = received
    assert answer["Status"] == "FAILED"
    assert answer["Reason"] == "ValidationException: stream is not ACTIVE"
    assert answer["PhysicalResourceId"] == f"orders|{STREAM}"


def test_enable_failed_status_is_reported_as_failed(response_url: Any) -> None:
    url, received = response_url
    fake = FakeDynamoDB(tables={"orders": {}}, enable_outcome="ENABLE_FAILED")

    handler_module(fake).handler(event("Create", url), Context())

    assert received[0]["Status"] == "FAILED"
    assert "ENABLE_FAILED" in received[0]["Reason"]


def test_running_out_of_lambda_time_reports_failed_instead_of_hanging(response_url: Any) -> None:
    url, received = response_url
    fake = FakeDynamoDB(tables={"orders": {}})

    handler_module(fake).handler(event("Create", url), Context(remaining_ms=10_000))

    assert received[0]["Status"] == "FAILED"
    assert received[0]["Reason"].startswith("TimeoutError")
