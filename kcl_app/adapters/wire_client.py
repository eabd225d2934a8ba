"""The lean write path: DynamoDB write requests sent as JSON built in one pass, signed and sent by botocore.

A botocore client call walks the operation's shape model for every parameter, re-encodes every
binary value, and resolves its endpoint through the endpoint rule set, once per call. For the hot
writes (TransactWriteItems, PutItem, DeleteItem) none of that is needed: the writers build their
requests from validated records, whose values are already DynamoDB JSON except for binaries.

`encode_body` turns a request (the same dict a botocore call takes) into the JSON body with orjson
(UTF-8, the same document as botocore's ASCII-escaped text); binary values decoded from a record
(`attrs.WireBytes`) are written back as the base64 text they arrived as, other bytes are base64-encoded.
A value JSON cannot carry (a lone surrogate, an integer beyond 64 bits, a key that is not a string)
raises TypeError: the writers treat it as an invalid request and isolate the write that holds it. `WireSender` then:

* takes its endpoint, region, signer, credentials and HTTP session from a botocore DynamoDB client
  built by the composition root: `endpoint_url`, the region, the credential chain (assumed roles
  refreshed before expiry), timeouts, the connection pool and proxies are that client's. The
  endpoint is the client's, resolved once when it was built, not per call.
* emits the client's `before-send` event, so whatever botocore lets an application hook there
  (a recorded or simulated response) works as for the client's own calls;
* signs with the client's SigV4 request signer (its `before-sign` event included);
* turns an error answer into the `ClientError` botocore raises (Error.Code/Message, HTTP status,
  and the modelled members the writers read: `CancellationReasons`, `Item`), so the one retry
  classifier (`adapters.retry.describe` + `core.retry`) sees the same errors on both paths.
  A transport failure raises botocore's own exceptions (connection, timeout).

Everything else (reads, tables, waiters) goes through the botocore client.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
from botocore.awsrequest import AWSRequest
from botocore.client import BaseClient
from botocore.exceptions import ChecksumError, ClientError

from kcl_app.core.attrs import WireBytes, value_from_wire

log = logging.getLogger("tablesync.wire")

TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
OPERATIONS = ("TransactWriteItems", "PutItem", "DeleteItem")


def _binary_or_set(value: Any) -> Any:
    if isinstance(value, WireBytes):
        return value.wire
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, set | frozenset):  # a transform may return a Python set for SS/NS/BS
        return list(value)
    raise TypeError(f"a {type(value).__name__} cannot be sent as a DynamoDB value")


def encode_body(params: Mapping[str, Any]) -> bytes:
    """The JSON body of a DynamoDB request with `params` (the keyword arguments of the botocore call)."""
    try:
        return orjson.dumps(params, default=_binary_or_set)
    except orjson.JSONEncodeError as exc:  # a TypeError; say what was refused, ours or orjson's own words
        raise TypeError(str(exc.__cause__ or exc)) from exc


class WireSender:
    """Sends TransactWriteItems, PutItem and DeleteItem for one botocore DynamoDB client. Thread-safe
    (the client's signer and HTTP session are)."""

    def __init__(self, client: Any) -> None:
        meta = client.meta
        if meta.service_model.service_name != "dynamodb":
            raise ValueError(f"a WireSender needs a DynamoDB client, not {meta.service_model.service_name}")
        self.endpoint_url: str = meta.endpoint_url.rstrip("/") + "/"
        self.region: str = meta.region_name
        self._events = meta.events
        self._signer = client._request_signer  # noqa: SLF001 - botocore's signer of this client: same credentials
        self._http = client._endpoint.http_session  # noqa: SLF001 - the client's pool, timeouts and proxies
        self._service_id = meta.service_model.service_id.hyphenize()
        self._user_agent = _user_agent(client)

    @classmethod
    def for_client(cls, client: Any) -> WireSender | None:
        """A sender for `client`, or None when it is not a botocore client (a test's fake) or one whose write
        methods were replaced on the instance (a stub): those calls stay the client's own."""
        if not isinstance(client, BaseClient) or any(m in vars(client) for m in _METHODS.values()):
            return None
        try:
            return cls(client)
        except (AttributeError, ValueError, TypeError):
            return None

    def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Send `operation` with `params`; the parsed answer (a dict), or raise ClientError / BotoCoreError."""
        if operation not in OPERATIONS:
            raise ValueError(f"the lean path sends {', '.join(OPERATIONS)}, not {operation}")
        request = AWSRequest(method="POST", url=self.endpoint_url, data=encode_body(params), headers={
            "X-Amz-Target": TARGET_PREFIX + operation,
            "Content-Type": CONTENT_TYPE,
            "User-Agent": self._user_agent,
        })
        self._signer.sign(operation, request)
        prepared = request.prepare()
        response = None
        for answer in self._events.emit(f"before-send.{self._service_id}.{operation}", request=prepared):
            if answer[1] is not None:
                response = answer[1]
                break
        if response is None:
            response = self._http.send(prepared)
        return parse(operation, response.status_code, response.headers, response.content)


_METHODS = {"TransactWriteItems": "transact_write_items", "PutItem": "put_item", "DeleteItem": "delete_item"}
OPERATION_OF = {method: operation for operation, method in _METHODS.items()}  # client method -> operation


def send(client: Any, wire: WireSender | None, operation: str, params: Mapping[str, Any]) -> Any:
    """Send one write: through `wire` when there is one, else through the client's own method."""
    if wire is not None:
        return wire.call(operation, params)
    return getattr(client, _METHODS[operation])(**params)


def _user_agent(client: Any) -> str:
    try:
        return str(client._client_config.user_agent)  # noqa: SLF001
    except AttributeError:
        return "tablesync"


def parse(operation: str, status: int, headers: Mapping[str, str], content: bytes) -> dict[str, Any]:
    """The answer of a DynamoDB JSON call: the document for 2xx, else the ClientError botocore raises."""
    expected = headers.get("x-amz-crc32")
    if expected is not None and expected.isdigit() and zlib.crc32(content) != int(expected):
        raise ChecksumError(checksum_type="crc32", expected_checksum=expected, actual_checksum=str(zlib.crc32(content)))
    document: Any = None
    if content:
        try:
            document = orjson.loads(content)
        except orjson.JSONDecodeError:
            document = None
    metadata = {"RequestId": headers.get("x-amzn-RequestId", ""), "HTTPStatusCode": status,
                "HTTPHeaders": dict(headers), "RetryAttempts": 0}
    if 200 <= status < 300:
        answer: dict[str, Any] = document if isinstance(document, dict) else {}
        answer["ResponseMetadata"] = metadata
        return answer
    raise ClientError(error_response(status, document, content, metadata), operation)  # type: ignore[arg-type]


def error_response(status: int, document: Any, content: bytes, metadata: dict[str, Any]) -> dict[str, Any]:
    """The `response` of botocore's ClientError for a JSON-protocol error answer."""
    if isinstance(document, dict):
        kind = str(document.get("__type") or document.get("code") or status)
        code = kind.rsplit("#", 1)[-1]
        message = document.get("message", document.get("Message", ""))
    else:  # not JSON (a proxy's page): the status is the code, as botocore does
        code = str(status)
        message = content.decode("utf-8", "replace")[:500]
    response: dict[str, Any] = {"Error": {"Message": str(message or ""), "Code": code}, "ResponseMetadata": metadata}
    if isinstance(document, dict):
        reasons = document.get("CancellationReasons")
        if isinstance(reasons, list):
            response["CancellationReasons"] = [_reason(r) for r in reasons if isinstance(r, dict)]
        if isinstance(document.get("Item"), dict):
            response["Item"] = _api_item(document["Item"])
    return response


def _reason(reason: dict[str, Any]) -> dict[str, Any]:
    out = dict(reason)
    if isinstance(out.get("Item"), dict):
        out["Item"] = _api_item(out["Item"])
    return out


def _api_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item of an answer in API form (binaries as bytes), as botocore's parser returns it."""
    out = {}
    for name, value in item.items():
        try:
            out[name] = value_from_wire(value)
        except ValueError:
            out[name] = value  # the service's own answer: kept as it came rather than dropped
    return out


__all__ = ["OPERATIONS", "OPERATION_OF", "WireSender", "encode_body", "error_response", "parse", "send"]
