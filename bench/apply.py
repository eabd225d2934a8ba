"""bench/apply: one shard-sized process applying 20,000 changes into 1 and 3 targets (exact mode).

Every run is a fresh child process (so its CPU time and peak RSS are its own), repeated --repeat times
and reported as medians (RSS: the largest). The runs:

* tablesync -> 1 and 3 targets on the local stack (a moto emulator process started here, or --endpoint);
* tablesync -> 1 and 3 null targets (bench/null_target.py: answers every call with HTTP 200 ``{}``, stores
  nothing): the record processor's own capacity, with the emulator's cost per request taken out;
* tablesync -> 1 stubbed target (its TransactWriteItems answers at once, nothing is sent): the cost
  of tablesync's own code (decode, route, plan, coalesce, transaction building), alone;
* the classic Lambda copier (one put_item/delete_item per record, sequential) on the first
  --copier-changes changes only: at 30 ms per call it does ~30 changes/s.

A simulated round trip is added to every AWS call on the client side (a before-send hook that sleeps,
costing no CPU), for every kind of target. The emulator's own CPU per run is read from /proc.
Never asserts on time. Usage: .venv/bin/python bench/apply.py [--changes N] [--rtt-ms 30] [--repeat 3]

It ends with the write units per change type of exact, inline and the copier (bench/units.py: computed
from the requests each one sends); `--units` prints that table alone, in about half a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REGIONS = ["eu-west-1", "us-west-2", "ap-southeast-2"]
TARGET_COUNTS = (1, 3)


# ------------------------------------------------------------------------------------------ child side


def add_round_trip(client: Any, seconds: float) -> None:
    def wait(**_kwargs: Any) -> None:
        time.sleep(seconds)  # the simulated network: a blocked thread, no CPU

    client.meta.events.register("before-send", wait)


def make_table(client: Any, name: str) -> None:
    client.create_table(TableName=name, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")


def run_tablesync(endpoint: str, records: list[Any], targets: int, rtt: float, batch: int, run_id: str,
                  storage: bool, concurrency: int, stub: bool = False) -> dict[str, Any]:
    """Apply `records` in KCL-sized batches to `targets` targets; `storage` False: a null endpoint;
    `stub`: no call leaves the process (TransactWriteItems answers {} at once)."""
    import boto3

    from kcl_app.adapters.clock import SystemClock
    from kcl_app.adapters.metrics import RecordingMetrics
    from kcl_app.compose import boto_config, build_engine
    from kcl_app.config import parse
    from kcl_app.worker import settle_heap

    specs = []
    clients = {}
    for i in range(targets):
        name = f"t{i}"
        table = f"bench-{run_id}-{name}"
        client = boto3.client("dynamodb", region_name=REGIONS[i], endpoint_url=endpoint,
                              config=boto_config(max_pool=64))
        if storage:
            make_table(client, table)
        add_round_trip(client, rtt)
        if stub:
            client.transact_write_items = lambda **_kwargs: {}
        clients[name] = client
        specs.append({"name": name, "source_table": "bench-source", "region": REGIONS[i], "table": table,
                      "endpoint_url": endpoint, "max_concurrency": concurrency,
                      "dead_letter": {"path": tempfile.mkdtemp(prefix="bench-dlq-")}})
    # the source's key schema, as a shard process always has it (learned at start, or configured)
    cfg = parse({"source": {"key_schema": {"bench-source": ["pk:S"]}}, "targets": specs})
    engine = build_engine(cfg, clock=SystemClock(), metrics=RecordingMetrics(),
                          clients=clients, prepare=storage)
    settle_heap()  # as the shard process does once its engine is built (kcl_app.worker)
    applied = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, len(records), batch):
        result = engine.pipeline.process(records[start : start + batch])
        if not result.complete:
            raise SystemExit(f"bench batch at {start} not settled: {result}")
        applied += sum(t.applied for t in result.targets.values())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    engine.close()
    return {"changes": len(records), "wall_s": wall, "cpu_s": cpu, "targets": targets, "writes": applied}


def run_copier(endpoint: str, records: list[Any], rtt: float, run_id: str) -> dict[str, Any]:
    """The classic Lambda copier: one put_item(NewImage) / delete_item(Keys) per record, in order."""
    import boto3

    client = boto3.client("dynamodb", region_name=REGIONS[0], endpoint_url=endpoint)
    table = f"bench-{run_id}-copier"
    make_table(client, table)
    add_round_trip(client, rtt)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for raw in records:
        doc = json.loads(raw.data)
        if doc["eventName"] == "REMOVE":
            client.delete_item(TableName=table, Key=doc["dynamodb"]["Keys"])
        else:
            client.put_item(TableName=table, Item=doc["dynamodb"]["NewImage"])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"changes": len(records), "wall_s": wall, "cpu_s": cpu, "targets": 1, "writes": len(records)}


def child(args: argparse.Namespace) -> int:
    """One measured run in this (fresh) process; prints one JSON line."""
    from bench.workload import change_records

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    records = change_records(args.changes, args.keys)
    rtt = args.rtt_ms / 1000.0
    run_id = f"{args.child}-{args.targets}-{os.getpid()}"
    if args.child == "copier":
        out = run_copier(args.endpoint, records[: args.copier_changes], rtt, run_id)
    else:
        out = run_tablesync(args.endpoint, records, args.targets, rtt, args.batch, run_id,
                            storage=args.child == "tablesync", concurrency=args.concurrency,
                            stub=args.child == "stub")
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out), flush=True)
    return 0


# ----------------------------------------------------------------------------------------- parent side


def server_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a local process, or None when it cannot be read."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def emulator_pid(endpoint: str) -> int | None:
    from tablesync_local.stack import health

    pid = (health(endpoint, timeout=5) or {}).get("pid")
    return pid if isinstance(pid, int) else None


def measure(kind: str, targets: int, endpoint: str, args: argparse.Namespace, watch_pid: int | None) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--targets", str(targets),
               "--endpoint", endpoint, "--changes", str(args.changes), "--keys", str(args.keys),
               "--rtt-ms", str(args.rtt_ms), "--batch", str(args.batch), "--concurrency", str(args.concurrency),
               "--copier-changes", str(args.copier_changes)]
    before = server_cpu_s(watch_pid)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    after = server_cpu_s(watch_pid)
    if done.returncode != 0:
        raise SystemExit(f"{kind} x{targets} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu_s"] = None if before is None or after is None else after - before
    return result


def start_null_target() -> tuple[subprocess.Popen[str], str]:
    from tablesync_local.stack import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.null_target", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit("the null target did not start")
    return proc, f"http://127.0.0.1:{port}"


def summary(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    server = [r["server_cpu_s"] for r in runs if r["server_cpu_s"] is not None]
    per_change_target = [r["changes"] * r["targets"] for r in runs]
    return {
        "rate": statistics.median(r["changes"] / r["wall_s"] for r in runs),
        "cpu_us": statistics.median(r["cpu_s"] / n * 1e6 for r, n in zip(runs, per_change_target, strict=True)),
        "rss_mb": max(r["rss_mb"] for r in runs),
        "server_us": statistics.median(s / n * 1e6 for s, n in zip(server, per_change_target, strict=False))
        if len(server) == len(runs) else None,
        "writes": statistics.median(r["writes"] for r in runs),
    }


def report(args: argparse.Namespace, rows: list[tuple[str, dict[str, Any]]], workload: str,
           load: tuple[float, float]) -> None:
    copier = next(s for label, s in rows if label.startswith("classic"))
    print(f"workload: {workload}; exact mode")
    print(f"  machine: {os.cpu_count()} CPUs shared by the client, the emulator and anything else running; "
          f"1-minute load average {load[0]:.1f} at start, {load[1]:.1f} at end")
    print(f"  {args.rtt_ms:g} ms round trip added to every AWS call; KCL batches of {args.batch:,} records; "
          f"up to {args.concurrency} concurrent transactions per target")
    print(f"  median of {args.repeat} run(s), each in a fresh process (peak RSS: the largest); changes/s counts "
          "source changes, each applied to every target")
    print(f"  the copier runs on the first {args.copier_changes:,} changes only (~30 changes/s at 30 ms per call)")
    head = (f"{'run':<58}{'changes/s':>11}{'target writes':>15}{'client CPU':>12}{'emulator CPU':>14}"
            f"{'peak RSS':>10}{'vs copier':>12}")
    units = f"{'':<58}{'':>11}{'per change':>15}{'µs/ch/tgt':>12}{'µs/ch/tgt':>14}{'MB':>10}{'(changes/s)':>12}"
    print()
    print(head)
    print(units)
    for label, s in rows:
        no_emulator = s["server_us"] is None or "null" in label or "stubbed" in label
        server = "-" if no_emulator else f"{s['server_us']:,.0f}"
        ratio = f"{s['rate'] / copier['rate']:,.0f}x" if s is not copier else "1x"
        writes = s["writes"] / max(1, s["changes"] * s["targets"])
        print(f"{label:<58}{s['rate']:>11,.0f}{writes:>15.2f}{s['cpu_us']:>12,.0f}{server:>14}"
              f"{s['rss_mb']:>10,.0f}{ratio:>12}")
    print()
    print("target writes per change < 1: changes to one key within a batch are coalesced to the newest.")
    print("null target: tablesync -> null target (answers every call after the round trip, no storage); it "
          "isolates the processor's own capacity and is not a substitute for the emulator rows.")
    print("stubbed target: the same with TransactWriteItems answering at once; its client CPU is tablesync's own "
          "code, the difference to the null-target row is sending: JSON body, SigV4 signing and HTTP.")


def parent(args: argparse.Namespace) -> int:
    from bench.workload import change_records, describe
    from tablesync_local.stack import running_stack

    workload = describe(change_records(args.changes, args.keys))
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    null_proc, null_endpoint = start_null_target() if not args.no_null else (None, "")
    try:
        if args.endpoint:
            runs = _all_runs(args, args.endpoint, emulator_pid(args.endpoint), null_endpoint)
        else:
            with running_stack() as stack:
                runs = _all_runs(args, stack.endpoint, stack.pid, null_endpoint)
    finally:
        if null_proc is not None:
            null_proc.terminate()
            null_proc.wait(timeout=10)
    rows = []
    for (label, _kind, _targets), results in runs.items():
        s = summary(results)
        s["changes"], s["targets"] = results[0]["changes"], results[0]["targets"]
        rows.append((label, s))
    report(args, rows, workload, (load_start, os.getloadavg()[0]))
    print()
    units = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--units"], capture_output=True,
                           text=True, cwd=ROOT, timeout=600, check=True)
    print(units.stdout, end="")
    print(f"(benchmark wall time {time.perf_counter() - started:,.0f} s)")
    return 0


def print_units() -> int:
    from bench.units import KEYS, table

    print(f"write units per change ({KEYS} changes of each type, one per batch, into a fresh target; "
          "computed from the requests sent, see bench/units.py)")
    for line in table():
        print(line)
    return 0


def _all_runs(args: argparse.Namespace, endpoint: str, pid: int | None,
              null_endpoint: str) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    plan: list[tuple[str, str, int, str]] = [
        (f"tablesync -> {n} target{'s' if n > 1 else ''} (moto emulator)", "tablesync", n, endpoint)
        for n in TARGET_COUNTS]
    if null_endpoint:
        plan += [(f"tablesync -> {n} null target{'s' if n > 1 else ''} (no storage)", "null", n, null_endpoint)
                 for n in TARGET_COUNTS]
        plan.append(("tablesync -> 1 stubbed target (no AWS call)", "stub", 1, null_endpoint))
    plan.append((f"classic Lambda copier -> 1 target (first {args.copier_changes:,})", "copier", 1, endpoint))
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {(label, kind, n): [] for label, kind, n, _ in plan}
    for repeat in range(args.repeat):  # interleaved, so that a slow moment of the machine hits every row alike
        for label, kind, n, where in plan:
            result = measure(kind, n, where, args, pid if kind in ("tablesync", "copier") else None)
            runs[(label, kind, n)].append(result)
            print(f"run {repeat + 1}/{args.repeat} {label}: {result['changes'] / result['wall_s']:,.0f} changes/s",
                  file=sys.stderr, flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=20_000)
    ap.add_argument("--keys", type=int, default=2_000)
    ap.add_argument("--rtt-ms", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=1_000, help="records per process() call (a KCL batch)")
    ap.add_argument("--concurrency", type=int, default=8, help="max_concurrency of every target")
    ap.add_argument("--copier-changes", type=int, default=600,
                    help="the copier runs on the first N changes only (at 30 ms per call it does ~30/s)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--endpoint", help="use a running local stack instead of starting one")
    ap.add_argument("--no-null", action="store_true", help="skip the null-target rows")
    ap.add_argument("--units", action="store_true", help="print only the write units per change type and mode")
    ap.add_argument("--child", choices=["tablesync", "null", "stub", "copier"], help=argparse.SUPPRESS)
    ap.add_argument("--targets", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.units:
        return print_units()
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
