"""The periodic tasks of `tablesync run`: scheduling on a fake clock, the lifecycle watcher with a
recording Auto Scaling fake, the host CPU sampler, IMDSv2, and the whole graceful-leave sequence
with a real child process standing in for the daemon."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from kcl_app import daemon
from kcl_app.adapters.clock import SystemClock
from kcl_app.supervisor import InstanceMetadata, LifecycleWatcher, Periodic, ProcStatCpu, worker_id_for
from tests.conftest import FakeClock


class FakeMetadata:
    """Answers like IMDS: a lifecycle state that the test changes, and an instance id."""

    def __init__(self, state: str | None = "InService") -> None:
        self.state = state
        self.asked: list[str] = []

    def get(self, path: str) -> str | None:
        self.asked.append(path)
        if path == "autoscaling/target-lifecycle-state":
            return self.state
        return "i-0abc" if path == "instance-id" else None


class RecordingAutoScaling:
    def __init__(self, fail: Exception | None = None) -> None:
        self.completed: list[dict[str, str]] = []
        self.fail = fail

    def complete_lifecycle_action(self, **kwargs: str) -> dict[str, Any]:
        if self.fail:
            raise self.fail
        self.completed.append(kwargs)
        return {}


def test_periodic_runs_each_task_on_its_own_period_and_survives_a_failure() -> None:
    clock = FakeClock()
    calls: list[tuple[str, float]] = []

    def fleet() -> None:
        calls.append(("fleet", clock.monotonic()))

    def lifecycle() -> None:
        calls.append(("lifecycle", clock.monotonic()))
        raise RuntimeError("IMDS said no")

    periodic = Periodic([(30.0, fleet), (5.0, lifecycle), (0.0, fleet)], clock)  # period 0 = off
    periodic.reset()
    start = clock.monotonic()
    waits = []
    for _ in range(13):
        waits.append(periodic.due())
        clock.advance(5.0)

    assert [(name, t - start) for name, t in calls if name == "fleet"] == [("fleet", 30.0), ("fleet", 60.0)]
    assert [t - start for name, t in calls if name == "lifecycle"] == [5.0 * i for i in range(1, 13)]
    assert waits[0] == 5.0 and all(0 <= w <= 5.0 for w in waits)


def test_watcher_stops_once_on_termination_and_completes_the_hook_after() -> None:
    metadata, autoscaling, stops = FakeMetadata(), RecordingAutoScaling(), []
    watcher = LifecycleWatcher(metadata, autoscaling, "orders-app-workers", "tablesync-drain",
                               stop=lambda: stops.append(1))

    assert watcher.check() is False and stops == []
    metadata.state = "Terminated"
    assert watcher.check() is True and watcher.check() is True
    assert stops == [1]  # one stop request, however often it polls afterwards
    assert watcher.complete() is True
    assert autoscaling.completed == [{"LifecycleHookName": "tablesync-drain",
                                      "AutoScalingGroupName": "orders-app-workers",
                                      "InstanceId": "i-0abc", "LifecycleActionResult": "CONTINUE"}]


def test_watcher_retries_when_nobody_listens_for_the_stop_yet() -> None:
    metadata, answers = FakeMetadata("Terminated"), [False, True]
    watcher = LifecycleWatcher(metadata, RecordingAutoScaling(), "g", "h", stop=lambda: answers.pop(0))

    assert watcher.check() is False
    assert watcher.check() is True and answers == []


def test_complete_after_a_plain_stop_does_nothing_unless_the_group_is_terminating_us() -> None:
    metadata, autoscaling = FakeMetadata("InService"), RecordingAutoScaling()
    watcher = LifecycleWatcher(metadata, autoscaling, "g", "h", stop=lambda: None)

    assert watcher.complete() is False and autoscaling.completed == []
    metadata.state = "Terminated"  # systemd's stop came before the watcher's next poll
    assert watcher.complete() is True and len(autoscaling.completed) == 1


def test_a_failed_completion_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    watcher = LifecycleWatcher(FakeMetadata("Terminated"), RecordingAutoScaling(fail=RuntimeError("AccessDenied")),
                               "g", "h", stop=lambda: None)
    watcher.check()

    assert watcher.complete() is False
    assert "AccessDenied" in caplog.text and "times out" in caplog.text


def test_cpu_percentage_between_two_samples() -> None:
    lines = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  160 0 140 880 20 0 0 0 0 0\n", "garbage"])
    cpu = ProcStatCpu(read=lambda: next(lines))

    assert cpu.sample() is None  # nothing to compare with yet
    # busy 100 of 200 jiffies (idle 80 + iowait 20 are not busy)
    assert cpu.sample() == 50.0
    assert cpu.sample() is None


def test_instance_metadata_uses_a_v2_token_and_treats_errors_as_no_answer() -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []

    def opener(req: Any, timeout: float) -> Any:
        seen.append((req.get_method(), req.full_url, dict(req.header_items())))
        if req.full_url.endswith("/api/token"):
            return io.BytesIO(b"TOKEN")
        if req.full_url.endswith("/instance-id"):
            raise urllib.error.HTTPError(req.full_url, 404, "Not Found", None, None)  # type: ignore[arg-type]
        return io.BytesIO(b"Terminated\n")

    imds = InstanceMetadata("http://imds.test", opener=opener)

    assert imds.get("autoscaling/target-lifecycle-state") == "Terminated"
    assert seen[0][:2] == ("PUT", "http://imds.test/latest/api/token")
    assert seen[1][1] == "http://imds.test/latest/meta-data/autoscaling/target-lifecycle-state"
    assert seen[1][2]["X-aws-ec2-metadata-token"] == "TOKEN"
    assert imds.get("instance-id") is None
    with pytest.raises(ValueError, match="http"):
        InstanceMetadata("file:///etc/passwd")


def test_worker_id_from_the_properties_or_made_unique() -> None:
    assert worker_id_for({"workerId": "w-1"}, "host", "u") == ("w-1", False)
    assert worker_id_for({"workerIdentifier": "w-2"}, "host", "u") == ("w-2", False)
    assert worker_id_for({}, "ip-10-0-0-1", "abc") == ("ip-10-0-0-1:abc", True)
    assert worker_id_for({}, "my host,x", "abc") == ("my-host-x:abc", True)  # one token in the daemon's logs


CHILD = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    def stop(signum, frame):
        out.write_text(out.read_text() + "checkpointed\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    out.write_text("working\\n")
    while True:
        time.sleep(0.05)
""")


