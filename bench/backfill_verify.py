"""Backfill and verify throughput by segment count, against a sequential scan + per-item loop.

Run: .venv/bin/python bench/backfill_verify.py [--items 50000] [--segments 1,4,8] [--endpoint URL]

Without --endpoint: in-process moto (with tablesync's emulator fixes). With --endpoint: any
DynamoDB-compatible endpoint, e.g. the local stack (`tablesync local up`). The source holds
`--items` items of about `--size` bytes. Each figure is measured in the same run:

* baseline copy: one sequential Scan, one PutItem per item (what a hand-written copy does);
* backfill: `kcl_app.backfill.backfill` (parallel Scan, ledger transactions of 50 pairs);
* baseline verify: one sequential Scan, one GetItem per item, compared in Python;
* verify: `kcl_app.verify.Verifier` (parallel Scan + BatchGetItem, both directions).

Prints one line per measurement to stdout; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

REGION = "us-east-1"


def _client(endpoint: str | None) -> Any:
    import boto3

    from kcl_app.compose import boto_config

    return boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint, config=boto_config(max_pool=64))


def _create(client: Any, name: str, key: str = "pk") -> None:
    client.create_table(TableName=name, KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def _item(i: int, size: int) -> dict[str, Any]:
    return {"pk": {"S": f"item-{i:08d}"}, "n": {"N": str(i)}, "tags": {"SS": ["a", f"t{i % 7}"]},
            "body": {"S": "x" * max(0, size - 40)}}


def _load(client: Any, table: str, items: int, size: int, in_process: bool) -> None:
    if in_process:  # straight into the emulator's backend: loading is not what is measured
        from moto.dynamodb.models import dynamodb_backends

        backend = dynamodb_backends["123456789012"][REGION]
        for i in range(items):
            backend.put_item(table, _item(i, size))
        return
    for start in range(0, items, 25):
        request = {table: [{"PutRequest": {"Item": _item(i, size)}} for i in range(start, min(items, start + 25))]}
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def _baseline_copy(client: Any, source: str, target: str) -> int:
    count = 0
    kwargs: dict[str, Any] = {"TableName": source, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page.get("Items", []):
            client.put_item(TableName=target, Item=item)
            count += 1
        if "LastEvaluatedKey" not in page:
            return count
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _baseline_verify(client: Any, source: str, target: str) -> int:
    from kcl_app.verify import same

    differ = 0
    kwargs: dict[str, Any] = {"TableName": source, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page.get("Items", []):
            found = client.get_item(TableName=target, Key={"pk": item["pk"]}, ConsistentRead=True).get("Item")
            differ += not same(item, found)
        if "LastEvaluatedKey" not in page:
            return differ
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@contextlib.contextmanager
def _backend(endpoint: str | None) -> Iterator[None]:
    if endpoint:
        yield
        return
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    from moto import mock_aws

    from tablesync_local import moto_fixes

    moto_fixes.install()
    with mock_aws():
        yield


def _line(what: str, items: int, seconds: float, baseline: float | None = None) -> None:
    rate = items / seconds if seconds > 0 else float("inf")
    ratio = f"  x{baseline / seconds:5.2f} vs baseline" if baseline else ""
    print(f"{what:<28} {items:>7} items {seconds:8.2f} s {rate:9.0f} items/s{ratio}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=200, help="approximate item size in bytes")
    parser.add_argument("--segments", default="1,4,8")
    parser.add_argument("--endpoint", default=None, help="DynamoDB endpoint (default: in-process moto)")
    args = parser.parse_args()
    from kcl_app.adapters.clock import SystemClock
    from kcl_app.adapters.ledger import ensure_ledger
    from kcl_app.backfill import BackfillState, TargetSpec, backfill
    from kcl_app.core.plan import TargetRule
    from kcl_app.verify import Verifier

    segment_counts = [int(s) for s in args.segments.split(",")]
    clock = SystemClock()
    where = args.endpoint or "in-process moto"
    print(f"# {args.items} items of ~{args.size} bytes, {where}, python {sys.version.split()[0]}", flush=True)
    with _backend(args.endpoint):
        client = _client(args.endpoint)
        run = uuid.uuid4().hex[:6]
        source = f"bench-src-{run}"
        _create(client, source)
        _load(client, source, args.items, args.size, args.endpoint is None)

        _create(client, f"bench-base-{run}")
        started = time.perf_counter()
        copied = _baseline_copy(client, source, f"bench-base-{run}")
        base_copy = time.perf_counter() - started
        _line("baseline scan+put loop", copied, base_copy)
        started = time.perf_counter()
        differ = _baseline_verify(client, source, f"bench-base-{run}")
        base_verify = time.perf_counter() - started
        _line(f"baseline scan+get loop ({differ} differ)", copied, base_verify)

        for segments in segment_counts:
            table, ledger = f"bench-t{segments}-{run}", f"bench-l{segments}-{run}"
            _create(client, table)
            ensure_ledger(client, ledger)
            spec = TargetSpec(TargetRule("t", source), client, table, "exact", ledger)
            with tempfile.TemporaryDirectory() as state_dir:
                state = BackfillState.open(state_dir, source, ["t"], segments)
                started = time.perf_counter()
                report = backfill(client, source, [spec], state, clock)
                elapsed = time.perf_counter() - started
            _line(f"backfill segments={segments}", report.scanned, elapsed, base_copy)
            started = time.perf_counter()
            verified = Verifier(client, source, [spec], clock, segments=segments).run()
            elapsed = time.perf_counter() - started
            state_word = "clean" if verified.clean else "DIVERGENT"
            _line(f"verify segments={segments} ({state_word})", verified.targets["t"].source_checked, elapsed,
                  base_verify)
    return 0


if __name__ == "__main__":
    sys.exit(main())
