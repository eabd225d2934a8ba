"""Run the Java KCL MultiLangDaemon (KCL 3.1.3, shipped in amazon_kclpy's ``jars/``).

Three parts, each usable on its own:

1. :func:`render_properties` turns a ``.properties`` template into the file the daemon reads:
   ``{python}``/``{config}``-style placeholders are substituted, command-line overrides are
   applied, and every key is checked against :data:`KNOWN_KEYS` -- the keys KCL 3.1.3's
   multi-lang configuration really reads. The daemon silently ignores a key it does not know,
   so a typo (``failOverTimeMillis``) would otherwise run with the default; here it is refused.
2. :func:`java_command` builds the ``java`` command line (classpath = every jar of the installed
   amazon_kclpy, ``-Daws.cborEnabled=false`` when the Kinesis endpoint is an emulator).
3. :class:`Daemon` starts it as a child process that never outlives us, forwards a graceful
   stop (SIGTERM: the daemon asks every record processor to checkpoint via
   ``shutdown_requested``, waits for its leases to lapse -- about ``failoverTimeMillis`` + 2 s --
   and gives up after ``shutdownGraceMillis``), and reports how it ended;
   :func:`run_foreground` does that for a command-line process.

The daemon's own log (logback, configured by :data:`LOGBACK_XML`: JSON lines) goes to a log file
or to our stderr -- never to our stdout. Record processor children inherit the environment given to :class:`Daemon`
(AWS credentials, region, and anything the processor reads).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

MAIN_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"
#: The daemon's logging: JSON lines in the processor's format, each processor line once at its own
#: level, quiet when idle (see the file's comments). Shipped as package data.
LOGBACK_XML = Path(__file__).resolve().parent / "logback.xml"

#: Keys read by KCL 3.1.3's multi-lang daemon: ``MultiLangDaemonConfig`` (executableName,
#: processingLanguage, maxActiveThreads), ``MultiLangDaemonConfiguration`` and the beans it
#: delegates to (PollingConfigBean, GracefulLeaseHandoffConfigBean,
#: WorkerUtilizationAwareAssignmentConfigBean, WorkerMetricStatsTableConfigBean,
#: CoordinatorStateTableConfigBean). Key names are case-sensitive except the
#: ``AWSCredentialsProvider*`` family, which the daemon normalises itself.
KNOWN_KEYS: frozenset[str] = frozenset(
    {
        # MultiLangDaemonConfig
        "executableName", "processingLanguage", "maxActiveThreads",
        # identity, stream, clients
        "applicationName", "streamName", "streamArn", "tableName", "workerId", "workerIdentifier",
        "regionName", "kinesisEndpoint", "dynamoDBEndpoint",
        "AWSCredentialsProvider", "AWSCredentialsProviderDynamoDB", "AWSCredentialsProviderCloudWatch",
        # position and retrieval
        "initialPositionInStream", "initialPositionInStreamExtended", "retrievalMode",
        "maxRecords", "idleTimeBetweenReadsInMillis", "retryGetRecordsInSeconds",
        "maxGetRecordsThreadPool", "millisBehindLatestThresholdForReducedTps",
        # leases
        "failoverTimeMillis", "leaseAssignmentIntervalMillis", "enablePriorityLeaseAssignment",
        "leaseTableDeletionProtectionEnabled", "leaseTablePitrEnabled", "shardSyncIntervalMillis",
        "cleanupLeasesUponShardCompletion", "ignoreUnexpectedChildShards", "maxLeasesForWorker",
        "maxLeasesToStealAtOneTime", "initialLeaseTableReadCapacity", "initialLeaseTableWriteCapacity",
        "maxLeaseRenewalThreads", "listShardsBackoffTimeInMillis", "maxListShardsRetryAttempts",
        "gracefulLeaseHandoffTimeoutMillis", "isGracefulLeaseHandoffEnabled",
        # coordinator / lifecycle / processor
        "parentShardPollIntervalMillis", "skipShardSyncAtWorkerInitializationIfLeasesExist",
        "schedulerInitializationBackoffTimeMillis", "clientVersionConfig", "taskBackoffTimeMillis",
        "logWarningForTaskAfterMillis", "callProcessRecordsEvenForEmptyRecordList",
        "validateSequenceNumberBeforeCheckpointing", "shutdownGraceMillis", "timeoutInSeconds",
        # metrics (CloudWatch)
        "metricsLevel", "metricsBufferTimeMillis", "metricsMaxQueueSize", "metricsEnabledDimensions",
        # KCL 3.x worker-utilisation-aware assignment
        "inMemoryWorkerMetricsCaptureFrequencyMillis", "workerMetricsReporterFreqInMillis",
        "noOfPersistedMetricsPerWorkerMetrics", "disableWorkerMetrics", "maxThroughputPerHostKBps",
        "dampeningPercentage", "reBalanceThresholdPercentage", "allowThroughputOvershoot",
        "varianceBalancingFrequency", "workerMetricsEMAAlpha", "staleWorkerMetricsEntryCleanupDuration",
        # KCL 3.x side tables
        "workerMetricsTableName", "workerMetricsBillingMode", "workerMetricsReadCapacity",
        "workerMetricsWriteCapacity", "workerMetricsPointInTimeRecoveryEnabled",
        "workerMetricsDeletionProtectionEnabled", "workerMetricsTags",
        "coordinatorStateTableName", "coordinatorStateBillingMode", "coordinatorStateReadCapacity",
        "coordinatorStateWriteCapacity", "coordinatorStatePointInTimeRecoveryEnabled",
        "coordinatorStateDeletionProtectionEnabled", "coordinatorStateTags",
        # nested client-builder property (BeanUtils path into the CloudWatch client builder); the
        # only way to point the daemon's CloudWatch client at an emulator: there is no
        # cloudWatchEndpoint key. Checked against moto: PutMetricData arrives there.
        "cloudWatchClient.endpointOverride",
    }
)

REQUIRED_KEYS = ("executableName", "applicationName", "AWSCredentialsProvider")

#: Lease-assignment and polling keys whose out-of-range values KCL 3.1.3 does not refuse: a 0 is
#: taken for "unset" (its ConfigurationSettableUtils skips Java default values) and the KCL default
#: silently applies; an idleTimeBetweenReadsInMillis below 200 is raised to 200 with a warning;
#: percentages above 100 make the balancing math meaningless. Key -> (minimum, maximum or None).
BOUNDED_KEYS: dict[str, tuple[int, int | None]] = {
    "dampeningPercentage": (1, 100),
    "reBalanceThresholdPercentage": (1, 100),
    "varianceBalancingFrequency": (1, None),
    "leaseAssignmentIntervalMillis": (1, None),
    "failoverTimeMillis": (1, None),
    "idleTimeBetweenReadsInMillis": (200, None),
    "maxRecords": (1, 10000),
}
_BOOLEAN_KEYS = frozenset({"allowThroughputOvershoot", "disableWorkerMetrics", "isGracefulLeaseHandoffEnabled"})
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.]*")


class PropertiesError(ValueError):
    """A properties template the daemon would misread. ``key`` names the offending key (or None)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# ----------------------------------------------------------------------------- properties


