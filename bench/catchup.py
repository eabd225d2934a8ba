"""bench/catchup: replay a backlog from TRIM_HORIZON through one shard process, vs the classic copier.

A catch-up (a new target, a replay, a worker back after an outage) reads a shard at up to Kinesis's
2 MB/s per shard: about 10,000 records of 200 B per second. This benchmark measures whether one
record-processor process keeps up with that.

1. N change records (bench/workload.py) are put into a 1-shard stream on the local stack (moto) and
   read back from TRIM_HORIZON with GetRecords pages of --batch records (maxRecords), before any
   timing starts: the daemon's prefetching is not what is measured.
2. A real shard process (`python -m kcl_app.worker --config F`, the command the KCL daemon runs) is
   started and driven over the multi-lang protocol on its stdin/stdout exactly as the daemon does:
   initialize at TRIM_HORIZON, processRecords per page (every checkpoint request answered), then
   shardEnded, which drains whatever the lanes still hold. Its targets are 1 or 3 null targets
   (bench/null_target.py: HTTP 200 ``{}``, no storage) that wait --rtt-ms before every answer: the
   simulated round trip.
3. Measured on that process: changes/s while it processes (the time from sending a page to its
   status answer, summed, the final shardEnded included: every change is settled in every target
   when the clock stops), its CPU (user + system, /proc) per change and per change per target over
   the same span, its RSS once initialized (idle) and its peak RSS.
4. The classic Lambda copier (one put_item(NewImage) / delete_item(Keys) per record, sequential) runs
   on the first --copier-changes records of the same backlog against the same null endpoint: its
   changes/s and CPU per change (thread CPU), for the ratio.

Each tablesync row is --repeat fresh processes; medians are printed (RSS: the largest). Never asserts.
The machine's cores are shared with the null target and anything else running: the 1-minute load
average is printed with the figures.
Usage: .venv/bin/python bench/catchup.py [--changes 20000] [--rtt-ms 30] [--batch 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARD = "shardId-000000000000"
REGIONS = ["eu-west-1", "us-west-2", "ap-southeast-2"]


# ------------------------------------------------------------------------------------ the backlog


def backlog(stack: Any, changes: int, keys: int, item_bytes: int, batch: int) -> list[list[dict[str, Any]]]:
    """Put the workload into a 1-shard stream, read it back from TRIM_HORIZON: protocol-ready pages."""
    from bench.workload import change_records

    kinesis = stack.client("kinesis", "us-east-1")
    kinesis.create_stream(StreamName="catchup", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName="catchup", WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    records = change_records(changes, keys, item_bytes=item_bytes)
    for start in range(0, len(records), 500):
        entries = [{"Data": r.data, "PartitionKey": f"{i:032x}"} for i, r in enumerate(records[start:start + 500])]
        response = kinesis.put_records(StreamName="catchup", Records=entries)
        if response.get("FailedRecordCount"):
            raise SystemExit(f"put_records refused {response['FailedRecordCount']} records")
    iterator = kinesis.get_shard_iterator(StreamName="catchup", ShardId=SHARD,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    pages: list[list[dict[str, Any]]] = []
    seen = 0
    while iterator and seen < changes:
        page = kinesis.get_records(ShardIterator=iterator, Limit=batch)
        if page["Records"]:
            pages.append([{
                "action": "record",
                "data": base64.b64encode(rec["Data"]).decode(),
                "partitionKey": rec["PartitionKey"],
                "sequenceNumber": rec["SequenceNumber"],
                "subSequenceNumber": 0,
                "approximateArrivalTimestamp": int(rec["ApproximateArrivalTimestamp"].timestamp() * 1000),
            } for rec in page["Records"]])
            seen += len(page["Records"])
        iterator = page.get("NextShardIterator")
    return pages


# ------------------------------------------------------------------------ driving a shard process


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ShardProcess:
    """One `kcl_app.worker` child, spoken to as the KCL daemon does (JSON lines on stdin/stdout)."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str]) -> None:
        self.stderr = open(workdir / "worker.stderr", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "kcl_app.worker", "--config", str(config)],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, bufsize=1)
        self.checkpoints = 0
        self.last_checkpoint: str | None = None

    def _send(self, message: dict[str, Any]) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(message) + "\n")
        stdin.flush()

    def call(self, message: dict[str, Any]) -> None:
        """Send one action; answer every checkpoint request until the processor reports its status."""
        self._send(message)
        stdout = self.proc.stdout
        assert stdout is not None
        while True:
            line = stdout.readline()
            if not line:
                raise SystemExit(f"the shard process exited (code {self.proc.wait()}); see its stderr "
                                 f"{self.stderr.name}")
            if not line.strip():  # kclpy writes a newline before each message
                continue
            answer = json.loads(line)
            if answer.get("action") == "checkpoint":
                self.checkpoints += 1
                self.last_checkpoint = answer.get("sequenceNumber") or self.last_checkpoint
                self._send({"action": "checkpoint", "sequenceNumber": answer.get("sequenceNumber"),
                            "subSequenceNumber": answer.get("subSequenceNumber"), "error": None})
            elif answer.get("action") == "status":
                return

    def close(self) -> int:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.stderr.close()
        return code


