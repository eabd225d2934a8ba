"""Pre-flight checks: can this configuration replicate, here and now? (`tablesync check`)

`run`, `backfill` and `verify` run the same checks before they start, and refuse on a failure, so
that a mistake surfaces in seconds with what to do, not as a crash loop or a silent no-op.

Each check yields one `Finding` (OK, WARN or FAIL, what was found, what to do):

1. config      the file (or the environment-only configuration) parsed and fully validated;
2. source      every source table exists, is ACTIVE, and its key schema is read;
3. destination every source table has an ACTIVE Kinesis streaming destination (into the checked
               stream, when one is named), at MICROSECOND precision (MILLISECOND: a warning), and
               agreeing with an explicit `precision` in the config;
4. stream      the stream exists and is ACTIVE (a mistyped --stream fails here), and retains changes
               no longer than `stream_retention_hours` says: the tombstones of both modes expire
               after it (+ `tombstone_margin_hours`), so a replay from TRIM_HORIZON of a stream that
               retains longer could bring back changes older than an expired delete;
5. target      each target table exists, is ACTIVE, has the source's key schema;
6. writable    each target accepts the writes its mode makes, with its credentials or role
               (`_probe`: conditional writes that cannot succeed, so nothing is ever written);
7. ledger      (exact mode) the ledger exists or can be created, and is not older than its target
               while holding rows: a target re-created after its ledger would have every key the
               ledger remembers skipped by the stream and the backfill as already seen;
8. tombstones  (inline mode) the tombstone table exists with the ledger's key (or can be created),
               and is part of the write probe (the create path's ConditionCheck, the delete path's Put).

A check the worker itself does not need permission for (the source table, its destination, the
ledger's rows: the least-privilege worker role of infra/ has none of them) is a WARN when access is
denied, "not checked", so that `run` with that role still starts; the others FAIL on a denial,
as the worker would. Talks to AWS only through the clients it is given (compose builds them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from kcl_app.adapters.inline import TOMBSTONE_KEY
from kcl_app.adapters.ledger import LedgerState, ledger_probe, ledger_state
from kcl_app.adapters.retry import describe
from kcl_app.config import Config, TargetConfig
from kcl_app.core.errors import ConfigError

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_kinesis import KinesisClient

Status = Literal["OK", "WARN", "FAIL"]
RECREATED_TARGET = "recreated-target"  # Finding.code: the target is younger than its non-empty ledger
EXIT = {"OK": 0, "WARN": 1, "FAIL": 2}
_TOMBSTONE_SCHEMA: tuple[tuple[str, str, str], ...] = ((TOMBSTONE_KEY, "HASH", "S"),)
_DENIED = ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
           "ExpiredTokenException", "NoCredentialsError", "PartialCredentialsError", "SignatureDoesNotMatch")


@dataclass(frozen=True)
class Finding:
    check: str  # "config", "source orders", "stream orders-changes", "target dr", "writable dr", ...
    status: Status
    detail: str
    fix: str = ""
    code: str = ""  # a stable name for findings callers act on (RECREATED_TARGET)

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, check: str, status: Status, detail: str, fix: str = "", code: str = "") -> Finding:
        finding = Finding(check, status, detail, fix, code)
        self.findings.append(finding)
        return finding

    @property
    def status(self) -> Status:
        states = {f.status for f in self.findings}
        return "FAIL" if "FAIL" in states else "WARN" if "WARN" in states else "OK"

    @property
    def exit_code(self) -> int:
        """0 every check passed, 1 warnings only, 2 at least one failure."""
        return EXIT[self.status]

    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "FAIL"]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "ok": self.status != "FAIL", "exit": self.exit_code,
                "checks": [f.to_json() for f in self.findings]}

    def table(self, only_problems: bool = False) -> str:
        """One line per check: STATUS, check, what was found, and for a problem what to do."""
        shown = [f for f in self.findings if f.status != "OK" or not only_problems]
        width = max((len(f.check) for f in shown), default=0)
        lines = []
        for f in shown:
            fix = f"; fix: {f.fix}" if f.fix and f.status != "OK" else ""
            lines.append(f"{f.status:<4}  {f.check:<{width}}  {f.detail}{fix}")
        return "\n".join(lines)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


@dataclass(frozen=True)
class Clients:
    """What the checks talk to: the source side and one DynamoDB client per target (its role)."""

    source: DynamoDBClient
    kinesis: KinesisClient | None
    targets: Mapping[str, DynamoDBClient]


@dataclass(frozen=True)
class Scope:
    """Which checks a caller needs (`check` runs all; `verify` needs no stream, say)."""

    stream: bool = True       # destination + stream
    write_probe: bool = True  # writable
    ledger: bool = True


KeySchema = tuple[tuple[str, str, str], ...]  # (name, HASH|RANGE, S|N|B), partition key first


def key_schema(table: Mapping[str, Any]) -> KeySchema:
    """The key schema of a DescribeTable `Table`, with the attribute types."""
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    keys = sorted(table.get("KeySchema", []), key=lambda k: 0 if k["KeyType"] == "HASH" else 1)
    return tuple((k["AttributeName"], k["KeyType"], types.get(k["AttributeName"], "?")) for k in keys)


def show_schema(schema: KeySchema) -> str:
    return ", ".join(f"{name} ({kind} {typ})" for name, kind, typ in schema) or "none"


def _fmt_time(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else "?"


def run_checks(config: Config, clients: Clients, *, stream: str | None = None,
               targets: Sequence[TargetConfig] | None = None, scope: Scope | None = None,
               report: Report | None = None) -> Report:
    """Checks 2-8 of the module docstring for `targets` (default: all); check 1 is the caller's
    (`config_finding`). Never raises for what AWS answers: every answer becomes a finding."""
    scope = scope or Scope()
    report = report or Report()
    chosen = list(targets) if targets is not None else list(config.targets)
    schemas: dict[str, KeySchema | None] = {}
    for table in sorted({t.source_table for t in chosen}):
        schemas[table] = _check_source(clients.source, table, report)
    if scope.stream:
        streams = {s for table in schemas if (s := _check_destination(clients.source, table, stream, config, report))}
        if stream:
            streams = {stream}
        for name in sorted(streams):
            _check_stream(clients.kinesis, name, config, report)
    for target in chosen:
        client = clients.targets[target.name]
        described = _check_target(client, target, schemas.get(target.source_table), report)
        if described is None:
            continue
        state: LedgerState | None = None
        if target.mode == "exact" and scope.ledger:
            state = _check_ledger(client, target, described, report)
        tombstones = target.mode == "inline" and scope.ledger and _check_tombstones(client, target, report)
        if scope.write_probe:
            _check_writable(client, target, key_schema(described), state, report, tombstones)
    return report


def config_finding(load: Callable[[], Config], origin: str, report: Report) -> Config | None:
    """Check 1: `load()` the configuration; a refusal becomes a FAIL finding (and None)."""
    try:
        config = load()
    except ConfigError as exc:
        report.add("config", "FAIL", str(exc), "correct the configuration (docs/configuration.md)")
        return None
    names = ", ".join(t.name for t in config.targets)
    report.add("config", "OK", f"{origin}: {len(config.targets)} target(s): {names}")
    return config


# -- the checks --------------------------------------------------------------------------------
def _check_source(client: DynamoDBClient, table: str, report: Report) -> KeySchema | None:
    check = f"source {table}"
    try:
        described = client.describe_table(TableName=table)["Table"]
    except Exception as exc:  # noqa: BLE001 - every answer is a finding
        info = describe(exc)
        if info.code == "ResourceNotFoundException":
            report.add(check, "FAIL", f"source table {table!r} does not exist in {client.meta.region_name}",
                       "check `source_table` / `[source] table` and `[source] region` (or --region)")
        elif _denied(info.code):
            report.add(check, "WARN", "not checked: these credentials may not describe the source table "
                       f"({info.code}); the worker does not need to", "run tablesync check with credentials that may "
                       "dynamodb:DescribeTable and DescribeKinesisStreamingDestination on the source")
        else:
            report.add(check, "FAIL", f"cannot describe the source table: {info}", _access_fix(info.code))
        return None
    schema = key_schema(described)
    status = described.get("TableStatus", "?")
    if status not in ("ACTIVE", "UPDATING"):
        report.add(check, "FAIL", f"table is {status}", "wait until it is ACTIVE")
        return schema
    report.add(check, "OK", f"{status}, key {show_schema(schema)}")
    return schema


def _check_destination(client: DynamoDBClient, table: str, stream: str | None, config: Config,
                       report: Report) -> str | None:
    """The name of the stream the table's active destination writes to (None: none)."""
    check = f"destination {table}"
    enable = (f"aws dynamodb enable-kinesis-streaming-destination --table-name {table} --stream-arn STREAM_ARN "
              "--enable-kinesis-streaming-configuration ApproximateCreationDateTimePrecision=MICROSECOND")
    try:
        answer = client.describe_kinesis_streaming_destination(TableName=table)
    except Exception as exc:  # noqa: BLE001 - every answer is a finding
        info = describe(exc)
        if info.code == "ResourceNotFoundException":
            return None  # the source check already failed
        if _denied(info.code):
            report.add(check, "WARN", f"not checked: these credentials may not read the destination ({info.code})",
                       "run tablesync check with credentials that may dynamodb:DescribeKinesisStreamingDestination")
        else:
            report.add(check, "FAIL", f"cannot read the Kinesis streaming destination: {info}",
                       _access_fix(info.code))
        return None
    destinations = answer.get("KinesisDataStreamDestinations", [])
    active = [d for d in destinations if d.get("DestinationStatus") in ("ACTIVE", "UPDATING")]
    if not active:
        states = ", ".join(f"{_stream_name(d.get('StreamArn', '?'))} {d.get('DestinationStatus')}"
                           for d in destinations) or "none"
        report.add(check, "FAIL", f"no ACTIVE Kinesis streaming destination (destinations: {states}): "
                   "no change of this table reaches any stream", enable)
        return None
    names = [_stream_name(str(d.get("StreamArn", ""))) for d in active]
    if stream and stream not in names:
        report.add(check, "FAIL", f"the table streams into {', '.join(names)}, not into {stream!r}: "
                   "the worker would read a stream that receives none of its changes",
                   f"pass --stream {names[0]}, or enable a destination into {stream}")
        return None
    chosen = active[names.index(stream)] if stream else active[0]
    name = _stream_name(str(chosen.get("StreamArn", "")))
    precision = chosen.get("ApproximateCreationDateTimePrecision", "MILLISECOND")
    if config.precision != "auto" and config.precision != precision:
        report.add(check, "FAIL", f"into {name} at {precision}, but the config says precision = "
                   f"{config.precision!r}: every version would be read in the wrong unit",
                   "remove `precision` from the config (it is inferred) or make it match")
    elif precision != "MICROSECOND":
        report.add(check, "WARN", f"into {name} at {precision}: two changes of one item within a millisecond "
                   "are ordered by eventID, not by time",
                   f"aws dynamodb update-kinesis-streaming-destination --table-name {table} --stream-arn "
                   f"{chosen.get('StreamArn')} --update-kinesis-streaming-configuration "
                   "ApproximateCreationDateTimePrecision=MICROSECOND")
    else:
        report.add(check, "OK", f"{chosen.get('DestinationStatus')} into {name} at MICROSECOND")
    return name


