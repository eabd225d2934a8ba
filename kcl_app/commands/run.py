"""``tablesync run``: run the KCL MultiLangDaemon with tablesync's record processor.

    tablesync run --properties FILE [--config targets.toml] [--stream NAME] [--app NAME]
                  [--region R] [--endpoint URL] [--initial-position POS]
                  [--log-file PATH] [--fleet-metrics-interval S]
                  [--auto-scaling-group NAME --lifecycle-hook NAME]

Steps: 1 render the properties template (placeholders ``{python}``, ``{config}``, ``{stream}``,
``{app}``, ``{region}``, ``{endpoint}``; flags override keys; every key checked against KCL
3.1.3's) into a private temporary file; 2 start the daemon and wait: SIGTERM/SIGINT become a
graceful stop (record processors checkpoint; the daemon gets ``shutdownGraceMillis`` + 10 s
before being killed). The KCL creates and owns its lease tables.

Beside the daemon (kcl_app/supervisor.py): every ``--fleet-metrics-interval`` seconds (30; 0 =
off) the lease table is read and the fleet's work published as EMF (``LeasesToProcess``, ...:
see infra/README.md); with ``--auto-scaling-group`` and ``--lifecycle-hook``, the instance
metadata is polled and, when the group terminates this instance, the worker stops as on SIGTERM
and then completes the termination hook. The daemon gets a ``workerId`` (``<host>:<8 hex digits>``) unless
the template sets one, so the figures know which leases are this worker's.

Before step 1 the pre-flight checks of ``tablesync check`` run (configuration, source table,
destination, stream, targets, ledgers): on a failure ``run`` prints the finding, starts nothing
(no lease table, no lease) and exits 2; warnings are printed and the daemon starts.

Without ``--config`` (and TABLESYNC_CONFIG) the environment-only configuration of one target is
used (``TABLESYNC_SOURCE_TABLE``, ``TABLESYNC_TARGET_TABLE``, ``TABLESYNC_TARGET_REGION``, ...):
the record processors inherit the environment and read it the same way.

``--endpoint`` points Kinesis, DynamoDB and CloudWatch at an emulator (switching the Kinesis
client to JSON: moto cannot read CBOR) and supplies dummy credentials when none are set; the
record processors get it as ``AWS_ENDPOINT_URL``, so targets without an ``endpoint_url`` are
written there too. The daemon logs JSON lines through the packaged ``kcl_app/logback.xml``; the environment variable
TABLESYNC_LOGBACK_CONFIG names another logback file instead.

``--initial-position`` (TRIM_HORIZON, LATEST, AT_TIMESTAMP:<epoch seconds or ISO-8601>) only
applies to shards without a lease: to replay, use it with a new ``--app``.

Exit status: 0 after a requested stop completed in time; 2 for a bad command line or template;
otherwise non-zero: the daemon's own status when it died, 1 when it exited by itself with 0
or had to be killed. Runnable on its own: ``python -m kcl_app.commands.run ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from kcl_app import daemon, supervisor
from kcl_app.commands import UsageError, described, preflight_refuses, standalone
from kcl_app.config import from_env, load

log = logging.getLogger(__name__)

GRACE_MARGIN_S = 10.0
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run`` on an argparse subparsers object (the global ``--region``/``--profile`` apply)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run the KCL daemon with the tablesync record processor",
        **described(__doc__))
    parser.add_argument("--properties", required=True, type=Path, help="KCL properties template")
    parser.add_argument("--config", type=Path, default=None,
                        help="targets file given to the processor (default: TABLESYNC_CONFIG, else the "
                             "TABLESYNC_* environment variables of the one-target configuration)")
    parser.add_argument("--stream", help="Kinesis stream name (streamName; replaces streamArn)")
    parser.add_argument("--app", help="KCL application name (applicationName; names the lease table)")
    parser.add_argument("--endpoint", help="emulator URL for Kinesis, DynamoDB and CloudWatch")
    parser.add_argument("--initial-position", metavar="POS",
                        help="TRIM_HORIZON | LATEST | AT_TIMESTAMP:<epoch seconds or ISO-8601>")
    parser.add_argument("--log-file", type=Path, help="append the daemon's log here (default: stderr)")
    parser.add_argument("--fleet-metrics-interval", type=float, default=30.0, metavar="SECONDS",
                        help="publish the fleet's work (EMF: LeasesToProcess, ...) every SECONDS; 0 = off")
    parser.add_argument("--auto-scaling-group", metavar="NAME",
                        help="with --lifecycle-hook: leave this group gracefully when it terminates us")
    parser.add_argument("--lifecycle-hook", metavar="NAME",
                        help="termination lifecycle hook completed after the graceful stop")
    # A worker's log is read by machines: JSON lines, the format of the daemon's and processors'
    # (this default overrides the global --log-json, so `tablesync run` always logs JSON).
    parser.set_defaults(log_json=True)
    return parser


def initial_position_overrides(value: str) -> dict[str, str | None]:
    """Property overrides for ``--initial-position`` (exactly one of the two position keys)."""
    upper = value.strip().upper()
    if upper in ("TRIM_HORIZON", "LATEST"):
        return {"initialPositionInStream": upper, "initialPositionInStreamExtended": None}
    if upper.startswith("AT_TIMESTAMP:"):
        when = value.strip()[len("AT_TIMESTAMP:"):]
        try:
            seconds = int(float(when))
        except ValueError:
            try:
                parsed = datetime.fromisoformat(when.replace("Z", "+00:00"))
            except ValueError as exc:
                raise UsageError(f"--initial-position: cannot read the time {when!r}") from exc
            if parsed.tzinfo is None:
                raise UsageError(f"--initial-position: {when!r} needs a time zone (e.g. Z)") from None
            seconds = int(parsed.timestamp())
        return {"initialPositionInStream": None, "initialPositionInStreamExtended": str(seconds)}
    raise UsageError(f"--initial-position: expected TRIM_HORIZON, LATEST or AT_TIMESTAMP:<time>, got {value!r}")


def build_properties(args: argparse.Namespace, environ: dict[str, str]) -> str:
    """Render ``args.properties`` for this command line (see the module doc). Raises UsageError."""
    python = sys.executable
    if not python or " " in python:
        raise UsageError(f"the interpreter path {python!r} is unusable in executableName (spaces)")
    substitutions = {"python": python}
    overrides: dict[str, str | None] = {}
    path = args.config or (Path(environ["TABLESYNC_CONFIG"]) if environ.get("TABLESYNC_CONFIG") else None)
    if path is not None:
        config = path.resolve()
        if not config.is_file():
            raise UsageError(f"--config {path}: no such file")
        if " " in str(config):
            raise UsageError(f"--config {config}: the path must not contain spaces (executableName)")
        substitutions["config"] = str(config)
    region = args.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if args.stream:
        substitutions["stream"] = args.stream
        overrides.update(streamName=args.stream, streamArn=None)
    if args.app:
        substitutions["app"] = args.app
        overrides["applicationName"] = args.app
    if region:
        substitutions["region"] = region
        if args.region:
            overrides["regionName"] = args.region
    if args.endpoint:
        substitutions["endpoint"] = args.endpoint
        overrides.update(kinesisEndpoint=args.endpoint, dynamoDBEndpoint=args.endpoint)
        overrides["cloudWatchClient.endpointOverride"] = args.endpoint
    if args.initial_position:
        overrides.update(initial_position_overrides(args.initial_position))
    try:
        template = args.properties.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--properties {args.properties}: {exc.strerror or exc}") from exc
    if path is None:  # the environment-only configuration: the processors read the environment
        template = template.replace("--config {config}", "")
    try:
        return daemon.render_properties(template, substitutions, overrides)
    except daemon.PropertiesError as exc:
        flag = {"stream": "--stream", "app": "--app", "region": "--region", "endpoint": "--endpoint"}
        hint = next((f" (give {f})" for name, f in flag.items() if f"{{{name}}}" in str(exc)), "")
        raise UsageError(f"{args.properties}: {exc}{hint}") from exc


def daemon_environment(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, str]:
    """The daemon's environment (inherited by every record processor)."""
    env = dict(environ)
    if args.endpoint and not env.get("AWS_ACCESS_KEY_ID"):
        env.update(DUMMY_CREDENTIALS)
    if args.endpoint:  # the processors' target writers and dead letters (botocore reads it)
        env["AWS_ENDPOINT_URL"] = args.endpoint
    if args.region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = args.region
    if getattr(args, "profile", None):
        env["AWS_PROFILE"] = args.profile
    return env


