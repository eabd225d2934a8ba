"""The record-processor process the KCL daemon starts per shard: `python -m kcl_app.worker --config F`.

stdout is the multi-lang protocol; every log line goes to stderr (the daemon's log).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from amazon_kclpy import kcl

from kcl_app import config as config_mod
from kcl_app import logs
from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.lanes import Lanes
from kcl_app.adapters.metrics import EmfMetrics
from kcl_app.adapters.processor import ReplicationProcessor
from kcl_app.compose import Engine, build_engine, build_lanes
from kcl_app.core.errors import ConfigError
from kcl_app.pipeline import Pipeline

log = logging.getLogger("tablesync.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kcl_app.worker", description="tablesync KCL record processor")
    parser.add_argument("--config", help="targets TOML (default: TABLESYNC_CONFIG or the env shortcut)")
    parser.add_argument("--log-level", default=os.environ.get("TABLESYNC_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    # A terminal's Ctrl-C reaches the whole process group; the daemon owns the shutdown (it asks
    # each processor to checkpoint via shutdown_requested), so the processor must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(args.log_level, json_lines=True, pid=os.getpid())
    path = args.config or os.environ.get("TABLESYNC_CONFIG")
    try:
        cfg = config_mod.load(path) if path else config_mod.from_env(os.environ)
    except ConfigError as exc:
        log.critical("configuration refused: %s", exc)
        return 2
    clock = SystemClock()
    # EMF lines go to stderr (the daemon's log) or, with TABLESYNC_METRICS_FILE, to a file that a
    # log agent ships (and that `tablesync demo` reads for its progress display).
    metrics_path = os.environ.get("TABLESYNC_METRICS_FILE")
    stream = None
    if metrics_path:
        try:
            stream = open(metrics_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - process lifetime
        except OSError as exc:
            log.error("cannot open TABLESYNC_METRICS_FILE %s (%s): metrics go to stderr", metrics_path, exc)
    metrics = EmfMetrics(stream=stream, namespace=cfg.metrics_namespace)

    engines: list[Engine] = []

    def factory() -> Pipeline:  # built on initialize, so a worker that never gets a lease touches nothing
        engines.append(build_engine(cfg, clock=clock, metrics=metrics))
        return engines[-1].pipeline

    def lanes(pipeline: Pipeline) -> Lanes:
        return build_lanes(cfg, pipeline, engines[-1].dead_letters, clock, metrics)

    # kclpy writes its own errors (an exception from a processor method, with its traceback) as
    # free text to error_file: route them through logging so the daemon's log stays JSON.
    errors = logs.LogLineWriter(logging.getLogger("amazon_kclpy"))
    kcl.KCLProcess(ReplicationProcessor(factory, clock, metrics, lanes=lanes), error_file=errors).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
