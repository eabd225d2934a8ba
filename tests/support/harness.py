"""Fixture factories and fakes shared by the engine, protocol and property tests.

- TARGET_REGIONS: the two target regions every two-target test uses (source in us-east-1).
- ledger_targets(): exact-mode targets on in-process moto, each with its table, ledger and
  LedgerWriter, ready to hand to a Pipeline (or, with their clients, to backfill/verify).
- inline_targets(): the same for inline mode (table, tombstone table, InlineWriter).
- FailingStore: a dead-letter store that refuses every park and counts the attempts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3

from kcl_app.adapters.inline import InlineWriter, ensure_tombstones
from kcl_app.adapters.ledger import LedgerWriter, ensure_ledger
from kcl_app.core.errors import ParkFailed
from kcl_app.core.retry import Backoff
from kcl_app.ports import Clock, DeadLetter
from tests.support.tables import create_table

TARGET_REGIONS: Mapping[str, str] = {"a": "eu-west-1", "b": "ap-southeast-2"}


@dataclass
class LedgerTarget:
    """One exact-mode target: its client (unwrapped), table, ledger and writer."""

    name: str
    client: Any
    table: str
    ledger: str
    writer: LedgerWriter


def ledger_targets(clock: Clock, *, regions: Mapping[str, str] = TARGET_REGIONS, table: str = "t-{name}-{suffix}",
                   ledger: str = "l-{name}-{suffix}", suffix: str | None = None, create: Sequence[str] | None = None,
                   wrap: Mapping[str, Callable[[Any], Any]] | None = None,
                   backoff: Callable[[], Backoff] | None = None) -> dict[str, LedgerTarget]:
    """Exact-mode targets `regions` (name -> region), created on the current moto.

    `table`/`ledger` are name patterns ({name}, {suffix}: a fresh random one unless given); only the
    tables of `create` are created (default all: leave one out to test a missing table), every
    ledger is; `wrap[name]` wraps the client the writer uses (a fault injector); `backoff` makes
    each writer's Backoff (default the writer's own)."""
    suffix = suffix if suffix is not None else uuid.uuid4().hex[:8]
    out = {}
    for name, region in regions.items():
        client = boto3.client("dynamodb", region_name=region)
        names = {"name": name, "suffix": suffix}
        table_name, ledger_name = table.format(**names), ledger.format(**names)
        if create is None or name in create:
            create_table(client, table_name)
        ensure_ledger(client, ledger_name)
        used = (wrap or {}).get(name, lambda c: c)(client)
        extra = {"backoff": backoff()} if backoff else {}
        writer = LedgerWriter(name, used, table_name, ledger_name, clock, **extra)
        out[name] = LedgerTarget(name, client, table_name, ledger_name, writer)
    return out


@dataclass
class InlineTarget:
    """One inline-mode target: its client, table, tombstone table and writer."""

    name: str
    client: Any
    table: str
    tombstones: str
    writer: InlineWriter


def inline_targets(clock: Clock, *, regions: Mapping[str, str] = TARGET_REGIONS,
                   version_attribute: str = "_tablesync_version") -> dict[str, InlineTarget]:
    """Inline-mode targets `regions` (name -> region), created on the current moto, fresh names."""
    suffix = uuid.uuid4().hex[:8]
    out = {}
    for name, region in regions.items():
        client = boto3.client("dynamodb", region_name=region)
        table, tombstones = f"i-{name}-{suffix}", f"i-{name}-{suffix}.tombstones"
        create_table(client, table)
        ensure_tombstones(client, tombstones)
        writer = InlineWriter(name, client, table, clock, version_attribute, max_concurrency=4,
                              tombstone_table=tombstones)
        out[name] = InlineTarget(name, client, table, tombstones, writer)
    return out


class FailingStore:
    """A dead-letter store that refuses every park (a full disk, a deleted queue); counts the attempts."""

    def __init__(self, reason: str = "OSError: [Errno 28] No space left on device") -> None:
        self.reason = reason
        self.attempts = 0

    def park(self, entries: Sequence[DeadLetter]) -> None:
        self.attempts += 1
        raise ParkFailed(entries[0].store, self.reason)

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        return iter(())

    def remove(self, store: str, handles: Sequence[str]) -> None:
        raise AssertionError("nothing was parked, so nothing can be removed")