def _check_stream(client: KinesisClient | None, name: str, config: Config, report: Report) -> None:
    check = f"stream {name}"
    if client is None:
        return
    try:
        summary = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    except Exception as exc:  # noqa: BLE001 - every answer is a finding
        info = describe(exc)
        if info.code == "ResourceNotFoundException":
            known = _stream_names(client)
            hint = f" (streams there: {', '.join(known[:10])})" if known else " (no stream there)"
            report.add(check, "FAIL", f"no Kinesis stream {name!r} in {client.meta.region_name}{hint}",
                       "check --stream / streamName and the region")
        else:
            report.add(check, "FAIL", f"cannot describe the stream: {info}", _access_fix(info.code))
        return
    status = summary.get("StreamStatus", "?")
    shards = summary.get("OpenShardCount", "?")
    retention = summary.get("RetentionPeriodHours")
    configured = config.stream_retention_hours
    if status not in ("ACTIVE", "UPDATING"):
        report.add(check, "FAIL", f"stream is {status}", "wait until it is ACTIVE (or re-create it)")
    elif isinstance(retention, int) and retention > configured:
        report.add(check, "FAIL", f"{status}, but it retains changes {retention} h while the config says "
                   f"stream_retention_hours = {configured:g}: tombstones expire after {configured:g} h + "
                   f"tombstone_margin_hours ({config.tombstone_margin_hours:g} h), so a replay from TRIM_HORIZON "
                   "could re-create items deleted since", f"set stream_retention_hours = {retention} in the "
                   "config (TABLESYNC_STREAM_RETENTION_HOURS without a file)")
    else:
        report.add(check, "OK", f"{status}, {shards} open shard(s), retention {retention} h "
                   f"(stream_retention_hours = {configured:g})")


