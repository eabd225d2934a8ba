"""The sub-commands of ``tablesync``, one module each, all registered the same way.

The convention: a command module ``kcl_app/commands/<name>.py`` exposes

- ``add_parser(subparsers) -> argparse.ArgumentParser``: registers the command (its module
  docstring is its ``--help``, see :func:`described`) and sets no handler;
- ``run(args: argparse.Namespace) -> int``: runs it and returns the exit status.

:func:`build_parser` imports each module, calls ``add_parser`` and adds the global flags
(:func:`add_global_flags`) to every command's parser, so they work after the command name too;
:func:`dispatch` sets up logging and AWS defaults, calls the chosen module's ``run`` and turns the
errors every command shares into one clear line and exit status 2. Commands get their clients and
engine from ``kcl_app.compose``; they build none themselves.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from botocore.exceptions import NoRegionError, ProfileNotFound

from kcl_app import compose, logs
from kcl_app.core.errors import ConfigError

if TYPE_CHECKING:
    from kcl_app.config import Config, TargetConfig
    from kcl_app.preflight import Scope

_USAGE_BLOCK = re.compile(r"\n\n    tablesync .*?(?=\n\n|\Z)", re.S)


class UsageError(ValueError):
    """The command line cannot work; the message says why (the command exits 2)."""


def described(doc: str | None) -> dict[str, Any]:
    """``add_parser`` keywords that make a command's module docstring its ``--help`` text: the
    literal markup and the usage block (argparse prints its own) removed, line breaks kept."""
    text = _USAGE_BLOCK.sub("", doc or "").replace("``", "`")
    return {"description": text.strip(), "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_global_flags(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The flags every command accepts, before or after its name.

    On the top-level parser they carry the defaults; on a command's parser their default is
    SUPPRESS, so that a flag given before the command name is not reset by the command's parser.
    A command that defines a flag of the same name itself (``local up --region``) keeps its own."""
    taken = set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public lookup

    def add(flag: str, **kwargs: Any) -> None:
        if flag in taken:
            return
        if not top_level:
            kwargs["default"] = argparse.SUPPRESS
        parser.add_argument(flag, **kwargs)

    add("--log-level", default=os.environ.get("TABLESYNC_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (default INFO; env TABLESYNC_LOG_LEVEL)")
    add("--log-json", action="store_true", default=False, help="log JSON lines instead of plain text")
    add("--profile", default=None,
        help="AWS named profile for every client (default: AWS_PROFILE, then the standard chain)")
    add("--region", default=None,
        help="default AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / the profile's); "
             "regions written in targets.toml win")


def version() -> str:
    """The installed distribution's version ("unknown" in a source tree that was never installed)."""
    try:
        return importlib.metadata.version("tablesync")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"kcl_app.commands.{name}")


def build_parser(names: Sequence[str], **kwargs: Any) -> argparse.ArgumentParser:
    """The `tablesync` parser with the commands `names` (keywords go to ArgumentParser)."""
    parser = argparse.ArgumentParser(prog="tablesync", **kwargs)
    parser.add_argument("--version", action="version", version=f"tablesync {version()}")
    add_global_flags(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in names:
        add_global_flags(command_module(name).add_parser(sub), top_level=False)
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, set up logging and the AWS defaults, run the command; its exit status."""
    args = parser.parse_args(None if argv is None else list(argv))
    logs.setup(args.log_level, json_lines=args.log_json)
    compose.configure_aws(profile=args.profile, region=args.region)
    name = f"tablesync {args.command}"
    try:
        return int(command_module(args.command).run(args) or 0)
    except ConfigError as exc:
        logging.getLogger("tablesync").error("configuration refused: %s", exc)
        print(f"tablesync: configuration refused: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except ProfileNotFound as exc:
        print(f"{name}: {exc}: check --profile / AWS_PROFILE (`aws configure list-profiles`)", file=sys.stderr)
        return 2
    except NoRegionError:
        print(f"{name}: no AWS region: pass --region, set AWS_REGION, or give the profile a region",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tablesync: interrupted", file=sys.stderr)
        return 130


def preflight_refuses(command: str, config: Config, *, stream: str | None = None,
                      targets: Sequence[TargetConfig] | None = None, scope: Scope | None = None,
                      endpoint: str | None = None) -> bool:
    """Run `tablesync check`'s checks before `command` starts (kcl_app.preflight): warnings and
    failures go to stderr, one line each with what to do. True when a check failed: the command
    must then start nothing and exit 2."""
    from kcl_app import preflight

    report = preflight.run_checks(config, compose.preflight_clients(config, endpoint), stream=stream,
                                  targets=targets, scope=scope)
    problems = report.table(only_problems=True)
    if problems:
        print(problems, file=sys.stderr)
    if report.failures():
        print(f"tablesync {command}: refused by the pre-flight check (details: tablesync check); nothing was "
              "started", file=sys.stderr)
        return True
    return False


def standalone(name: str, argv: Sequence[str] | None = None) -> int:
    """`python -m kcl_app.commands.<name> ARGS`: the same as `tablesync <name> ARGS`."""
    rest = sys.argv[1:] if argv is None else list(argv)
    return dispatch(build_parser([name]), [name, *rest])


# ------------------------------------------------------------------ the local emulator (local, demo)

NOT_INSTALLED = 2
"""Exit status of ``local`` and ``demo`` when the emulator distribution is not installed."""
_EMULATOR_MODULES = ("tablesync_local", "moto", "hypercorn", "h2")
INSTALL_HINT = ("install it with 'make setup' in a tablesync source checkout, "
                "or 'pip install ./tablesync_local' from one")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module object without a spec
        return False


def load_emulator(command: str, module: str = "tablesync_local.stack") -> ModuleType | None:
    """The emulator module ``module``, or None after telling the user (stderr) how to install the emulator.

    The emulator is a separate distribution (``tablesync-local``) so that the product's wheel does not
    carry it; ``local`` and ``demo`` are the only commands that need it."""
    missing = [name for name in _EMULATOR_MODULES if not _importable(name)]
    if missing:
        print(f"tablesync {command}: the local emulator is not installed (missing: {', '.join(missing)}); "
              f"{INSTALL_HINT}", file=sys.stderr)
        return None
    return importlib.import_module(module)