def write_config(workdir: Path, endpoint: str, targets: int, concurrency: int) -> Path:
    # the key schema is given: the null target cannot answer DescribeTable
    lines = ['[source]\ntable = "bench-source"\n\n[source.key_schema]\nbench-source = ["pk:S"]\n']
    for i in range(targets):
        lines.append(f'[[targets]]\nname = "t{i}"\nregion = "{REGIONS[i]}"\ntable = "catchup-t{i}"\n'
                     f'endpoint_url = "{endpoint}"\ncreate_ledger = false\nmax_concurrency = {concurrency}\n'
                     f'dead_letter = {{ kind = "dir", path = "{workdir / "dlq"}" }}\n')
    path = workdir / f"targets-{targets}.toml"
    path.write_text("\n".join(lines))
    return path


def run_tablesync(pages: list[list[dict[str, Any]]], endpoint: str, targets: int, concurrency: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tablesync-catchup-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TABLESYNC_METRICS_FILE": str(workdir / "metrics.jsonl")}
    shard = ShardProcess(write_config(workdir, endpoint, targets, concurrency), workdir, env)
    pid = shard.proc.pid
    shard.call({"action": "initialize", "shardId": SHARD, "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0})
    idle_rss = proc_mem_mb(pid, "VmRSS")
    cpu0 = proc_cpu_s(pid)
    busy = 0.0
    changes = 0
    remaining = sum(len(p) for p in pages)
    for page in pages:
        remaining -= len(page)
        started = time.perf_counter()
        shard.call({"action": "processRecords", "records": page, "millisBehindLatest": remaining})
        busy += time.perf_counter() - started
        changes += len(page)
    settled = shard.last_checkpoint == pages[-1][-1]["sequenceNumber"]
    # shardEnded drains whatever the lanes still hold: the figures are of every change settled
    started = time.perf_counter()
    shard.call({"action": "shardEnded"})
    busy += time.perf_counter() - started
    cpu = proc_cpu_s(pid) - cpu0
    peak_rss = proc_mem_mb(pid, "VmHWM")
    code = shard.close()
    dead = sum(1 for _ in (workdir / "dlq").rglob("*") if _.is_file()) if (workdir / "dlq").exists() else 0
    if code != 0 or dead:
        raise SystemExit(f"shard process ended with {code}, {dead} dead-letter file(s): see {workdir}")
    return {"changes": changes, "targets": targets, "busy_s": busy, "cpu_s": cpu, "idle_rss_mb": idle_rss,
            "peak_rss_mb": peak_rss, "checkpoints": shard.checkpoints, "settled_by_last_page": settled}


def run_copier(pages: list[list[dict[str, Any]]], endpoint: str, limit: int) -> dict[str, Any]:
    """The classic Lambda copier on the first `limit` records: one call per record, in order."""
    import boto3

    client = boto3.client("dynamodb", region_name=REGIONS[0], endpoint_url=endpoint)
    records = [rec for page in pages for rec in page][:limit]
    client.describe_endpoints()  # connection and credentials resolved before timing
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for rec in records:
        doc = json.loads(base64.b64decode(rec["data"]))
        if doc["eventName"] == "REMOVE":
            client.delete_item(TableName="catchup-copier", Key=doc["dynamodb"]["Keys"])
        else:
            client.put_item(TableName="catchup-copier", Item=doc["dynamodb"]["NewImage"])
    return {"changes": len(records), "targets": 1, "busy_s": time.perf_counter() - wall0,
            "cpu_s": time.thread_time() - cpu0}


# ------------------------------------------------------------------------------------------- main


def start_null_target(delay_ms: float) -> tuple[subprocess.Popen[str], str]:
    from tablesync_local.stack import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.null_target", "--port", str(port),
                             "--delay-ms", str(delay_ms)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit("the null target did not start")
    return proc, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=20_000, help="backlog size (records)")
    ap.add_argument("--keys", type=int, default=5_000)
    ap.add_argument("--item-bytes", type=int, default=200, help="approximate item size of each change")
    ap.add_argument("--rtt-ms", type=float, default=30.0, help="simulated round trip of every target call")
    ap.add_argument("--batch", type=int, default=10_000, help="records per GetRecords page (maxRecords)")
    ap.add_argument("--concurrency", type=int, default=8, help="max_concurrency of every target")
    ap.add_argument("--copier-changes", type=int, default=300, help="the copier replays the first N records")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from tablesync_local.stack import running_stack

    load_start = os.getloadavg()[0]
    with running_stack() as stack:
        pages = backlog(stack, args.changes, args.keys, args.item_bytes, args.batch)
    total = sum(len(p) for p in pages)
    size = sum(len(base64.b64decode(r["data"])) for p in pages for r in p) / max(1, total)
    null_proc, endpoint = start_null_target(args.rtt_ms)
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    try:
        runs: dict[int, list[dict[str, Any]]] = {1: [], 3: []}
        for repeat in range(args.repeat):  # interleaved: a slow moment of the machine hits both rows
            for targets in runs:
                result = run_tablesync(pages, endpoint, targets, args.concurrency)
                runs[targets].append(result)
                print(f"run {repeat + 1}/{args.repeat} {targets} target(s): "
                      f"{result['changes'] / result['busy_s']:,.0f} changes/s", file=sys.stderr, flush=True)
        rows += [(f"tablesync shard process -> {n} null target{'s' if n > 1 else ''}", r) for n, r in runs.items()]
        rows.append((f"classic copier -> 1 null target (first {args.copier_changes:,})",
                     [run_copier(pages, endpoint, args.copier_changes)]))
    finally:
        null_proc.terminate()
        null_proc.wait(timeout=10)
    print(f"backlog: {total:,} records in {len(pages)} GetRecords page(s) of up to {args.batch:,} from TRIM_HORIZON, "
          f"{size:,.0f} B per record; {args.rtt_ms:g} ms round trip per target call; "
          f"max_concurrency {args.concurrency}")
    print(f"machine: {os.cpu_count()} CPUs shared with the null target and everything else; 1-minute load "
          f"average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end; median of {args.repeat} "
          "fresh process(es) per tablesync row")
    print()
    print(f"{'run':<52}{'changes/s':>11}{'CPU µs':>9}{'CPU µs':>11}{'idle RSS':>10}{'peak RSS':>10}{'vs copier':>11}")
    print(f"{'':<52}{'':>11}{'/change':>9}{'/ch/target':>11}{'MB':>10}{'MB':>10}{'changes/s':>11}")
    copier_rate = rows[-1][1][0]["changes"] / rows[-1][1][0]["busy_s"]
    for label, results in rows:
        rate = statistics.median(r["changes"] / r["busy_s"] for r in results)
        cpu = statistics.median(r["cpu_s"] / r["changes"] * 1e6 for r in results)
        per_target = cpu / results[0]["targets"]
        idle = max((r["idle_rss_mb"] for r in results if "idle_rss_mb" in r), default=None)
        peak = max((r["peak_rss_mb"] for r in results if "peak_rss_mb" in r), default=None)
        print(f"{label:<52}{rate:>11,.0f}{cpu:>9,.0f}{per_target:>11,.0f}"
              f"{'-' if idle is None else f'{idle:,.0f}':>10}{'-' if peak is None else f'{peak:,.0f}':>10}"
              f"{rate / copier_rate:>10,.0f}x")
    print()
    print("changes/s: records settled in every target per second of processing (page sent -> status answered, "
          "plus the final shardEnded that drains the lanes); CPU: the shard process's user+system time over the "
          "same span (kclpy's JSON/base64, decode, plan, botocore, HTTP).")
    unsettled = sum(1 for _, results in rows for r in results if r.get("settled_by_last_page") is False)
    print(f"runs whose last page's checkpoint was not yet its last record (the lanes still writing): {unsettled}")
    print("null target: answers after the round trip, stores nothing: the processor's own capacity, not a table's.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
