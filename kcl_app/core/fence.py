"""The fence's guards: on what condition a write may land, as data (a closed set of types).

Every fenced write of the product (stream, backfill, verify's repair, redrive) names one guard; the
ledger and inline adapters turn it into their condition expressions, in one place each.

* `NewerThanSeen`: the stream's rule, and redrive's replay. The write lands unless the target has
  seen this version or a newer one of the key. A refusal is `duplicate` (same version seen) or `stale`.
* `NeverSeen`: the backfill's rule. The write lands only where the key was never seen at all: no
  version, no tombstone. A refusal is `stale` (the stream, or an earlier pass, already had the key).
* `StillAt(seen)`: verify's repair and redrive's re-read. The write lands only if the key is still at
  the version `seen` that was read before it (None: no version recorded). A refusal is `stale`
  (a newer change landed in between: the repair is superseded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kcl_app.core.versions import Version

REPAIR_SUFFIX = "repair"


@dataclass(frozen=True, slots=True)
class NewerThanSeen:
    pass


@dataclass(frozen=True, slots=True)
class NeverSeen:
    pass


@dataclass(frozen=True, slots=True)
class StillAt:
    seen: Version | None


Guard = NewerThanSeen | NeverSeen | StillAt

NEWER_THAN_SEEN = NewerThanSeen()
NEVER_SEEN = NeverSeen()


def repair_version(seen: Version | None) -> Version:
    """The version a repair writes over `seen`: sorts just above it, so any change with a later
    timestamp still wins over the repair and any change `seen` already beat still loses."""
    if seen is None:
        return Version(0, REPAIR_SUFFIX)
    return Version(seen.micros, f"{seen.tiebreak}#{REPAIR_SUFFIX}")


def refusal(guard: Guard, seen: str | None, version: Version) -> Literal["duplicate", "stale"]:
    """What a failed condition means for a write at `version`, given the version token `seen`
    returned with the refusal: `duplicate` only for the stream's guard and the very same version."""
    same = isinstance(guard, NewerThanSeen) and seen is not None and Version.from_token(seen) == version
    return "duplicate" if same else "stale"
