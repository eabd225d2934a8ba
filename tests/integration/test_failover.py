"""Lease failover with the real KCL 3.1.3 daemon: kill -9 of a worker, and a full stop and restart.

Two `tablesync run` workers share a 4-shard stream while a writer keeps changing the source.
Leases are never seeded: the KCL creates and assigns them itself. Every wait is a condition with
a deadline; the evidence is the KCL lease table, the daemons' logs, the processors' EMF metrics
file and the target tables compared item by item with the source.

The victim of the kill is chosen on purpose: the worker that is NOT the leader. In KCL 3.1.3 only
the leader assigns leases, and its DynamoDB leader lock lasts 2 min with a 30 s heartbeat
(constants, no property reaches them): after a kill -9 of the leader no lease moves for about
2 min, too slow for this file. `bench/failover.py` measures both victims.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tablesync_local.fleet import (
    Fleet,
    create_source,
    create_table,
    differences,
    leader_of,
    lease_checkpoints,
    lease_owners,
    read_metrics,
    scan,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.daemon]

REGION = "us-east-1"
SHARDS = 4


# ----------------------------------------------------------------------------- helpers


def _setup(stack: Any, workdir: Path) -> tuple[str, str, str, list[dict[str, str]], Path]:
    """Source table + 4-shard stream + destination, two empty targets, the targets file."""
    suffix = uuid.uuid4().hex[:6]
    source, stream, app = f"src-{suffix}", f"stream-{suffix}", f"app-{suffix}"
    create_source(stack.client("dynamodb", REGION), stack.client("kinesis", REGION), source, stream, SHARDS)
    targets = [{"name": "eu", "region": "eu-west-1", "table": f"{source}-eu"},
               {"name": "ap", "region": "ap-southeast-2", "table": f"{source}-ap"}]
    blocks = [f'[source]\ntable = "{source}"\n']
    for t in targets:
        create_table(stack.client("dynamodb", t["region"]), t["table"])
        blocks.append(f'[[targets]]\nname = "{t["name"]}"\nregion = "{t["region"]}"\ntable = "{t["table"]}"\n'
                      f'endpoint_url = "{stack.endpoint}"\n'
                      f'dead_letter = {{ kind = "dir", path = "{workdir / "dlq"}" }}\n')
    config = workdir / f"{app}.toml"
    config.write_text("\n".join(blocks), encoding="utf-8")
    return source, stream, app, targets, config


def _change(ddb: Any, table: str, rng: random.Random, n: int) -> None:
    """One put, update or delete of one of 40 keys."""
    key = {"pk": {"S": f"k{rng.randrange(40):02d}"}}
    roll = rng.random()
    if roll < 0.15:
        ddb.delete_item(TableName=table, Key=key)
    elif roll < 0.4:
        ddb.update_item(TableName=table, Key=key, UpdateExpression="SET n = :n, s = :s",
                        ExpressionAttributeValues={":n": {"N": str(n)}, ":s": {"SS": ["u", str(n)]}})
    else:
        ddb.put_item(TableName=table, Item={**key, "n": {"N": str(n)}, "b": {"B": rng.randbytes(6)}})


class _Writer:
    """Changes the source continuously (about 40 changes/s) from a thread until stopped."""

    def __init__(self, stack: Any, table: str) -> None:
        self._ddb = stack.client("dynamodb", REGION)
        self._table = table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="source-writer", daemon=True)
        self.count = 0
        self.error: BaseException | None = None

    def _run(self) -> None:
        rng = random.Random(11)
        try:
            while not self._stop.is_set():
                _change(self._ddb, self._table, rng, self.count)
                self.count += 1
                self._stop.wait(0.025)  # pacing of the load, not synchronisation
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise AssertionError("the source writer failed") from self.error
        return self.count

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _handoff_pending(ddb: Any, app: str) -> bool:
    """True while a graceful hand-off is in flight (a lease still names its previous owner)."""
    items = ddb.scan(TableName=app, ConsistentRead=True).get("Items", [])
    return any("checkpointOwner" in item for item in items)


def _records_per_shard(docs: list[dict[str, Any]], since_ms: float = 0) -> dict[str, int]:
    counts: dict[str, int] = {}
    for doc in docs:
        if "Shard" in doc and doc["_aws"]["Timestamp"] > since_ms:
            counts[doc["Shard"]] = counts.get(doc["Shard"], 0) + int(doc.get("Records", 0))
    return counts


def _converged(stack: Any, source: str, targets: list[dict[str, str]]):
    def check() -> bool:
        src = scan(stack.client("dynamodb", REGION), source)
        return all(not any(differences(src, scan(stack.client("dynamodb", t["region"]), t["table"])).values())
                   for t in targets)
    return check


@pytest.fixture
def fleets(tmp_path):
    made: list[Fleet] = []

    def make(*args: Any, **kwargs: Any) -> Fleet:
        fleet = Fleet(*args, **kwargs)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.stop(timeout=20)


# ----------------------------------------------------------------------------- tests


def test_kill9_of_a_worker_moves_its_leases_to_the_survivor_and_nothing_is_lost(local_stack, fleets,
                                                                               tmp_path) -> None:
    """(b) Two workers share 4 shards while writes flow; the non-leader is killed with -9 mid-stream:
    its leases move to the survivor, which processes those shards again, and both targets end up
    equal to the source."""
    source, stream, app, targets, config = _setup(local_stack, tmp_path)
    ddb = local_stack.client("dynamodb", REGION)
    fleet = fleets(local_stack.endpoint, stream, app, config, tmp_path)
    with _Writer(local_stack, source) as writer:
        workers = [fleet.start_worker(), fleet.start_worker()]
        ids = {w.name: wait_for(lambda w=w: w.kcl_id(), 90, 0.5, f"{w.name}'s KCL worker id") for w in workers}
        assert len(set(ids.values())) == 2

        def shared() -> bool:
            owners = lease_owners(ddb, app)
            return (len(owners) == SHARDS and set(owners.values()) == set(ids.values())
                    and not _handoff_pending(ddb, app))
        wait_for(shared, 150, 0.5, "both workers to own at least one of the 4 leases (KCL balancing)")

        leader = leader_of(ddb, app)
        assert leader in ids.values(), f"the leader lock names a worker of this fleet ({leader})"
        victim = next(w for w in workers if ids[w.name] != leader)
        survivor = next(w for w in workers if w is not victim)
        # the victim is really processing its shards before it dies
        settled_ms = time.time() * 1000
        victim_shards = {s for s, o in lease_owners(ddb, app).items() if o == ids[victim.name]}
        assert victim_shards, "the non-leader owns leases"
        wait_for(lambda: victim_shards <= set(_records_per_shard(read_metrics(fleet.metrics_file)[0], settled_ms)),
                 60, 0.5, f"records processed on {sorted(victim_shards)}")

        victim_shards = {s for s, o in lease_owners(ddb, app).items() if o == ids[victim.name]}
        fleet.kill9(victim)
        dead_ms = time.time() * 1000
        assert not victim.alive()

        wait_for(lambda: all(lease_owners(ddb, app)[s] == ids[survivor.name] for s in victim_shards), 90, 0.5,
                 f"the survivor to own {sorted(victim_shards)}")
        wait_for(lambda: victim_shards <= set(_records_per_shard(read_metrics(fleet.metrics_file)[0], dead_ms)),
                 60, 0.5, "the survivor to process the victim's shards")
        written = writer.stop()

    local_stack.flush()
    wait_for(_converged(local_stack, source, targets), 120, 1.0, "both targets to equal the source")
    assert written > 100, "writes were flowing through the failover"
    assert survivor.alive()
    docs, _ = read_metrics(fleet.metrics_file)
    assert sum(d.get("Parked", 0) for d in docs) == 0, "nothing was parked"


def test_stop_and_restart_resumes_from_the_checkpoints(local_stack, fleets, tmp_path) -> None:
    """(d) Every worker is stopped with SIGTERM after processing a few hundred changes, then the fleet
    is restarted: it resumes from the checkpoints in the lease table (they never go back) and
    re-reads far fewer records than it had processed."""
    source, stream, app, targets, config = _setup(local_stack, tmp_path)
    ddb = local_stack.client("dynamodb", REGION)
    fleet = fleets(local_stack.endpoint, stream, app, config, tmp_path)
    rng = random.Random(5)
    first = [fleet.start_worker(), fleet.start_worker()]
    for n in range(300):
        _change(ddb, source, rng, n)
    local_stack.flush()
    wait_for(_converged(local_stack, source, targets), 150, 1.0, "both targets to equal the source")
    sent = local_stack.stats(source)["records_sent"]
    assert sent >= 200, "the changes reached the stream"
    wait_for(lambda: sum(_records_per_shard(read_metrics(fleet.metrics_file)[0]).values()) >= sent, 60, 0.5,
             f"all {sent} stream records to be processed")
    before = sum(_records_per_shard(read_metrics(fleet.metrics_file)[0]).values())

    fleet.stop(timeout=40)
    assert [w.proc.returncode for w in first] == [0, 0], "both workers stopped gracefully on SIGTERM"
    stopped = lease_checkpoints(ddb, app)
    assert len(stopped) == SHARDS
    assert all(c is not None and c.isdigit() for c in stopped.values()), f"every shard checkpointed: {stopped}"

    _, offset = read_metrics(fleet.metrics_file)
    fleet.start_worker()
    fleet.start_worker()
    for n in range(300, 320):
        _change(ddb, source, rng, n)
    local_stack.flush()
    wait_for(_converged(local_stack, source, targets), 150, 1.0, "both targets to equal the source after restart")
    new = local_stack.stats(source)["records_sent"] - sent
    assert new > 0
    wait_for(lambda: sum(_records_per_shard(read_metrics(fleet.metrics_file, offset)[0]).values()) >= new, 60, 0.5,
             f"the {new} new records to be processed")

    after = sum(_records_per_shard(read_metrics(fleet.metrics_file, offset)[0]).values())
    reread = after - new
    assert reread <= before // 10, f"re-read {reread} of {before} records after restart: not resumed"
    resumed = lease_checkpoints(ddb, app)
    assert all(c is not None and c.isdigit() and int(c) >= int(stopped[s]) for s, c in resumed.items()), \
        f"checkpoints moved forward from {stopped} to {resumed}"
