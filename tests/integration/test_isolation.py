"""One of two targets unreachable with the real KCL 3.1.3 daemon: refused connections, then a silent
endpoint (accepts and never answers), then back. The healthy target keeps up while it is down, and
at the end BOTH targets equal the source with no `redrive`: the failed target's parked changes are
re-applied automatically once it answers again.

The failing target's endpoint is a switchable TCP proxy in front of the emulator. Every wait is a
condition with a deadline; the evidence is the target tables compared item by item with the source,
the dead-letter store (empty at the end) and the processors' EMF metrics.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from tablesync_local.fleet import Fleet, create_source, create_table, differences, read_metrics, scan, wait_for
from tests.support.switch_proxy import SwitchProxy

pytestmark = [pytest.mark.integration, pytest.mark.daemon]

REGION = "us-east-1"


def _ndiff(source: Any, target: Any) -> int:
    return sum(len(keys) for keys in differences(source, target).values())


def test_a_refused_then_silent_target_heals_by_itself_and_the_other_keeps_up(local_stack, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    source, stream, app = f"iso-{suffix}", f"iso-stream-{suffix}", f"iso-app-{suffix}"
    ddb = local_stack.client("dynamodb", REGION)
    create_source(ddb, local_stack.client("kinesis", REGION), source, stream, 2)
    host, port = local_stack.endpoint.split("//", 1)[1].rsplit(":", 1)
    proxy = SwitchProxy((host, int(port)))
    targets = {"good": ("eu-west-1", f"{source}-good", local_stack.endpoint),
               "flaky": ("ap-southeast-2", f"{source}-flaky", f"http://127.0.0.1:{proxy.port}")}
    blocks = [f'[source]\ntable = "{source}"\n']
    for name, (region, table, endpoint) in targets.items():
        create_table(local_stack.client("dynamodb", region), table)
        blocks.append(f'[[targets]]\nname = "{name}"\nregion = "{region}"\ntable = "{table}"\n'
                      f'endpoint_url = "{endpoint}"\nretry_budget_seconds = 6\nheal_rate = 500\n'
                      f'dead_letter = {{ kind = "dir", path = "{tmp_path / "dlq"}" }}\n')
    config = tmp_path / "targets.toml"
    config.write_text("\n".join(blocks))
    fleet = Fleet(local_stack.endpoint, stream, app, config, tmp_path,
                  extra_env={"TABLESYNC_LOCK_DIR": str(tmp_path / "locks")})
    good = local_stack.client("dynamodb", "eu-west-1")
    flaky = local_stack.client("dynamodb", "ap-southeast-2")
    stop = threading.Event()
    written = [0]

    def write() -> None:
        n = 0
        while not stop.is_set():
            key = {"pk": {"S": f"k{n % 300:04d}"}}
            if n % 7 == 6:
                ddb.delete_item(TableName=source, Key=key)
            else:
                ddb.put_item(TableName=source, Item={**key, "n": {"N": str(n)}})
            n += 1
            written[0] = n
            stop.wait(0.05)

    try:
        fleet.start_worker()
        ddb.put_item(TableName=source, Item={"pk": {"S": "warm-up"}})
        for client, (_, table, _) in ((good, targets["good"]), (flaky, targets["flaky"])):
            wait_for(lambda c=client, t=table: c.get_item(TableName=t, Key={"pk": {"S": "warm-up"}}).get("Item"),
                     150, 0.5, f"the warm-up item in {table}")
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        proxy.set("refuse")
        wait_for(lambda: list((tmp_path / "dlq").glob("flaky/*.json")), 60, 0.5, "changes of the refused target parked")
        proxy.set("silent")
        # while the flaky target is silent the good one keeps up: a marker written now reaches it
        ddb.put_item(TableName=source, Item={"pk": {"S": "during-outage"}})
        wait_for(lambda: good.get_item(TableName=targets["good"][1], Key={"pk": {"S": "during-outage"}}).get("Item"),
                 30, 0.25, "the healthy target to get a change made while the other is silent")
        assert not flaky.get_item(TableName=targets["flaky"][1], Key={"pk": {"S": "during-outage"}}).get("Item")
        proxy.set("up")
        stop.set()
        writer.join(timeout=10)
        local_stack.flush()
        src = scan(ddb, source)
        wait_for(lambda: _ndiff(src, scan(good, targets["good"][1])) == 0, 60, 1.0, "the good target to converge")
        wait_for(lambda: _ndiff(src, scan(flaky, targets["flaky"][1])) == 0, 120, 1.0,
                 "the failed target to converge with no redrive")
        wait_for(lambda: not list((tmp_path / "dlq").glob("flaky/*.json")), 60, 1.0, "the parked entries settled")
    finally:
        stop.set()
        fleet.stop(timeout=30)
        proxy.close()
    assert written[0] > 50
    docs, _ = read_metrics(fleet.metrics_file)
    assert sum(d.get("AutoRedriven", 0) for d in docs if d.get("Target") == "flaky") > 0
    assert sum(d.get("Parked", 0) for d in docs if d.get("Target") == "good") == 0
