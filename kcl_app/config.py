"""tablesync configuration: a TOML file, validated completely before anything starts.

Every key is documented in docs/configuration.md. Unknown keys are errors (a typo
must never be silently ignored). Errors name the file, the key and what is wrong, e.g.
`targets.toml: targets[1].region: required`.

The environment-only shortcut (no file) configures one target::

    TABLESYNC_SOURCE_TABLE=orders TABLESYNC_TARGET_TABLE=orders-copy TABLESYNC_TARGET_REGION=eu-west-1

optional: TABLESYNC_TARGET_NAME, TABLESYNC_TARGET_ENDPOINT, TABLESYNC_TARGET_ROLE_ARN,
TABLESYNC_TARGET_EXTERNAL_ID, TABLESYNC_TARGET_MODE, TABLESYNC_DEAD_LETTER_DIR,
TABLESYNC_STREAM_RETENTION_HOURS (required with TABLESYNC_TARGET_MODE=inline).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kcl_app.core.checks import DEFAULT_FLOOR_MICROS, DEFAULT_MAX_SKEW_SECONDS, KeySchema, RecordChecks
from kcl_app.core.errors import ConfigError
from kcl_app.core.plan import TargetRule, Transform

Mode = Literal["exact", "inline"]
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_ROLE_ARN = re.compile(r"^arn:aws(-[a-z]+)*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")


@dataclass(frozen=True)
class DeadLetterConfig:
    kind: Literal["dir", "sqs"] = "dir"
    path: str = ".tablesync/dead-letters"
    queue_url: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    payload_bucket: str | None = None
    payload_prefix: str = "tablesync/dead-letters/"


@dataclass(frozen=True)
class TargetConfig:
    name: str
    source_table: str
    region: str
    table: str
    endpoint_url: str | None = None
    role_arn: str | None = None
    external_id: str | None = None
    mode: Mode = "exact"
    ledger_table: str | None = None
    tombstone_table: str | None = None
    create_ledger: bool = True
    version_attribute: str = "_tablesync_version"
    ttl_deletes: Literal["replicate", "skip"] = "replicate"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    transform: str | None = None
    retry_budget_seconds: float = 30.0
    max_concurrency: int = 4
    max_writes_per_second: float | None = None  # per shard process; None: no cap
    heal_rate: float = 100.0  # parked entries re-applied per second once the target is healthy again
    dead_letter: DeadLetterConfig = field(default_factory=DeadLetterConfig)

    @property
    def ledger(self) -> str:
        return self.ledger_table or f"{self.table}.tablesync-ledger"

    @property
    def tombstones(self) -> str:
        """The delete tombstones of an `inline` target (same account and region as the target)."""
        return self.tombstone_table or f"{self.table}.tablesync-tombstones"

    def rule(self) -> TargetRule:
        return TargetRule(
            name=self.name,
            source_table=self.source_table,
            include=self.include,
            exclude=self.exclude,
            ttl_deletes=self.ttl_deletes,
            transform=load_transform(self.transform) if self.transform else None,
        )


@dataclass(frozen=True)
class Config:
    targets: tuple[TargetConfig, ...]
    unmapped: Literal["skip", "park"] = "skip"
    precision: Literal["auto", "MILLISECOND", "MICROSECOND"] = "auto"
    stream_retention_hours: float = 24.0
    tombstone_margin_hours: float = 24.0
    source_region: str | None = None
    source_endpoint_url: str | None = None
    metrics_namespace: str = "tablesync"
    origin: str = "<config>"
    key_schemas: Mapping[str, KeySchema] = field(default_factory=dict)
    max_clock_skew_seconds: float = DEFAULT_MAX_SKEW_SECONDS
    earliest_change_seconds: float = DEFAULT_FLOOR_MICROS / 1_000_000
    log_values: bool = False
    control_table: str | None = None  # `[control] table`: where `tablesync pause` records paused targets

    @property
    def tombstone_ttl_seconds(self) -> float:
        return (self.stream_retention_hours + self.tombstone_margin_hours) * 3600.0

    def rules(self) -> list[TargetRule]:
        return [dataclasses.replace(t.rule(), log_values=self.log_values) for t in self.targets]

    def record_checks(self, key_schemas: Mapping[str, KeySchema] | None = None) -> RecordChecks:
        """What every record must satisfy (core.checks), with the key schemas learned at start."""
        return RecordChecks(
            key_schemas={**self.key_schemas, **(key_schemas or {})},
            region=self.source_region,
            max_skew_micros=int(self.max_clock_skew_seconds * 1_000_000),
            floor_micros=int(self.earliest_change_seconds * 1_000_000),
        )

    def target(self, name: str) -> TargetConfig:
        for t in self.targets:
            if t.name == name:
                return t
        raise ConfigError(self.origin, f"no target named {name!r} (known: {[t.name for t in self.targets]})")


def load_transform(spec: str) -> Transform:
    """Import `module:function`. Raises ConfigError when it cannot be imported or called."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ConfigError("transform", f"{spec!r} must be 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("transform", f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - user code failing at import: a config error, not a traceback
        raise ConfigError("transform", f"module {module_name!r} fails to import: "
                                       f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError("transform", f"{module_name!r} has no callable {func_name!r}")
    return func  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
_TOP_KEYS = {"unmapped", "precision", "stream_retention_hours", "tombstone_margin_hours",
             "source", "metrics", "dead_letter", "defaults", "targets", "log_values", "control"}
_SOURCE_KEYS = {"region", "endpoint_url", "table", "key_schema", "max_clock_skew_seconds", "earliest_change_seconds"}
_TARGET_KEYS = {f for f in TargetConfig.__dataclass_fields__} | {"dead_letter"}
_DLQ_KEYS = set(DeadLetterConfig.__dataclass_fields__)


class _Reader:
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {where}" if where else self.origin, problem)

    def check_keys(self, table: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                hint = _closest(key, allowed)
                raise self.fail(f"{where}{key}", "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))

    def get(self, table: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
            where: str | Callable[[str], str], default: Any = ...,
            choices: tuple[Any, ...] | None = None) -> Any:
        """`where` is the prefix of the key's location, or a function from key to location (for
        merged tables, whose keys each come from their own section)."""
        at = where(key) if callable(where) else f"{where}{key}"
        if key not in table:
            if default is ...:
                raise self.fail(at, "required")
            return default
        value = table[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(at, "must be a number")
        if not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(at, f"must be {name}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(at, "must be a finite number")
        if choices is not None and value not in choices:
            raise self.fail(at, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value


def _closest(word: str, options: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(options), n=1)
    return found[0] if found else None


def parse(doc: Mapping[str, Any], origin: str = "<config>") -> Config:
    r = _Reader(origin)
    r.check_keys(doc, _TOP_KEYS, "")
    defaults = r.get(doc, "defaults", dict, "", {})
    r.check_keys(defaults, _TARGET_KEYS - {"name", "table"}, "defaults.")
    source = r.get(doc, "source", dict, "", {})
    r.check_keys(source, _SOURCE_KEYS, "source.")
    metrics = r.get(doc, "metrics", dict, "", {})
    r.check_keys(metrics, {"namespace"}, "metrics.")
    control = r.get(doc, "control", dict, "", {})
    r.check_keys(control, {"table"}, "control.")
    control_table = r.get(control, "table", str, "control.", None)
    if control_table is not None and not _TABLE_NAME.match(control_table):
        raise r.fail("control.table", f"{control_table!r} is not a valid DynamoDB table name")
    top_dlq = r.get(doc, "dead_letter", dict, "", {})
    r.check_keys(top_dlq, _DLQ_KEYS, "dead_letter.")
    default_dlq = defaults.get("dead_letter", {})
    if not isinstance(default_dlq, dict):
        raise r.fail("defaults.dead_letter", "must be a table ([defaults.dead_letter])")
    r.check_keys(default_dlq, _DLQ_KEYS, "defaults.dead_letter.")
    source_table = r.get(source, "table", str, "source.", None)
    if source_table is not None and not _TABLE_NAME.match(source_table):
        raise r.fail("source.table", f"{source_table!r} is not a valid DynamoDB table name")
    raw_targets = r.get(doc, "targets", list, "")
    if not raw_targets:
        raise r.fail("targets", "at least one [[targets]] entry is required")
    targets: list[TargetConfig] = []
    for i, raw in enumerate(raw_targets):
        where = f"targets[{i}]."
        if not isinstance(raw, dict):
            raise r.fail(f"targets[{i}]", "must be a table ([[targets]])")
        r.check_keys(raw, _TARGET_KEYS, where)
        merged = {**defaults, **raw}
        if "source_table" not in merged and source_table is not None:
            merged["source_table"] = source_table
        target_dlq = raw.get("dead_letter", {})
        if not isinstance(target_dlq, dict):
            raise r.fail(f"{where}dead_letter", "must be a table ([targets.dead_letter])")
        r.check_keys(target_dlq, _DLQ_KEYS, f"{where}dead_letter.")

        def loc(key: str, raw: Mapping[str, Any] = raw, where: str = where) -> str:
            """Where a merged key was written: the target, [defaults] or [source]."""
            if key in raw or key not in defaults and not (key == "source_table" and source_table):
                return f"{where}{key}"
            return f"defaults.{key}" if key in defaults else "source.table"

        def dloc(key: str, target_dlq: Mapping[str, Any] = target_dlq, where: str = where) -> str:
            if key in target_dlq:
                return f"{where}dead_letter.{key}"
            if key in default_dlq:
                return f"defaults.dead_letter.{key}"
            return f"dead_letter.{key}" if key in top_dlq else f"{where}dead_letter.{key}"

        targets.append(_target(r, merged, loc, {**top_dlq, **default_dlq, **target_dlq}, dloc))
    names = [t.name for t in targets]
    for name in names:
        if names.count(name) > 1:
            raise r.fail("targets", f"target name {name!r} is used more than once")
    tables = [(t.region, t.endpoint_url, t.table) for t in targets]
    for key in tables:
        if tables.count(key) > 1:
            raise r.fail("targets", f"two targets write the same table {key[2]!r} in {key[0]}")
    if "stream_retention_hours" not in doc and any(t.mode == "inline" for t in targets):
        raise r.fail("stream_retention_hours", "required with an inline target: set it to the stream's retention "
                     "(inline delete tombstones expire after it + tombstone_margin_hours; a change older than a "
                     "delete that arrives later than that could re-create the item)")
    retention = float(r.get(doc, "stream_retention_hours", (int, float), "", 24.0))
    if not 24 <= retention <= 8760:
        raise r.fail("stream_retention_hours", f"must be between 24 and 8760 (Kinesis limits), got {retention}")
    margin = float(r.get(doc, "tombstone_margin_hours", (int, float), "", 24.0))
    if not math.isfinite(margin) or margin < 1:
        raise r.fail("tombstone_margin_hours", "must be at least 1 hour (a finite number)")
    if margin > 8760:
        raise r.fail("tombstone_margin_hours", "must be at most 8760 hours (a year)")
    source_region = r.get(source, "region", str, "source.", None)
    if source_region is not None and not _REGION.match(source_region):
        raise r.fail("source.region", f"{source_region!r} is not an AWS region name (like eu-west-1)")
    key_schemas = _key_schemas(r, source)
    for i, t in enumerate(targets):
        schema = key_schemas.get(t.source_table)
        if t.mode == "inline" and schema is not None and t.version_attribute in schema.names:
            raise r.fail(f"targets[{i}].version_attribute",
                         f"{t.version_attribute!r} is a key attribute of {t.source_table}")
    skew = float(r.get(source, "max_clock_skew_seconds", (int, float), "source.", DEFAULT_MAX_SKEW_SECONDS))
    if not 0 <= skew <= 86400:
        raise r.fail("source.max_clock_skew_seconds", "must be between 0 and 86400 seconds")
    earliest = float(r.get(source, "earliest_change_seconds", (int, float), "source.",
                           DEFAULT_FLOOR_MICROS / 1_000_000))
    if not 0 <= earliest <= 4_102_444_800:  # 2100-01-01
        raise r.fail("source.earliest_change_seconds", "must be epoch seconds between 1970 and 2100")
    return Config(
        targets=tuple(targets),
        unmapped=r.get(doc, "unmapped", str, "", "skip", ("skip", "park")),
        precision=r.get(doc, "precision", str, "", "auto", ("auto", "MILLISECOND", "MICROSECOND")),
        stream_retention_hours=retention,
        tombstone_margin_hours=margin,
        source_region=source_region,
        source_endpoint_url=r.get(source, "endpoint_url", str, "source.", None),
        metrics_namespace=r.get(metrics, "namespace", str, "metrics.", "tablesync"),
        origin=origin,
        key_schemas=key_schemas,
        max_clock_skew_seconds=skew,
        earliest_change_seconds=earliest,
        log_values=r.get(doc, "log_values", bool, "", False),
        control_table=control_table,
    )


def _key_schemas(r: _Reader, source: Mapping[str, Any]) -> dict[str, KeySchema]:
    raw = r.get(source, "key_schema", dict, "source.", {})
    out: dict[str, KeySchema] = {}
    for table, specs in raw.items():
        where = f"source.key_schema.{table}"
        if not _TABLE_NAME.match(table):
            raise r.fail(where, f"{table!r} is not a valid DynamoDB table name")
        if not isinstance(specs, list):
            raise r.fail(where, 'must be a list like ["pk:S"] or ["pk:S", "sk:N"] (partition key first)')
        try:
            out[table] = KeySchema.parse(specs)
        except ValueError as exc:
            raise r.fail(where, str(exc)) from exc
    return out


def _target(r: _Reader, raw: Mapping[str, Any], loc: Callable[[str], str], dlq: Mapping[str, Any],
            dloc: Callable[[str], str]) -> TargetConfig:
    name = r.get(raw, "name", str, loc)
    if not _NAME.match(name):
        raise r.fail(loc("name"), f"{name!r}: use 1-64 letters, digits, '-' or '_'")
    if name.startswith("_"):
        raise r.fail(loc("name"), f"{name!r}: names starting with '_' are reserved (_poison, _unmapped)")
    table = r.get(raw, "table", str, loc)
    source_table = r.get(raw, "source_table", str, loc)
    for key, value in (("table", table), ("source_table", source_table)):
        if not _TABLE_NAME.match(value):
            raise r.fail(loc(key), f"{value!r} is not a valid DynamoDB table name")
    region = r.get(raw, "region", str, loc)
    if not _REGION.match(region):
        raise r.fail(loc("region"), f"{region!r} is not an AWS region name (like eu-west-1)")
    mode = r.get(raw, "mode", str, loc, "exact", ("exact", "inline"))
    role_arn = r.get(raw, "role_arn", str, loc, None)
    if role_arn is not None and not _ROLE_ARN.match(role_arn):
        raise r.fail(loc("role_arn"), f"{role_arn!r} is not an IAM role ARN "
                                      "(arn:aws:iam::<12-digit account>:role/<name>)")
    external_id = r.get(raw, "external_id", str, loc, None)
    if external_id and not role_arn:
        raise r.fail(loc("external_id"), "only meaningful with role_arn")
    ledger_table = r.get(raw, "ledger_table", str, loc, None)
    if ledger_table is not None and not _TABLE_NAME.match(ledger_table):
        raise r.fail(loc("ledger_table"), f"{ledger_table!r} is not a valid DynamoDB table name")
    if ledger_table is None and len(f"{table}.tablesync-ledger") > 255:
        raise r.fail(loc("table"), "too long for the default ledger name (<table>.tablesync-ledger): "
                                   "set ledger_table")
    version_attribute = r.get(raw, "version_attribute", str, loc, "_tablesync_version")
    if not version_attribute or len(version_attribute.encode("utf-8")) > 255:
        raise r.fail(loc("version_attribute"), "must be a non-empty attribute name of at most 255 bytes")
    include = r.get(raw, "include", list, loc, None)
    exclude = r.get(raw, "exclude", list, loc, [])
    for key, names in (("include", include or []), ("exclude", exclude)):
        if not all(isinstance(n, str) and n for n in names):
            raise r.fail(loc(key), "must be a list of attribute names")
    transform = r.get(raw, "transform", str, loc, None)
    if transform is not None:
        try:
            load_transform(transform)
        except ConfigError as exc:
            raise r.fail(loc("transform"), exc.problem) from exc
    budget = float(r.get(raw, "retry_budget_seconds", (int, float), loc, 30.0))
    if not 0 < budget <= 3600:
        raise r.fail(loc("retry_budget_seconds"), "must be in (0, 3600]")
    concurrency = r.get(raw, "max_concurrency", int, loc, 4)
    if not 1 <= concurrency <= 64:
        raise r.fail(loc("max_concurrency"), "must be between 1 and 64")
    cap = r.get(raw, "max_writes_per_second", (int, float), loc, None)
    if cap is not None and not 0 < cap <= 1_000_000:
        raise r.fail(loc("max_writes_per_second"), "must be in (0, 1000000] writes per second")
    heal_rate = float(r.get(raw, "heal_rate", (int, float), loc, 100.0))
    if not 0 < heal_rate <= 100_000:
        raise r.fail(loc("heal_rate"), "must be in (0, 100000] entries per second")
    kind = r.get(dlq, "kind", str, dloc, "dir", ("dir", "sqs"))
    queue_url = r.get(dlq, "queue_url", str, dloc, None)
    if kind == "sqs" and not queue_url:
        raise r.fail(dloc("queue_url"), "required when kind = 'sqs'")
    payload_bucket = r.get(dlq, "payload_bucket", str, dloc, None)
    if payload_bucket is not None and kind != "sqs":
        raise r.fail(dloc("payload_bucket"), "only used when kind = 'sqs'")
    return TargetConfig(
        name=name,
        source_table=source_table,
        region=region,
        table=table,
        endpoint_url=r.get(raw, "endpoint_url", str, loc, None),
        role_arn=role_arn,
        external_id=external_id,
        mode=mode,
        ledger_table=ledger_table,
        tombstone_table=_tombstone_table(r, raw, loc, table, mode),
        create_ledger=r.get(raw, "create_ledger", bool, loc, True),
        version_attribute=version_attribute,
        ttl_deletes=r.get(raw, "ttl_deletes", str, loc, "replicate", ("replicate", "skip")),
        include=tuple(include) if include is not None else None,
        exclude=tuple(exclude),
        transform=transform,
        retry_budget_seconds=budget,
        max_concurrency=concurrency,
        max_writes_per_second=float(cap) if cap is not None else None,
        heal_rate=heal_rate,
        dead_letter=DeadLetterConfig(
            kind=kind,
            path=r.get(dlq, "path", str, dloc, ".tablesync/dead-letters"),
            queue_url=queue_url,
            region=r.get(dlq, "region", str, dloc, None),
            endpoint_url=r.get(dlq, "endpoint_url", str, dloc, None),
            payload_bucket=payload_bucket,
            payload_prefix=r.get(dlq, "payload_prefix", str, dloc, "tablesync/dead-letters/"),
        ),
    )


def _tombstone_table(r: _Reader, raw: Mapping[str, Any], loc: Callable[[str], str], table: str,
                     mode: str) -> str | None:
    name: str | None = r.get(raw, "tombstone_table", str, loc, None)
    if mode == "inline" and not _TABLE_NAME.match(name or f"{table}.tablesync-tombstones"):
        problem = (f"{name!r} is not a valid DynamoDB table name" if name else
                   f"the default {table!r} + '.tablesync-tombstones' is longer than 255 characters: set it")
        raise r.fail(loc("tombstone_table"), problem)
    return name


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), f"not UTF-8 text (byte {exc.start}): save the file as UTF-8") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"invalid TOML: {exc}") from exc
    return parse(doc, str(p))


def from_env(env: Mapping[str, str]) -> Config:
    """The one-target shortcut from TABLESYNC_* variables."""
    if "TABLESYNC_TARGET_TABLE" not in env:
        raise ConfigError("environment", "no --config given and TABLESYNC_TARGET_TABLE is not set")
    target: dict[str, Any] = {
        "name": env.get("TABLESYNC_TARGET_NAME", "target"),
        "source_table": env.get("TABLESYNC_SOURCE_TABLE", ""),
        "table": env["TABLESYNC_TARGET_TABLE"],
        "region": env.get("TABLESYNC_TARGET_REGION", env.get("AWS_REGION", env.get("AWS_DEFAULT_REGION", ""))),
    }
    for key, var in (("endpoint_url", "TABLESYNC_TARGET_ENDPOINT"), ("role_arn", "TABLESYNC_TARGET_ROLE_ARN"),
                     ("external_id", "TABLESYNC_TARGET_EXTERNAL_ID"), ("mode", "TABLESYNC_TARGET_MODE")):
        if env.get(var):
            target[key] = env[var]
    doc: dict[str, Any] = {"targets": [target]}
    if env.get("TABLESYNC_STREAM_RETENTION_HOURS"):
        try:
            doc["stream_retention_hours"] = float(env["TABLESYNC_STREAM_RETENTION_HOURS"])
        except ValueError:
            raise ConfigError("environment", "TABLESYNC_STREAM_RETENTION_HOURS: must be a number of hours") from None
    if env.get("TABLESYNC_DEAD_LETTER_DIR"):
        target["dead_letter"] = {"kind": "dir", "path": env["TABLESYNC_DEAD_LETTER_DIR"]}
    if not target["source_table"]:
        raise ConfigError("environment", "TABLESYNC_SOURCE_TABLE: required")
    if not target["region"]:
        raise ConfigError("environment", "TABLESYNC_TARGET_REGION: required")
    return parse(doc, "environment")
