"""kcl_app.daemon.Daemon / run_foreground against a stand-in process (a Python script that behaves
like the JVM: exits 143 on SIGTERM, or ignores it, or dies by itself). No Java needed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kcl_app import daemon

FAKE = """
import os, signal, sys, time
mode, ready = sys.argv[1], sys.argv[2]
if mode == "graceful":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
elif mode == "slow":  # like the JVM: the shutdown hook takes a while
    def slow_exit(*_):
        time.sleep(1.5)
        sys.exit(143)
    signal.signal(signal.SIGTERM, slow_exit)
elif mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode.startswith("exit"):
    print("daemon log line", flush=True)
    sys.exit(int(mode[4:]))
open(ready, "w").close()
time.sleep(60)
"""


def _daemon(tmp_path: Path, mode: str) -> tuple[daemon.Daemon, Path]:
    script = tmp_path / "fake_daemon.py"
    script.write_text(FAKE)
    ready = tmp_path / "ready"
    argv = [sys.executable, str(script), mode, str(ready)]
    return daemon.Daemon(argv, dict(os.environ), tmp_path / "daemon.log"), ready


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not created within {timeout}s")
        time.sleep(0.01)


def _signal_self_when_ready(ready: Path, signum: int) -> threading.Thread:
    def go() -> None:
        _wait_for(ready)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("code, expected", [(0, 1), (3, 3)])
def test_daemon_dying_by_itself_is_a_failure(tmp_path: Path, code: int, expected: int) -> None:
    proc, _ = _daemon(tmp_path, f"exit{code}")
    assert daemon.run_foreground(proc, grace=5) == expected
    assert "daemon log line" in (tmp_path / "daemon.log").read_text()


@pytest.mark.parametrize("signum, mode", [(signal.SIGTERM, "graceful"), (signal.SIGINT, "graceful"),
                                          (signal.SIGTERM, "slow")])
def test_signal_to_us_becomes_a_graceful_stop(tmp_path: Path, signum: int, mode: str) -> None:
    proc, ready = _daemon(tmp_path, mode)
    previous = signal.getsignal(signum)
    thread = _signal_self_when_ready(ready, signum)
    assert daemon.run_foreground(proc, grace=10) == 0
    thread.join(5)
    assert proc.poll() == 143
    assert signal.getsignal(signum) == previous, "handlers are restored"


def test_daemon_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    proc, ready = _daemon(tmp_path, "stubborn")
    _signal_self_when_ready(ready, signal.SIGTERM)
    started = time.monotonic()
    assert daemon.run_foreground(proc, grace=0.5) == 1
    assert time.monotonic() - started < 10
    assert proc.poll() == -signal.SIGKILL


def test_context_manager_always_stops(tmp_path: Path) -> None:
    proc, ready = _daemon(tmp_path, "graceful")
    with proc:
        _wait_for(ready)
        assert proc.poll() is None
    assert proc.poll() == 143
    result = proc.wait(1)
    assert result.requested and result.clean


PARENT = """
import os, sys, time
from pathlib import Path
from kcl_app import daemon
fake, ready, log = sys.argv[1:4]
d = daemon.Daemon([sys.executable, fake, "graceful", ready], dict(os.environ), Path(log)).start()
print(d.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_daemon_never_outlives_its_parent(tmp_path: Path) -> None:
    (tmp_path / "fake_daemon.py").write_text(FAKE)
    (tmp_path / "parent.py").write_text(PARENT)
    ready = tmp_path / "ready"
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "fake_daemon.py"), str(ready),
         str(tmp_path / "daemon.log")], stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
        start_new_session=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        _wait_for(ready)
        assert not _gone(child)
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 10
        while not _gone(child):
            assert time.monotonic() < deadline, "the daemon outlived its parent"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(5)
        if parent.stdout:
            parent.stdout.close()


def test_kill_takes_the_children_too(tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(tmp_path / 'ready')!r}, 'w').write(str(c.pid))\n"
        "time.sleep(60)\n")
    proc = daemon.Daemon([sys.executable, str(script)], dict(os.environ)).start()
    ready = tmp_path / "ready"
    _wait_for(ready)
    deadline = time.monotonic() + 5
    while not ready.read_text():
        assert time.monotonic() < deadline
    grandchild = int(ready.read_text())
    proc.kill()
    assert proc.wait(5).killed
    deadline = time.monotonic() + 5
    while not _gone(grandchild):
        assert time.monotonic() < deadline, "the record processor survived kill()"
        time.sleep(0.02)
