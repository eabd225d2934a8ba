"""``tablesync check``: can this configuration replicate, here and now? One line per check.

    tablesync check [--config targets.toml] [--stream NAME] [--target NAME ...] [--endpoint URL] [--json]

Checks, each OK, WARN or FAIL with what to do: the configuration, fully validated (the file, else
TABLESYNC_CONFIG, else the environment-only configuration of one target); every source table
(exists, ACTIVE, key schema); its Kinesis streaming destination (ACTIVE, into ``--stream`` when
given, at MICROSECOND precision); the stream (exists, ACTIVE, retains changes no longer than
``stream_retention_hours``); every target (exists, the source's key schema, writable with its
credentials or role, proved by writes that cannot succeed and so change nothing); its ledger (a
target re-created after its ledger is found, with the fix) or, inline, its tombstone table.

``run``, ``backfill``, ``verify`` and ``seed`` run the same checks first and refuse to start on a FAIL.

Exit codes: 0 every check passed; 1 warnings only; 2 at least one check failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kcl_app import config as config_mod
from kcl_app import preflight
from kcl_app.commands import described, standalone
from kcl_app.compose import preflight_clients
from kcl_app.core.errors import ConfigError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check", help="pre-flight checks: config, stream, destination, source, targets, ledgers",
        **described(__doc__))
    parser.add_argument("--config", default=None,
                        help="targets.toml (default: TABLESYNC_CONFIG, else the TABLESYNC_* environment variables)")
    parser.add_argument("--stream", default=None, help="the Kinesis stream the workers read (default: the "
                        "stream each source table's destination writes to)")
    parser.add_argument("--target", action="append", default=None, help="check only this target (repeat)")
    parser.add_argument("--endpoint", default=None, help="emulator URL for every client the config names none for")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def load_config(path: str | None) -> tuple[str, config_mod.Config]:
    """(origin, config) from `path`, else TABLESYNC_CONFIG, else the environment. Raises ConfigError."""
    path = path or os.environ.get("TABLESYNC_CONFIG")
    if path:
        return path, config_mod.load(path)
    return "environment", config_mod.from_env(os.environ)


def run(args: argparse.Namespace) -> int:
    report = preflight.Report()
    origin = args.config or os.environ.get("TABLESYNC_CONFIG") or "environment"
    config = preflight.config_finding(lambda: load_config(args.config)[1], origin, report)
    if config is not None:
        chosen = None
        if args.target:
            try:
                chosen = [config.target(name) for name in args.target]
            except ConfigError as exc:
                report.add("config", "FAIL", str(exc), "pass a target named in the configuration")
        if not report.failures():
            preflight.run_checks(config, preflight_clients(config, args.endpoint), stream=args.stream,
                                 targets=chosen, report=report)
    if args.json:
        print(report.dumps())
    else:
        print(report.table())
        counts = {s: sum(f.status == s for f in report.findings) for s in ("OK", "WARN", "FAIL")}
        print(f"{report.status}: {counts['OK']} ok, {counts['WARN']} warning(s), {counts['FAIL']} failure(s)")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(standalone("check"))