def _check_target(client: DynamoDBClient, target: TargetConfig, source: KeySchema | None,
                  report: Report) -> dict[str, Any] | None:
    check = f"target {target.name}"
    where = f"{target.table!r} in {target.region}" + (f" as {target.role_arn}" if target.role_arn else "")
    try:
        table: dict[str, Any] = dict(client.describe_table(TableName=target.table)["Table"])
    except Exception as exc:  # noqa: BLE001 - every answer is a finding
        info = describe(exc)
        if info.code == "ResourceNotFoundException":
            report.add(check, "FAIL", f"target table {where} does not exist",
                       "create it with the source's key schema" + (f" ({show_schema(source)})" if source else ""))
        else:
            report.add(check, "FAIL", f"cannot describe {where}: {info}", _access_fix(info.code, target))
        return None
    schema = key_schema(table)
    status = table.get("TableStatus", "?")
    if source is not None and schema != source:
        report.add(check, "FAIL", f"{where} has key {show_schema(schema)}, the source {show_schema(source)}: "
                   "every change would be refused", "re-create the target with the source's key schema")
        return None
    if status not in ("ACTIVE", "UPDATING"):
        report.add(check, "FAIL", f"{where} is {status}", "wait until it is ACTIVE")
        return None
    report.add(check, "OK", f"{where}: {status}, key {show_schema(schema)}, mode {target.mode}")
    return table


