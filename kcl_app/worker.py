"""The record-processor process the KCL daemon starts per shard: `python -m kcl_app.worker --config F`.

stdout is the multi-lang protocol; every log line goes to stderr (the daemon's log).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys

from kcl_app import config as config_mod
from kcl_app import logs
from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.daemon_io import kcl_process
from kcl_app.adapters.lanes import Lanes
from kcl_app.adapters.metrics import EmfMetrics
from kcl_app.adapters.processor import ReplicationProcessor
from kcl_app.compose import Engine, build_engine, build_lanes
from kcl_app.core.errors import ConfigError
from kcl_app.pipeline import Pipeline

log = logging.getLogger("tablesync.worker")

# The collector's first threshold (allocations between young collections; CPython's default is 700).
# A page of up to 10,000 records makes ~30 containers per record that all live until the page is
# settled: at 700 the collector scans and promotes them over and over (a quarter of the processor's
# own CPU per change, measured with bench/apply). Nearly all of it is freed by reference counting;
# what is cyclic (an exception's traceback) waits a little longer, a few MB at most.
GC_YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Once the engine is built: move every object alive now (botocore's models, the engine, the
    imported modules: ~65,000 with one target) out of the collector's sight for good, so that no collection
    walks them again, and collect the young generation rarely (`GC_YOUNG_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    log.info("heap settled: %d objects kept out of collections; young collections every %d allocations",
             gc.get_freeze_count(), GC_YOUNG_THRESHOLD)


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
        settle_heap()
        return engines[-1].pipeline

    def lanes(pipeline: Pipeline) -> Lanes:
        return build_lanes(cfg, pipeline, engines[-1].dead_letters, clock, metrics)

    # kclpy writes its own errors (an exception from a processor method, with its traceback) as
    # free text to error_file: route them through logging so the daemon's log stays JSON.
    errors = logs.LogLineWriter(logging.getLogger("amazon_kclpy"))
    kcl_process(ReplicationProcessor(factory, clock, metrics, lanes=lanes), error_file=errors).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
