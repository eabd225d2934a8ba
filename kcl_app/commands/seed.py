"""``tablesync seed``: fill a target from an export of its source table, reading nothing from the table.

    tablesync seed --config targets.toml --target NAME --bucket BUCKET [--prefix P] [--bucket-owner ID]
        [--parallel N] [--write-units W] [--timeout S] [--poll S]
        (--app KCL_APP [--stream NAME] | --skip-stream-check)

The source is exported with ExportTableToPointInTime (DYNAMODB_JSON to s3://BUCKET/PREFIX/), which
reads the table's point-in-time-recovery data and consumes no read capacity: point-in-time recovery
must be on (the command says how to turn it on when it is not). Then:

  * a target table that does not exist yet is created by ImportTable from the export (no write
    units; the source's key schema, on-demand billing). Only for targets without projection or
    transform, and in exact mode only with an empty ledger;
  * an existing target table is written from the export's data files, read from S3 in parallel,
    with the backfill's rule: an item is written only where the target has never seen its key.

As with backfill, the stream consumer must read from a position at or before the export: the
command first checks that the KCL lease table `--app` holds a lease for every open shard of the
table's stream, and refuses an export that is older than that check. Before writing into an existing
target, the checks of `tablesync check` run (a target with another key schema, no write permission,
a target re-created after its ledger, a stream that retains longer than configured: refused with
what to do). Every change after the export then reaches the target through the stream; keep the
worker running (with this target in its configuration) throughout. docs/backfill.md explains why the result converges.

It is a command of its own rather than a mode of `backfill`: it needs a bucket and point-in-time
recovery, it can create the target table, it costs S3 and export charges instead of read units on
the source, and its progress is the export's and the import's, not a scan's. Rerunning it is safe
(its writes are conditional); each run makes a new export.

Progress goes to stderr, the summary (JSON) to stdout. Exit codes: 0 done; 1 done but some items
failed, or the export/import failed; 2 refused or not started.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app import preflight
from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.consumer import check_stream_consumer, stream_of
from kcl_app.commands import UsageError, described, preflight_refuses, standalone
from kcl_app.compose import seed_ports, source_dynamodb, source_kinesis, target_specs
from kcl_app.config import load
from kcl_app.core.errors import ReplicationError
from kcl_app.ports import PitrDisabled
from kcl_app.seed import SeedRefused, seed

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "seed", help="fill a target from an export of its source (no read units on the source)",
        **described(__doc__))
    parser.add_argument("--config", required=True, help="targets.toml")
    parser.add_argument("--target", required=True, help="the target to seed (its source_table is exported)")
    parser.add_argument("--bucket", required=True, help="S3 bucket the export is written to")
    parser.add_argument("--prefix", default=None, help="S3 key prefix (default tablesync-seed/<source>/<target>)")
    parser.add_argument("--bucket-owner", default=None, help="account id owning the bucket, if not the source's")
    parser.add_argument("--parallel", type=int, default=4, help="data files read and written at once (default 4)")
    parser.add_argument("--write-units", type=float, default=None,
                        help="write units per second on the target (default no limit)")
    parser.add_argument("--timeout", type=float, default=6 * 3600.0,
                        help="seconds to wait for the export and for the import (default 6 h)")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between progress checks (default 10)")
    parser.add_argument("--app", default=None, help="KCL application name (= its lease table)")
    parser.add_argument("--stream", default=None, help="Kinesis stream name (default: the table's destination)")
    parser.add_argument("--skip-stream-check", action="store_true",
                        help="do not check that the stream consumer reads from before the export")
    return parser


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    clock = SystemClock()
    try:
        if args.parallel < 1:
            raise UsageError("--parallel must be at least 1")
        config = load(args.config)
        target = config.target(args.target)
        source_table = target.source_table
        stream_since = None
        if not args.skip_stream_check and not args.app:
            raise UsageError("--app KCL_APP is required to check that the stream consumer reads from "
                             "before the export (or pass --skip-stream-check)")
        exports, imports = seed_ports(config, target, clock)
        # an existing target is written: the checks of `tablesync check` first (a missing one is imported)
        if imports.exists(target.table) and preflight_refuses(
                "seed", config, stream=args.stream, targets=[target],
                scope=preflight.Scope(stream=not args.skip_stream_check)):
            return EXIT_REFUSED
        if not args.skip_stream_check:
            source = source_dynamodb(config)
            stream = args.stream or stream_of(source, source_table)
            check_stream_consumer(source, source_kinesis(config), args.app, stream)
            stream_since = clock.now()
        (spec,) = target_specs(config, [target.name], prepare=True)
    except (ReplicationError, ClientError, BotoCoreError, OSError, ValueError) as exc:
        print(f"tablesync seed: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    prefix = args.prefix if args.prefix is not None else f"tablesync-seed/{source_table}/{target.name}"
    try:
        report = seed(exports, imports, source_table, spec, clock, bucket=args.bucket, prefix=prefix,
                      bucket_owner=args.bucket_owner, stream_since=stream_since, parallel=args.parallel,
                      write_units_per_second=args.write_units, timeout=args.timeout, poll=args.poll,
                      progress=_say)
    except (SeedRefused, PitrDisabled) as exc:
        print(f"tablesync seed: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (ReplicationError, ClientError, BotoCoreError, OSError) as exc:
        print(f"tablesync seed: failed: {exc}; rerunning is safe (a new export is made)", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(standalone("seed"))
