"""The engine's ports. Adapters implement them; the pipeline talks to nothing else."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

from kcl_app.core.attrs import Item
from kcl_app.core.errors import ReplicationError
from kcl_app.core.fence import NEWER_THAN_SEEN, Guard
from kcl_app.core.plan import Write
from kcl_app.core.versions import Version

Outcome = Literal["applied", "stale", "duplicate"]


@dataclass
class ApplyResult:
    """What a target made of a list of writes. Every write appears in exactly one of the lists.

    `failed` pairs a write with the reason it could not be applied within the retry budget; the
    caller parks those. `retries` counts retried calls (throttling, conflicts, 5xx, outages)."""

    applied: list[Write] = field(default_factory=list)
    stale: list[Write] = field(default_factory=list)
    duplicate: list[Write] = field(default_factory=list)
    failed: list[tuple[Write, str]] = field(default_factory=list)
    retries: int = 0

    def merge(self, other: ApplyResult) -> None:
        """Add another result's writes and retries to this one."""
        self.applied += other.applied
        self.stale += other.stale
        self.duplicate += other.duplicate
        self.failed += other.failed
        self.retries += other.retries


class TargetWriter(Protocol):
    """Fenced writes into one target table."""

    name: str

    def apply(self, writes: Sequence[Write], deadline: float) -> ApplyResult:
        """Apply each write unless the target has seen a newer or equal version of its key.

        Idempotent: re-applying a write is a no-op. Retries transient failures until the
        monotonic `deadline`, then reports what is left in `failed`. Never raises for AWS errors."""
        ...


class GuardedWriter(TargetWriter, Protocol):
    """A TargetWriter that takes any guard of the fence (backfill, repair), not only the stream's."""

    def apply(self, writes: Sequence[Write], deadline: float, guard: Guard = NEWER_THAN_SEEN) -> ApplyResult:
        """As TargetWriter.apply, on `guard` (see kcl_app.core.fence for what each guard means)."""
        ...

    def seen(self, key: Item, key_id: str, deadline: float) -> tuple[bool, Version | None]:
        """(the target knows the key, the version it holds for it), by a consistent read. Raises
        RetryBudgetSpent when it cannot be read by `deadline`."""
        ...


