"""``tablesync backfill``: copy a source table into its targets while the stream keeps replicating.

    tablesync backfill --config targets.toml --source-table T [--target NAME ...] [--segments N]
        [--read-units R] [--write-units W] [--state-dir D] [--page-size P] [--restart]
        [--reset-ledger --target NAME] (--app KCL_APP [--stream NAME] | --skip-stream-check)

Safe only when the stream consumer started before the scan: the command first checks that the
KCL lease table `--app` exists and holds a lease for every open shard of the table's stream (found
with DescribeKinesisStreamingDestination, or `--stream`), and refuses otherwise; before that the
checks of `tablesync check` run (a missing target, another key schema, no write permission, a
target re-created after its ledger: refused with what to do). Progress goes to stderr, the summary
to stdout. Interrupted runs (Ctrl-C: every segment stops at its next page boundary and the command
says what was done) resume from `--state-dir`; `--restart` ignores the saved progress.

`--reset-ledger` (with `--target NAME`, exact mode) is for a target table that was deleted and
re-created: its ledger still remembers every key, so the backfill would skip them all as already
seen. It deletes the ledger rows (each only if unchanged since read: rows the stream writes
meanwhile stay) and then backfills. It is refused unless the check finds that target re-created.
Hazard: the forgotten versions and tombstones no longer fence changes older than the reset; replays
from before it may re-apply old values until newer changes arrive (run `verify --repair` after).

Exit codes: 0 done; 1 done but some items failed (see the summary); 2 refused or not started.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app import preflight
from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.consumer import check_stream_consumer, stream_of
from kcl_app.adapters.ledger import reset_ledger
from kcl_app.backfill import BackfillState, Interrupted, Progress, backfill
from kcl_app.commands import UsageError, described, preflight_refuses, standalone
from kcl_app.compose import preflight_clients, source_dynamodb, source_kinesis, target_specs
from kcl_app.config import Config, load
from kcl_app.core.errors import ReplicationError

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


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
    parser.add_argument("--restart", action="store_true", help="ignore the saved progress and scan from the start")
    parser.add_argument("--reset-ledger", action="store_true",
                        help="for a re-created target (--target NAME): forget its ledger's keys first (see above)")
    return parser


def _print_progress(progress: Progress) -> None:
    eta = f"ETA {progress.eta_seconds:,.0f} s" if progress.eta_seconds is not None else "ETA unknown"
    total = f"/~{progress.estimated_total:,}" if progress.estimated_total else ""
    print(f"backfill: {progress.scanned:,}{total} items scanned, {progress.rate:,.0f} items/s, {eta}; "
          f"written {progress.written:,}, skipped {progress.skipped:,}, failed {progress.failed:,}",
          file=sys.stderr, flush=True)


def _reset_ledgers(config: Config, args: argparse.Namespace) -> None:
    """`--reset-ledger`: for each `--target`, refused unless the check finds it re-created."""
    if not args.target:
        raise UsageError("--reset-ledger needs --target NAME (the re-created target whose ledger to reset)")
    chosen = [config.target(name) for name in args.target]
    report = preflight.run_checks(config, preflight_clients(config), targets=chosen,
                                  scope=preflight.Scope(stream=False, write_probe=False))
    recreated = {f.check.split(" ", 1)[1] for f in report.findings if f.code == preflight.RECREATED_TARGET}
    for target in chosen:
        if target.name not in recreated:
            raise UsageError(f"--reset-ledger: the check does not find target {target.name} re-created after its "
                             "ledger, so its ledger is kept (resetting it would forget the fence); see "
                             "tablesync check")
        client = preflight_clients(config).targets[target.name]
        deleted, kept = reset_ledger(client, target.ledger, time.time)
        print(f"backfill: ledger {target.ledger} of target {target.name} reset: {deleted:,} rows forgotten, "
              f"{kept:,} kept (written meanwhile)", file=sys.stderr, flush=True)


def _interrupted(exc: Interrupted) -> int:
    r = exc.report
    print(f"tablesync backfill: interrupted: {r.scanned:,} items scanned so far; written "
          f"{sum(r.written.values()):,}, skipped {sum(r.skipped.values()):,}, failed {sum(r.failed.values()):,}; "
          f"progress is saved in {exc.state_path}: rerun the same command to resume (--restart to start over)",
          file=sys.stderr)
    return 130


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
        if not args.skip_stream_check and not args.app:
            raise UsageError("--app KCL_APP is required to check that the stream consumer started "
                             "before the scan (or pass --skip-stream-check)")
        if args.reset_ledger:
            _reset_ledgers(config, args)
        chosen = [t for t in ([config.target(n) for n in args.target] if args.target else config.targets)
                  if t.source_table == args.source_table]
        if chosen and preflight_refuses("backfill", config, stream=args.stream, targets=chosen,
                                        scope=preflight.Scope(stream=not args.skip_stream_check)):
            return EXIT_REFUSED
        source = source_dynamodb(config)
        if not args.skip_stream_check:
            stream = args.stream or stream_of(source, args.source_table)
            check_stream_consumer(source, source_kinesis(config), args.app, stream)
        specs = target_specs(config, args.target, args.source_table, prepare=True)
        if not specs:
            raise UsageError(f"no configured target replicates table {args.source_table!r}")
        if args.segments < 1:
            raise UsageError("--segments must be at least 1")
        state = BackfillState.open(args.state_dir, args.source_table, [s.name for s in specs], args.segments,
                                   restart=args.restart)
    except (ReplicationError, ClientError, BotoCoreError, OSError, ValueError) as exc:
        print(f"tablesync backfill: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        report = backfill(source, args.source_table, specs, state, SystemClock(),
                          read_units_per_second=args.read_units, write_units_per_second=args.write_units,
                          page_limit=args.page_size, progress=_print_progress)
    except Interrupted as exc:
        return _interrupted(exc)
    except (ReplicationError, ClientError, BotoCoreError, OSError) as exc:
        print(f"tablesync backfill: stopped: {exc}; progress is saved in {state.path}, "
              "rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(standalone("backfill"))
