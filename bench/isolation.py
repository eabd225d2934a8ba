"""bench/isolation: one target down, the others unaffected, and the failed one healed without a command.

The local stack with a 4-shard stream and one real KCL worker (`tablesync run`) replicating to
three targets. The third target's endpoint is a TCP proxy in front of the emulator, which this
bench switches: `up` (forwards), `refuse` (nothing listens: connections are refused) and `silent`
(accepts and never answers; open connections stop answering too). The source is written at a
steady rate (40 writes/s by default) throughout:

  warm    (30 s)   every target up, not measured (start-up transients)
  before  (20 s)   every target up
  during  (60 s)   the third target refused for the first half, silent for the second
  after   (30 s)   the third target up again; then the writes stop

Prints the healthy targets' lag (LagMs, applied - ApproximateCreationDateTime, from the workers'
own metrics) p50/p99 per phase, with its read and apply parts (DeliveryMs, ApplyMs), and the time
from recovery until the failed target has caught up: first the moment its parked changes are all
re-applied (the dead-letter directory, read every 0.5 s without touching the emulator), then exact
equality with the source once the writes stop (table scans). Never asserts. The machine has 2 cores
shared by the emulator, the daemon, the record processors and the writers: figures are this
machine's, under its load.
Usage: .venv/bin/python bench/isolation.py [--rate 40] [--before 20] [--outage 60] [--after 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tablesync_local.fleet import (  # noqa: E402
    Fleet,
    create_source,
    create_table,
    differences,
    lease_owners,
    read_metrics,
    scan,
)
from tablesync_local.stack import running_stack  # noqa: E402
from tests.support.switch_proxy import SwitchProxy  # noqa: E402

REGION = "us-east-1"
TARGETS = (("alpha", "eu-west-1", "iso-alpha"), ("beta", "ap-southeast-2", "iso-beta"),
           ("gamma", "eu-west-2", "iso-gamma"))
FAILING = "gamma"


def ndiff(source: Any, target: Any) -> int:
    return sum(len(keys) for keys in differences(source, target).values())


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def writer(stack: Any, rate: float, stop: threading.Event, counter: list[int], keys: int = 2000) -> None:
    client = stack.client("dynamodb", REGION)
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        key = {"pk": {"S": f"k{n % keys:05d}"}}
        if n % 10 == 9:
            client.delete_item(TableName="iso-source", Key=key)
        else:
            client.put_item(TableName="iso-source", Item={**key, "n": {"N": str(n)}})
        n += 1
        counter[0] = n
        next_at += 1.0 / rate
        pause = next_at - time.monotonic()
        if pause > 0:
            stop.wait(pause)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=40.0, help="source writes per second")
    ap.add_argument("--warm", type=float, default=30.0, help="writes before the figures start")
    ap.add_argument("--before", type=float, default=20.0)
    ap.add_argument("--outage", type=float, default=60.0)
    ap.add_argument("--after", type=float, default=30.0)
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    workdir = Path(tempfile.mkdtemp(prefix="tablesync-isolation-"))
    with running_stack(log_path=workdir / "stack.log") as stack:
        host, port = stack.endpoint.split("//", 1)[1].rsplit(":", 1)
        proxy = SwitchProxy((host, int(port)))
        source = stack.client("dynamodb", REGION)
        create_source(source, stack.client("kinesis", REGION), "iso-source", "iso-stream", 4, "MICROSECOND")
        lines = ['[source]\ntable = "iso-source"\n']
        for name, region, table in TARGETS:
            create_table(stack.client("dynamodb", region), table)
            endpoint = f"http://127.0.0.1:{proxy.port}" if name == FAILING else stack.endpoint
            lines.append(f'[[targets]]\nname = "{name}"\nregion = "{region}"\ntable = "{table}"\n'
                         f'endpoint_url = "{endpoint}"\n'
                         f'dead_letter = {{ kind = "dir", path = "{workdir / "dlq"}" }}\n')
        config = workdir / "targets.toml"
        config.write_text("\n".join(lines))
        fleet = Fleet(stack.endpoint, "iso-stream", "iso-app", config, workdir)
        stop = threading.Event()
        try:
            fleet.start_worker()
            deadline = time.monotonic() + 120
            while not (len(o := lease_owners(source, "iso-app")) >= 4 and all(o.values())):
                if time.monotonic() > deadline:
                    print("leases not taken in 120 s", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            source.put_item(TableName="iso-source", Item={"pk": {"S": "warm-up"}})
            clients = {name: stack.client("dynamodb", region) for name, region, _ in TARGETS}
            tables = {name: table for name, _, table in TARGETS}
            while not all(clients[n].get_item(TableName=tables[n], Key={"pk": {"S": "warm-up"}}).get("Item")
                          for n in tables):
                time.sleep(0.2)
            counter = [0]
            load = threading.Thread(target=writer, args=(stack, args.rate, stop, counter), daemon=True)
            t0 = time.time()
            load.start()
            time.sleep(args.warm)  # steady state first (JVM, KCL lease balancing, connection pools)
            _, offset = read_metrics(fleet.metrics_file)
            time.sleep(args.before)
            t_down = time.time()
            proxy.set("refuse")
            time.sleep(args.outage / 2)
            proxy.set("silent")
            time.sleep(args.outage / 2)
            proxy.set("up")
            t_up = time.time()
            # While the writes go on, the failed target's progress is read off the dead-letter directory
            # (its parked changes, re-applied by the heal): scanning three tables a second here would
            # keep the one-process emulator busy and be what the healthy targets' lag measures.
            caught_up: float | None = None
            polls = 0
            while time.time() - t_up < args.after:
                polls += 1
                if caught_up is None and not list((workdir / "dlq").glob(f"{FAILING}/*.json")):
                    caught_up = time.time() - t_up
                time.sleep(0.5)
            stop.set()
            load.join(timeout=10)
            t_stop = time.time()
            equal: float | None = None
            while time.time() - t_stop < 120:
                src = scan(source, "iso-source")
                if not ndiff(src, scan(clients[FAILING], tables[FAILING])):
                    equal = time.time() - t_up
                    break
                time.sleep(1.0)
            time.sleep(12)  # the last metrics flush of the processors (every 10 s at most)
            docs, _ = read_metrics(fleet.metrics_file, offset)
            phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
            delivery: dict[str, list[float]] = {"before": [], "during": [], "after": []}  # per batch
            apply: dict[str, list[float]] = {"before": [], "during": [], "after": []}  # per healthy job
            for doc in docs:
                at = float(doc.get("_aws", {}).get("Timestamp", 0)) / 1000.0
                if at >= t_stop:  # the writes have stopped; the last ones meet the equality scans below
                    continue
                phase = "before" if at < t_down else "during" if at < t_up else "after"
                if doc.get("Shard"):
                    delivery[phase] += [float(v) for v in doc.get("DeliveryMs", [])]
                if doc.get("Target") not in ("alpha", "beta"):
                    continue
                phases[phase] += [float(v) for v in doc.get("LagMs", [])]
                apply[phase] += [float(v) for v in doc.get("ApplyMs", [])]
            load_avg = os.getloadavg()
            print(f"workload: {counter[0]} source writes at {args.rate:.0f}/s over 4 shards, 1 KCL worker, "
                  f"3 targets; {FAILING} refused for {args.outage / 2:.0f} s then silent for {args.outage / 2:.0f} s; "
                  f"load average at the end {load_avg[0]:.1f} (2 cores, shared)")
            print(f"{'healthy targets (alpha, beta)':<32}{'samples':>9}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'read p99':>10}{'apply p99':>11}")
            for phase, values in phases.items():
                print(f"{phase:<32}{len(values):>9}{pct(values, 50):>9.0f}{pct(values, 99):>9.0f}"
                      f"{pct(delivery[phase], 99):>10.0f}{pct(apply[phase], 99):>11.0f}")
            print("read: a batch's oldest record, arrival in the stream -> given to the processor (DeliveryMs); "
                  "apply: given to the engine -> settled in a healthy target (ApplyMs)")
            if phases["before"] and phases["during"]:
                print(f"during/before p99: {pct(phases['during'], 99) / pct(phases['before'], 99):.2f}x")
            caught = f"{caught_up:.1f}" if caught_up is not None else "never"
            print(f"{FAILING}: nothing left parked {caught} s "
                  f"after recovery (polled every 0.5 s, {polls} polls); equal to the source "
                  f"{f'{equal:.1f} s after recovery' if equal is not None else 'not within 120 s of the last write'} "
                  f"(the writes stopped {t_stop - t_up:.0f} s after recovery)")
            parked = list((workdir / "dlq").glob("*/*.json"))
            print(f"entries left in the dead-letter store: {len(parked)}; started {time.time() - t0:.0f} s ago")
        finally:
            stop.set()
            fleet.stop(timeout=30)
            proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