@dataclass(frozen=True)
class DeadLetter:
    """A parked change: everything needed to redrive it later (the raw record, not a derivative).

    `parked_at` is when this entry was (last) written; `first_parked_at` when the change was first
    parked for this store (0 means "this park": entries written before the field existed read back
    with their `parked_at`); `attempts` counts the parks of this change for this store (the first
    one included). `entry_id` is deterministic: the same record parked again for the same store
    has the same id, so a store keyed by it holds it once."""

    store: str
    reason: str
    data: bytes
    sequence_number: str
    shard_id: str
    parked_at: float
    key_id: str = ""
    version: str = ""
    first_parked_at: float = 0.0
    attempts: int = 1

    @property
    def first_parked(self) -> float:
        """When the change was first parked for this store."""
        return self.first_parked_at or self.parked_at

    @cached_property
    def entry_id(self) -> str:
        """32 hex digits from the store, the record's position and its bytes (not the reason, nor
        the time: a replay of the same record, or a re-park with a new reason, has the same id)."""
        import hashlib

        digest = hashlib.sha256()
        for part in (self.store, self.shard_id, self.sequence_number, self.key_id, self.version):
            digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(hashlib.sha256(self.data).digest())
        return digest.hexdigest()[:32]

    def reparked(self, reason: str, now: float, earlier: DeadLetter) -> DeadLetter:
        """This entry as a further attempt of `earlier` (same change): its first time, one more attempt.
        The first time is the earlier entry's, whatever the clocks: the process re-parking it may run
        on a machine whose clock is behind the one that parked it first."""
        from dataclasses import replace

        return replace(self, reason=reason, parked_at=now, first_parked_at=earlier.first_parked,
                       attempts=max(earlier.attempts + 1, self.attempts))

    def to_json(self) -> dict[str, object]:
        import base64

        return {
            "store": self.store,
            "reason": self.reason,
            "data": base64.b64encode(self.data).decode("ascii"),
            "sequence_number": self.sequence_number,
            "shard_id": self.shard_id,
            "parked_at": self.parked_at,
            "key_id": self.key_id,
            "version": self.version,
            "entry_id": self.entry_id,
            "first_parked_at": self.first_parked,
            "attempts": self.attempts,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> DeadLetter:
        """Entries written before `first_parked_at`/`attempts` existed read back as a first park."""
        import base64

        parked_at = float(str(doc.get("parked_at", 0.0)))
        first = float(str(doc.get("first_parked_at", parked_at)))
        attempts = doc.get("attempts", 1)
        return cls(
            store=str(doc["store"]),
            reason=str(doc["reason"]),
            data=base64.b64decode(str(doc["data"])),
            sequence_number=str(doc.get("sequence_number", "")),
            shard_id=str(doc.get("shard_id", "")),
            parked_at=parked_at,
            key_id=str(doc.get("key_id", "")),
            version=str(doc.get("version", "")),
            first_parked_at=0.0 if first == parked_at else first,
            attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts > 0 else 1,
        )


class DeadLetterSink(Protocol):
    """Durable parking per store (one store per target, plus `_poison` for undecodable records)."""

    def park(self, entries: Sequence[DeadLetter]) -> None:
        """Store every entry durably before returning; raise ParkFailed otherwise (all or nothing
        is not required: a retry may store an entry twice, redrive is idempotent)."""
        ...

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        """Yield (handle, entry) for the entries of one store."""
        ...

    def remove(self, store: str, handles: Sequence[str]) -> None:
        """Delete settled entries by handle."""
        ...


class Metrics(Protocol):
    def emit(self, dimensions: Mapping[str, str], counters: Mapping[str, float],
             samples: Mapping[str, Sequence[float]] | None = None) -> None:
        """Publish one set of counters (and value samples, e.g. lag) under the given dimensions."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


# -- seeding from a table export ----------------------------------------------------------------
class ExportProblem(ReplicationError):
    """An export or an import could not be made or read; the message says what to do."""


class PitrDisabled(ExportProblem):
    """The source table has no point-in-time recovery, which every export is made from."""


@dataclass(frozen=True)
class KeyAttribute:
    name: str
    key_type: Literal["HASH", "RANGE"]
    attribute_type: Literal["S", "N", "B"]


@dataclass(frozen=True)
class ExportState:
    """One table export as the service describes it. `export_time` (epoch seconds) is the instant
    the snapshot is of; `folder` the S3 key prefix its manifests and data files are under."""

    arn: str
    status: Literal["IN_PROGRESS", "COMPLETED", "FAILED"]
    bucket: str
    folder: str
    export_time: float | None = None
    items: int | None = None
    failure: str | None = None


@dataclass(frozen=True)
class ImportState:
    arn: str
    status: Literal["IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLING", "CANCELLED"]
    processed: int = 0
    imported: int = 0
    errors: int = 0
    failure: str | None = None


@dataclass(frozen=True)
class ExportLine:
    """One line of an export data file: the item, or why the line is not one (`item` None)."""

    where: str
    item: Item | None
    problem: str = ""


class TableExports(Protocol):
    """The source side of seeding: exports of a table to S3 and reading them back."""

    def key_schema(self, table: str) -> tuple[KeyAttribute, ...]:
        """The table's key attributes, partition key first."""
        ...

    def start(self, table: str, bucket: str, prefix: str, bucket_owner: str | None = None) -> ExportState:
        """Request a full export of `table` as of now (DYNAMODB_JSON). Raises PitrDisabled or ExportProblem."""
        ...

    def describe(self, export: ExportState) -> ExportState:
        """The export's current state."""
        ...

    def data_files(self, export: ExportState) -> list[str]:
        """The S3 keys of a COMPLETED export's data files, from its manifests (only keys inside the
        export's folder are accepted). Raises ExportProblem."""
        ...

    def lines(self, export: ExportState, data_file: str) -> Iterator[ExportLine]:
        """Every line of one data file, in order. Raises ExportProblem when the file cannot be read."""
        ...


class TableImports(Protocol):
    """The target side of seeding: ImportTable into a new table, in the target's account and region."""

    def exists(self, table: str) -> bool:
        ...

    def holds_items(self, table: str) -> bool:
        """Whether the (existing) table holds at least one item, by a one-item read."""
        ...

    def start(self, export: ExportState, table: str, key: tuple[KeyAttribute, ...],
              bucket_owner: str | None = None) -> ImportState:
        """Create `table` from the export's data files (no write units). Raises ExportProblem."""
        ...

    def describe(self, state: ImportState) -> ImportState:
        ...
