"""``tablesync pause``: stop writing to a target on purpose (e.g. for its maintenance).

    tablesync pause --config targets.toml --target NAME [--reason TEXT]

From the next control read of each shard process (within about 5 s, on every worker), the
target's changes are parked deliberately (durably, with the reason "paused by the operator")
instead of being sent; the other targets are not affected. `tablesync resume` undoes it, and the
parked changes are then re-applied automatically through the fenced path, at the target's
`heal_rate`. The paused targets live in the control table named by `[control] table` in the
config (created here if missing, in the source's region); `tablesync status --config` lists them.

Exit codes: 0 paused; 2 could not run (no `[control] table`, unknown target, AWS error).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.clock import SystemClock
from kcl_app.commands import described
from kcl_app.compose import control_table
from kcl_app.config import load
from kcl_app.core.errors import ReplicationError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "pause", help="park a target's changes on purpose (caught up automatically on resume)", **described(__doc__))
    p.add_argument("--config", required=True, help="the targets TOML (its [control] table holds the pause)")
    p.add_argument("--target", required=True, help="the target to pause")
    p.add_argument("--reason", default="paused by the operator", help="recorded with the pause")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
        config.target(args.target)
        control = control_table(config)
        if control is None:
            print("tablesync pause: the config has no [control] table; add e.g.\n  [control]\n  table = "
                  '"tablesync-control"\nso that every worker can see the pause', file=sys.stderr)
            return 2
        control.ensure()
        control.pause(args.target, args.reason, SystemClock().now())
    except (ReplicationError, ClientError, BotoCoreError, OSError) as exc:
        print(f"tablesync pause: cannot run: {exc}", file=sys.stderr)
        return 2
    print(f"target {args.target} paused: its changes are parked from the next control read (about 5 s); "
          f"`tablesync resume --target {args.target}` catches it up")
    return 0
