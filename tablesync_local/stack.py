"""Lifecycle of the local stack: start the emulator process, wait until it answers, stop it.

Used by ``tablesync local up|down|info`` and by the test fixtures. Only ever binds and
talks to 127.0.0.1. The emulator API calls here bypass any HTTP proxy from the
environment.

    with running_stack() as stack:            # free port, subprocess, ready in ~1 s
        ddb = stack.client("dynamodb")
        stack.configure_faults("Music", duplicate_rate=0.3)
        stack.stats("Music")["records_sent"]
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
DEFAULT_PORT = 4566
DEFAULT_REGION = "us-east-1"
DUMMY_KEY = "testing"
STATE_FILE = "stack.json"
LOG_FILE = "stack.log"

T = TypeVar("T")

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """The stack could not be started, reached or stopped; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when the emulator could not listen on ``host:port`` right now: another socket listens there.

    The probe binds as the server does, with SO_REUSEADDR (hypercorn sets it on its listening socket), so
    connections of a stopped emulator still in TIME_WAIT (up to a minute after ``down``) do not count:
    ``local up`` can reuse its port at once, while a port another program listens on is still refused."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def call(endpoint: str, route: str, payload: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Call an emulator-only endpoint (``/_tablesync/...``); POST when ``payload`` is given."""
    if not endpoint.startswith("http://"):
        raise StackError(f"the local stack speaks plain http, not {endpoint!r}")
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(endpoint + route, data=data, method="GET" if data is None else "POST",  # noqa: S310
                                 headers={"Content-Type": "application/json"})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise StackError(f"{route}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc


def health(endpoint: str, timeout: float = 0.5) -> dict[str, Any] | None:
    """The emulator's health answer, or None when nothing (or something else) answers."""
    try:
        answer = call(endpoint, "/_tablesync/health", timeout=timeout)
    except (OSError, StackError, ValueError):
        return None
    return answer if isinstance(answer, dict) and answer.get("ok") else None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, e.g. an orphan nobody reaped yet, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def poll_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> T:
    """Call ``predicate`` until it returns a truthy value (returned); TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout} s (last value: {value!r})")
        time.sleep(interval)


def wait_until_ready(endpoint: str, deadline_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None,
                     log_path: Path | None = None) -> dict[str, Any]:
    """Poll the health endpoint until it answers; fail early if ``proc`` exits."""
    deadline = time.monotonic() + deadline_s
    while True:
        answer = health(endpoint)
        if answer is not None and (proc is None or answer.get("pid") == proc.pid):
            return answer
        if proc is not None and proc.poll() is not None:
            raise StackError(f"emulator exited with status {proc.returncode} before answering"
                             + _log_tail(log_path))
        if time.monotonic() > deadline:
            raise StackError(f"emulator did not answer at {endpoint} within {deadline_s:.0f} s" + _log_tail(log_path))
        time.sleep(0.05)


def _log_tail(log_path: Path | None, lines: int = 8) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n  " + "\n  ".join(tail) if tail else ""


def stop_process(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. True if the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return False


@dataclass
class LocalStack:
    """A running emulator: its endpoint, and helpers for clients and the emulator API."""

    port: int
    host: str = HOST
    pid: int | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self, region: str = DEFAULT_REGION) -> dict[str, str]:
        """Environment variables that point AWS SDKs (and the KCL) at this stack."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": DUMMY_KEY,
                "AWS_SECRET_ACCESS_KEY": DUMMY_KEY, "AWS_DEFAULT_REGION": region, "AWS_REGION": region}

    def client(self, service: str, region: str = DEFAULT_REGION) -> Any:
        """A boto3 client for ``service`` bound to this stack (dummy credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            service, region_name=region, endpoint_url=self.endpoint,
            aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )

    def reset(self) -> None:
        """Forget every AWS resource and destination (moto reset)."""
        call(self.endpoint, "/_tablesync/reset", {})

    def configure_faults(self, table: str, region: str = DEFAULT_REGION, **faults: Any) -> dict[str, Any]:
        result: dict[str, Any] = call(self.endpoint, "/_tablesync/destination/faults",
                                      {"TableName": table, "Region": region, **faults})
        return result

    def stats(self, table: str, region: str = DEFAULT_REGION) -> dict[str, int]:
        query = urllib.parse.urlencode({"TableName": table, "Region": region})
        result: dict[str, int] = call(self.endpoint, f"/_tablesync/destination/stats?{query}")
        return result

    def read_units(self, table: str, region: str = DEFAULT_REGION) -> float:
        """The read units DynamoDB would have charged ``table`` for the reads served since the last reset."""
        query = urllib.parse.urlencode({"TableName": table, "Region": region})
        return float(call(self.endpoint, f"/_tablesync/read-units?{query}")["ReadUnits"])

    def flush(self) -> None:
        call(self.endpoint, "/_tablesync/destination/flush", {})

    def ttl_expire(self, table: str, key: dict[str, Any] | None = None, region: str = DEFAULT_REGION,
                   now: float | None = None) -> list[dict[str, Any]]:
        """TTL-delete ``key``, or every due item when no key is given. Returns the keys deleted."""
        payload: dict[str, Any] = {"TableName": table, "Region": region}
        if key is not None:
            payload["Key"] = key
        if now is not None:
            payload["Now"] = now
        expired: list[dict[str, Any]] = call(self.endpoint, "/_tablesync/ttl-expire", payload)["Expired"]
        return expired

    def stop(self, timeout: float = 10.0) -> None:
        if self.pid is not None:
            stop_process(self.pid, timeout)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1)


def start_subprocess(port: int | None = None, log_path: Path | None = None, ready_timeout: float = 15.0,
                     detach: bool = False) -> LocalStack:
    """Start the emulator as a child process on 127.0.0.1 and return once it answers.

    ``port`` None picks a free port. Output goes to ``log_path`` (else discarded).
    ``detach`` puts it in its own session so it outlives the caller (``local up``).
    Raises :class:`StackError` (port taken, early exit, no answer); nothing is left running.
    """
    if port is None:  # a free port can be taken between probe and bind: try a few
        for attempt in range(3):
            try:
                return start_subprocess(free_port(), log_path, ready_timeout, detach)
            except StackError:
                if attempt == 2:
                    raise
    assert port is not None
    if port_in_use(port):
        raise StackError(f"port {port} on {HOST} is already in use")
    out: Any = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tablesync_local.server", "--host", HOST, "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=detach,
        )
    finally:
        if out is not subprocess.DEVNULL:
            out.close()
    stack = LocalStack(port=port, pid=proc.pid, log_path=log_path, process=proc)
    try:
        wait_until_ready(stack.endpoint, ready_timeout, proc, log_path)
    except BaseException:
        stack.stop(timeout=2)
        raise
    return stack


@contextlib.contextmanager
def running_stack(port: int | None = None, log_path: Path | None = None) -> Iterator[LocalStack]:
    """A fresh emulator for the duration of the block; always stopped afterwards."""
    stack = start_subprocess(port, log_path)
    try:
        yield stack
    finally:
        stack.stop()


# ---------------------------------------------------------------- state file (local up/down/info)

def state_dir(override: str | None = None) -> Path:
    """``override``, else ``$TABLESYNC_HOME/local``, else ``./.tablesync/local``."""
    if override:
        return Path(override).resolve()
    home = os.environ.get("TABLESYNC_HOME")
    return Path(home) / "local" if home else Path.cwd() / ".tablesync" / "local"


def read_state(directory: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def write_state(directory: Path, state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(directory / STATE_FILE)


def remove_state(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / STATE_FILE).unlink()