def _check_ledger(client: DynamoDBClient, target: TargetConfig, table: Mapping[str, Any],
                  report: Report) -> LedgerState | None:
    check = f"ledger {target.name}"
    try:
        state = ledger_state(client, target.ledger)
    except Exception as exc:  # noqa: BLE001 - every answer is a finding
        info = describe(exc)
        if _denied(info.code):  # the worker may not Scan its ledger: it never needs to
            report.add(check, "WARN", f"not checked: these credentials may not read ledger {target.ledger!r} "
                       f"({info.code})", "run tablesync check with credentials that may dynamodb:Scan and "
                       "GetItem on the ledger")
        else:
            report.add(check, "FAIL", f"cannot read ledger {target.ledger!r}: {info}", _access_fix(info.code, target))
        return None
    if not state.exists:
        if target.create_ledger:
            report.add(check, "OK", f"{target.ledger!r} does not exist yet: created on first use "
                       "(needs dynamodb:CreateTable and UpdateTimeToLive)")
        else:
            report.add(check, "FAIL", f"{target.ledger!r} does not exist and create_ledger = false",
                       "create it (one string key 'k', TTL on 'exp') or set create_ledger = true")
        return state
    created = table.get("CreationDateTime")
    since = state.since
    if state.has_rows and created is not None and since is not None and created > since:
        try:
            empty = not client.scan(TableName=target.table, Limit=1, ConsistentRead=True).get("Items")
        except Exception:  # noqa: BLE001 - only a detail of the message
            empty = False
        report.add(check, "FAIL",
                   f"target {target.table!r} was created at {_fmt_time(created)}, after its ledger "
                   f"{target.ledger!r} started remembering keys ({_fmt_time(since)}), and the ledger holds rows"
                   f"{' while the target is empty' if empty else ''}: the target was re-created, and every key "
                   "the ledger remembers would be skipped by the stream and the backfill as already seen",
                   f"tablesync backfill --config CONFIG --source-table {target.source_table} --target "
                   f"{target.name} --reset-ledger ... (docs/backfill.md: re-created targets)", RECREATED_TARGET)
        return state
    rows = "holds rows" if state.has_rows else "empty"
    report.add(check, "OK", f"{target.ledger!r} {rows}, since {_fmt_time(since)}; target created "
               f"{_fmt_time(created)}")
    return state


