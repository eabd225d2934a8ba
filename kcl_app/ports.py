"""The engine's ports. Adapters implement them; the pipeline talks to nothing else."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

from kcl_app.core.attrs import Item
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
        """This entry as a further attempt of `earlier` (same change): its first time, one more attempt."""
        from dataclasses import replace

        return replace(self, reason=reason, parked_at=now, first_parked_at=min(earlier.first_parked, self.first_parked),
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
