"""``tablesync local up | down | info``: the embedded AWS emulator on 127.0.0.1.

``up`` starts one emulator process (moto: Kinesis, DynamoDB + Streams, STS, SQS, S3, IAM,
CloudFormation; HTTP/1.1 and h2c on one port; the Kinesis streaming destination emulated),
returns once it answers and prints eval-able ``export AWS_...`` lines. It writes
``stack.json`` (pid, port, endpoint, log) and ``stack.log`` into the state directory:
``--state-dir``, else ``$TABLESYNC_HOME/local``, else ``./.tablesync/local``.
``down`` stops it (SIGTERM, then SIGKILL after ``--timeout``) and removes the state file.
``info`` prints the state and whether it answers (exit 0 only when it does).

The emulator is its own distribution, ``tablesync-local``, installed by ``make setup`` and not part of
the ``tablesync`` wheel; without it this command (and ``demo``) exits 2 and says how to install it.

Exit codes: 0 success, 1 refused or failed (message on stderr, one line), 2 emulator not installed.
Runnable on its own: ``python -m kcl_app.commands.local up --port 4566``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import ModuleType
from typing import Any

from kcl_app.commands import NOT_INSTALLED, described, load_emulator, standalone

DEFAULT_PORT = 4566
DEFAULT_REGION = "us-east-1"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``local`` with its sub-commands on an argparse subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "local", help="run the embedded AWS emulator (moto over HTTP/1.1 + h2c)",
        **described(__doc__))
    sub = parser.add_subparsers(dest="local_command", required=True)
    up = sub.add_parser("up", help="start the emulator and print export lines")
    up.add_argument("--port", type=int, default=DEFAULT_PORT)
    up.add_argument("--region", default=DEFAULT_REGION, help="region for the printed exports")
    up.add_argument("--foreground", action="store_true", help="serve in this process until Ctrl-C")
    up.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for it to answer")
    down = sub.add_parser("down", help="stop the emulator")
    down.add_argument("--timeout", type=float, default=10.0, help="seconds before SIGKILL")
    sub.add_parser("info", help="show the emulator's state")
    for p in (up, down, sub.choices["info"]):
        p.add_argument("--state-dir", default=None, help="default: $TABLESYNC_HOME/local or ./.tablesync/local")
    return parser


def _fail(message: str) -> int:
    print(f"tablesync local: {message}", file=sys.stderr)
    return 1


def _running(stack: ModuleType, directory: Any) -> dict[str, Any] | None:
    """The recorded state if its process is alive; a stale state file is removed."""
    state: dict[str, Any] | None = stack.read_state(directory)
    if state is None:
        return None
    if not stack.pid_alive(int(state.get("pid", 0)) or -1):
        stack.remove_state(directory)
        return None
    return state


def _exports(stack: ModuleType, endpoint: str, region: str) -> str:
    env = stack.LocalStack(port=int(endpoint.rsplit(":", 1)[1])).env(region)
    return "\n".join(f"export {k}={v}" for k, v in env.items())


def _up(stack: ModuleType, args: argparse.Namespace) -> int:
    directory = stack.state_dir(args.state_dir)
    state = _running(stack, directory)
    if state is not None:
        return _fail(f"already running at {state['endpoint']} (pid {state['pid']}); "
                     "run 'tablesync local down' first")
    if stack.port_in_use(args.port):
        return _fail(f"port {args.port} on {stack.HOST} is already in use; choose another with --port")
    log_path = directory / stack.LOG_FILE
    if args.foreground:
        return _foreground(stack, args, directory)
    try:
        running = stack.start_subprocess(args.port, log_path, args.timeout, detach=True)
    except stack.StackError as exc:
        return _fail(str(exc).replace("\n", " | "))
    stack.write_state(directory, {"pid": running.pid, "port": running.port, "endpoint": running.endpoint,
                                  "log": str(log_path), "started": time.time()})
    print(f"# tablesync local stack at {running.endpoint} (pid {running.pid}; log {log_path})")
    print(_exports(stack, running.endpoint, args.region))
    return 0


def _foreground(stack: ModuleType, args: argparse.Namespace, directory: Any) -> int:
    import logging

    from tablesync_local import server

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint = f"http://{stack.HOST}:{args.port}"
    stack.write_state(directory, {"pid": os.getpid(), "port": args.port, "endpoint": endpoint,
                                  "log": None, "started": time.time()})
    print(f"# tablesync local stack at {endpoint} (pid {os.getpid()}; foreground, Ctrl-C stops)")
    print(_exports(stack, endpoint, args.region), flush=True)
    try:
        return 1 if server.serve_forever(stack.HOST, args.port) else 0
    finally:
        stack.remove_state(directory)


def _down(stack: ModuleType, args: argparse.Namespace) -> int:
    directory = stack.state_dir(args.state_dir)
    state = _running(stack, directory)
    if state is None:
        print("tablesync local: not running")
        return 0
    if not stack.stop_process(int(state["pid"]), args.timeout):
        return _fail(f"pid {state['pid']} did not stop")
    stack.remove_state(directory)
    print(f"tablesync local: stopped (pid {state['pid']})")
    return 0


def _info(stack: ModuleType, args: argparse.Namespace) -> int:
    directory = stack.state_dir(args.state_dir)
    state = _running(stack, directory)
    if state is None:
        print(f"tablesync local: not running (state dir {directory})")
        return 1
    answers = stack.health(state["endpoint"], timeout=2.0) is not None
    print(json.dumps({**state, "state_dir": str(directory), "answers": answers}, indent=2))
    return 0 if answers else 1


def run(args: argparse.Namespace) -> int:
    """Dispatch ``tablesync local <up|down|info>``."""
    stack = load_emulator("local")
    if stack is None:
        return NOT_INSTALLED
    handlers = {"up": _up, "down": _down, "info": _info}
    return handlers[args.local_command](stack, args)


def main(argv: list[str] | None = None) -> int:
    return standalone("local", argv)


if __name__ == "__main__":
    sys.exit(main())
