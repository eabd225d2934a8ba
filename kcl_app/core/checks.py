"""What a record must be before it may reach any target: its provenance, a plausible version, a key
that matches the source table's key schema, and (for a transform's output) values DynamoDB accepts.

Pure: no I/O. Each check raises ValueError with a reason that names the field or attribute, never
its value (reasons end up in logs and dead-letter entries; values may be personal data).

Version plausibility. A change cannot be stamped later than the moment Kinesis received its record
(`RawRecord.arrival_millis`) plus a bounded clock skew, nor before DynamoDB's Kinesis destination
could have existed. A far-future stamp (say nanoseconds read as microseconds) would otherwise win
every comparison and freeze its key in every target; a stamp before the floor is a unit mistake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

KEY_TYPES = ("S", "N", "B")
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024
MAX_DEPTH = 32
MAX_NUMBER_DIGITS = 38
DEFAULT_MAX_SKEW_SECONDS = 300.0
DEFAULT_FLOOR_MICROS = 1_325_376_000_000_000  # 2012-01-01T00:00:00Z: before any DynamoDB stream
EVENT_SOURCE = "aws:dynamodb"
RECORD_FORMAT = "application/json"


@dataclass(frozen=True, slots=True)
class KeySchema:
    """A table's primary key: partition (name, type) and optional sort (name, type); types S, N or B."""

    partition: tuple[str, str]
    sort: tuple[str, str] | None = None
    roles: tuple[tuple[str, str | None, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (name, type, byte limit) of each key attribute, computed once: checked on every record
        roles: tuple[tuple[str, str | None, int], ...] = ((*self.partition, MAX_PARTITION_KEY_BYTES),)
        if self.sort is not None:
            roles += ((*self.sort, MAX_SORT_KEY_BYTES),)
        object.__setattr__(self, "roles", roles)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.partition[0],) if self.sort is None else (self.partition[0], self.sort[0])

    @classmethod
    def parse(cls, specs: Iterable[str]) -> KeySchema:
        """From `["pk:S"]` or `["pk:S", "sk:N"]` (partition first). Raises ValueError."""
        pairs = []
        for spec in specs:
            if not isinstance(spec, str):
                raise ValueError("each entry must be 'name:TYPE'")
            name, sep, kind = spec.rpartition(":")
            if not sep or not name or kind not in KEY_TYPES:
                raise ValueError(f"{spec!r} must be 'name:S', 'name:N' or 'name:B'")
            pairs.append((name, kind))
        if not 1 <= len(pairs) <= 2 or len({n for n, _ in pairs}) != len(pairs):
            raise ValueError("a key schema has one partition key and at most one sort key, with distinct names")
        return cls(pairs[0], pairs[1] if len(pairs) == 2 else None)

    @classmethod
    def from_describe(cls, table: Mapping[str, Any]) -> KeySchema:
        """From DescribeTable's `Table` (KeySchema + AttributeDefinitions). Raises ValueError."""
        types = {d["AttributeName"]: d["AttributeType"] for d in table.get("AttributeDefinitions", [])}
        by_role = {k["KeyType"]: k["AttributeName"] for k in table.get("KeySchema", [])}
        if "HASH" not in by_role:
            raise ValueError("DescribeTable returned no partition key")
        specs = [f"{by_role[role]}:{types.get(by_role[role], '?')}" for role in ("HASH", "RANGE") if role in by_role]
        return cls.parse(specs)


@dataclass(frozen=True)
class RecordChecks:
    """What the configuration expects of every record. Empty fields check nothing.

    `tables`: the configured source tables (None: any table is routed; unknown ones are unmapped).
    `region`: the source region, when configured. `key_schemas`: per source table."""

    key_schemas: Mapping[str, KeySchema] = field(default_factory=dict)
    region: str | None = None
    max_skew_micros: int = int(DEFAULT_MAX_SKEW_SECONDS * 1_000_000)
    floor_micros: int = DEFAULT_FLOOR_MICROS


DEFAULT_CHECKS = RecordChecks()


def check_provenance(doc: Mapping[str, Any], checks: RecordChecks) -> None:
    """The record claims to come from a DynamoDB table's Kinesis destination, in the expected region."""
    if doc.get("eventSource") != EVENT_SOURCE:
        raise ValueError(f"eventSource is not {EVENT_SOURCE!r}: not a DynamoDB change record")
    if doc.get("recordFormat") != RECORD_FORMAT:
        raise ValueError(f"recordFormat is not {RECORD_FORMAT!r}")
    if checks.region is not None and doc.get("awsRegion") != checks.region:
        raise ValueError(f"awsRegion is not the configured source region {checks.region}")


def check_version(micros: int, arrival_millis: int | None, checks: RecordChecks) -> None:
    """A stamp no later than arrival (or now) + skew, and not before the floor."""
    if micros < checks.floor_micros:
        raise ValueError("ApproximateCreationDateTime is before 2012 (or the configured floor): "
                         "a wrong unit or a forged record")
    if arrival_millis is not None and micros > arrival_millis * 1000 + checks.max_skew_micros:
        raise ValueError("ApproximateCreationDateTime is later than the record's arrival in Kinesis plus the "
                         "allowed clock skew: a wrong unit or a forged record")


def _key_bytes(kind: str, inner: Any) -> int:
    if kind == "S":
        return len(inner) if inner.isascii() else len(inner.encode("utf-8"))
    if kind == "B":
        return len(inner)
    return 0


def check_key(key: Mapping[str, Mapping[str, Any]], schema: KeySchema | None, where: str = "dynamodb.Keys") -> None:
    """`key` (API form) has exactly the schema's attributes and types, within DynamoDB's key limits.

    Without a schema: one or two S/N/B attributes within the partition-key limit."""
    if schema is not None and len(key) == len(schema.roles):  # the fast path: a valid key, once per change
        for name, kind, limit in schema.roles:
            value = key.get(name)
            inner = None if value is None or kind is None else value.get(kind)
            if inner is None or kind != "N" and not 0 < len(inner) <= limit // 4:
                break  # a problem, or a long key: the full check below says which
        else:
            return
    _check_key(key, schema, where)


def _check_key(key: Mapping[str, Mapping[str, Any]], schema: KeySchema | None, where: str) -> None:
    roles: tuple[tuple[str, str | None, int], ...]
    if schema is None:
        if not 1 <= len(key) <= 2:
            raise ValueError(f"{where} must hold one or two key attributes")
        roles = tuple((name, None, MAX_PARTITION_KEY_BYTES) for name in key)
    else:
        roles = schema.roles
        if len(key) != len(roles) or any(name not in key for name, _, _ in roles):
            expected = set(schema.names)
            missing, extra = sorted(expected - set(key)), sorted(set(key) - expected)
            raise ValueError(f"{where} does not match the table's key schema"
                             + (f" (missing {', '.join(missing)})" if missing else "")
                             + (f" (unexpected {', '.join(extra)})" if extra else ""))
    for name, kind, limit in roles:
        ((actual, inner),) = key[name].items()
        if kind is not None and actual != kind or actual not in KEY_TYPES:
            if actual not in KEY_TYPES:
                raise ValueError(f"{where}.{name}: a key attribute must be S, N or B")
            raise ValueError(f"{where}.{name}: the table's key schema says {kind}, the record has {actual}")
        if actual == "N":
            continue
        size = _key_bytes(actual, inner)
        if size == 0:
            raise ValueError(f"{where}.{name}: a key value must not be empty")
        if size > limit:
            raise ValueError(f"{where}.{name}: {size} bytes exceeds DynamoDB's {limit}-byte key limit")


# -- DynamoDB's attribute-value grammar, for values in API form (B as bytes) ----------------------


class _Bad(ValueError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []


def number_problem(text: Any) -> str | None:
    """Why `text` is not a number DynamoDB stores (None: it is one)."""
    if not isinstance(text, str) or not text or text.strip() != text:
        return "N must be a non-empty decimal string"
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        return "N is not a decimal number"
    if not number.is_finite() or any(c.isalpha() and c not in "eE" for c in text):
        return "N is not a finite decimal number"
    if number.is_zero():
        return None
    digits = "".join(map(str, number.as_tuple().digits)).strip("0")
    if len(digits) > MAX_NUMBER_DIGITS:
        return f"N has more than {MAX_NUMBER_DIGITS} significant digits"
    if not -130 <= number.adjusted() <= 125:
        return "N is outside DynamoDB's range (1E-130 to 9.9999999999999999999999999999999999999E+125)"
    return None


def _check(value: Any, depth: int) -> None:
    if not isinstance(value, dict) or len(value) != 1:
        raise _Bad("an attribute value is a dict with exactly one type key")
    ((kind, inner),) = value.items()
    if kind == "S":
        if not isinstance(inner, str):
            raise _Bad("S must be a string")
        _utf8(inner)
    elif kind == "N":
        problem = number_problem(inner)
        if problem:
            raise _Bad(problem)
    elif kind == "B":
        if not isinstance(inner, bytes | bytearray):
            raise _Bad("B must be bytes")
    elif kind == "BOOL":
        if not isinstance(inner, bool):
            raise _Bad("BOOL must be True or False")
    elif kind == "NULL":
        if inner is not True:
            raise _Bad("NULL must be True")
    elif kind in ("SS", "NS", "BS"):
        _check_set(kind, inner)
    elif kind in ("M", "L"):
        if depth >= MAX_DEPTH:
            raise _Bad(f"nested deeper than DynamoDB's {MAX_DEPTH} levels")
        if kind == "M":
            if not isinstance(inner, dict):
                raise _Bad("M must be a dict")
            for name, member in inner.items():
                _name(name)
                try:
                    _check(member, depth + 1)
                except _Bad as bad:
                    bad.path.append(f".{name}")
                    raise
        else:
            if not isinstance(inner, list):
                raise _Bad("L must be a list")
            for i, element in enumerate(inner):
                try:
                    _check(element, depth + 1)
                except _Bad as bad:
                    bad.path.append(f"[{i}]")
                    raise
    else:
        raise _Bad("unknown attribute type")


def _utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad("a string is not valid UTF-8 (lone surrogate)") from None


def _name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise _Bad("attribute names must be non-empty strings")
    _utf8(name)


def _check_set(kind: str, inner: Any) -> None:
    if not isinstance(inner, list | tuple | set | frozenset):
        raise _Bad(f"{kind} must be a list")
    if not inner:
        raise _Bad(f"{kind} must not be empty")
    members: set[Any] = set()
    for member in inner:
        if kind == "SS":
            if not isinstance(member, str):
                raise _Bad("SS members must be strings")
            _utf8(member)
            members.add(member)
        elif kind == "NS":
            problem = number_problem(member)
            if problem:
                raise _Bad(f"NS member: {problem}")
            members.add(Decimal(member))
        else:
            if not isinstance(member, bytes | bytearray):
                raise _Bad("BS members must be bytes")
            members.add(bytes(member))
    if len(members) != len(inner):
        raise _Bad(f"{kind} holds duplicate members")


def check_item(item: Any, where: str = "item") -> None:
    """`item` (API form) is an item DynamoDB accepts: names, types, numbers, sets, nesting.

    Raises ValueError naming the attribute's path (e.g. `item.address.lines[2]: ...`), not its value.
    Sizes are checked separately (attrs.item_size)."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: an item must be a dict of attribute name -> value")
    for name, value in item.items():
        try:
            _name(name)
            _check(value, 1)
        except _Bad as bad:
            label = name if isinstance(name, str) and name else "<invalid name>"
            label = label.encode("utf-8", "backslashreplace").decode("utf-8")
            raise ValueError(f"{where}.{label}{''.join(reversed(bad.path))}: {bad.problem}") from None
