"""`tablesync demo`: the whole pipeline on the local stack, end to end, in one command.

1. start the local AWS stack (moto over HTTP/1.1 + h2c) on a free loopback port
2. create a source table with the Kinesis streaming destination (MICROSECOND) into a 4-shard stream
3. create two targets in two other regions: `dr` (exact copy) and `lite` (a projection)
4. start two KCL workers (`tablesync run`: the real MultiLangDaemon + our record processor)
5. write a mixed workload (puts, updates, deletes; binary, sets, maps, 38-digit numbers) at a
   steady rate, showing writes, applied per target and lag p50/p99 live
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
    key = f"order-{rng.randrange(keys):05d}"
    roll = rng.random()
    if roll < 0.15:
        ddb.delete_item(TableName=table, Key={"pk": {"S": key}})
        return "delete"
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


class Progress:
    def __init__(self, path: Path, targets: list[str]) -> None:
        self.path = path
        self.offset = 0
        self.applied = dict.fromkeys(targets, 0)
        self.parked = dict.fromkeys(targets, 0)
        self.lag: list[float] = []

    def reset(self) -> None:
        self.applied = dict.fromkeys(self.applied, 0)
        self.parked = dict.fromkeys(self.parked, 0)
        self.lag = []

    def poll(self) -> None:
        from tablesync_local.fleet import read_metrics

        docs, self.offset = read_metrics(self.path, self.offset)
        for doc in docs:
            target = doc.get("Target")
            if target in self.applied:
                self.applied[target] += int(doc.get("Applied", 0))
                self.parked[target] += int(doc.get("Parked", 0))
                self.lag += [float(v) for v in doc.get("LagMs", [])]

    def percentiles(self) -> tuple[float, float]:
        if len(self.lag) < 2:
            return (self.lag[0], self.lag[0]) if self.lag else (float("nan"), float("nan"))
        q = statistics.quantiles(self.lag, n=100, method="inclusive")
        return q[49], q[98]

    def line(self, writes: int) -> str:
        p50, p99 = self.percentiles()
        applied = "  ".join(f"{t}={n}" for t, n in self.applied.items())
        return f"writes={writes}  applied: {applied}  lag p50={p50:.0f} ms p99={p99:.0f} ms"


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
            _say(f"demo: started {args.workers} KCL workers; waiting for them to take the {args.shards} leases")
            deadline = time.monotonic() + 90
            while True:
                owners = lease_owners(source, "demo-app")
                if len(owners) >= args.shards and all(owners.values()):
                    break
                dead = [w.name for w in fleet.workers if not w.alive()]
                if dead or time.monotonic() > deadline:
                    _say(f"demo: workers did not take the leases ({'died: ' + ','.join(dead) if dead else 'timeout'})"
                         f"; see {workdir}/worker-*.log")
                    return 1
                time.sleep(0.5)
            _say(f"demo: leases taken by {len(set(owners.values()))} workers; warming up")
            # a first change must reach every target before the clock starts: the record processors
            # start (and create their ledgers) on their first batch, which is not replication lag
            source.put_item(TableName="demo-orders", Item={"pk": {"S": "warm-up"}})
            clients = [(stack.client("dynamodb", t["region"]), t["table"]) for t in TARGETS]
            deadline = time.monotonic() + 90
            while not all(c.get_item(TableName=tb, Key={"pk": {"S": "warm-up"}}).get("Item") for c, tb in clients):
                if time.monotonic() > deadline:
                    _say(f"demo: the first change did not reach the targets in 90 s; see {workdir}/worker-*.log")
                    return 1
                time.sleep(0.2)
            # 5 the workload, with a live progress line
            progress = Progress(fleet.metrics_file, [t["name"] for t in TARGETS])
            progress.poll()
            progress.reset()
            interval = 1.0 / args.rate
            start = time.monotonic()
            next_write, next_report, writes = start, start + 1.0, 0
            counts = {"put": 0, "update": 0, "delete": 0}
            while time.monotonic() - start < args.seconds:
                now = time.monotonic()
                if now >= next_write:
                    counts[_write_workload(source, "demo-orders", rng, args.keys, writes)] += 1
                    writes += 1
                    next_write += interval
                if now >= next_report:
                    progress.poll()
                    _say("demo: " + progress.line(writes))
                    next_report += 1.0
                time.sleep(max(0.0, min(next_write, next_report) - time.monotonic()))
            _say(f"demo: wrote {writes} changes ({counts['put']} puts, {counts['update']} updates, "
                 f"{counts['delete']} deletes); waiting for the targets to level")
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
                _say("demo: " + progress.line(writes))
                diff = diverging()
            progress.poll()
            p50, p99 = progress.percentiles()
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
                      f"({len(source_items)} items after {writes} changes; lag p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
                      f"{parked} parked)")
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
