"""``tablesync backfill``: copy a source table into its targets while the stream keeps replicating.

    tablesync backfill --config targets.toml --source-table T [--target NAME ...] [--segments N]
        [--read-units R] [--write-units W] [--state-dir D] [--page-size P]
        (--app KCL_APP [--stream NAME] | --skip-stream-check)

Safe only when the stream consumer started before the scan: the command first checks that the
KCL lease table `--app` exists and holds a lease for every open shard of the table's stream (found
with DescribeKinesisStreamingDestination, or `--stream`), and refuses otherwise. Progress goes to
stderr, the summary to stdout. Interrupted runs resume from `--state-dir`.

Exit codes: 0 done; 1 done but some items failed (see the summary); 2 refused or not started.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.ledger import ensure_ledger
from kcl_app.adapters.retry import error_code
from kcl_app.backfill import BackfillState, Progress, TargetSpec, backfill
from kcl_app.commands import described
from kcl_app.compose import boto_config, dynamodb_client
from kcl_app.config import Config, load
from kcl_app.core.errors import ReplicationError

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


class StreamNotReady(ReplicationError):
    """The stream consumer is not (provably) reading from a position before now."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "backfill", help="copy a source table into its targets while the stream replicates",
        **described(__doc__))
    parser.add_argument("--config", required=True, help="targets.toml")
    parser.add_argument("--source-table", required=True, help="the source table to scan")
    parser.add_argument("--target", action="append", default=None, help="target name (repeat; default all)")
    parser.add_argument("--segments", type=int, default=4, help="parallel scan segments (default 4)")
    parser.add_argument("--read-units", type=float, default=None, help="read units per second (default no limit)")
    parser.add_argument("--write-units", type=float, default=None, help="write units per second (default no limit)")
    parser.add_argument("--state-dir", default=".tablesync/backfill", help="where progress is kept")
    parser.add_argument("--page-size", type=int, default=None, help="items per Scan page (default 1 MB pages)")
    parser.add_argument("--app", default=None, help="KCL application name (= its lease table)")
    parser.add_argument("--stream", default=None, help="Kinesis stream name (default: the table's destination)")
    parser.add_argument("--skip-stream-check", action="store_true",
                        help="do not check that the stream consumer started before the scan")
    return parser


def source_client(config: Config, service: str = "dynamodb") -> Any:
    """A client for the source side (the worker's own credentials, `[source]` region and endpoint)."""
    return boto3.client(service, region_name=config.source_region, endpoint_url=config.source_endpoint_url,
                        config=boto_config(max_pool=64))


def target_specs(config: Config, names: Sequence[str] | None, source_table: str | None = None,
                 prepare: bool = False) -> list[TargetSpec]:
    """TargetSpecs for the named targets (all when None), optionally only those of `source_table`."""
    chosen = [config.target(n) for n in names] if names else list(config.targets)
    if source_table is not None:
        chosen = [t for t in chosen if t.source_table == source_table]
    specs = []
    for target in chosen:
        client = dynamodb_client(target)
        if prepare and target.mode == "exact" and target.create_ledger:
            ensure_ledger(client, target.ledger)
        specs.append(TargetSpec.from_config(target, config, client))
    return specs


def stream_of(dynamodb: Any, table: str) -> str:
    """The name of the Kinesis stream the table's streaming destination writes to."""
    try:
        answer = dynamodb.describe_kinesis_streaming_destination(TableName=table)
    except (ClientError, BotoCoreError) as exc:
        raise StreamNotReady(f"cannot find the Kinesis streaming destination of table {table!r} "
                             f"({error_code(exc)}); pass --stream NAME") from exc
    active = [d for d in answer.get("KinesisDataStreamDestinations", [])
              if d.get("DestinationStatus") in ("ACTIVE", "ENABLING")]
    if not active:
        raise StreamNotReady(f"table {table!r} has no active Kinesis streaming destination: enable it and start "
                             "the KCL worker before backfilling (changes made during the scan travel by the stream)")
    return str(active[0]["StreamArn"]).rsplit("/", 1)[-1]