def parse_properties(text: str) -> dict[str, str]:
    """Parse the subset of the ``.properties`` format we write: ``key = value`` (or ``key: value``)
    lines, ``#``/``!`` comments, blank lines. Refused (PropertiesError): line continuations,
    duplicate keys, lines without a separator, keys that are not plain identifiers."""
    result: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        if line.endswith("\\"):
            raise PropertiesError(f"line {number}: line continuations are not supported")
        match = re.match(r"([^=:\s]+)\s*[=:]\s*(.*)$", line)
        if not match:
            raise PropertiesError(f"line {number}: expected 'key = value', got {line!r}")
        key, value = match.group(1), match.group(2)
        if not _KEY.fullmatch(key):
            raise PropertiesError(f"line {number}: invalid key {key!r}", key)
        if key in result:
            raise PropertiesError(f"line {number}: duplicate key {key!r}", key)
        result[key] = value
    return result


def canonical_key(key: str) -> str:
    """The daemon matches the ``AWSCredentialsProvider`` prefix case-insensitively (its
    ``processKey``); everything else is case-sensitive. Returns the spelling used in KNOWN_KEYS."""
    prefix = "AWSCredentialsProvider"
    if key.lower().startswith(prefix.lower()):
        return prefix + key[len(prefix):]
    return key


