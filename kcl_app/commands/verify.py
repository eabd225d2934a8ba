"""``tablesync verify``: compare the source with every target; optionally repair through the fenced path.

    tablesync verify --config targets.toml [--target NAME ...] [--segments N] [--sample RATE]
        [--seed S] [--repair] [--json] [--quiet] [--show-values]

Both directions, in parallel scan segments with consistent reads: every source item is looked up
in each target (BatchGetItem), and every target item in the source, so that extra items are found.
Each target is compared with what it must hold: its projection and transform applied, the inline
version attribute ignored. A mismatch is re-read on both sides before it counts, so a write in
flight is not a divergence. Reported per target: missing, extra and different items (which
attributes, and how: their types, not their values, unless `--show-values`, as items often hold
personal data). `--repair` makes each divergent key hold the source's current item through
the fenced path: a change that lands in between wins (counted `superseded`). `--sample RATE`
checks a random fraction of the keys, for cheap continuous checks. Progress goes to stderr every
5 s and at the end of each pass (`--quiet`: none), the report to stdout.

Before it reads anything, the checks of `tablesync check` that concern it run (configuration,
source and target tables, key schemas; with `--repair` also write permission and the ledgers):
a failure is printed with what to do and the command exits 2.

Exit codes: 0 every target matches (or every divergence was repaired); 1 divergences remain;
2 the verification could not run (configuration, access, a table missing).

`--continuous` runs it as a service (see docs/continuous-verify.md): passes over every source
table, one starting every `--period` seconds, paced at `--read-units` read units per second and
never above `--capacity-fraction` of each table's read capacity; each page is repaired as it is
found (with `--repair`), the pass's position saved in `--state-dir` (a restart resumes it), and
metrics emitted as EMF lines on stderr. SIGTERM finishes the page, saves the state and exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.metrics import EmfMetrics
from kcl_app.commands import described, preflight_refuses, standalone
from kcl_app.compose import source_dynamodb, target_specs
from kcl_app.config import load
from kcl_app.continuous import ContinuousVerifier, PassState, state_path
from kcl_app.core.errors import ReplicationError
from kcl_app.preflight import Scope
from kcl_app.verify import TargetReport, Verifier, VerifyProgress, VerifyReport

EXIT_OK, EXIT_DIVERGENT, EXIT_ERROR = 0, 1, 2
SHOWN = 20


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "verify", help="compare the source with every target (and repair)",
        **described(__doc__))
    parser.add_argument("--config", required=True, help="targets.toml")
    parser.add_argument("--target", action="append", default=None, help="target name (repeat; default all)")
    parser.add_argument("--segments", type=int, default=4, help="parallel scan segments (default 4)")
    parser.add_argument("--sample", type=float, default=1.0, help="fraction of keys to check, in (0, 1]")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sample (default random)")
    parser.add_argument("--repair", action="store_true", help="fix divergences without overwriting newer data")
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--show-values", action="store_true",
                        help="print the differing attribute values (default: names and types only; "
                             "items often hold personal data)")
    service = parser.add_argument_group("continuous verification (--continuous)")
    service.add_argument("--continuous", action="store_true", help="run passes for ever (a long-running service)")
    service.add_argument("--period", type=float, default=86_400.0,
                         help="seconds between pass starts; a longer pass is 'behind' (default 86400)")
    service.add_argument("--read-units", type=float, default=100.0,
                         help="read units per second per table, at most (default 100)")
    service.add_argument("--capacity-fraction", type=float, default=0.1,
                         help="never more than this fraction of a table's read capacity (default 0.1)")
    service.add_argument("--state-dir", default=".tablesync/verify", help="where the pass's position is kept")
    service.add_argument("--page-size", type=int, default=None, help="items per Scan page (default: 1 MB pages)")
    service.add_argument("--once", action="store_true", help="with --continuous: stop after one pass")
    return parser


def _print_target(t: TargetReport, show_values: bool = False) -> None:
    state = "clean" if t.clean else "DIVERGENT"
    print(f"target {t.target}: {state}; checked {t.source_checked} source and {t.target_checked} target items; "
          f"missing {t.count('missing')}, extra {t.count('extra')}, different {t.count('different')}, "
          f"in flight {t.in_flight}; repaired {t.repaired}, superseded {t.superseded}, "
          f"repair failed {t.repair_failed}")
    for d in list(t.divergences.values())[:SHOWN]:
        doc = d.to_json(show_values)
        what = "; ".join(f"{a['name']}: {a['problem']} ({a['source']} != {a['target']})" for a in doc["attributes"])
        repair = f" [repair: {d.repair}]" if d.repair else ""
        print(f"  {d.kind} {json.dumps(doc['key'], sort_keys=True)}{': ' + what if what else ''}{repair}")
    if len(t.divergences) > SHOWN:
        print(f"  ... {len(t.divergences) - SHOWN} more (use --json for all)")


def _print_progress(p: VerifyProgress) -> None:
    total = f"/~{p.estimated_total:,}" if p.estimated_total else ""
    if p.done:
        when = f"done in {p.elapsed:,.0f} s"
    else:
        when = f"ETA {p.eta_seconds:,.0f} s" if p.eta_seconds is not None else "ETA unknown"
    phase = "source -> targets" if p.phase == "source" else f"{p.phase.split(' ', 1)[1]} -> source"
    print(f"verify: {phase}: {p.scanned:,}{total} items scanned, {p.rate:,.0f} items/s, {when}; "
          f"{p.divergent:,} divergent so far", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.continuous:
        return run_continuous(args)
    clock = SystemClock()
    reports: list[VerifyReport] = []
    try:
        config = load(args.config)
        chosen = [config.target(n) for n in args.target] if args.target else None
        if preflight_refuses("verify", config, targets=chosen,
                             scope=Scope(stream=False, write_probe=args.repair, ledger=args.repair)):
            return EXIT_ERROR
        source = source_dynamodb(config)
        specs = target_specs(config, args.target)
        tables = sorted({s.rule.source_table for s in specs})
        for table in tables:
            verifier = Verifier(source, table, [s for s in specs if s.rule.source_table == table], clock,
                                segments=args.segments, sample=args.sample, seed=args.seed,
                                progress=None if args.quiet else _print_progress)
            reports.append(verifier.run(repair=args.repair))
    except (ReplicationError, ClientError, BotoCoreError, OSError, ValueError, TimeoutError) as exc:
        print(f"tablesync verify: cannot verify: {exc}", file=sys.stderr)
        return EXIT_ERROR
    clean = all(r.clean for r in reports)
    if args.json:
        print(json.dumps({"clean": clean, "sources": [r.to_json(show_values=args.show_values) for r in reports]},
                         indent=2, sort_keys=True))
    else:
        for report in reports:
            print(f"source {report.source_table} (sample {report.sample:g}):")
            for target in report.targets.values():
                _print_target(target, args.show_values)
    return EXIT_OK if clean else EXIT_DIVERGENT


def run_continuous(args: argparse.Namespace) -> int:
    """The service: one ContinuousVerifier per source table, each on its own thread."""
    stop = threading.Event()
    clock = SystemClock()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve(args, stop, clock)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(args: argparse.Namespace, stop: threading.Event, clock: SystemClock) -> int:
    if args.sample != 1.0:
        print("tablesync verify: --sample does not apply to --continuous: every pass walks the whole keyspace "
              "(bound its cost with --read-units and --capacity-fraction)", file=sys.stderr)
        return EXIT_ERROR
    try:
        config = load(args.config)
        source = source_dynamodb(config)
        specs = target_specs(config, args.target)
        metrics = EmfMetrics(namespace=config.metrics_namespace)
        services = []
        for table in sorted({s.rule.source_table for s in specs}):
            mine = [s for s in specs if s.rule.source_table == table]
            verifier = Verifier(source, table, mine, clock, segments=args.segments, sample=args.sample,
                                seed=args.seed, page_limit=args.page_size)
            state = PassState.open(state_path(args.state_dir, table, [s.name for s in mine]), table,
                                   [s.name for s in mine], args.segments)
            services.append(ContinuousVerifier(verifier, state, clock, metrics, period=args.period,
                                               read_units_per_second=args.read_units,
                                               capacity_fraction=args.capacity_fraction,
                                               repair=args.repair, stop=stop))
    except (ReplicationError, ClientError, BotoCoreError, OSError, ValueError) as exc:
        print(f"tablesync verify: cannot verify: {exc}", file=sys.stderr)
        return EXIT_ERROR
    errors: list[BaseException] = []

    def serve(service: ContinuousVerifier) -> None:
        try:
            if args.once:
                service.run_pass()
            else:
                service.run_forever()
        except BaseException as exc:  # noqa: BLE001 - reported below; the other tables stop too
            errors.append(exc)
            stop.set()
        finally:
            service.verifier.close()

    threads = [threading.Thread(target=serve, args=(s,), name=f"ts-verify-{s.verifier.source_table}")
               for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(1.0)  # wakes for signals
    if errors:
        print(f"tablesync verify: stopped: {errors[0]!r}; the pass's position is saved in {args.state_dir}",
              file=sys.stderr)
        return EXIT_ERROR
    if args.once:
        verdicts = [s.state.last.verdict if s.state.last else "unfinished" for s in services]
        print(json.dumps({"sources": [s.state.last.to_json() if s.state.last else None for s in services]},
                         indent=2, sort_keys=True))
        return EXIT_OK if all(v in ("clean", "repaired") for v in verdicts) else EXIT_DIVERGENT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(standalone("verify"))
