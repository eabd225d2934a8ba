"""Helpers to create and read DynamoDB tables in tests (API form, all pages, nothing hidden)."""

from __future__ import annotations

from typing import Any

from kcl_app.core.attrs import Item, key_id


def create_table(client: Any, name: str, key_names: tuple[str, ...] = ("pk",), key_type: str = "S") -> None:
    kinds = ["HASH", "RANGE"]
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": key_type} for k in key_names],
        KeySchema=[{"AttributeName": k, "KeyType": kinds[i]} for i, k in enumerate(key_names)],
        BillingMode="PAY_PER_REQUEST",
    )


def scan_all(client: Any, table: str, key_names: tuple[str, ...] = ("pk",),
             drop: tuple[str, ...] = ()) -> dict[str, Item]:
    out: dict[str, Item] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page.get("Items", []):
            for name in drop:
                item.pop(name, None)
            out[key_id({k: item[k] for k in key_names})] = item
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def normalise(item: Item) -> Item:
    """Sets are unordered: compare them sorted. Binary values as bytes."""
    def norm(v: Any) -> Any:
        ((kind, inner),) = v.items()
        if kind in ("SS", "NS"):
            return {kind: sorted(inner)}
        if kind == "BS":
            return {kind: sorted(bytes(b) for b in inner)}
        if kind == "B":
            return {kind: bytes(inner)}
        if kind == "M":
            return {kind: {k: norm(x) for k, x in inner.items()}}
        if kind == "L":
            return {kind: [norm(x) for x in inner]}
        return {kind: inner}
    return {k: norm(v) for k, v in item.items()}


def normalise_all(items: dict[str, Item]) -> dict[str, Item]:
    return {k: normalise(v) for k, v in items.items()}
