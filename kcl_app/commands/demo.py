"""`tablesync demo`: the whole pipeline on the local stack, end to end, in one command.

1. start the local AWS stack (moto over HTTP/1.1 + h2c) on a free loopback port
2. create a source table with the Kinesis streaming destination (MICROSECOND) into a 4-shard stream
3. create two targets in two other regions: `dr` (exact copy) and `lite` (a projection)
4. start two KCL workers (`tablesync run`: the real MultiLangDaemon + our record processor)
5. write a mixed workload (puts, updates, deletes; binary, sets, maps, 38-digit numbers) at a
   steady rate, showing every second: writes, applied per target, lag p50/p99 over the last
   10 s (a rolling window: a lease hand-off's pause shows while it lasts), how many changes each
   target is behind, and how many workers hold leases
6. wait until the targets are level, then `tablesync verify`'s check of every target; one verdict
7. stop the workers and the stack; exit 1 if any target diverges
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.scan import TargetSpec
from kcl_app.commands import NOT_INSTALLED, described, load_emulator
from kcl_app.config import load
from kcl_app.verify import Verifier

SOURCE_REGION = "us-east-1"
TARGETS: tuple[dict[str, Any], ...] = (
    {"name": "dr", "region": "eu-west-1", "table": "demo-orders-dr"},
    {"name": "lite", "region": "ap-southeast-2", "table": "demo-orders-lite", "exclude": ["secret", "blob"]},
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run the whole pipeline on the local stack and verify it", **described(__doc__))
    p.add_argument("--rate", type=float, default=40.0, help="source writes per second (default 40)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to write (default 20)")
    p.add_argument("--keys", type=int, default=150, help="distinct item keys (default 150)")
    p.add_argument("--shards", type=int, default=4, help="Kinesis shards (default 4)")
    p.add_argument("--workers", type=int, default=2, help="KCL workers (default 2)")
    p.add_argument("--settle-timeout", type=float, default=120.0, help="seconds to wait for the targets to level")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, config, dead letters)")
    return p


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _item(rng: random.Random, key: str, n: int) -> dict[str, Any]:
    return {
        "pk": {"S": key},
        "qty": {"N": str(rng.randint(0, 10**6))},
        "price": {"N": "1234567890123456789012345678901234567.8"[: rng.randint(3, 39)].rstrip(".") or "1"},
        "blob": {"B": rng.randbytes(rng.randint(1, 64))},
        "tags": {"SS": sorted({rng.choice("abcdefgh") for _ in range(rng.randint(1, 4))})},
        "secret": {"S": f"token-{rng.getrandbits(64):x}"},
        "meta": {"M": {"rev": {"N": str(n)}, "ok": {"BOOL": rng.random() < 0.5}, "none": {"NULL": True},
                       "hist": {"L": [{"S": "created"}, {"N": str(n)}]}}},
    }


def _write_workload(ddb: Any, table: str, rng: random.Random, keys: int, n: int) -> str:
    """One write; returns its kind. "delete-absent": a delete of a missing item, which DynamoDB
    does not put on the stream (every other kind here changes the item, so it is a change)."""
    key = f"order-{rng.randrange(keys):05d}"
    roll = rng.random()
    if roll < 0.15:
        old = ddb.delete_item(TableName=table, Key={"pk": {"S": key}}, ReturnValues="ALL_OLD")
        return "delete" if old.get("Attributes") else "delete-absent"
    if roll < 0.45:
        ddb.update_item(
            TableName=table, Key={"pk": {"S": key}},
            UpdateExpression="SET qty = :q, tags = :t, meta = :m",
            ExpressionAttributeValues={":q": {"N": str(n)}, ":t": {"SS": ["updated", f"n{n % 7}"]},
                                       ":m": {"M": {"rev": {"N": str(n)}}}},
        )
        return "update"
    ddb.put_item(TableName=table, Item=_item(rng, key, n))
    return "put"


def plural(count: int, noun: str) -> str:
    """``1 worker``, ``2 workers``, ``0 workers``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class Progress:
    """What the demo shows while it runs, read from the workers' EMF metrics file.

    Lag percentiles are over a rolling window (the samples emitted in the last ``window``
    seconds), so a pause -- a lease hand-off stops a shard for seconds -- shows while it lasts
    and then leaves the figures, instead of staying in a cumulative p99 for the rest of the run.
    ``behind`` per target: changes put on the stream that the target has not yet settled
    (applied, skipped as stale or duplicate, coalesced or parked). The whole-run lag figures are
    kept for the summary.
    """

    def __init__(self, path: Path, targets: list[str], window: float = 10.0) -> None:
        self.path = path
        self.window = window
        self.offset = 0
        self.applied = dict.fromkeys(targets, 0)
        self.parked = dict.fromkeys(targets, 0)
        self.settled = dict.fromkeys(targets, 0)
        self.recent: deque[tuple[float, float]] = deque()  # (emitted at, epoch seconds; lag ms)
        self.lag: list[float] = []  # the whole run

    def reset(self) -> None:
        self.applied = dict.fromkeys(self.applied, 0)
        self.parked = dict.fromkeys(self.parked, 0)
        self.recent.clear()
        self.settled = dict.fromkeys(self.settled, 0)
        self.lag = []

    def poll(self, now: float | None = None) -> None:
        from tablesync_local.fleet import read_metrics

        docs, self.offset = read_metrics(self.path, self.offset)
        for doc in docs:
            at = float(doc.get("_aws", {}).get("Timestamp", 0)) / 1000
            target = doc.get("Target")
            if target in self.applied:
                self.applied[target] += int(doc.get("Applied", 0))
                self.parked[target] += int(doc.get("Parked", 0))
                self.settled[target] += sum(int(doc.get(name, 0)) for name in _SETTLED)
                values = [float(v) for v in doc.get("LagMs", [])]
                self.lag += values
                self.recent.extend((at, v) for v in values)
        cutoff = (time.time() if now is None else now) - self.window
        while self.recent and self.recent[0][0] < cutoff:
            self.recent.popleft()

    @staticmethod
    def _percentiles(values: list[float]) -> tuple[float, float] | None:
        if not values:
            return None
        if len(values) < 2:
            return values[0], values[0]
        q = statistics.quantiles(values, n=100, method="inclusive")
        return q[49], q[98]

    def percentiles(self) -> tuple[float, float] | None:
        """p50, p99 of the last ``window`` seconds (None: nothing applied in that time)."""
        return self._percentiles([v for _, v in self.recent])

    def run_percentiles(self) -> tuple[float, float] | None:
        return self._percentiles(self.lag)

    def line(self, writes: int, changes: int | None = None, holders: int | None = None,
             workers: int | None = None) -> str:
        """The progress line; ``changes``: how many of the ``writes`` reached the stream."""
        applied = "  ".join(f"{t}={n}" for t, n in self.applied.items())
        recent = self.percentiles()
        lag = (f"lag (last {self.window:.0f} s) p50={recent[0]:.0f} ms p99={recent[1]:.0f} ms" if recent
               else f"lag (last {self.window:.0f} s) -")
        text = f"writes={writes}  applied: {applied}  {lag}"
        if changes is not None:
            text += "  behind: " + "  ".join(f"{t}={max(0, changes - n)}" for t, n in self.settled.items())
        if holders is not None and workers is not None:
            text += f"  leases held by {holders} of {plural(workers, 'worker')}"
        return text