def preflight_refuses_start(args: argparse.Namespace, props: dict[str, str], environ: dict[str, str]) -> bool:
    """The checks of `tablesync check` for what the daemon would run (its stream, its region, the
    config the processors read). True when one failed (printed): nothing may start."""
    path = args.config or environ.get("TABLESYNC_CONFIG")
    config = load(path) if path else from_env(environ)  # ConfigError: refused, exit 2 (dispatch)
    if not config.source_region:  # the daemon's region is the source side's
        config = dataclasses.replace(config, source_region=props.get("regionName") or None)
    stream = props.get("streamName") or props.get("streamArn", "").rsplit("/", 1)[-1] or None
    if args.endpoint and not os.environ.get("AWS_ACCESS_KEY_ID"):  # as the daemon gets (an emulator)
        os.environ.update(DUMMY_CREDENTIALS)
    return preflight_refuses("run", config, stream=stream, endpoint=args.endpoint)


def run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground until it exits or we are asked to stop (see module doc)."""
    environ = dict(os.environ)
    try:
        rendered = build_properties(args, environ)
    except UsageError as exc:
        print(f"tablesync run: {exc}", file=sys.stderr)
        return 2
    env = daemon_environment(args, environ)
    props = daemon.parse_properties(rendered)
    # (getattr: a Namespace built by a caller, not by add_parser, leaves the supervisor off)
    group, hook = getattr(args, "auto_scaling_group", None), getattr(args, "lifecycle_hook", None)
    if bool(group) != bool(hook):
        print("tablesync run: give --auto-scaling-group and --lifecycle-hook together", file=sys.stderr)
        return 2
    if preflight_refuses_start(args, props, environ):
        return 2
    # <host>:<8 hex digits>: leases name the instance; two workers on one host stay distinct
    worker_id, add = supervisor.worker_id_for(props, socket.gethostname(), uuid.uuid4().hex[:8])
    if add:  # the supervisor must know which leases are this worker's
        rendered += f"workerId = {worker_id}\n"
    tasks, watcher = supervisor.build(props, env, worker_id=worker_id, endpoint=args.endpoint,
                                      fleet_interval=getattr(args, "fleet_metrics_interval", 0.0),
                                      group=group, hook=hook)
    grace = int(props.get("shutdownGraceMillis", "0")) / 1000 + GRACE_MARGIN_S
    with tempfile.TemporaryDirectory(prefix="tablesync-run-") as work:
        properties_file = Path(work) / "kcl.properties"
        properties_file.write_text(rendered, encoding="utf-8")
        try:
            logback = Path(environ.get("TABLESYNC_LOGBACK_CONFIG") or daemon.LOGBACK_XML)
            argv = daemon.java_command(properties_file, cbor=not daemon.needs_json_protocol(rendered),
                                       logback=logback)
            log.info("KCL application %s on stream %s", props["applicationName"], props.get("streamName"))
            tasks.start()
            try:
                status = daemon.run_foreground(daemon.Daemon(argv, env, args.log_file), grace)
            finally:
                tasks.close()
        except OSError as exc:  # no java, no jars, unwritable log file: nothing was started
            print(f"tablesync run: cannot start the KCL daemon: {exc}", file=sys.stderr)
            return 1
    # After the stop: the group may now terminate the instance, and `run` must not be restarted
    # on it (status 0 whatever the stop's outcome, which is logged above).
    if watcher is not None and watcher.complete():
        return 0
    return status


def main(argv: list[str] | None = None) -> int:
    return standalone("run", argv)


if __name__ == "__main__":
    sys.exit(main())
