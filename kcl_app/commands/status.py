"""`tablesync status`: the KCL lease table, shard by shard.

Per shard: owner, checkpoint, lease counter, parent shards, and how far behind the tip it is
(MillisBehindLatest from one GetRecords after the checkpoint, when the stream is given).
A human table by default, `--json` for machines. The KCL's checkpoint values: a sequence number,
or TRIM_HORIZON / LATEST (not processed yet), or SHARD_END (a closed shard, fully processed).

Workers: each worker's last report in the KCL's `<app>-WorkerMetricStats` table (KCL 3.x writes it
every 30 s); a worker not seen for `--stale-after` seconds (default 90) is `stale`, and leases owned
by workers that are not live are flagged: after every worker stopped, their leases still name an
owner until another worker takes them. `tablesync run` names its worker `<host>:<8 hex digits>`,
so an owner says which instance holds the shard.

Targets (with `--config`): per target, its state, the lag p50/p99 over the last minute from the EMF
lines in `--metrics-file` (default `TABLESYNC_METRICS_FILE`; "n/a" without it or without recent
samples), and how many changes are parked in its dead-letter store. The state is `paused` (by
`tablesync pause`), else the worst circuit state a shard process reported in the last 30 s
(`healthy`, `failing`, `probing`, `open`: parking its changes until a probe finds it back), else
`active` (no recent report).

`--watch` redraws the view every `--interval` seconds (default 2) until Ctrl-C, which exits 0.

Exit codes: 0 the leases were read; 1 no lease table of that name (the application never started
a worker in that region), or no stream of the `--stream` name; 2 no region known (give the global
--region, AWS_REGION or a profile's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import NoRegionError

from kcl_app import continuous
from kcl_app.adapters import leases as leases_adapter
from kcl_app.commands import described
from kcl_app.compose import control_table, lease_clients, make_dead_letters
from kcl_app.config import Config, load
from kcl_app.core.health import PAUSED_CODE, STATE_CODES

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_kinesis import KinesisClient

SENTINELS = {"TRIM_HORIZON", "LATEST", "SHARD_END", "AT_TIMESTAMP"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show the KCL leases: owner, checkpoint and lag per shard",
        **described(__doc__),
    )
    p.add_argument("--app", required=True, help="KCL application name (the lease table's name, unless --lease-table)")
    p.add_argument("--lease-table", help="lease table name if it differs from --app")
    p.add_argument("--stream", help="stream name: adds 'behind' per shard (one GetRecords per shard)")
    p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"), help="emulator endpoint URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--worker-table", help="the KCL's worker table, if not <app>-WorkerMetricStats")
    p.add_argument("--stale-after", type=float, default=90.0,
                   help="a worker not seen for this many seconds is stale (default 90: three reports missed)")
    p.add_argument("--config", help="targets.toml: adds lag p50/p99 and parked backlog per target")
    p.add_argument("--metrics-file", default=os.environ.get("TABLESYNC_METRICS_FILE"),
                   help="the EMF file the workers write (default TABLESYNC_METRICS_FILE): lag over the last minute")
    p.add_argument("--watch", action="store_true", help="redraw the view every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch (default 2)")
    p.add_argument("--verify-state", metavar="DIR",
                   help="also show the last continuous verification pass (the state dir of `verify --continuous`)")
    return p


def read_leases(dynamodb: DynamoDBClient, table: str) -> list[dict[str, Any]]:
    """The lease table as rows for display (the reading itself is adapters/leases.py's)."""
    return [{"shard": lease.shard, "owner": lease.owner, "checkpoint": lease.checkpoint,
             "sub_sequence": lease.sub_sequence, "lease_counter": lease.lease_counter,
             "parents": list(lease.parents), "owner_switches": lease.owner_switches}
            for lease in leases_adapter.read_leases(dynamodb, table)]


def behind_millis(kinesis: KinesisClient, stream: str, lease: dict[str, Any]) -> int | None:
    """MillisBehindLatest as seen from the checkpoint (None when it cannot be known)."""
    checkpoint = lease["checkpoint"]
    if checkpoint == "SHARD_END":
        return 0
    if not checkpoint:
        return None
    args: dict[str, Any] = {"StreamName": stream, "ShardId": lease["shard"]}
    if checkpoint in SENTINELS:
        args["ShardIteratorType"] = checkpoint if checkpoint != "AT_TIMESTAMP" else "TRIM_HORIZON"
    else:
        args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=checkpoint)
    try:
        iterator = kinesis.get_shard_iterator(**args)["ShardIterator"]
        return int(kinesis.get_records(ShardIterator=iterator, Limit=1).get("MillisBehindLatest", 0))
    except Exception:  # status is best effort: a closed or trimmed shard has no answer
        return None


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "watch", False):
        return _once(args)
    if args.interval <= 0:
        print("tablesync status: --interval must be more than 0 seconds", file=sys.stderr)
        return 2
    return watch(lambda: _once(args), args.interval)