def _check_tombstones(client: DynamoDBClient, target: TargetConfig, report: Report) -> bool:
    """Check 8: True when the tombstone table exists with the ledger's key (then the probe writes to it)."""
    check = f"tombstones {target.name}"
    table = target.tombstones
    try:
        described = client.describe_table(TableName=table)["Table"]
    except Exception as exc:  # noqa: BLE001 - every answer is a finding
        info = describe(exc)
        if info.code != "ResourceNotFoundException":
            report.add(check, "FAIL", f"cannot describe tombstone table {table!r}: {info}",
                       _access_fix(info.code, target))
        elif target.create_ledger:
            report.add(check, "OK", f"{table!r} does not exist yet: created on first use "
                       "(needs dynamodb:CreateTable and UpdateTimeToLive)")
        else:
            report.add(check, "FAIL", f"tombstone table {table!r} does not exist and create_ledger = false: "
                       "every delete would fail", "create it (one string key 'k', TTL on 'exp') or set "
                       "create_ledger = true")
        return False
    schema = key_schema(described)
    status = described.get("TableStatus", "?")
    if schema != _TOMBSTONE_SCHEMA:
        report.add(check, "FAIL", f"{table!r} has key {show_schema(schema)}, a tombstone table "
                   f"{show_schema(_TOMBSTONE_SCHEMA)}: every delete would be refused",
                   "point tombstone_table at a table with one string key 'k' (TTL on 'exp'), or delete it "
                   "(create_ledger = true creates it)")
        return False
    if status not in ("ACTIVE", "UPDATING"):
        report.add(check, "FAIL", f"{table!r} is {status}", "wait until it is ACTIVE")
        return False
    report.add(check, "OK", f"{table!r}: {status}, key {show_schema(schema)}")
    return True


def _check_writable(client: DynamoDBClient, target: TargetConfig, schema: KeySchema,
                    ledger: LedgerState | None, report: Report, tombstones: bool = False) -> None:
    check = f"writable {target.name}"
    try:
        proved = _probe(client, target, schema, ledger, tombstones)
    except Exception as exc:  # noqa: BLE001 - every answer is a finding
        info = describe(exc)
        who = f"role {target.role_arn}" if target.role_arn else "these credentials"
        report.add(check, "FAIL", f"{target.table!r} refuses writes from {who}: {info}",
                   _access_fix(info.code, target))
        return
    report.add(check, "OK", f"write permission proved without writing ({proved})")


