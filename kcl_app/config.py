"""tablesync configuration: a TOML file, validated completely before anything starts.

Every key is documented in docs/configuration.md. Unknown keys are errors (a typo
must never be silently ignored). Errors name the file, the key and what is wrong, e.g.
`targets.toml: targets[1].region: required`.

The environment-only shortcut (no file) configures one target::

    TABLESYNC_SOURCE_TABLE=orders TABLESYNC_TARGET_TABLE=orders-copy TABLESYNC_TARGET_REGION=eu-west-1

optional: TABLESYNC_TARGET_NAME, TABLESYNC_TARGET_ENDPOINT, TABLESYNC_TARGET_ROLE_ARN,
TABLESYNC_TARGET_EXTERNAL_ID, TABLESYNC_TARGET_MODE, TABLESYNC_DEAD_LETTER_DIR.
"""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kcl_app.core.errors import ConfigError
from kcl_app.core.plan import TargetRule, Transform

Mode = Literal["exact", "inline"]
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


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
    create_ledger: bool = True
    version_attribute: str = "_tablesync_version"
    ttl_deletes: Literal["replicate", "skip"] = "replicate"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    transform: str | None = None
    retry_budget_seconds: float = 30.0
    max_concurrency: int = 4
    dead_letter: DeadLetterConfig = field(default_factory=DeadLetterConfig)

    @property
    def ledger(self) -> str:
        return self.ledger_table or f"{self.table}.tablesync-ledger"

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

    @property
    def tombstone_ttl_seconds(self) -> float:
        return (self.stream_retention_hours + self.tombstone_margin_hours) * 3600.0

    def rules(self) -> list[TargetRule]:
        return [t.rule() for t in self.targets]

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
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError("transform", f"{module_name!r} has no callable {func_name!r}")
    return func  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
