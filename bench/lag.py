"""bench/lag: end-to-end lag on the local stack, tablesync vs the classic copier, same stream, same run.

Source writes at a steady rate into a table whose Kinesis streaming destination feeds a 4-shard
stream. Two consumers read that stream at the same polling interval (200 ms):

* tablesync: two real KCL workers (`tablesync run`, properties/local.properties) applying every
  change to two targets in two regions; lag = applied time - ApproximateCreationDateTime, from the
  workers' own LagMs metric (per target, so "applied in every target" is the max over targets).
* the classic copier: one poller per shard (GetRecords every 200 ms), put_item/delete_item per
  record, sequential; lag measured the same way after each call.

Prints p50/p99 for each and the ratio. Never asserts. The machine's 2 cores are shared by the
emulator, both daemons, the record processors, the copier and the writer: absolute figures are
this machine's. Usage: .venv/bin/python bench/lag.py [--rate 500] [--seconds 30] [--properties F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tablesync_local.fleet import (  # noqa: E402
    LOCAL_PROPERTIES,
    Fleet,
    create_source,
    create_table,
    lease_owners,
    leases,
    read_metrics,
)
from tablesync_local.stack import running_stack  # noqa: E402

REGION = "us-east-1"
TARGETS = (("dr", "eu-west-1", "lag-dr"), ("lite", "ap-southeast-2", "lag-lite"))


def spread(owners: dict[str, str | None]) -> int:
    """Most minus fewest leases per worker (both workers counted, an unowned lease counts as one)."""
    counts = [list(owners.values()).count(w) for w in set(owners.values()) if w]
    counts += [0] * (2 - len(counts))
    return max(counts) - min(counts) + sum(1 for w in owners.values() if not w)


def handoff_in_progress(client_ddb, app: str) -> bool:
    """A KCL 3.x graceful hand-off is under way while a lease carries a checkpointOwner."""
    return any("checkpointOwner" in item for item in leases(client_ddb, app).values())


def handoffs(fleet: Fleet) -> int:
    """Graceful lease hand-offs started so far, counted in the workers' daemon logs."""
    count = 0
    for worker in fleet.workers:
        if worker.log_path.exists():
            text = worker.log_path.read_text(encoding="utf-8", errors="replace")
            count += text.count("Initiated graceful lease handoff")
    return count


def shard_process_rss_mb(fleet: Fleet) -> list[tuple[float, float]]:
    """(VmRSS, VmHWM = peak) of every record-processor process (`-m kcl_app.worker`) of the fleet."""
    out = []
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = status.read_bytes().split(b"\0")
            if b"kcl_app.worker" not in argv or str(fleet.config).encode() not in argv:
                continue
            fields = dict(line.split(":", 1) for line in (status.parent / "status").read_text().splitlines()
                          if ":" in line)
            out.append((int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024))
        except (OSError, KeyError, ValueError):
            continue
    return sorted(out)


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def write_load(stack, rate: float, seconds: float, keys: int, first: int, threads: int = 8) -> int:
    """Write at `rate` per second for `seconds` from `threads` paced writers; returns the count."""
    done = [0] * threads

    def writer(i: int) -> None:
        client = stack.client("dynamodb", REGION)
        interval = threads / rate
        begin = next_write = time.monotonic()
        n = first + i
        while time.monotonic() - begin < seconds:
            key = {"pk": {"S": f"k{n % keys:06d}"}}
            if n % 10 == 9:
                client.delete_item(TableName="lag-source", Key=key)
            else:
                client.put_item(TableName="lag-source", Item={**key, "n": {"N": str(n)}, "b": {"B": b"\x00\x01"},
                                                              "s": {"SS": ["a", str(n % 5)]}})
            done[i] += 1
            n += threads
            next_write += interval
            time.sleep(max(0.0, next_write - time.monotonic()))

    pool = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done)