def check_key(key: str) -> None:
    """Raise PropertiesError unless KCL 3.1.3 reads ``key`` (with a did-you-mean hint)."""
    if canonical_key(key) in KNOWN_KEYS:
        return
    hint = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise PropertiesError(f"unknown KCL 3.1.3 property {key!r}: the daemon would ignore it{suffix}", key)


def check_bounds(key: str, value: str) -> None:
    """Raise PropertiesError for a lease/poll value the daemon would ignore or silently change."""
    if key in _BOOLEAN_KEYS and value not in ("true", "false"):
        raise PropertiesError(f"{key} must be true or false, got {value!r}", key)
    if key not in BOUNDED_KEYS:
        return
    low, high = BOUNDED_KEYS[key]
    if not re.fullmatch(r"[0-9]+", value) or int(value) < low or (high is not None and int(value) > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise PropertiesError(f"{key} must be an integer {span}, got {value!r} (the daemon would not "
                              "refuse it but run with a different value)", key)


def _substitute(key: str, value: str, substitutions: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in substitutions:
            raise PropertiesError(f"{key}: unknown placeholder {{{name}}}", key)
        return substitutions[name]

    return _PLACEHOLDER.sub(replace, value)


def check_executable(value: str) -> list[str]:
    """Validate an ``executableName`` and return its argv. The daemon splits it on spaces with no
    shell and no quoting, so the program must be an absolute path and no token may hide a space
    (tabs, say) or a shell construct."""
    argv = value.split()
    if not argv:
        raise PropertiesError("executableName is empty", "executableName")
    if any(ch in value for ch in "\t\"'`$;|&<>"):
        raise PropertiesError(f"executableName {value!r}: no quotes, tabs or shell syntax", "executableName")
    if not os.path.isabs(argv[0]):
        raise PropertiesError(f"executableName must start with an absolute path, got {argv[0]!r}",
                              "executableName")
    for token in argv[1:]:
        if "/" in token and not token.startswith(("/", "-")) and "=" not in token:
            raise PropertiesError(f"executableName argument {token!r} looks like a relative path",
                                  "executableName")
    return argv


def _check_value(what: str, value: str, key: str | None = None) -> None:
    """Refuse a value holding a control character (or a Unicode line/paragraph separator): a line
    break in it would end the line and start a key of its own (``kinesisEndpoint``, say) past every
    other check, and readers disagree on the rest (Java splits lines on CR/LF only)."""
    bad = next((ch for ch in value if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise PropertiesError(f"the value given for {what} holds the control character U+{ord(bad):04X}: "
                              "refused (it could add properties); remove it", key)


def _escape(value: str) -> str:
    escaped = value.replace("\\", "\\\\")
    return "\\" + escaped if escaped[:1].isspace() else escaped


def render_properties(
    template: str,
    substitutions: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> str:
    """Render ``template`` (properties text) into what the daemon reads.

    Contract: placeholders ``{name}`` in values are replaced from ``substitutions`` (an unknown
    placeholder is an error); ``overrides`` then replace or add keys (``None`` removes a key);
    every key must be in :data:`KNOWN_KEYS`; :data:`REQUIRED_KEYS` must be present with
    non-empty values, as must ``streamName`` or ``streamArn``; ``initialPositionInStream`` and
    ``initialPositionInStreamExtended`` are exclusive; ``executableName`` must pass
    :func:`check_executable` (and is normalised to single spaces); lease/poll values must pass
    :func:`check_bounds`. Returns ``key = value`` lines
    in template order (overrides appended), comments dropped. Raises PropertiesError.
    """
    subs = dict(substitutions or {})
    for name, value in subs.items():
        _check_value(repr(name), value)
    for key, override in (overrides or {}).items():
        if override is not None:
            _check_value(key, str(override), key)
    props: dict[str, str] = {}
    for key, value in parse_properties(template).items():
        check_key(key)
        props[canonical_key(key)] = _substitute(key, value, subs)
    for key, override in (overrides or {}).items():
        check_key(key)
        if override is None:
            props.pop(canonical_key(key), None)
        else:
            props[canonical_key(key)] = str(override)
    for key in REQUIRED_KEYS:
        if not props.get(key, "").strip():
            raise PropertiesError(f"required property {key!r} is missing", key)
    if not (props.get("streamName", "").strip() or props.get("streamArn", "").strip()):
        raise PropertiesError("streamName or streamArn is required", "streamName")
    if "initialPositionInStream" in props and "initialPositionInStreamExtended" in props:
        # The daemon applies keys in hash order: with both, which one wins is arbitrary.
        raise PropertiesError("set initialPositionInStream or initialPositionInStreamExtended, not both",
                              "initialPositionInStreamExtended")
    for key, value in props.items():
        _check_value(key, value, key)
    props["executableName"] = " ".join(check_executable(props["executableName"]))
    for key, value in props.items():
        check_bounds(key, value)
    lines = ["# Rendered by tablesync (kcl_app.daemon); edit the template, not this file."]
    lines += [f"{key} = {_escape(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line


def jars_dir() -> Path:
    """The directory of KCL jars shipped with the installed amazon_kclpy package."""
    import amazon_kclpy

    path = Path(amazon_kclpy.__file__).resolve().parent / "jars"
    if not any(path.glob("amazon-kinesis-client-multilang-*.jar")):
        raise FileNotFoundError(f"no amazon-kinesis-client-multilang jar in {path}")
    return path


def java_command(
    properties_file: Path,
    *,
    java: str | None = None,
    jars: Path | None = None,
    cbor: bool = True,
    jvm_args: tuple[str, ...] = (),
    log_configuration: Path | None = None,
    logback: Path | None = LOGBACK_XML,
) -> list[str]:
    """argv for the daemon. ``cbor=False`` adds ``-Daws.cborEnabled=false`` (needed with moto,
    which cannot parse the CBOR the Kinesis client sends by default). ``logback`` (default: the
    packaged :data:`LOGBACK_XML`; ``None`` for the KCL's own text format) is passed as
    ``-Dlogback.configurationFile``, which applies from the daemon's first line on."""
    java_bin = java or shutil.which("java") or "java"
    argv = [java_bin, *jvm_args]
    if logback is not None:
        argv.append(f"-Dlogback.configurationFile={logback}")
    if not cbor:
        argv.append("-Daws.cborEnabled=false")
    argv += ["-cp", str((jars or jars_dir()) / "*"), MAIN_CLASS, "--properties-file", str(properties_file)]
    if log_configuration is not None:
        argv += ["--log-configuration", str(log_configuration)]
    return argv


def needs_json_protocol(properties_text: str) -> bool:
    """True when the rendered properties point Kinesis at a non-AWS endpoint (an emulator)."""
    endpoint = parse_properties(properties_text).get("kinesisEndpoint", "")
    return bool(endpoint) and "amazonaws.com" not in endpoint


# ----------------------------------------------------------------------------- process

#: Exit statuses of a JVM whose shutdown hooks ran after SIGTERM / SIGINT, or that returned.
CLEAN_STOP_STATUSES = (0, 128 + signal.SIGTERM, 128 + signal.SIGINT)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child before exec: get SIGTERM when the parent dies (Linux), so no orphan daemon."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def descendants(pid: int) -> list[int]:
    """Pids of every live process below ``pid`` (Linux ``/proc``; empty elsewhere), parents first."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found



@dataclass(frozen=True)
class DaemonExit:
    """How the daemon ended. ``requested``: we asked it to stop; ``clean``: it stopped because we
    asked and exited with 0 or the JVM's status after SIGTERM (143) or SIGINT (130) in time."""

    returncode: int
    requested: bool
    killed: bool

    @property
    def clean(self) -> bool:
        return self.requested and not self.killed and self.returncode in CLEAN_STOP_STATUSES


class Daemon:
    """One MultiLangDaemon child process.

    ``start()`` launches ``argv`` with ``env``; its stdout+stderr go to ``log_path`` (appended) or
    to our stderr. The daemon stays in our process group, so killing the group (a supervisor, a
    test's ``killpg``) takes the daemon and its record processors with it; on Linux it also gets
    SIGTERM if we die first (``PR_SET_PDEATHSIG``), so it never outlives us. A terminal's Ctrl-C
    reaches the whole group: the JVM treats SIGINT like SIGTERM (graceful), and record processors
    should ignore SIGINT and wait for ``shutdown_requested``. ``stop()`` sends SIGTERM and waits
    ``grace`` seconds, then SIGKILLs the daemon and its descendants. Usable as a context manager,
    which always stops it. Under systemd use ``KillMode=mixed`` (SIGTERM to ``tablesync run``
    only; the record processors must not be killed before they checkpoint).
    """

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path | None = None) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._stop_requested = threading.Event()
        self._killed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> Daemon:
        if self._proc is not None:
            raise RuntimeError("daemon already started")
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close_log
            out: int | IO[bytes] = self._log
        else:
            out = sys.stderr.fileno()
        log.info("starting KCL daemon: %s", " ".join(self.argv))
        self._proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        return self

    def poll(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def request_stop(self) -> None:
        """Ask for a graceful stop (SIGTERM to the JVM only). Safe from a signal handler."""
        self._stop_requested.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> DaemonExit:
        """Wait for the daemon to exit (raises subprocess.TimeoutExpired after ``timeout``)."""
        assert self._proc is not None, "daemon not started"
        code = self._proc.wait(timeout)
        self._close_log()
        return DaemonExit(code, self._stop_requested.is_set(), self._killed)

    def stop(self, grace: float = 30.0) -> DaemonExit:
        """Graceful stop within ``grace`` seconds, else SIGKILL to the process group."""
        assert self._proc is not None, "daemon not started"
        self.request_stop()
        try:
            return self.wait(grace)
        except subprocess.TimeoutExpired:
            log.error("KCL daemon pid %d did not stop within %.1fs: killing it", self._proc.pid, grace)
            self.kill()
            return self.wait(10)

    def kill(self) -> None:
        """SIGKILL the daemon and every process below it (its record processors)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._killed = True
        for pid in [self._proc.pid, *descendants(self._proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Daemon:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.stop(grace=15.0)
        self._close_log()


def run_foreground(daemon: Daemon, grace: float) -> int:
    """Run ``daemon`` until it exits; SIGTERM/SIGINT to us become a graceful stop of the daemon.

    Returns 0 when it stopped because we were asked to (within ``grace`` seconds, else it is
    killed and 1 is returned), and a non-zero status whenever it died on its own (its exit status,
    or 1 if it exited 0 unasked: a daemon that stops by itself is a failure for the supervisor).
    Must be called from the main thread (it installs signal handlers, restored on return).
    """
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            log.info("signal %d: stopping the KCL daemon (grace %.0fs)", signum, grace)
            stopping.set()
        daemon.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.start()
        stop_deadline: float | None = None
        while True:
            try:
                result = daemon.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if not stopping.is_set():
                    continue
                now = time.monotonic()
                stop_deadline = stop_deadline if stop_deadline is not None else now + grace
                if now >= stop_deadline:
                    log.error("KCL daemon did not stop within %.1fs: killing it", grace)
                    daemon.kill()
                    result = daemon.wait(timeout=10)
                    break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.requested:
        if result.clean:
            log.info("KCL daemon stopped (status %d)", result.returncode)
            return 0
        log.error("KCL daemon did not stop cleanly (status %d, killed=%s)", result.returncode, result.killed)
        return 1
    log.error("KCL daemon exited on its own with status %d", result.returncode)
    return result.returncode if result.returncode > 0 else 1
