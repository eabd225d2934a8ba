"""Seeding a target: export-seeding (import into a new table, or never-seen writes) vs the scan backfill.

Run: .venv/bin/python bench/seed.py [--items 100000] [--size 200] [--segments 4] [--parallel 4]

In-process moto with tablesync's emulator fixes, whose counter of the read units each table served
gives the source's read units (what DynamoDB would charge: 1 unit per 4 KB read, consistent reads).
The source holds `--items` items of about `--size` bytes. Measured in the same run, each into a
target of its own (exact mode, ledger in the same region):

* scan backfill: `kcl_app.backfill.backfill` with `--segments` parallel segments;
* seed by writes: `kcl_app.seed.seed` into an existing table (export, then `--parallel` data files);
* seed by import: `kcl_app.seed.seed` into a table that does not exist (export, then ImportTable).

The emulator exports and imports at memory speed; the real service takes minutes for either
whatever the size (it runs on its own fleet), so on AWS the time figures of the two seeds are the
service's, while the read units are what this prints. Asserts nothing; prints one line a way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"


def _item(i: int, size: int) -> dict[str, Any]:
    return {"pk": {"S": f"item-{i:08d}"}, "n": {"N": str(i)}, "tags": {"SS": ["a", f"t{i % 7}"]},
            "body": {"S": "x" * max(0, size - 40)}}


def _create(client: Any, name: str) -> None:
    client.create_table(TableName=name, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")


def _line(what: str, items: int, seconds: float, units: float, verdict: str) -> None:
    rate = items / seconds if seconds > 0 else float("inf")
    print(f"{what:<22} {items:>8} items {seconds:8.2f} s {rate:9.0f} items/s {units:>10.0f} source read units"
          f"  verify: {verdict}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=200, help="approximate item size in bytes")
    parser.add_argument("--segments", type=int, default=4, help="scan backfill segments")
    parser.add_argument("--parallel", type=int, default=4, help="data files written at once by the seed")
    parser.add_argument("--no-verify", action="store_true", help="skip the verify after each way")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    import boto3
    from moto import mock_aws

    from kcl_app.adapters.clock import SystemClock
    from kcl_app.adapters.export import DynamoImports, S3Exports
    from kcl_app.adapters.ledger import ensure_ledger
    from kcl_app.adapters.scan import TargetSpec
    from kcl_app.backfill import BackfillState, backfill
    from kcl_app.compose import boto_config
    from kcl_app.core.plan import TargetRule
    from kcl_app.seed import seed
    from kcl_app.verify import Verifier
    from tablesync_local import moto_fixes
    from tablesync_local.moto_fixes import export as emulator

    moto_fixes.install()
    clock = SystemClock()
    print(f"# {args.items} items of ~{args.size} bytes, in-process moto, python {sys.version.split()[0]}", flush=True)
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION, config=boto_config(max_pool=64))
        s3 = boto3.client("s3", region_name=REGION)
        run = uuid.uuid4().hex[:6]
        source, bucket = f"bench-src-{run}", f"bench-exports-{run}"
        _create(client, source)
        client.update_continuous_backups(TableName=source,
                                         PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
        s3.create_bucket(Bucket=bucket)
        from moto.dynamodb.models import dynamodb_backends

        backend = dynamodb_backends[ACCOUNT][REGION]
        for i in range(args.items):  # straight into the backend: loading is not what is measured
            backend.put_item(source, _item(i, args.size))

        def verdict(spec: TargetSpec) -> str:
            if args.no_verify:
                return "skipped"
            return "clean" if Verifier(client, source, [spec], clock, segments=4).run().clean else "DIVERGENT"

        def spec_for(way: str, create: bool) -> TargetSpec:
            table, ledger = f"bench-{way}-{run}", f"bench-l-{way}-{run}"
            if create:
                _create(client, table)
            ensure_ledger(client, ledger)
            return TargetSpec(TargetRule(way, source), client, table, "exact", ledger)

        spec = spec_for("scan", True)
        emulator.reset_read_units()
        with tempfile.TemporaryDirectory() as state_dir:
            started = time.perf_counter()
            report = backfill(client, source, [spec], BackfillState.open(state_dir, source, ["scan"], args.segments),
                              clock)
            elapsed = time.perf_counter() - started
        _line(f"scan backfill x{args.segments}", report.scanned, elapsed, emulator.read_units(source), verdict(spec))

        for way, create in (("writes", True), ("import", False)):
            spec = spec_for(way, create)
            emulator.reset_read_units()
            started = time.perf_counter()
            done = seed(S3Exports(client, s3, clock), DynamoImports(client, clock), source, spec, clock,
                        bucket=bucket, prefix=way, parallel=args.parallel, poll=0.2)
            elapsed = time.perf_counter() - started
            units = emulator.read_units(source)
            items = done.imported if done.way == "import" else done.read
            _line(f"export seed ({done.way})", items, elapsed, units, verdict(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