_TOP_KEYS = {"unmapped", "precision", "stream_retention_hours", "tombstone_margin_hours",
             "source", "metrics", "dead_letter", "defaults", "targets"}
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

    def get(self, table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
            default: Any = ..., choices: tuple[Any, ...] | None = None) -> Any:
        if key not in table:
            if default is ...:
                raise self.fail(f"{where}{key}", "required")
            return default
        value = table[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(f"{where}{key}", "must be a number")
        if not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(f"{where}{key}", f"must be {name}, got {type(value).__name__}")
        if choices is not None and value not in choices:
            raise self.fail(f"{where}{key}", f"must be one of {', '.join(map(str, choices))}; got {value!r}")
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
    r.check_keys(source, {"region", "endpoint_url", "table"}, "source.")
    metrics = r.get(doc, "metrics", dict, "", {})
    r.check_keys(metrics, {"namespace"}, "metrics.")
    top_dlq = r.get(doc, "dead_letter", dict, "", {})
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
        if "source_table" not in merged and "table" in source:
            merged["source_table"] = source["table"]
        target_dlq = merged.get("dead_letter", {})
        if not isinstance(target_dlq, dict):
            raise r.fail(f"{where}dead_letter", "must be a table ([targets.dead_letter])")
        targets.append(_target(r, merged, where, {**top_dlq, **target_dlq}))
    names = [t.name for t in targets]
    for name in names:
        if names.count(name) > 1:
            raise r.fail("targets", f"target name {name!r} is used more than once")
    tables = [(t.region, t.endpoint_url, t.table) for t in targets]
    for key in tables:
        if tables.count(key) > 1:
            raise r.fail("targets", f"two targets write the same table {key[2]!r} in {key[0]}")
    retention = float(r.get(doc, "stream_retention_hours", (int, float), "", 24.0))
    if not 24 <= retention <= 8760:
        raise r.fail("stream_retention_hours", f"must be between 24 and 8760 (Kinesis limits), got {retention}")
    margin = float(r.get(doc, "tombstone_margin_hours", (int, float), "", 24.0))
    if margin < 1:
        raise r.fail("tombstone_margin_hours", "must be at least 1 hour")
    return Config(
        targets=tuple(targets),
        unmapped=r.get(doc, "unmapped", str, "", "skip", ("skip", "park")),
        precision=r.get(doc, "precision", str, "", "auto", ("auto", "MILLISECOND", "MICROSECOND")),
        stream_retention_hours=retention,
        tombstone_margin_hours=margin,
        source_region=r.get(source, "region", str, "source.", None),
        source_endpoint_url=r.get(source, "endpoint_url", str, "source.", None),
        metrics_namespace=r.get(metrics, "namespace", str, "metrics.", "tablesync"),
        origin=origin,
    )


def _target(r: _Reader, raw: Mapping[str, Any], where: str, dlq: Mapping[str, Any]) -> TargetConfig:
    name = r.get(raw, "name", str, where)
    if not _NAME.match(name):
        raise r.fail(f"{where}name", f"{name!r}: use 1-64 letters, digits, '-' or '_'")
    table = r.get(raw, "table", str, where)
    source_table = r.get(raw, "source_table", str, where)
    for key, value in (("table", table), ("source_table", source_table)):
        if not _TABLE_NAME.match(value):
            raise r.fail(f"{where}{key}", f"{value!r} is not a valid DynamoDB table name")
    region = r.get(raw, "region", str, where)
    if not _REGION.match(region):
        raise r.fail(f"{where}region", f"{region!r} is not an AWS region name (like eu-west-1)")
    mode = r.get(raw, "mode", str, where, "exact", ("exact", "inline"))
    role_arn = r.get(raw, "role_arn", str, where, None)
    if role_arn is not None and not role_arn.startswith("arn:aws"):
        raise r.fail(f"{where}role_arn", f"{role_arn!r} is not an IAM role ARN")
    external_id = r.get(raw, "external_id", str, where, None)
    if external_id and not role_arn:
        raise r.fail(f"{where}external_id", "only meaningful with role_arn")
    include = r.get(raw, "include", list, where, None)
    exclude = r.get(raw, "exclude", list, where, [])
    for key, names in (("include", include or []), ("exclude", exclude)):
        if not all(isinstance(n, str) and n for n in names):
            raise r.fail(f"{where}{key}", "must be a list of attribute names")
    transform = r.get(raw, "transform", str, where, None)
    if transform is not None:
        try:
            load_transform(transform)
        except ConfigError as exc:
            raise r.fail(f"{where}transform", exc.problem) from exc
    budget = float(r.get(raw, "retry_budget_seconds", (int, float), where, 30.0))
    if not 0 < budget <= 3600:
        raise r.fail(f"{where}retry_budget_seconds", "must be in (0, 3600]")
    concurrency = r.get(raw, "max_concurrency", int, where, 4)
    if not 1 <= concurrency <= 64:
        raise r.fail(f"{where}max_concurrency", "must be between 1 and 64")
    r.check_keys(dlq, _DLQ_KEYS, f"{where}dead_letter.")
    kind = r.get(dlq, "kind", str, f"{where}dead_letter.", "dir", ("dir", "sqs"))
    queue_url = r.get(dlq, "queue_url", str, f"{where}dead_letter.", None)
    if kind == "sqs" and not queue_url:
        raise r.fail(f"{where}dead_letter.queue_url", "required when kind = 'sqs'")
    payload_bucket = r.get(dlq, "payload_bucket", str, f"{where}dead_letter.", None)
    if payload_bucket is not None and kind != "sqs":
        raise r.fail(f"{where}dead_letter.payload_bucket", "only used when kind = 'sqs'")
    return TargetConfig(
        name=name,
        source_table=source_table,
        region=region,
        table=table,
        endpoint_url=r.get(raw, "endpoint_url", str, where, None),
        role_arn=role_arn,
        external_id=external_id,
        mode=mode,
        ledger_table=r.get(raw, "ledger_table", str, where, None),
        create_ledger=r.get(raw, "create_ledger", bool, where, True),
        version_attribute=r.get(raw, "version_attribute", str, where, "_tablesync_version"),
        ttl_deletes=r.get(raw, "ttl_deletes", str, where, "replicate", ("replicate", "skip")),
        include=tuple(include) if include is not None else None,
        exclude=tuple(exclude),
        transform=transform,
        retry_budget_seconds=budget,
        max_concurrency=concurrency,
        dead_letter=DeadLetterConfig(
            kind=kind,
            path=r.get(dlq, "path", str, f"{where}dead_letter.", ".tablesync/dead-letters"),
            queue_url=queue_url,
            region=r.get(dlq, "region", str, f"{where}dead_letter.", None),
            endpoint_url=r.get(dlq, "endpoint_url", str, f"{where}dead_letter.", None),
            payload_bucket=payload_bucket,
            payload_prefix=r.get(dlq, "payload_prefix", str, f"{where}dead_letter.", "tablesync/dead-letters/"),
        ),
    )


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read: {exc.strerror}") from exc
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
    if env.get("TABLESYNC_DEAD_LETTER_DIR"):
        target["dead_letter"] = {"kind": "dir", "path": env["TABLESYNC_DEAD_LETTER_DIR"]}
    if not target["source_table"]:
        raise ConfigError("environment", "TABLESYNC_SOURCE_TABLE: required")
    if not target["region"]:
        raise ConfigError("environment", "TABLESYNC_TARGET_REGION: required")
    return parse({"targets": [target]}, "environment")
