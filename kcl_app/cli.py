"""`tablesync`: the command-line entry point. Each subcommand lives in kcl_app/commands/<name>.py
and exposes `add_parser(subparsers)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from kcl_app import logs
from kcl_app.core.errors import ConfigError

COMMANDS = ("local", "run", "demo", "status", "backfill", "verify", "redrive")

DESCRIPTION = """\
tablesync replicates DynamoDB tables one way and continuously to any number of target tables
(other regions, accounts or environments), through the table's Kinesis streaming destination and a
fleet of KCL workers. Every change is version-fenced: duplicates, reordering, replays and crashes
cannot corrupt a target.

Start with `tablesync demo` (everything on the local emulator), then see `tablesync run --help`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tablesync", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-level", default=os.environ.get("TABLESYNC_LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING or ERROR (default INFO; env TABLESYNC_LOG_LEVEL)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of plain text")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"kcl_app.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level, json_lines=args.log_json)
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:
        handler = importlib.import_module(f"kcl_app.commands.{args.command}").run
    try:
        return int(handler(args) or 0)
    except ConfigError as exc:
        logging.getLogger("tablesync").error("configuration refused: %s", exc)
        print(f"tablesync: configuration refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tablesync: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
