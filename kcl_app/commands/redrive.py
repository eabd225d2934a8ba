"""``tablesync redrive``: re-apply a target's parked changes through the fenced path.

    tablesync redrive --config targets.toml (--target NAME | --store _unmapped | --store _poison) [--dry-run] [--json]

Safe at any time and any number of times: a parked change older than what the target holds is a
stale no-op; an entry leaves the dead-letter store only once settled. An entry older than the
tombstone TTL (stream retention + margin) is not replayed:
its key is settled from the source's current item instead (`reread`), because the fence may no
longer remember a delete that came after it. Needs read access to the source table for those.
Reports how many entries were read, applied, stale (already superseded), re-read from the source,
re-parked (failed again: parked again with the new reason, keeping the entry's first parked time,
one more attempt counted) and still failing; `removed` counts the entries that left the store.

`--dry-run` changes nothing, neither the store nor the target: it reads every entry and says what a
redrive would do with it (apply, skip as stale, re-read from the source, leave as too old, park
again as undecodable), from a consistent read of the target's fence; see `tablesync parked` to
look at the entries themselves.

`--store _unmapped` replays the records of tables no target wanted (kept with `unmapped = "park"`)
through every target, once a mapping for their table has been added; `--store _poison` replays the
undecodable ones, after a fix. Records still unmapped or undecodable are parked anew; a record of
either store older than the tombstone TTL is left in the store (`left_too_old`): settle its table
with `verify --repair` or a backfill instead.

Progress (counts so far) goes to stderr every 5 s, the report to stdout. Metrics (EMF) are
appended to TABLESYNC_METRICS_FILE when it is set, like the workers'; otherwise none are written.

Exit codes: 0 nothing left in the store (dry run: nothing would be left); 1 some entries still
fail (or were left as too old; dry run: some would); 2 could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.metrics import for_command as metrics_for_command
from kcl_app.commands import described, standalone
from kcl_app.compose import build_engine, source_dynamodb, target_specs
from kcl_app.config import Config, load
from kcl_app.core.errors import ReplicationError
from kcl_app.pipeline import POISON_STORE, UNMAPPED_STORE
from kcl_app.ports import Clock
from kcl_app.redrive import DryRunReport, RedriveReport, Reread, dry_run, redrive
from kcl_app.verify import Verifier

EXIT_OK, EXIT_FAILING, EXIT_ERROR = 0, 1, 2
STREAM_WIDE = (UNMAPPED_STORE, POISON_STORE)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "redrive", help="re-apply a target's parked changes", **described(__doc__))
    parser.add_argument("--config", required=True, help="targets.toml")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", help="the target whose dead letters to redrive")
    which.add_argument("--store", choices=STREAM_WIDE, help="a store of records that belong to no target yet")
    parser.add_argument("--dry-run", action="store_true",
                        help="say what a redrive would do with each entry, changing nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def reread_for(config: Config, name: str, clock: Clock) -> Reread:
    """How entries too old to replay are settled: the verifier's fenced repair from the source."""
    target = config.target(name)
    spec = target_specs(config, [name])[0]
    verifier = Verifier(source_dynamodb(config), target.source_table, [spec], clock)
    return Reread(lambda key: verifier.repair_key(spec, key), clock, config.tombstone_ttl_seconds, config.precision)


def progress_printer(clock: Clock, every: float = 5.0) -> Callable[[RedriveReport], None]:
    """A progress callback that prints the counts so far to stderr, at most every `every` seconds."""
    last = [clock.monotonic()]

    def show(report: RedriveReport) -> None:
        if clock.monotonic() - last[0] < every:
            return
        last[0] = clock.monotonic()
        print(f"redrive {report.target}: so far read {report.read:,}, applied {report.applied:,}, stale "
              f"{report.stale:,}, re-read {report.reread:,}, still failing {report.still_failing:,}",
              file=sys.stderr, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    clock = SystemClock()
    stream_wide = args.store is not None
    store = args.store or args.target
    try:
        config = load(args.config)
        if not stream_wide:
            config.target(args.target)  # an unknown name is refused before anything is built
        # EMF goes where metrics go (TABLESYNC_METRICS_FILE), never to stderr: that is for people.
        metrics = metrics_for_command(config.metrics_namespace, os.environ)
        # stream-wide: what is still unmapped is parked again, so it stays in the store
        engine = build_engine(config, clock=clock, metrics=metrics, unmapped="park" if stream_wide else None)
        if stream_wide:
            reread = Reread(None, clock, config.tombstone_ttl_seconds, config.precision)
        else:
            reread = reread_for(config, args.target, clock)
    except (ReplicationError, ClientError, BotoCoreError, OSError) as exc:
        print(f"tablesync redrive: cannot run: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.dry_run:
        try:
            return _dry_run(args, engine, store, reread, stream_wide)
        except (ReplicationError, ClientError, BotoCoreError) as exc:
            print(f"tablesync redrive: stopped: {exc}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            engine.close()
    try:
        report = redrive(engine.pipeline, engine.dead_letters, store, reread=reread,
                         progress=progress_printer(clock), stream_wide=stream_wide)
    except (ReplicationError, ClientError, BotoCoreError) as exc:  # the store itself failed: entries kept
        print(f"tablesync redrive: stopped: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        engine.close()
    if args.json:
        print(json.dumps(asdict(report), sort_keys=True))
    else:
        print(f"redrive {report.target}: read {report.read}, applied {report.applied}, "
              f"stale {report.stale}, re-read from the source {report.reread}, left as too old "
              f"{report.left_too_old}, re-parked {report.reparked}, still failing {report.still_failing}, "
              f"removed {report.removed}, "
              f"unreadable (skipped, kept) {report.unreadable}")
        for line in report.skipped:
            print(f"  unreadable entry {line}")
    failing = report.still_failing + report.left_too_old + report.unreadable
    return EXIT_OK if failing == 0 else EXIT_FAILING


def _dry_run(args: argparse.Namespace, engine: Any, store: str, reread: Reread, stream_wide: bool) -> int:
    seen = None
    writer = None if stream_wide else engine.pipeline.writers.get(store)
    if writer is not None and callable(getattr(writer, "seen", None)):
        def seen(key: Any, key_id: str) -> Any:
            return writer.seen(key, key_id, time.monotonic() + 10.0)[1]
    report = dry_run(engine.dead_letters, store, seen=seen, reread=reread, precision=engine.config.precision)
    if args.json:
        print(json.dumps({"dry_run": True, **asdict(report)}, sort_keys=True))
    else:
        _print_dry_run(report)
    left = report.would_leave + report.would_park_again + report.unknown + report.unreadable
    return EXIT_OK if left == 0 else EXIT_FAILING


def _print_dry_run(report: DryRunReport) -> None:
    print(f"redrive {report.target} (dry run, nothing changed): read {report.read}, would apply "
          f"{report.would_apply}, would skip as stale {report.would_skip_stale}, would re-read from the source "
          f"{report.would_reread}, would leave as too old {report.would_leave}, would park again "
          f"{report.would_park_again}, unknown {report.unknown}, unreadable {report.unreadable}")
    for planned in report.entries:
        print(f"  {planned.entry_id}  {planned.verdict:<7}  attempts {planned.attempts}  {planned.detail}")
    for line in report.skipped:
        print(f"  unreadable entry {line}")


if __name__ == "__main__":
    sys.exit(standalone("redrive"))