def test_leaving_the_group_stops_the_daemon_gracefully_then_completes_the_hook(tmp_path: Path) -> None:
    """What `tablesync run --auto-scaling-group G --lifecycle-hook H` does, with a child that plays
    the daemon: it checkpoints on SIGTERM. The watcher sees the termination, signals this process
    (as systemd would), run_foreground forwards the stop, and only then is the hook completed."""
    journal = tmp_path / "journal"
    metadata, autoscaling = FakeMetadata(), RecordingAutoScaling()
    completed_when: list[str] = []

    def terminate_once_working() -> str | None:
        if journal.exists() and metadata.state != "Terminated":
            metadata.state = "Terminated"
        return None

    watcher = LifecycleWatcher(metadata, autoscaling, "orders-app-workers", "tablesync-drain")
    periodic = Periodic([(0.05, terminate_once_working), (0.05, watcher.check)], SystemClock()).start()
    child = daemon.Daemon([sys.executable, "-c", CHILD, str(journal)], {}, tmp_path / "child.log")
    before = signal.getsignal(signal.SIGTERM)
    try:
        status = daemon.run_foreground(child, grace=20)
    finally:
        periodic.close()
    completed_when.append(journal.read_text())
    assert watcher.complete() is True

    assert status == 0
    assert completed_when == ["working\ncheckpointed\n"]  # the stop finished before the hook was completed
    assert autoscaling.completed[0]["InstanceId"] == "i-0abc"
    assert signal.getsignal(signal.SIGTERM) == before
    assert child.poll() is not None


def test_run_refuses_half_a_lifecycle_configuration(tmp_path: Path) -> None:
    config = tmp_path / "targets.toml"
    config.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "kcl_app.commands.run", "--properties", str(Path("properties/local.properties")),
         "--config", str(config), "--stream", "s", "--app", "a", "--endpoint", "http://127.0.0.1:9",
         "--lifecycle-hook", "tablesync-drain"],
        capture_output=True, text=True, timeout=60, check=False, cwd=Path(__file__).resolve().parents[2])

    assert result.returncode == 2
    assert "--auto-scaling-group and --lifecycle-hook together" in result.stderr


def test_the_watcher_thread_does_not_outlive_close() -> None:
    ticks = threading.Event()
    periodic = Periodic([(0.01, ticks.set)], SystemClock()).start()
    assert ticks.wait(5)
    periodic.close()
    assert periodic._thread is not None and not periodic._thread.is_alive()
