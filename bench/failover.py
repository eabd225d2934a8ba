"""Lease failover time of the real KCL 3.1.3 daemon after kill -9, on the local stack.

For each run: a fresh 4-shard stream, two `tablesync run` workers (leases created and assigned by
the KCL itself), a writer changing the source about 40 times a second; once both workers own
leases and are processing them, one worker is killed with -9 (its whole process group). Two
figures per run, both measured from the kill:

* ``leases``: until every lease the victim owned names another owner in the lease table;
* ``records``: until records were processed again on every shard the victim owned (first EMF
  ``{"Shard": s, "Records": n}`` document stamped after the victim was dead) -- the failover time.

Victims: ``follower`` (a worker that is not the leader) and ``leader`` (the owner of the leader
lock in ``<app>-CoordinatorState``). A run that does not fail over within its timeout counts as
stalled. Prints every run and the median per victim. Never asserted on: a benchmark.

    .venv/bin/python -m bench.failover [--runs 3] [--leader-runs 3] [--leader-timeout 180]

Takes about 1 min per follower run and 3 min per leader run on 2 cores (the defaults: ~12 min).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tablesync_local.fleet import (
    LOCAL_PROPERTIES,
    Fleet,
    create_source,
    create_table,
    leader_of,
    lease_owners,
    read_metrics,
    wait_for,
)
from tablesync_local.stack import LocalStack, running_stack

REGION = "us-east-1"
SHARDS = 4


@dataclass(frozen=True)
class Outcome:
    """One run: seconds from the kill to the leases moving / to records flowing again (None: stalled)."""

    victim: str
    shards: int
    leases_s: float | None
    records_s: float | None
    leader_after: str  # who holds the leader lock at the end: "survivor", "victim" or "nobody"


def processed_since(path: Path, since_ms: float) -> set[str]:
    """Shards with at least one processed batch stamped after ``since_ms`` (epoch ms)."""
    docs, _ = read_metrics(path)
    return {d["Shard"] for d in docs if "Shard" in d and d["_aws"]["Timestamp"] > since_ms and d.get("Records")}


class Writer:
    """Changes the source continuously from a thread until ``stop()``."""

    def __init__(self, stack: LocalStack, table: str) -> None:
        self._ddb = stack.client("dynamodb", REGION)
        self._table = table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="source-writer", daemon=True)

    def _run(self) -> None:
        rng = random.Random(3)
        n = 0
        while not self._stop.is_set():
            key = {"pk": {"S": f"k{rng.randrange(40):02d}"}}
            self._ddb.put_item(TableName=self._table, Item={**key, "n": {"N": str(n)}})
            n += 1
            self._stop.wait(0.025)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def one_run(stack: LocalStack, workdir: Path, properties: Path, victim_role: str, timeout: float) -> Outcome:
    suffix = uuid.uuid4().hex[:6]
    source, stream, app = f"src-{suffix}", f"stream-{suffix}", f"app-{suffix}"
    ddb = stack.client("dynamodb", REGION)
    create_source(ddb, stack.client("kinesis", REGION), source, stream, SHARDS)
    create_table(stack.client("dynamodb", "eu-west-1"), f"{source}-copy")
    config = workdir / f"{app}.toml"
    config.write_text(f'[source]\ntable = "{source}"\n\n[[targets]]\nname = "copy"\nregion = "eu-west-1"\n'
                      f'table = "{source}-copy"\nendpoint_url = "{stack.endpoint}"\n'
                      f'dead_letter = {{ kind = "dir", path = "{workdir / "dlq"}" }}\n', encoding="utf-8")
    fleet = Fleet(stack.endpoint, stream, app, config, workdir, properties=properties)
    writer = Writer(stack, source)
    writer.start()
    try:
        workers = [fleet.start_worker(f"{app}-w1"), fleet.start_worker(f"{app}-w2")]
        ids = {w.name: wait_for(lambda w=w: w.kcl_id(), 120, 0.5, "a worker id") for w in workers}

        def shared() -> bool:
            owners = lease_owners(ddb, app)
            pending = any("checkpointOwner" in i for i in ddb.scan(TableName=app, ConsistentRead=True)["Items"])
            return len(owners) == SHARDS and set(owners.values()) == set(ids.values()) and not pending
        wait_for(shared, 240, 0.5, "both workers to own leases")
        leader = leader_of(ddb, app)
        victim = next(w for w in workers if (ids[w.name] == leader) == (victim_role == "leader"))
        settled_ms = time.time() * 1000
        mine = {s for s, o in lease_owners(ddb, app).items() if o == ids[victim.name]}
        wait_for(lambda: mine <= processed_since(fleet.metrics_file, settled_ms), 60, 0.3, "the victim to process")

        mine = {s for s, o in lease_owners(ddb, app).items() if o == ids[victim.name]}
        killed = time.monotonic()
        fleet.kill9(victim)
        dead_ms = time.time() * 1000
        leases_s = records_s = None
        while time.monotonic() - killed < timeout and records_s is None:
            owners = lease_owners(ddb, app)
            if leases_s is None and all(owners[s] != ids[victim.name] for s in mine):
                leases_s = time.monotonic() - killed
            if mine <= processed_since(fleet.metrics_file, dead_ms):
                records_s = time.monotonic() - killed
            time.sleep(0.2)
        holder = leader_of(ddb, app)
        leader_after = "nobody" if holder is None else "victim" if holder == ids[victim.name] else "survivor"
        return Outcome(victim_role, len(mine), leases_s, records_s, leader_after)
    finally:
        writer.stop()
        fleet.stop(timeout=20)


def _fmt(value: float | None, timeout: float) -> str:
    return f"{value:6.1f} s" if value is not None else f"> {timeout:.0f} s (stalled)"


def _median(values: list[float | None]) -> float | None:
    median = statistics.median([v if v is not None else float("inf") for v in values])
    return None if median == float("inf") else median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs with a follower victim")
    parser.add_argument("--leader-runs", type=int, default=3, help="runs with the leader as victim")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for a follower failover")
    parser.add_argument("--leader-timeout", type=float, default=180,
                        help="seconds to wait for a leader failover (the leader lock lasts 120 s)")
    parser.add_argument("--properties", type=Path, default=LOCAL_PROPERTIES)
    args = parser.parse_args(argv)

    started = time.monotonic()
    print(f"KCL 3.1.3 lease failover after kill -9: 2 workers, {SHARDS} shards, ~40 changes/s, "
          f"properties {args.properties.name}")
    results: dict[str, list[Outcome]] = {"follower": [], "leader": []}
    with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
        workdir = Path(tmp)
        with running_stack(log_path=workdir / "stack.log") as stack:
            plan = [("follower", args.timeout)] * args.runs + [("leader", args.leader_timeout)] * args.leader_runs
            for number, (role, timeout) in enumerate(plan, start=1):
                outcome = one_run(stack, workdir, args.properties, role, timeout)
                results[role].append(outcome)
                print(f"run {number:2d}  victim={role:8s} shards={outcome.shards}  "
                      f"leases moved {_fmt(outcome.leases_s, timeout)}  "
                      f"records again {_fmt(outcome.records_s, timeout)}  "
                      f"leader lock then held by the {outcome.leader_after}",
                      flush=True)
    for role, timeout in (("follower", args.timeout), ("leader", args.leader_timeout)):
        outcomes = results[role]
        if outcomes:
            print(f"median  victim={role:8s} n={len(outcomes)}  "
                  f"leases moved {_fmt(_median([o.leases_s for o in outcomes]), timeout)}  "
                  f"failover (records again) {_fmt(_median([o.records_s for o in outcomes]), timeout)}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
