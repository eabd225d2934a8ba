"""The worker's log with the real KCL 3.1.3 daemon: one JSON format, each line once, quiet when idle.

One `tablesync run` worker (the real record processor) on a 2-shard stream with one target. The
evidence is the combined output of the worker -- the daemon's log file (the daemon and, passed
through it, the record processors) and the stderr of `tablesync run` itself:

1. every line is a JSON object with the same fields (ts, level, logger, msg);
2. a processor INFO line ("initialize at ...") appears exactly once per shard, at INFO, and the
   KCL's copy of processor lines at ERROR ("Received error line from subprocess") never;
3. idle, the worker writes at most a few lines per minute. Measured by counting, not by timing:
   the clock is the lease table's ``leaseCounter``, which the daemon increments on every lease
   renewal (about every failoverTimeMillis / 3 = 1.3 s with the local properties);
4. a normal stop (SIGTERM) logs nothing above INFO.
"""

from __future__ import annotations

import json
import math
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from tablesync_local.fleet import Fleet, create_source, create_table, leases, scan, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.daemon, pytest.mark.timeout(180)]

REGION = "us-east-1"
SHARDS = 2
#: Lease renewals (summed over the shards) that make up the idle period: ~10 s here.
IDLE_RENEWALS = 16
#: Renewals per minute per shard with failoverTimeMillis = 4000 (one every 4000 / 3 ms).
RENEWALS_PER_MINUTE = 45
#: "A few lines per minute".
IDLE_LINES_PER_MINUTE = 6
#: Lines that come together, once a minute, and may all fall in a short window (the KCL
#: scheduler's "Current stream shard assignments" + "Sleeping ...").
IDLE_BURST = 3


def _lines(*paths: Path) -> list[str]:
    return [line for p in paths if p.exists() for line in p.read_text(errors="replace").splitlines()]


def _renewals(ddb: Any, app: str) -> int:
    return sum(int(item["leaseCounter"]["N"]) for item in leases(ddb, app).values())


def _parsed(lines: list[str]) -> list[dict[str, Any]]:
    docs = []
    for number, line in enumerate(lines, start=1):
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


def test_one_json_format_each_line_once_quiet_when_idle(local_stack: Any, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    source, stream, app = f"logsrc-{suffix}", f"logstream-{suffix}", f"logapp-{suffix}"
    ddb = local_stack.client("dynamodb", REGION)
    create_source(ddb, local_stack.client("kinesis", REGION), source, stream, SHARDS)
    target = f"{source}-copy"
    create_table(ddb, target)
    config = tmp_path / "targets.toml"
    config.write_text(f'[source]\ntable = "{source}"\n\n[[targets]]\nname = "copy"\nregion = "{REGION}"\n'
                      f'table = "{target}"\nendpoint_url = "{local_stack.endpoint}"\n'
                      f'dead_letter = {{ kind = "dir", path = "{tmp_path / "dlq"}" }}\n', encoding="utf-8")
    fleet = Fleet(local_stack.endpoint, stream, app, config, tmp_path)
    worker = fleet.start_worker("w1")
    daemon_log, run_stderr = worker.log_path, tmp_path / "w1.stderr"
    try:
        # 1 both shards start and replicate a few changes
        def initialized() -> int:
            return sum('"msg": "initialize at' in line for line in _lines(daemon_log))

        wait_for(lambda: initialized() >= SHARDS and worker.alive(), 90, what="both shards initialized")
        for i in range(6):
            ddb.put_item(TableName=source, Item={"pk": {"S": f"k{i}"}, "n": {"N": str(i)}})
        wait_for(lambda: len(scan(ddb, target)) == 6, 60, what="changes applied to the target")

        # 2 idle: count the lines written while the leases are renewed IDLE_RENEWALS times
        wait_for(lambda: _renewals(ddb, app) > 0, 30, what="leases renewed")
        start_lines, start_renewals = len(_lines(daemon_log, run_stderr)), _renewals(ddb, app)
        wait_for(lambda: _renewals(ddb, app) >= start_renewals + IDLE_RENEWALS, 60, what="idle renewals")
        idle = _lines(daemon_log, run_stderr)[start_lines:]
        renewals = _renewals(ddb, app) - start_renewals
        minutes = renewals / SHARDS / RENEWALS_PER_MINUTE
        allowed = math.ceil(IDLE_LINES_PER_MINUTE * minutes) + IDLE_BURST
        assert len(idle) <= allowed, (f"{len(idle)} lines over {renewals} lease renewals (~{minutes:.2f} min), "
                                      f"allowed {allowed}:\n" + "\n".join(idle))

        # 3 a normal stop
        stop_at = len(_lines(daemon_log)), len(_lines(run_stderr))
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=40) == 0
    finally:
        fleet.stop()

    docs = _parsed(_lines(daemon_log, run_stderr))
    for doc in docs:
        if "_aws" in doc:  # an EMF document: metrics go to the metrics file in this fleet
            pytest.fail(f"EMF document in the log: {doc}")
        assert {"ts", "level", "logger", "msg"} <= set(doc), doc
        assert doc["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), doc
    inits = [d for d in docs if d["msg"].startswith("initialize at")]
    assert len(inits) == SHARDS and {d["shard"] for d in inits} == {d["shard"] for d in inits if d["level"] == "INFO"}
    assert len({d["shard"] for d in inits}) == SHARDS, inits
    assert not [d for d in docs if "Received error line" in d["msg"]]
    # Above INFO: nothing from the processors, nothing during the stop. (The daemon may warn at
    # start that this host has no CPU metric: true away from EC2/ECS/EKS, and said once.)
    stopping = _parsed(_lines(daemon_log)[stop_at[0]:] + _lines(run_stderr)[stop_at[1]:])
    processors = [d for d in docs if d["logger"].startswith(("tablesync", "kcl_app", "amazon_kclpy"))]
    loud = [d for d in stopping + processors if d["level"] not in ("DEBUG", "INFO")]
    assert not loud, "logged above INFO:\n" + "\n".join(map(json.dumps, loud))
    assert any(d["logger"].startswith("software.amazon.kinesis") for d in docs), "no daemon line at all"
    assert any(d["msg"].startswith("shutdown requested") for d in docs)
