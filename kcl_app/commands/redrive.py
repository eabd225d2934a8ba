"""``tablesync redrive``: re-apply a target's parked changes through the fenced path.

    tablesync redrive --config targets.toml --target NAME [--json]

Safe at any time and any number of times: a parked change older than what the target holds is a
stale no-op; an entry leaves the dead-letter store only once settled. Reports how many entries were
read, applied, stale (already superseded) and still failing (parked again with a fresh reason).

Exit codes: 0 nothing left failing; 1 some entries still fail; 2 could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.compose import build_engine
from kcl_app.config import load
from kcl_app.core.errors import ReplicationError
from kcl_app.redrive import redrive

EXIT_OK, EXIT_FAILING, EXIT_ERROR = 0, 1, 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "redrive", help="re-apply a target's parked changes", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="targets.toml")
    parser.add_argument("--target", required=True, help="the target whose dead letters to redrive")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
        config.target(args.target)
        engine = build_engine(config)
    except (ReplicationError, ClientError, BotoCoreError, OSError) as exc:
        print(f"tablesync redrive: cannot run: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        report = redrive(engine.pipeline, engine.dead_letters, args.target)
    finally:
        engine.close()
    if args.json:
        print(json.dumps(asdict(report), sort_keys=True))
    else:
        print(f"redrive {report.target}: read {report.read}, applied {report.applied}, "
              f"stale {report.stale}, still failing {report.still_failing}, removed {report.removed}")
    return EXIT_OK if report.still_failing == 0 else EXIT_FAILING


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="tablesync")
    _sub = _parser.add_subparsers(dest="command", required=True)
    add_parser(_sub)
    sys.exit(run(_parser.parse_args()))
