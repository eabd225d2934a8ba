"""Median time of one 25-item TransactWriteItems against in-process moto, by table size.

Run: .venv/bin/python bench/transactions.py [--sizes 0,1000,10000,50000] [--repeat 15]

Measures moto as shipped first (its rollback deep-copies every table in the request), then the same
workload after ``tablesync_local.moto_fixes.install()`` (which snapshots only the touched items).
Each transaction writes 25 items with a version condition, as tablesync's ledger writer does.
Prints one line per (implementation, table size) to stdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

ACCOUNT, REGION = "123456789012", "us-east-1"


def _transaction(round_no: int, table_size: int) -> list[dict[str, Any]]:
    """25 conditional puts on existing keys (or new ones when the table is empty)."""
    actions = []
    for i in range(25):
        index = (round_no * 25 + i) % table_size if table_size else round_no * 25 + i
        actions.append({"Put": {
            "TableName": "bench",
            "Item": {"pk": {"S": f"k{index}"}, "v": {"N": str(1_000_000 + round_no)}, "body": {"S": "x" * 200}},
            "ConditionExpression": "attribute_not_exists(pk) OR v < :v",
            "ExpressionAttributeValues": {":v": {"N": str(1_000_000 + round_no)}},
        }})
    return actions


def _measure(table_size: int, repeat: int) -> float:
    """Median seconds per transaction on a fresh table of ``table_size`` items."""
    import boto3
    from moto import mock_aws
    from moto.dynamodb.models import dynamodb_backends

    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        client.create_table(TableName="bench", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                            BillingMode="PAY_PER_REQUEST")
        backend = dynamodb_backends[ACCOUNT][REGION]
        for i in range(table_size):  # straight into the backend: loading is not what we measure
            backend.put_item("bench", {"pk": {"S": f"k{i}"}, "v": {"N": "0"}, "body": {"S": "x" * 200}})
        client.transact_write_items(TransactItems=_transaction(0, table_size))  # warm-up
        timings = []
        for round_no in range(1, repeat + 1):
            started = time.perf_counter()
            client.transact_write_items(TransactItems=_transaction(round_no, table_size))
            timings.append(time.perf_counter() - started)
        return statistics.median(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=15, help="transactions per size with the fix")
    parser.add_argument("--repeat-unfixed", type=int, default=3,
                        help="transactions per size without the fix (each can take seconds)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(name, value)

    results: dict[tuple[str, int], float] = {}
    for size in sizes:  # moto as shipped: must run before install(), which patches the process for good
        results[("moto 5.2.5", size)] = _measure(size, args.repeat_unfixed)
    from tablesync_local import moto_fixes

    moto_fixes.install()
    for size in sizes:
        results[("with fix", size)] = _measure(size, args.repeat)

    print(f"{'implementation':<12} {'table items':>11} {'median ms / 25-item tx':>24}")
    for (name, size), seconds in results.items():
        print(f"{name:<12} {size:>11,} {seconds * 1000:>24.1f}")
    for size in sizes:
        ratio = results[("moto 5.2.5", size)] / results[("with fix", size)]
        print(f"speed-up at {size:,} items: {ratio:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