def watch(draw: Callable[[], int], interval: float, out: IO[str] | None = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Clear the terminal and `draw` every `interval` seconds until Ctrl-C (exit 0). A draw that
    fails (exit status not 0) is shown and retried at the next tick: the view waits for the table."""
    stream = out or sys.stdout
    try:
        while True:
            stream.write("\x1b[H\x1b[2J")  # cursor home, clear screen
            stream.write(f"tablesync status, every {interval:g} s (Ctrl-C to stop), {time.strftime('%H:%M:%S')}\n")
            stream.flush()
            draw()
            stream.flush()
            sleep(interval)
    except KeyboardInterrupt:
        stream.write("\n")
        return 0


def _once(args: argparse.Namespace) -> int:
    table = args.lease_table or args.app
    try:
        clients = lease_clients(getattr(args, "region", None), args.endpoint)
    except NoRegionError:
        print("tablesync status: no AWS region: pass --region REGION (the lease table's region), "
              "or set AWS_REGION", file=sys.stderr)
        return 2
    if args.stream and not stream_exists(clients.kinesis, args.stream):
        print(f"tablesync status: no stream {args.stream!r} in {clients.region}: check --stream (and --region)",
              file=sys.stderr)
        return 1
    try:
        leases = read_leases(clients.dynamodb, table)
    except clients.dynamodb.exceptions.ResourceNotFoundException:
        print(f"tablesync status: no lease table {table!r}: has a worker of application {args.app!r} ever started "
              f"in {clients.region}?", file=sys.stderr)
        return 1
    if args.stream:
        for lease in leases:
            lease["behind_ms"] = behind_millis(clients.kinesis, args.stream, lease)
    now = time.time()
    worker_table = getattr(args, "worker_table", None) or leases_adapter.worker_table(args.app)
    workers = worker_rows(clients.dynamodb, worker_table, leases, now, getattr(args, "stale_after", 90.0))
    targets = target_rows(args, now) if getattr(args, "config", None) else None
    passes = verify_passes(args.verify_state) if getattr(args, "verify_state", None) else None
    if args.json:
        doc: dict[str, Any] = {"lease_table": table, "shards": leases, "workers": workers}
        if targets is not None:
            doc["targets"] = targets
        if passes is not None:
            doc["verify"] = passes
        print(json.dumps(doc, indent=2))
        return 0
    cols = ["shard", "owner", "checkpoint", "lease_counter", "parents"] + (["behind_ms"] if args.stream else [])
    rows = [[_cell(lease.get(c), shorten=c == "checkpoint") for c in cols] for lease in leases]  # owners whole
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    owned = sum(1 for lease in leases if lease["owner"])
    print(f"{len(leases)} leases, {owned} owned, {len({lease['owner'] for lease in leases if lease['owner']})} workers")
    print_workers(workers)
    if targets is not None:
        print_targets(targets)
    for doc in passes or []:
        print(_verify_line(doc))
    return 0


def stream_exists(kinesis: KinesisClient, stream: str) -> bool:
    try:
        kinesis.describe_stream_summary(StreamName=stream)
    except kinesis.exceptions.ResourceNotFoundException:
        return False
    return True


# ----------------------------------------------------------------------------- workers


def worker_rows(dynamodb: DynamoDBClient, table: str, leases: Sequence[Mapping[str, Any]], now: float,
                stale_after: float) -> dict[str, Any]:
    """Each worker with its last report and its leases, live or stale; leases whose owner is not
    live. `available` is False when the KCL's worker table cannot be read (KCL 2.x, another name)."""
    try:
        seen = leases_adapter.read_worker_stats(dynamodb, table)
    except dynamodb.exceptions.ResourceNotFoundException:
        seen = None
    held: dict[str, int] = {}
    for lease in leases:
        if lease.get("owner"):
            held[lease["owner"]] = held.get(lease["owner"], 0) + 1
    rows = []
    for worker in sorted(set(held) | set(seen or {})):
        last = (seen or {}).get(worker)
        # "unknown": not in the worker table (yet: a worker reports 30 s after it starts)
        state = "unknown" if last is None else "live" if now - last <= stale_after else "stale"
        ago = None if last is None else round(now - last, 1)
        rows.append({"worker": worker, "last_seen": last, "seconds_ago": ago, "leases": held.get(worker, 0),
                     "state": state})
    states = {row["worker"]: row["state"] for row in rows}
    not_live = sum(n for worker, n in held.items() if states.get(worker) != "live")
    return {"table": table, "available": seen is not None, "stale_after_seconds": stale_after,
            "live": sum(1 for row in rows if row["state"] == "live"), "leases_not_live": not_live,
            "workers": rows}


def print_workers(workers: Mapping[str, Any]) -> None:
    if not workers["available"]:
        print(f"workers: n/a (no table {workers['table']}: liveness needs KCL 3.x's worker metrics)")
        return
    print(f"workers ({workers['live']} live; stale = not seen in {workers['stale_after_seconds']:g} s, "
          f"from {workers['table']}):")
    cols = ["worker", "state", "last_seen", "leases"]
    rows = [[row["worker"], row["state"], _ago(row["seconds_ago"]), str(row["leases"])] for row in workers["workers"]]
    _table(cols, rows)
    if workers["leases_not_live"]:
        print(f"STALE: {workers['leases_not_live']} owned leases belong to workers that are not live: "
              "those shards are not being processed (are the workers stopped?)")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


# ----------------------------------------------------------------------------- targets


def target_rows(args: argparse.Namespace, now: float) -> list[dict[str, Any]]:
    """Per target of `--config`: lag p50/p99 over the last minute (from `--metrics-file`) and the
    number of parked changes in its store (None when the store cannot be read)."""
    config = load(args.config)
    sink = make_dead_letters(config)
    paused = paused_targets(config)
    lags = recent_lag(args.metrics_file, now - 60.0) if args.metrics_file else {}
    states = recent_states(args.metrics_file, now - STATE_WINDOW) if args.metrics_file else {}
    queues: dict[str, int] = {}
    for target in config.targets:
        if target.dead_letter.kind == "sqs" and target.dead_letter.queue_url:
            queues[target.dead_letter.queue_url] = queues.get(target.dead_letter.queue_url, 0) + 1
    rows = []
    for target in config.targets:
        # an SQS queue counts every store it holds: with one queue for several targets, the count is theirs
        shared = queues.get(target.dead_letter.queue_url or "", 1) > 1 if target.dead_letter.kind == "sqs" else False
        try:
            parked: int | None = int(getattr(sink, "depth")(target.name))  # noqa: B009 - not on the port
        except Exception:  # a queue that cannot be read: shown as n/a
            parked = None
        samples = sorted(lags.get(target.name, []))
        state = "paused" if target.name in paused else states.get(target.name, "active")
        rows.append({"target": target.name, "state": state,
                     "paused_reason": paused.get(target.name, {}).get("reason", ""),
                     "lag_p50_ms": _percentile(samples, 50), "lag_p99_ms": _percentile(samples, 99),
                     "lag_samples": len(samples), "parked": parked,
                     "parked_queue_shared": shared})
    return rows


def paused_targets(config: Config) -> dict[str, dict[str, str]]:
    """The targets `tablesync pause` paused (the `[control] table`; empty without one or unreadable)."""
    control = control_table(config)
    if control is None:
        return {}
    try:
        return control.paused()
    except Exception as exc:  # noqa: BLE001 - shown, not fatal: the rest is still worth seeing
        print(f"tablesync status: control table {config.control_table} unreadable ({type(exc).__name__})",
              file=sys.stderr)
        return {}


# The shard processes emit each target's `State` (core/health.py's codes) every few seconds; the
# worst one any of them reported in this window is shown, so one process with the target open shows.
STATE_WINDOW = 30.0
STATE_NAMES = {code: name for name, code in STATE_CODES.items()} | {PAUSED_CODE: "paused"}


def recent_states(path: str, since: float, tail_bytes: int = 8 << 20) -> dict[str, str]:
    """The worst circuit state per target reported in the EMF lines of `path` since `since`."""
    worst: dict[str, int] = {}
    for doc in _tail_json(path, tail_bytes):
        target, code, stamp = doc.get("Target"), doc.get("State"), doc.get("_aws", {})
        when = stamp.get("Timestamp") if isinstance(stamp, dict) else None
        if (not isinstance(target, str) or not isinstance(code, int | float) or isinstance(code, bool)
                or int(code) not in STATE_NAMES or not isinstance(when, int | float) or when / 1000 < since):
            continue
        worst[target] = max(worst.get(target, 0), int(code))
    return {target: STATE_NAMES[code] for target, code in worst.items()}


def recent_lag(path: str, since: float, tail_bytes: int = 8 << 20) -> dict[str, list[float]]:
    """Lag samples per target from the EMF lines of `path` written since `since` (epoch seconds).
    Reads at most the file's last `tail_bytes`; lines that are not such documents are ignored.
    `LagMs` may be a number, a list of numbers, or a `{"Values": [...], "Counts": [...]}` histogram."""
    lags: dict[str, list[float]] = {}
    for doc in _tail_json(path, tail_bytes):
        target, lag, stamp = doc.get("Target"), doc.get("LagMs"), doc.get("_aws", {})
        when = stamp.get("Timestamp") if isinstance(stamp, dict) else None
        if not isinstance(target, str) or lag is None or not isinstance(when, int | float) or when / 1000 < since:
            continue
        lags.setdefault(target, []).extend(_samples(lag))
    return lags


def _tail_json(path: str, tail_bytes: int) -> Iterator[dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            data = fh.read()
    except OSError:
        return
    lines = data.split(b"\n")
    if size > tail_bytes:
        lines = lines[1:]  # the first line was cut
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            yield doc


def _samples(lag: Any) -> list[float]:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if number(lag):
        return [float(lag)]
    if isinstance(lag, list):
        return [float(v) for v in lag if number(v)]
    if isinstance(lag, dict) and isinstance(lag.get("Values"), list):
        given = lag.get("Counts")
        counts: list[Any] = given if isinstance(given, list) else [1] * len(lag["Values"])
        out: list[float] = []
        for value, count in zip(lag["Values"], counts, strict=False):
            if number(value) and number(count) and 0 < count <= 1_000_000:
                out.extend([float(value)] * int(count))
        return out
    return []


def _percentile(ordered: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted samples (None without samples)."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * pct // 100))
    return round(ordered[int(rank) - 1], 1)


def print_targets(targets: Sequence[Mapping[str, Any]]) -> None:
    print("targets (lag over the last minute):")
    cols = ["target", "state", "lag_p50_ms", "lag_p99_ms", "parked"]
    rows = [[_na(row.get(c)) for c in cols] for row in targets]
    for row, shown in zip(targets, rows, strict=True):
        if row.get("parked_queue_shared") and row.get("parked") is not None:
            shown[-1] += " (queue shared with other targets: their total)"
    _table(cols, rows)


def _na(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _table(cols: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for row in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())



def verify_passes(state_dir: str) -> list[dict[str, Any]]:
    """The last pass (number, verdict, counts per target) and the one in progress, per state file
    of `tablesync verify --continuous` in `state_dir` (an empty list when there is none)."""
    out = []
    for path in sorted(Path(state_dir).glob("verify-*.json")):
        try:
            doc = continuous.last_pass(path)
        except (OSError, ValueError) as exc:
            doc = {"source_table": path.name, "error": f"unreadable state: {exc}"}
        if doc is not None:
            out.append(doc)
    return out


def _verify_line(doc: dict[str, Any]) -> str:
    if "error" in doc:
        return f"verify {doc['source_table']}: {doc['error']}"
    last, current = doc.get("last"), doc.get("current")
    text = f"verify {doc['source_table']}: "
    if last:
        counts = "; ".join(f"{name}: {t['verified']} verified, {t['divergent']} divergent, {t['repaired']} repaired"
                           for name, t in sorted(last["tallies"].items()))
        behind = f", {last['behind_seconds']:.0f} s behind its period" if last["behind_seconds"] else ""
        text += f"last pass {last['number']} {last['verdict'].upper()} in {last['seconds']:.0f} s{behind} ({counts})"
    else:
        text += "no finished pass"
    if current:
        text += f"; pass {current['number']} at {100 * current['progress']:.0f} %"
    return text


def _cell(value: Any, shorten: bool = True) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value) or "-"
    text = str(value)
    return text if len(text) <= 24 or not shorten else text[:10] + "…" + text[-10:]