def copier(stack, stream: str, stop: threading.Event, lags: list[float], idle: float) -> list[threading.Thread]:
    kinesis = stack.client("kinesis", REGION)
    target = stack.client("dynamodb", "eu-west-2")
    create_table(target, "lag-copier")
    threads = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        def poll(shard_id: str = shard["ShardId"]) -> None:
            k = stack.client("kinesis", REGION)
            d = stack.client("dynamodb", "eu-west-2")
            it = k.get_shard_iterator(StreamName=stream, ShardId=shard_id, ShardIteratorType="LATEST")["ShardIterator"]
            while not stop.is_set():
                page = k.get_records(ShardIterator=it, Limit=1000)
                for rec in page["Records"]:
                    doc = json.loads(rec["Data"])
                    if doc["eventName"] == "REMOVE":
                        d.delete_item(TableName="lag-copier", Key=doc["dynamodb"]["Keys"])
                    else:
                        d.put_item(TableName="lag-copier", Item=doc["dynamodb"]["NewImage"])
                    lags.append(time.time() * 1000 - doc["dynamodb"]["ApproximateCreationDateTime"] / 1000)
                it = page.get("NextShardIterator")
                if not it:
                    return
                stop.wait(idle)
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        threads.append(t)
    return threads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=500.0, help="source writes per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--properties", type=Path, default=LOCAL_PROPERTIES,
                    help="KCL properties template of the workers (default: properties/local.properties)")
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    workdir = Path(tempfile.mkdtemp(prefix="tablesync-lag-"))
    with running_stack(log_path=workdir / "stack.log") as stack:
        source = stack.client("dynamodb", REGION)
        create_source(source, stack.client("kinesis", REGION), "lag-source", "lag-stream", 4, "MICROSECOND")
        lines = ['[source]\ntable = "lag-source"\n']
        for name, region, table in TARGETS:
            create_table(stack.client("dynamodb", region), table)
            lines.append(f'[[targets]]\nname = "{name}"\nregion = "{region}"\ntable = "{table}"\n'
                         f'endpoint_url = "{stack.endpoint}"\n'
                         f'dead_letter = {{ kind = "dir", path = "{workdir / "dlq"}" }}\n')
        config = workdir / "targets.toml"
        config.write_text("\n".join(lines))
        fleet = Fleet(stack.endpoint, "lag-stream", "lag-app", config, workdir, properties=args.properties.resolve())
        try:
            fleet.start_worker()
            fleet.start_worker()
            deadline = time.monotonic() + 120
            while not (len(o := lease_owners(source, "lag-app")) >= 4 and all(o.values())):
                if time.monotonic() > deadline:
                    print("leases not taken in 120 s", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            source.put_item(TableName="lag-source", Item={"pk": {"S": "warm-up"}})
            warm = [(stack.client("dynamodb", r), t) for _, r, t in TARGETS]
            while not all(c.get_item(TableName=t, Key={"pk": {"S": "warm-up"}}).get("Item") for c, t in warm):
                time.sleep(0.2)
            # KCL 3.x balances leases by throughput once records flow: load the stream until the
            # leases are balanced (2/2) and 20 s (longer than the local properties' 15 s
            # rebalancing period) pass with no lease moving and no hand-off in progress (or 240 s),
            # so that the figures are those of a steady, balanced fleet, not of a hand-off
            settle = time.monotonic() + 240
            history: list[dict[str, str | None]] = []
            while time.monotonic() < settle:
                write_load(stack, args.rate, 10, args.keys, 10_000_000)
                history.append(lease_owners(source, "lag-app"))
                if (len(history) >= 3 and history[-1] == history[-2] == history[-3]
                        and spread(history[-1]) <= 1 and not handoff_in_progress(source, "lag-app")):
                    break
            else:
                print("leases still moving after 240 s of load; measuring anyway", file=sys.stderr)
            owners = lease_owners(source, "lag-app")
            balance = sorted(list(owners.values()).count(w) for w in set(owners.values()))
            moves_before = handoffs(fleet)
            _, offset = read_metrics(fleet.metrics_file)
            stop = threading.Event()
            copier_lags: list[float] = []
            pollers = copier(stack, "lag-stream", stop, copier_lags, 0.2)
            start = time.monotonic()
            writes = write_load(stack, args.rate, args.seconds, args.keys, 0)
            achieved = writes / (time.monotonic() - start)
            # both consumers have drained once a last marker is in all three tables
            source.put_item(TableName="lag-source", Item={"pk": {"S": "done"}})
            tables = [*warm, (stack.client("dynamodb", "eu-west-2"), "lag-copier")]
            deadline = time.monotonic() + 120
            while not all(c.get_item(TableName=t, Key={"pk": {"S": "done"}}).get("Item") for c, t in tables):
                if time.monotonic() > deadline:
                    print("consumers did not drain in 120 s; figures below are partial", file=sys.stderr)
                    break
                time.sleep(0.2)
            stop.set()
            for t in pollers:
                t.join(timeout=5)
            moves = handoffs(fleet) - moves_before
            rss = shard_process_rss_mb(fleet)
            docs, _ = read_metrics(fleet.metrics_file, offset)
            ours = [float(v) for d in docs if d.get("Target") for v in d.get("LagMs", [])]
            print(f"workload: {writes} source writes at {achieved:.0f}/s ({args.rate:.0f} asked) over 4 shards, "
                  f"2 KCL workers (leases per worker: {balance}), idleTimeBetweenReadsInMillis=200, 2 targets; "
                  f"lag = applied - ApproximateCreationDateTime")
            print(f"{'consumer':<40}{'samples':>9}{'p50 ms':>9}{'p99 ms':>9}")
            print(f"{'tablesync (every target)':<40}{len(ours):>9}{pct(ours, 50):>9.0f}{pct(ours, 99):>9.0f}")
            print(f"{'classic copier (1 target, per record)':<40}{len(copier_lags):>9}"
                  f"{pct(copier_lags, 50):>9.0f}{pct(copier_lags, 99):>9.0f}")
            if copier_lags and ours:
                print(f"ratio copier/tablesync: p50 {pct(copier_lags, 50) / pct(ours, 50):.1f}x, "
                      f"p99 {pct(copier_lags, 99) / pct(ours, 99):.1f}x")
            # where tablesync's lag goes, per batch: waiting to be delivered (the stream's side), then applying
            delivery = [float(v) for d in docs if d.get("Shard") for v in d.get("DeliveryMs", [])]
            apply = [float(v) for d in docs if d.get("Target") for v in d.get("ApplyMs", [])]
            for label, values in (("  read: arrival -> delivered, per batch", delivery),
                                  ("  apply: delivered -> applied, per job", apply)):
                if values:
                    print(f"{label:<40}{len(values):>9}{pct(values, 50):>9.0f}{pct(values, 99):>9.0f}")
            print(f"lease hand-offs during the measurement: {moves}; load average {os.getloadavg()[0]:.1f}; "
                  "shard-process RSS now/peak: " + ", ".join(f"{r:.0f}/{h:.0f}" for r, h in rss) + " MB")
        finally:
            fleet.stop(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
