"""`tablesync`: the command-line entry point. Each subcommand lives in kcl_app/commands/<name>.py
and exposes `add_parser(subparsers)` and `run(args) -> int` (the convention and the shared
dispatch are in kcl_app/commands/__init__.py)."""

from __future__ import annotations

import argparse
import sys

from kcl_app import commands

COMMANDS = ("local", "run", "demo", "check", "status", "backfill", "seed", "verify", "redrive", "parked",
            "pause", "resume")

DESCRIPTION = """\
tablesync replicates DynamoDB tables one way and continuously to any number of target tables
(other regions, accounts or environments), through the table's Kinesis streaming destination and a
fleet of KCL workers. Every change is version-fenced: duplicates, reordering, replays and crashes
cannot corrupt a target.

Start with `tablesync demo` (everything on the local emulator), then see `tablesync run --help`.
The global flags (--log-level, --log-json, --profile, --region) go before or after the command."""


def build_parser() -> argparse.ArgumentParser:
    return commands.build_parser(COMMANDS, description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: list[str] | None = None) -> int:
    return commands.dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
