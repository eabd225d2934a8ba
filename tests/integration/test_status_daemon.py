"""`tablesync status` against real KCL daemons (`tablesync run` on the local stack): two workers on
one host get distinct worker ids named after the host; once both stopped, the leases that still
name them are shown stale."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tablesync_local.fleet import Fleet, create_source, create_table, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.daemon]

REGION = "us-east-1"


def status(stack: Any, app: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcl_app.cli", "status", "--app", app, "--region", REGION,
                           "--endpoint", stack.endpoint, *extra], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **stack.env()})


def test_two_workers_on_one_host_then_both_stopped(local_stack: Any, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    source, stream, app = f"src-{suffix}", f"stream-{suffix}", f"app-{suffix}"
    ddb = local_stack.client("dynamodb", REGION)
    create_source(ddb, local_stack.client("kinesis", REGION), source, stream, 2)
    create_table(local_stack.client("dynamodb", "eu-west-1"), f"{source}-copy")
    config = tmp_path / "targets.toml"
    config.write_text(f'[source]\ntable = "{source}"\n\n[[targets]]\nname = "eu"\nregion = "eu-west-1"\n'
                      f'table = "{source}-copy"\nendpoint_url = "{local_stack.endpoint}"\n'
                      f'dead_letter = {{ kind = "dir", path = "{tmp_path / "dlq"}" }}\n')
    fleet = Fleet(local_stack.endpoint, stream, app, config, tmp_path)
    host = re.escape(re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()))
    try:
        fleet.start_worker()
        fleet.start_worker()

        def both_live() -> dict[str, Any] | None:
            done = status(local_stack, app, "--json")
            if done.returncode != 0:
                return None
            doc = json.loads(done.stdout)
            live = [w for w in doc["workers"]["workers"] if w["state"] == "live"]
            owners = {s["owner"] for s in doc["shards"] if s["owner"]}
            return doc if len(live) == 2 and len(doc["shards"]) == 2 and owners else None

        doc = wait_for(both_live, 240, 2.0, "two live workers in status")
        ids = [w["worker"] for w in doc["workers"]["workers"]]
        assert all(re.fullmatch(f"{host}:[0-9a-f]{{8}}", worker) for worker in ids), ids
        assert len(set(ids)) == 2, "two workers on one host stay distinct"
        assert {s["owner"] for s in doc["shards"] if s["owner"]} <= set(ids)
    finally:
        fleet.stop(timeout=60)

    def all_stale() -> dict[str, Any] | None:
        doc = json.loads(status(local_stack, app, "--stale-after", "20", "--json").stdout)
        owned = sum(1 for s in doc["shards"] if s["owner"])
        return doc if doc["workers"]["live"] == 0 and doc["workers"]["leases_not_live"] == owned else None

    stopped = wait_for(all_stale, 120, 2.0, "status to show the stopped workers' leases as stale")
    owned = sum(1 for s in stopped["shards"] if s["owner"])
    assert owned == 2, "a stopped worker's leases still name it"
    human = status(local_stack, app, "--stale-after", "20").stdout
    assert "2 leases, 2 owned, " in human and "workers (0 live" in human
    assert "STALE: 2 owned leases belong to workers that are not live" in human