def check_stream_consumer(dynamodb: Any, kinesis: Any, app: str, stream: str) -> list[str]:
    """Check that the KCL application `app` holds a lease for every open shard of `stream`.

    A lease checkpointed at LATEST that no worker owns yet is refused: the consumer would start
    reading only when a worker takes it, after changes the scan has already missed.
    Returns the open shard ids. Raises StreamNotReady with the reason."""
    try:
        leases: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": app, "ConsistentRead": True}
        while True:
            page = dynamodb.scan(**kwargs)
            leases += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        raise StreamNotReady(
            f"the KCL lease table {app!r} does not exist, so no stream consumer has started. A backfill is only "
            "safe when the consumer reads the stream from a position before the scan begins (changes made "
            "during the scan reach the targets through the stream). Start the worker (tablesync run) and wait "
            "until it holds a lease for every shard, or pass --skip-stream-check if those changes will reach "
            "the targets another way (e.g. a replay from TRIM_HORIZON).") from exc
    by_shard = {str(lease["leaseKey"]["S"]).rsplit(":", 1)[-1]: lease for lease in leases if "leaseKey" in lease}
    shards: list[dict[str, Any]] = []
    page = kinesis.list_shards(StreamName=stream)
    shards += page["Shards"]
    while page.get("NextToken"):
        page = kinesis.list_shards(NextToken=page["NextToken"])
        shards += page["Shards"]
    open_ids = [s["ShardId"] for s in shards if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})]
    missing = [s for s in open_ids if s not in by_shard]
    if missing:
        raise StreamNotReady(f"the KCL lease table {app!r} has no lease for open shard(s) {missing} of stream "
                             f"{stream!r}: the consumer is not reading them yet; wait for the worker's shard "
                             "sync (or pass --skip-stream-check)")
    latest = [s for s in open_ids if by_shard[s].get("checkpoint", {}).get("S") == "LATEST"
              and not by_shard[s].get("leaseOwner")]
    if latest:
        raise StreamNotReady(f"lease(s) {latest} of {app!r} start at LATEST and no worker has taken them: "
                             "changes made before a worker starts would be missed; start the worker first")
    return open_ids


def _print_progress(progress: Progress) -> None:
    eta = f"ETA {progress.eta_seconds:,.0f} s" if progress.eta_seconds is not None else "ETA unknown"
    total = f"/~{progress.estimated_total:,}" if progress.estimated_total else ""
    print(f"backfill: {progress.scanned:,}{total} items scanned, {progress.rate:,.0f} items/s, {eta}; "
          f"written {progress.written:,}, skipped {progress.skipped:,}, failed {progress.failed:,}",
          file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
        source = source_client(config)
        if not args.skip_stream_check:
            if not args.app:
                raise StreamNotReady("--app KCL_APP is required to check that the stream consumer started "
                                     "before the scan (or pass --skip-stream-check)")
            stream = args.stream or stream_of(source, args.source_table)
            check_stream_consumer(source, source_client(config, "kinesis"), args.app, stream)
        specs = target_specs(config, args.target, args.source_table, prepare=True)
        if not specs:
            raise StreamNotReady(f"no configured target replicates table {args.source_table!r}")
        if args.segments < 1:
            raise StreamNotReady("--segments must be at least 1")
        state = BackfillState.open(args.state_dir, args.source_table, [s.name for s in specs], args.segments)
    except (ReplicationError, ClientError, BotoCoreError, OSError, ValueError) as exc:
        print(f"tablesync backfill: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        report = backfill(source, args.source_table, specs, state, SystemClock(),
                          read_units_per_second=args.read_units, write_units_per_second=args.write_units,
                          page_limit=args.page_size, progress=_print_progress)
    except (ReplicationError, ClientError, BotoCoreError, OSError) as exc:
        print(f"tablesync backfill: stopped: {exc}; progress is saved in {state.path}, "
              "rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="tablesync")
    _sub = _parser.add_subparsers(dest="command", required=True)
    add_parser(_sub)
    sys.exit(run(_parser.parse_args()))
