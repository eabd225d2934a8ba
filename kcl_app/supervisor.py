"""What ``tablesync run`` does beside the KCL daemon: publish the fleet's work, and leave the
Auto Scaling group gracefully.

Two periodic tasks, run by :class:`Periodic` on a background thread with an injected clock:

1. :class:`FleetReporter` reads the lease table (adapters/leases.py) and emits EMF:
   - from every worker, dimensions ``App, WorkerId``: ``WorkerLeasesHeld`` (its unfinished
     leases) and ``WorkerCpuPercent`` (the host's CPU since the previous report);
   - from the elected reporter only (:func:`kcl_app.core.fleet.reporter`), dimension ``App``:
     ``OpenShards``, ``DrainingParents``, ``WaitingChildren``, ``LeasesToProcess`` (the
     scaling signal), ``LeasesHeld`` (unfinished leases with an owner), ``Workers``.
     These are read from the shared table, so a second reporter during a lease move publishes
     the same values: the scaling policy reads them with the Maximum statistic.
2. :class:`LifecycleWatcher` polls the instance metadata's
   ``autoscaling/target-lifecycle-state``; when the group has chosen this instance for
   termination (``Terminated``: the instance waits in Terminating:Wait on the group's lifecycle
   hook) it asks for a graceful stop exactly as systemd does: SIGTERM to this process, which
   ``daemon.run_foreground`` turns into the daemon's graceful shutdown (each record processor
   gets ``shutdown_requested`` and checkpoints, the leases are released). Once the daemon has
   exited, :meth:`LifecycleWatcher.complete` sends CompleteLifecycleAction (CONTINUE) and the
   instance goes.

A failing task logs and tries again at its next period: reporting must never stop the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from kcl_app.core import fleet

log = logging.getLogger(__name__)

IMDS = "http://169.254.169.254"
# autoscaling/target-lifecycle-state holds the steady state an instance is moving to (InService,
# Terminated, Detached, Standby, Warmed:*): "Terminated" from the moment the group chose it for
# termination ("Retrieve the target lifecycle state through instance metadata", EC2 Auto Scaling).
TERMINATING_STATES = frozenset({"Terminated"})


class Metrics(Protocol):
    def emit(self, dimensions: dict[str, str], counters: dict[str, float]) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...


# ----------------------------------------------------------------------------- CPU


class ProcStatCpu:
    """Host CPU busy percentage between two calls, from ``/proc/stat`` (None on the first call or
    where there is no ``/proc``). ``read`` is injectable for tests."""

    def __init__(self, read: Callable[[], str] | None = None) -> None:
        self._read = read or (lambda: Path("/proc/stat").read_text())
        self._last: tuple[int, int] | None = None

    def sample(self) -> float | None:
        try:
            fields = [int(v) for v in self._read().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        if len(fields) < 4:  # not the "cpu user nice system idle ..." line
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already inside user/nice
        last, self._last = self._last, (total, idle)
        if last is None or total <= last[0]:
            return None
        return round(100.0 * (1 - (idle - last[1]) / (total - last[0])), 1)


# ----------------------------------------------------------------------------- fleet figures


class FleetReporter:
    """One report: read the leases, emit this worker's figures and, if elected, the fleet's."""

    def __init__(self, read_leases: Callable[[], Sequence[fleet.Lease]], metrics: Metrics, app: str,
                 worker_id: str, cpu: Callable[[], float | None] | None = None) -> None:
        self.read_leases = read_leases
        self.metrics = metrics
        self.app = app
        self.worker_id = worker_id
        self.cpu = cpu

    def report(self) -> fleet.FleetFigures:
        leases = self.read_leases()
        figures = fleet.figures(leases)
        mine: dict[str, float] = {"WorkerLeasesHeld": figures.held_by.get(self.worker_id, 0)}
        cpu = self.cpu() if self.cpu else None
        if cpu is not None:
            mine["WorkerCpuPercent"] = cpu
        self.metrics.emit({"App": self.app, "WorkerId": self.worker_id}, mine)
        if fleet.reporter(leases) == self.worker_id:
            self.metrics.emit({"App": self.app}, {
                "OpenShards": figures.open_shards,
                "DrainingParents": figures.draining_parents,
                "WaitingChildren": figures.waiting_children,
                "LeasesToProcess": figures.leases_to_process,
                "LeasesHeld": figures.leases_held,
                "Workers": figures.workers,
            })
        return figures


# ----------------------------------------------------------------------------- lifecycle


class InstanceMetadata:
    """IMDSv2 (token first; the launch template requires it). ``opener`` is injectable."""

    def __init__(self, base: str = IMDS, timeout: float = 2.0,
                 opener: Callable[..., Any] = urllib.request.urlopen) -> None:
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"instance metadata URL must be http(s), got {base!r}")
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.opener = opener

    def get(self, path: str) -> str | None:
        """The value at ``/latest/meta-data/<path>``, or None when IMDS has none (404, no IMDS)."""
        try:
            token_req = urllib.request.Request(  # noqa: S310 - http(s) only, checked
                f"{self.base}/latest/api/token", method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
            with self.opener(token_req, timeout=self.timeout) as resp:
                token = resp.read().decode()
            req = urllib.request.Request(  # noqa: S310 - http(s) only, checked
                f"{self.base}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token})
            with self.opener(req, timeout=self.timeout) as resp:
                return str(resp.read().decode().strip())
        except OSError as exc:  # URLError, HTTPError (404 = not in a group / no such key), timeouts
            log.debug("instance metadata %s unavailable: %s", path, exc)
            return None


class LifecycleWatcher:
    """Watches for this instance's termination by the group and completes the group's
    termination hook once the daemon has stopped. ``stop`` defaults to SIGTERM to this process
    (the same path as systemd's stop)."""

    def __init__(self, metadata: InstanceMetadata, autoscaling: Any, group: str, hook: str,
                 stop: Callable[[], bool | None] | None = None) -> None:
        self.metadata = metadata
        self.autoscaling = autoscaling
        self.group = group
        self.hook = hook
        self.stop = stop or _sigterm_self
        self.terminating = threading.Event()

    def check(self) -> bool:
        """Poll once; on termination ask for the graceful stop (once). True when terminating."""
        if self.terminating.is_set():
            return True
        state = self.metadata.get("autoscaling/target-lifecycle-state")
        if state not in TERMINATING_STATES:
            return False
        log.warning("the Auto Scaling group %s is terminating this instance (%s): stopping the worker "
                    "gracefully before completing the lifecycle hook %s", self.group, state, self.hook)
        if self.stop() is False:
            return False  # nobody listens for the stop yet: ask again at the next poll
        self.terminating.set()
        return True

    def complete(self) -> bool:
        """After the daemon has exited: CompleteLifecycleAction CONTINUE when the instance is being
        terminated (seen by :meth:`check`, or found now: systemd's stop may have come first).
        False when there is nothing to complete or the call failed (the hook then times out after
        its HeartbeatTimeout and its DefaultResult, CONTINUE, applies)."""
        if not self.terminating.is_set():
            state = self.metadata.get("autoscaling/target-lifecycle-state")
            if state not in TERMINATING_STATES:
                return False
        instance = self.metadata.get("instance-id")
        if not instance:
            log.error("cannot complete lifecycle hook %s: no instance id from the instance metadata", self.hook)
            return False
        try:
            self.autoscaling.complete_lifecycle_action(
                LifecycleHookName=self.hook, AutoScalingGroupName=self.group, InstanceId=instance,
                LifecycleActionResult="CONTINUE")
        except Exception as exc:  # any client error: the hook's timeout is the fallback
            log.error("CompleteLifecycleAction %s/%s for %s failed (%s): the instance terminates when the "
                      "hook times out", self.group, self.hook, instance, exc)
            return False
        log.info("lifecycle hook %s completed for %s: the worker stopped gracefully", self.hook, instance)
        return True


def _sigterm_self() -> bool:
    """SIGTERM to this process, once a handler (``daemon.run_foreground``'s) is installed: before
    that, SIGTERM would kill us without stopping the daemon gracefully."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    os.kill(os.getpid(), signal.SIGTERM)
    return True


# ----------------------------------------------------------------------------- scheduling


class Periodic:
    """Runs ``tasks`` (callables, each with its period in seconds) on one daemon thread until
    :meth:`close`. Each task first runs one period after :meth:`start`; its exceptions are logged
    and it runs again at its next period. :meth:`due` is the scheduling step, clock-driven (tests
    call it with a fake clock; the thread calls it in a loop)."""

    def __init__(self, tasks: Sequence[tuple[float, Callable[[], object]]], clock: Clock) -> None:
        self.tasks = [(period, task) for period, task in tasks if period > 0]
        self.clock = clock
        self._next = [0.0] * len(self.tasks)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        now = self.clock.monotonic()
        self._next = [now + period for period, _ in self.tasks]

    def due(self) -> float:
        """Run every task whose time has come; return the seconds until the next one is due."""
        now = self.clock.monotonic()
        for index, (period, task) in enumerate(self.tasks):
            if now >= self._next[index]:
                self._next[index] = now + period
                try:
                    task()
                except Exception as exc:  # e.g. no lease table yet: the daemon creates it
                    log.warning("periodic task %s failed (%s: %s); next attempt in %.0fs",
                                getattr(task, "__qualname__", task), type(exc).__name__, exc, period)
                    log.debug("periodic task failure", exc_info=True)
        return max(0.0, min(self._next, default=now + 60.0) - self.clock.monotonic())

    def start(self) -> Periodic:
        if not self.tasks:
            return self
        self.reset()

        def loop() -> None:
            while not self._stop.wait(self.due()):
                pass

        self._thread = threading.Thread(target=loop, name="tablesync-supervisor", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout=5)


# ----------------------------------------------------------------------------- composition


def worker_id_for(props: dict[str, str], host: str, unique: str) -> tuple[str, bool]:
    """The daemon's worker id: the properties' ``workerId``/``workerIdentifier`` if set, else
    ``<host>:<unique>`` (the shape of KCL's own default) that the caller must add to the
    properties. Returns (id, must_add)."""
    given = props.get("workerId") or props.get("workerIdentifier")
    if given:
        return given, False
    safe_host = re.sub(r"[^A-Za-z0-9._-]", "-", host) or "worker"
    return f"{safe_host}:{unique}", True


def build(props: dict[str, str], env: dict[str, str], *, worker_id: str, endpoint: str | None,
          fleet_interval: float, group: str | None, hook: str | None,
          lifecycle_interval: float = 5.0) -> tuple[Periodic, LifecycleWatcher | None]:
    """The supervisor of one ``tablesync run``: clients from the daemon's environment
    (``env``: its credentials and region), EMF to ``TABLESYNC_METRICS_FILE`` or stderr."""
    import sys

    from kcl_app.adapters.clock import SystemClock
    from kcl_app.adapters.leases import read_leases
    from kcl_app.adapters.metrics import EmfMetrics
    from kcl_app.compose import boto_config, env_session

    region = props.get("regionName") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    session = env_session(env, region)
    tasks: list[tuple[float, Callable[[], object]]] = []
    if fleet_interval > 0 and not region:
        log.warning("no region (regionName, AWS_REGION): the fleet metrics are off")
    elif fleet_interval > 0:
        dynamodb = session.client("dynamodb", endpoint_url=endpoint, config=boto_config())
        table = props.get("tableName") or props["applicationName"]
        stream: Any = sys.stderr
        path = env.get("TABLESYNC_METRICS_FILE")
        if path:
            try:
                stream = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - process lifetime
            except OSError as exc:
                log.error("cannot open TABLESYNC_METRICS_FILE %s (%s): fleet metrics go to stderr", path, exc)
        reporter = FleetReporter(lambda: read_leases(dynamodb, table), EmfMetrics(stream=stream),
                                 props["applicationName"], worker_id, ProcStatCpu().sample)
        tasks.append((fleet_interval, reporter.report))
    watcher = None
    if group and hook:
        # The SDKs' own override of the metadata endpoint (tests point it at a fake).
        metadata = InstanceMetadata(env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS)
        watcher = LifecycleWatcher(metadata, session.client("autoscaling", config=boto_config()), group, hook)
        tasks.append((lifecycle_interval, watcher.check))
    return Periodic(tasks, SystemClock()), watcher