def _probe(client: DynamoDBClient, target: TargetConfig, schema: KeySchema, ledger: LedgerState | None,
           tombstones: bool = False) -> str:
    """Prove that `target` accepts the writes its mode makes, without writing anything.

    DynamoDB authorises a request before it evaluates its condition, so a write whose condition can
    never hold answers AccessDenied when the permission is missing and ConditionalCheckFailed when it
    is granted, and changes nothing either way (no item, no stream record; it costs one write unit).
    The condition is a contradiction (`attribute_exists(#p) AND attribute_not_exists(#p)`), so even an
    item at the random probe key (there is none) would be left alone.

    exact mode: one TransactWriteItems as the ledger writer sends them (Put and Delete on the target,
    Put on the ledger when it exists), answered TransactionCanceled with every reason
    ConditionalCheckFailed; inline mode: a conditional PutItem and DeleteItem, and when the tombstone
    table exists the two transactions inline mode sends (create: ConditionCheck on the tombstone and
    Put of the item; delete: Put of the tombstone and Delete of the item). Returns what was proved;
    raises the error of a refused probe."""
    never_holds = "attribute_exists(#p) AND attribute_not_exists(#p)"
    never: dict[str, Any] = {"ConditionExpression": never_holds, "ExpressionAttributeNames": {"#p": schema[0][0]}}
    keys = [_probe_key(schema), _probe_key(schema)]
    if target.mode == "exact":
        actions: list[dict[str, Any]] = [
            {"Put": {"TableName": target.table, "Item": keys[0], **never}},
            {"Delete": {"TableName": target.table, "Key": keys[1], **never}},
        ]
        if ledger is not None and ledger.exists:
            actions.append(ledger_probe(target.ledger))
        _probe_transaction(client, actions)
        return "TransactWriteItems Put, Delete on the target" + (", Put on the ledger" if len(actions) == 3 else "")
    calls: list[Callable[[], object]] = [
        lambda: client.put_item(TableName=target.table, Item=keys[0], **never),
        lambda: client.delete_item(TableName=target.table, Key=keys[1], **never),
    ]
    for call in calls:
        try:
            call()
        except Exception as exc:
            if describe(exc).code != "ConditionalCheckFailedException":
                raise
            continue
        raise RuntimeError("a probe write whose condition cannot hold succeeded")  # pragma: no cover
    if not tombstones:
        return "PutItem, DeleteItem"
    tomb = ledger_probe(target.tombstones)["Put"]  # a tombstone row has the ledger's key, and never holds
    check = {k: v for k, v in tomb.items() if k != "Item"} | {"Key": tomb["Item"]}
    item = {"Put": {"TableName": target.table, "Item": keys[0], **never}}
    _probe_transaction(client, [{"ConditionCheck": check}, item])  # the create path
    _probe_transaction(client, [{"Put": tomb}, {"Delete": {"TableName": target.table, "Key": keys[1], **never}}])
    return ("PutItem, DeleteItem; TransactWriteItems ConditionCheck on the tombstones + Put on the target, "
            "Put on the tombstones + Delete on the target")


def _probe_transaction(client: DynamoDBClient, actions: list[dict[str, Any]]) -> None:
    """Send a transaction of never-holding actions: returns when every reason is ConditionalCheckFailed."""
    try:
        client.transact_write_items(TransactItems=actions)  # type: ignore[arg-type]
    except Exception as exc:
        reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
        codes = {r.get("Code") for r in reasons}
        if describe(exc).code == "TransactionCanceledException" and codes == {"ConditionalCheckFailed"}:
            return
        raise
    raise RuntimeError("a probe write whose condition cannot hold succeeded")  # pragma: no cover


def _probe_key(schema: KeySchema) -> dict[str, Any]:
    token = uuid.uuid4()
    values = {"S": {"S": f"tablesync-check-probe-{token}"}, "N": {"N": f"-0.{token.int % 10**30}"},
              "B": {"B": b"tablesync-check-probe-" + token.bytes}}
    return {name: values.get(typ, values["S"]) for name, _, typ in schema}


def _stream_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _stream_names(client: KinesisClient) -> list[str]:
    try:
        return list(client.list_streams(Limit=50).get("StreamNames", []))
    except Exception:  # noqa: BLE001 - only a hint
        return []


def _denied(code: str) -> bool:
    return code in _DENIED or "AccessDenied" in code


def _access_fix(code: str, target: TargetConfig | None = None) -> str:
    if _denied(code):
        if target is not None and target.role_arn:
            return (f"check that {target.role_arn} can be assumed (trust policy, external_id) and grants "
                    "dynamodb:DescribeTable, PutItem, DeleteItem, GetItem, Scan on the target and its ledger")
        return ("check the credentials (--profile / AWS_PROFILE, the standard chain) and their IAM policy "
                "(infra/: the worker role)")
    return "retry; if it persists, check the endpoint, region and network"
