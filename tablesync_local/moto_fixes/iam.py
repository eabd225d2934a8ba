"""IAM enforcement fixes: the actions AWS really authorises (transactions per item), and denials the SDKs
can parse."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tablesync_local.moto_fixes._patch import fix

# IAM authorises TransactWriteItems/TransactGetItems by the actions of their items, per table; there is no
# IAM action dynamodb:TransactWriteItems or dynamodb:TransactGetItems.
_TRANSACT_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}
# The IAM prefix of a service whose SigV4 signing name differs from it.
_IAM_PREFIX_OF_SIGNING_NAME = {"monitoring": "cloudwatch"}
# Services whose protocol is JSON (awsJson1.0/1.1): AWS answers a denial with HTTP 400 and
# {"__type": "AccessDeniedException"}; moto answered 403 with an XML body the SDKs cannot parse.
_JSON_DENIAL_SERVICES = frozenset({"dynamodb", "kinesis"})


def iam_actions(action: str, body: bytes | str | None) -> list[str]:
    """The IAM actions AWS authorises for a request that moto names ``action`` (``signing-name:Operation``).

    ``body`` is the raw request body (needed for transactions). Each returned action must be allowed;
    the order is the items' order, without repeats. An unreadable transaction body leaves ``action`` as is.
    """
    service, _, operation = action.partition(":")
    service = _IAM_PREFIX_OF_SIGNING_NAME.get(service, service)
    if service == "dynamodb" and operation in ("TransactWriteItems", "TransactGetItems"):
        try:
            items = json.loads(body or b"{}")["TransactItems"]
            kinds = [next(iter(item)) for item in items]
            per_item = [_TRANSACT_ITEM_ACTIONS[kind] for kind in kinds]
        except (ValueError, KeyError, TypeError, StopIteration):
            return [action]
        return list(dict.fromkeys(per_item))
    return [f"{service}:{operation}"]


def install() -> None:
    import logging

    from moto.core.exceptions import JsonRESTError
    from moto.iam.access_control import IAMRequest, IAMRequestBase

    log = logging.getLogger("tablesync_local.iam")

    # Fix: action names. moto checks "<signing name>:<operation>", so a transaction needed a non-existent
    # dynamodb:TransactWriteItems (and an allowed dynamodb:PutItem did not cover its puts), and CloudWatch
    # calls needed "monitoring:*". Each action AWS authorises is checked in turn; a denial names it.
    def make_check(orig: Callable[..., Any]) -> Callable[..., Any]:
        def check_action_permitted(self: Any, resource: str) -> None:
            named = self._action
            try:
                for action in iam_actions(named, self._body or self._data):
                    self._action = action
                    try:
                        orig(self, resource)
                    except Exception:
                        log.debug("IAM deny %s %s", self._access_key.arn, action)
                        raise
                    log.debug("IAM allow %s %s", self._access_key.arn, action)
            finally:
                self._action = named

        return check_action_permitted

    fix(IAMRequestBase, "check_action_permitted", make_check)

    # Fix: the denial's shape for JSON-protocol services (AccessDeniedException, HTTP 400), so SDK
    # clients classify it the way they do against AWS.
    def make_denied(orig: Callable[..., Any]) -> Callable[..., Any]:
        def _raise_access_denied(self: Any) -> None:
            if self._service in _JSON_DENIAL_SERVICES:
                raise JsonRESTError("AccessDeniedException",
                                    f"User: {self._access_key.arn} is not authorized to perform: {self._action}")
            orig(self)

        return _raise_access_denied

    fix(IAMRequest, "_raise_access_denied", make_denied)
