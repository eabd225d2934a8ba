"""``tablesync resume``: write to a paused target again, and catch it up.

    tablesync resume --config targets.toml --target NAME

Removes the target's pause from the control table (`[control] table`). Within about 5 s each
shard process sends the target's changes again, and re-applies what was parked during the pause
through the fenced path, at the target's `heal_rate`, with no further command.

Exit codes: 0 resumed (or was not paused); 2 could not run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.commands import described
from kcl_app.compose import control_table
from kcl_app.config import load
from kcl_app.core.errors import ReplicationError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "resume", help="write to a paused target again (its parked changes are caught up)", **described(__doc__))
    p.add_argument("--config", required=True, help="the targets TOML (its [control] table holds the pause)")
    p.add_argument("--target", required=True, help="the target to resume")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
        config.target(args.target)
        control = control_table(config)
        if control is None:
            print("tablesync resume: the config has no [control] table: no target can be paused", file=sys.stderr)
            return 2
        was = control.resume(args.target)
    except (ReplicationError, ClientError, BotoCoreError, OSError) as exc:
        print(f"tablesync resume: cannot run: {exc}", file=sys.stderr)
        return 2
    print(f"target {args.target} {'resumed' if was else 'was not paused'}")
    return 0