#: Per-target counters that together account for every change of the target's source table.
_SETTLED = ("Applied", "StaleSkipped", "Duplicates", "Coalesced", "Parked")


def _holders(ddb: Any, app: str) -> int:
    from tablesync_local.fleet import lease_owners

    return len({owner for owner in lease_owners(ddb, app).values() if owner})


def run(args: argparse.Namespace) -> int:
    if load_emulator("demo") is None:
        return NOT_INSTALLED
    from tablesync_local.fleet import Fleet, create_source, create_table, differences, lease_owners, scan
    from tablesync_local.stack import running_stack

    workdir = Path(tempfile.mkdtemp(prefix="tablesync-demo-"))
    rng = random.Random(2024)
    _say(f"demo: work directory {workdir}")
    verdict = 1
    fleet: Fleet | None = None
    try:
        with running_stack(log_path=workdir / "stack.log") as stack:
            # 1-2 the stack, the source, its destination and stream
            _say(f"demo: local stack at {stack.endpoint}")
            source = stack.client("dynamodb", SOURCE_REGION)
            create_source(source, stack.client("kinesis", SOURCE_REGION), "demo-orders", "demo-stream",
                          args.shards, "MICROSECOND")
            # 3 two targets in two other regions
            lines = ['[source]\ntable = "demo-orders"\n']
            for t in TARGETS:
                create_table(stack.client("dynamodb", t["region"]), t["table"])
                lines.append(
                    f'[[targets]]\nname = "{t["name"]}"\nregion = "{t["region"]}"\ntable = "{t["table"]}"\n'
                    f'endpoint_url = "{stack.endpoint}"\n'
                    + (f"exclude = {t['exclude']!r}\n".replace("'", '"') if "exclude" in t else "")
                    + f'dead_letter = {{ kind = "dir", path = "{workdir / "dead-letters"}" }}\n'
                )
            config = workdir / "targets.toml"
            config.write_text("\n".join(lines), encoding="utf-8")
            # 4 two KCL workers
            fleet = Fleet(stack.endpoint, "demo-stream", "demo-app", config, workdir)
            for _ in range(args.workers):
                fleet.start_worker()
            _say(f"demo: started {plural(args.workers, 'KCL worker')}; waiting for them to take the "
                 f"{plural(args.shards, 'lease')} (the JVMs start, create the lease tables and elect a leader: "
                 f"about 20-40 s)")
            started = time.monotonic()
            deadline, next_note = started + 90, started + 5
            while True:
                owners = lease_owners(source, "demo-app")
                taken = sum(1 for owner in owners.values() if owner)
                if len(owners) >= args.shards and taken == len(owners):
                    break
                dead = [w.name for w in fleet.workers if not w.alive()]
                if dead or time.monotonic() > deadline:
                    _say(f"demo: workers did not take the leases ({'died: ' + ','.join(dead) if dead else 'timeout'})"
                         f"; see {workdir}/worker-*.log")
                    return 1
                if time.monotonic() >= next_note:
                    _say(f"demo: {time.monotonic() - started:.0f} s: {taken} of {plural(args.shards, 'lease')} taken")
                    next_note += 5
                time.sleep(0.5)
            holders = _holders(source, "demo-app")
            _say(f"demo: leases taken by {plural(holders, 'worker')} of {args.workers}"
                 + ("" if holders == args.workers else
                    " (KCL 3.x balances leases by throughput: they move to the other workers once records flow)"))
            # a first change must reach every target before the clock starts: the record processors
            # start (and create their ledgers) on their first batch, which is not replication lag
            _say("demo: warming up: one change must reach both targets before the clock starts (each record "
                 "processor connects and prepares its targets' ledgers on its first batch: start-up, not lag)")
            source.put_item(TableName="demo-orders", Item={"pk": {"S": "warm-up"}})
            clients = [(stack.client("dynamodb", t["region"]), t["table"]) for t in TARGETS]
            started = time.monotonic()
            deadline, next_note = started + 90, started + 5
            while not all(c.get_item(TableName=tb, Key={"pk": {"S": "warm-up"}}).get("Item") for c, tb in clients):
                if time.monotonic() > deadline:
                    _say(f"demo: the first change did not reach the targets in 90 s; see {workdir}/worker-*.log")
                    return 1
                if time.monotonic() >= next_note:
                    _say(f"demo: warming up, {time.monotonic() - started:.0f} s")
                    next_note += 5
                time.sleep(0.2)
            _say(f"demo: warm-up done in {time.monotonic() - started:.1f} s; writing {args.rate:g} changes/s "
                 f"for {args.seconds:g} s")
            # 5 the workload, with a live progress line
            progress = Progress(fleet.metrics_file, [t["name"] for t in TARGETS])
            progress.poll()
            progress.reset()
            interval = 1.0 / args.rate
            start = time.monotonic()
            next_write, next_report, writes = start, start + 1.0, 0
            counts = {"put": 0, "update": 0, "delete": 0, "delete-absent": 0}
            while time.monotonic() - start < args.seconds:
                now = time.monotonic()
                if now >= next_write:
                    counts[_write_workload(source, "demo-orders", rng, args.keys, writes)] += 1
                    writes += 1
                    next_write += interval
                if now >= next_report:
                    progress.poll()
                    _say("demo: " + progress.line(writes, writes - counts["delete-absent"],
                                                  _holders(source, "demo-app"), args.workers))
                    next_report += 1.0
                time.sleep(max(0.0, min(next_write, next_report) - time.monotonic()))
            _say(f"demo: wrote {plural(writes, 'change')} ({plural(counts['put'], 'put')}, "
                 f"{plural(counts['update'], 'update')}, {plural(counts['delete'] + counts['delete-absent'], 'delete')}"
                 f", {counts['delete-absent']} of them of absent items: not a change); "
                 f"waiting for the targets to level")
            # 6 wait until every target equals the source (projection applied), then verify
            source_items = scan(source, "demo-orders")
            targets = {t["name"]: (stack.client("dynamodb", t["region"]), t) for t in TARGETS}

            def diverging() -> dict[str, dict[str, list[str]]]:
                out = {}
                for name, (client, t) in targets.items():
                    diff = differences(source_items, scan(client, t["table"]), exclude=t.get("exclude", ()))
                    if any(diff.values()):
                        out[name] = diff
                return out

            settle = time.monotonic() + args.settle_timeout
            diff = diverging()
            while diff and time.monotonic() < settle:
                time.sleep(1.0)
                progress.poll()
                _say("demo: " + progress.line(writes, writes - counts["delete-absent"],
                                              _holders(source, "demo-app"), args.workers))
                diff = diverging()
            progress.poll()
            p50, p99 = progress.run_percentiles() or (float("nan"), float("nan"))
            parked = sum(progress.parked.values())
            # the verdict is `tablesync verify`'s: both directions, consistent re-reads, projections
            cfg = load(config)
            specs = [TargetSpec.from_config(t, cfg, stack.client("dynamodb", t.region)) for t in cfg.targets]
            report = Verifier(source, "demo-orders", specs, SystemClock()).run()
            if not report.clean:
                summary = "; ".join(
                    f"{name}: {r.count('missing')} missing, {r.count('extra')} extra, {r.count('different')} different"
                    for name, r in report.targets.items() if not r.clean)
                print(f"DIVERGED: {summary} (source {len(source_items)} items; logs in {workdir})")
                args.keep = True
            else:
                print(f"OK: {len(targets)} targets equal the source, verified item by item "
                      f"({plural(len(source_items), 'item')} after {plural(writes, 'write')}; lag over the run "
                      f"p50 {p50:.0f} ms, p99 {p99:.0f} ms; {parked} parked)")
                verdict = 0
            # 7 tear down
            fleet.stop()
    finally:
        if fleet is not None:
            fleet.stop(timeout=5)
        if not args.keep and verdict == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"demo: kept {workdir}")
    return verdict


if __name__ == "__main__":
    from kcl_app.commands import standalone

    sys.exit(standalone("demo"))
